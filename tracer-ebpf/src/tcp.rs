//! TCP flows: the per-event flow accounting, shared by every hook mechanism,
//! and its tracepoint entry points (`tcp_kernel.rs` has the kprobe and fentry
//! ones). Each entry point only extracts (socket, values) from its context
//! and calls the same `on_*` function, so all paths count identically.
//!
//! Flows are keyed by the kernel socket address. A flow is attributed to a
//! process only where the current task is the socket's owner: `connect`
//! (CLOSE→SYN_SENT runs in the caller) and send/recv. State changes, RTT
//! probes, retransmits and resets often run in softirq context, where the
//! current pid is whoever was interrupted, so they only update flows found by
//! socket address. Every field offset comes from user space (`TCP_CONFIG`),
//! parsed from the tracefs format files (tracepoints) or the kernel's BTF
//! (kprobe/fentry) of the running kernel.

use crate::tcp_kernel::SockSrtt;
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use tracer_common::tcp::{
    AF_INET, AF_INET6, FLAG_CLOSED, FLAG_DESTROYED, FLAG_MIDSTREAM, FLAG_TUPLE, IPPROTO_TCP,
    MSG_PEEK, OFF_NONE, SIDE_CLIENT, SIDE_SERVER, STAT_CLOSED_LOST, STAT_COUNT, STAT_FLOWS_CLOSED,
    STAT_FLOWS_CREATED, STAT_INSERT_FAILED, STAT_MIDSTREAM, STAT_READ_FAILED, SockInfo, TCP_CLOSE,
    TCP_ESTABLISHED, TCP_FIN_WAIT1, TCP_LAST_ACK, TCP_SYN_RECV, TCP_SYN_SENT, TcpConfig, TcpFlow,
    rtt_slot,
};

/// Tracepoint field offsets, written once by user space before attaching.
#[map]
pub(crate) static TCP_CONFIG: Array<TcpConfig> = Array::with_max_entries(1, 0);

/// Processes whose connections are recorded (tgid → 1).
#[map]
static TCP_TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// Flows by socket address: open ones, and closed ones until their socket
/// is freed (`tcp_destroy_sock`), because a reset is sent and data can still
/// be read after TCP_CLOSE. LRU so that the kernel state stays bounded;
/// user space derives evictions from `STAT_FLOWS_CREATED`. A socket address
/// is reused only after the socket is freed, which moves its flow out.
#[map]
static TCP_FLOWS: LruHashMap<u64, TcpFlow> = LruHashMap::with_max_entries(65536, 0);

/// Finished flows, for user space to drain: a ring buffer rather than a
/// hash map because a flow here is final, and an output costs a copy where
/// a hash insert (plus the index a closed socket needed to find it) cost
/// four LRU operations per flow. A full buffer drops the flow and counts it
/// (`STAT_CLOSED_LOST`). 4 MiB holds about 12 500 flows; user space maps
/// the data area twice, so it shows as 8 MiB of the agent's RSS.
#[map]
static TCP_CLOSED_RB: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Server sockets seen in the handshake but not yet claimed by a traced
/// process's send/recv. Sockets of untraced processes land here too; LRU
/// keeps that bounded.
#[map]
static TCP_SOCKS: LruHashMap<u64, SockInfo> = LruHashMap::with_max_entries(16384, 0);

/// `bpf_ringbuf_output` flag: user space drains on a timer, so no wake-up
/// (an irq_work per flow) is needed.
const BPF_RB_NO_WAKEUP: u64 = aya_ebpf::bindings::BPF_RB_NO_WAKEUP as u64;

/// One zeroed flow: a `TcpFlow` by value would crowd the 512-byte stack.
#[map]
static TCP_ZERO: Array<TcpFlow> = Array::with_max_entries(1, 0);

/// Counters, indexed by `tracer_common::tcp::STAT_*`.
#[map]
static TCP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// Addresses and ports of a socket as one tracepoint record shows them.
#[derive(Clone, Copy, Default)]
pub(crate) struct Tuple {
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// Where a state change's addresses can be read from: the tracepoint
/// record, or the socket itself (kprobe, fentry, raw tracepoint). Read only
/// when a flow needs them (once per flow, at ESTABLISHED), not per event: a
/// generic rather than a closure, because a closure here would be outlined
/// into a BPF subprogram returning a stack pointer, which the verifier refuses.
/// The protocol is checked the same way, only where a socket would start
/// being recorded: a socket with a flow or pending handshake is TCP already.
pub(crate) trait TupleSource {
    fn tuple(&self) -> Option<Tuple>;
    fn is_tcp(&self) -> bool;
}

/// The addresses in a `sock:inet_sock_set_state` record.
struct RecordTuple<'a>(&'a TracePointContext, &'a TcpConfig);

impl TupleSource for RecordTuple<'_> {
    #[inline(always)]
    fn tuple(&self) -> Option<Tuple> {
        read_tuple(self.0, self.1)
    }

    #[inline(always)]
    fn is_tcp(&self) -> bool {
        read::<u16>(self.0, self.1.ss_protocol) == Some(IPPROTO_TCP)
    }
}

#[inline(always)]
pub(crate) fn stat(i: u32) {
    if let Some(p) = TCP_STATS.get_ptr_mut(i) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *p += 1 };
    }
}

/// Reads a field at a run-time offset; `None` when the field is absent here.
#[inline(always)]
fn read<T>(ctx: &TracePointContext, off: u16) -> Option<T> {
    if off == OFF_NONE {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a bad offset fails cleanly.
    match unsafe { ctx.read_at::<T>(off as usize) } {
        Ok(v) => Some(v),
        Err(_) => {
            stat(STAT_READ_FAILED);
            None
        }
    }
}

#[inline(always)]
fn add(field: *mut u64, v: u64) {
    // SAFETY: `field` points into a map value, valid and aligned for this run.
    // Not atomic: `core` has no atomic RMW for the BPF target. Send and recv
    // update different fields, so only two sends (or two recvs) on one socket
    // finishing at the same instant on two CPUs could lose an update.
    unsafe { *field += v };
}

#[inline(always)]
pub(crate) fn traced(tgid: u32) -> bool {
    // SAFETY: read-only lookup of a plain value.
    unsafe { TCP_TARGETS.get(tgid) }.is_some()
}

#[inline(always)]
fn read_tuple(ctx: &TracePointContext, c: &TcpConfig) -> Option<Tuple> {
    let mut t = Tuple {
        sport: read(ctx, c.ss_sport)?,
        dport: read(ctx, c.ss_dport)?,
        family: read(ctx, c.ss_family)?,
        ..Default::default()
    };
    if t.family == AF_INET {
        let s: [u8; 4] = read(ctx, c.ss_saddr)?;
        let d: [u8; 4] = read(ctx, c.ss_daddr)?;
        t.saddr[..4].copy_from_slice(&s);
        t.daddr[..4].copy_from_slice(&d);
    } else if t.family == AF_INET6 {
        t.saddr = read(ctx, c.ss_saddr_v6)?;
        t.daddr = read(ctx, c.ss_daddr_v6)?;
    } else {
        return None;
    }
    Some(t)
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

/// Whether `sk` has a flow (retransmits, resets and reads can follow the
/// close, until the socket is freed).
#[inline(always)]
pub(crate) fn has_flow(sk: u64) -> bool {
    TCP_FLOWS.get_ptr(sk).is_some()
}

/// `sock:inet_sock_set_state`: handshake, connect latency, close.
#[tracepoint]
pub fn tcp_state(ctx: TracePointContext) -> u32 {
    let _ = on_set_state_tp(&ctx);
    0
}

fn on_set_state_tp(ctx: &TracePointContext) -> Option<()> {
    let c = TCP_CONFIG.get(0)?;
    let sk: u64 = read(ctx, c.ss_skaddr)?;
    let old = read::<i32>(ctx, c.ss_oldstate)? as u8;
    let new = read::<i32>(ctx, c.ss_newstate)? as u8;
    on_set_state(sk, old, new, &RecordTuple(ctx, c))
}

/// The TCP state of `sk` goes from `old` to `new`; `src` gives its addresses
/// when a flow first needs them.
#[inline(always)]
pub(crate) fn on_set_state<S: TupleSource>(sk: u64, old: u8, new: u8, src: &S) -> Option<()> {
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
pub(crate) fn on_connect_ret(sk: u64, ret: i32, dest: Option<Tuple>) -> Option<()> {
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
pub(crate) fn on_accept(sk: u64) -> Option<()> {
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

/// Filters a `sock_{send,recv}_length` record down to (socket, bytes).
#[inline(always)]
fn on_length_tp(
    ctx: &TracePointContext,
    sk_off: u16,
    proto_off: u16,
    ret_off: u16,
    flags_off: u16,
    recv: bool,
) -> Option<()> {
    let proto: u16 = read(ctx, proto_off)?;
    if proto != IPPROTO_TCP {
        return None;
    }
    let ret: i32 = read(ctx, ret_off)?;
    if recv && flags_off != OFF_NONE {
        let flags: i32 = read(ctx, flags_off)?;
        if flags & MSG_PEEK != 0 {
            return None;
        }
    }
    let sk: u64 = read(ctx, sk_off)?;
    on_length(sk, ret as i64, recv)
}

/// Whether a send/recv on `sk` by the current task would be recorded: the
/// socket has a flow, or the task is traced. kprobe entries use it to avoid
/// stashing arguments for every socket call on the machine.
#[inline(always)]
pub(crate) fn wanted(sk: u64) -> bool {
    has_flow(sk) || traced((bpf_get_current_pid_tgid() >> 32) as u32)
}

/// A send (or non-peek receive) on `sk` returned `ret`.
#[inline(always)]
pub(crate) fn on_length(sk: u64, ret: i64, recv: bool) -> Option<()> {
    on_length_gated(sk, ret, recv, &AnySocket)
}

/// Decides whether a socket with no open flow may get one at send/recv:
/// events that fire for every socket type must check it is TCP first.
pub(crate) trait NewFlowGate {
    fn allows(&self, sk: u64) -> bool;
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
pub(crate) fn on_length_gated<G: NewFlowGate>(
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

/// `sock:sock_send_length`: bytes sent per successful send call.
#[tracepoint]
pub fn tcp_send_len(ctx: TracePointContext) -> u32 {
    if let Some(c) = TCP_CONFIG.get(0) {
        let _ = on_length_tp(
            &ctx,
            c.send_sk,
            c.send_protocol,
            c.send_ret,
            OFF_NONE,
            false,
        );
    }
    0
}

/// `sock:sock_recv_length`: bytes received per successful, non-peek recv call.
#[tracepoint]
pub fn tcp_recv_len(ctx: TracePointContext) -> u32 {
    if let Some(c) = TCP_CONFIG.get(0) {
        let _ = on_length_tp(
            &ctx,
            c.recv_sk,
            c.recv_protocol,
            c.recv_ret,
            c.recv_flags,
            true,
        );
    }
    0
}

/// `tcp:tcp_probe`: smoothed RTT (`srtt_us >> 3`, so µs) on each received segment.
#[tracepoint]
pub fn tcp_rtt(ctx: TracePointContext) -> u32 {
    let _ = on_probe(&ctx);
    0
}

fn on_probe(ctx: &TracePointContext) -> Option<()> {
    let c = TCP_CONFIG.get(0)?;
    let sk: u64 = read(ctx, c.probe_skaddr)?;
    on_rtt_lazy(sk, &RecordSrtt(ctx, c.probe_srtt))
}

/// The `srtt` of a `tcp:tcp_probe` record, read only for sockets with a flow
/// (the event fires for every segment received on the machine).
struct RecordSrtt<'a>(&'a TracePointContext, u16);

impl SrttSource for RecordSrtt<'_> {
    #[inline(always)]
    fn srtt_us(&self) -> Option<u64> {
        read::<u32>(self.0, self.1).map(u64::from)
    }
}

/// Where a smoothed RTT (µs) is read from, once the socket is known to have
/// a flow.
pub(crate) trait SrttSource {
    fn srtt_us(&self) -> Option<u64>;
}

/// A segment arrived on an established `sk`: records its smoothed RTT
/// (µs), read from `src` only when the socket has an open flow.
#[inline(always)]
pub(crate) fn on_rtt_lazy<S: SrttSource>(sk: u64, src: &S) -> Option<()> {
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
pub(crate) const BUMP_RETRANS: u8 = 0;
pub(crate) const BUMP_RST_SENT: u8 = 1;
pub(crate) const BUMP_RST_RECV: u8 = 2;

#[inline(always)]
fn bump_tp(ctx: &TracePointContext, off: u16, which: u8) -> Option<()> {
    let sk: u64 = read(ctx, off)?;
    bump(sk, which)
}

/// Counts a retransmit or reset on `sk`'s open or latest closed flow.
#[inline(always)]
pub(crate) fn bump(sk: u64, which: u8) -> Option<()> {
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

/// `tcp:tcp_retransmit_skb`: successful retransmits only (since 6.13 it
/// also fires for failed ones, with their `err`).
#[tracepoint]
pub fn tcp_retrans(ctx: TracePointContext) -> u32 {
    if let Some(c) = TCP_CONFIG.get(0)
        && (c.retrans_err == OFF_NONE || read::<i32>(&ctx, c.retrans_err) == Some(0))
    {
        let _ = bump_tp(&ctx, c.retrans_skaddr, BUMP_RETRANS);
    }
    0
}

/// `tcp:tcp_send_reset` (skaddr is NULL for resets to packets with no socket).
#[tracepoint]
pub fn tcp_rst_sent(ctx: TracePointContext) -> u32 {
    if let Some(c) = TCP_CONFIG.get(0) {
        let _ = bump_tp(&ctx, c.send_reset_skaddr, BUMP_RST_SENT);
    }
    0
}

/// `tcp:tcp_receive_reset`.
#[tracepoint]
pub fn tcp_rst_recv(ctx: TracePointContext) -> u32 {
    if let Some(c) = TCP_CONFIG.get(0) {
        let _ = bump_tp(&ctx, c.recv_reset_skaddr, BUMP_RST_RECV);
    }
    0
}

/// `tcp:tcp_destroy_sock`: the socket is freed; its address may be reused next.
#[tracepoint]
pub fn tcp_destroy(ctx: TracePointContext) -> u32 {
    let _ = on_destroy_tp(&ctx);
    0
}

fn on_destroy_tp(ctx: &TracePointContext) -> Option<()> {
    let c = TCP_CONFIG.get(0)?;
    let sk: u64 = read(ctx, c.destroy_skaddr)?;
    on_destroy(sk)
}

/// `sk` is being freed; its address may be reused next. Its flow is final.
#[inline(always)]
pub(crate) fn on_destroy(sk: u64) -> Option<()> {
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
