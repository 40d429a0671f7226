//! A binary's probes: one [`BinSession`] per traced binary (per process for
//! a PIE), how they are placed (off the event loop, a few analyses at a
//! time) and dropped, and what the agent remembers of each traced process.

use super::{shared_tables::SharedTables, tables::SESSION_TABLES};
use std::{
    collections::{BTreeSet, HashSet, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    deep::DeepTrace,
    discovery::{self, Kind, Seen},
    hub::{ProcState, ProcessInfo},
};
use crate::{
    clock::unix_now_ns,
    ebpf::{Scope, Tracer},
    gobin::GoBinary,
    maps::MapsReport,
    report::Report,
    session::{Session, TraceOptions},
    tcp::flows::{FlowReport, FlowTotals},
};

/// The session of one binary: probes on its inode for every process, with
/// the traced pids registered in the kernel's filter. A PIE binary gets one
/// session per process instead, since its load address (and so the
/// symbolization of its stacks) differs per process.
pub(super) struct BinSession {
    pub(super) session: Session,
    pub(super) pids: BTreeSet<u32>,
    /// Since when no process runs the binary: the probes stay a while, so
    /// the next run of a short-lived program is traced from its first
    /// instruction instead of after a ~100 ms attach.
    pub(super) idle_since: Option<Instant>,
    /// The binary the probes were attached through (`/proc/self/fd/N`);
    /// kept open so re-attaching (after a rate-guard pause) still works.
    pub(super) _file: Arc<std::fs::File>,
    /// The key of `_file` when the probes were placed: a different one now
    /// means the file was rewritten in place.
    pub(super) placed_for: (u64, u64),
}

/// Whether the file under a session's probes changed since they were placed
/// (rewritten in place, same inode). Its probes must go at once: the kernel
/// puts them into every new mapping of the inode, and their offsets were
/// computed for the old code.
pub(super) fn rewritten(bs: &BinSession) -> bool {
    match bs._file.metadata() {
        Ok(m) => discovery::binary_key(&m) != bs.placed_for,
        Err(_) => false,
    }
}

/// Binaries analysed (and their probes placed) at once. Each analysis and
/// object load allocates tens of MB for a moment (the kernel's BTF, the
/// binary's image); fifty new binaries at once used to take fifty
/// allocator arenas and keep ~1 GB. Later ones wait their turn.
pub(super) const ANALYSIS_SLOTS: usize = 2;

/// One of [`ANALYSIS_SLOTS`], held for the length of an analysis; handing
/// it back returns the freed heap to the kernel.
pub(super) struct AnalysisSlot;

pub(super) static SLOTS: (std::sync::Mutex<usize>, std::sync::Condvar) =
    (std::sync::Mutex::new(0), std::sync::Condvar::new());

impl AnalysisSlot {
    pub(super) fn take() -> Self {
        let (lock, cv) = &SLOTS;
        let mut busy = lock.lock().unwrap_or_else(|p| p.into_inner());
        while *busy >= ANALYSIS_SLOTS {
            busy = cv.wait(busy).unwrap_or_else(|p| p.into_inner());
        }
        *busy += 1;
        AnalysisSlot
    }
}

impl Drop for AnalysisSlot {
    fn drop(&mut self) {
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim has no preconditions; it returns free pages of
        // every arena to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
        let (lock, cv) = &SLOTS;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        cv.notify_one();
    }
}

/// How long a binary's probes outlive its last process.
pub(super) const IDLE_KEEP: Duration = Duration::from_secs(30);

/// (device, inode, pid for PIE binaries or 0).
pub(super) type BinKey = (u64, u64, u32);

pub(super) struct Traced {
    pub(super) key: BinKey,
    pub(super) info: ProcessInfo,
    /// Keys of findings already published.
    pub(super) published: HashSet<String>,
    /// Closed flows, newest last, bounded.
    pub(super) closed_flows: VecDeque<FlowReport>,
    /// Totals of closed flows no longer listed, so counters never go back.
    pub(super) closed_totals: FlowTotals,
    /// A deep map trace running on this process, and the last results of
    /// one (kept after it ends).
    pub(super) deep: Option<DeepTrace>,
    pub(super) deep_result: Option<MapsReport>,
}

/// A process that exited: its last report, kept a while so clients that
/// poll slower than it lived still see it.
pub(super) struct Retired {
    pub(super) info: ProcessInfo,
    pub(super) report: Report,
    pub(super) at: Instant,
}

/// How long, and how many, exited processes stay in snapshots.
pub(super) const RETIRED_FOR: Duration = Duration::from_secs(60);
pub(super) const MAX_RETIRED: usize = 64;

/// Loads an object for `bin` and places its probes: on the binary's inode
/// for every process (filtered to the traced pids in the kernel), or for
/// `pid` alone when `per_process`. With `tables`, the object's aggregate
/// tables are the ones every binary shares.
pub(super) fn start_session(
    tables: Option<&SharedTables>,
    opts: &TraceOptions,
    pid: u32,
    bin: Arc<GoBinary>,
    file: &std::fs::File,
    exe: String,
    per_process: bool,
) -> Result<Session> {
    let tracer = match tables {
        Some(t) => t.load(SESSION_TABLES)?,
        None => Tracer::load_sized(false, SESSION_TABLES)?,
    };
    let mut opts = opts.clone();
    // Flows are traced node-wide by the shared object.
    opts.tcp = None;
    Session::start(
        tracer,
        bin,
        &discovery::fd_path(file),
        pid,
        exe,
        if per_process {
            Scope::Pid(pid)
        } else {
            Scope::AllProcesses
        },
        &opts,
    )
}

/// The process entry of a process seen as `w`, running `bin`.
pub(super) fn info_of(w: &Seen, bin: &GoBinary) -> ProcessInfo {
    ProcessInfo {
        pid: w.pid,
        ns_pid: w.ns_pid,
        comm: w.comm.clone(),
        exe: w.exe.clone(),
        go_version: bin.build_info().go_version.clone(),
        labels: w.labels.clone(),
        state: ProcState::Traced,
        reason: None,
        probes: vec![],
        attach_latency_ns: 0,
        traced_since_unix_ns: unix_now_ns(),
    }
}

/// A binary's analysis, done on a blocking thread.
pub struct JobDone {
    pub(super) devino: (u64, u64),
    pub(super) kind: Kind,
    /// The binary's probes, placed for its first selected process.
    pub(super) session: Option<Result<Session, String>>,
    pub(super) analysis: Duration,
    pub(super) attach: Duration,
}

/// Frees a binary's object (and so detaches its probes) on another thread:
/// the kernel takes ~0.1 s per uprobe here, and the event loop must keep
/// handling execs meanwhile.
pub(super) fn drop_off_loop(bs: BinSession) {
    std::thread::spawn(move || {
        drop(bs);
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim has no preconditions; it returns the freed
        // tables and image to the kernel.
        unsafe {
            libc::malloc_trim(0);
        }
    });
}
