//! Kernel table sizes of the agent's eBPF objects: the per-binary objects
//! and the one node-wide object.

use tracer_common::names;

/// Kernel table sizes of one traced process's object: enough for a busy
/// service's distinct (lock, site, stack) keys, small enough that a node with
/// a hundred Go processes does not pin gigabytes.
pub(super) const SESSION_TABLES: &[(&str, u32)] = &[
    (names::map::TARGETS, 4096),
    (names::map::LOCK_WAITS, 2048),
    (names::map::LOCK_STACKS, 2048),
    (names::map::UNLOCK_WAKES, 1024),
    (names::map::LOCK_WAITERS, 8192),
    (names::map::LOCK_INFLIGHT, 4096),
    (names::map::MAP_CONFIG, 4096),
    (names::map::MAP_STACKS, 2048),
    (names::map::MAP_GROWTH, 2048),
    // In-flight map operations: at most one per goroutine running a map
    // call at that instant, a few per CPU.
    (names::map::MAP_OP_INFLIGHT, 2048),
    (names::map::MAP_ACTIVE, 8192),
    // Map operation rows, preallocated per CPU (≈1.3 KiB each): the
    // budgeted tier samples call sites, so few rows fill; deep traces size
    // theirs up (`agent/deep.rs`).
    (names::map::MAP_OPS, 1024),
    (names::map::MAP_OP_GS, 8192),
    (names::map::MAP_CONFLICTS, 1024),
    (names::map::SYNC_MAP_CALLS, 1024),
    (names::map::MAP_SITE_HITS, 4096),
    (names::map::PROC_EVENTS, 4096),
    (names::map::LOCK_HANDOFFS, 2048),
    // Rings are mapped into the agent twice over (RSS) for every object:
    // these carry a crash report or a rare probe warning, a few hundred
    // bytes each, not a stream.
    (names::map::MAP_EVENTS, 16384),
    (names::map::AYA_LOGS, 8192),
];
