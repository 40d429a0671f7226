//! kprobe and kretprobe entry points, for kernels without the 6.3+
//! `sock_{send,recv}_length` tracepoints (or where a user prefers them).
//! Arguments an exit needs are kept per thread from the entry probe to the
//! return probe; `kernel_args.rs` has the table of probed functions.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{kprobe, kretprobe, map},
    maps::LruHashMap,
    programs::{ProbeContext, RetProbeContext},
};
use tracer_common::{names, tcp::MSG_PEEK};

use super::{
    flow::{
        BUMP_RETRANS, BUMP_RST_RECV, bump, on_accept, on_connect_ret, on_destroy, on_length, wanted,
    },
    kernel_args::{TCP_RETRANS_OUTER, nested_in_outer, pick_flags, srtt, state_change},
    maps::{has_flow, traced},
    sock::{sockaddr_dest, socket_sk},
};

/// `tcp_sendmsg` socket per thread, from the kprobe to the kretprobe.
#[map]
static TCP_SEND_ARGS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(4096, 0);

/// `tcp_recvmsg` (socket, flags) per thread, from the kprobe to the kretprobe.
#[map]
static TCP_RECV_ARGS: LruHashMap<u64, [u64; 2]> = LruHashMap::with_max_entries(4096, 0);

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

/// Distinguishes retransmit entries from send entries of the same thread in
/// `TCP_SEND_ARGS`/`TCP_RECV_ARGS` (a retransmit can run in softirq on top of a send).
const RETRANS_TAG: u64 = 1 << 63;

const RETRANS_INNER_TAG: u64 = 1 << 62;

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

crate::names::check_names! {
    tcp_kp_state => names::program::TCP_KP_STATE,
    tcp_kp_inet_state => names::program::TCP_KP_INET_STATE,
    tcp_kp_sendmsg => names::program::TCP_KP_SENDMSG,
    tcp_krp_sendmsg => names::program::TCP_KRP_SENDMSG,
    tcp_kp_sendpage => names::program::TCP_KP_SENDPAGE,
    tcp_krp_sendpage => names::program::TCP_KRP_SENDPAGE,
    tcp_kp_recvmsg => names::program::TCP_KP_RECVMSG,
    tcp_krp_recvmsg => names::program::TCP_KRP_RECVMSG,
    tcp_kp_splice_read => names::program::TCP_KP_SPLICE_READ,
    tcp_krp_splice_read => names::program::TCP_KRP_SPLICE_READ,
    tcp_kp_rtt => names::program::TCP_KP_RTT,
    tcp_kp_retrans => names::program::TCP_KP_RETRANS,
    tcp_krp_retrans => names::program::TCP_KRP_RETRANS,
    tcp_kp_retrans_inner => names::program::TCP_KP_RETRANS_INNER,
    tcp_krp_retrans_inner => names::program::TCP_KRP_RETRANS_INNER,
    tcp_kp_reset => names::program::TCP_KP_RESET,
    tcp_kp_destroy => names::program::TCP_KP_DESTROY,
    tcp_krp_accept => names::program::TCP_KRP_ACCEPT,
    tcp_kp_connect4 => names::program::TCP_KP_CONNECT4,
    tcp_krp_connect4 => names::program::TCP_KRP_CONNECT4,
    tcp_kp_connect6 => names::program::TCP_KP_CONNECT6,
    tcp_krp_connect6 => names::program::TCP_KRP_CONNECT6,
}
