//! The deep map tier on demand (`StartDeepMapTrace`): every map operation of
//! one process is probed for a bounded time, in an object of its own, then
//! the probes are dropped and the results stay with the process.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

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
        let mut tracer = Tracer::load_sized(false, tables)?;
        let maps = MapsState::start(
            &mut tracer,
            &bin,
            path,
            pid,
            Scope::Pid(pid),
            MapsMode::Deep,
            sites,
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
        self.maps.poll();
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
    report.sync_maps = deep.sync_maps.clone();
    report.map_op_hits = Some(deep.op_hits);
    for f in deep.findings.iter().filter(|f| f.kind != "map_fatal") {
        report
            .findings
            .insert(0, AnyFinding::Map(Box::new(f.clone())));
    }
}
