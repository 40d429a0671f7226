//! TCP flow tracing from kprobes, fentry/fexit or tracepoints (chosen per
//! measurement at start-up): per connection bytes, calls,
//! connect latency, accept-queue wait, smoothed RTT, retransmits, resets and lifetime, attributed
//! to the traced processes.
//!
//! Use: [`attach_tcp`] after [`Tracer::load`](crate::probes::Tracer::load),
//! then [`TcpTracing::report`] whenever a view is wanted (open flows are read
//! live from the kernel map). See `docs/tcp.md`.

mod attach;
pub mod btf;
pub mod flows;
pub mod format;
pub mod hooks;

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use serde::Serialize;
use tracer_common::tcp::{
    ClosedKey, FLAG_DESTROYED, STAT_ACCEPT_WALK_FAILED, STAT_FLOWS_CLOSED, STAT_FLOWS_CREATED,
    STAT_INSERT_FAILED, STAT_MIDSTREAM, STAT_READ_FAILED, TcpConfig, TcpFlow,
};

use crate::{kernelfs, probes::Tracer};
pub use attach::{
    ACCEPT_WAIT_ENV, AcceptWait, HOOK_ORDER_ENV, KernelReport, RoleChoice, accept_wait, hook_order,
    inspect_kernel, set_accept_wait, set_hook_order, try_attach_hooks,
};
pub use flows::{AcceptWaits, FlowReport, FlowTotals, ListenRollup, RemoteRollup, WaitBucket};
pub use hooks::{HookStatus, Mechanism};

/// Closed flows kept in user space between reports; beyond this they are
/// counted in [`TcpStats::dropped_closed`] and discarded (about 300 B each).
pub const MAX_KEPT_CLOSED: usize = 100_000;

/// How long a closed flow whose socket still exists stays in the kernel
/// before it is collected: data that arrived before CLOSE (a half-closed
/// client's last reply) can still be read from the socket and is added to
/// the closed flow only while the kernel holds it. Freed sockets
/// (`FLAG_DESTROYED`) are collected at once, so this only delays sockets the
/// program has not closed yet.
pub const CLOSED_HOLD_NS: u64 = 1_000_000_000;

/// Counters that say how complete the flow data is.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct TcpStats {
    /// Flows the kernel started recording.
    pub flows_created: u64,
    /// Flows that reached TCP_CLOSE in the kernel.
    pub flows_closed: u64,
    /// Flows first seen at send/recv (opened before tracing).
    pub flows_midstream: u64,
    /// Open flows in the kernel map now.
    pub open_now: u64,
    /// Closed flows read out of the kernel so far.
    pub closed_collected: u64,
    /// Flows the LRU maps evicted before user space read them:
    /// created − open now − collected − closed still in the kernel. Exact
    /// when nothing changes during the read, an estimate otherwise.
    pub evicted: u64,
    /// Closed flows dropped because [`MAX_KEPT_CLOSED`] were already held.
    pub dropped_closed: u64,
    pub insert_failed: u64,
    pub read_failed: u64,
    /// Accepts whose new fd the accept tracepoint could not walk to a
    /// socket (their accept wait is not measured).
    pub accept_walk_failed: u64,
}

/// Everything TCP tracing knows now.
#[derive(Clone, Debug, Serialize)]
pub struct TcpReport {
    pub hooks: Vec<HookStatus>,
    pub stats: TcpStats,
    pub flows: Vec<FlowReport>,
    pub by_remote: Vec<RemoteRollup>,
    pub by_listen_port: Vec<ListenRollup>,
}

/// Live TCP tracing state: attached hooks and the closed flows collected so far.
pub struct TcpTracing {
    hooks: Vec<HookStatus>,
    closed: Vec<TcpFlow>,
    collected: u64,
    dropped: u64,
    /// [`CLOSED_HOLD_NS`], or 0 once finishing.
    hold_ns: u64,
}

/// Whether a closed flow stays in the kernel for now (see [`CLOSED_HOLD_NS`]).
fn held(f: &TcpFlow, now: u64, hold_ns: u64) -> bool {
    f.flags & FLAG_DESTROYED == 0 && now.saturating_sub(f.end_ns) < hold_ns
}

pub use crate::clock::monotonic_ns as monotonic_now_ns;

/// Adds `pid` to the processes whose connections are recorded.
pub fn add_tcp_pid(tracer: &mut Tracer, pid: u32) -> Result<()> {
    let mut targets: HashMap<_, u32, u8> = HashMap::try_from(
        tracer
            .ebpf
            .map_mut("TCP_TARGETS")
            .ok_or_else(|| anyhow!("TCP_TARGETS map missing from the eBPF object"))?,
    )?;
    targets
        .insert(pid, 1, 0)
        .with_context(|| format!("adding pid {pid} to TCP_TARGETS"))
}

/// Attaches TCP hooks (per measurement, the first mechanism of
/// [`hook_order`] that works) and records flows of `pids` (more can be added
/// with [`add_tcp_pid`]). Every hook's outcome is in [`TcpTracing::hooks`];
/// it is an error only when state changes or byte counts cannot be hooked.
pub fn attach_tcp(tracer: &mut Tracer, pids: &[u32]) -> Result<TcpTracing> {
    let order = hook_order()?;
    attach_tcp_with(tracer, pids, &order)
}

/// [`attach_tcp`] with an explicit mechanism preference order.
pub fn attach_tcp_with(
    tracer: &mut Tracer,
    pids: &[u32],
    order: &[Mechanism],
) -> Result<TcpTracing> {
    kernelfs::ensure_tracefs()?;
    let plan = hooks::plan(Path::new(kernelfs::TRACEFS));
    {
        let mut cfg: Array<_, TcpConfig> = Array::try_from(
            tracer
                .ebpf
                .map_mut("TCP_CONFIG")
                .ok_or_else(|| anyhow!("TCP_CONFIG map missing from the eBPF object"))?,
        )?;
        cfg.set(0, plan.config, 0).context("writing TCP_CONFIG")?;
    }
    for &pid in pids {
        add_tcp_pid(tracer, pid)?;
    }
    let hooks = try_attach_hooks(tracer, &plan, order);
    let broken = attach::essential_failures(&hooks);
    if !broken.is_empty() {
        bail!(
            "TCP flow tracing cannot hook {} (order {}):\n  {}",
            broken
                .iter()
                .map(|(r, _)| *r)
                .collect::<Vec<_>>()
                .join(", "),
            order.iter().map(|m| m.name()).collect::<Vec<_>>().join(","),
            broken
                .iter()
                .map(|(_, why)| why.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
    Ok(TcpTracing {
        hooks,
        closed: Vec::new(),
        collected: 0,
        dropped: 0,
        hold_ns: CLOSED_HOLD_NS,
    })
}

impl TcpTracing {
    /// Every hook with its status and, when not attached, why.
    pub fn hooks(&self) -> &[HookStatus] {
        &self.hooks
    }

    /// The mechanism that serves `role` (`state`, `send`, ...), if any.
    pub fn mechanism_of(&self, role: &str) -> Option<&'static str> {
        self.hooks
            .iter()
            .find(|h| h.role == role && h.status == "attached")
            .map(|h| h.method)
    }

    /// From now on collect every closed flow at once, held or not: for the
    /// last report of a run.
    pub fn finishing(&mut self) {
        self.hold_ns = 0;
    }

    /// Moves closed flows out of the kernel map, freeing its slots, except
    /// those of sockets not yet freed that closed less than [`CLOSED_HOLD_NS`]
    /// ago. Call at least every few seconds under heavy connection churn: the
    /// closed map holds 16384 flows and evicts the oldest.
    pub fn collect_closed(&mut self, tracer: &mut Tracer) -> Result<()> {
        let now = monotonic_now_ns();
        let mut map: HashMap<_, ClosedKey, TcpFlow> = HashMap::try_from(
            tracer
                .ebpf
                .map_mut("TCP_CLOSED")
                .ok_or_else(|| anyhow!("TCP_CLOSED map missing"))?,
        )?;
        // Entries may be evicted while iterating; skip those errors.
        let entries: Vec<(ClosedKey, TcpFlow)> = map.iter().filter_map(|r| r.ok()).collect();
        for (k, v) in entries {
            if held(&v, now, self.hold_ns) {
                continue;
            }
            if map.remove(&k).is_err() {
                continue;
            }
            self.collected += 1;
            if self.closed.len() < MAX_KEPT_CLOSED {
                self.closed.push(v);
            } else {
                self.dropped += 1;
            }
        }
        Ok(())
    }

    /// Open flows, read live from the kernel.
    pub fn open_flows(&self, tracer: &Tracer) -> Result<Vec<TcpFlow>> {
        let map: HashMap<&MapData, u64, TcpFlow> = HashMap::try_from(
            tracer
                .ebpf
                .map("TCP_FLOWS")
                .ok_or_else(|| anyhow!("TCP_FLOWS map missing"))?,
        )?;
        Ok(map.iter().filter_map(|r| r.ok()).map(|(_, v)| v).collect())
    }

    /// All flows: closed ones collected so far, then the open ones.
    pub fn flows(&mut self, tracer: &mut Tracer) -> Result<Vec<FlowReport>> {
        self.collect_closed(tracer)?;
        let now = monotonic_now_ns();
        let open = self.open_flows(tracer)?;
        let mut out: Vec<FlowReport> = self
            .closed
            .iter()
            .chain(open.iter())
            .map(|f| FlowReport::from_kernel(f, now))
            .collect();
        out.sort_by_key(|f| (f.pid, f.start_ns));
        Ok(out)
    }

    /// Drops the closed flows held in user space (e.g. after each interval of
    /// a live view, so rows are per interval for closed flows).
    pub fn clear_closed(&mut self) {
        self.closed.clear();
    }

    /// Counters, including the eviction estimate.
    pub fn stats(&self, tracer: &Tracer) -> Result<TcpStats> {
        let counters: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            tracer
                .ebpf
                .map("TCP_STATS")
                .ok_or_else(|| anyhow!("TCP_STATS map missing"))?,
        )?;
        let get = |i: u32| -> Result<u64> {
            Ok(counters
                .get(&i, 0)
                .with_context(|| format!("reading TCP_STATS[{i}]"))?
                .iter()
                .fold(0u64, |a, b| a.saturating_add(*b)))
        };
        let count = |name: &str| -> Result<u64> {
            let m: HashMap<&MapData, u64, TcpFlow> = HashMap::try_from(
                tracer
                    .ebpf
                    .map(name)
                    .ok_or_else(|| anyhow!("{name} map missing"))?,
            )?;
            Ok(m.keys().filter(|k| k.is_ok()).count() as u64)
        };
        let open_now = count("TCP_FLOWS")?;
        let closed_pending = {
            let m: HashMap<&MapData, ClosedKey, TcpFlow> = HashMap::try_from(
                tracer
                    .ebpf
                    .map("TCP_CLOSED")
                    .ok_or_else(|| anyhow!("TCP_CLOSED map missing"))?,
            )?;
            m.keys().filter(|k| k.is_ok()).count() as u64
        };
        let created = get(STAT_FLOWS_CREATED)?;
        Ok(TcpStats {
            flows_created: created,
            flows_closed: get(STAT_FLOWS_CLOSED)?,
            flows_midstream: get(STAT_MIDSTREAM)?,
            open_now,
            closed_collected: self.collected,
            evicted: created
                .saturating_sub(open_now)
                .saturating_sub(self.collected)
                .saturating_sub(closed_pending),
            dropped_closed: self.dropped,
            insert_failed: get(STAT_INSERT_FAILED)?,
            read_failed: get(STAT_READ_FAILED)?,
            accept_walk_failed: get(STAT_ACCEPT_WALK_FAILED)?,
        })
    }

    /// Flows, roll-ups, hooks and counters in one serializable value.
    pub fn report(&mut self, tracer: &mut Tracer) -> Result<TcpReport> {
        let flows = self.flows(tracer)?;
        Ok(TcpReport {
            hooks: self.hooks.clone(),
            stats: self.stats(tracer)?,
            by_remote: flows::rollup_by_remote(&flows),
            by_listen_port: flows::rollup_by_listen_port(&flows),
            flows,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::tcp::FLAG_CLOSED;

    fn closed(end_ns: u64, destroyed: bool) -> TcpFlow {
        TcpFlow {
            end_ns,
            flags: FLAG_CLOSED | if destroyed { FLAG_DESTROYED } else { 0 },
            ..Default::default()
        }
    }

    #[test]
    fn only_recent_closed_flows_of_live_sockets_are_held() {
        let now = 10 * CLOSED_HOLD_NS;
        assert!(held(&closed(now - 1, false), now, CLOSED_HOLD_NS));
        assert!(!held(&closed(now - 1, true), now, CLOSED_HOLD_NS));
        assert!(!held(
            &closed(now - CLOSED_HOLD_NS, false),
            now,
            CLOSED_HOLD_NS
        ));
        // Finishing collects everything.
        assert!(!held(&closed(now, false), now, 0));
    }
}
