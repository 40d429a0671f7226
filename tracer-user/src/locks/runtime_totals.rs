//! The Go runtime's own cumulative lock-wait total, read from the traced
//! process's memory: what `runtime/metrics` reports as
//! `/sync/mutex/wait/total:seconds`. No probe is needed, so it is exact
//! (to the runtime's own sampling) even while the lock probes are paused or
//! miss waits, and shows how much of the wait the per-site table covers.
//!
//! The metric is `sched.totalMutexWaitTime` (sync.Mutex and RWMutex waits,
//! which the runtime samples one goroutine transition in 8 and scales by 8),
//! plus, from Go 1.22, the runtime's internal lock waits:
//! `sched.totalRuntimeLockWaitTime` and each thread's unflushed
//! `m.mLockProfile.waitTime`, over the `allm` list.

use crate::{
    datasyms::DataSymbols,
    gobin::{GoBinary, GoVersion, Offset},
    process::memory::read_u64,
};

/// Threads walked on `allm` at most: a process has one per OS thread it
/// made; a longer list means the memory read was not a list.
const MAX_THREADS: usize = 100_000;

/// Where the total lives in one binary (link-time addresses).
#[derive(Clone, Debug)]
pub struct RuntimeTotals {
    sched: u64,
    mutex_wait: u64,
    /// Go 1.22+: (`runtime.allm`, `sched.totalRuntimeLockWaitTime`,
    /// `m.alllink`, `m.mLockProfile.waitTime`).
    runtime_locks: Option<(u64, u64, u64, u64)>,
}

fn need(o: Option<Offset>, what: &str) -> Result<u64, String> {
    o.map(|o| o.value)
        .ok_or_else(|| format!("offset of {what} unknown"))
}

impl RuntimeTotals {
    /// Finds the variables and offsets in `bin`; the error says what is
    /// missing (stripped binaries have no data symbols).
    pub fn new(bin: &GoBinary, syms: &DataSymbols) -> Result<Self, String> {
        let v = bin.go_version();
        if v != GoVersion::new(0, 0, 0) && !v.at_least(1, 20) {
            return Err(format!(
                "Go {} has no runtime lock-wait counter (sched.totalMutexWaitTime arrived in Go 1.20)",
                bin.go_version()
            ));
        }
        let o = bin.offsets();
        let sched = syms
            .address_of("runtime.sched")
            .ok_or("runtime.sched is not in the symbol table (stripped binary)")?;
        let mutex_wait = need(o.sched_mutex_wait, "runtime.schedt.totalMutexWaitTime")?;
        let runtime_locks = if bin.go_version().at_least(1, 22) {
            let allm = syms
                .address_of("runtime.allm")
                .ok_or("runtime.allm is not in the symbol table")?;
            let total = need(
                o.sched_runtime_lock_wait,
                "runtime.schedt.totalRuntimeLockWaitTime",
            )?;
            let link = need(o.m_alllink, "runtime.m.alllink")?;
            let wait = need(o.m_lock_profile, "runtime.m.mLockProfile")?
                + need(o.mlockprofile_wait, "runtime.mLockProfile.waitTime")?;
            Some((allm, total, link, wait))
        } else {
            None
        };
        Ok(Self {
            sched,
            mutex_wait,
            runtime_locks,
        })
    }

    /// The total in ns, in `pid` loaded at `bias`.
    pub fn read(&self, pid: u32, bias: u64) -> Result<u64, String> {
        let at = |addr: u64, what: &str| {
            read_u64(pid, addr).ok_or_else(|| format!("reading {what} at {addr:#x} in pid {pid}"))
        };
        let sched = self.sched.wrapping_add(bias);
        let mut total = at(
            sched.wrapping_add(self.mutex_wait),
            "sched.totalMutexWaitTime",
        )?;
        if let Some((allm, runtime_total, link, wait)) = self.runtime_locks {
            let add = at(
                sched.wrapping_add(runtime_total),
                "sched.totalRuntimeLockWaitTime",
            )?;
            total = total.wrapping_add(add);
            let mut m = at(allm.wrapping_add(bias), "runtime.allm")?;
            let mut threads = 0;
            while m != 0 {
                threads += 1;
                if threads > MAX_THREADS {
                    return Err(format!("runtime.allm of pid {pid} is no list"));
                }
                total = total.wrapping_add(at(m.wrapping_add(wait), "m.mLockProfile.waitTime")?);
                m = at(m.wrapping_add(link), "m.alllink")?;
            }
        }
        // The counters are int64; a negative sum is a torn or bad read.
        i64::try_from(total)
            .map(|_| total)
            .map_err(|_| format!("lock-wait total of pid {pid} is negative"))
    }
}
