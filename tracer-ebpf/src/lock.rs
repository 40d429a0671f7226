//! Mutex slow-path wait time: an entry uprobe records when a goroutine starts
//! waiting; uprobes on every RET of the same function close the wait and fold it
//! into per-CPU aggregates keyed by (process, lock, call site, stack).

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, uprobe},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, StackTrace},
    programs::ProbeContext,
};
use aya_log_ebpf::warn;
use tracer_common::{Inflight, InflightKey, LockKey, WaitStats, WaiterKey, hist_slot, names};

use crate::regs;

/// Processes being traced; user space fills it. Probes on a shared binary inode
/// fire for every process running it, so each hit checks this first.
#[map]
static TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

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

/// One zeroed `WaitStats`: too large for the 512-byte BPF stack, so new
/// aggregates are initialised from here.
/// Contended waits completed, every traced process together: the rate
/// guard reads this one slot four times a second instead of walking
/// `LOCK_WAITS`.
#[map]
static LOCK_WAIT_TOTAL: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
static ZERO_STATS: Array<WaitStats> = Array::with_max_entries(1, 0);

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

#[uprobe]
pub fn lock_enter(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: read-only lookup of a plain value.
    if unsafe { TARGETS.get(tgid) }.is_none() {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let key = InflightKey {
        tgid,
        _pad: 0,
        g: regs::goroutine(&ctx, pid_tgid),
    };
    let lock_addr = regs::arg0(&ctx);
    if let Some(prev) = LOCK_INFLIGHT.get_ptr(key) {
        // SAFETY: the pointer is valid for this program run.
        let prev = unsafe { &*prev };
        if prev.lock_addr == lock_addr && now.wrapping_sub(prev.start_ns) < REENTRY_WINDOW_NS {
            return 0;
        }
    }
    let stack_id = user_stack_id(&ctx);
    let rec = Inflight {
        start_ns: now,
        lock_addr,
        caller_pc: regs::return_address(&ctx),
        stack_id,
        kind: unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32,
        _pad: 0,
    };
    let _ = LOCK_INFLIGHT.insert(key, rec, 0);
    0
}

#[uprobe]
pub fn lock_exit(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let key = InflightKey {
        tgid,
        _pad: 0,
        g: regs::goroutine(&ctx, pid_tgid),
    };
    let Some(rec) = LOCK_INFLIGHT.get_ptr(key) else {
        return 0;
    };
    // SAFETY: copy out before the element is deleted.
    let rec = unsafe { *rec };
    let _ = LOCK_INFLIGHT.remove(key);
    let wait = unsafe { bpf_ktime_get_ns() }.saturating_sub(rec.start_ns);
    let waiter = WaiterKey {
        tgid,
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
    let agg_key = LockKey {
        tgid,
        kind: rec.kind,
        lock_addr: rec.lock_addr,
        caller_pc: rec.caller_pc,
        stack_id: rec.stack_id,
    };
    let stats = match LOCK_WAITS.get_ptr_mut(agg_key) {
        Some(p) => p,
        None => {
            let Some(zero) = ZERO_STATS.get_ptr(0) else {
                return 0;
            };
            // SAFETY: `zero` points at a map value valid for this run.
            // By reference: a by-value WaitStats would not fit the BPF stack.
            #[allow(clippy::needless_borrows_for_generic_args)]
            let _ = LOCK_WAITS.insert(agg_key, unsafe { &*zero }, BPF_NOEXIST as u64);
            match LOCK_WAITS.get_ptr_mut(agg_key) {
                Some(p) => p,
                None => {
                    // Rare by construction: only when the aggregate map is full.
                    warn!(&ctx, "LOCK_WAITS full: dropping a {} ns wait", wait);
                    return 0;
                }
            }
        }
    };
    // SAFETY: per-CPU value, only this CPU writes it.
    let stats = unsafe { &mut *stats };
    stats.count += 1;
    stats.total_ns += wait;
    if wait > stats.max_ns {
        stats.max_ns = wait;
    }
    if let Some(slot) = stats.hist.get_mut(hist_slot(wait)) {
        *slot += 1;
    }
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
    lock_enter => names::program::LOCK_ENTER,
    lock_exit => names::program::LOCK_EXIT,
    unlock_slow => names::program::UNLOCK_SLOW,
}
