//! Where an event's values come from. Each hook kind reads addresses and
//! RTTs differently (a tracepoint record, the socket, a syscall argument):
//! it implements these traits, and the accounting in `flow.rs` reads
//! through them only when a flow needs the value.

/// Addresses and ports of a socket as one tracepoint record shows them.
#[derive(Clone, Copy, Default)]
pub(super) struct Tuple {
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
pub(super) trait TupleSource {
    fn tuple(&self) -> Option<Tuple>;
    fn is_tcp(&self) -> bool;
}

/// Where a smoothed RTT (µs) is read from, once the socket is known to have
/// a flow.
pub(super) trait SrttSource {
    fn srtt_us(&self) -> Option<u64>;
}

/// Decides whether a socket with no open flow may get one at send/recv:
/// events that fire for every socket type must check it is TCP first.
pub(super) trait NewFlowGate {
    fn allows(&self, sk: u64) -> bool;
}
