//! The Go workloads the benchmarks run: starting one traced or not, and
//! reading the time it reports for itself (`crate::go` builds them).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::shell::{cache_dir, tracer_bin};

/// Rounds of interleaved runs per configuration (the lock and map benchmarks).
pub(super) const ROUNDS: usize = 5;

/// The directory benchmark builds are cached in, created.
pub(super) fn bench_dir() -> Result<PathBuf> {
    let dir = cache_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `bin` under `tracer run <tracer_args> --`, or alone for `None`; the
/// caller adds the workload's own arguments.
pub(super) fn workload_cmd(bin: &Path, tracer_args: Option<&[&str]>) -> Command {
    match tracer_args {
        Some(a) => {
            let mut c = Command::new(tracer_bin());
            c.arg("run").args(a).arg("--").arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

/// `bin` under `tracer run --tcp off --json-report REPORT <tracer_args> --`,
/// or alone for `None`.
pub(super) fn reported_cmd(bin: &Path, tracer_args: Option<&[&str]>, report: &Path) -> Command {
    match tracer_args {
        Some(a) => {
            let mut c = Command::new(tracer_bin());
            c.args(["run", "--tcp", "off", "--json-report"])
                .arg(report)
                .args(a)
                .arg("--")
                .arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

/// The `elapsed_ns=` a workload prints about itself.
pub(super) fn elapsed_ns(stdout: &str) -> Result<f64> {
    stdout
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("elapsed_ns="))
        .context("workload printed no elapsed_ns")?
        .parse()
        .context("elapsed_ns")
}
