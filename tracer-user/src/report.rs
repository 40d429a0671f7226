//! The report: a table for people and a JSON document for programs
//! (schema in docs/json-report.md).

use std::fmt::Write as _;

use serde::Serialize;

use crate::tcp::TcpReport;

use crate::{
    ebpf::{ProbeStatus, ProgramStats},
    latency::fmt_ns,
    maps::{MapFinding, MapReport, MapsLost},
};

/// The lock parts of the report, defined with the lock feature.
pub use crate::locks::report::{Finding, HolderReport, LockPauses, LockRef, LockReport};

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub pid: u32,
    pub exe: String,
    pub go_version: String,
    /// Where `go_version` came from (`buildinfo`, `runtime_build_version`, or
    /// `pclntab_magic`: a lower bound only).
    pub go_version_source: crate::gobin::VersionSource,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub target: Target,
    /// How long tracing ran, in ns.
    pub duration_ns: u64,
    pub probes: Vec<ProbeStatus>,
    pub locks: Vec<LockReport>,
    /// The Go runtime's own lock-wait total beside the probed one.
    pub runtime_lock_wait: crate::locks::report::RuntimeLockWait,
    /// Code that held contended locks (unlocks that woke waiters); only with `--holders`.
    pub holders: Vec<HolderReport>,
    /// Problems found while tracing: `stuck_lock_wait`, and the map findings
    /// (`map_fatal`, `concurrent_map_*`), which come first.
    pub findings: Vec<AnyFinding>,
    /// The map feature's probes (`map_fatal`, `map_growth`, `map_ops`), kept
    /// apart from `probes` (lock features) so that list keeps its meaning.
    pub map_probes: Vec<ProbeStatus>,
    /// Maps seen by the map probes (growth always; operations with `--maps deep`).
    pub maps: Vec<MapReport>,
    /// The same use per call site, most active first (the human table).
    pub map_sites: Vec<crate::maps::report::MapSiteReport>,
    /// sync.Map instances, their call mix and advice; only with `--maps deep`.
    pub sync_maps: Vec<crate::maps::syncmap::SyncMapReport>,
    /// Map records the kernel could not keep; null with `--maps off`.
    pub maps_lost: Option<MapsLost>,
    /// Map operations counted with `--maps deep` (two probe hits each).
    pub map_op_hits: Option<u64>,
    /// The happens-before detector's probes and counters; `--maps deep` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub happens_before: Option<crate::maps::report::HappensBefore>,
    /// What the budgeted tier probed, for how long, and what the budget
    /// allowed; `--maps budget` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub race_budget: Option<crate::maps::budget::BudgetReport>,
    /// Per probe program run count and run time; only with `--bpf-stats`.
    pub bpf_stats: Vec<ProgramStats>,
    /// TCP flows of the process (per connection and rolled up); absent when off.
    pub tcp: Option<TcpReport>,
    /// Why `tcp` is absent.
    pub tcp_off: Option<String>,
    /// Set when the rate guard detached the lock probes: lock counts are then lower bounds.
    pub lock_probe_pauses: Option<LockPauses>,
    /// Stuck waits past the threshold left out of `findings`: more than 256
    /// per process (the oldest ended ones make room first).
    pub stuck_waits_dropped: u64,
    /// Where the executable is mapped, for pprof mappings (not in the JSON).
    #[serde(skip)]
    pub image: Option<Image>,
}

/// The executable's text mapping in the traced process.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    pub path: String,
    /// Runtime address range of the executable segment.
    pub start: u64,
    pub limit: u64,
    pub file_offset: u64,
}

/// Any finding; serialized as the inner object (each has its own `kind`).
#[derive(Clone, Debug, Serialize)]
#[serde(untagged)]
pub enum AnyFinding {
    Lock(Finding),
    /// Boxed: a map finding carries two stacks.
    Map(Box<MapFinding>),
}

impl Report {
    /// Renders the contention table; `limit` caps the rows shown.
    pub fn table(&self, limit: usize) -> String {
        let mut out = String::new();
        let t = &self.target;
        let _ = writeln!(
            out,
            "tracer: pid {} {} ({}{}), traced {}",
            t.pid,
            t.exe,
            t.go_version,
            match t.go_version_source {
                crate::gobin::VersionSource::Buildinfo => "",
                crate::gobin::VersionSource::RuntimeBuildVersion => ", from runtime.buildVersion",
                crate::gobin::VersionSource::PclntabMagic => ", from the pclntab layout",
            },
            fmt_ns(self.duration_ns)
        );
        for p in self.probes.iter().filter(|p| p.status == "failed") {
            let _ = writeln!(
                out,
                "  {} probes failed: {}",
                p.feature,
                p.reason.as_deref().unwrap_or("")
            );
        }
        let missing: Vec<&str> = self
            .probes
            .iter()
            .filter(|p| p.status == "missing")
            .map(|p| p.feature.as_str())
            .collect();
        if !missing.is_empty() {
            let _ = writeln!(
                out,
                "  not traced (their runtime functions are not linked in this binary): {}",
                missing.join(", ")
            );
        }
        self.findings_table(&mut out);
        if let Some(b) = &self.race_budget {
            let _ = writeln!(out, "{}", b.summary());
            let _ = writeln!(
                out,
                "  map operation counts below cover only the time each call site was probed"
            );
            if let Some(g) = b.growth_summary() {
                let _ = writeln!(out, "  {g}");
            }
        }
        if let Some(lost) = &self.maps_lost {
            for w in lost.warnings(self.map_op_hits.unwrap_or(0)) {
                let _ = writeln!(out, "  {w}");
            }
        }
        crate::maps::table::table(&self.map_sites, limit, &mut out);
        crate::maps::syncmap::table(&self.sync_maps, limit, &mut out);
        crate::locks::table::table(
            &self.locks,
            &self.holders,
            self.lock_probe_pauses.as_ref(),
            &self.runtime_lock_wait,
            limit,
            &mut out,
        );
        self.tcp_table(limit, &mut out);
        out
    }

    /// TCP flows rolled up per remote endpoint, most bytes first, then per
    /// local listening port (server side, with accept-queue waits).
    fn tcp_table(&self, limit: usize, out: &mut String) {
        let Some(tcp) = &self.tcp else {
            return;
        };
        let s = &tcp.stats;
        if s.hook_misses > 0 {
            let _ = writeln!(
                out,
                "  TCP: the kernel skipped {} hook runs (another BPF program was running on the CPU): counts are lower bounds",
                s.hook_misses
            );
        }
        if s.evicted > 0 || s.dropped_closed > 0 || s.closed_lost > 0 {
            let _ = writeln!(
                out,
                "  TCP: {} flows evicted from the kernel table, {} closed flows dropped: counts are lower bounds",
                s.evicted,
                s.dropped_closed + s.closed_lost
            );
        }
        if tcp.by_remote.is_empty() && tcp.by_listen_port.is_empty() {
            let _ = writeln!(out, "no TCP flows recorded");
            return;
        }
        if !tcp.by_remote.is_empty() {
            Self::tcp_remote_table(tcp, limit, out);
        }
        if !tcp.by_listen_port.is_empty() {
            Self::tcp_listen_table(tcp, limit, out);
        }
    }

    fn tcp_remote_table(tcp: &TcpReport, limit: usize, out: &mut String) {
        let _ = writeln!(
            out,
            "{:<40} {:>6} {:>12} {:>12} {:>8} {:>7} {:>10}",
            "TCP REMOTE", "FLOWS", "SENT", "RECEIVED", "RETRANS", "RESETS", "SRTT MAX"
        );
        let mut rows: Vec<_> = tcp.by_remote.iter().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.totals.bytes_sent + r.totals.bytes_received));
        for r in rows.iter().take(limit) {
            let remote = match r.remote_addr {
                Some(std::net::IpAddr::V6(a)) => format!("[{a}]:{}", r.remote_port),
                Some(a) => format!("{a}:{}", r.remote_port),
                None => format!("?:{}", r.remote_port),
            };
            let t = &r.totals;
            let _ = writeln!(
                out,
                "{:<40} {:>6} {:>12} {:>12} {:>8} {:>7} {:>10}",
                remote,
                t.flows,
                t.bytes_sent,
                t.bytes_received,
                t.retransmits,
                t.resets_sent + t.resets_received,
                t.srtt_max_us.map_or("-".into(), |us| fmt_ns(us * 1000))
            );
        }
    }

    /// Server flows per (pid, listening port): accepts counts the flows whose
    /// accept-queue wait was measured; `-` where none was.
    fn tcp_listen_table(tcp: &TcpReport, limit: usize, out: &mut String) {
        let _ = writeln!(
            out,
            "{:<12} {:>8} {:>6} {:>12} {:>12} {:>8} {:>11} {:>11}",
            "TCP LISTEN", "PID", "FLOWS", "SENT", "RECEIVED", "ACCEPTS", "ACCEPT AVG", "ACCEPT MAX"
        );
        for r in tcp.by_listen_port.iter().take(limit) {
            let t = &r.totals;
            let a = &r.accept;
            let _ = writeln!(
                out,
                "{:<12} {:>8} {:>6} {:>12} {:>12} {:>8} {:>11} {:>11}",
                format!(":{}", r.local_port),
                r.pid,
                t.flows,
                t.bytes_sent,
                t.bytes_received,
                a.accepts,
                a.accept_wait_mean_ns.map_or("-".into(), fmt_ns),
                a.accept_wait_max_ns.map_or("-".into(), fmt_ns)
            );
        }
    }

    fn findings_table(&self, out: &mut String) {
        let map_findings: Vec<&MapFinding> = self
            .findings
            .iter()
            .filter_map(|f| match f {
                AnyFinding::Map(m) => Some(m.as_ref()),
                AnyFinding::Lock(_) => None,
            })
            .collect();
        crate::maps::table::findings_table(&map_findings, out);
        let lock_findings = self.findings.iter().filter_map(|f| match f {
            AnyFinding::Lock(l) => Some(l),
            AnyFinding::Map(_) => None,
        });
        crate::locks::table::findings(lock_findings, self.stuck_waits_dropped, out);
    }
}
