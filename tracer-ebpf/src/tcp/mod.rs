//! TCP flows, one file per hook kind over one shared accounting.
//!
//! Flows are keyed by the kernel socket address. A flow is attributed to a
//! process only where the current task is the socket's owner: `connect`
//! (CLOSE→SYN_SENT runs in the caller) and send/recv. State changes, RTT
//! probes, retransmits and resets often run in softirq context, where the
//! current pid is whoever was interrupted, so they only update flows found by
//! socket address. Every field offset comes from user space (`TCP_CONFIG`),
//! parsed from the tracefs format files (tracepoints) or the kernel's BTF
//! (kprobe/fentry/raw tracepoint) of the running kernel.
//!
//! Imports run one way: `maps` and `sources` at the bottom, then `sock`
//! (socket readers), `flow` (the accounting), `kernel_args` (what the
//! kernel-argument hooks share), and the entry points on top:
//! `tracepoint`, `kprobe`, `fentry`, `raw_tracepoint`, `accept`.

mod accept;
mod fentry;
mod flow;
mod kernel_args;
mod kprobe;
mod maps;
mod raw_tracepoint;
mod sock;
mod sources;
mod tracepoint;
