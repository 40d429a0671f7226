//! Lock-contention records: the in-flight wait of one goroutine, and the
//! aggregated waits per (process, lock, call site).

use crate::hist::HIST_SLOTS;

/// Kind of wait, passed to the probes as the attach cookie.
/// `sync.Mutex` slow path (`lockSlow`); the lock address is its argument.
pub const KIND_MUTEX: u32 = 1;
/// `RWMutex.RLock` waiting for a writer (`runtime_SemacquireRWMutexR`);
/// the argument is `&rw.readerSem`.
pub const KIND_RW_READ: u32 = 2;
/// `RWMutex.Lock` waiting for readers to drain (`runtime_SemacquireRWMutex`);
/// the argument is `&rw.writerSem`.
pub const KIND_RW_WRITE: u32 = 3;
/// `RWMutex.RUnlock` slow path (`rUnlockSlow`), which wakes a waiting writer;
/// the argument is the RWMutex itself.
pub const KIND_RW_RUNLOCK: u32 = 4;
/// `Mutex.Unlock` slow path (`unlockSlow`), which wakes a waiter; the
/// argument is the Mutex.
pub const KIND_MUTEX_UNLOCK: u32 = 5;
/// Go < 1.20: RWMutex waits of both sides go through the Mutex's own
/// `runtime_SemacquireMutex`; the argument is `&rw.readerSem` or
/// `&rw.writerSem`, told apart by the caller. The Mutex's own sleeps on it
/// are skipped (its `mutex_sleep` record is in flight).
pub const KIND_RW_LEGACY: u32 = 6;

/// Identifies one goroutine that is inside a lock slow path.
///
/// Keyed by the `g` pointer (R14 on amd64, X28 on arm64), not the thread id,
/// because a goroutine that parks can resume on another thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InflightKey {
    pub tgid: u32,
    pub _pad: u32,
    /// `g` pointer; or `1 << 63 | tid` when the register was zero.
    pub g: u64,
}

/// `Inflight::state` of a wait whose goroutine is asleep on the semaphore
/// (or, for entry/RET probes, inside the slow path).
pub const WAIT_ASLEEP: u32 = 0;
/// `Inflight::state` after a normal wake-up: the time so far is folded into
/// the aggregates; the goroutine competes for the lock again and may sleep
/// once more (the same wait goes on).
pub const WAIT_AWAKE: u32 = 1;

/// A wait that has begun and not yet been closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Inflight {
    pub start_ns: u64,
    pub lock_addr: u64,
    /// Return address of the slow-path call: the PC in the function that called it.
    pub caller_pc: u64,
    /// Id in the user stack map, or negative when the stack could not be taken.
    pub stack_id: i64,
    pub kind: u32,
    /// [`WAIT_ASLEEP`] or [`WAIT_AWAKE`].
    pub state: u32,
    /// End of the part already folded into the aggregates (the last wake-up),
    /// or `start_ns` when none is.
    pub mark_ns: u64,
    /// [`Handoff::seq`] of the lock when the goroutine last went to sleep:
    /// if exactly one hand-off happened since, it was this goroutine's.
    pub handoff_seq: u64,
}

/// Key of the last starvation-mode hand-off of one Mutex.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct HandoffKey {
    pub tgid: u32,
    pub _pad: u32,
    pub lock_addr: u64,
}

/// The last hand-off of one Mutex: an unlocker in starvation mode gives the
/// lock straight to the first waiter, which then holds it without any probe
/// firing; its wait ended at `last_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Handoff {
    pub last_ns: u64,
    /// Hand-offs of this lock so far.
    pub seq: u64,
}

/// Aggregation key: one row per process, lock, call site and stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LockKey {
    pub tgid: u32,
    pub kind: u32,
    pub lock_addr: u64,
    pub caller_pc: u64,
    pub stack_id: i64,
}

/// One goroutine that waited on a lock from a call site; user space counts the
/// distinct goroutines per lock and site from these.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WaiterKey {
    pub tgid: u32,
    pub kind: u32,
    pub lock_addr: u64,
    pub caller_pc: u64,
    pub g: u64,
}

/// Aggregated waits for one [`LockKey`], kept per CPU and summed by user space.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WaitStats {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    /// Lock waits only: of `count`, those that ended with a starvation-mode
    /// hand-off.
    pub handoffs: u64,
    /// Lock waits only: hand-offs whose end could not be placed in time (more
    /// than one hand-off of the lock happened before the waiter was seen
    /// again); not in `count` or `total_ns`.
    pub unmeasured: u64,
    /// Per-CPU slots may wrap below zero (a wait that wakes more than once
    /// moves between slots, maybe on another CPU): sum them with wrapping
    /// arithmetic.
    pub hist: [u64; HIST_SLOTS],
}

impl Default for WaitStats {
    fn default() -> Self {
        Self {
            count: 0,
            total_ns: 0,
            max_ns: 0,
            handoffs: 0,
            unmeasured: 0,
            hist: [0; HIST_SLOTS],
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), contain only integers, and have no implicit padding.
    unsafe impl aya::Pod for super::InflightKey {}
    unsafe impl aya::Pod for super::Inflight {}
    unsafe impl aya::Pod for super::LockKey {}
    unsafe impl aya::Pod for super::WaitStats {}
    unsafe impl aya::Pod for super::WaiterKey {}
    unsafe impl aya::Pod for super::HandoffKey {}
    unsafe impl aya::Pod for super::Handoff {}
}
