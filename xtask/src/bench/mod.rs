//! `cargo xtask bench`: traced against untraced, side by side in one run.
//!
//! Runs are interleaved (untraced, traced, untraced, ...) so machine noise hits
//! both alike; the workload times itself, so tracer's start-up is not counted.
//! One file per benchmark; `workload.rs` builds and runs the Go fixtures and
//! `stats.rs` summarises the times. Only this file dispatches: the benchmarks
//! import the two shared modules and never each other.

mod agent;
mod analysis;
mod budget;
mod locks;
mod maps;
mod realworld;
mod stats;
mod tcp;
mod workload;

use anyhow::{Result, bail};

/// `what`: `locks`, `analysis`, `maps` (with `budget`), `budget`, `agent`,
/// `tcp`, `realworld` or `all`.
pub fn bench(what: &str) -> Result<()> {
    if !matches!(
        what,
        "locks" | "analysis" | "maps" | "budget" | "agent" | "tcp" | "realworld" | "all"
    ) {
        bail!(
            "unknown benchmark {what:?}: use locks, analysis, maps, budget, agent, tcp, realworld or all"
        );
    }
    if matches!(what, "locks" | "all") {
        locks::bench_locks()?;
    }
    if matches!(what, "analysis" | "all") {
        analysis::bench_analysis()?;
    }
    if matches!(what, "maps" | "all") {
        maps::bench_maps()?;
    }
    if matches!(what, "budget" | "maps" | "all") {
        budget::bench_budget()?;
    }
    if matches!(what, "agent" | "all") {
        agent::bench_agent()?;
    }
    if matches!(what, "tcp" | "all") {
        tcp::bench_tcp()?;
    }
    if matches!(what, "realworld" | "all") {
        realworld::bench_realworld()?;
    }
    Ok(())
}
