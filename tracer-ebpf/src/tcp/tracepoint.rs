//! Tracepoint entry points (`sock:*`, `tcp:*`): each reads its record at
//! the offsets user space parsed from the tracefs format files
//! (`TCP_CONFIG`) and calls the accounting in `flow.rs`.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{
    names,
    tcp::{AF_INET, AF_INET6, IPPROTO_TCP, MSG_PEEK, OFF_NONE, STAT_READ_FAILED, TcpConfig},
};

use super::{
    flow::{
        BUMP_RETRANS, BUMP_RST_RECV, BUMP_RST_SENT, bump, on_destroy, on_length, on_rtt_lazy,
        on_set_state,
    },
    maps::{TCP_CONFIG, stat},
    sources::{SrttSource, Tuple, TupleSource},
};

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

#[inline(always)]
fn bump_tp(ctx: &TracePointContext, off: u16, which: u8) -> Option<()> {
    let sk: u64 = read(ctx, off)?;
    bump(sk, which)
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

crate::names::check_names! {
    tcp_state => names::program::TCP_STATE,
    tcp_send_len => names::program::TCP_SEND_LEN,
    tcp_recv_len => names::program::TCP_RECV_LEN,
    tcp_rtt => names::program::TCP_RTT,
    tcp_retrans => names::program::TCP_RETRANS,
    tcp_rst_sent => names::program::TCP_RST_SENT,
    tcp_rst_recv => names::program::TCP_RST_RECV,
    tcp_destroy => names::program::TCP_DESTROY,
}
