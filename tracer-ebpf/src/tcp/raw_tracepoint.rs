//! Raw tracepoint entry points for TCP flows (BPF_PROG_TYPE_RAW_TRACEPOINT):
//! the same kernel events as the tracepoints in `tracepoint.rs`, but the program
//! gets the tracepoint's `TP_PROTO` arguments directly instead of a record
//! the kernel first assembles in the perf trace buffer. That assembly (and
//! the helper call per field read) is most of a classic tracepoint's cost on
//! hot paths such as every `recv()`. Socket fields come from the kernel's
//! BTF (`TCP_CONFIG`, as for kprobes), and every entry point calls the same
//! accounting as the other mechanisms.
//!
//! | raw tracepoint | `TP_PROTO` arguments used |
//! |---|---|
//! | `inet_sock_set_state` | `sk`, `oldstate`, `newstate` (all inet protocols: TCP checked) |
//! | `sock_send_length` / `sock_recv_length` | `sk`, `ret`, `flags` (all socket types: TCP checked when the socket has no flow) |
//! | `tcp_probe` | `sk` (srtt read from the socket) |
//! | `tcp_retransmit_skb` | `sk`, and `err` since 6.13 (`tcp_raw_retrans_err`) |
//! | `tcp_send_reset` / `tcp_receive_reset` / `tcp_destroy_sock` | `sk` (may be NULL for resets) |

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::raw_tracepoint, programs::RawTracePointContext,
};
use tracer_common::{
    names,
    tcp::{IPPROTO_TCP, MSG_PEEK},
};

use super::{
    flow::{BUMP_RETRANS, BUMP_RST_RECV, BUMP_RST_SENT, bump, on_destroy, on_length_gated},
    kernel_args::{srtt, state_change},
    maps::{TCP_CONFIG, traced},
    sock::sk_read,
    sources::NewFlowGate,
};

/// `inet_sock_set_state(sk, oldstate, newstate)`.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn tcp_raw_state(ctx: RawTracePointContext) -> i32 {
    let (sk, old, new): (u64, u64, u64) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    let _ = state_change(sk, Some(old as u8), new as i32, true);
    0
}

/// Whether `sk` is a TCP socket.
#[inline(always)]
fn is_tcp(sk: u64) -> bool {
    TCP_CONFIG
        .get(0)
        .and_then(|c| sk_read::<u16>(sk, c.sk_protocol))
        == Some(IPPROTO_TCP)
}

/// `sock_{send,recv}_length` fire for every socket type: a socket without a
/// flow must be a traced process's TCP socket to start one.
struct TracedTcp;

impl NewFlowGate for TracedTcp {
    #[inline(always)]
    fn allows(&self, sk: u64) -> bool {
        traced((bpf_get_current_pid_tgid() >> 32) as u32) && is_tcp(sk)
    }
}

#[inline(always)]
fn length(sk: u64, ret: i32, flags: i32, recv: bool) {
    if recv && flags & MSG_PEEK != 0 {
        return;
    }
    let _ = on_length_gated(sk, ret as i64, recv, &TracedTcp);
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn tcp_raw_send(ctx: RawTracePointContext) -> i32 {
    let (sk, ret, flags): (u64, u64, u64) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    length(sk, ret as i32, flags as i32, false);
    0
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn tcp_raw_recv(ctx: RawTracePointContext) -> i32 {
    let (sk, ret, flags): (u64, u64, u64) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    length(sk, ret as i32, flags as i32, true);
    0
}

/// `tcp_probe(sk, skb)`: fired at the start of `tcp_rcv_established`, like
/// the kprobe path's hook.
#[raw_tracepoint(tracepoint = "tcp_probe")]
pub fn tcp_raw_rtt(ctx: RawTracePointContext) -> i32 {
    let _ = srtt(ctx.arg(0));
    0
}

/// `tcp_retransmit_skb(sk, skb)` before 6.13: fired on success only.
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_raw_retrans(ctx: RawTracePointContext) -> i32 {
    let _ = bump(ctx.arg(0), BUMP_RETRANS);
    0
}

/// `tcp_retransmit_skb(sk, skb, err)` since 6.13: fired for failures too.
/// Attaching it where the event has two arguments fails (the program reads
/// a third), and the two-argument program is used instead.
#[raw_tracepoint(tracepoint = "tcp_retransmit_skb")]
pub fn tcp_raw_retrans_err(ctx: RawTracePointContext) -> i32 {
    let err: u64 = ctx.arg(2);
    if err as i32 == 0 {
        let _ = bump(ctx.arg(0), BUMP_RETRANS);
    }
    0
}

#[raw_tracepoint(tracepoint = "tcp_send_reset")]
pub fn tcp_raw_rst_sent(ctx: RawTracePointContext) -> i32 {
    let _ = bump(ctx.arg(0), BUMP_RST_SENT);
    0
}

#[raw_tracepoint(tracepoint = "tcp_receive_reset")]
pub fn tcp_raw_rst_recv(ctx: RawTracePointContext) -> i32 {
    let _ = bump(ctx.arg(0), BUMP_RST_RECV);
    0
}

#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn tcp_raw_destroy(ctx: RawTracePointContext) -> i32 {
    let _ = on_destroy(ctx.arg(0));
    0
}

crate::names::check_names! {
    tcp_raw_state => names::program::TCP_RAW_STATE,
    tcp_raw_send => names::program::TCP_RAW_SEND,
    tcp_raw_recv => names::program::TCP_RAW_RECV,
    tcp_raw_rtt => names::program::TCP_RAW_RTT,
    tcp_raw_retrans => names::program::TCP_RAW_RETRANS,
    tcp_raw_retrans_err => names::program::TCP_RAW_RETRANS_ERR,
    tcp_raw_rst_sent => names::program::TCP_RAW_RST_SENT,
    tcp_raw_rst_recv => names::program::TCP_RAW_RST_RECV,
    tcp_raw_destroy => names::program::TCP_RAW_DESTROY,
}
