//! Go map probes.
//!
//! Always on (rare events only): `map_fatal` on the runtime's fatal-error
//! entry points sends the message, goroutine and stack through a ring buffer
//! (the process dies right after, so nothing can wait for a later read);
//! `map_grow` on the growth functions counts growths per (map, call site).
//!
//! Deep tier (opt-in, one process): `map_op_enter` / `map_op_exit` on every
//! map operation and its RETs aggregate latency per (map, kind, site) and find
//! operations on one map that overlap in time with a write by another goroutine.
//!
//! Over 600 lines: the always-on, budgeted and deep programs share the
//! tables declared here and the per-process offsets they read; split, the
//! tables would become crate-wide statics used from several files.

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_NO_PREALLOC, BPF_F_USER_STACK, BPF_NOEXIST},
    helpers::{
        bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
    },
    macros::{map, uprobe},
    maps::{
        Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap, RingBuf,
        StackTrace,
    },
    programs::ProbeContext,
};
use tracer_common::{
    InflightKey, LockKey, WaitStats, WaiterKey, hist_slot,
    maps::{
        CALL_INSN_LEN, ConflictKey, ConflictStats, EVENT_FATAL, FATAL_MSG_LEN, FLAG_DEEP_ARMED,
        FLAG_HB_ARMED, FatalEvent, GROW_ARG0, GROW_ARG1, GROW_ARG2, GrowthKey, GrowthStats,
        ITER_MAP_OFFSET, LOST_CONFLICT, LOST_FATAL, LOST_GROWTH, LOST_OPS, LOST_SLOTS,
        LOST_SYNC_MAP, MapActive, MapKey, MapsConfig, OP_AT_CALL_SITE, OP_ITERATE, OP_ITERATE_NEXT,
        OpInflight, OpSide, SITE_SLOTS, SyncMapKey, is_write,
    },
    names,
};

use crate::regs;

/// Traced processes and their binary's offsets; the pid filter of every map probe.
/// Allocated per entry, as `lock.rs`'s `TARGETS` is (user space inserts).
#[map]
static MAP_CONFIG: HashMap<u32, MapsConfig> = HashMap::with_max_entries(4096, BPF_F_NO_PREALLOC);

/// Fatal runtime errors. Rare, so 256 KiB is ample; a failed reserve is counted.
#[map]
static MAP_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Events that could not be recorded, by `LOST_*` slot; summed by user space.
#[map]
static MAP_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_SLOTS, 0);

/// User stacks referenced by every map record.
#[map]
static MAP_STACKS: StackTrace = StackTrace::with_max_entries(16384, 0);

/// Growths per (process, map, site, stack), per CPU (BPF has no atomic add
/// here). LRU: short-lived maps come and go.
#[map]
static MAP_GROWTH: LruPerCpuHashMap<GrowthKey, GrowthStats> =
    LruPerCpuHashMap::with_max_entries(16384, 0);

/// Deep tier: each goroutine's operation in progress. LRU: an operation that
/// panics never returns, and its record must not fill the map.
#[map]
static MAP_OP_INFLIGHT: LruHashMap<InflightKey, OpInflight> =
    LruHashMap::with_max_entries(65536, 0);

/// Deep tier: per map, the operations in flight (latest writer, latest reader).
#[map]
static MAP_ACTIVE: LruHashMap<MapKey, MapActive> = LruHashMap::with_max_entries(65536, 0);

/// Deep tier: latency per (process, kind, map, call site, stack); `LockKey`
/// with `lock_addr` = the map and `kind` = the `OP_*`.
#[map]
static MAP_OPS: PerCpuHashMap<LockKey, WaitStats> = PerCpuHashMap::with_max_entries(8192, 0);

/// Deep tier: (process, kind, map, goroutine) seen, to count distinct goroutines.
#[map]
static MAP_OP_GS: LruHashMap<WaiterKey, u8> = LruHashMap::with_max_entries(65536, 0);

/// Deep tier: overlapping operations per (map, both sites and stacks), per CPU.
#[map]
static MAP_CONFLICTS: PerCpuHashMap<ConflictKey, ConflictStats> =
    PerCpuHashMap::with_max_entries(4096, 0);

/// Deep tier: sync.Map calls per (process, method, map), per CPU.
#[map]
static SYNC_MAP_CALLS: PerCpuHashMap<SyncMapKey, u64> = PerCpuHashMap::with_max_entries(8192, 0);

/// Budgeted tier: entries per probe index (the cookie's upper bits), per CPU.
/// User space turns them into each call site's rate and cost.
#[map]
static MAP_SITE_HITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SITE_SLOTS, 0);

/// A zeroed `WaitStats`, too large to build on the 512-byte BPF stack.
#[map]
static MAP_ZERO_STATS: Array<WaitStats> = Array::with_max_entries(1, 0);

/// An in-flight slot older than this is a leftover of an operation whose
/// return was never seen (it panicked), not a live operation.
const STALE_NS: u64 = 50_000_000;
/// A second entry of the same function on the same map this soon is the
/// restart `morestack` causes, not a new operation.
const REENTRY_WINDOW_NS: u64 = 1_000_000;

/// Integer argument `n` (0-based) of Go's register ABI.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn arg(ctx: &ProbeContext, n: u32) -> u64 {
    // SAFETY: for uprobe programs the context is the trapped task's pt_regs.
    // All three are loaded at fixed offsets first: the verifier refuses a
    // context access at an offset computed from `n`.
    let (a, b, c) = unsafe {
        let r = ctx.regs;
        (
            core::ptr::read_volatile(&raw const (*r).rax),
            core::ptr::read_volatile(&raw const (*r).rbx),
            core::ptr::read_volatile(&raw const (*r).rcx),
        )
    };
    match n {
        0 => a,
        1 => b,
        _ => c,
    }
}

#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
pub(crate) fn arg(ctx: &ProbeContext, n: u32) -> u64 {
    // SAFETY: for uprobe programs the context is the trapped task's registers.
    let r = ctx.regs as *const aya_ebpf::bindings::user_pt_regs;
    let (a, b, c) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*r).regs[0]),
            core::ptr::read_volatile(&raw const (*r).regs[1]),
            core::ptr::read_volatile(&raw const (*r).regs[2]),
        )
    };
    match n {
        0 => a,
        1 => b,
        _ => c,
    }
}

/// Address of the probed instruction.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn ip(ctx: &ProbeContext) -> u64 {
    // SAFETY: for uprobe programs the context is the trapped task's pt_regs.
    unsafe { (*ctx.regs).rip }
}

#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
pub(crate) fn ip(ctx: &ProbeContext) -> u64 {
    // SAFETY: for uprobe programs the context is the trapped task's registers.
    unsafe { (*(ctx.regs as *const aya_ebpf::bindings::user_pt_regs)).pc }
}

#[inline(always)]
fn cookie(ctx: &ProbeContext) -> u32 {
    // SAFETY: reads the attach cookie of this probe.
    unsafe { bpf_get_attach_cookie(ctx.as_ptr()) as u32 }
}

#[inline(always)]
pub(crate) fn lost(slot: u32) {
    if let Some(c) = MAP_LOST.get_ptr_mut(slot) {
        // SAFETY: per-CPU value, only this CPU writes it.
        unsafe { *c += 1 };
    }
}

#[inline(always)]
pub(crate) fn stack_id(ctx: &ProbeContext) -> i64 {
    // SAFETY: the helper only reads the context and writes the stack map.
    let id = unsafe {
        aya_ebpf::helpers::bpf_get_stackid(
            ctx.as_ptr(),
            (&raw const MAP_STACKS).cast_mut().cast(),
            BPF_F_USER_STACK as u64,
        )
    };
    if id >= 0 { id } else { -1 }
}

/// Reads the u64 at `base + off`, or `u64::MAX` when the offset is unknown or
/// the memory unreadable.
#[inline(always)]
pub(crate) fn read_at(base: u64, off: u64) -> u64 {
    if off == u64::MAX || base == 0 {
        return u64::MAX;
    }
    // SAFETY: reading user memory through the helper, which faults safely.
    unsafe { bpf_probe_read_user((base.wrapping_add(off)) as *const u64) }.unwrap_or(u64::MAX)
}

/// The traced process's config, or None when the process is not traced.
#[inline(always)]
pub(crate) fn config(tgid: u32) -> Option<MapsConfig> {
    // SAFETY: read-only lookup of a plain value.
    unsafe { MAP_CONFIG.get(tgid) }.copied()
}

/// Entry of `runtime.fatal`, `internal/runtime/maps.fatal` or `runtime.throw`:
/// the message is a Go string (pointer in argument 1, length in argument 2).
#[uprobe]
pub fn map_fatal(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(cfg) = config(tgid) else {
        return 0;
    };
    let Some(mut entry) = MAP_EVENTS.reserve::<FatalEvent>(0) else {
        lost(LOST_FATAL);
        return 0;
    };
    let g = regs::goroutine(&ctx, pid_tgid);
    let (ptr, len) = (arg(&ctx, 0), arg(&ctx, 1));
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at reserved ring-buffer memory of FatalEvent size;
    // every field is written before submit.
    unsafe {
        (*ev).kind = EVENT_FATAL;
        (*ev).tgid = tgid;
        (*ev).tid = pid_tgid as u32;
        (*ev).func = cookie(&ctx);
        (*ev).g = g;
        (*ev).goid = read_at(arch_g(&ctx), cfg.goid_off);
        (*ev).caller_pc = regs::return_address(&ctx);
        (*ev).stack_id = stack_id(&ctx);
        (*ev).ktime_ns = bpf_ktime_get_ns();
        (*ev).msg_len = len;
        let msg = &mut (*ev).msg;
        *msg = [0; FATAL_MSG_LEN];
        let n = if len < FATAL_MSG_LEN as u64 {
            len as u32
        } else {
            FATAL_MSG_LEN as u32
        };
        // Masked so the verifier sees the bound.
        let n = n & (FATAL_MSG_LEN as u32 * 2 - 1);
        if n > 0 && n <= FATAL_MSG_LEN as u32 {
            let _ = aya_ebpf::helpers::generated::bpf_probe_read_user(
                msg.as_mut_ptr().cast(),
                n,
                ptr as *const _,
            );
        }
    }
    entry.submit(0);
    0
}

/// The raw `g` register (0 outside Go code).
#[inline(always)]
pub(crate) fn arch_g(ctx: &ProbeContext) -> u64 {
    let g = regs::goroutine(ctx, 0);
    if g >> 63 != 0 { 0 } else { g }
}

/// Entry of a map growth function; the cookie says which argument is the map.
#[uprobe]
pub fn map_grow(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(cfg) = config(tgid) else {
        return 0;
    };
    let cookie = cookie(&ctx);
    // Counted for the budget controller, which attaches this probe only
    // while the budget pays for it (`--maps budget`).
    if let Some(h) = MAP_SITE_HITS.get_ptr_mut(cookie >> 8) {
        // SAFETY: per-CPU value, only this CPU writes it.
        unsafe { *h += 1 };
    }
    let map = match cookie & 0xff {
        GROW_ARG0 => arg(&ctx, 0),
        GROW_ARG1 => arg(&ctx, 1),
        GROW_ARG2 => arg(&ctx, 2),
        _ => return 0,
    };
    let count = read_at(map, cfg.count_off);
    let now = unsafe { bpf_ktime_get_ns() };
    let key = GrowthKey {
        tgid,
        cookie,
        map,
        caller_pc: regs::return_address(&ctx),
        stack_id: stack_id(&ctx),
    };
    if let Some(s) = MAP_GROWTH.get_ptr_mut(key) {
        // SAFETY: per-CPU value, only this CPU writes it.
        unsafe {
            (*s).events += 1;
            (*s).last_count = count;
            (*s).last_ns = now;
            if count != u64::MAX && count > (*s).max_count {
                (*s).max_count = count;
            }
        }
        return 0;
    }
    let s = GrowthStats {
        events: 1,
        last_count: count,
        last_ns: now,
        max_count: if count == u64::MAX { 0 } else { count },
    };
    if MAP_GROWTH.insert(key, s, 0).is_err() {
        lost(LOST_GROWTH);
    }
    0
}

/// The map an operation works on: argument 2 (`(t, m, ...)`), or read from
/// the iterator for an iteration step.
#[inline(always)]
fn op_map(ctx: &ProbeContext, kind: u32) -> u64 {
    if kind == OP_ITERATE_NEXT {
        let m = read_at(arg(ctx, 0), ITER_MAP_OFFSET);
        if m == u64::MAX { 0 } else { m }
    } else {
        arg(ctx, 1)
    }
}

#[inline(always)]
fn fresh(side: &OpSide, g: u64, now: u64) -> bool {
    side.g != 0 && side.g != g && now.wrapping_sub(side.start_ns) < STALE_NS
}

/// Records that `me` (kind `kind`) started while `other` was in flight.
#[inline(always)]
fn conflict(tgid: u32, map: u64, me: &OpSide, other: &OpSide, now: u64) {
    let key = ConflictKey {
        tgid,
        kind_a: me.kind,
        map,
        pc_a: me.caller_pc,
        pc_b: other.caller_pc,
        stack_a: me.stack_id,
        stack_b: other.stack_id,
        kind_b: other.kind,
        _pad: 0,
    };
    if let Some(s) = MAP_CONFLICTS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, only this CPU writes it.
        let s = unsafe { &mut *s };
        if s.count == 0 {
            // Another CPU created the key; this CPU's copy starts zeroed.
            s.first_ns = now;
            s.goid_a = me.goid;
            s.goid_b = other.goid;
        }
        s.count += 1;
        s.last_ns = now;
        return;
    }
    let s = ConflictStats {
        count: 1,
        first_ns: now,
        last_ns: now,
        goid_a: me.goid,
        goid_b: other.goid,
    };
    if MAP_CONFLICTS.insert(key, s, 0).is_err() {
        lost(LOST_CONFLICT);
    }
}

/// Entry of a map operation (deep tier).
#[uprobe]
pub fn map_op_enter(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(cfg) = config(tgid) else {
        return 0;
    };
    if cfg.flags & FLAG_DEEP_ARMED == 0 {
        return 0;
    }
    let cookie = cookie(&ctx);
    if let Some(h) = MAP_SITE_HITS.get_ptr_mut(cookie >> 8) {
        // SAFETY: per-CPU value, only this CPU writes it.
        unsafe { *h += 1 };
    }
    let mut kind = cookie & 0x7f;
    let map = op_map(&ctx, kind);
    if map == 0 {
        return 0;
    }
    if kind == OP_ITERATE_NEXT {
        kind = OP_ITERATE;
    }
    let g = regs::goroutine(&ctx, pid_tgid);
    let now = unsafe { bpf_ktime_get_ns() };
    let ikey = InflightKey { tgid, _pad: 0, g };
    if let Some(prev) = MAP_OP_INFLIGHT.get_ptr(ikey) {
        // SAFETY: valid for this program run.
        let prev = unsafe { &*prev };
        if prev.map == map
            && prev.cookie == cookie
            && now.wrapping_sub(prev.start_ns) < REENTRY_WINDOW_NS
        {
            return 0;
        }
    }
    let me = OpSide {
        g,
        goid: read_at(arch_g(&ctx), cfg.goid_off),
        start_ns: now,
        caller_pc: if cookie & OP_AT_CALL_SITE != 0 {
            ip(&ctx).wrapping_add(CALL_INSN_LEN)
        } else {
            regs::return_address(&ctx)
        },
        stack_id: stack_id(&ctx),
        kind,
        _pad: 0,
    };
    if cfg.flags & FLAG_HB_ARMED != 0 {
        crate::hb::access(tgid, cookie as u64, &me, map);
    }
    let rec = OpInflight {
        start_ns: now,
        map,
        caller_pc: me.caller_pc,
        stack_id: me.stack_id,
        cookie: (cookie & !0xff) | kind,
        _pad: 0,
    };
    let _ = MAP_OP_INFLIGHT.insert(ikey, rec, 0);
    let mkey = MapKey { tgid, _pad: 0, map };
    let Some(active) = MAP_ACTIVE.get_ptr_mut(mkey) else {
        let mut a = MapActive::default();
        if is_write(kind) {
            a.writer = me;
            a.last_writer = me;
        } else {
            a.reader = me;
            a.last_reader = me;
        }
        let _ = MAP_ACTIVE.insert(mkey, a, 0);
        return 0;
    };
    // SAFETY: valid map value for this run. Races between CPUs can lose an
    // overlap (a false negative), never invent one.
    let active = unsafe { &mut *active };
    let mut saw = 0;
    if is_write(kind) {
        if fresh(&active.writer, g, now) {
            conflict(tgid, map, &me, &active.writer, now);
            saw = active.writer.g;
        } else if fresh(&active.reader, g, now) {
            conflict(tgid, map, &me, &active.reader, now);
            saw = active.reader.g;
        }
        active.writer = me;
        active.last_writer = me;
        active.last_writer_saw = saw;
    } else {
        if fresh(&active.writer, g, now) {
            conflict(tgid, map, &me, &active.writer, now);
            saw = active.writer.g;
        }
        active.reader = me;
        active.last_reader = me;
        active.last_reader_saw = saw;
    }
    0
}

/// At the end of `me`'s operation: `later`, the latest operation of its kind
/// to start, overlapped `me` if it started after `me` did (`me` is still in
/// flight, so `later` started while it was). Reported unless `later` already
/// reported `me` when it started (`saw`).
#[inline(always)]
fn ended_overlap(tgid: u32, map: u64, me: &OpSide, later: &OpSide, saw: &mut u64, now: u64) {
    if later.g != 0 && later.g != me.g && later.start_ns > me.start_ns && *saw != me.g {
        conflict(tgid, map, later, me, now);
        *saw = me.g;
    }
}

/// Every RET of a map operation (deep tier): closes the goroutine's operation.
#[uprobe]
pub fn map_op_exit(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let g = regs::goroutine(&ctx, pid_tgid);
    let ikey = InflightKey { tgid, _pad: 0, g };
    let Some(rec) = MAP_OP_INFLIGHT.get_ptr(ikey) else {
        return 0;
    };
    // SAFETY: copy out before the element is deleted.
    let rec = unsafe { *rec };
    let _ = MAP_OP_INFLIGHT.remove(ikey);
    let kind = rec.cookie & 0xff;
    let mkey = MapKey {
        tgid,
        _pad: 0,
        map: rec.map,
    };
    if let Some(active) = MAP_ACTIVE.get_ptr_mut(mkey) {
        // SAFETY: valid map value for this run.
        let active = unsafe { &mut *active };
        if active.writer.g == g {
            active.writer.g = 0;
        }
        if active.reader.g == g {
            active.reader.g = 0;
        }
        // Overlaps the two slots hid: an operation of another goroutine
        // that started during this one after a third took this one's slot.
        // Only for this probe's own, recent entry: a record left by an
        // operation that panicked is not an operation in flight.
        let now = unsafe { bpf_ktime_get_ns() };
        if cookie(&ctx) >> 8 == rec.cookie >> 8 && now.wrapping_sub(rec.start_ns) < STALE_NS {
            let me = OpSide {
                g,
                goid: config(tgid).map_or(u64::MAX, |cfg| read_at(arch_g(&ctx), cfg.goid_off)),
                start_ns: rec.start_ns,
                caller_pc: rec.caller_pc,
                stack_id: rec.stack_id,
                kind,
                _pad: 0,
            };
            let last_writer = active.last_writer;
            ended_overlap(
                tgid,
                rec.map,
                &me,
                &last_writer,
                &mut active.last_writer_saw,
                now,
            );
            if is_write(kind) {
                let last_reader = active.last_reader;
                ended_overlap(
                    tgid,
                    rec.map,
                    &me,
                    &last_reader,
                    &mut active.last_reader_saw,
                    now,
                );
            }
        }
    }
    let took = unsafe { bpf_ktime_get_ns() }.saturating_sub(rec.start_ns);
    let _ = MAP_OP_GS.insert(
        WaiterKey {
            tgid,
            kind,
            lock_addr: rec.map,
            caller_pc: 0,
            g,
        },
        1u8,
        0,
    );
    let key = LockKey {
        tgid,
        kind: rec.cookie,
        lock_addr: rec.map,
        caller_pc: rec.caller_pc,
        stack_id: rec.stack_id,
    };
    let stats = match MAP_OPS.get_ptr_mut(key) {
        Some(p) => p,
        None => {
            let Some(zero) = MAP_ZERO_STATS.get_ptr(0) else {
                return 0;
            };
            // SAFETY: `zero` points at a map value valid for this run.
            #[allow(clippy::needless_borrows_for_generic_args)]
            let _ = MAP_OPS.insert(key, unsafe { &*zero }, BPF_NOEXIST as u64);
            match MAP_OPS.get_ptr_mut(key) {
                Some(p) => p,
                None => {
                    lost(LOST_OPS);
                    return 0;
                }
            }
        }
    };
    // SAFETY: per-CPU value, only this CPU writes it.
    let stats = unsafe { &mut *stats };
    stats.count += 1;
    stats.total_ns += took;
    if took > stats.max_ns {
        stats.max_ns = took;
    }
    if let Some(slot) = stats.hist.get_mut(hist_slot(took)) {
        *slot += 1;
    }
    0
}

/// Entry of a sync.Map method (deep tier): counts the call per (map, method).
/// The receiver is argument 0 both for `sync.(*Map).*` and for the
/// `internal/sync.(*HashTrieMap[...]).*` methods of Go ≥ 1.24 (the generic
/// dictionary comes second).
#[uprobe]
pub fn sync_map_call(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(cfg) = config(tgid) else {
        return 0;
    };
    if cfg.flags & FLAG_HB_ARMED != 0 {
        // As `-race` does, every call synchronises with the map's earlier calls.
        let goid = read_at(arch_g(&ctx), cfg.goid_off);
        crate::hb::sync_event(tgid, goid, crate::hb::SYNC_MAP_COOKIE, arg(&ctx, 0));
    }
    let key = SyncMapKey {
        tgid,
        method: cookie(&ctx) & 0xff,
        map: arg(&ctx, 0),
    };
    if let Some(c) = SYNC_MAP_CALLS.get_ptr_mut(key) {
        // SAFETY: per-CPU value, only this CPU writes it.
        unsafe { *c += 1 };
        return 0;
    }
    // A key another CPU created is updated in this CPU's slot only.
    if SYNC_MAP_CALLS.insert(key, 1u64, 0).is_err() {
        lost(LOST_SYNC_MAP);
    }
    0
}

crate::names::check_names! {
    MAP_CONFIG => names::map::MAP_CONFIG,
    MAP_EVENTS => names::map::MAP_EVENTS,
    MAP_LOST => names::map::MAP_LOST,
    MAP_STACKS => names::map::MAP_STACKS,
    MAP_GROWTH => names::map::MAP_GROWTH,
    MAP_OP_INFLIGHT => names::map::MAP_OP_INFLIGHT,
    MAP_ACTIVE => names::map::MAP_ACTIVE,
    MAP_OPS => names::map::MAP_OPS,
    MAP_OP_GS => names::map::MAP_OP_GS,
    MAP_CONFLICTS => names::map::MAP_CONFLICTS,
    SYNC_MAP_CALLS => names::map::SYNC_MAP_CALLS,
    MAP_SITE_HITS => names::map::MAP_SITE_HITS,
    map_fatal => names::program::MAP_FATAL,
    map_grow => names::program::MAP_GROW,
    map_op_enter => names::program::MAP_OP_ENTER,
    map_op_exit => names::program::MAP_OP_EXIT,
    sync_map_call => names::program::SYNC_MAP_CALL,
}
