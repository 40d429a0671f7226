//! tracer: a zero-instrumentation eBPF tracer for Go services.
//!
//! The library holds everything the `tracer` binary does, so integration tests and
//! later front ends (agent, top view) drive the same code.
pub mod agent;
pub mod api;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod datasyms;
pub mod duration;
pub mod ebpf;
pub mod export;
pub mod gobin;
pub mod kernelfs;
pub mod latency;
pub mod link_closer;
pub mod locks;
pub mod maps;
pub mod options;
pub mod privileges;
pub mod process;
pub mod report;
pub mod session;
pub mod symbols;
pub mod tcp;
pub mod top;
