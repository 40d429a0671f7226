//! Kernel table sizes of the agent's eBPF objects: the per-binary objects
//! and the one node-wide object.

/// Kernel table sizes of one traced process's object: enough for a busy
/// service's distinct (lock, site, stack) keys, small enough that a node with
/// a hundred Go processes does not pin gigabytes.
pub(super) const SESSION_TABLES: &[(&str, u32)] = &[
    ("TARGETS", 4096),
    ("LOCK_WAITS", 2048),
    ("LOCK_STACKS", 2048),
    ("UNLOCK_WAKES", 1024),
    ("LOCK_WAITERS", 8192),
    ("LOCK_INFLIGHT", 4096),
    ("MAP_CONFIG", 4096),
    ("MAP_STACKS", 2048),
    ("MAP_GROWTH", 2048),
    ("MAP_OP_INFLIGHT", 8192),
    ("MAP_ACTIVE", 8192),
    ("MAP_OPS", 4096),
    ("MAP_OP_GS", 8192),
    ("MAP_CONFLICTS", 1024),
    ("SYNC_MAP_CALLS", 1024),
    ("PROC_EVENTS", 4096),
];

/// The shared object runs discovery and TCP only; its lock and map tables
/// are never used.
pub(super) const SHARED_TABLES: &[(&str, u32)] = &[
    ("TARGETS", 1),
    ("LOCK_WAITS", 1),
    ("LOCK_STACKS", 1),
    ("UNLOCK_WAKES", 1),
    ("LOCK_WAITERS", 1),
    ("LOCK_INFLIGHT", 1),
    ("MAP_CONFIG", 1),
    ("MAP_STACKS", 1),
    ("MAP_GROWTH", 1),
    ("MAP_OP_INFLIGHT", 1),
    ("MAP_ACTIVE", 1),
    ("MAP_OPS", 1),
    ("MAP_OP_GS", 1),
    ("MAP_CONFLICTS", 1),
    ("SYNC_MAP_CALLS", 1),
    ("MAP_EVENTS", 4096),
];
