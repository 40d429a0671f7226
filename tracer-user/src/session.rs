//! One tracing session on one Go process: load, attach, refresh the live table,
//! and build the final report. `tracer run` and `tracer attach` differ only in
//! how the process starts and when the session ends.

use std::{
    cell::Cell,
    io::{IsTerminal, Write},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::{
    contention::{Symbolizer, bias_from_entry_frame, build_rows},
    gobin::GoBinary,
    probes::{ProbeStatus, Scope, Tracer, mutex_slow_path},
    report::{LockReport, Report, Target},
};

/// Output choices shared by `run` and `attach`.
#[derive(Clone, Debug)]
pub struct OutputOptions {
    /// Refresh the contention table every `interval` while tracing.
    pub live: bool,
    pub interval: Duration,
    /// Rows shown in tables.
    pub top: usize,
    pub json_report: Option<PathBuf>,
}

/// A traced process and the probes placed on it.
pub struct Session {
    pub tracer: Tracer,
    pub bin: GoBinary,
    pub pid: u32,
    pub exe: String,
    pub probes: Vec<ProbeStatus>,
    started: Instant,
    /// Link-time entry of the probed mutex function, to derive a PIE's load bias.
    mutex_entry: Option<u64>,
    bias: Cell<Option<u64>>,
}

impl Session {
    /// Loads the probes and attaches them to `bin` at `attach_path` for `pid`.
    pub fn start(
        mut tracer: Tracer,
        bin: GoBinary,
        attach_path: &Path,
        pid: u32,
        exe: String,
        scope: Scope,
    ) -> Result<Self> {
        tracer.add_target(pid)?;
        let status = tracer.attach_mutex(&bin, attach_path, scope);
        if status.status == "failed" {
            anyhow::bail!(
                "could not attach mutex probes: {}",
                status.reason.as_deref().unwrap_or("unknown error")
            );
        }
        if let Some(r) = &status.reason {
            tracing::warn!("{r}");
        }
        let mutex_entry = mutex_slow_path(&bin).map(|f| f.entry);
        let bias = if bin.is_pie() { None } else { Some(0) };
        Ok(Self {
            tracer,
            bin,
            pid,
            exe,
            probes: vec![status],
            started: Instant::now(),
            mutex_entry,
            bias: Cell::new(bias),
        })
    }

    /// Load bias of the process: 0 unless PIE, where it is learnt from the first
    /// recorded stack (frame 0 is the probed function's entry).
    fn bias(&self, waits: &[(tracer_common::LockKey, crate::latency::Latency)]) -> u64 {
        if let Some(b) = self.bias.get() {
            return b;
        }
        let Some(entry) = self.mutex_entry else {
            return 0;
        };
        for (k, _) in waits {
            if let Some(f0) = self
                .tracer
                .lock_stack(k.stack_id)
                .and_then(|s| s.first().copied())
            {
                let b = bias_from_entry_frame(f0, entry);
                self.bias.set(Some(b));
                return b;
            }
        }
        0
    }

    /// The report as of now.
    pub fn report(&self) -> Result<Report> {
        let waits = self.tracer.lock_waits()?;
        let sym = Symbolizer {
            bin: &self.bin,
            bias: self.bias(&waits),
        };
        let rows = build_rows(&waits, &sym, |id| self.tracer.lock_stack(id));
        Ok(Report {
            target: Target {
                pid: self.pid,
                exe: self.exe.clone(),
                go_version: self.bin.build_info().go_version.clone(),
            },
            duration_ns: self.started.elapsed().as_nanos() as u64,
            probes: self.probes.clone(),
            locks: rows.iter().map(LockReport::from).collect(),
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

    /// Prints the final table to stdout and writes the JSON report if asked.
    pub fn finish(mut self, opts: &OutputOptions) -> Result<Report> {
        self.tracer.flush_logs();
        let report = self.report()?;
        print!("{}", report.table(opts.top));
        if let Some(path) = &opts.json_report {
            let json = serde_json::to_vec_pretty(&report)?;
            std::fs::write(path, json)
                .with_context(|| format!("writing JSON report to {}", path.display()))?;
        }
        Ok(report)
    }
}
