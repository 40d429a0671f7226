//! The lock parts of the report: rows per lock and call site, holders, and
//! stuck-wait findings, as serialized in the JSON report.

use serde::Serialize;

use super::{holders::HolderRow, rows::LockRow};
use crate::{
    latency::Bucket,
    symbols::{Site, StackCount},
};

#[derive(Clone, Debug, Serialize)]
pub struct LockReport {
    /// Lock address in the traced process, as hex.
    pub address: String,
    pub kind: &'static str,
    /// The lock's global variable name (`main.mu`), when it is one and the binary has symbols.
    pub name: Option<String>,
    pub site: Site,
    pub stack: Vec<Site>,
    pub contentions: u64,
    /// Distinct goroutines that waited (a lower bound once the kernel's
    /// 65,536-entry waiter table is full).
    pub goroutines: usize,
    pub wait_ns_total: u64,
    pub wait_ns_p50: u64,
    pub wait_ns_p99: u64,
    pub wait_ns_max: u64,
    /// Of `contentions`, the waits that ended with a starvation-mode
    /// hand-off (the unlocker gave the lock straight to the waiter).
    pub handoffs: u64,
    /// Hand-offs whose end could not be placed in time: their waits count
    /// only up to their last wake-up (or not at all, if there was none).
    pub handoffs_unmeasured: u64,
    pub histogram: Vec<Bucket>,
    /// The waits per full stack, for pprof profiles (not in the JSON).
    #[serde(skip)]
    pub stacks: Vec<StackCount>,
}

impl From<&LockRow> for LockReport {
    fn from(r: &LockRow) -> Self {
        LockReport {
            address: format!("{:#x}", r.address),
            kind: r.kind,
            name: r.name.clone(),
            site: r.site.clone(),
            stack: r.stack.clone(),
            contentions: r.latency.count,
            goroutines: r.goroutines.len(),
            wait_ns_total: r.latency.total_ns,
            wait_ns_p50: r.latency.quantile(0.50),
            wait_ns_p99: r.latency.quantile(0.99),
            wait_ns_max: r.latency.max_ns,
            handoffs: r.latency.handoffs,
            handoffs_unmeasured: r.latency.unmeasured,
            histogram: r.latency.buckets(),
            stacks: r.stacks.clone(),
        }
    }
}

/// The Go runtime's own cumulative lock-wait total for the process (what
/// `runtime/metrics` calls `/sync/mutex/wait/total:seconds`), read from its
/// memory at no cost to it, beside the total of the probed waits.
#[derive(Clone, Debug, Serialize)]
pub struct RuntimeLockWait {
    /// The runtime's total, ns, last read while the process ran; `None`
    /// when it cannot be read (`reason` says why).
    pub total_ns: Option<u64>,
    /// The lock rows' total wait, ns.
    pub probed_ns: u64,
    pub reason: Option<String>,
}

/// Times the rate guard detached the lock probes.
#[derive(Clone, Debug, Serialize)]
pub struct LockPauses {
    pub pauses: u32,
    /// Total time the lock probes were detached, ns.
    pub paused_ns: u64,
    /// The `--max-lock-rate` that was exceeded (waits per second).
    pub limit_per_sec: u64,
}

/// One unlocker call site of one lock.
#[derive(Clone, Debug, Serialize)]
pub struct HolderReport {
    pub address: String,
    pub kind: &'static str,
    pub name: Option<String>,
    /// The code that called Unlock/RUnlock while others waited.
    pub site: Site,
    pub stack: Vec<Site>,
    /// Unlocks from here that had to wake a waiter.
    pub wakeups: u64,
    /// Wakeups per full stack, for pprof profiles (not in the JSON).
    #[serde(skip)]
    pub stacks: Vec<StackCount>,
}

impl From<&HolderRow> for HolderReport {
    fn from(h: &HolderRow) -> Self {
        HolderReport {
            address: format!("{:#x}", h.address),
            kind: h.kind,
            name: h.name.clone(),
            site: h.site.clone(),
            stack: h.stack.clone(),
            wakeups: h.wakeups,
            stacks: h.stacks.clone(),
        }
    }
}

/// Which lock a finding is about.
#[derive(Clone, Debug, Serialize)]
pub struct LockRef {
    pub address: String,
    pub kind: &'static str,
    pub name: Option<String>,
}

/// A problem found while tracing.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    /// `stuck_lock_wait`: a wait in progress longer than the threshold.
    pub kind: &'static str,
    pub pid: u32,
    /// Goroutine id, when the binary's `runtime.g.goid` offset is known.
    pub goroutine: Option<u64>,
    pub lock: LockRef,
    /// Longest age observed, ns.
    pub age_ns: u64,
    /// Still waiting when the report was made.
    pub ongoing: bool,
    pub site: Option<Site>,
    pub stack: Vec<Site>,
}
