//! What the hooks on the kernel's own arguments share (kprobe, fentry/fexit
//! and, for state changes and RTTs, raw tracepoints): the socket-based entries
//! into the accounting, `tcp_recvmsg`'s flags position, and the retransmit
//! nesting map.
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
//! | `inet_csk_accept(..)` → new sock | accept-queue wait | `syscalls:sys_exit_accept{4,}` + fd walk (`accept.rs`) |
//! | `tcp_v4_connect`/`tcp_v6_connect(sk, uaddr, len)` → err | `connect()` refused before SYN_SENT (no route...) | none |

use aya_ebpf::{macros::map, maps::LruHashMap};

use super::{
    flow::{on_rtt_lazy, on_set_state},
    maps::TCP_CONFIG,
    sock::{SockSrtt, SockTuple, sk_read},
};

/// A state change to `new`; `old` is given by raw tracepoints, read from
/// the socket at the entry of `tcp_set_state`/`inet_sk_set_state` (the
/// socket still holds it there).
#[inline(always)]
pub(super) fn state_change(sk: u64, old: Option<u8>, new: i32, check_proto: bool) -> Option<()> {
    let c = TCP_CONFIG.get(0)?;
    let old: u8 = match old {
        Some(o) => o,
        None => sk_read(sk, c.sk_state)?,
    };
    on_set_state(sk, old, new as u8, &SockTuple(sk, c, check_proto))
}

/// The socket's smoothed RTT, for its open flow.
#[inline(always)]
pub(super) fn srtt(sk: u64) -> Option<()> {
    on_rtt_lazy(sk, &SockSrtt(sk))
}

/// Picks `tcp_recvmsg`'s flags between its two possible positions (3 since
/// Linux 5.19, 4 before). Both candidates are read at constant offsets: the
/// verifier refuses a context read at a variable offset.
#[inline(always)]
pub(super) fn pick_flags(a3: u64, a4: u64) -> Option<u64> {
    match TCP_CONFIG.get(0)?.recvmsg_flags_arg {
        3 => Some(a3),
        4 => Some(a4),
        _ => None,
    }
}

// Retransmits: the tracepoint fires inside `__tcp_retransmit_skb`, which
// `tcp_retransmit_skb` (RTO and fast retransmits) wraps and tail loss probes
// call directly. Compilers inline `__tcp_retransmit_skb` into its wrapper on
// some kernels (Debian's 6.1), so neither function alone sees every
// retransmit. Both are hooked; a call of the inner one nested in the outer
// one (same skb, marked in `TCP_RETRANS_OUTER`) is left to the outer one.

/// skbs being retransmitted by `tcp_retransmit_skb` right now.
#[map]
pub(super) static TCP_RETRANS_OUTER: LruHashMap<u64, u8> = LruHashMap::with_max_entries(1024, 0);

#[inline(always)]
pub(super) fn nested_in_outer(skb: u64) -> bool {
    // SAFETY: read-only lookup of a plain value.
    unsafe { TCP_RETRANS_OUTER.get(skb) }.is_some()
}
