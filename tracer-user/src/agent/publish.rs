//! Publishing: each refresh, every traced process's report, merged into one
//! node snapshot for the hub; each new finding published once.

use super::core::Agent;
use super::sessions::{RETIRED_FOR, Traced};
use std::{sync::Arc, time::Instant};

use super::{
    deep,
    discovery::{self, Found},
    flows::process_flows,
    hub::{Health, HubWriter, NodeSnapshot},
};
use crate::{
    clock::unix_now_ns,
    report::{AnyFinding, Report},
    session::Session,
    tcp::TcpReport,
};

/// Stable identity of a finding, so each is published once however often
/// its count changes.
pub(super) fn finding_key(f: &AnyFinding) -> String {
    match f {
        AnyFinding::Lock(l) => format!(
            "{}|{}|{:?}|{:?}",
            l.kind,
            l.lock.address,
            l.goroutine,
            l.site.as_ref().map(|s| (&s.function, s.line))
        ),
        AnyFinding::Map(m) => {
            let side = |s: &Option<crate::maps::report::OpSideReport>| {
                s.as_ref().and_then(|s| {
                    s.site
                        .as_ref()
                        .map(|x| format!("{}:{}", x.function, x.line))
                })
            };
            format!(
                "{}|{:?}|{:?}|{:?}|{:?}|{:?}",
                m.kind,
                m.map,
                m.message,
                side(&m.op),
                side(&m.other),
                m.site.as_ref().map(|s| (&s.function, s.line))
            )
        }
    }
}

/// Resident set size of the agent, bytes.
pub(super) fn own_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

impl Agent {
    /// Applies one lifecycle event.
    pub fn found(&mut self, f: Found) {
        match f {
            Found::Exec(seen) => self.consider_seen(*seen),
            Found::Exit { pid } => self.exited(pid),
        }
    }

    /// Applies the events queued now, without waiting.
    pub(super) fn drain(&mut self, rx: &mut tokio::sync::mpsc::Receiver<Found>) {
        for _ in 0..4096 {
            match rx.try_recv() {
                Ok(f) => self.found(f),
                Err(_) => break,
            }
        }
    }

    /// Rebuilds the snapshot and publishes new findings. Execs that arrive
    /// meanwhile are handled between processes, so a snapshot of a busy
    /// node does not delay the tracing of a new process.
    pub fn publish(&mut self, mut events: Option<&mut tokio::sync::mpsc::Receiver<Found>>) {
        let t0 = Instant::now();
        let node_tcp = self.collect_flows();
        self.retire(node_tcp.as_ref(), events.as_deref_mut());
        let mut reports = Vec::with_capacity(self.traced.len());
        let mut processes = Vec::with_capacity(self.traced.len() + self.failed.len());
        let pids: Vec<u32> = self.traced.keys().copied().collect();
        for pid in pids {
            if let Some(rx) = events.as_deref_mut() {
                self.drain(rx);
            }
            let Some(mut t) = self.traced.remove(&pid) else {
                continue;
            };
            // The kubelet reports a container's id a moment after it
            // starts: fill in names that were not known at exec.
            if let Some(pods) = &self.opts.pods
                && t.info.labels.pod_uid.is_some()
                && t.info.labels.container_name.is_none()
            {
                pods.fill(&mut t.info.labels);
            }
            if let Some(bs) = self.sessions.get_mut(&t.key)
                && let Some(r) = report_of(&self.hub, &mut bs.session, &mut t, node_tcp.as_ref())
            {
                processes.push(t.info.clone());
                reports.push(r);
            }
            self.traced.insert(pid, t);
        }
        self.retired.retain(|r| r.at.elapsed() < RETIRED_FOR);
        for r in &self.retired {
            processes.push(r.info.clone());
            reports.push(r.report.clone());
        }
        processes.extend(self.failed.iter().cloned());
        let lost: u64 = reports
            .iter()
            .filter_map(|r| r.maps_lost.as_ref())
            .map(|l| l.fatal_events + l.overlaps + l.growth_events + l.ops + l.sync_map_calls)
            .sum();
        let (evictions, tcp_lost) = node_tcp.as_ref().map_or((0, 0), |t| {
            (
                t.stats.evicted,
                // Hook runs the kernel skipped are events lost too.
                t.stats.dropped_closed + t.stats.closed_lost + t.stats.hook_misses,
            )
        });
        // Kernel-measured probe cost (non-zero with --bpf-stats).
        let (probe_hits, bpf_run_time_ns) = if self.opts.session.bpf_stats {
            self.sessions
                .values()
                .flat_map(|bs| bs.session.tracer.program_stats())
                .chain(self.shared.program_stats())
                .fold((0, 0), |(n, t), p| (n + p.run_count, t + p.run_time_ns))
        } else {
            (0, 0)
        };
        self.generation += 1;
        let snapshot = NodeSnapshot {
            generation: self.generation,
            taken_unix_ns: unix_now_ns(),
            node: self.opts.node.clone(),
            processes,
            reports,
            health: Health {
                processes_traced: self.traced.len() as u32,
                processes_failed: self.failed.len() as u32,
                processes_missed: self.missed,
                processes_unreadable: self.unreadable,
                events_lost: lost + tcp_lost + discovery::lost(&self.shared),
                map_evictions: evictions,
                probe_hits,
                bpf_run_time_ns,
                rss_bytes: own_rss(),
            },
            go_versions: self.go_versions.iter().cloned().collect(),
        };
        let n = snapshot.reports.len();
        self.hub.snapshots.send_replace(Arc::new(snapshot));
        tracing::debug!(
            "snapshot {} of {n} processes built in {:.2} ms",
            self.generation,
            t0.elapsed().as_secs_f64() * 1e3
        );
    }
}

/// One process's report as of now, with its flows; publishes its new
/// findings.
pub(super) fn report_of(
    hub: &HubWriter,
    session: &mut Session,
    t: &mut Traced,
    node_tcp: Option<&TcpReport>,
) -> Option<Report> {
    let pid = t.info.pid;
    let mut report = match tokio::task::block_in_place(|| session.report_for(pid)) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("pid {pid}: reading its aggregates failed: {e:#}");
            return None;
        }
    };
    if let Some(d) = t.deep.as_mut() {
        match tokio::task::block_in_place(|| d.report()) {
            Ok(r) => t.deep_result = Some(r),
            Err(e) => tracing::warn!("pid {pid}: reading the deep map trace: {e:#}"),
        }
        if d.done() {
            tracing::info!("pid {pid}: deep map trace ended");
            if let Some(d) = t.deep.take() {
                std::thread::spawn(move || drop(d));
            }
        }
    }
    if let Some(d) = &t.deep_result {
        deep::merge(&mut report, d);
    }
    if let Some(node) = node_tcp {
        report.tcp = Some(process_flows(t, node));
        report.tcp_off = None;
    }
    let now = unix_now_ns();
    let keys: Vec<String> = report.findings.iter().map(finding_key).collect();
    for (f, key) in report.findings.iter().zip(&keys) {
        if t.published.insert(key.clone()) {
            // One short line: the whole finding (with its stack) is in the
            // API and the report.
            tracing::warn!("finding in pid {pid} ({}): {}", t.info.comm, key);
            hub.findings.publish(
                pid,
                t.info.comm.clone(),
                t.info.labels.clone(),
                now,
                f.clone(),
            );
        }
    }
    // A finding gone from the report (a stuck wait evicted for a newer one)
    // never comes back: forget its key, so the set stays as small as the
    // report's bounded findings.
    t.published.retain(|k| keys.contains(k));
    Some(report)
}
