//! The agent loop: discovers Go processes, traces each one, and publishes a
//! snapshot of everything every refresh, plus findings as they appear.
//!
//! Each traced process gets its own small eBPF object ([`Session`]), its
//! probes scoped to that pid: one process's probe storm or exit cannot touch
//! another's state, and freeing a process is dropping its object. The exec
//! and exit tracepoints and the TCP hooks are node-wide, in one shared object.

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::{
    deep::{self, DeepTrace},
    discovery::{self, BinaryCache, FastIndex, FastTargets, Found, Kind, ProcEvents, Seen},
    hub::{
        AgentInfo, Command, Health, HookInfo, HubWriter, NodeSnapshot, ProcState, ProcessInfo,
        Refused,
    },
};
use crate::{
    gobin::GoBinary,
    kernelfs,
    maps::MapsReport,
    privileges,
    probes::{ProbeStatus, Scope, Tracer},
    process::{Selector, procfs},
    report::{AnyFinding, Report},
    session::{STUCK_SCAN, Session, TraceOptions},
    stuck::monotonic_ns,
    tcp::{
        TcpReport, TcpTracing, add_tcp_pid, attach_tcp,
        flows::{FlowReport, FlowTotals, RemoteRollup, rollup_by_listen_port, rollup_by_remote},
    },
};

/// Kernel table sizes of one traced process's object: enough for a busy
/// service's distinct (lock, site, stack) keys, small enough that a node with
/// a hundred Go processes does not pin gigabytes.
const SESSION_TABLES: &[(&str, u32)] = &[
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
const SHARED_TABLES: &[(&str, u32)] = &[
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

/// Agent configuration.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub node: String,
    /// How often the snapshot is rebuilt.
    pub refresh: Duration,
    pub select: Selector,
    /// Per-process tracing choices (maps tier, holders, stuck threshold, TCP,
    /// rate guard).
    pub session: TraceOptions,
    /// Most processes traced at once; more are listed as failed.
    pub max_processes: usize,
    /// Pod names from the Kubernetes API, when running in a cluster.
    pub pods: Option<crate::process::pods::PodIndex>,
}

/// How often `/proc` is rescanned, in case the kernel dropped exec events.
const RESCAN: Duration = Duration::from_secs(10);
use crate::tcp::TCP_DRAIN;
/// Bound of the set of live pids already counted as unreadable.
const MAX_DENIED_PIDS: usize = 65_536;
/// Processes remembered as failed (newest kept).
const MAX_FAILED: usize = 256;
/// Closed flows kept per process for display; older ones count only in totals.
const MAX_CLOSED_FLOWS: usize = 64;

/// The session of one binary: probes on its inode for every process, with
/// the traced pids registered in the kernel's filter. A PIE binary gets one
/// session per process instead, since its load address (and so the
/// symbolization of its stacks) differs per process.
struct BinSession {
    session: Session,
    pids: BTreeSet<u32>,
    /// Since when no process runs the binary: the probes stay a while, so
    /// the next run of a short-lived program is traced from its first
    /// instruction instead of after a ~100 ms attach.
    idle_since: Option<Instant>,
    /// The binary the probes were attached through (`/proc/self/fd/N`);
    /// kept open so re-attaching (after a rate-guard pause) still works.
    _file: Arc<std::fs::File>,
    /// The key of `_file` when the probes were placed: a different one now
    /// means the file was rewritten in place.
    placed_for: (u64, u64),
}

/// Whether the file under a session's probes changed since they were placed
/// (rewritten in place, same inode). Its probes must go at once: the kernel
/// puts them into every new mapping of the inode, and their offsets were
/// computed for the old code.
fn rewritten(bs: &BinSession) -> bool {
    match bs._file.metadata() {
        Ok(m) => discovery::binary_key(&m) != bs.placed_for,
        Err(_) => false,
    }
}

/// Binaries analysed (and their probes placed) at once. Each analysis and
/// object load allocates tens of MB for a moment (the kernel's BTF, the
/// binary's image); fifty new binaries at once used to take fifty
/// allocator arenas and keep ~1 GB. Later ones wait their turn.
const ANALYSIS_SLOTS: usize = 2;

/// One of [`ANALYSIS_SLOTS`], held for the length of an analysis; handing
/// it back returns the freed heap to the kernel.
struct AnalysisSlot;

static SLOTS: (std::sync::Mutex<usize>, std::sync::Condvar) =
    (std::sync::Mutex::new(0), std::sync::Condvar::new());

impl AnalysisSlot {
    fn take() -> Self {
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
const IDLE_KEEP: Duration = Duration::from_secs(30);

/// (device, inode, pid for PIE binaries or 0).
type BinKey = (u64, u64, u32);

struct Traced {
    key: BinKey,
    info: ProcessInfo,
    /// Keys of findings already published.
    published: HashSet<String>,
    /// Closed flows, newest last, bounded.
    closed_flows: VecDeque<FlowReport>,
    /// Totals of closed flows no longer listed, so counters never go back.
    closed_totals: FlowTotals,
    /// A deep map trace running on this process, and the last results of
    /// one (kept after it ends).
    deep: Option<DeepTrace>,
    deep_result: Option<MapsReport>,
}

/// A process that exited: its last report, kept a while so clients that
/// poll slower than it lived still see it.
struct Retired {
    info: ProcessInfo,
    report: Report,
    at: Instant,
}

/// How long, and how many, exited processes stay in snapshots.
const RETIRED_FOR: Duration = Duration::from_secs(60);
const MAX_RETIRED: usize = 64;

/// The agent's state between events.
pub struct Agent {
    opts: AgentOptions,
    hub: HubWriter,
    shared: Tracer,
    tcp: Option<TcpTracing>,
    binaries: BinaryCache,
    sessions: HashMap<BinKey, BinSession>,
    traced: HashMap<u32, Traced>,
    failed: VecDeque<ProcessInfo>,
    retired: VecDeque<Retired>,
    go_versions: BTreeSet<String>,
    generation: u64,
    started: Instant,
    /// Go processes gone before their probes were live.
    missed: u64,
    /// Selected processes whose executable could not be opened (permission).
    unreadable: u64,
    /// Set once the agent is shutting down: live processes are then
    /// reported as detached, not exited, and probes are dropped all at once.
    stopping: bool,
    /// Live pids counted in `unreadable`, so a rescan does not count them again.
    denied_pids: HashSet<u32>,
    /// Binaries being analysed, with the processes waiting for them.
    jobs: HashMap<(u64, u64), Vec<Seen>>,
    /// Filter tables of binaries with live probes, shared with the
    /// discovery thread.
    fast: FastIndex,
    job_tx: tokio::sync::mpsc::UnboundedSender<JobDone>,
    job_rx: tokio::sync::mpsc::UnboundedReceiver<JobDone>,
}

use crate::clock::unix_now_ns;

/// Stable identity of a finding, so each is published once however often
/// its count changes.
fn finding_key(f: &AnyFinding) -> String {
    match f {
        AnyFinding::Lock(l) => format!(
            "{}|{}|{:?}|{:?}",
            l.kind,
            l.lock.address,
            l.goroutine,
            l.site.as_ref().map(|s| (&s.function, s.line))
        ),
        AnyFinding::Map(m) => {
            let side = |s: &Option<crate::maps::report::OpSideReport>| {
                s.as_ref().and_then(|s| {
                    s.site
                        .as_ref()
                        .map(|x| format!("{}:{}", x.function, x.line))
                })
            };
            format!(
                "{}|{:?}|{:?}|{:?}|{:?}|{:?}",
                m.kind,
                m.map,
                m.message,
                side(&m.op),
                side(&m.other),
                m.site.as_ref().map(|s| (&s.function, s.line))
            )
        }
    }
}

/// Resident set size of the agent, bytes.
fn own_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

impl Agent {
    /// Loads the node-wide programs and publishes the agent's info.
    pub fn start(opts: AgentOptions, hub: HubWriter) -> Result<(Self, ProcEvents)> {
        privileges::check()?;
        privileges::warn_without_ptrace();
        let (job_tx, job_rx) = tokio::sync::mpsc::unbounded_channel();
        kernelfs::ensure_tracefs()?;
        let mut shared = Tracer::load_sized(opts.session.tcp.is_some(), SHARED_TABLES)
            .context("loading the agent's node-wide eBPF programs")?;
        let events = ProcEvents::attach(&mut shared).context("process discovery")?;
        let mut hooks = vec![HookInfo {
            feature: "discovery".into(),
            mechanism: "tracepoint".into(),
            status: "attached".into(),
            reason: Some("sched:sched_process_exec and sched:sched_process_exit".into()),
        }];
        let tcp = if let Some(tcp_opts) = &opts.session.tcp {
            match attach_tcp(&mut shared, &[], tcp_opts) {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::warn!("TCP flows not traced: {e:#}");
                    hooks.push(HookInfo {
                        feature: "tcp".into(),
                        mechanism: String::new(),
                        status: "failed".into(),
                        reason: Some(format!("{e:#}")),
                    });
                    None
                }
            }
        } else {
            None
        };
        if let Some(t) = &tcp {
            hooks.extend(t.hooks().iter().map(|h| HookInfo {
                feature: format!("tcp:{}", h.measures),
                mechanism: h.method.into(),
                status: h.status.into(),
                reason: Some(match &h.reason {
                    Some(r) => format!("{}: {r}", h.hook),
                    None => h.hook.clone(),
                }),
            }));
        }
        hooks.push(HookInfo {
            feature: "locks".into(),
            mechanism: "uprobe".into(),
            status: "attached".into(),
            reason: Some("per process, on the Go runtime's lock slow paths".into()),
        });
        hooks.push(HookInfo {
            feature: "maps".into(),
            mechanism: "uprobe".into(),
            status: if opts.session.maps == crate::maps::MapsMode::Off {
                "off".into()
            } else {
                "attached".into()
            },
            reason: Some(format!("tier {:?}", opts.session.maps).to_lowercase()),
        });
        {
            let mut info = hub.info.lock().unwrap_or_else(|p| p.into_inner());
            info.hooks = hooks;
            info.node = opts.node.clone();
        }
        Ok((
            Self {
                opts,
                hub,
                shared,
                tcp,
                binaries: BinaryCache::new(4096),
                sessions: HashMap::new(),
                traced: HashMap::new(),
                failed: VecDeque::new(),
                retired: VecDeque::new(),
                go_versions: BTreeSet::new(),
                generation: 0,
                started: Instant::now(),
                missed: 0,
                unreadable: 0,
                denied_pids: HashSet::new(),
                stopping: false,
                jobs: HashMap::new(),
                fast: FastIndex::default(),
                job_tx,
                job_rx,
            },
            events,
        ))
    }

    /// Looks at `pid` (found by the scan, or just exec'd at `exec_ns`
    /// CLOCK_MONOTONIC) and traces it if it is a selected Go process.
    ///
    /// Only cheap work happens here: a binary seen for the first time is
    /// analysed, and its probes placed, on a blocking thread, so the execs of
    /// already-known binaries queued meanwhile are handled within a few ms.
    pub fn consider(&mut self, pid: u32) {
        let sel = self.opts.select.clone();
        let seen = Seen::observe(
            pid,
            monotonic_ns(),
            false,
            &self.fast,
            self.opts.pods.as_ref(),
            &|s: &Seen| sel.matches(s.pid, &s.comm, &s.exe, &s.labels),
        );
        self.consider_seen(seen);
    }

    /// [`Agent::consider`] for a process the discovery thread has seen.
    pub fn consider_seen(&mut self, mut w: Seen) {
        let pid = w.pid;
        if self.traced.contains_key(&pid) {
            if !w.exec {
                return;
            }
            // The process replaced its image: the old probes are for the old binary.
            self.exited(pid);
            self.retire_one(pid, None);
        }
        if pid == std::process::id() {
            return;
        }
        // Binaries of processes the agent would not trace anyway are not
        // parsed (a parse holds the binary in memory).
        if !self.opts.select.matches(w.pid, &w.comm, &w.exe, &w.labels) {
            return;
        }
        let Some((file, devino)) = w.binary.take() else {
            if w.denied {
                self.denied(&w);
            }
            // Otherwise gone before it could be opened.
            return;
        };
        match self.binaries.get(devino) {
            Some(Kind::Other(_)) => {}
            Some(Kind::Go(bin, file, path)) => self.trace(w, devino, bin, file, &path),
            None => self.analyse(w, devino, file),
        }
    }

    /// Starts the analysis of a new binary in the background; processes of
    /// it that exec meanwhile wait for the result.
    fn analyse(&mut self, w: Seen, devino: (u64, u64), file: std::fs::File) {
        if let Some(waiting) = self.jobs.get_mut(&devino) {
            waiting.push(w);
            return;
        }
        let start_for = self
            .opts
            .select
            .matches(w.pid, &w.comm, &w.exe, &w.labels)
            .then(|| (w.pid, w.exe.clone()));
        let display: Arc<str> = w.exe.clone().into();
        let opts = self.opts.session.clone();
        let tx = self.job_tx.clone();
        tokio::task::spawn_blocking(move || {
            let _slot = AnalysisSlot::take();
            let t0 = Instant::now();
            let kind = BinaryCache::analyse(file, display);
            let analysis = t0.elapsed();
            let session = match (&kind, start_for) {
                (Kind::Go(bin, file, _), Some((pid, exe))) if !bin.is_pie() => Some(
                    start_session(&opts, pid, bin.clone(), file, exe, false)
                        .map_err(|e| format!("{e:#}")),
                ),
                _ => None,
            };
            let _ = tx.send(JobDone {
                devino,
                kind,
                session,
                analysis,
                attach: t0.elapsed() - analysis,
            });
        });
        self.jobs.insert(devino, vec![w]);
    }

    /// A binary's analysis (and first probes) finished: trace the processes
    /// that waited for it.
    pub fn job_done(&mut self, d: JobDone) {
        self.binaries.insert(d.devino, d.kind.clone());
        let waiting = self.jobs.remove(&d.devino).unwrap_or_default();
        let Kind::Go(bin, file, path) = d.kind else {
            return;
        };
        tracing::info!(
            "analysed {path} (Go {}): {:.1} ms, probes placed in {:.1} ms",
            bin.build_info().go_version,
            d.analysis.as_secs_f64() * 1e3,
            d.attach.as_secs_f64() * 1e3
        );
        match d.session {
            Some(Ok(session)) => {
                self.index_fast(d.devino, &session);
                self.sessions.insert(
                    (d.devino.0, d.devino.1, 0),
                    BinSession {
                        session,
                        pids: BTreeSet::new(),
                        idle_since: Some(Instant::now()),
                        _file: file.clone(),
                        placed_for: d.devino,
                    },
                );
            }
            Some(Err(e)) => {
                if let Some(w) = waiting.first() {
                    self.fail(w, &bin, e);
                }
                return;
            }
            None => {}
        }
        for w in waiting {
            self.trace(w, d.devino, bin.clone(), file.clone(), &path);
        }
    }

    /// Lets the discovery thread add new processes of this binary itself.
    fn index_fast(&mut self, devino: (u64, u64), session: &Session) {
        let opened = session
            .filter_tables()
            .and_then(|(t, m)| FastTargets::open(t, m));
        match opened {
            Ok(f) => {
                self.fast
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(devino, f);
            }
            Err(e) => tracing::warn!("fast attach unavailable for a binary: {e:#}"),
        }
    }

    /// Undoes the discovery thread's filter entry for a process not traced.
    fn unfilter(&mut self, w: &Seen, (dev, ino): (u64, u64)) {
        if w.fast
            && let Some(bs) = self.sessions.get_mut(&(dev, ino, 0))
        {
            bs.session.remove_pid(w.pid);
        }
    }

    /// A selected process whose binary the agent may not open: counted, and
    /// said in the log (the first time, then every 1000th) instead of being
    /// passed over in silence.
    fn denied(&mut self, w: &Seen) {
        // The periodic rescan sees a live process again: count it once.
        if self.denied_pids.len() >= MAX_DENIED_PIDS {
            self.denied_pids.clear();
        }
        if !self.denied_pids.insert(w.pid) {
            return;
        }
        self.unreadable += 1;
        if self.unreadable % 1000 == 1 {
            tracing::warn!(
                "pid {} ({}): cannot open its executable (permission denied); {} process(es) so far. The agent needs CAP_SYS_PTRACE to trace processes of other users or with capabilities it lacks",
                w.pid,
                w.comm,
                self.unreadable
            );
        }
    }

    fn fail(&mut self, w: &Seen, bin: &GoBinary, reason: String) {
        tracing::warn!("pid {} ({}): not traced: {reason}", w.pid, w.comm);
        let mut info = info_of(w, bin);
        info.state = ProcState::Failed;
        info.reason = Some(reason);
        self.remember_failed(info);
    }

    /// Traces a process of a Go binary already analysed.
    fn trace(
        &mut self,
        mut w: Seen,
        (dev, ino): (u64, u64),
        bin: Arc<GoBinary>,
        file: Arc<std::fs::File>,
        path: &str,
    ) {
        if w.exe == "?" {
            // Gone already: show what the binary's first process showed.
            path.clone_into(&mut w.exe);
        }
        if !self.opts.select.matches(w.pid, &w.comm, &w.exe, &w.labels) {
            return;
        }
        if !w.fast && !procfs::is_alive(w.pid) {
            // Exited before its probes could be live (first run of a binary
            // shorter than its analysis): nothing of it was recorded. (A
            // process the discovery thread added at exec was recorded, and is
            // reported even when gone.)
            self.missed += 1;
            return;
        }
        if self.traced.len() >= self.opts.max_processes {
            let why = format!(
                "not traced: already tracing {} processes (--max-processes)",
                self.opts.max_processes
            );
            self.unfilter(&w, (dev, ino));
            self.fail(&w, &bin, why);
            return;
        }
        let pid = w.pid;
        let key = (dev, ino, if bin.is_pie() { pid } else { 0 });
        let attached = match self.sessions.get_mut(&key) {
            // Probes are live on this binary already: one kernel table
            // insert and the process is traced.
            Some(bs) => bs.session.add_pid(pid).map(|()| {
                bs.pids.insert(pid);
                bs.idle_since = None;
                bs.session.probes.clone()
            }),
            // A PIE binary (one session per process), or a binary whose
            // probes were dropped after idling: place them now.
            None => tokio::task::block_in_place(|| {
                start_session(
                    &self.opts.session,
                    pid,
                    bin.clone(),
                    &file,
                    w.exe.clone(),
                    key.2 != 0,
                )
            })
            .map(|session| {
                let probes = session.probes.clone();
                if key.2 == 0 {
                    self.index_fast((dev, ino), &session);
                }
                self.sessions.insert(
                    key,
                    BinSession {
                        session,
                        pids: BTreeSet::from([pid]),
                        idle_since: None,
                        _file: file.clone(),
                        placed_for: (dev, ino),
                    },
                );
                probes
            }),
        };
        let probes = match attached {
            Ok(p) => p,
            Err(e) => {
                self.unfilter(&w, (dev, ino));
                // A process that exits mid-attach is normal, not an error.
                if procfs::is_alive(pid) {
                    self.fail(&w, &bin, format!("{e:#}"));
                } else {
                    self.missed += 1;
                }
                return;
            }
        };
        if let Err(e) = add_tcp_pid(&mut self.shared, pid) {
            tracing::debug!("pid {pid}: TCP flows not traced: {e:#}");
        }
        let mut info = info_of(&w, &bin);
        info.attach_latency_ns = monotonic_ns().saturating_sub(w.seen_ns);
        info.probes = probes;
        self.go_versions.insert(info.go_version.clone());
        tracing::info!(
            "tracing pid {pid} ({}, Go {}), probes live {:.1} ms after {}",
            info.comm,
            info.go_version,
            info.attach_latency_ns as f64 / 1e6,
            if w.exec { "exec" } else { "discovery" },
        );
        self.traced.insert(
            pid,
            Traced {
                key,
                info,
                published: HashSet::new(),
                closed_flows: VecDeque::new(),
                closed_totals: FlowTotals::default(),
                deep: None,
                deep_result: None,
            },
        );
    }

    fn remember_failed(&mut self, info: ProcessInfo) {
        self.failed.retain(|f| f.pid != info.pid);
        if self.failed.len() == MAX_FAILED {
            self.failed.pop_front();
        }
        self.failed.push_back(info);
    }

    /// `pid` exited: its last numbers and findings are taken now, its
    /// kernel entries freed (with its binary's probes, when it was the last
    /// process running it), and its last report kept a while.
    ///
    /// Only marks it here: the report is built by the next [`Agent::retire`]
    /// (at the next refresh), so a burst of exits never delays the handling
    /// of the execs queued behind them.
    pub fn exited(&mut self, pid: u32) {
        self.denied_pids.remove(&pid);
        self.failed.retain(|f| f.pid != pid);
        if let Some(t) = self.traced.get_mut(&pid)
            && t.info.state != ProcState::Exited
        {
            t.info.state = ProcState::Exited;
            tracing::info!("pid {pid} ({}) exited", t.info.comm);
        }
    }

    /// Builds the last report of every exited process and frees its state.
    fn retire(
        &mut self,
        node_tcp: Option<&TcpReport>,
        mut events: Option<&mut tokio::sync::mpsc::Receiver<Found>>,
    ) {
        for bs in self.sessions.values_mut() {
            bs.session.begin_round();
        }
        let gone: Vec<u32> = self
            .traced
            .iter()
            .filter(|(_, t)| t.info.state == ProcState::Exited)
            .map(|(pid, _)| *pid)
            .collect();
        for pid in gone {
            if let Some(rx) = events.as_deref_mut() {
                self.drain(rx);
            }
            self.retire_one(pid, node_tcp);
        }
    }

    fn retire_one(&mut self, pid: u32, node_tcp: Option<&TcpReport>) {
        let Some(mut t) = self.traced.remove(&pid) else {
            return;
        };
        let Some(mut bs) = self.sessions.remove(&t.key) else {
            return;
        };
        if self.stopping && procfs::is_alive(pid) {
            t.info.state = ProcState::Detached;
        }
        if node_tcp.is_none() {
            bs.session.begin_round();
        }
        bs.session.settle_stuck();
        let report = report_of(&self.hub, &mut bs.session, &mut t, node_tcp);
        bs.session.remove_pid(pid);
        bs.pids.remove(&pid);
        if bs.pids.is_empty() && t.key.2 != 0 && !self.stopping {
            // A PIE session serves one process only.
            drop_off_loop(bs);
        } else {
            if bs.pids.is_empty() {
                bs.idle_since = Some(Instant::now());
            }
            self.sessions.insert(t.key, bs);
        }
        if let Some(report) = report {
            if self.retired.len() == MAX_RETIRED {
                self.retired.pop_front();
            }
            self.retired.push_back(Retired {
                info: t.info,
                report,
                at: Instant::now(),
            });
        }
    }

    /// Every [`STUCK_SCAN`]: stuck waits, the rate guard and fatal map errors;
    /// also notices processes whose exit event was lost.
    pub fn scan(&mut self) {
        let stale: Vec<BinKey> = self
            .sessions
            .iter()
            .filter(|(_, bs)| {
                bs.idle_since.is_some_and(|t| t.elapsed() > IDLE_KEEP) || rewritten(bs)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in stale {
            if let Some(bs) = self.sessions.remove(&k) {
                drop_off_loop(bs);
            }
            self.binaries.remove((k.0, k.1));
            self.fast
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&(k.0, k.1));
        }
        for bs in self.sessions.values_mut().filter(|b| !b.pids.is_empty()) {
            bs.session.scan_stuck(self.opts.session.stuck_threshold);
        }
        let gone: Vec<u32> = self
            .traced
            .iter()
            .filter(|(pid, t)| t.info.state != ProcState::Exited && !procfs::is_alive(**pid))
            .map(|(pid, _)| *pid)
            .collect();
        for pid in gone {
            self.exited(pid);
        }
    }

    /// Safety net for lost exec events.
    pub fn rescan(&mut self) {
        for pid in discovery::scan_proc() {
            if !self.traced.contains_key(&pid) && !self.failed.iter().any(|f| f.pid == pid) {
                self.consider(pid);
            }
        }
    }

    /// Every [`TCP_DRAIN`]: empties the kernel's closed-flow ring buffer;
    /// the flows wait in user space (bounded, see `MAX_KEPT_CLOSED`) for the
    /// next refresh.
    fn drain_tcp(&mut self) {
        if let Some(tcp) = self.tcp.as_mut() {
            tcp.collect_closed();
        }
    }

    /// Flows of the node, grouped by pid, with each process's closed flows
    /// kept across refreshes.
    fn collect_flows(&mut self) -> Option<TcpReport> {
        let tcp = self.tcp.as_mut()?;
        let report = match tcp.report(&mut self.shared) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("reading TCP flows: {e:#}");
                return None;
            }
        };
        // Closed flows now live in each process's bounded list.
        tcp.clear_closed();
        for f in report.flows.iter().filter(|f| !f.open) {
            if let Some(t) = self.traced.get_mut(&f.pid) {
                if t.closed_flows.len() == MAX_CLOSED_FLOWS
                    && let Some(old) = t.closed_flows.pop_front()
                {
                    t.closed_totals.add(&old);
                }
                t.closed_flows.push_back(f.clone());
            }
        }
        Some(report)
    }

    /// Applies one lifecycle event.
    pub fn found(&mut self, f: Found) {
        match f {
            Found::Exec(seen) => self.consider_seen(*seen),
            Found::Exit { pid } => self.exited(pid),
        }
    }

    /// Applies the events queued now, without waiting.
    fn drain(&mut self, rx: &mut tokio::sync::mpsc::Receiver<Found>) {
        for _ in 0..4096 {
            match rx.try_recv() {
                Ok(f) => self.found(f),
                Err(_) => break,
            }
        }
    }

    /// Rebuilds the snapshot and publishes new findings. Execs that arrive
    /// meanwhile are handled between processes, so a snapshot of a busy
    /// node does not delay the tracing of a new process.
    pub fn publish(&mut self, mut events: Option<&mut tokio::sync::mpsc::Receiver<Found>>) {
        let t0 = Instant::now();
        let node_tcp = self.collect_flows();
        self.retire(node_tcp.as_ref(), events.as_deref_mut());
        let mut reports = Vec::with_capacity(self.traced.len());
        let mut processes = Vec::with_capacity(self.traced.len() + self.failed.len());
        let pids: Vec<u32> = self.traced.keys().copied().collect();
        for pid in pids {
            if let Some(rx) = events.as_deref_mut() {
                self.drain(rx);
            }
            let Some(mut t) = self.traced.remove(&pid) else {
                continue;
            };
            // The kubelet reports a container's id a moment after it
            // starts: fill in names that were not known at exec.
            if let Some(pods) = &self.opts.pods
                && t.info.labels.pod_uid.is_some()
                && t.info.labels.container_name.is_none()
            {
                pods.fill(&mut t.info.labels);
            }
            if let Some(bs) = self.sessions.get_mut(&t.key)
                && let Some(r) = report_of(&self.hub, &mut bs.session, &mut t, node_tcp.as_ref())
            {
                processes.push(t.info.clone());
                reports.push(r);
            }
            self.traced.insert(pid, t);
        }
        self.retired.retain(|r| r.at.elapsed() < RETIRED_FOR);
        for r in &self.retired {
            processes.push(r.info.clone());
            reports.push(r.report.clone());
        }
        processes.extend(self.failed.iter().cloned());
        let lost: u64 = reports
            .iter()
            .filter_map(|r| r.maps_lost.as_ref())
            .map(|l| l.fatal_events + l.overlaps + l.growth_events + l.ops + l.sync_map_calls)
            .sum();
        let (evictions, tcp_lost) = node_tcp.as_ref().map_or((0, 0), |t| {
            (
                t.stats.evicted,
                t.stats.dropped_closed + t.stats.closed_lost,
            )
        });
        // Kernel-measured probe cost (non-zero with --bpf-stats).
        let (probe_hits, bpf_run_time_ns) = if self.opts.session.bpf_stats {
            self.sessions
                .values()
                .flat_map(|bs| bs.session.tracer.program_stats())
                .chain(self.shared.program_stats())
                .fold((0, 0), |(n, t), p| (n + p.run_count, t + p.run_time_ns))
        } else {
            (0, 0)
        };
        self.generation += 1;
        let snapshot = NodeSnapshot {
            generation: self.generation,
            taken_unix_ns: unix_now_ns(),
            node: self.opts.node.clone(),
            processes,
            reports,
            health: Health {
                processes_traced: self.traced.len() as u32,
                processes_failed: self.failed.len() as u32,
                processes_missed: self.missed,
                processes_unreadable: self.unreadable,
                events_lost: lost + tcp_lost + discovery::lost(&self.shared),
                map_evictions: evictions,
                probe_hits,
                bpf_run_time_ns,
                rss_bytes: own_rss(),
            },
            go_versions: self.go_versions.iter().cloned().collect(),
        };
        let n = snapshot.reports.len();
        self.hub.snapshots.send_replace(Arc::new(snapshot));
        tracing::debug!(
            "snapshot {} of {n} processes built in {:.2} ms",
            self.generation,
            t0.elapsed().as_secs_f64() * 1e3
        );
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::DeepMaps {
                pid,
                duration,
                sites,
                max_running,
                reply,
            } => {
                let _ = reply.send(self.start_deep(pid, duration, &sites, max_running));
            }
            Command::StopDeepMaps { pid, reply } => {
                let _ = reply.send(self.stop_deep(pid));
            }
        }
    }

    /// Deep traces running now, node-wide.
    fn deep_running(&self) -> usize {
        self.traced
            .values()
            .filter(|t| t.deep.as_ref().is_some_and(|d| !d.done()))
            .count()
    }

    fn start_deep(
        &mut self,
        pid: u32,
        duration: Duration,
        sites: &[String],
        max_running: usize,
    ) -> Result<Vec<ProbeStatus>, Refused> {
        let running = self.deep_running();
        let Some(t) = self.traced.get_mut(&pid) else {
            return Err(Refused::NotFound(format!(
                "pid {pid} is not a traced Go process"
            )));
        };
        if let Some(d) = &t.deep
            && !d.done()
        {
            return Err(Refused::Failed(format!(
                "pid {pid}: a deep map trace is already running"
            )));
        }
        if running >= max_running {
            return Err(Refused::Limit(format!(
                "{running} deep map traces already run on this node (limit {max_running}); stop one with StopDeepMapTrace or wait for it to end"
            )));
        }
        let Some(bs) = self.sessions.get(&t.key) else {
            return Err(Refused::Failed(format!("pid {pid}: its probes are gone")));
        };
        let bin = bs.session.bin.clone();
        let path = discovery::fd_path(&bs._file);
        let started = tokio::task::block_in_place(|| {
            DeepTrace::start(bin, &path, pid, duration, sites, SESSION_TABLES)
        });
        match started {
            Ok((deep, statuses)) => {
                tracing::info!(
                    "pid {pid}: deep map trace for {:.1}s",
                    duration.as_secs_f64()
                );
                t.deep = Some(deep);
                Ok(statuses)
            }
            Err(e) => Err(Refused::Failed(format!("pid {pid}: {e:#}"))),
        }
    }

    /// Ends `pid`'s deep trace: its last results are read first, so they
    /// stay with the process; the probes are detached off this thread.
    fn stop_deep(&mut self, pid: u32) -> Result<(), Refused> {
        let t = self
            .traced
            .get_mut(&pid)
            .filter(|t| t.deep.as_ref().is_some_and(|d| !d.done()))
            .ok_or_else(|| Refused::NotFound(format!("pid {pid}: no deep map trace is running")))?;
        if let Some(mut d) = t.deep.take() {
            match tokio::task::block_in_place(|| d.report()) {
                Ok(r) => t.deep_result = Some(r),
                Err(e) => tracing::warn!("pid {pid}: reading the deep map trace: {e:#}"),
            }
            tracing::info!("pid {pid}: deep map trace stopped on request");
            std::thread::spawn(move || drop(d));
        }
        Ok(())
    }

    /// Processes traced now.
    pub fn traced_pids(&self) -> Vec<u32> {
        self.traced.keys().copied().collect()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
}

/// One process's report as of now, with its flows; publishes its new
/// findings.
fn report_of(
    hub: &HubWriter,
    session: &mut Session,
    t: &mut Traced,
    node_tcp: Option<&TcpReport>,
) -> Option<Report> {
    let pid = t.info.pid;
    let mut report = match tokio::task::block_in_place(|| session.report_for(pid)) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("pid {pid}: reading its aggregates failed: {e:#}");
            return None;
        }
    };
    if let Some(d) = t.deep.as_mut() {
        match tokio::task::block_in_place(|| d.report()) {
            Ok(r) => t.deep_result = Some(r),
            Err(e) => tracing::warn!("pid {pid}: reading the deep map trace: {e:#}"),
        }
        if d.done() {
            tracing::info!("pid {pid}: deep map trace ended");
            if let Some(d) = t.deep.take() {
                std::thread::spawn(move || drop(d));
            }
        }
    }
    if let Some(d) = &t.deep_result {
        deep::merge(&mut report, d);
    }
    if let Some(node) = node_tcp {
        let mut flows: Vec<FlowReport> = t.closed_flows.iter().cloned().collect();
        flows.extend(
            node.flows
                .iter()
                .filter(|f| f.pid == pid && f.open)
                .cloned(),
        );
        let mut by_remote = rollup_by_remote(&flows);
        // Flows aged out of the list still count, so totals never go back.
        if t.closed_totals.flows > 0 {
            by_remote.push(RemoteRollup {
                pid,
                comm: t.info.comm.clone(),
                remote_addr: None,
                remote_port: 0,
                totals: t.closed_totals.clone(),
            });
        }
        report.tcp = Some(TcpReport {
            hooks: node.hooks.clone(),
            stats: node.stats.clone(),
            by_remote,
            by_listen_port: rollup_by_listen_port(&flows),
            flows,
        });
        report.tcp_off = None;
    }
    let now = unix_now_ns();
    let keys: Vec<String> = report.findings.iter().map(finding_key).collect();
    for (f, key) in report.findings.iter().zip(&keys) {
        if t.published.insert(key.clone()) {
            // One short line: the whole finding (with its stack) is in the
            // API and the report.
            tracing::warn!("finding in pid {pid} ({}): {}", t.info.comm, key);
            hub.findings.publish(
                pid,
                t.info.comm.clone(),
                t.info.labels.clone(),
                now,
                f.clone(),
            );
        }
    }
    // A finding gone from the report (a stuck wait evicted for a newer one)
    // never comes back: forget its key, so the set stays as small as the
    // report's bounded findings.
    t.published.retain(|k| keys.contains(k));
    Some(report)
}

/// Loads an object for `bin` and places its probes: on the binary's inode
/// for every process (filtered to the traced pids in the kernel), or for
/// `pid` alone when `per_process`.
fn start_session(
    opts: &TraceOptions,
    pid: u32,
    bin: Arc<GoBinary>,
    file: &std::fs::File,
    exe: String,
    per_process: bool,
) -> Result<Session> {
    let tracer = Tracer::load_sized(false, SESSION_TABLES)?;
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
fn info_of(w: &Seen, bin: &GoBinary) -> ProcessInfo {
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
    devino: (u64, u64),
    kind: Kind,
    /// The binary's probes, placed for its first selected process.
    session: Option<Result<Session, String>>,
    analysis: Duration,
    attach: Duration,
}

/// Frees a binary's object (and so detaches its probes) on another thread:
/// the kernel takes ~0.1 s per uprobe here, and the event loop must keep
/// handling execs meanwhile.
fn drop_off_loop(bs: BinSession) {
    std::thread::spawn(move || drop(bs));
}

/// Runs the agent until `shutdown` resolves; drops every probe on the way out.
pub async fn run(
    opts: AgentOptions,
    hub: HubWriter,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let refresh = opts.refresh.max(Duration::from_millis(100));
    let (mut agent, proc_events) = Agent::start(opts, hub)?;
    // Events first, then the scan: a process that starts in between is seen
    // twice (harmless), never zero times.
    let (tx, mut events) = tokio::sync::mpsc::channel(65536);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sel = agent.opts.select.clone();
    let reader = events_reader(proc_events, &agent, sel, tx, stop.clone())?;
    for pid in discovery::scan_proc() {
        agent.consider(pid);
    }
    agent.publish(Some(&mut events));
    tracing::info!(
        "agent ready: tracing {} Go processes",
        agent.traced_pids().len()
    );
    let mut refresh_tick = tokio::time::interval(refresh);
    refresh_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut scan_tick = tokio::time::interval(STUCK_SCAN);
    scan_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rescan_tick = tokio::time::interval(RESCAN);
    rescan_tick.tick().await;
    let mut drain_tick = tokio::time::interval(TCP_DRAIN);
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            // New processes first: their probes must be live within ms.
            biased;
            Some(found) = events.recv() => {
                agent.found(found);
                agent.drain(&mut events);
            }
            _ = &mut shutdown => break,
            _ = scan_tick.tick() => agent.scan(),
            Some(done) = agent.job_rx.recv() => agent.job_done(done),
            _ = refresh_tick.tick() => agent.publish(Some(&mut events)),
            _ = rescan_tick.tick() => agent.rescan(),
            _ = drain_tick.tick() => agent.drain_tcp(),
            Some(cmd) = agent.hub.commands.recv() => agent.command(cmd),
        }
    }
    // Last numbers out, then every object (and so every probe) is dropped.
    agent.stopping = true;
    let pids = agent.traced_pids();
    for pid in pids {
        agent.exited(pid);
    }
    agent.publish(None);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(events);
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    let uptime = agent.uptime();
    let t0 = Instant::now();
    let n = tokio::task::spawn_blocking(move || agent.detach_all())
        .await
        .unwrap_or(0);
    tracing::info!(
        "agent stopping after {:.0}s; probes of {n} binaries detached in {:.1}s",
        uptime.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

impl Agent {
    /// Drops every binary's probes; how many sets there were.
    ///
    /// One thread, on purpose: closing a uprobe's perf event takes the
    /// kernel's global uprobe registration lock and an RCU grace period
    /// (~0.1 s per probe on this VM), so parallel closes do not overlap.
    /// Measured with 7 binaries: 13.7 s on 16 threads against 10.2 s on one.
    /// Multi-uprobe links (one close per binary) would fix this; aya 0.14
    /// cannot create them.
    fn detach_all(mut self) -> usize {
        let n = self.sessions.len();
        self.sessions.clear();
        drop(self);
        n
    }
}

/// Starts the discovery thread over `events`.
fn events_reader(
    events: ProcEvents,
    agent: &Agent,
    sel: Selector,
    tx: tokio::sync::mpsc::Sender<Found>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<std::thread::JoinHandle<()>> {
    events
        .spawn(
            agent.fast.clone(),
            agent.opts.pods.clone(),
            Box::new(move |s: &Seen| sel.matches(s.pid, &s.comm, &s.exe, &s.labels)),
            tx,
            stop,
        )
        .context("starting the discovery thread")
}

/// Info to start a hub with, before the agent fills in the hooks.
pub fn initial_info(node: &str) -> AgentInfo {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    AgentInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        node: node.into(),
        kernel,
        btf: std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
        started_unix_ns: unix_now_ns(),
        hooks: vec![],
    }
}
