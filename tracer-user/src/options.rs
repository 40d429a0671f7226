//! What to trace ([`TraceOptions`]) and how to show it ([`OutputOptions`]),
//! resolved from the command line by [`cli`](crate::cli) and handed to the
//! commands: a session reads only the first, the printers only the second.

use std::{path::PathBuf, time::Duration};

use crate::{locks::MutexExits, maps::MapsMode, tcp::TcpOptions};

/// Tracing choices shared by `run`, `attach` and every process the agent
/// traces.
#[derive(Clone, Debug)]
pub struct TraceOptions {
    /// A wait in progress for longer than this is a `stuck_lock_wait` finding.
    pub stuck_threshold: Duration,
    /// Also probe the unlock slow paths to report which code held contended locks.
    pub holders: bool,
    /// Measure each probe program's run count and run time in the kernel.
    pub bpf_stats: bool,
    /// Map concurrency tier: off, always (fatal errors, growth) or deep (every op).
    pub maps: MapsMode,
    /// With `--maps deep`: probe only the map calls inside these packages.
    pub maps_sites: Vec<String>,
    /// With `--maps deep`: functions the happens-before detector treats as
    /// synchronisation.
    pub sync_funcs: Vec<String>,
    /// With `--maps budget`: fraction of the process's CPU the probes may cost.
    pub race_budget: f64,
    /// TCP flow tracing and its hook choices; `None` with `--tcp off`.
    pub tcp: Option<TcpOptions>,
    /// Pause the lock probes when contended waits exceed this many per second
    /// (0: never), to bound the probes' cost to the traced program.
    pub max_lock_rate: u64,
    /// Where Mutex waits are closed (off the lock by default).
    pub mutex_exits: MutexExits,
}

/// How `run` and `attach` show what they traced.
#[derive(Clone, Debug)]
pub struct OutputOptions {
    /// Refresh the contention table every `interval` while tracing.
    pub live: bool,
    pub interval: Duration,
    /// Rows shown in tables.
    pub top: usize,
    pub json_report: Option<PathBuf>,
}
