//! The per-event flow accounting, shared by every hook kind. Each entry
//! point (`tracepoint.rs`, `kprobe.rs`, `fentry.rs`, `raw_tracepoint.rs`,
//! `accept.rs`) only extracts (socket, values) from its context and calls
//! the same `on_*` function here, so all paths count identically.

use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use tracer_common::tcp::{
    FLAG_CLOSED, FLAG_DESTROYED, FLAG_MIDSTREAM, FLAG_TUPLE, SIDE_CLIENT, SIDE_SERVER,
    STAT_CLOSED_LOST, STAT_FLOWS_CLOSED, STAT_FLOWS_CREATED, STAT_INSERT_FAILED, STAT_MIDSTREAM,
    SockInfo, TCP_CLOSE, TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_LAST_ACK, TCP_SYN_RECV, TCP_SYN_SENT,
    TcpFlow, rtt_slot,
};

use super::{
    maps::{TCP_CLOSED_RB, TCP_CONFIG, TCP_FLOWS, TCP_SOCKS, TCP_ZERO, has_flow, stat, traced},
    sock::SockSrtt,
    sources::{NewFlowGate, SrttSource, Tuple, TupleSource},
};

/// `bpf_ringbuf_output` flag: user space drains on a timer, so no wake-up
/// (an irq_work per flow) is needed.
const BPF_RB_NO_WAKEUP: u64 = aya_ebpf::bindings::BPF_RB_NO_WAKEUP as u64;

#[inline(always)]
fn add(field: *mut u64, v: u64) {
    // SAFETY: `field` points into a map value, valid and aligned for this run.
    // Not atomic: `core` has no atomic RMW for the BPF target. Send and recv
    // update different fields, so only two sends (or two recvs) on one socket
    // finishing at the same instant on two CPUs could lose an update.
    unsafe { *field += v };
}

#[inline(always)]
fn set_tuple(f: &mut TcpFlow, t: &Tuple) {
    f.sport = t.sport;
    f.dport = t.dport;
    f.family = t.family;
    f.saddr = t.saddr;
    f.daddr = t.daddr;
    f.flags |= FLAG_TUPLE;
}

/// Inserts a zeroed flow for `sk`, owned by the current process, and returns it.
#[inline(always)]
fn new_flow(sk: u64, tgid: u32, now: u64) -> Option<*mut TcpFlow> {
    let zero = TCP_ZERO.get_ptr(0)?;
    // SAFETY: `zero` points at a map value valid for this run.
    #[allow(clippy::needless_borrows_for_generic_args)]
    if TCP_FLOWS.insert(sk, unsafe { &*zero }, 0).is_err() {
        stat(STAT_INSERT_FAILED);
        return None;
    }
    let p = TCP_FLOWS.get_ptr_mut(sk)?;
    stat(STAT_FLOWS_CREATED);
    // SAFETY: map value valid for this run.
    let f = unsafe { &mut *p };
    f.skaddr = sk;
    f.tgid = tgid;
    f.start_ns = now;
    if let Ok(comm) = bpf_get_current_comm() {
        f.comm = comm;
    }
    Some(p)
}

/// Hands a finished flow to user space and frees its slot: its socket was
/// freed, or its address is being reused by a socket whose freeing was missed.
#[inline(always)]
fn emit(sk: u64, p: *mut TcpFlow) {
    // SAFETY: map value valid for this run; copied before the removal.
    if TCP_CLOSED_RB
        .output::<TcpFlow>(unsafe { &*p }, BPF_RB_NO_WAKEUP)
        .is_err()
    {
        stat(STAT_CLOSED_LOST);
    }
    let _ = TCP_FLOWS.remove(sk);
}

/// Whether a flow has reached TCP_CLOSE (it stays in `TCP_FLOWS` until freed).
#[inline(always)]
fn is_closed(p: *mut TcpFlow) -> bool {
    // SAFETY: map value valid for this run.
    unsafe { (*p).flags & FLAG_CLOSED != 0 }
}

/// The flow of `sk`, open or closed.
#[inline(always)]
fn any_flow(sk: u64) -> Option<*mut TcpFlow> {
    TCP_FLOWS.get_ptr_mut(sk)
}

/// The TCP state of `sk` goes from `old` to `new`; `src` gives its addresses
/// when a flow first needs them.
#[inline(always)]
pub(super) fn on_set_state<S: TupleSource>(sk: u64, old: u8, new: u8, src: &S) -> Option<()> {
    let mut flow = TCP_FLOWS.get_ptr_mut(sk);
    if let Some(p) = flow
        && is_closed(p)
    {
        if new == TCP_CLOSE {
            return Some(());
        }
        // A closed socket leaves TCP_CLOSE only to connect or listen again
        // (or its address was reused after a missed free): the old flow ends here.
        emit(sk, p);
        flow = None;
    }

    if new == TCP_SYN_SENT {
        // connect() runs in the caller's context: the one place a client
        // socket can be attributed before it moves data.
        let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        if !traced(tgid) || !src.is_tcp() {
            return None;
        }
        let p = new_flow(sk, tgid, now_ns())?;
        // SAFETY: map value valid for this run.
        let f = unsafe { &mut *p };
        f.side = SIDE_CLIENT;
        f.state = new;
        // The source port is assigned after SYN_SENT: the addresses are
        // read at ESTABLISHED, or at CLOSE for a connect that failed.
        return Some(());
    }

    if let Some(p) = flow {
        // SAFETY: map value valid for this run.
        let f = unsafe { &mut *p };
        // Once per flow: complete from ESTABLISHED on (a mid-stream flow
        // gets them at its first state change).
        if (new == TCP_ESTABLISHED || f.flags & FLAG_TUPLE == 0)
            && let Some(t) = src.tuple()
        {
            set_tuple(f, &t);
        }
        f.state = new;
        if new == TCP_ESTABLISHED && f.established_ns == 0 {
            let now = now_ns();
            f.established_ns = now;
            if old == TCP_SYN_SENT && f.start_ns != 0 {
                f.connect_latency_ns = now.saturating_sub(f.start_ns);
            }
        }
        if new == TCP_CLOSE {
            let every = TCP_CONFIG.get(0).map_or(0, |c| c.rtt_every as u64);
            let calls = f.sends + f.receives;
            if every != 0 && (calls == 0 || (calls - 1) & (every - 1) != 0) {
                // The latest smoothed RTT, unless the last call sampled it.
                sample_rtt(sk, f);
            }
            // Stays in TCP_FLOWS until the socket is freed (`on_destroy`).
            f.end_ns = now_ns();
            f.close_from = old;
            f.flags |= FLAG_CLOSED;
            stat(STAT_FLOWS_CLOSED);
        }
        return Some(());
    }

    if new == TCP_SYN_RECV {
        // A child of a listener, created in softirq context: remember it until
        // a traced process accepts, sends or receives on it. Its addresses
        // are complete at ESTABLISHED.
        if !src.is_tcp() {
            return None;
        }
        let info = SockInfo {
            start_ns: now_ns(),
            side: SIDE_SERVER,
            state: new,
            ..Default::default()
        };
        let _ = TCP_SOCKS.insert(sk, info, 0);
        return Some(());
    }
    if (new == TCP_FIN_WAIT1 || new == TCP_LAST_ACK) && TCP_SOCKS.get_ptr(sk).is_some() {
        // Only close()/shutdown() make these transitions, in the owner's
        // context: claim a server socket that never moved a byte.
        if let Some(p) = claim_flow(sk, now_ns()) {
            // SAFETY: map value valid for this run.
            unsafe { (*p).state = new };
            return Some(());
        }
    }
    let info = TCP_SOCKS.get_ptr_mut(sk)?;
    if new == TCP_CLOSE {
        let _ = TCP_SOCKS.remove(sk);
        return Some(());
    }
    // SAFETY: map value valid for this run.
    let info = unsafe { &mut *info };
    info.state = new;
    if new == TCP_ESTABLISHED && info.established_ns == 0 {
        info.established_ns = now_ns();
        // The child's addresses are filled in after it enters SYN_RECV.
        if let Some(t) = src.tuple() {
            info.sport = t.sport;
            info.dport = t.dport;
            info.family = t.family;
            info.saddr = t.saddr;
            info.daddr = t.daddr;
        }
    }
    Some(())
}

/// CLOCK_MONOTONIC now, read only by the events that record a time.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_ns() }
}

/// A flow for `sk` first seen at send/recv by a traced process: a server
/// socket from `TCP_SOCKS`, or one that was open before tracing started.
#[inline(always)]
fn claim_flow(sk: u64, now: u64) -> Option<*mut TcpFlow> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !traced(tgid) {
        return None;
    }
    let p = new_flow(sk, tgid, now)?;
    // SAFETY: map value valid for this run.
    let f = unsafe { &mut *p };
    match TCP_SOCKS.get_ptr(sk) {
        Some(info) => {
            // SAFETY: map value valid for this run; copied before removal.
            let info = unsafe { *info };
            let _ = TCP_SOCKS.remove(sk);
            f.start_ns = info.start_ns;
            f.established_ns = info.established_ns;
            f.side = info.side;
            f.state = info.state;
            if info.family != 0 {
                f.sport = info.sport;
                f.dport = info.dport;
                f.family = info.family;
                f.saddr = info.saddr;
                f.daddr = info.daddr;
                f.flags |= FLAG_TUPLE;
            }
        }
        None => {
            f.flags |= FLAG_MIDSTREAM;
            f.state = TCP_ESTABLISHED;
            stat(STAT_MIDSTREAM);
        }
    }
    Some(p)
}

/// `tcp_v4_connect`/`tcp_v6_connect` on `sk` returned `ret` in the
/// connecting task; `dest` is the address it was given. A failure after
/// SYN_SENT (e.g. no free local port) already closed the socket's flow in
/// the state path and only gets its errno; one before SYN_SENT (no route,
/// a refused address) gets a closed client flow of its own here, for a
/// traced process: no other hook sees it.
#[inline(always)]
pub(super) fn on_connect_ret(sk: u64, ret: i32, dest: Option<Tuple>) -> Option<()> {
    if ret >= 0 || sk == 0 {
        return None;
    }
    let errno = ret.unsigned_abs().min(255) as u8;
    if let Some(p) = TCP_FLOWS.get_ptr_mut(sk) {
        // SAFETY: map value valid for this run.
        unsafe { (*p).connect_errno = errno };
        return Some(());
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !traced(tgid) {
        return None;
    }
    let now = now_ns();
    let p = new_flow(sk, tgid, now)?;
    // SAFETY: map value valid for this run.
    let f = unsafe { &mut *p };
    f.side = SIDE_CLIENT;
    f.state = TCP_CLOSE;
    f.close_from = TCP_CLOSE;
    f.end_ns = now;
    f.connect_errno = errno;
    f.flags |= FLAG_CLOSED;
    if let Some(t) = dest {
        // The destination only: the failed connect bound no local address.
        f.dport = t.dport;
        f.family = t.family;
        f.daddr = t.daddr;
        f.flags |= FLAG_TUPLE;
    }
    stat(STAT_FLOWS_CLOSED);
    Some(())
}

/// accept() in the current task returned the listener's child `sk`: claim
/// it for a traced process and stamp the accept time; the accept-queue wait
/// is that minus `established_ns`. Only sockets whose handshake is in
/// `TCP_SOCKS` are claimed: a socket accepted from before tracing started
/// (or a wrong pointer from the tracepoint's fd walk) is left to send/recv,
/// which records it mid-stream as before.
#[inline(always)]
pub(super) fn on_accept(sk: u64) -> Option<()> {
    if sk == 0 || TCP_SOCKS.get_ptr(sk).is_none() || TCP_FLOWS.get_ptr(sk).is_some() {
        return None;
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let p = claim_flow(sk, now)?;
    // SAFETY: map value valid for this run.
    unsafe { (*p).accepted_ns = now };
    Some(())
}

/// Whether a send/recv on `sk` by the current task would be recorded: the
/// socket has a flow, or the task is traced. kprobe entries use it to avoid
/// stashing arguments for every socket call on the machine.
#[inline(always)]
pub(super) fn wanted(sk: u64) -> bool {
    has_flow(sk) || traced((bpf_get_current_pid_tgid() >> 32) as u32)
}

/// A send (or non-peek receive) on `sk` returned `ret`.
#[inline(always)]
pub(super) fn on_length(sk: u64, ret: i64, recv: bool) -> Option<()> {
    on_length_gated(sk, ret, recv, &AnySocket)
}

/// For hooks that only see TCP sockets.
struct AnySocket;

impl NewFlowGate for AnySocket {
    #[inline(always)]
    fn allows(&self, _sk: u64) -> bool {
        true
    }
}

/// [`on_length`], with `gate` consulted only when `sk` has no open flow, so
/// the common case is one hash lookup.
#[inline(always)]
pub(super) fn on_length_gated<G: NewFlowGate>(
    sk: u64,
    ret: i64,
    recv: bool,
    gate: &G,
) -> Option<()> {
    if ret <= 0 {
        return None;
    }
    let p = match TCP_FLOWS.get_ptr_mut(sk) {
        Some(p) => p,
        None => {
            if !gate.allows(sk) {
                return None;
            }
            // SAFETY: plain helper call.
            claim_flow(sk, unsafe { bpf_ktime_get_ns() })?
        }
    };
    // SAFETY: map value valid for this run; fields only reached by address.
    let calls = unsafe {
        if recv {
            add(&raw mut (*p).bytes_received, ret as u64);
            add(&raw mut (*p).receives, 1);
        } else {
            add(&raw mut (*p).bytes_sent, ret as u64);
            add(&raw mut (*p).sends, 1);
        }
        (*p).sends + (*p).receives
    };
    let every = TCP_CONFIG.get(0).map_or(0, |c| c.rtt_every as u64);
    if every != 0 && (calls - 1) & (every - 1) == 0 {
        // SAFETY: map value valid for this run.
        sample_rtt(sk, unsafe { &mut *p });
    }
    Some(())
}

/// Records the socket's smoothed RTT now (sampled mode, `rtt_every`).
#[inline(always)]
fn sample_rtt(sk: u64, f: &mut TcpFlow) {
    if let Some(srtt) = SockSrtt(sk).srtt_us() {
        record_rtt(f, srtt);
    }
}

/// A segment arrived on an established `sk`: records its smoothed RTT
/// (µs), read from `src` only when the socket has an open flow.
#[inline(always)]
pub(super) fn on_rtt_lazy<S: SrttSource>(sk: u64, src: &S) -> Option<()> {
    let p = TCP_FLOWS.get_ptr_mut(sk)?;
    let srtt = src.srtt_us()?;
    // SAFETY: map value valid for this run. Only softirq on the socket's CPU
    // updates these, under the socket lock, so plain writes suffice.
    record_rtt(unsafe { &mut *p }, srtt);
    Some(())
}

/// Adds one smoothed-RTT sample (µs) to a flow; 0 means the socket has
/// taken no RTT sample yet.
#[inline(always)]
fn record_rtt(f: &mut TcpFlow, srtt: u64) {
    if srtt == 0 {
        return;
    }
    f.srtt_us = srtt;
    f.rtt_samples += 1;
    f.rtt_sum_us += srtt;
    if let Some(slot) = f.rtt_hist.get_mut(rtt_slot(srtt)) {
        *slot += 1;
    }
}

/// Which per-flow counter [`bump`] increments.
pub(super) const BUMP_RETRANS: u8 = 0;

pub(super) const BUMP_RST_SENT: u8 = 1;

pub(super) const BUMP_RST_RECV: u8 = 2;

/// Counts a retransmit or reset on `sk`'s open or latest closed flow.
#[inline(always)]
pub(super) fn bump(sk: u64, which: u8) -> Option<()> {
    if sk == 0 {
        return None;
    }
    let p = any_flow(sk)?;
    // SAFETY: map value valid for this run; fields only reached by address.
    unsafe {
        match which {
            BUMP_RETRANS => add(&raw mut (*p).retransmits, 1),
            BUMP_RST_SENT => add(&raw mut (*p).resets_sent, 1),
            _ => add(&raw mut (*p).resets_received, 1),
        }
    }
    Some(())
}

/// `sk` is being freed; its address may be reused next. Its flow is final.
#[inline(always)]
pub(super) fn on_destroy(sk: u64) -> Option<()> {
    let Some(p) = TCP_FLOWS.get_ptr_mut(sk) else {
        // A handshake no traced process claimed (a claimed one left TCP_SOCKS).
        let _ = TCP_SOCKS.remove(sk);
        return None;
    };
    // SAFETY: map value valid for this run.
    let f = unsafe { &mut *p };
    if f.flags & FLAG_CLOSED == 0 {
        // Freed without a TCP_CLOSE we saw.
        // SAFETY: plain helper call.
        f.end_ns = unsafe { bpf_ktime_get_ns() };
        f.flags |= FLAG_CLOSED;
        stat(STAT_FLOWS_CLOSED);
    }
    f.flags |= FLAG_DESTROYED;
    emit(sk, p);
    Some(())
}
