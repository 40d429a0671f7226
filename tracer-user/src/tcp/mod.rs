//! TCP flow tracing from kprobes, fentry/fexit or tracepoints (chosen per
//! measurement at start-up): per connection bytes, calls,
//! connect latency, accept-queue wait, smoothed RTT, retransmits, resets and lifetime, attributed
//! to the traced processes.
//!
//! Use: [`attach_tcp`] with a [`TcpOptions`] after [`Tracer::load`](crate::ebpf::Tracer::load),
//! then [`TcpTracing::report`] whenever a view is wanted (open flows are read
//! live from the kernel map). See `docs/tcp.md`.

mod attach;
pub mod btf;
pub mod flows;
pub mod format;
pub mod hooks;
mod options;

use anyhow::{Context, Result, anyhow, bail};
use aya::maps::{HashMap, MapData, PerCpuArray, RingBuf};
use serde::Serialize;
use tracer_common::tcp::{
    FLAG_CLOSED, FLAG_DESTROYED, STAT_ACCEPT_WALK_FAILED, STAT_CLOSED_LOST, STAT_FLOWS_CLOSED,
    STAT_FLOWS_CREATED, STAT_INSERT_FAILED, STAT_MIDSTREAM, STAT_READ_FAILED, TcpFlow,
};

use crate::ebpf::Tracer;
pub use attach::{KernelReport, RoleChoice, inspect_kernel, try_attach_hooks};
pub use flows::{AcceptWaits, FlowReport, FlowTotals, ListenRollup, RemoteRollup, WaitBucket};
pub use hooks::{HookStatus, Mechanism};
pub use options::{
    ACCEPT_WAIT_ENV, AcceptWait, HOOK_ORDER_ENV, RTT_EVERY, RTT_MODE_ENV, RttMode, TcpOptions,
    plan_rtt,
};

/// How often user space empties the kernel's closed-flow ring buffer
/// (4 MiB, about 12 500 flows), independent of any refresh: at 10 drains a
/// second flows are lost only beyond ~125 000 freed sockets a second.
pub const TCP_DRAIN: std::time::Duration = std::time::Duration::from_millis(100);

/// Bytes one finished flow takes in the kernel's ring buffer (its 8-byte
/// record header included).
pub const FLOW_RECORD_BYTES: usize = size_of::<TcpFlow>() + 8;

/// Closed flows kept in user space between reports; beyond this they are
/// counted in [`TcpStats::dropped_closed`] and discarded (about 300 B each).
pub const MAX_KEPT_CLOSED: usize = 100_000;

/// How long a closed flow whose socket was not seen freed may stay in the
/// kernel's flow table before user space collects it. The kernel keeps a
/// closed flow until its socket is freed (data that arrived before CLOSE,
/// such as a half-closed client's last reply, can still be read and is
/// added to it) and then hands it over through a ring buffer; this only
/// matters where no hook sees sockets being freed, or one was missed.
pub const CLOSED_HOLD_NS: u64 = 1_000_000_000;

/// Counters that say how complete the flow data is.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct TcpStats {
    /// Flows the kernel started recording.
    pub flows_created: u64,
    /// Flows that reached TCP_CLOSE in the kernel.
    pub flows_closed: u64,
    /// Closed flows whose socket is not freed yet (still in the kernel's
    /// flow table).
    pub closed_pending: u64,
    /// Flows first seen at send/recv (opened before tracing).
    pub flows_midstream: u64,
    /// Open flows in the kernel map now.
    pub open_now: u64,
    /// Closed flows read out of the kernel so far.
    pub closed_collected: u64,
    /// Flows the LRU map evicted before user space read them:
    /// created − open now − closed pending − collected − lost. Exact
    /// when nothing changes during the read, an estimate otherwise.
    pub evicted: u64,
    /// Finished flows the kernel dropped because the closed-flow ring
    /// buffer was full (user space drained it too slowly).
    pub closed_lost: u64,
    /// Closed flows dropped because [`MAX_KEPT_CLOSED`] were already held.
    pub dropped_closed: u64,
    pub insert_failed: u64,
    pub read_failed: u64,
    /// Accepts whose new fd the accept tracepoint could not walk to a
    /// socket (their accept wait is not measured).
    pub accept_walk_failed: u64,
    /// Hook runs the kernel skipped because another BPF program was running
    /// on the same CPU (a softirq's state change during a probe): each may be
    /// a flow not created, a close not seen or bytes not counted, so the
    /// counts are lower bounds when this is not 0.
    pub hook_misses: u64,
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
    /// Finished flows from the kernel (`TCP_CLOSED_RB`).
    ring: RingBuf<MapData>,
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
            .map_mut(tracer_common::names::map::TCP_TARGETS)
            .ok_or_else(|| anyhow!("TCP_TARGETS map missing from the eBPF object"))?,
    )?;
    targets
        .insert(pid, 1, 0)
        .with_context(|| format!("adding pid {pid} to TCP_TARGETS"))
}

/// Attaches TCP hooks (per measurement, the first mechanism of the hook
/// order in `opts` that works) and records flows of `pids` (more can be
/// added with [`add_tcp_pid`]). Every hook's outcome is in
/// [`TcpTracing::hooks`]; it is an error only when state changes or byte
/// counts cannot be hooked.
pub fn attach_tcp(tracer: &mut Tracer, pids: &[u32], opts: &TcpOptions) -> Result<TcpTracing> {
    let order = opts.hook_order()?;
    for r in &opts.unhooked {
        match hooks::role_is_essential(r) {
            None => bail!("no TCP hook role named {r:?}"),
            Some(true) => bail!("the {r} role cannot be left unhooked: flows need it"),
            Some(false) => {}
        }
    }
    let plan = attach::plan_and_configure(tracer, opts)?;
    for &pid in pids {
        add_tcp_pid(tracer, pid)?;
    }
    let ring = RingBuf::try_from(
        tracer
            .ebpf
            .take_map(tracer_common::names::map::TCP_CLOSED_RB)
            .ok_or_else(|| anyhow!("TCP_CLOSED_RB ring buffer missing from the eBPF object"))?,
    )
    .context("opening the TCP_CLOSED_RB ring buffer")?;
    let hooks = try_attach_hooks(tracer, &plan, &order, opts);
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
        ring,
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

    /// Takes the finished flows the kernel handed over. Cheap (no system
    /// call): call every few hundred milliseconds under heavy connection
    /// churn, since the ring buffer holds about 12 500 flows.
    pub fn collect_closed(&mut self) {
        let mut got = Vec::new();
        while let Some(item) = self.ring.next() {
            got.extend(decode_flow(&item));
        }
        for f in got {
            self.keep(f);
        }
    }

    fn keep(&mut self, f: TcpFlow) {
        self.collected += 1;
        if self.closed.len() < MAX_KEPT_CLOSED {
            self.closed.push(f);
        } else {
            self.dropped += 1;
        }
    }

    /// Flows in the kernel table now: open ones, and closed ones whose
    /// socket is not freed yet.
    pub fn open_flows(&self, tracer: &Tracer) -> Result<Vec<TcpFlow>> {
        let map: HashMap<&MapData, u64, TcpFlow> = HashMap::try_from(
            tracer
                .ebpf
                .map(tracer_common::names::map::TCP_FLOWS)
                .ok_or_else(|| anyhow!("TCP_FLOWS map missing"))?,
        )?;
        // Entries may be removed while iterating; skip those errors.
        Ok(map.iter().filter_map(|r| r.ok()).map(|(_, v)| v).collect())
    }

    /// The open flows of the kernel table; collects the closed flows it still
    /// holds past [`CLOSED_HOLD_NS`] (their socket was not seen freed).
    fn table_flows(&mut self, tracer: &mut Tracer) -> Result<Vec<TcpFlow>> {
        let now = monotonic_now_ns();
        let mut map: HashMap<_, u64, TcpFlow> = HashMap::try_from(
            tracer
                .ebpf
                .map_mut(tracer_common::names::map::TCP_FLOWS)
                .ok_or_else(|| anyhow!("TCP_FLOWS map missing"))?,
        )?;
        let entries: Vec<(u64, TcpFlow)> = map.iter().filter_map(|r| r.ok()).collect();
        let mut live = Vec::with_capacity(entries.len());
        for (sk, f) in entries {
            if f.flags & FLAG_CLOSED == 0 {
                live.push(f);
            } else if !held(&f, now, self.hold_ns) {
                // A failed removal lost the race with the kernel freeing the
                // socket: the ring buffer has the flow.
                if map.remove(&sk).is_ok() {
                    self.keep(f);
                }
            }
            // Closed and held: reported once, when final (freed or expired),
            // not once per report while its socket lingers.
        }
        Ok(live)
    }

    /// All flows: closed ones collected so far, then the open ones.
    pub fn flows(&mut self, tracer: &mut Tracer) -> Result<Vec<FlowReport>> {
        let mut table = self.table_flows(tracer)?;
        // Flows freed while the table was read are in both: keep the final copy.
        let before = self.closed.len();
        self.collect_closed();
        if self.closed.len() > before {
            let done: std::collections::HashSet<(u64, u64)> = self.closed[before..]
                .iter()
                .map(|f| (f.skaddr, f.start_ns))
                .collect();
            table.retain(|f| !done.contains(&(f.skaddr, f.start_ns)));
        }
        let now = monotonic_now_ns();
        let mut out: Vec<FlowReport> = self
            .closed
            .iter()
            .chain(table.iter())
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
                .map(tracer_common::names::map::TCP_STATS)
                .ok_or_else(|| anyhow!("TCP_STATS map missing"))?,
        )?;
        let get = |i: u32| -> Result<u64> {
            Ok(counters
                .get(&i, 0)
                .with_context(|| format!("reading TCP_STATS[{i}]"))?
                .iter()
                .fold(0u64, |a, b| a.saturating_add(*b)))
        };
        let (mut open_now, mut closed_pending) = (0u64, 0u64);
        for f in self.open_flows(tracer)? {
            if f.flags & FLAG_CLOSED != 0 {
                closed_pending += 1;
            } else {
                open_now += 1;
            }
        }
        let created = get(STAT_FLOWS_CREATED)?;
        let lost = get(STAT_CLOSED_LOST)?;
        Ok(TcpStats {
            flows_created: created,
            flows_closed: get(STAT_FLOWS_CLOSED)?,
            closed_pending,
            flows_midstream: get(STAT_MIDSTREAM)?,
            open_now,
            closed_collected: self.collected,
            evicted: created
                .saturating_sub(open_now)
                .saturating_sub(closed_pending)
                .saturating_sub(self.collected)
                .saturating_sub(lost),
            closed_lost: lost,
            dropped_closed: self.dropped,
            insert_failed: get(STAT_INSERT_FAILED)?,
            read_failed: get(STAT_READ_FAILED)?,
            accept_walk_failed: get(STAT_ACCEPT_WALK_FAILED)?,
            hook_misses: tracer.recursion_misses(tracer_common::names::program::TCP_PREFIX),
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

/// One ring-buffer record as a flow; `None` when it is too short.
fn decode_flow(bytes: &[u8]) -> Option<TcpFlow> {
    if bytes.len() < size_of::<TcpFlow>() {
        return None;
    }
    // SAFETY: the length was checked; TcpFlow is plain integers and byte
    // arrays, valid for any bit pattern; read_unaligned copes with the
    // record's 8-byte alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
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
