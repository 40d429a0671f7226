//! Lock wait time, folded into per-CPU aggregates keyed by (process, lock,
//! call site, stack).
//!
//! `sync.Mutex` waits are measured without any probe in the critical section:
//! `mutex_sleep` fires on the call into the runtime semaphore (the goroutine
//! does not own the lock), `mutex_wake` where a woken goroutine goes back to
//! compete for it (it still does not own it), and `mutex_handoff` in the
//! unlocker when starvation mode hands the lock straight to a waiter. The
//! RWMutex semaphore waits (and Mutex on binaries whose slow path could not be
//! decoded) use an entry probe and probes on every RET (`lock_enter`/`lock_exit`);
//! on Go < 1.20 those are on the Mutex's own semaphore function, whose
//! Mutex sleeps `lock_enter` skips.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_NO_PREALLOC, BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, uprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, StackTrace},
    programs::ProbeContext,
};
use aya_log_ebpf::warn;
use tracer_common::{
    Inflight, InflightKey, LockKey, WaitStats, WaiterKey, hist_slot,
    lock::{Handoff, HandoffKey, KIND_MUTEX, KIND_RW_LEGACY, WAIT_ASLEEP, WAIT_AWAKE},
    names,
};

use crate::regs;

/// Processes being traced; user space fills it. Probes on a shared binary inode
/// fire for every process running it, so each hit checks this first.
/// Allocated per entry (user space inserts): preallocated, each agent
/// object pinned its full size in kernel memory, charged to the agent's
/// memory cgroup. The per-CPU aggregates stay preallocated: allocated per
/// entry, their inserts from a probe failed now and then even far below
/// the size (the kernel's per-CPU element cache runs dry), which would lose
/// waits.
#[map]
static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// Waits in progress, keyed by goroutine. LRU so that a wait whose exit we never
/// see (the process died) cannot fill the map.
#[map]
static LOCK_INFLIGHT: LruHashMap<InflightKey, Inflight> = LruHashMap::with_max_entries(65536, 0);

/// Aggregated waits.
#[map]
static LOCK_WAITS: PerCpuHashMap<LockKey, WaitStats> = PerCpuHashMap::with_max_entries(16384, 0);

/// User stacks of waiters, referenced by `LockKey::stack_id`.
#[map]
static LOCK_STACKS: StackTrace = StackTrace::with_max_entries(16384, 0);

/// (process, lock, call site, goroutine) of finished waits, for counting the
/// distinct goroutines that waited. LRU: bounded, may undercount when full.
#[map]
static LOCK_WAITERS: LruHashMap<WaiterKey, u8> = LruHashMap::with_max_entries(65536, 0);

/// Unlocks that had to wake a waiter, per (process, lock, unlocker's call site,
/// stack): who held the lock others waited for. Filled only with `--holders`.
#[map]
static UNLOCK_WAKES: PerCpuHashMap<LockKey, u64> = PerCpuHashMap::with_max_entries(16384, 0);

/// Contended waits completed, every traced process together: the rate
/// guard reads this one slot four times a second instead of walking
/// `LOCK_WAITS`.
#[map]
static LOCK_WAIT_TOTAL: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// One zeroed `WaitStats`: too large for the 512-byte BPF stack, so new
/// aggregates are initialised from here.
#[map]
static ZERO_STATS: Array<WaitStats> = Array::with_max_entries(1, 0);

/// The last starvation-mode hand-off of each Mutex. LRU: a lock that is
/// gone must not hold a slot.
#[map]
static LOCK_HANDOFFS: LruHashMap<HandoffKey, Handoff> = LruHashMap::with_max_entries(16384, 0);

/// `sync.Mutex{state int32; sema uint32}` in every Go since 1.0: the
/// semaphore the slow path sleeps on is 4 bytes into the lock.
const MUTEX_SEMA_OFFSET: u64 = 4;

/// Morestack restarts a function from its first instruction, so the entry probe can
/// fire twice for one call. A second entry for the same lock this soon is that
/// restart, and the first start time is kept.
const REENTRY_WINDOW_NS: u64 = 1_000_000;

/// The current user stack's id in `LOCK_STACKS`, or -1 when it cannot be taken.
#[inline(always)]
fn user_stack_id(ctx: &ProbeContext) -> i64 {
    // SAFETY: the helper only reads the context and writes the stack map.
    let id = unsafe {
        aya_ebpf::helpers::bpf_get_stackid(
            ctx.as_ptr(),
            (&raw const LOCK_STACKS).cast_mut().cast(),
            BPF_F_USER_STACK as u64,
        )
    };
    if id >= 0 { id } else { -1 }
}

/// The current goroutine's key in `LOCK_INFLIGHT`.
#[inline(always)]
fn current_key(ctx: &ProbeContext) -> InflightKey {
    let pid_tgid = bpf_get_current_pid_tgid();
    InflightKey {
        tgid: (pid_tgid >> 32) as u32,
        _pad: 0,
        g: regs::goroutine(ctx, pid_tgid),
    }
}

/// [`current_key`], only for a process being traced: probes on a shared
/// binary inode fire for every process running it.
#[inline(always)]
fn traced_key(ctx: &ProbeContext) -> Option<InflightKey> {
    let key = current_key(ctx);
    // SAFETY: read-only lookup of a plain value.
    unsafe { TARGETS.get(key.tgid) }.map(|_| key)
}

#[uprobe]
pub fn lock_enter(ctx: ProbeContext) -> u32 {
    let Some(key) = traced_key(&ctx) else {
        return 0;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let lock_addr = regs::arg0(&ctx);
    let kind = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    if let Some(prev) = LOCK_INFLIGHT.get_ptr(key) {
        // SAFETY: the pointer is valid for this program run; copied out.
        let prev = unsafe { *prev };
        if prev.lock_addr == lock_addr && now.wrapping_sub(prev.start_ns) < REENTRY_WINDOW_NS {
            return 0;
        }
        if prev.kind == KIND_MUTEX && prev.state == WAIT_ASLEEP {
            if kind == KIND_RW_LEGACY && prev.lock_addr.wrapping_add(MUTEX_SEMA_OFFSET) == lock_addr
            {
                // Go < 1.20: the Mutex slow path's own sleep, timed by
                // `mutex_sleep` and `mutex_wake`.
                return 0;
            }
            // Its last Mutex wait ended with no wake-up: a hand-off.
            close_handed_off(&ctx, &key, &prev);
        }
    }
    let stack_id = user_stack_id(&ctx);
    let rec = Inflight {
        start_ns: now,
        lock_addr,
        caller_pc: regs::return_address(&ctx),
        stack_id,
        kind,
        state: WAIT_ASLEEP,
        mark_ns: 0,
        handoff_seq: 0,
    };
    let _ = LOCK_INFLIGHT.insert(key, rec, 0);
    0
}

#[uprobe]
pub fn lock_exit(ctx: ProbeContext) -> u32 {
    let key = current_key(&ctx);
    let Some(rec) = LOCK_INFLIGHT.get_ptr(key) else {
        return 0;
    };
    // SAFETY: copy out before the element is deleted.
    let rec = unsafe { *rec };
    // Exits close only their own kind's waits: on Go < 1.20 the RWMutex
    // semaphore function is also where a Mutex wait sleeps.
    if rec.kind != unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32 {
        return 0;
    }
    let _ = LOCK_INFLIGHT.remove(key);
    fold(&ctx, &key, &rec, unsafe { bpf_ktime_get_ns() }, false);
    0
}

/// The aggregate of `key`, created zeroed when absent; None only when the
/// table is full.
#[inline(always)]
fn stats_for(ctx: &ProbeContext, key: LockKey) -> Option<&'static mut WaitStats> {
    let p = match LOCK_WAITS.get_ptr_mut(key) {
        Some(p) => p,
        None => {
            let zero = ZERO_STATS.get_ptr(0)?;
            // SAFETY: `zero` points at a map value valid for this run.
            // By reference: a by-value WaitStats would not fit the BPF stack.
            #[allow(clippy::needless_borrows_for_generic_args)]
            let _ = LOCK_WAITS.insert(key, unsafe { &*zero }, BPF_NOEXIST as u64);
            match LOCK_WAITS.get_ptr_mut(key) {
                Some(p) => p,
                None => {
                    // Rare by construction: only when the aggregate map is full.
                    warn!(ctx, "LOCK_WAITS full: dropping a wait");
                    return None;
                }
            }
        }
    };
    // SAFETY: per-CPU value, only this CPU writes it, valid for this run.
    Some(unsafe { &mut *p })
}

/// The aggregate key of a recorded wait.
#[inline(always)]
fn agg_key(key: &InflightKey, rec: &Inflight) -> LockKey {
    LockKey {
        tgid: key.tgid,
        kind: rec.kind,
        lock_addr: rec.lock_addr,
        caller_pc: rec.caller_pc,
        stack_id: rec.stack_id,
    }
}

/// Folds the wait `rec` up to `end_ns` into its aggregate. The first fold of
/// a wait counts it; a later one (the goroutine slept again after a wake-up)
/// adds the time since the last fold and moves the wait to its new
/// histogram slot, so every wait is counted once at its full length.
#[inline(always)]
fn fold(ctx: &ProbeContext, key: &InflightKey, rec: &Inflight, end_ns: u64, handoff: bool) {
    let Some(stats) = stats_for(ctx, agg_key(key, rec)) else {
        return;
    };
    let wait = end_ns.saturating_sub(rec.start_ns);
    if rec.mark_ns == 0 {
        stats.count += 1;
        stats.total_ns += wait;
        let waiter = WaiterKey {
            tgid: key.tgid,
            kind: rec.kind,
            lock_addr: rec.lock_addr,
            caller_pc: rec.caller_pc,
            g: key.g,
        };
        let _ = LOCK_WAITERS.insert(waiter, 1u8, 0);
        if let Some(n) = LOCK_WAIT_TOTAL.get_ptr_mut(0) {
            // SAFETY: per-CPU value, only this CPU writes it.
            unsafe { *n += 1 };
        }
    } else {
        let before = rec.mark_ns.saturating_sub(rec.start_ns);
        stats.total_ns += wait.saturating_sub(before);
        if let Some(slot) = stats.hist.get_mut(hist_slot(before)) {
            *slot = slot.wrapping_sub(1);
        }
    }
    if handoff {
        stats.handoffs += 1;
    }
    if wait > stats.max_ns {
        stats.max_ns = wait;
    }
    if let Some(slot) = stats.hist.get_mut(hist_slot(wait)) {
        *slot = slot.wrapping_add(1);
    }
}

/// On the call into the runtime semaphore in `lockSlow`: the goroutine is
/// about to sleep on `&m.sema` (first argument) and does not own the lock.
/// The second argument is `lifo`, true when this same `lockSlow` call has
/// slept before: the wait goes on.
#[uprobe]
pub fn mutex_sleep(ctx: ProbeContext) -> u32 {
    let Some(key) = traced_key(&ctx) else {
        return 0;
    };
    let tgid = key.tgid;
    let now = unsafe { bpf_ktime_get_ns() };
    let lock_addr = regs::arg0(&ctx).wrapping_sub(MUTEX_SEMA_OFFSET);
    let lifo = regs::arg1(&ctx) & 0xff != 0;
    let hkey = HandoffKey {
        tgid,
        _pad: 0,
        lock_addr,
    };
    // SAFETY: read-only lookup of a plain value, copied out.
    let seq = unsafe { LOCK_HANDOFFS.get(hkey) }.map_or(0, |h| h.seq);
    if let Some(p) = LOCK_INFLIGHT.get_ptr_mut(key) {
        // SAFETY: the pointer is valid for this program run.
        let rec = unsafe { &mut *p };
        if rec.kind == KIND_MUTEX && rec.lock_addr == lock_addr && lifo {
            rec.state = WAIT_ASLEEP;
            rec.handoff_seq = seq;
            return 0;
        }
        if rec.kind == KIND_MUTEX && rec.state == WAIT_ASLEEP {
            // The goroutine's last wait ended with no wake-up: a hand-off
            // it received, then unlocked outside starvation mode.
            let old = *rec;
            close_handed_off(&ctx, &key, &old);
        }
    }
    let rec = Inflight {
        start_ns: now,
        lock_addr,
        caller_pc: regs::frame_return_address(&ctx),
        stack_id: user_stack_id(&ctx),
        kind: unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32,
        state: WAIT_ASLEEP,
        mark_ns: 0,
        handoff_seq: seq,
    };
    let _ = LOCK_INFLIGHT.insert(key, rec, 0);
    0
}

/// Closes a wait that ended in a hand-off seen only now: exact when one
/// hand-off of the lock happened since the goroutine slept (it was this
/// one), otherwise counted as unmeasured.
#[inline(always)]
fn close_handed_off(ctx: &ProbeContext, key: &InflightKey, rec: &Inflight) {
    let hkey = HandoffKey {
        tgid: key.tgid,
        _pad: 0,
        lock_addr: rec.lock_addr,
    };
    // SAFETY: read-only lookup of a plain value, copied out.
    let Some(h) = (unsafe { LOCK_HANDOFFS.get(hkey) }).copied() else {
        return;
    };
    if h.seq == rec.handoff_seq.wrapping_add(1) {
        fold(ctx, key, rec, h.last_ns, true);
    } else if h.seq > rec.handoff_seq
        && let Some(stats) = stats_for(ctx, agg_key(key, rec))
    {
        stats.unmeasured += 1;
    }
}

/// Where a woken goroutine goes back to compete for the Mutex (the
/// fall-through of lockSlow's starvation check): it does not own the lock.
#[uprobe]
pub fn mutex_wake(ctx: ProbeContext) -> u32 {
    let key = current_key(&ctx);
    let Some(p) = LOCK_INFLIGHT.get_ptr_mut(key) else {
        return 0;
    };
    // SAFETY: the pointer is valid for this program run.
    let rec = unsafe { &mut *p };
    if rec.kind != KIND_MUTEX || rec.state != WAIT_ASLEEP {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let snapshot = *rec;
    fold(&ctx, &key, &snapshot, now, false);
    rec.mark_ns = now;
    rec.state = WAIT_AWAKE;
    0
}

/// On the unlocker's starvation-mode `runtime_Semrelease(&m.sema, true, ..)`
/// in `unlockSlow`: the lock goes straight to the first waiter, which will
/// hold it with no probe firing. The hand-off time is kept per lock; and if
/// the unlocker itself got the lock by the previous hand-off (it has held it
/// since, so that hand-off was its own), its wait is closed at that time.
#[uprobe]
pub fn mutex_handoff(ctx: ProbeContext) -> u32 {
    let Some(key) = traced_key(&ctx) else {
        return 0;
    };
    let tgid = key.tgid;
    let now = unsafe { bpf_ktime_get_ns() };
    let lock_addr = regs::arg0(&ctx).wrapping_sub(MUTEX_SEMA_OFFSET);
    let hkey = HandoffKey {
        tgid,
        _pad: 0,
        lock_addr,
    };
    // SAFETY: read-only lookup of a plain value, copied out.
    let prev = unsafe { LOCK_HANDOFFS.get(hkey) }
        .copied()
        .unwrap_or_default();
    if let Some(p) = LOCK_INFLIGHT.get_ptr(key) {
        // SAFETY: copy out before the element is deleted.
        let rec = unsafe { *p };
        if rec.kind == KIND_MUTEX
            && rec.lock_addr == lock_addr
            && rec.state == WAIT_ASLEEP
            && prev.seq > rec.handoff_seq
        {
            let _ = LOCK_INFLIGHT.remove(key);
            fold(&ctx, &key, &rec, prev.last_ns, true);
        }
    }
    let next = Handoff {
        last_ns: now,
        seq: prev.seq + 1,
    };
    let _ = LOCK_HANDOFFS.insert(hkey, next, 0);
    0
}

/// Entry of an unlock slow path (`unlockSlow`, `rUnlockSlow`): runs only when
/// there are waiters to wake. One probe, no exit: only the count and the
/// unlocker's stack are wanted.
#[uprobe]
pub fn unlock_slow(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: read-only lookup of a plain value.
    if unsafe { TARGETS.get(tgid) }.is_none() {
        return 0;
    }
    let stack_id = user_stack_id(&ctx);
    let key = LockKey {
        tgid,
        kind: unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32,
        lock_addr: regs::arg0(&ctx),
        caller_pc: regs::return_address(&ctx),
        stack_id,
    };
    match UNLOCK_WAKES.get_ptr_mut(key) {
        // SAFETY: per-CPU value, only this CPU writes it.
        Some(n) => unsafe { *n += 1 },
        None => {
            let _ = UNLOCK_WAKES.insert(key, 1u64, BPF_NOEXIST as u64);
        }
    }
    0
}

crate::names::check_names! {
    TARGETS => names::map::TARGETS,
    LOCK_INFLIGHT => names::map::LOCK_INFLIGHT,
    LOCK_WAITS => names::map::LOCK_WAITS,
    LOCK_STACKS => names::map::LOCK_STACKS,
    LOCK_WAITERS => names::map::LOCK_WAITERS,
    UNLOCK_WAKES => names::map::UNLOCK_WAKES,
    LOCK_WAIT_TOTAL => names::map::LOCK_WAIT_TOTAL,
    LOCK_HANDOFFS => names::map::LOCK_HANDOFFS,
    lock_enter => names::program::LOCK_ENTER,
    lock_exit => names::program::LOCK_EXIT,
    unlock_slow => names::program::UNLOCK_SLOW,
    mutex_sleep => names::program::MUTEX_SLEEP,
    mutex_wake => names::program::MUTEX_WAKE,
    mutex_handoff => names::program::MUTEX_HANDOFF,
}
