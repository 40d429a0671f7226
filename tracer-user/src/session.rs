//! One tracing session on one Go process: load, attach, refresh the live table,
//! watch for stuck waiters, and build the final report. `tracer run` and
//! `tracer attach` differ only in how the process starts and when it ends.

use std::{
    cell::{Cell, OnceCell},
    collections::HashMap,
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

pub use crate::options::{OutputOptions, TraceOptions};
use crate::{
    contention::{
        Located, Symbolizer, bias_from_entry_frame, build_holders, build_rows, waiters_by_site,
    },
    datasyms::DataSymbols,
    gobin::GoBinary,
    maps::MapsState,
    probes::{ProbeStatus, Scope, Tracer, enable_bpf_stats},
    rate_guard::{Action, RateGuard},
    report::{
        AnyFinding, Finding, HolderReport, Image, LockPauses, LockRef, LockReport, Report, Target,
    },
    stuck::{StuckWaits, monotonic_ns, read_goid},
    tcp::{TcpTracing, attach_tcp},
};

/// One read of the kernel tables a report is built from.
struct Tables {
    waits: Vec<(tracer_common::LockKey, crate::latency::Latency)>,
    waiters: Vec<tracer_common::WaiterKey>,
    wakes: Vec<(tracer_common::LockKey, u64)>,
    maps: Option<crate::maps::MapsReport>,
}

/// How long the lock probes stay detached once the rate guard trips.
pub const LOCK_PAUSE: Duration = Duration::from_secs(5);

/// How often the in-flight waits are scanned for stuck waiters.
pub const STUCK_SCAN: Duration = Duration::from_millis(250);

/// A traced process and the probes placed on it.
pub struct Session {
    pub tracer: Tracer,
    /// Shared with every other process running the same binary (agent).
    pub bin: Arc<GoBinary>,
    pub pid: u32,
    pub exe: String,
    pub probes: Vec<ProbeStatus>,
    started: Instant,
    /// Link-time entry of each probed function by wait kind: a recorded stack's
    /// frame 0 is that entry, which gives a PIE's load bias.
    entries: HashMap<u32, u64>,
    bias: Cell<Option<u64>>,
    data_syms: OnceCell<DataSymbols>,
    stuck: StuckWaits,
    /// Map probes and their fatal-event ring buffer; None with `--maps off`.
    maps: Option<MapsState>,
    /// Decides when the lock probes must pause; with what to re-attach them.
    guard: RateGuard,
    reattach: (PathBuf, Scope, bool),
    locks_paused: bool,
    /// TCP flow tracing; None when off or when the kernel lacks the hooks.
    tcp: Option<TcpTracing>,
    /// Why TCP flows are not traced, when they are not.
    tcp_off_reason: Option<String>,
    /// Kernel tables read in round `.0` (see [`Session::begin_round`]).
    tables: std::cell::RefCell<Option<(u64, Arc<Tables>)>>,
    round: u64,
    /// Keeps BPF statistics enabled for the session when asked for.
    _stats_fd: Option<std::os::fd::OwnedFd>,
}

impl Session {
    /// Attaches the lock probes to `bin` at `attach_path` for `pid`.
    pub fn start(
        mut tracer: Tracer,
        bin: impl Into<Arc<GoBinary>>,
        attach_path: &Path,
        pid: u32,
        exe: String,
        scope: Scope,
        opts: &TraceOptions,
    ) -> Result<Self> {
        let bin: Arc<GoBinary> = bin.into();
        let stats_fd = if opts.bpf_stats {
            Some(enable_bpf_stats()?)
        } else {
            None
        };
        tracer.add_target(pid)?;
        let probes = tracer.attach_locks(&bin, attach_path, scope, opts.holders);
        if let Some(failed) = probes.iter().find(|p| p.status == "failed") {
            anyhow::bail!(
                "could not attach {} probes: {}",
                failed.feature,
                failed.reason.as_deref().unwrap_or("unknown error")
            );
        }
        let maps = MapsState::start(
            &mut tracer,
            &bin,
            attach_path,
            pid,
            scope,
            opts.maps,
            &opts.maps_sites,
        )?;
        // TCP hooks are kernel-wide tracepoints filtered to this pid; a kernel
        // without them loses only the flow view, not the session.
        let (tcp, tcp_off_reason) = if let Some(tcp_opts) = &opts.tcp {
            match attach_tcp(&mut tracer, &[pid], tcp_opts) {
                Ok(t) => (Some(t), None),
                Err(e) => {
                    let why = format!("TCP flows not traced: {e:#}");
                    tracing::warn!("{why}");
                    (None, Some(why))
                }
            }
        } else {
            (None, Some("TCP flows not traced: --tcp off".into()))
        };
        for p in probes.iter().filter(|p| p.status == "missing") {
            tracing::info!("{}", p.reason.as_deref().unwrap_or(""));
        }
        let entries = probes
            .iter()
            .filter_map(|p| Some((p.kind, bin.function(p.function.as_deref()?)?.entry)))
            .collect();
        let bias = if bin.is_pie() { None } else { Some(0) };
        Ok(Self {
            tracer,
            bin,
            pid,
            exe,
            probes,
            started: Instant::now(),
            entries,
            bias: Cell::new(bias),
            data_syms: OnceCell::new(),
            stuck: StuckWaits::default(),
            maps,
            guard: RateGuard::new(opts.max_lock_rate, LOCK_PAUSE),
            reattach: (attach_path.to_path_buf(), scope, opts.holders),
            locks_paused: false,
            tcp,
            tcp_off_reason,
            tables: Default::default(),
            round: 0,
            _stats_fd: stats_fd,
        })
    }

    /// Load bias of the process: 0 unless PIE, where it is learnt from the first
    /// recorded stack (frame 0 is the probed function's entry).
    fn bias(&self, keys: impl Iterator<Item = (u32, i64)>) -> u64 {
        if let Some(b) = self.bias.get() {
            return b;
        }
        for (kind, stack_id) in keys {
            let Some(&entry) = self.entries.get(&kind) else {
                continue;
            };
            if let Some(f0) = self
                .tracer
                .lock_stack(stack_id)
                .and_then(|s| s.first().copied())
            {
                let b = bias_from_entry_frame(f0, entry);
                self.bias.set(Some(b));
                return b;
            }
        }
        0
    }

    /// Name of the global variable at runtime address `addr`, if it is one.
    fn lock_name(&self, addr: u64, bias: u64) -> Option<String> {
        self.data_syms
            .get_or_init(|| DataSymbols::parse(self.bin.data()))
            .name_of(addr.wrapping_sub(bias))
    }

    /// Applies the rate guard: detaches the lock probes while contended waits
    /// come faster than the limit, and re-attaches them after a pause.
    fn guard_locks(&mut self) {
        let Ok(count) = self.tracer.lock_wait_count() else {
            return;
        };
        match self.guard.observe(Instant::now(), count) {
            Action::Keep => {}
            Action::Pause => {
                tracing::warn!(
                    "more than {} contended waits/s: pausing lock probes for {}s to protect the program",
                    self.guard.limit(),
                    LOCK_PAUSE.as_secs()
                );
                match self.tracer.detach_locks() {
                    Ok(()) => self.locks_paused = true,
                    Err(e) => tracing::warn!("could not pause lock probes: {e:#}"),
                }
            }
            Action::Resume => {
                let (path, scope, holders) = self.reattach.clone();
                let statuses = self.tracer.attach_locks(&self.bin, &path, scope, holders);
                if let Some(f) = statuses.iter().find(|p| p.status == "failed") {
                    tracing::warn!(
                        "re-attaching lock probes failed: {}",
                        f.reason.as_deref().unwrap_or("")
                    );
                }
                self.locks_paused = false;
            }
        }
    }

    /// Scans the waits in progress for stuck waiters and applies the rate
    /// guard; call every [`STUCK_SCAN`].
    pub fn scan_stuck(&mut self, threshold: Duration) {
        self.poll_maps();
        self.guard_locks();
        if self.locks_paused {
            return;
        }
        let Ok(inflight) = self.tracer.lock_inflight() else {
            return;
        };
        let goid_off = self.bin.offsets().g_goid.map(|o| o.value);
        self.stuck.update(
            &inflight,
            monotonic_ns(),
            threshold.as_nanos() as u64,
            |k| read_goid(k.tgid, k.g, goid_off?),
        );
    }

    /// Drains the map feature's fatal-event ring buffer.
    pub fn poll_maps(&mut self) {
        if let Some(m) = self.maps.as_mut() {
            m.poll();
        }
    }

    /// Marks which stuck waits had ended when the process exited.
    pub fn settle_stuck(&mut self) {
        self.poll_maps();
        if let Ok(inflight) = self.tracer.lock_inflight() {
            self.stuck.settle(&inflight);
        }
    }

    /// Records `pid` too: another process running the same binary, whose
    /// probes (placed on the binary's inode for every process) are already
    /// live. Only for sessions started with [`Scope::AllProcesses`].
    pub fn add_pid(&mut self, pid: u32) -> Result<()> {
        self.tracer.add_target(pid)?;
        if let Some(m) = self.maps.as_mut() {
            m.add_pid(&mut self.tracer, pid)?;
        }
        Ok(())
    }

    /// Ids of the kernel tables that decide which pids are recorded
    /// (`TARGETS`, and `MAP_CONFIG` with the value each pid gets), so another
    /// thread can add a process the moment it execs.
    pub fn filter_tables(&self) -> Result<(u32, Option<(u32, tracer_common::maps::MapsConfig)>)> {
        let id = |name: &str| -> Result<u32> {
            match self.tracer.ebpf.map(name) {
                Some(aya::maps::Map::HashMap(m)) => Ok(m.info()?.id()),
                _ => anyhow::bail!("{name} is not a hash map"),
            }
        };
        let maps = match &self.maps {
            Some(m) => Some((id("MAP_CONFIG")?, m.cfg())),
            None => None,
        };
        Ok((id("TARGETS")?, maps))
    }

    /// Stops recording `pid` and frees its entries in the kernel tables.
    pub fn remove_pid(&mut self, pid: u32) {
        if let Err(e) = self.tracer.forget_pid(pid) {
            tracing::debug!("pid {pid}: freeing its lock entries: {e:#}");
        }
        if let Some(m) = self.maps.as_mut()
            && let Err(e) = m.forget_pid(&mut self.tracer, pid)
        {
            tracing::debug!("pid {pid}: freeing its map entries: {e:#}");
        }
        self.stuck.forget(pid);
    }

    /// The report of `pid` alone, for sessions that record several
    /// processes of one binary.
    pub fn report_for(&mut self, pid: u32) -> Result<Report> {
        let mut r = self.build_report_for(pid)?;
        r.tcp_off = self.tcp_off_reason.clone();
        Ok(r)
    }

    /// The report as of now. Collecting TCP flows moves closed flows out of the
    /// kernel's table, hence `&mut`.
    pub fn report(&mut self) -> Result<Report> {
        let tcp = match self.tcp.as_mut() {
            Some(t) => Some(t.report(&mut self.tracer)?),
            None => None,
        };
        self.begin_round();
        let mut report = self.build_report_for(self.pid)?;
        report.tcp = tcp;
        let (pauses, paused) = self.guard.paused(Instant::now());
        report.lock_probe_pauses = (pauses > 0).then(|| LockPauses {
            pauses,
            paused_ns: paused.as_nanos() as u64,
            limit_per_sec: self.guard.limit(),
        });
        report.tcp_off = self.tcp_off_reason.clone();
        Ok(report)
    }

    /// The kernel tables as read in this round: read once, then shared by
    /// the reports of every process of the binary (reading a table costs two
    /// syscalls per entry).
    fn tables(&self) -> Result<Arc<Tables>> {
        if let Some((round, t)) = self.tables.borrow().as_ref()
            && *round == self.round
        {
            return Ok(t.clone());
        }
        let t = Arc::new(Tables {
            waits: self.tracer.lock_waits()?,
            waiters: self.tracer.lock_waiters()?,
            wakes: self.tracer.unlock_wakes()?,
            maps: match &self.maps {
                Some(m) => Some(m.report(&self.tracer, &self.bin)?),
                None => None,
            },
        });
        *self.tables.borrow_mut() = Some((self.round, t.clone()));
        Ok(t)
    }

    /// Starts a new round: the next report reads the kernel tables afresh.
    /// The agent calls it once per snapshot, then reports each process.
    pub fn begin_round(&mut self) {
        self.round += 1;
    }

    fn build_report_for(&self, pid: u32) -> Result<Report> {
        let tables = self.tables()?;
        let waits: Vec<_> = tables
            .waits
            .iter()
            .filter(|(k, _)| k.tgid == pid)
            .cloned()
            .collect();
        let stuck: Vec<_> = self
            .stuck
            .iter()
            .filter(|w| w.key.tgid == pid)
            .cloned()
            .collect();
        let bias = self.bias(
            waits
                .iter()
                .map(|(k, _)| (k.kind, k.stack_id))
                .chain(stuck.iter().map(|w| (w.rec.kind, w.rec.stack_id))),
        );
        let sym = Symbolizer {
            bin: &self.bin,
            bias,
        };
        let waiters: Vec<_> = tables
            .waiters
            .iter()
            .filter(|w| w.tgid == pid)
            .copied()
            .collect();
        let waiters = waiters_by_site(&waiters);
        let mut rows = build_rows(&waits, &waiters, &sym, |id| self.tracer.lock_stack(id));
        for r in &mut rows {
            r.name = self.lock_name(r.address, bias);
        }
        let wakes: Vec<_> = tables
            .wakes
            .iter()
            .filter(|(k, _)| k.tgid == pid)
            .copied()
            .collect();
        let holders = build_holders(&wakes, &sym, |id| self.tracer.lock_stack(id))
            .into_iter()
            .map(|mut h| {
                h.name = self.lock_name(h.address, bias);
                HolderReport::from(&h)
            })
            .collect();
        let maps = tables.maps.clone().map(|m| m.only_pid(pid));
        let mut findings: Vec<AnyFinding> = stuck
            .iter()
            .map(|w| {
                let stack = self.tracer.lock_stack(w.rec.stack_id);
                let Located {
                    kind,
                    address,
                    stack: frames,
                    ..
                } = sym.locate(
                    w.rec.kind,
                    w.rec.lock_addr,
                    w.rec.caller_pc,
                    stack.as_deref(),
                );
                AnyFinding::Lock(Finding {
                    kind: "stuck_lock_wait",
                    pid: w.key.tgid,
                    goroutine: w.goid,
                    lock: LockRef {
                        address: format!("{address:#x}"),
                        kind,
                        name: self.lock_name(address, bias),
                    },
                    age_ns: w.age_ns,
                    ongoing: w.ongoing,
                    site: frames.first().cloned(),
                    stack: frames,
                })
            })
            .collect();
        // Map findings first: a crash or a data race matters more than a slow lock.
        let (map_rows, maps_lost, map_hits, sync_maps) = match maps {
            Some(m) => {
                findings.splice(
                    0..0,
                    m.findings.into_iter().map(|f| AnyFinding::Map(Box::new(f))),
                );
                (m.maps, Some(m.lost), Some(m.op_hits), m.sync_maps)
            }
            None => (vec![], None, None, vec![]),
        };
        Ok(Report {
            target: Target {
                pid,
                exe: self.exe.clone(),
                go_version: self.bin.build_info().go_version.clone(),
                go_version_source: self.bin.version_source(),
            },
            duration_ns: self.started.elapsed().as_nanos() as u64,
            probes: self.probes.clone(),
            locks: rows.iter().map(LockReport::from).collect(),
            holders,
            findings,
            maps: map_rows,
            sync_maps,
            map_probes: self
                .maps
                .as_ref()
                .map(|m| m.statuses.clone())
                .unwrap_or_default(),
            maps_lost,
            map_op_hits: map_hits,
            tcp: None,
            tcp_off: None,
            lock_probe_pauses: None,
            stuck_waits_dropped: self.stuck.dropped(pid),
            // Only once the load bias is known (always for non-PIE).
            image: self.bias.get().zip(self.bin.exec_segment()).map(
                |(bias, (vaddr, size, offset))| Image {
                    path: self.exe.clone(),
                    start: vaddr.wrapping_add(bias),
                    limit: vaddr.wrapping_add(bias).wrapping_add(size),
                    file_offset: offset,
                },
            ),
            bpf_stats: if self._stats_fd.is_some() {
                self.tracer.program_stats()
            } else {
                vec![]
            },
        })
    }

    /// Prints one live refresh to stderr: redrawn in place on a terminal, appended otherwise.
    pub fn print_live(&mut self, opts: &OutputOptions) {
        self.tracer.flush_logs();
        let table = match self.report() {
            Ok(r) => r.table(opts.top),
            Err(e) => format!("tracer: reading aggregates failed: {e:#}\n"),
        };
        let mut err = std::io::stderr().lock();
        if err.is_terminal() {
            let _ = write!(err, "\x1b[2J\x1b[H{table}");
        } else {
            let _ = write!(
                err,
                "--- {:.1}s ---\n{table}",
                self.started.elapsed().as_secs_f64()
            );
        }
        let _ = err.flush();
    }

    /// Empties the kernel's closed-flow ring buffer into this session (see
    /// [`crate::tcp::TCP_DRAIN`]).
    pub fn drain_tcp(&mut self) {
        if let Some(t) = self.tcp.as_mut() {
            t.collect_closed();
        }
    }

    /// Prints the final table to stdout and writes the JSON report if asked.
    pub fn finish(mut self, opts: &OutputOptions) -> Result<Report> {
        self.tracer.flush_logs();
        self.poll_maps();
        if let Some(t) = self.tcp.as_mut() {
            t.finishing();
        }
        let report = self.report()?;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(report.table(opts.top).as_bytes());
        let _ = out.flush();
        if let Some(path) = &opts.json_report {
            let json = serde_json::to_vec_pretty(&report)?;
            std::fs::write(path, json)
                .with_context(|| format!("writing JSON report to {}", path.display()))?;
        }
        Ok(report)
    }
}
