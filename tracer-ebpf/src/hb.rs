//! Happens-before stream (deep tier, issue #19): synchronisation operations,
//! goroutine creations and map accesses of the traced process, in one ring
//! buffer, for user space's vector-clock detector (docs/maps.md).
//!
//! Every record is reserved in the probe, before the probed instruction
//! runs, and one ring buffer serves every CPU: a release is therefore in the
//! stream before any event of a goroutine that observed it. The probes only
//! read registers and user memory through the helpers; they never change
//! the traced program.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_attach_cookie, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, uprobe},
    maps::{Array, LruHashMap, RingBuf},
    programs::ProbeContext,
};
use tracer_common::{
    maps::{
        EVENT_HB_ACCESS, EVENT_HB_GO, EVENT_HB_SYNC, FLAG_HB_ARMED, HB_ACT_ACQUIRE_ALL,
        HB_ACT_BOTH, HB_ACT_GO_ENTER, HB_ACT_GO_EXIT, HB_ACT_SELECT, HB_SCASE_SIZE,
        HB_SELECT_CASES, HbEvent, LOST_HB, OpSide, hb_action, hb_deref, hb_disp, hb_load_disp,
        hb_reg, hb_rip, hb_rip_rel,
    },
    names,
};

use crate::maps::{arch_g, config, read_at};

/// The stream. One page by default; user space sizes it
/// (`HB_RING_BYTES`) for sessions that run the detector.
#[map]
static HB_EVENTS: RingBuf = RingBuf::with_byte_size(4096, 0);

/// Events the ring had no room for, ever (one counter for all CPUs, so
/// every later event carries the loss).
#[map]
static HB_LOST: Array<u64> = Array::with_max_entries(1, 0);

/// Per thread: the parent goroutine between `newproc1`'s entry and its RET
/// (it runs on the system stack, without preemption, on one thread).
#[map]
static HB_PARENTS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(4096, 0);

/// Cookie of `sync_map_call`'s events: both directions, probe index 0xffff.
pub const SYNC_MAP_COOKIE: u64 = HB_ACT_BOTH | (0xffff << 48);

#[inline(always)]
fn lost_so_far() -> u64 {
    // SAFETY: plain read of a u64 array slot.
    HB_LOST.get(0).copied().unwrap_or(0)
}

#[inline(always)]
fn count_lost() {
    crate::maps::lost(LOST_HB);
    if let Some(c) = HB_LOST.get_ptr_mut(0) {
        // SAFETY: the slot is shared by every CPU. Two CPUs adding at once
        // may count one loss instead of two, but the value still changes,
        // which is all a reader needs to restart; the total is in `MAP_LOST`.
        unsafe { *c += 1 };
    }
}

/// Sends `ev`, stamped with the loss count so far.
#[inline(always)]
fn emit(mut ev: HbEvent) {
    ev.lost = lost_so_far();
    let Some(mut entry) = HB_EVENTS.reserve::<HbEvent>(0) else {
        count_lost();
        return;
    };
    entry.write(ev);
    entry.submit(0);
}

/// A synchronisation event of `goid` on `addr`.
#[inline(always)]
pub fn sync_event(tgid: u32, goid: u64, cookie: u64, addr: u64) {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    emit(HbEvent {
        kind: EVENT_HB_SYNC,
        tgid,
        cookie,
        goid,
        addr,
        ktime_ns: now,
        pc: 0,
        stack_id: -1,
        lost: 0,
    });
}

/// A map operation's entry (called by `map_op_enter` once the stream is armed).
#[inline(always)]
pub fn access(tgid: u32, cookie: u64, me: &OpSide, map: u64) {
    emit(HbEvent {
        kind: EVENT_HB_ACCESS,
        tgid,
        cookie,
        goid: me.goid,
        addr: map,
        ktime_ns: me.start_ns,
        pc: me.caller_pc,
        stack_id: me.stack_id,
        lost: 0,
    });
}

/// Register number `n` of the trapped task (the numbering of
/// `tracer-user/src/maps/hb/probes.rs`). Each arm reads a fixed offset: the
/// verifier refuses a context read at a computed one.
#[cfg(bpf_target_arch = "x86_64")]
#[inline(always)]
fn reg(ctx: &ProbeContext, n: u8) -> u64 {
    // SAFETY: for uprobe programs the context is the trapped task's pt_regs.
    // Every register is loaded at its fixed offset first, then one is
    // picked: a load through a pointer computed from `n` is refused.
    let r = unsafe {
        let p = ctx.regs;
        [
            core::ptr::read_volatile(&raw const (*p).rax),
            core::ptr::read_volatile(&raw const (*p).rbx),
            core::ptr::read_volatile(&raw const (*p).rcx),
            core::ptr::read_volatile(&raw const (*p).rdx),
            core::ptr::read_volatile(&raw const (*p).rsi),
            core::ptr::read_volatile(&raw const (*p).rdi),
            core::ptr::read_volatile(&raw const (*p).rbp),
            core::ptr::read_volatile(&raw const (*p).rsp),
            core::ptr::read_volatile(&raw const (*p).r8),
            core::ptr::read_volatile(&raw const (*p).r9),
            core::ptr::read_volatile(&raw const (*p).r10),
            core::ptr::read_volatile(&raw const (*p).r11),
            core::ptr::read_volatile(&raw const (*p).r12),
            core::ptr::read_volatile(&raw const (*p).r13),
            core::ptr::read_volatile(&raw const (*p).r14),
            core::ptr::read_volatile(&raw const (*p).r15),
        ]
    };
    r.get(usize::from(n & 15)).copied().unwrap_or(0)
}

/// On arm64 only argument registers are used (method entries): X0–X7.
#[cfg(bpf_target_arch = "aarch64")]
#[inline(always)]
fn reg(ctx: &ProbeContext, n: u8) -> u64 {
    let p = ctx.regs as *const aya_ebpf::bindings::user_pt_regs;
    // SAFETY: for uprobe programs the context is the trapped task's
    // registers; each is loaded at its fixed offset (see the amd64 version).
    let r = unsafe {
        [
            core::ptr::read_volatile(&raw const (*p).regs[0]),
            core::ptr::read_volatile(&raw const (*p).regs[1]),
            core::ptr::read_volatile(&raw const (*p).regs[2]),
            core::ptr::read_volatile(&raw const (*p).regs[3]),
            core::ptr::read_volatile(&raw const (*p).regs[4]),
            core::ptr::read_volatile(&raw const (*p).regs[5]),
            core::ptr::read_volatile(&raw const (*p).regs[6]),
            core::ptr::read_volatile(&raw const (*p).regs[7]),
        ]
    };
    r.get(usize::from(n & 7)).copied().unwrap_or(0)
}

/// Go's integer argument registers, in order (ABIInternal).
#[cfg(bpf_target_arch = "x86_64")]
const ARG_REGS: [u8; 6] = [0, 1, 2, 5, 4, 8];
#[cfg(bpf_target_arch = "aarch64")]
const ARG_REGS: [u8; 6] = [0, 1, 2, 3, 4, 5];

/// Every synchronisation probe: lock fast paths (at their atomic
/// instruction), method and runtime entries, `newproc1`, `selectgo`.
#[uprobe]
pub fn hb_sync(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let Some(cfg) = config(tgid) else {
        return 0;
    };
    if cfg.flags & FLAG_HB_ARMED == 0 {
        return 0;
    }
    // SAFETY: reads this probe's attach cookie.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) };
    let tid = pid_tgid as u32;
    match hb_action(cookie) {
        HB_ACT_GO_ENTER => {
            // newproc1(fn, callergp, ...): the parent is argument 1.
            let parent = read_at(reg(&ctx, ARG_REGS[1]), cfg.goid_off);
            let _ = HB_PARENTS.insert(tid, parent, 0);
        }
        HB_ACT_GO_EXIT => {
            // SAFETY: copy of a plain value.
            let Some(parent) = (unsafe { HB_PARENTS.get(tid) }).copied() else {
                return 0;
            };
            let _ = HB_PARENTS.remove(tid);
            let child = read_at(reg(&ctx, ARG_REGS[0]), cfg.goid_off);
            // SAFETY: helper without arguments.
            let now = unsafe { bpf_ktime_get_ns() };
            emit(HbEvent {
                kind: EVENT_HB_GO,
                tgid,
                cookie,
                goid: parent,
                addr: child,
                ktime_ns: now,
                pc: 0,
                stack_id: -1,
                lost: 0,
            });
        }
        HB_ACT_SELECT => {
            // selectgo(cas0, order0, pc0, nsends, nrecvs, block).
            let goid = read_at(arch_g(&ctx), cfg.goid_off);
            let cases = reg(&ctx, ARG_REGS[0]);
            let n = reg(&ctx, ARG_REGS[3]).wrapping_add(reg(&ctx, ARG_REGS[4]));
            let both = (cookie & !0xf) | HB_ACT_BOTH;
            for i in 0..HB_SELECT_CASES {
                if i >= n {
                    break;
                }
                let c = read_at(cases, i * HB_SCASE_SIZE);
                if c != 0 && c != u64::MAX {
                    sync_event(tgid, goid, both, c);
                }
            }
            if n > HB_SELECT_CASES {
                sync_event(tgid, goid, (cookie & !0xf) | HB_ACT_ACQUIRE_ALL, 0);
            }
        }
        _ => {
            if hb_rip(cookie) {
                let goid = read_at(arch_g(&ctx), cfg.goid_off);
                let addr = crate::maps::ip(&ctx).wrapping_add(hb_rip_rel(cookie) as u64);
                sync_event(tgid, goid, cookie, addr);
                return 0;
            }
            let mut base = reg(&ctx, hb_reg(cookie));
            if hb_deref(cookie) {
                base = read_at(base, hb_load_disp(cookie) as u64);
            }
            if base == 0 || base == u64::MAX {
                return 0;
            }
            let goid = read_at(arch_g(&ctx), cfg.goid_off);
            sync_event(
                tgid,
                goid,
                cookie,
                base.wrapping_add(hb_disp(cookie) as u64),
            );
        }
    }
    0
}

crate::names::check_names! {
    HB_EVENTS => names::map::HB_EVENTS,
    HB_LOST => names::map::HB_LOST,
    HB_PARENTS => names::map::HB_PARENTS,
    hb_sync => names::program::HB_SYNC,
}
