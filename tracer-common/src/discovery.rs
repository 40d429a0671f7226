//! Process lifecycle events for node-wide discovery (`tracer agent`).

/// A process image was replaced by exec(2).
pub const EVENT_EXEC: u32 = 1;
/// A thread-group leader exited: the process is gone.
pub const EVENT_EXIT: u32 = 2;

/// One lifecycle event, written to the `PROC_EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcEvent {
    pub kind: u32,
    /// Process id (thread-group id) in the initial pid namespace.
    pub tgid: u32,
    /// CLOCK_MONOTONIC at the event, ns: attach latency is measured from it.
    pub ktime_ns: u64,
}
