//! Types shared by tracer's eBPF programs (`tracer-ebpf`) and user space (`tracer-user`).
//!
//! Everything here is `#[repr(C)]` plain data with explicit padding, because the same
//! bytes are written by BPF programs and read back through BPF maps. The `user` feature
//! adds `aya::Pod` so user space can use the types as map keys and values.
#![no_std]

pub mod discovery;
pub mod hist;
pub mod lock;
pub mod maps;
pub mod names;
pub mod tcp;

pub use hist::{HIST_SLOTS, hist_slot, slot_bounds};
pub use lock::{Inflight, InflightKey, LockKey, WaitStats, WaiterKey};
