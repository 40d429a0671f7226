//! The BPF maps every TCP hook shares, and the one-line lookups on them.
//! Map names are the statics' names (aya's `#[map]` takes the identifier);
//! user space opens them through `tracer_common::names`. Maps used by one
//! hook kind only live with it (`kprobe.rs`, `kernel_args.rs`).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    names,
    tcp::{STAT_COUNT, SockInfo, TcpConfig, TcpFlow},
};

/// Tracepoint field offsets, written once by user space before attaching.
#[map]
pub(super) static TCP_CONFIG: Array<TcpConfig> = Array::with_max_entries(1, 0);

/// Processes whose connections are recorded (tgid → 1).
#[map]
static TCP_TARGETS: HashMap<u32, u8> = HashMap::with_max_entries(4096, 0);

/// Flows by socket address: open ones, and closed ones until their socket
/// is freed (`tcp_destroy_sock`), because a reset is sent and data can still
/// be read after TCP_CLOSE. LRU so that the kernel state stays bounded;
/// user space derives evictions from `STAT_FLOWS_CREATED`. A socket address
/// is reused only after the socket is freed, which moves its flow out.
#[map]
pub(super) static TCP_FLOWS: LruHashMap<u64, TcpFlow> = LruHashMap::with_max_entries(65536, 0);

/// Finished flows, for user space to drain: a ring buffer rather than a
/// hash map because a flow here is final, and an output costs a copy where
/// a hash insert (plus the index a closed socket needed to find it) cost
/// four LRU operations per flow. A full buffer drops the flow and counts it
/// (`STAT_CLOSED_LOST`). 4 MiB holds about 12 500 flows; user space maps
/// the data area twice, so it shows as 8 MiB of the agent's RSS.
#[map]
pub(super) static TCP_CLOSED_RB: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Server sockets seen in the handshake but not yet claimed by a traced
/// process's send/recv. Sockets of untraced processes land here too; LRU
/// keeps that bounded.
#[map]
pub(super) static TCP_SOCKS: LruHashMap<u64, SockInfo> = LruHashMap::with_max_entries(16384, 0);

/// One zeroed flow: a `TcpFlow` by value would crowd the 512-byte stack.
#[map]
pub(super) static TCP_ZERO: Array<TcpFlow> = Array::with_max_entries(1, 0);

/// Counters, indexed by `tracer_common::tcp::STAT_*`.
#[map]
static TCP_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[inline(always)]
pub(super) fn stat(i: u32) {
    if let Some(p) = TCP_STATS.get_ptr_mut(i) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub(super) fn traced(tgid: u32) -> bool {
    // SAFETY: read-only lookup of a plain value.
    unsafe { TCP_TARGETS.get(tgid) }.is_some()
}

/// Whether `sk` has a flow (retransmits, resets and reads can follow the
/// close, until the socket is freed).
#[inline(always)]
pub(super) fn has_flow(sk: u64) -> bool {
    TCP_FLOWS.get_ptr(sk).is_some()
}

crate::names::check_names! {
    TCP_CONFIG => names::map::TCP_CONFIG,
    TCP_TARGETS => names::map::TCP_TARGETS,
    TCP_FLOWS => names::map::TCP_FLOWS,
    TCP_CLOSED_RB => names::map::TCP_CLOSED_RB,
    TCP_SOCKS => names::map::TCP_SOCKS,
    TCP_STATS => names::map::TCP_STATS,
}
