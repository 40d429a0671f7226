//! The deep map tier on demand (`StartDeepMapTrace`): every map operation of
//! one process is probed for a bounded time, in an object of its own, then
//! the probes are dropped and the results stay with the process.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    core::Agent,
    discovery,
    hub::{Command, Refused},
    tables::SESSION_TABLES,
};
use crate::{
    ebpf::{ProbeStatus, Scope, Tracer},
    gobin::GoBinary,
    maps::{MapsMode, MapsReport, MapsState},
    report::{AnyFinding, Report},
};

/// Longest deep trace a client may ask for.
pub const MAX_DEEP: Duration = Duration::from_secs(600);

/// A deep trace in progress.
pub struct DeepTrace {
    tracer: Tracer,
    maps: MapsState,
    bin: Arc<GoBinary>,
    pid: u32,
    until: Instant,
}

impl DeepTrace {
    /// Attaches the deep-tier probes to `pid` (binary `bin`, reachable at
    /// `path`) for `duration`, narrowed to map calls from `sites` packages
    /// when not empty.
    pub fn start(
        bin: Arc<GoBinary>,
        path: &std::path::Path,
        pid: u32,
        duration: Duration,
        sites: &[String],
        tables: &[(&str, u32)],
    ) -> Result<(Self, Vec<ProbeStatus>)> {
        if duration.is_zero() || duration > MAX_DEEP {
            bail!(
                "a deep map trace lasts from 100 ms to {} s",
                MAX_DEEP.as_secs()
            );
        }
        let mut sized = tables.to_vec();
        sized.push(crate::ebpf::HB_RING);
        // Every map call is traced: more operation rows than a budgeted
        // session's (later sizes override earlier ones).
        sized.push((tracer_common::names::map::MAP_OPS, 4096));
        let mut tracer = Tracer::load_sized(false, &sized)?;
        let maps = MapsState::start(
            &mut tracer,
            &bin,
            path,
            pid,
            Scope::Pid(pid),
            crate::maps::MapsChoice {
                mode: MapsMode::Deep,
                sites,
                sync_funcs: &[],
                race_budget: crate::maps::budget::DEFAULT_BUDGET,
            },
        )?
        .context("deep map tier did not start")?;
        let statuses = maps.statuses.clone();
        Ok((
            Self {
                tracer,
                maps,
                bin,
                pid,
                until: Instant::now() + duration,
            },
            statuses,
        ))
    }

    /// True once the requested time is over.
    pub fn done(&self) -> bool {
        Instant::now() >= self.until
    }

    /// The deep tier's rows and findings for the process so far.
    pub fn report(&mut self) -> Result<MapsReport> {
        self.maps.poll(&self.tracer);
        Ok(self
            .maps
            .report(&self.tracer, &self.bin)?
            .only_pid(self.pid))
    }
}

/// Folds a deep trace's results into a process report: per-op rows join the
/// always-on rows of the same map, sync.Map rows and findings are added.
pub fn merge(report: &mut Report, deep: &MapsReport) {
    for row in &deep.maps {
        match report.maps.iter_mut().find(|m| m.address == row.address) {
            Some(m) => {
                m.ops = row.ops.clone();
                m.goroutines = row.goroutines;
            }
            None => report.maps.push(row.clone()),
        }
    }
    // Operation rows come from the deep trace; growth rows stay.
    report.map_sites.retain(|s| s.kind == "grow");
    report
        .map_sites
        .extend(deep.sites.iter().filter(|s| s.kind != "grow").cloned());
    report.sync_maps = deep.sync_maps.clone();
    report.map_op_hits = Some(deep.op_hits);
    report.happens_before = deep.happens_before.clone();
    for f in deep.findings.iter().filter(|f| f.kind != "map_fatal") {
        report
            .findings
            .insert(0, AnyFinding::Map(Box::new(f.clone())));
    }
}

impl Agent {
    pub(super) fn command(&mut self, cmd: Command) {
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
    pub(super) fn deep_running(&self) -> usize {
        self.traced
            .values()
            .filter(|t| t.deep.as_ref().is_some_and(|d| !d.done()))
            .count()
    }

    pub(super) fn start_deep(
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
    pub(super) fn stop_deep(&mut self, pid: u32) -> Result<(), Refused> {
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
}
