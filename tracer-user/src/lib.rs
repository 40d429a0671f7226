//! tracer: a zero-instrumentation eBPF tracer for Go services.
//!
//! The library holds everything the `tracer` binary does, so integration tests and
//! later front ends (agent, top view) drive the same code.
pub mod agent;
pub mod api;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod contention;
pub mod datasyms;
pub mod duration;
pub mod export;
pub mod gobin;
pub mod kernelfs;
pub mod latency;
pub mod maps;
pub mod options;
pub mod privileges;
pub mod probes;
pub mod process;
pub mod rate_guard;
pub mod report;
pub mod session;
pub mod stuck;
pub mod tcp;
pub mod top;
