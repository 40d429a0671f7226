//! Readers of kernel socket memory at the BTF offsets user space wrote in
//! `TCP_CONFIG` (there is no CO-RE in aya-ebpf): for the hooks that get a
//! `struct sock` pointer (kprobe, fentry/fexit, raw tracepoint) rather than
//! a tracepoint record.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use tracer_common::tcp::{AF_INET, AF_INET6, IPPROTO_TCP, OFF_NONE, STAT_READ_FAILED, TcpConfig};

use super::{
    maps::{TCP_CONFIG, stat},
    sources::{SrttSource, Tuple, TupleSource},
};

/// Reads a `T` at `sk + off`; `None` when the offset is unknown or the read faults.
#[inline(always)]
pub(super) fn sk_read<T>(sk: u64, off: u16) -> Option<T> {
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
pub(super) struct SockTuple<'a>(pub(super) u64, pub(super) &'a TcpConfig, pub(super) bool);

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

/// `tcp_sock.srtt_us >> 3` of a socket, read once it has a flow.
pub(super) struct SockSrtt(pub(super) u64);

impl SrttSource for SockSrtt {
    #[inline(always)]
    fn srtt_us(&self) -> Option<u64> {
        let c = TCP_CONFIG.get(0)?;
        let srtt: u32 = sk_read(self.0, c.tp_srtt_us)?;
        Some((srtt >> 3) as u64)
    }
}

/// The `struct sock` of a `struct socket` (`sock->sk`, BTF offset).
#[inline(always)]
pub(super) fn socket_sk(sock: u64) -> Option<u64> {
    let c = TCP_CONFIG.get(0)?;
    sk_read::<u64>(sock, c.socket_sk).filter(|&sk| sk != 0)
}

/// The destination of a `connect()`: the kernel's copy of the caller's
/// `sockaddr_in`/`sockaddr_in6` (in `__sys_connect`'s `sockaddr_storage`,
/// so reading 24 bytes stays inside it).
#[inline(always)]
pub(super) fn sockaddr_dest(uaddr: u64) -> Option<Tuple> {
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
