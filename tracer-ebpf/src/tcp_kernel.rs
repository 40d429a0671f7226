//! kprobe and fentry/fexit entry points for TCP flows, for kernels without
//! the 6.3+ `sock_{send,recv}_length` tracepoints (or where a user prefers
//! them). They extract (socket, values) from the probed function's arguments
//! and call the same accounting as the tracepoints (`tcp.rs`), so every path
//! counts the same. `struct sock` field offsets come from the kernel's BTF,
//! via `TCP_CONFIG`; there is no CO-RE in aya-ebpf.
//!
//! | function | gives | tracepoint it replaces |
//! |---|---|---|
//! | `tcp_set_state(sk, state)` | state changes of TCP sockets | `sock:inet_sock_set_state` |
//! | `inet_sk_set_state(sk, state)` | a listener's child entering SYN_RECV (not via `tcp_set_state`) | same |
//! | `tcp_sendmsg(sk, msg, size)` → bytes | bytes sent | `sock:sock_send_length` |
//! | `tcp_recvmsg(sk, msg, len, flags, ..)` → bytes | bytes received, `MSG_PEEK` skipped | `sock:sock_recv_length` |
//! | `tcp_rcv_established(sk, skb)` | `srtt_us >> 3` | `tcp:tcp_probe` |
//! | `tcp_retransmit_skb` + `__tcp_retransmit_skb(sk, skb, segs)` → 0 | successful retransmits, tail loss probes included | `tcp:tcp_retransmit_skb` (fired inside the inner one) |
//! | `tcp_reset(sk, skb)` | resets received | `tcp:tcp_receive_reset` |
//! | `inet_csk_accept(..)` → new sock | accept-queue wait | `syscalls:sys_exit_accept{4,}` + fd walk (`tcp_accept.rs`) |
//! | `tcp_v4_connect`/`tcp_v6_connect(sk, uaddr, len)` → err | `connect()` refused before SYN_SENT (no route...) | none |

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{fentry, fexit, kprobe, kretprobe, map},
    maps::LruHashMap,
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use tracer_common::tcp::{
    AF_INET, AF_INET6, IPPROTO_TCP, MSG_PEEK, OFF_NONE, STAT_READ_FAILED, TcpConfig,
};

use crate::tcp::{
    BUMP_RETRANS, BUMP_RST_RECV, SrttSource, TCP_CONFIG, Tuple, TupleSource, bump, has_flow,
    on_accept, on_connect_ret, on_destroy, on_length, on_rtt_lazy, on_set_state, stat, traced,
    wanted,
};

/// `tcp_sendmsg` socket per thread, from the kprobe to the kretprobe.
#[map]
static TCP_SEND_ARGS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// `tcp_recvmsg` (socket, flags) per thread, from the kprobe to the kretprobe.
#[map]
static TCP_RECV_ARGS: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(4096, 0);

/// Reads a `T` at `sk + off`; `None` when the offset is unknown or the read faults.
#[inline(always)]
pub(crate) fn sk_read<T>(sk: u64, off: u16) -> Option<T> {
    if off == OFF_NONE || sk == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address.
    match unsafe { bpf_probe_read_kernel((sk + off as u64) as *const T) } {
        Ok(v) => Some(v),
        Err(_) => {
            stat(STAT_READ_FAILED);
            None
        }
    }
}

/// The head of `struct sock_common`, in its layout since Linux 2.6:
/// `skc_daddr`, `skc_rcv_saddr`, `skc_hash`, `skc_dport`, `skc_num`,
/// `skc_family` (and two bytes of what follows). Read in one probe read
/// where the BTF offsets match it, instead of five.
#[repr(C)]
#[derive(Clone, Copy)]
struct SkcHead {
    daddr: [u8; 4],
    rcv_saddr: [u8; 4],
    hash: u32,
    dport: u16,
    num: u16,
    family: u16,
    _next: u16,
}

/// Whether the BTF offsets are those of [`SkcHead`] (and the IPv6 addresses
/// adjacent, daddr first).
#[inline(always)]
fn head_layout(c: &TcpConfig) -> bool {
    let d = c.sk_daddr;
    d != OFF_NONE
        && c.sk_rcv_saddr == d + 4
        && c.sk_dport == d + 12
        && c.sk_num == d + 14
        && c.sk_family == d + 16
        && c.sk_v6_daddr != OFF_NONE
        && c.sk_v6_rcv_saddr == c.sk_v6_daddr + 16
}

/// The socket's addresses and ports, converted to what the tracepoint shows
/// (ports in host order, addresses as stored).
#[inline(always)]
fn sk_tuple(sk: u64, c: &TcpConfig) -> Option<Tuple> {
    if head_layout(c) {
        let h: SkcHead = sk_read(sk, c.sk_daddr)?;
        let mut t = Tuple {
            sport: h.num,
            dport: u16::from_be(h.dport),
            family: h.family,
            ..Default::default()
        };
        if t.family == AF_INET {
            t.saddr[..4].copy_from_slice(&h.rcv_saddr);
            t.daddr[..4].copy_from_slice(&h.daddr);
        } else if t.family == AF_INET6 {
            let a: [u8; 32] = sk_read(sk, c.sk_v6_daddr)?;
            t.daddr.copy_from_slice(&a[..16]);
            t.saddr.copy_from_slice(&a[16..]);
        } else {
            return None;
        }
        return Some(t);
    }
    let mut t = Tuple {
        sport: sk_read::<u16>(sk, c.sk_num)?,
        dport: u16::from_be(sk_read::<u16>(sk, c.sk_dport)?),
        family: sk_read(sk, c.sk_family)?,
        ..Default::default()
    };
    if t.family == AF_INET {
        let s: [u8; 4] = sk_read(sk, c.sk_rcv_saddr)?;
        let d: [u8; 4] = sk_read(sk, c.sk_daddr)?;
        t.saddr[..4].copy_from_slice(&s);
        t.daddr[..4].copy_from_slice(&d);
    } else if t.family == AF_INET6 {
        t.saddr = sk_read(sk, c.sk_v6_rcv_saddr)?;
        t.daddr = sk_read(sk, c.sk_v6_daddr)?;
    } else {
        return None;
    }
    Some(t)
}

/// A socket's addresses, read from the socket when a flow needs them; its
/// protocol checked when the hook also sees other protocols.
struct SockTuple<'a>(u64, &'a TcpConfig, bool);

impl TupleSource for SockTuple<'_> {
    #[inline(always)]
    fn tuple(&self) -> Option<Tuple> {
        sk_tuple(self.0, self.1)
    }

    #[inline(always)]
    fn is_tcp(&self) -> bool {
        !self.2 || sk_read::<u16>(self.0, self.1.sk_protocol) == Some(IPPROTO_TCP)
    }
}

/// A state change to `new`; `old` is given by raw tracepoints, read from
/// the socket at the entry of `tcp_set_state`/`inet_sk_set_state` (the
/// socket still holds it there).
#[inline(always)]
pub(crate) fn state_change(sk: u64, old: Option<u8>, new: i32, check_proto: bool) -> Option<()> {
    let c = TCP_CONFIG.get(0)?;
    let old: u8 = match old {
        Some(o) => o,
        None => sk_read(sk, c.sk_state)?,
    };
    on_set_state(sk, old, new as u8, &SockTuple(sk, c, check_proto))
}

/// `tcp_sock.srtt_us >> 3` of a socket, read once it has a flow.
pub(crate) struct SockSrtt(pub(crate) u64);

impl SrttSource for SockSrtt {
    #[inline(always)]
    fn srtt_us(&self) -> Option<u64> {
        let c = TCP_CONFIG.get(0)?;
        let srtt: u32 = sk_read(self.0, c.tp_srtt_us)?;
        Some((srtt >> 3) as u64)
    }
}

/// The socket's smoothed RTT, for its open flow.
#[inline(always)]
pub(crate) fn srtt(sk: u64) -> Option<()> {
    on_rtt_lazy(sk, &SockSrtt(sk))
}

/// Picks `tcp_recvmsg`'s flags between its two possible positions (3 since
/// Linux 5.19, 4 before). Both candidates are read at constant offsets: the
/// verifier refuses a context read at a variable offset.
#[inline(always)]
fn pick_flags(a3: u64, a4: u64) -> Option<u64> {
    match TCP_CONFIG.get(0)?.recvmsg_flags_arg {
        3 => Some(a3),
        4 => Some(a4),
        _ => None,
    }
}

/// Argument `n` of an fentry/fexit context, read volatile so that LLVM does
/// not merge two reads into one at a computed offset.
#[inline(always)]
fn tracing_arg(ctx: &FExitContext, n: usize) -> u64 {
    // SAFETY: the context is an array of the traced function's u64 arguments;
    // the verifier checks `n` against the function's BTF prototype.
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u64).add(n)) }
}

// ---- kprobes ----

/// kprobe on `tcp_set_state`.
#[kprobe]
pub fn tcp_kp_state(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(new)) = (ctx.arg::<u64>(0), ctx.arg::<i32>(1)) {
        let _ = state_change(sk, None, new, false);
    }
    0
}

/// kprobe on `inet_sk_set_state` (also used by other inet protocols).
#[kprobe]
pub fn tcp_kp_inet_state(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(new)) = (ctx.arg::<u64>(0), ctx.arg::<i32>(1)) {
        let _ = state_change(sk, None, new, true);
    }
    0
}

/// Entry of a send function whose first argument is the socket: remember
/// it for the return probe.
#[inline(always)]
fn send_entry(ctx: &ProbeContext) {
    if let Some(sk) = ctx.arg::<u64>(0)
        && wanted(sk)
    {
        let _ = TCP_SEND_ARGS.insert(bpf_get_current_pid_tgid(), sk, 0);
    }
}

/// Return of a send function returning `int` bytes sent.
#[inline(always)]
fn send_return(ctx: &RetProbeContext) {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: plain value copied out before the removal.
    if let Some(sk) = unsafe { TCP_SEND_ARGS.get(id) }.copied() {
        let _ = TCP_SEND_ARGS.remove(id);
        // `int` return: only the low 32 bits of RAX are defined.
        let ret: i64 = ctx.ret();
        let _ = on_length(sk, ret as i32 as i64, false);
    }
}

/// kprobe on `tcp_sendmsg`: remember the socket for the return probe.
#[kprobe]
pub fn tcp_kp_sendmsg(ctx: ProbeContext) -> u32 {
    send_entry(&ctx);
    0
}

/// kretprobe on `tcp_sendmsg`: bytes sent.
#[kretprobe]
pub fn tcp_krp_sendmsg(ctx: RetProbeContext) -> u32 {
    send_return(&ctx);
    0
}

/// kprobe on `tcp_sendpage(sk, page, offset, size, flags)` (Linux < 6.5):
/// `sendfile()` and `splice()` to a TCP socket (Go's `io.Copy` from a file
/// to a `TCPConn`) send without `tcp_sendmsg` there.
#[kprobe]
pub fn tcp_kp_sendpage(ctx: ProbeContext) -> u32 {
    send_entry(&ctx);
    0
}

/// kretprobe on `tcp_sendpage`: bytes sent.
#[kretprobe]
pub fn tcp_krp_sendpage(ctx: RetProbeContext) -> u32 {
    send_return(&ctx);
    0
}

/// kprobe on `tcp_recvmsg`: remember the socket and flags.
#[kprobe]
pub fn tcp_kp_recvmsg(ctx: ProbeContext) -> u32 {
    let (a3, a4) = (
        ctx.arg::<u64>(3).unwrap_or(0),
        ctx.arg::<u64>(4).unwrap_or(0),
    );
    if let (Some(sk), Some(flags)) = (ctx.arg::<u64>(0), pick_flags(a3, a4))
        && wanted(sk)
    {
        let _ = TCP_RECV_ARGS.insert(bpf_get_current_pid_tgid(), [sk, flags], 0);
    }
    0
}

/// kretprobe on `tcp_recvmsg`: bytes received, peeks skipped.
#[kretprobe]
pub fn tcp_krp_recvmsg(ctx: RetProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: plain value copied out before the removal.
    if let Some([sk, flags]) = unsafe { TCP_RECV_ARGS.get(id) }.copied() {
        let _ = TCP_RECV_ARGS.remove(id);
        if (flags as i32) & MSG_PEEK == 0 {
            let ret: i64 = ctx.ret();
            let _ = on_length(sk, ret as i32 as i64, true);
        }
    }
    0
}

/// The `struct sock` of a `struct socket` (`sock->sk`, BTF offset).
#[inline(always)]
fn socket_sk(sock: u64) -> Option<u64> {
    let c = TCP_CONFIG.get(0)?;
    sk_read::<u64>(sock, c.socket_sk).filter(|&sk| sk != 0)
}

/// kprobe on `tcp_splice_read(sock, ppos, pipe, len, flags)`: `splice()`
/// from a TCP socket reads without `tcp_recvmsg` (Go's `io.Copy` from a
/// `TCPConn` to a file or to another `TCPConn`). Remember the socket.
#[kprobe]
pub fn tcp_kp_splice_read(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0).and_then(socket_sk)
        && wanted(sk)
    {
        let _ = TCP_RECV_ARGS.insert(bpf_get_current_pid_tgid(), [sk, 0], 0);
    }
    0
}

/// kretprobe on `tcp_splice_read`: bytes spliced out of the socket, one
/// receive call.
#[kretprobe]
pub fn tcp_krp_splice_read(ctx: RetProbeContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: plain value copied out before the removal.
    if let Some([sk, _]) = unsafe { TCP_RECV_ARGS.get(id) }.copied() {
        let _ = TCP_RECV_ARGS.remove(id);
        // `ssize_t` return.
        let ret: i64 = ctx.ret();
        let _ = on_length(sk, ret, true);
    }
    0
}

/// kprobe on `tcp_rcv_established`: the RTT as `tcp:tcp_probe` shows it
/// (that tracepoint fires at this function's start).
#[kprobe]
pub fn tcp_kp_rtt(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        let _ = srtt(sk);
    }
    0
}

// Retransmits: the tracepoint fires inside `__tcp_retransmit_skb`, which
// `tcp_retransmit_skb` (RTO and fast retransmits) wraps and tail loss probes
// call directly. Compilers inline `__tcp_retransmit_skb` into its wrapper on
// some kernels (Debian's 6.1), so neither function alone sees every
// retransmit. Both are hooked; a call of the inner one nested in the outer
// one (same skb, marked in `TCP_RETRANS_OUTER`) is left to the outer one.

/// skbs being retransmitted by `tcp_retransmit_skb` right now.
#[map]
static TCP_RETRANS_OUTER: LruHashMap<u64, u8> = LruHashMap::with_max_entries(1024, 0);

/// Distinguishes retransmit entries from send entries of the same thread in
/// `TCP_SEND_ARGS`/`TCP_RECV_ARGS` (a retransmit can run in softirq on top of a send).
const RETRANS_TAG: u64 = 1 << 63;
const RETRANS_INNER_TAG: u64 = 1 << 62;

#[inline(always)]
fn nested_in_outer(skb: u64) -> bool {
    // SAFETY: read-only lookup of a plain value.
    unsafe { TCP_RETRANS_OUTER.get(skb) }.is_some()
}

/// kprobe on `tcp_retransmit_skb`: mark the skb, remember (socket, skb).
#[kprobe]
pub fn tcp_kp_retrans(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(skb)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1))
        && has_flow(sk)
    {
        let _ = TCP_RETRANS_OUTER.insert(skb, 1, 0);
        let _ = TCP_RECV_ARGS.insert(bpf_get_current_pid_tgid() ^ RETRANS_TAG, [sk, skb], 0);
    }
    0
}

/// A retransmit function returned `ret` for the (socket, skb) its entry
/// probe remembered under `tag`: counted when it succeeded, as the
/// tracepoint does (it fires only when the inner call returned 0).
#[inline(always)]
fn retrans_returned(tag: u64, ret: i32, outer: bool) {
    let id = bpf_get_current_pid_tgid() ^ tag;
    // SAFETY: plain value copied out before the removal.
    if let Some([sk, skb]) = unsafe { TCP_RECV_ARGS.get(id) }.copied() {
        let _ = TCP_RECV_ARGS.remove(id);
        if outer {
            let _ = TCP_RETRANS_OUTER.remove(skb);
        }
        if ret == 0 {
            let _ = bump(sk, BUMP_RETRANS);
        }
    }
}

/// kretprobe on `tcp_retransmit_skb`.
#[kretprobe]
pub fn tcp_krp_retrans(ctx: RetProbeContext) -> u32 {
    retrans_returned(RETRANS_TAG, ctx.ret(), true);
    0
}

/// kprobe on `__tcp_retransmit_skb`: only calls not made by `tcp_retransmit_skb`.
#[kprobe]
pub fn tcp_kp_retrans_inner(ctx: ProbeContext) -> u32 {
    if let (Some(sk), Some(skb)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1))
        && !nested_in_outer(skb)
        && has_flow(sk)
    {
        let _ = TCP_RECV_ARGS.insert(bpf_get_current_pid_tgid() ^ RETRANS_INNER_TAG, [sk, skb], 0);
    }
    0
}

/// kretprobe on `__tcp_retransmit_skb`.
#[kretprobe]
pub fn tcp_krp_retrans_inner(ctx: RetProbeContext) -> u32 {
    retrans_returned(RETRANS_INNER_TAG, ctx.ret(), false);
    0
}

/// kprobe on `tcp_reset`: a reset arrived.
#[kprobe]
pub fn tcp_kp_reset(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        let _ = bump(sk, BUMP_RST_RECV);
    }
    0
}

/// kprobe on `tcp_v4_destroy_sock` (IPv6 sockets too: `tcp_v6_destroy_sock`
/// calls it, and is it since 6.3): the socket is being freed. Where the
/// `tcp:tcp_destroy_sock` tracepoint fires, at its start.
#[kprobe]
pub fn tcp_kp_destroy(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        let _ = on_destroy(sk);
    }
    0
}

/// kretprobe on `inet_csk_accept`: the accepted child socket, in the
/// accepting task (the arguments changed in 6.10; only the return is used).
#[kretprobe]
pub fn tcp_krp_accept(ctx: RetProbeContext) -> u32 {
    if traced((bpf_get_current_pid_tgid() >> 32) as u32) {
        let sk: u64 = ctx.ret();
        let _ = on_accept(sk);
    }
    0
}

/// `connect()` arguments per thread, from the kprobe to the kretprobe on
/// `tcp_v4_connect`/`tcp_v6_connect`: (socket, destination sockaddr).
#[map]
static TCP_CONNECT_ARGS: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(1024, 0);

/// The destination of a `connect()`: the kernel's copy of the caller's
/// `sockaddr_in`/`sockaddr_in6` (in `__sys_connect`'s `sockaddr_storage`,
/// so reading 24 bytes stays inside it).
#[inline(always)]
fn sockaddr_dest(uaddr: u64) -> Option<Tuple> {
    if uaddr == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address.
    let raw: [u8; 24] = unsafe { bpf_probe_read_kernel(uaddr as *const [u8; 24]) }.ok()?;
    let mut t = Tuple {
        family: u16::from_le_bytes([raw[0], raw[1]]),
        dport: u16::from_be_bytes([raw[2], raw[3]]),
        ..Default::default()
    };
    if t.family == AF_INET {
        t.daddr[..4].copy_from_slice(&raw[4..8]);
    } else if t.family == AF_INET6 {
        t.daddr.copy_from_slice(&raw[8..24]);
    } else {
        return None;
    }
    Some(t)
}

#[inline(always)]
fn connect_entry(ctx: &ProbeContext) {
    if let (Some(sk), Some(uaddr)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1))
        && traced((bpf_get_current_pid_tgid() >> 32) as u32)
    {
        let _ = TCP_CONNECT_ARGS.insert(bpf_get_current_pid_tgid(), [sk, uaddr], 0);
    }
}

#[inline(always)]
fn connect_return(ctx: &RetProbeContext) {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: plain value copied out before the removal.
    if let Some([sk, uaddr]) = unsafe { TCP_CONNECT_ARGS.get(id) }.copied() {
        let _ = TCP_CONNECT_ARGS.remove(id);
        let ret: i64 = ctx.ret();
        if (ret as i32) < 0 {
            let _ = on_connect_ret(sk, ret as i32, sockaddr_dest(uaddr));
        }
    }
}

/// kprobe on `tcp_v4_connect`.
#[kprobe]
pub fn tcp_kp_connect4(ctx: ProbeContext) -> u32 {
    connect_entry(&ctx);
    0
}

/// kretprobe on `tcp_v4_connect`.
#[kretprobe]
pub fn tcp_krp_connect4(ctx: RetProbeContext) -> u32 {
    connect_return(&ctx);
    0
}

/// kprobe on `tcp_v6_connect`.
#[kprobe]
pub fn tcp_kp_connect6(ctx: ProbeContext) -> u32 {
    connect_entry(&ctx);
    0
}

/// kretprobe on `tcp_v6_connect`.
#[kretprobe]
pub fn tcp_krp_connect6(ctx: RetProbeContext) -> u32 {
    connect_return(&ctx);
    0
}

// ---- fentry / fexit (BPF trampolines) ----

#[fentry(function = "tcp_set_state")]
pub fn tcp_fe_state(ctx: FEntryContext) -> u32 {
    let _ = state_change(ctx.arg::<u64>(0), None, ctx.arg::<i32>(1), false);
    0
}

#[fentry(function = "inet_sk_set_state")]
pub fn tcp_fe_inet_state(ctx: FEntryContext) -> u32 {
    let _ = state_change(ctx.arg::<u64>(0), None, ctx.arg::<i32>(1), true);
    0
}

#[fexit(function = "tcp_sendmsg")]
pub fn tcp_fx_sendmsg(ctx: FExitContext) -> u32 {
    if let Ok(ret) = ctx.ret::<i64>() {
        let _ = on_length(ctx.arg::<u64>(0), ret as i32 as i64, false);
    }
    0
}

/// fexit on `tcp_sendpage`: see [`tcp_kp_sendpage`].
#[fexit(function = "tcp_sendpage")]
pub fn tcp_fx_sendpage(ctx: FExitContext) -> u32 {
    if let Ok(ret) = ctx.ret::<i64>() {
        let _ = on_length(ctx.arg::<u64>(0), ret as i32 as i64, false);
    }
    0
}

/// fexit on `tcp_splice_read`: see [`tcp_kp_splice_read`].
#[fexit(function = "tcp_splice_read")]
pub fn tcp_fx_splice_read(ctx: FExitContext) -> u32 {
    if let Ok(ret) = ctx.ret::<i64>()
        && let Some(sk) = socket_sk(ctx.arg::<u64>(0))
    {
        let _ = on_length(sk, ret, true);
    }
    0
}

#[fexit(function = "tcp_recvmsg")]
pub fn tcp_fx_recvmsg(ctx: FExitContext) -> u32 {
    let Some(flags) = pick_flags(tracing_arg(&ctx, 3), tracing_arg(&ctx, 4)) else {
        return 0;
    };
    if (flags as i32) & MSG_PEEK != 0 {
        return 0;
    }
    if let Ok(ret) = ctx.ret::<i64>() {
        let _ = on_length(ctx.arg::<u64>(0), ret as i32 as i64, true);
    }
    0
}

#[fentry(function = "tcp_rcv_established")]
pub fn tcp_fe_rtt(ctx: FEntryContext) -> u32 {
    let _ = srtt(ctx.arg::<u64>(0));
    0
}

#[fentry(function = "tcp_retransmit_skb")]
pub fn tcp_fe_retrans(ctx: FEntryContext) -> u32 {
    if has_flow(ctx.arg::<u64>(0)) {
        let _ = TCP_RETRANS_OUTER.insert(ctx.arg::<u64>(1), 1, 0);
    }
    0
}

#[fexit(function = "tcp_retransmit_skb")]
pub fn tcp_fx_retrans(ctx: FExitContext) -> u32 {
    let _ = TCP_RETRANS_OUTER.remove(ctx.arg::<u64>(1));
    if let Ok(ret) = ctx.ret::<i64>()
        && ret as i32 == 0
    {
        let _ = bump(ctx.arg::<u64>(0), BUMP_RETRANS);
    }
    0
}

#[fexit(function = "__tcp_retransmit_skb")]
pub fn tcp_fx_retrans_inner(ctx: FExitContext) -> u32 {
    if nested_in_outer(ctx.arg::<u64>(1)) {
        return 0;
    }
    if let Ok(ret) = ctx.ret::<i64>()
        && ret as i32 == 0
    {
        let _ = bump(ctx.arg::<u64>(0), BUMP_RETRANS);
    }
    0
}

#[fentry(function = "tcp_reset")]
pub fn tcp_fe_reset(ctx: FEntryContext) -> u32 {
    let _ = bump(ctx.arg::<u64>(0), BUMP_RST_RECV);
    0
}

#[fentry(function = "tcp_v4_destroy_sock")]
pub fn tcp_fe_destroy(ctx: FEntryContext) -> u32 {
    let _ = on_destroy(ctx.arg::<u64>(0));
    0
}

/// fexit on `inet_csk_accept`: `ret` comes from `bpf_get_func_ret`, so the
/// prototype (4 arguments before 6.10, 2 since) does not matter.
#[fexit(function = "inet_csk_accept")]
pub fn tcp_fx_accept(ctx: FExitContext) -> u32 {
    if traced((bpf_get_current_pid_tgid() >> 32) as u32)
        && let Ok(sk) = ctx.ret::<u64>()
    {
        let _ = on_accept(sk);
    }
    0
}

#[inline(always)]
fn connect_exit(ctx: &FExitContext) {
    if let Ok(ret) = ctx.ret::<i64>()
        && (ret as i32) < 0
    {
        let _ = on_connect_ret(
            ctx.arg::<u64>(0),
            ret as i32,
            sockaddr_dest(ctx.arg::<u64>(1)),
        );
    }
}

/// fexit on `tcp_v4_connect`.
#[fexit(function = "tcp_v4_connect")]
pub fn tcp_fx_connect4(ctx: FExitContext) -> u32 {
    connect_exit(&ctx);
    0
}

/// fexit on `tcp_v6_connect`.
#[fexit(function = "tcp_v6_connect")]
pub fn tcp_fx_connect6(ctx: FExitContext) -> u32 {
    connect_exit(&ctx);
    0
}
