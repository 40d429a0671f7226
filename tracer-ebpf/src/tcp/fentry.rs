//! fentry and fexit entry points (BPF trampolines): the kprobe path's
//! hooks (`kprobe.rs`), cheaper, and with the arguments still at hand on
//! exit, so no per-thread map is needed. `kernel_args.rs` has the table of
//! probed functions.

use aya_ebpf::{
    EbpfContext,
    helpers::bpf_get_current_pid_tgid,
    macros::{fentry, fexit},
    programs::{FEntryContext, FExitContext},
};
use tracer_common::{names, tcp::MSG_PEEK};

use super::{
    flow::{BUMP_RETRANS, BUMP_RST_RECV, bump, on_accept, on_connect_ret, on_destroy, on_length},
    kernel_args::{TCP_RETRANS_OUTER, nested_in_outer, pick_flags, srtt, state_change},
    maps::{has_flow, traced},
    sock::{sockaddr_dest, socket_sk},
};

/// Argument `n` of an fentry/fexit context, read volatile so that LLVM does
/// not merge two reads into one at a computed offset.
#[inline(always)]
fn tracing_arg(ctx: &FExitContext, n: usize) -> u64 {
    // SAFETY: the context is an array of the traced function's u64 arguments;
    // the verifier checks `n` against the function's BTF prototype.
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u64).add(n)) }
}

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

/// fexit on `tcp_sendpage`: see [`super::kprobe::tcp_kp_sendpage`].
#[fexit(function = "tcp_sendpage")]
pub fn tcp_fx_sendpage(ctx: FExitContext) -> u32 {
    if let Ok(ret) = ctx.ret::<i64>() {
        let _ = on_length(ctx.arg::<u64>(0), ret as i32 as i64, false);
    }
    0
}

/// fexit on `tcp_splice_read`: see [`super::kprobe::tcp_kp_splice_read`].
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

crate::names::check_names! {
    tcp_fe_state => names::program::TCP_FE_STATE,
    tcp_fe_inet_state => names::program::TCP_FE_INET_STATE,
    tcp_fx_sendmsg => names::program::TCP_FX_SENDMSG,
    tcp_fx_sendpage => names::program::TCP_FX_SENDPAGE,
    tcp_fx_splice_read => names::program::TCP_FX_SPLICE_READ,
    tcp_fx_recvmsg => names::program::TCP_FX_RECVMSG,
    tcp_fe_rtt => names::program::TCP_FE_RTT,
    tcp_fe_retrans => names::program::TCP_FE_RETRANS,
    tcp_fx_retrans => names::program::TCP_FX_RETRANS,
    tcp_fx_retrans_inner => names::program::TCP_FX_RETRANS_INNER,
    tcp_fe_reset => names::program::TCP_FE_RESET,
    tcp_fe_destroy => names::program::TCP_FE_DESTROY,
    tcp_fx_accept => names::program::TCP_FX_ACCEPT,
    tcp_fx_connect4 => names::program::TCP_FX_CONNECT4,
    tcp_fx_connect6 => names::program::TCP_FX_CONNECT6,
}
