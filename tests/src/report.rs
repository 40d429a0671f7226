//! Typed queries on tracer's JSON report (docs/json-report.md), for the
//! parts the tests read: the target, lock and holder rows, stuck-wait and map
//! overlap findings, map operations and sync.Map rows. The same shape serves a `tracer run`/`attach` report and each
//! process report inside an agent's final snapshot.
//!
//! Every field declared here is required: a report that lacks one fails to
//! parse, so a renamed or dropped field fails the test loudly instead of
//! reading as 0 or empty. Fields the tests do not read are ignored, and
//! parts not modelled yet are still read as `serde_json::Value`.
//!
//! These structs are the tests' own, not tracer-user's: they pin the JSON
//! format from outside, whatever the Rust types behind it are called.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::Value;

/// A source location.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Site {
    pub function: String,
    pub file: String,
    pub line: u32,
}

/// The traced process.
#[derive(Debug, Clone, Deserialize)]
pub struct Target {
    pub pid: u32,
    pub exe: String,
    pub go_version: String,
}

/// One row of `locks`: the waits for one lock at one call site.
#[derive(Debug, Clone, Deserialize)]
pub struct LockRow {
    pub address: String,
    /// `mutex`, `rwmutex_read`, `rwmutex_write`, ...
    pub kind: String,
    /// The lock's global variable name, when it has one.
    pub name: Option<String>,
    pub site: Site,
    pub stack: Vec<Site>,
    pub contentions: u64,
    pub goroutines: u64,
    pub wait_ns_total: u64,
    pub wait_ns_p50: u64,
    pub wait_ns_p99: u64,
    pub wait_ns_max: u64,
    /// Of `contentions`, those that ended with a starvation-mode hand-off.
    pub handoffs: u64,
    pub handoffs_unmeasured: u64,
}

/// `runtime_lock_wait`: the Go runtime's own lock-wait total.
#[derive(Debug, Clone, Deserialize)]
pub struct RuntimeLockWait {
    pub total_ns: Option<u64>,
    pub probed_ns: u64,
    pub reason: Option<String>,
}

/// One entry of `probes`: a lock feature's probes and how they attached.
#[derive(Debug, Clone, Deserialize)]
pub struct ProbeRow {
    pub feature: String,
    pub function: Option<String>,
    pub status: String,
    /// RET instructions probed as exits (0 when Mutex waits close off the lock).
    pub ret_sites: u64,
    pub reason: Option<String>,
}

/// One entry of `bpf_stats` (`--bpf-stats`).
#[derive(Debug, Clone, Deserialize)]
pub struct ProgramStats {
    pub program: String,
    pub run_count: u64,
    pub run_time_ns: u64,
}

/// One row of `holders` (`--holders`): the code that unlocked a contended
/// lock and had to wake a waiter.
#[derive(Debug, Clone, Deserialize)]
pub struct HolderRow {
    pub address: String,
    pub kind: String,
    pub name: Option<String>,
    pub site: Site,
    pub stack: Vec<Site>,
    pub wakeups: u64,
}

/// Which lock a finding is about.
#[derive(Debug, Clone, Deserialize)]
pub struct LockRef {
    pub address: String,
    pub kind: String,
    pub name: Option<String>,
}

/// A `stuck_lock_wait` finding: a wait longer than the threshold.
#[derive(Debug, Clone, Deserialize)]
pub struct StuckWait {
    pub pid: u32,
    pub goroutine: Option<u64>,
    pub lock: LockRef,
    /// Longest age observed, ns.
    pub age_ns: u64,
    /// Still waiting when the report was made.
    pub ongoing: bool,
    pub site: Option<Site>,
    pub stack: Vec<Site>,
}

/// One side of a map overlap: an operation and where it was made.
#[derive(Debug, Clone, Deserialize)]
pub struct OpSide {
    /// `read`, `write`, `iterate`, ...
    pub op: String,
    pub goroutine: Option<u64>,
    pub site: Option<Site>,
    pub stack: Vec<Site>,
}

impl OpSide {
    /// Whether this side was made at `function`:`line`.
    pub fn at(&self, function: &str, line: u32) -> bool {
        self.site
            .as_ref()
            .is_some_and(|s| s.function == function && s.line == line)
    }
}

/// An overlap finding (`concurrent_map_write`, `concurrent_map_read_write`,
/// `concurrent_map_iteration_write`): two operations on one map at once.
#[derive(Debug, Clone, Deserialize)]
pub struct MapOverlap {
    pub pid: u32,
    /// The map's address, as hex.
    pub map: String,
    /// The operation that started second.
    pub op: OpSide,
    /// The operation already in flight.
    pub other: OpSide,
    pub count: u64,
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// `overlap` or `happens_before`.
    pub detection: String,
    /// Happens-before findings: whether the in-flight check saw them overlap.
    pub overlapped: Option<bool>,
    /// Happens-before findings: the synchronisation gap, in words.
    pub explanation: Option<String>,
}

/// The finding kinds of two racing map accesses.
pub const RACE_KINDS: [&str; 3] = [
    "concurrent_map_write",
    "concurrent_map_read_write",
    "concurrent_map_iteration_write",
];

/// A `map_fatal` finding: the runtime's own fatal error about a map.
#[derive(Debug, Clone, Deserialize)]
pub struct MapFatal {
    pub pid: u32,
    /// The runtime's message, e.g. `concurrent map writes`.
    pub message: String,
    /// The crashing goroutine.
    pub goroutine: Option<u64>,
    pub site: Option<Site>,
    pub stack: Vec<Site>,
}

/// A call site and how often it did something.
#[derive(Debug, Clone, Deserialize)]
pub struct SiteCount {
    pub site: Site,
    pub count: u64,
}

/// One kind of operation on one map (`--maps deep`).
#[derive(Debug, Clone, Deserialize)]
pub struct MapOps {
    /// `read`, `write`, `delete`, `iterate`, ...
    pub kind: String,
    pub count: u64,
    /// Time spent in these operations, ns.
    pub ns_total: u64,
    pub top_sites: Vec<SiteCount>,
}

/// One map seen by the map probes.
#[derive(Debug, Clone, Deserialize)]
pub struct MapRow {
    pub pid: u32,
    pub address: String,
    pub ops: Vec<MapOps>,
    pub growth_events: u64,
}

/// One row of `sync_maps` (`--maps deep`): a sync.Map's call mix and advice.
#[derive(Debug, Clone, Deserialize)]
pub struct SyncMapRow {
    pub pid: u32,
    /// The sync.Map's address, as hex.
    pub address: String,
    /// Calls by method; a method never called is not listed.
    pub calls: BTreeMap<String, u64>,
    pub total: u64,
    pub reads: u64,
    pub writes: u64,
    pub ranges: u64,
    /// reads / (reads + writes); null without either.
    pub read_share: Option<f64>,
    /// `read_mostly`, `balanced`, `write_heavy`, `range_heavy` or `too_few_calls`.
    pub advice_kind: String,
    pub advice: String,
}

impl SyncMapRow {
    /// Calls of `method`: 0 when it is not listed, which is how the report
    /// says a method was never called.
    pub fn calls_of(&self, method: &str) -> u64 {
        self.calls.get(method).copied().unwrap_or(0)
    }
}

/// One entry of an agent snapshot's `processes`: what the agent knows of a
/// process it selected.
#[derive(Debug, Clone, Deserialize)]
pub struct ProcessEntry {
    /// Host pid.
    pub pid: u32,
    /// Pid in the process's innermost pid namespace.
    pub ns_pid: u32,
    pub comm: String,
    pub exe: String,
    /// `traced`, `failed`, `exited`, `detached`, ...
    pub state: String,
    pub reason: Option<String>,
    /// From exec (or discovery) to probes live, ns.
    pub attach_latency_ns: u64,
    /// Container and pod labels, as the agent publishes them.
    pub labels: Value,
}

impl ProcessEntry {
    /// Parses one `processes` entry (see [`crate::agent::process_info`]).
    pub fn parse(json: &Value) -> Result<Self> {
        ProcessEntry::deserialize(json).with_context(|| format!("process entry {json}"))
    }
}

/// The parts of one process's report that the tests read.
#[derive(Debug, Clone, Deserialize)]
pub struct Report {
    pub target: Target,
    pub probes: Vec<ProbeRow>,
    /// Empty without `--bpf-stats`.
    #[serde(default)]
    pub bpf_stats: Vec<ProgramStats>,
    pub locks: Vec<LockRow>,
    pub runtime_lock_wait: RuntimeLockWait,
    /// Empty without `--holders`.
    pub holders: Vec<HolderRow>,
    /// Lock and map findings; each has its own shape, told by `kind`.
    pub findings: Vec<Value>,
    pub maps: Vec<MapRow>,
    pub sync_maps: Vec<SyncMapRow>,
    /// The budgeted tier's account (`--maps budget`, the default).
    pub race_budget: Option<RaceBudget>,
}

/// `race_budget`: what the budgeted tier probed and spent.
#[derive(Debug, Clone, Deserialize)]
pub struct RaceBudget {
    pub budget: f64,
    pub trap_ns: Option<f64>,
    pub elapsed_ns: u64,
    pub allowed_ns: u64,
    pub spent_ns: u64,
    pub call_sites: usize,
    pub continuous: usize,
    pub hot: usize,
    pub windows: u64,
    pub sites: Vec<BudgetSite>,
    /// The growth probes, with the same fields.
    pub growth: Vec<BudgetSite>,
}

/// One call site of `race_budget.sites`.
#[derive(Debug, Clone, Deserialize)]
pub struct BudgetSite {
    pub caller: String,
    pub callee: String,
    pub line: Option<u32>,
    pub state: String,
    pub probed_ns: u64,
    pub hits: u64,
}

impl RaceBudget {
    /// The sites of `caller` at `line`.
    pub fn sites_at(&self, caller: &str, line: u32) -> Vec<&BudgetSite> {
        self.sites
            .iter()
            .filter(|s| s.caller == caller && s.line == Some(line))
            .collect()
    }
}

impl Report {
    /// Parses a report (a `tracer run`/`attach` JSON report, or one entry
    /// of an agent snapshot's `reports`).
    pub fn parse(json: &Value) -> Result<Self> {
        Report::deserialize(json).context("report does not have the shape the tests expect")
    }

    /// Lock rows of `kind`.
    pub fn locks_of_kind(&self, kind: &str) -> Vec<&LockRow> {
        self.locks.iter().filter(|l| l.kind == kind).collect()
    }

    /// Times the BPF program `name` ran (with `--bpf-stats`; 0 when absent).
    pub fn program_runs(&self, name: &str) -> u64 {
        self.bpf_stats
            .iter()
            .filter(|p| p.program == name)
            .map(|p| p.run_count)
            .sum()
    }

    /// Contentions over every lock row.
    pub fn contentions(&self) -> u64 {
        self.locks.iter().map(|l| l.contentions).sum()
    }

    /// Total wait over every lock row, ns.
    pub fn wait_ns_total(&self) -> u64 {
        self.locks.iter().map(|l| l.wait_ns_total).sum()
    }

    /// Findings whose `kind` is `kind`, untyped.
    pub fn findings_of_kind(&self, kind: &str) -> Vec<&Value> {
        self.findings.iter().filter(|f| f["kind"] == kind).collect()
    }

    /// The `stuck_lock_wait` findings; fails if one lacks a field.
    pub fn stuck_waits(&self) -> Result<Vec<StuckWait>> {
        self.findings_of_kind("stuck_lock_wait")
            .into_iter()
            .map(|f| StuckWait::deserialize(f).with_context(|| format!("stuck_lock_wait {f}")))
            .collect()
    }

    /// The overlap findings of `kind`; fails if one lacks a field.
    pub fn overlaps(&self, kind: &str) -> Result<Vec<MapOverlap>> {
        Ok(self
            .map_races(kind)?
            .into_iter()
            .filter(|f| f.detection == "overlap")
            .collect())
    }

    /// The happens-before findings of `kind`: two accesses no
    /// synchronisation ordered.
    pub fn unordered(&self, kind: &str) -> Result<Vec<MapOverlap>> {
        Ok(self
            .map_races(kind)?
            .into_iter()
            .filter(|f| f.detection == "happens_before")
            .collect())
    }

    /// Every finding of a race `kind`, however it was detected.
    pub fn map_races(&self, kind: &str) -> Result<Vec<MapOverlap>> {
        self.findings_of_kind(kind)
            .into_iter()
            .map(|f| MapOverlap::deserialize(f).with_context(|| format!("{kind} {f}")))
            .collect()
    }

    /// Every race finding (the three kinds), however detected.
    pub fn all_map_races(&self) -> Result<Vec<MapOverlap>> {
        let mut v = Vec::new();
        for k in RACE_KINDS {
            v.extend(self.map_races(k)?);
        }
        Ok(v)
    }

    /// The `map_fatal` findings; fails if one lacks a field.
    pub fn map_fatals(&self) -> Result<Vec<MapFatal>> {
        self.findings_of_kind("map_fatal")
            .into_iter()
            .map(|f| MapFatal::deserialize(f).with_context(|| format!("map_fatal {f}")))
            .collect()
    }

    /// Every map's operations, map by map.
    pub fn map_ops(&self) -> impl Iterator<Item = &MapOps> {
        self.maps.iter().flat_map(|m| &m.ops)
    }

    /// Operations of `kind` made from a call site in `func`, over all maps.
    pub fn op_count(&self, func: &str, kind: &str) -> u64 {
        self.map_ops()
            .filter(|o| o.kind == kind)
            .flat_map(|o| &o.top_sites)
            .filter(|s| s.site.function == func)
            .map(|s| s.count)
            .sum()
    }
}
