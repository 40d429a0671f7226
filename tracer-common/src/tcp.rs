//! TCP flow records kept by the kernel programs (tracepoint, kprobe and
//! fentry paths share them), and the field offsets user space hands them.
//!
//! Offsets are not compiled in: they differ between kernels, so user space
//! parses `/sys/kernel/tracing/events/<group>/<name>/format` at run time and
//! writes a [`TcpConfig`] into a one-slot array map. An offset of
//! [`OFF_NONE`] means "field not available"; the program then skips the work
//! that needs it.

/// Offset value meaning the field is absent on this kernel.
pub const OFF_NONE: u16 = u16::MAX;

/// Slots of the per-flow smoothed-RTT histogram: slot `i` counts samples in
/// `[2^i, 2^(i+1))` µs (slot 0 also holds 0..2 µs). 32 slots reach 71 minutes.
pub const RTT_SLOTS: usize = 32;

/// Side of a connection.
pub const SIDE_UNKNOWN: u8 = 0;
/// We called `connect` (state went SYN_SENT).
pub const SIDE_CLIENT: u8 = 1;
/// The socket came from a listener (state went SYN_RECV).
pub const SIDE_SERVER: u8 = 2;

/// Linux TCP states as the `inet_sock_set_state` tracepoint reports them.
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_SYN_RECV: u8 = 3;
pub const TCP_FIN_WAIT1: u8 = 4;
pub const TCP_FIN_WAIT2: u8 = 5;
pub const TCP_TIME_WAIT: u8 = 6;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_CLOSE_WAIT: u8 = 8;
pub const TCP_LAST_ACK: u8 = 9;
pub const TCP_LISTEN: u8 = 10;
pub const TCP_CLOSING: u8 = 11;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;
/// `MSG_PEEK`: a peek does not consume data, so its length is not counted
/// (the tracepoint's own print format skips it too).
pub const MSG_PEEK: i32 = 2;

/// [`TcpFlow::flags`]: the 5-tuple was captured from a state change.
pub const FLAG_TUPLE: u8 = 1;
/// The socket reached TCP_CLOSE.
pub const FLAG_CLOSED: u8 = 2;
/// `tcp_destroy_sock` fired.
pub const FLAG_DESTROYED: u8 = 4;
/// The flow was first seen at send/recv with no handshake recorded (it was
/// open before tracing started, or its handshake was missed).
pub const FLAG_MIDSTREAM: u8 = 8;

/// Index in the `TCP_STATS` per-CPU counter array.
pub const STAT_FLOWS_CREATED: u32 = 0;
/// Flows that reached TCP_CLOSE (or were freed without one).
pub const STAT_FLOWS_CLOSED: u32 = 1;
/// A map insert failed (should not happen with LRU maps).
pub const STAT_INSERT_FAILED: u32 = 2;
/// Flows created mid-stream (see [`FLAG_MIDSTREAM`]).
pub const STAT_MIDSTREAM: u32 = 3;
/// A tracepoint read failed (bad offset or fault).
pub const STAT_READ_FAILED: u32 = 4;
/// The accept tracepoint's walk from the new fd to its socket faulted or
/// found the fd out of range (the accept wait of that flow is not measured).
pub const STAT_ACCEPT_WALK_FAILED: u32 = 5;
/// Finished flows dropped because the closed-flow ring buffer was full
/// (user space drains it too slowly).
pub const STAT_CLOSED_LOST: u32 = 6;
/// Number of counters.
pub const STAT_COUNT: u32 = 8;

/// Field offsets into each tracepoint's record, in bytes from the start of the
/// record (the `offset:` of the format file).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpConfig {
    // sock:inet_sock_set_state
    pub ss_skaddr: u16,
    pub ss_oldstate: u16,
    pub ss_newstate: u16,
    pub ss_sport: u16,
    pub ss_dport: u16,
    pub ss_family: u16,
    pub ss_protocol: u16,
    pub ss_saddr: u16,
    pub ss_daddr: u16,
    pub ss_saddr_v6: u16,
    pub ss_daddr_v6: u16,
    // sock:sock_send_length
    pub send_sk: u16,
    pub send_protocol: u16,
    pub send_ret: u16,
    // sock:sock_recv_length
    pub recv_sk: u16,
    pub recv_protocol: u16,
    pub recv_ret: u16,
    pub recv_flags: u16,
    // tcp:tcp_probe
    pub probe_skaddr: u16,
    pub probe_srtt: u16,
    // tcp:tcp_retransmit_skb, tcp_send_reset, tcp_receive_reset, tcp_destroy_sock
    pub retrans_skaddr: u16,
    /// `err` of `tcp:tcp_retransmit_skb` (6.13+: the event also fires for
    /// failed retransmits); [`OFF_NONE`] on kernels where it fires only on success.
    pub retrans_err: u16,
    pub send_reset_skaddr: u16,
    pub recv_reset_skaddr: u16,
    pub destroy_skaddr: u16,
    // kprobe/fentry paths: offsets into `struct sock` / `struct tcp_sock`,
    // read from the kernel's BTF (`/sys/kernel/btf/vmlinux`).
    pub sk_family: u16,
    pub sk_state: u16,
    /// `skc_num`: local port, host byte order.
    pub sk_num: u16,
    /// `skc_dport`: remote port, network byte order.
    pub sk_dport: u16,
    pub sk_daddr: u16,
    pub sk_rcv_saddr: u16,
    pub sk_v6_daddr: u16,
    pub sk_v6_rcv_saddr: u16,
    pub sk_protocol: u16,
    /// `tcp_sock.srtt_us` (µs << 3).
    pub tp_srtt_us: u16,
    /// Argument index of `flags` in `tcp_recvmsg` (3 since Linux 5.19, 4 before).
    pub recvmsg_flags_arg: u16,
    // syscalls:sys_exit_accept4 / sys_exit_accept: the new fd.
    pub accept_ret: u16,
    // The accept tracepoint's walk from the new fd to its `struct sock`
    // (current task → files → fdt → fd[ret] → file → socket → sk), from BTF.
    pub task_files: u16,
    pub files_fdt: u16,
    pub fdt_max_fds: u16,
    pub fdt_fd: u16,
    pub file_private_data: u16,
    pub socket_sk: u16,
    /// Smoothed RTT sampled by the send/recv programs, on a flow's 1st,
    /// (n+1)th, (2n+1)th... call, and at its close unless its last call was
    /// sampled, where n = `rtt_every` (a power of two), instead of by a hook
    /// on every received segment; 0 when the `rtt` role's hook does it
    /// (`--tcp-rtt segments`).
    pub rtt_every: u16,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            ss_skaddr: OFF_NONE,
            ss_oldstate: OFF_NONE,
            ss_newstate: OFF_NONE,
            ss_sport: OFF_NONE,
            ss_dport: OFF_NONE,
            ss_family: OFF_NONE,
            ss_protocol: OFF_NONE,
            ss_saddr: OFF_NONE,
            ss_daddr: OFF_NONE,
            ss_saddr_v6: OFF_NONE,
            ss_daddr_v6: OFF_NONE,
            send_sk: OFF_NONE,
            send_protocol: OFF_NONE,
            send_ret: OFF_NONE,
            recv_sk: OFF_NONE,
            recv_protocol: OFF_NONE,
            recv_ret: OFF_NONE,
            recv_flags: OFF_NONE,
            probe_skaddr: OFF_NONE,
            probe_srtt: OFF_NONE,
            retrans_skaddr: OFF_NONE,
            retrans_err: OFF_NONE,
            send_reset_skaddr: OFF_NONE,
            recv_reset_skaddr: OFF_NONE,
            destroy_skaddr: OFF_NONE,
            sk_family: OFF_NONE,
            sk_state: OFF_NONE,
            sk_num: OFF_NONE,
            sk_dport: OFF_NONE,
            sk_daddr: OFF_NONE,
            sk_rcv_saddr: OFF_NONE,
            sk_v6_daddr: OFF_NONE,
            sk_v6_rcv_saddr: OFF_NONE,
            sk_protocol: OFF_NONE,
            tp_srtt_us: OFF_NONE,
            recvmsg_flags_arg: OFF_NONE,
            accept_ret: OFF_NONE,
            task_files: OFF_NONE,
            files_fdt: OFF_NONE,
            fdt_max_fds: OFF_NONE,
            fdt_fd: OFF_NONE,
            file_private_data: OFF_NONE,
            socket_sk: OFF_NONE,
            rtt_every: 0,
        }
    }
}

/// Handshake facts of a socket not yet attributed to a traced process.
///
/// A server socket is created in softirq context (SYN_RECV), where the
/// current pid is whoever the CPU interrupted; it is attributed later, at the
/// first send/recv, which runs in the owning process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockInfo {
    pub start_ns: u64,
    pub established_ns: u64,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub side: u8,
    pub state: u8,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// One TCP connection as seen from one socket. Times are `bpf_ktime_get_ns`
/// (CLOCK_MONOTONIC); 0 means "not seen".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpFlow {
    pub skaddr: u64,
    /// SYN_SENT (client), SYN_RECV (server) or first send/recv (mid-stream).
    pub start_ns: u64,
    pub established_ns: u64,
    pub end_ns: u64,
    /// SYN_SENT → ESTABLISHED, client side only.
    pub connect_latency_ns: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Send/receive calls that moved at least one byte.
    pub sends: u64,
    pub receives: u64,
    /// Latest smoothed RTT from `tcp_probe`, µs.
    pub srtt_us: u64,
    pub rtt_samples: u64,
    pub rtt_sum_us: u64,
    pub retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    /// When the owning process's accept() returned this server socket
    /// (0: not accepted while traced). The accept-queue wait is this minus
    /// `established_ns`.
    pub accepted_ns: u64,
    pub tgid: u32,
    /// Local and remote port, host byte order.
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub side: u8,
    /// Latest TCP state.
    pub state: u8,
    /// State the socket left when it went to TCP_CLOSE.
    pub close_from: u8,
    pub flags: u8,
    /// errno of a `connect()` the kernel refused at once (`tcp_v4_connect`
    /// / `tcp_v6_connect` returned it, e.g. ENETUNREACH); 0 otherwise or
    /// where those functions are not hooked.
    pub connect_errno: u8,
    pub _pad: u8,
    /// Local and remote address; IPv4 in the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub comm: [u8; 16],
    pub rtt_hist: [u32; RTT_SLOTS],
}

impl Default for TcpFlow {
    fn default() -> Self {
        Self {
            skaddr: 0,
            start_ns: 0,
            established_ns: 0,
            end_ns: 0,
            connect_latency_ns: 0,
            bytes_sent: 0,
            bytes_received: 0,
            sends: 0,
            receives: 0,
            srtt_us: 0,
            rtt_samples: 0,
            rtt_sum_us: 0,
            retransmits: 0,
            resets_sent: 0,
            resets_received: 0,
            accepted_ns: 0,
            tgid: 0,
            sport: 0,
            dport: 0,
            family: 0,
            side: 0,
            state: 0,
            close_from: 0,
            flags: 0,
            connect_errno: 0,
            _pad: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            comm: [0; 16],
            rtt_hist: [0; RTT_SLOTS],
        }
    }
}

/// Log2 slot of an RTT in µs; always `< RTT_SLOTS`.
#[inline(always)]
pub fn rtt_slot(us: u64) -> usize {
    if us < 2 {
        return 0;
    }
    let l = crate::hist::log2_u64(us) as usize;
    if l >= RTT_SLOTS { RTT_SLOTS - 1 } else { l }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), contain only integers, and have no implicit padding.
    unsafe impl aya::Pod for super::TcpConfig {}
    unsafe impl aya::Pod for super::SockInfo {}
    unsafe impl aya::Pod for super::TcpFlow {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_has_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<TcpConfig>(), 44 * 2);
        assert_eq!(
            core::mem::size_of::<SockInfo>(),
            8 + 8 + 2 + 2 + 2 + 1 + 1 + 32
        );
        assert_eq!(
            core::mem::size_of::<TcpFlow>(),
            16 * 8 + 4 + 2 + 2 + 2 + 4 + 2 + 48 + 128
        );
    }

    #[test]
    fn rtt_slots() {
        assert_eq!(rtt_slot(0), 0);
        assert_eq!(rtt_slot(1), 0);
        assert_eq!(rtt_slot(2), 1);
        assert_eq!(rtt_slot(1023), 9);
        assert_eq!(rtt_slot(1024), 10);
        assert_eq!(rtt_slot(u64::MAX), RTT_SLOTS - 1);
    }
}
