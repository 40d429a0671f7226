//! The agent loop: discovers Go processes, traces each one, and publishes a
//! snapshot of everything every refresh, plus findings as they appear.
//!
//! Each traced process gets its own small eBPF object ([`Session`]), its
//! probes scoped to that pid: one process's probe storm or exit cannot touch
//! another's state, and freeing a process is dropping its object. The exec
//! and exit tracepoints and the TCP hooks are node-wide, in one shared object.

//!
//! The agent is split by concern: [`super::lifecycle`] (a process from exec
//! to exit), [`super::sessions`] (a binary's probes), [`super::flows`] (TCP
//! attribution), [`super::publish`] (snapshots and findings),
//! [`super::deep`] (deep-trace commands) and [`super::tables`] (kernel table
//! sizes). This file holds the options, the state and the event loop.

use super::sessions::{BinKey, BinSession, JobDone, Retired, Traced};
use super::shared_tables::SharedTables;
use crate::ebpf::SHARED_TABLES;
use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::{
    discovery::{self, BinaryCache, FastIndex, Found, ProcEvents, Seen},
    hub::{AgentInfo, HookInfo, HubWriter, ProcessInfo},
};
use crate::{
    clock::unix_now_ns,
    ebpf::Tracer,
    kernelfs, privileges,
    process::Selector,
    session::{STUCK_SCAN, TraceOptions},
    tcp::{TCP_DRAIN, TcpTracing, attach_tcp},
};

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

/// The agent's state between events.
pub struct Agent {
    pub(super) opts: AgentOptions,
    pub(super) hub: HubWriter,
    pub(super) shared: Tracer,
    /// The aggregate tables every binary's object shares; None where the
    /// agent may not mount its bpffs instance (each object then has its own).
    pub(super) tables: Option<Arc<SharedTables>>,
    pub(super) tcp: Option<TcpTracing>,
    pub(super) binaries: BinaryCache,
    pub(super) sessions: HashMap<BinKey, BinSession>,
    pub(super) traced: HashMap<u32, Traced>,
    pub(super) failed: VecDeque<ProcessInfo>,
    pub(super) retired: VecDeque<Retired>,
    pub(super) go_versions: BTreeSet<String>,
    pub(super) generation: u64,
    pub(super) started: Instant,
    /// Go processes gone before their probes were live.
    pub(super) missed: u64,
    /// Selected processes whose executable could not be opened (permission).
    pub(super) unreadable: u64,
    /// Set once the agent is shutting down: live processes are then
    /// reported as detached, not exited, and probes are dropped all at once.
    pub(super) stopping: bool,
    /// Live pids counted in `unreadable`, so a rescan does not count them again.
    pub(super) denied_pids: HashSet<u32>,
    /// Binaries being analysed, with the processes waiting for them.
    pub(super) jobs: HashMap<(u64, u64), Vec<Seen>>,
    /// Filter tables of binaries with live probes, shared with the
    /// discovery thread.
    pub(super) fast: FastIndex,
    pub(super) job_tx: tokio::sync::mpsc::UnboundedSender<JobDone>,
    pub(super) job_rx: tokio::sync::mpsc::UnboundedReceiver<JobDone>,
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
        let tables = match SharedTables::new() {
            Ok(t) => {
                hooks.push(HookInfo {
                    feature: "shared-tables".into(),
                    mechanism: "bpffs".into(),
                    status: "attached".into(),
                    reason: Some(
                        "one set of aggregate tables for every traced binary, in the agent's private bpffs instance".into(),
                    ),
                });
                Some(Arc::new(t))
            }
            Err(e) => {
                tracing::warn!(
                    "each traced binary gets its own kernel tables (≈20 MiB each): {e:#}"
                );
                hooks.push(HookInfo {
                    feature: "shared-tables".into(),
                    mechanism: "bpffs".into(),
                    status: "failed".into(),
                    reason: Some(format!(
                        "each traced binary gets its own kernel tables: {e:#}"
                    )),
                });
                None
            }
        };
        hooks.push(HookInfo {
            feature: "locks".into(),
            mechanism: "uprobe".into(),
            status: "attached".into(),
            reason: Some("per process, on the Go runtime's lock slow paths".into()),
        });
        let mut maps_reason = format!("tier {:?}", opts.session.maps).to_lowercase();
        if opts.session.maps == crate::maps::MapsMode::Budget {
            // Measured once here, before anything is traced, so no
            // binary's first controller step waits for it.
            let costs = crate::maps::probes::load(&mut shared)
                .and_then(|()| crate::maps::budget::calibrate::costs(&mut shared));
            maps_reason += &match costs {
                Ok(c) => format!(
                    "; one uprobe trap costs {:.1} µs, a growth probe hit {:.1} µs (measured)",
                    c.trap_ns / 1000.0,
                    c.growth_ns / 1000.0
                ),
                Err(e) => {
                    tracing::warn!("map race budget off: {e:#}");
                    format!("; no call site will be probed: {e:#}")
                }
            };
        }
        hooks.push(HookInfo {
            feature: "maps".into(),
            mechanism: "uprobe".into(),
            status: if opts.session.maps == crate::maps::MapsMode::Off {
                "off".into()
            } else {
                "attached".into()
            },
            reason: Some(maps_reason),
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
                tables,
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

    /// Processes traced now.
    pub fn traced_pids(&self) -> Vec<u32> {
        self.traced.keys().copied().collect()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }
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
        let budget = agent.budget_due();
        tokio::select! {
            // New processes first: their probes must be live within ms.
            biased;
            Some(found) = events.recv() => {
                agent.found(found);
                agent.drain(&mut events);
            }
            _ = &mut shutdown => break,
            _ = crate::session::sleep_until_due(budget), if budget.is_some() => agent.poll_budgets(),
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
