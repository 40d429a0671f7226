//! A process's life with the agent: seen at exec (or by a rescan), selected,
//! its binary analysed and probed, traced, scanned for stuck waits, and
//! retired at exit with its last report.

use super::core::Agent;
use super::publish::report_of;
use super::sessions::{
    AnalysisSlot, BinKey, BinSession, IDLE_KEEP, JobDone, MAX_RETIRED, Retired, Traced,
    drop_off_loop, info_of, rewritten, start_session,
};
use std::{
    collections::{BTreeSet, HashSet, VecDeque},
    sync::Arc,
    time::Instant,
};

use super::{
    discovery::{self, BinaryCache, FastTargets, Found, Kind, Seen},
    hub::{ProcState, ProcessInfo},
};
use crate::{
    clock::monotonic_ns,
    gobin::GoBinary,
    process::procfs,
    session::Session,
    tcp::{TcpReport, add_tcp_pid, flows::FlowTotals},
};

/// Bound of the set of live pids already counted as unreadable.
const MAX_DENIED_PIDS: usize = 65_536;
/// Processes remembered as failed (newest kept).
const MAX_FAILED: usize = 256;

impl Agent {
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
    pub(super) fn analyse(&mut self, w: Seen, devino: (u64, u64), file: std::fs::File) {
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
        let tables = self.tables.clone();
        let tx = self.job_tx.clone();
        tokio::task::spawn_blocking(move || {
            let _slot = AnalysisSlot::take();
            let t0 = Instant::now();
            let kind = BinaryCache::analyse(file, display);
            let analysis = t0.elapsed();
            let session = match (&kind, start_for) {
                (Kind::Go(bin, file, _), Some((pid, exe))) if !bin.is_pie() => Some(
                    start_session(tables.as_deref(), &opts, pid, bin.clone(), file, exe, false)
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
    pub(super) fn index_fast(&mut self, devino: (u64, u64), session: &Session) {
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
    pub(super) fn unfilter(&mut self, w: &Seen, (dev, ino): (u64, u64)) {
        if w.fast
            && let Some(bs) = self.sessions.get_mut(&(dev, ino, 0))
        {
            bs.session.remove_pid(w.pid);
        }
    }

    /// A selected process whose binary the agent may not open: counted, and
    /// said in the log (the first time, then every 1000th) instead of being
    /// passed over in silence.
    pub(super) fn denied(&mut self, w: &Seen) {
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

    pub(super) fn fail(&mut self, w: &Seen, bin: &GoBinary, reason: String) {
        tracing::warn!("pid {} ({}): not traced: {reason}", w.pid, w.comm);
        let mut info = info_of(w, bin);
        info.state = ProcState::Failed;
        info.reason = Some(reason);
        self.remember_failed(info);
    }

    /// Traces a process of a Go binary already analysed.
    pub(super) fn trace(
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
                    self.tables.as_deref(),
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

    pub(super) fn remember_failed(&mut self, info: ProcessInfo) {
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
    pub(super) fn retire(
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

    pub(super) fn retire_one(&mut self, pid: u32, node_tcp: Option<&TcpReport>) {
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

    /// When the map race budget of a traced binary is due next.
    pub fn budget_due(&self) -> Option<Instant> {
        self.sessions
            .values()
            .filter(|b| !b.pids.is_empty())
            .filter_map(|b| b.session.budget_due())
            .min()
    }

    /// Runs the map race budgets that are due. Each step only reads
    /// counters and attaches: detaches go to the closer thread, so new
    /// processes wait for no kernel call here.
    pub fn poll_budgets(&mut self) {
        let now = Instant::now();
        for bs in self.sessions.values_mut().filter(|b| !b.pids.is_empty()) {
            if bs.session.budget_due().is_some_and(|d| d <= now) {
                bs.session.poll_budget();
            }
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
}
