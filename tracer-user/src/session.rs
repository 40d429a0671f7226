//! One tracing session on one Go process: load, attach, refresh the live table,
//! watch for stuck waiters, and build the final report. `tracer run` and
//! `tracer attach` differ only in how the process starts and when it ends.

use std::{
    io::{IsTerminal, Write},
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};
use tracer_common::names;

use anyhow::{Context, Result};

pub use crate::options::{OutputOptions, TraceOptions};
use crate::{
    ebpf::{ProbeStatus, Scope, Tracer, enable_bpf_stats},
    gobin::GoBinary,
    locks::{LockParts, LockTracing, read::LockTables},
    maps::MapsState,
    report::{AnyFinding, Image, Report, Target},
    tcp::{TcpTracing, attach_tcp},
};

/// One read of the kernel tables a report is built from.
struct Tables {
    locks: LockTables,
    maps: Option<crate::maps::MapsReport>,
}

/// How often the in-flight waits are scanned for stuck waiters.
pub const STUCK_SCAN: Duration = Duration::from_millis(250);

/// Sleeps until `due` (a [`Session::budget_due`]); forever when None, for a
/// `select!` branch disabled by its guard.
pub async fn sleep_until_due(due: Option<Instant>) {
    match due {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// A traced process and the probes placed on it.
pub struct Session {
    pub tracer: Tracer,
    /// Shared with every other process running the same binary (agent).
    pub bin: Arc<GoBinary>,
    pub pid: u32,
    pub exe: String,
    pub probes: Vec<ProbeStatus>,
    started: Instant,
    /// Lock probes, stuck waits and the rate guard.
    locks: LockTracing,
    /// Map probes and their fatal-event ring buffer; None with `--maps off`.
    maps: Option<MapsState>,
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

impl Drop for Session {
    /// A session whose tables are shared with other binaries' objects
    /// (the agent's) takes its rows with it; the tables outlive it.
    fn drop(&mut self) {
        if self.tracer.shares_tables() {
            for pid in self.tracer.targets() {
                self.remove_pid(pid);
            }
        }
    }
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
        let (locks, probes) = LockTracing::start(
            &mut tracer,
            &bin,
            attach_path,
            scope,
            opts.holders,
            opts.mutex_exits,
            opts.max_lock_rate,
        )?;
        let maps = MapsState::start(
            &mut tracer,
            &bin,
            attach_path,
            pid,
            scope,
            crate::maps::MapsChoice {
                mode: opts.maps,
                sites: &opts.maps_sites,
                sync_funcs: &opts.sync_funcs,
                race_budget: opts.race_budget,
            },
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
        Ok(Self {
            tracer,
            bin,
            pid,
            exe,
            probes,
            started: Instant::now(),
            locks,
            maps,
            tcp,
            tcp_off_reason,
            tables: Default::default(),
            round: 0,
            _stats_fd: stats_fd,
        })
    }

    /// Scans the waits in progress for stuck waiters and applies the rate
    /// guard; call every [`STUCK_SCAN`].
    pub fn scan_stuck(&mut self, threshold: Duration) {
        self.poll_maps();
        self.locks
            .scan_stuck(&mut self.tracer, &self.bin, threshold);
    }

    /// Drains the map feature's fatal-event ring buffer.
    pub fn poll_maps(&mut self) {
        if let Some(m) = self.maps.as_mut() {
            m.poll(&self.tracer);
        }
    }

    /// Runs the map race budget's controller if it is due; call at
    /// [`Session::budget_due`].
    pub fn poll_budget(&mut self) {
        if let Some(m) = self.maps.as_mut() {
            m.poll_budget(&mut self.tracer);
        }
    }

    /// When [`Session::poll_budget`] is due next; None without `--maps budget`.
    pub fn budget_due(&self) -> Option<Instant> {
        self.maps.as_ref().and_then(|m| m.budget_due())
    }

    /// Marks which stuck waits had ended when the process exited.
    pub fn settle_stuck(&mut self) {
        self.poll_maps();
        self.locks.settle_stuck(&self.tracer);
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
            Some(m) => Some((id(names::map::MAP_CONFIG)?, m.cfg())),
            None => None,
        };
        Ok((id(names::map::TARGETS)?, maps))
    }

    /// Stops recording `pid` and frees its entries in the kernel tables.
    pub fn remove_pid(&mut self, pid: u32) {
        let forgot = self
            .tracer
            .remove_target(pid)
            .and_then(|()| crate::locks::read::forget_pid(&mut self.tracer, pid));
        if let Err(e) = forgot {
            tracing::debug!("pid {pid}: freeing its lock entries: {e:#}");
        }
        if let Some(m) = self.maps.as_mut()
            && let Err(e) = m.forget_pid(&mut self.tracer, pid)
        {
            tracing::debug!("pid {pid}: freeing its map entries: {e:#}");
        }
        self.locks.forget_pid(pid);
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
        report.lock_probe_pauses = self.locks.pauses();
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
            locks: LockTables::read(&self.tracer)?,
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
        let LockParts {
            runtime_wait,
            locks,
            holders,
            findings,
        } = self
            .locks
            .report_for(&self.tracer, &self.bin, &tables.locks, pid);
        let maps = tables.maps.clone().map(|m| m.only_pid(pid));
        let mut findings: Vec<AnyFinding> = findings.into_iter().map(AnyFinding::Lock).collect();
        // Map findings first: a crash or a data race matters more than a slow lock.
        let race_budget = maps.as_ref().and_then(|m| m.race_budget.clone());
        let (map_rows, map_sites, maps_lost, map_hits, sync_maps, hb) = match maps {
            Some(m) => {
                findings.splice(
                    0..0,
                    m.findings.into_iter().map(|f| AnyFinding::Map(Box::new(f))),
                );
                (
                    m.maps,
                    m.sites,
                    Some(m.lost),
                    Some(m.op_hits),
                    m.sync_maps,
                    m.happens_before,
                )
            }
            None => (vec![], vec![], None, None, vec![], None),
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
            locks,
            runtime_lock_wait: runtime_wait,
            holders,
            findings,
            maps: map_rows,
            map_sites,
            sync_maps,
            map_probes: self
                .maps
                .as_ref()
                .map(|m| m.statuses.clone())
                .unwrap_or_default(),
            maps_lost,
            map_op_hits: map_hits,
            happens_before: hb,
            race_budget,
            tcp: None,
            tcp_off: None,
            lock_probe_pauses: None,
            stuck_waits_dropped: self.locks.stuck_dropped(pid),
            // Only once the load bias is known (always for non-PIE).
            image: self.locks.known_bias().zip(self.bin.exec_segment()).map(
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
