//! Names of the maps and programs in tracer's eBPF object, spelled once for
//! both crates: `tracer-user` opens maps and attaches programs by these.
//! aya's `#[map]` and program macros name an item after its Rust identifier
//! (they take no constant), so `tracer-ebpf` keeps the identifiers and checks
//! them against these constants at compile time (its `names.rs`).
//!
//! Only names user space uses are here: maps private to the kernel side (zeroed
//! scratch values, per-thread argument stashes) are not.

/// BPF map names.
pub mod map {
    // Locks (`tracer-ebpf/src/lock.rs`).
    pub const TARGETS: &str = "TARGETS";
    pub const LOCK_INFLIGHT: &str = "LOCK_INFLIGHT";
    pub const LOCK_WAITS: &str = "LOCK_WAITS";
    pub const LOCK_STACKS: &str = "LOCK_STACKS";
    pub const LOCK_WAITERS: &str = "LOCK_WAITERS";
    pub const UNLOCK_WAKES: &str = "UNLOCK_WAKES";
    pub const LOCK_WAIT_TOTAL: &str = "LOCK_WAIT_TOTAL";
    pub const LOCK_HANDOFFS: &str = "LOCK_HANDOFFS";

    // Go maps (`tracer-ebpf/src/maps.rs`).
    pub const MAP_CONFIG: &str = "MAP_CONFIG";
    pub const MAP_EVENTS: &str = "MAP_EVENTS";
    pub const MAP_LOST: &str = "MAP_LOST";
    pub const MAP_STACKS: &str = "MAP_STACKS";
    pub const MAP_GROWTH: &str = "MAP_GROWTH";
    pub const MAP_OP_INFLIGHT: &str = "MAP_OP_INFLIGHT";
    pub const MAP_ACTIVE: &str = "MAP_ACTIVE";
    pub const MAP_OPS: &str = "MAP_OPS";
    pub const MAP_OP_GS: &str = "MAP_OP_GS";
    pub const MAP_CONFLICTS: &str = "MAP_CONFLICTS";
    pub const SYNC_MAP_CALLS: &str = "SYNC_MAP_CALLS";
    pub const MAP_SITE_HITS: &str = "MAP_SITE_HITS";
    pub const HB_EVENTS: &str = "HB_EVENTS";
    pub const HB_LOST: &str = "HB_LOST";
    pub const HB_PARENTS: &str = "HB_PARENTS";

    // Process discovery (`tracer-ebpf/src/discovery.rs`).
    pub const PROC_EVENTS: &str = "PROC_EVENTS";
    pub const PROC_LOST: &str = "PROC_LOST";

    // TCP flows (`tracer-ebpf/src/tcp/maps.rs`).
    pub const TCP_CONFIG: &str = "TCP_CONFIG";
    pub const TCP_TARGETS: &str = "TCP_TARGETS";
    pub const TCP_FLOWS: &str = "TCP_FLOWS";
    pub const TCP_CLOSED_RB: &str = "TCP_CLOSED_RB";
    pub const TCP_SOCKS: &str = "TCP_SOCKS";
    pub const TCP_STATS: &str = "TCP_STATS";
    // aya-log's ring of the probes' log lines (`aya-log-ebpf`).
    pub const AYA_LOGS: &str = "AYA_LOGS";
}

/// BPF program names.
pub mod program {
    // Locks: uprobes.
    pub const LOCK_ENTER: &str = "lock_enter";
    pub const LOCK_EXIT: &str = "lock_exit";
    pub const UNLOCK_SLOW: &str = "unlock_slow";
    pub const MUTEX_SLEEP: &str = "mutex_sleep";
    pub const MUTEX_WAKE: &str = "mutex_wake";
    pub const MUTEX_HANDOFF: &str = "mutex_handoff";

    // Go maps: uprobes.
    pub const MAP_FATAL: &str = "map_fatal";
    pub const MAP_GROW: &str = "map_grow";
    pub const MAP_OP_ENTER: &str = "map_op_enter";
    pub const MAP_OP_EXIT: &str = "map_op_exit";
    pub const SYNC_MAP_CALL: &str = "sync_map_call";
    pub const HB_SYNC: &str = "hb_sync";

    // Process discovery: tracepoints.
    pub const PROC_EXEC: &str = "proc_exec";
    pub const PROC_EXIT: &str = "proc_exit";

    /// Every TCP program's name starts with this (the kernel's skipped runs
    /// are summed over them).
    pub const TCP_PREFIX: &str = "tcp_";

    // TCP: tracepoints (`tcp/tracepoint.rs`, `tcp/accept.rs`).
    pub const TCP_STATE: &str = "tcp_state";
    pub const TCP_SEND_LEN: &str = "tcp_send_len";
    pub const TCP_RECV_LEN: &str = "tcp_recv_len";
    pub const TCP_RTT: &str = "tcp_rtt";
    pub const TCP_RETRANS: &str = "tcp_retrans";
    pub const TCP_RST_SENT: &str = "tcp_rst_sent";
    pub const TCP_RST_RECV: &str = "tcp_rst_recv";
    pub const TCP_DESTROY: &str = "tcp_destroy";
    pub const TCP_ACCEPT_TP: &str = "tcp_accept_tp";

    // TCP: kprobes and kretprobes (`tcp/kprobe.rs`).
    pub const TCP_KP_STATE: &str = "tcp_kp_state";
    pub const TCP_KP_INET_STATE: &str = "tcp_kp_inet_state";
    pub const TCP_KP_SENDMSG: &str = "tcp_kp_sendmsg";
    pub const TCP_KRP_SENDMSG: &str = "tcp_krp_sendmsg";
    pub const TCP_KP_SENDPAGE: &str = "tcp_kp_sendpage";
    pub const TCP_KRP_SENDPAGE: &str = "tcp_krp_sendpage";
    pub const TCP_KP_RECVMSG: &str = "tcp_kp_recvmsg";
    pub const TCP_KRP_RECVMSG: &str = "tcp_krp_recvmsg";
    pub const TCP_KP_SPLICE_READ: &str = "tcp_kp_splice_read";
    pub const TCP_KRP_SPLICE_READ: &str = "tcp_krp_splice_read";
    pub const TCP_KP_RTT: &str = "tcp_kp_rtt";
    pub const TCP_KP_RETRANS: &str = "tcp_kp_retrans";
    pub const TCP_KRP_RETRANS: &str = "tcp_krp_retrans";
    pub const TCP_KP_RETRANS_INNER: &str = "tcp_kp_retrans_inner";
    pub const TCP_KRP_RETRANS_INNER: &str = "tcp_krp_retrans_inner";
    pub const TCP_KP_RESET: &str = "tcp_kp_reset";
    pub const TCP_KP_DESTROY: &str = "tcp_kp_destroy";
    pub const TCP_KRP_ACCEPT: &str = "tcp_krp_accept";
    pub const TCP_KP_CONNECT4: &str = "tcp_kp_connect4";
    pub const TCP_KRP_CONNECT4: &str = "tcp_krp_connect4";
    pub const TCP_KP_CONNECT6: &str = "tcp_kp_connect6";
    pub const TCP_KRP_CONNECT6: &str = "tcp_krp_connect6";

    // TCP: fentry and fexit (`tcp/fentry.rs`).
    pub const TCP_FE_STATE: &str = "tcp_fe_state";
    pub const TCP_FE_INET_STATE: &str = "tcp_fe_inet_state";
    pub const TCP_FX_SENDMSG: &str = "tcp_fx_sendmsg";
    pub const TCP_FX_SENDPAGE: &str = "tcp_fx_sendpage";
    pub const TCP_FX_SPLICE_READ: &str = "tcp_fx_splice_read";
    pub const TCP_FX_RECVMSG: &str = "tcp_fx_recvmsg";
    pub const TCP_FE_RTT: &str = "tcp_fe_rtt";
    pub const TCP_FE_RETRANS: &str = "tcp_fe_retrans";
    pub const TCP_FX_RETRANS: &str = "tcp_fx_retrans";
    pub const TCP_FX_RETRANS_INNER: &str = "tcp_fx_retrans_inner";
    pub const TCP_FE_RESET: &str = "tcp_fe_reset";
    pub const TCP_FE_DESTROY: &str = "tcp_fe_destroy";
    pub const TCP_FX_ACCEPT: &str = "tcp_fx_accept";
    pub const TCP_FX_CONNECT4: &str = "tcp_fx_connect4";
    pub const TCP_FX_CONNECT6: &str = "tcp_fx_connect6";

    // TCP: raw tracepoints (`tcp/raw_tracepoint.rs`).
    pub const TCP_RAW_STATE: &str = "tcp_raw_state";
    pub const TCP_RAW_SEND: &str = "tcp_raw_send";
    pub const TCP_RAW_RECV: &str = "tcp_raw_recv";
    pub const TCP_RAW_RTT: &str = "tcp_raw_rtt";
    pub const TCP_RAW_RETRANS: &str = "tcp_raw_retrans";
    pub const TCP_RAW_RETRANS_ERR: &str = "tcp_raw_retrans_err";
    pub const TCP_RAW_RST_SENT: &str = "tcp_raw_rst_sent";
    pub const TCP_RAW_RST_RECV: &str = "tcp_raw_rst_recv";
    pub const TCP_RAW_DESTROY: &str = "tcp_raw_destroy";
}
