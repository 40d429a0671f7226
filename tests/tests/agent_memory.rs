//! Privileged test of what each newly seen binary costs the agent in memory
//! (issue "Hardening"): kernel memory of its eBPF tables, which the kernel
//! charges to the agent's memory cgroup, and the agent's own RSS.
//!
//! Before the fix, each binary's object pinned ≈32 MiB of kernel memory (its
//! hash tables preallocated at full size, per CPU for the aggregates) and
//! ≈4.6 MiB of RSS, so a DaemonSet limited to 128 MiB could hold three or
//! four binaries. Measured side by side in docs/benchmarks.md ("Hardening").

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use tracer_tests::{
    agent::AgentProc,
    build_newest, distinct_copies, privileged_test,
    process::{KillOnDrop, scratch_dir},
    procfs::{bpf_map_memlock, rss_kb},
    serial,
};

/// Binaries measured after the first (whose one-time costs, such as the
/// probe-cost calibration, are not per binary).
const MEASURED: u64 = 6;
/// Kernel memory one more binary may cost (19.6 MiB measured): the per-CPU
/// aggregates (lock waits ≈5.4 MiB, map operations ≈2.7 MiB), the stack
/// tables (2 × 2 MiB) and the LRU tables are preallocated; the pid tables
/// grow with use.
const KERNEL_PER_BINARY: u64 = 22 << 20;
/// Agent RSS one more binary may cost (debug build): its analysed sections
/// without DWARF, symbol index and two small mapped rings.
const RSS_PER_BINARY: u64 = 4 << 20;

#[test]
fn each_new_binary_costs_bounded_kernel_and_agent_memory() -> Result<()> {
    privileged_test!();
    let _serial = serial();
    let fixture = build_newest("contention")?;
    let dir = scratch_dir("agent-memory")?;
    let bins = distinct_copies(&fixture, &dir, "membin", MEASURED as usize + 1)?;
    let filter = format!("{}/", dir.display());
    let mut agent = AgentProc::start_offline(&["--exe", &filter])?;
    let pid = agent.pid();
    let start = |bin: &PathBuf| -> Result<KillOnDrop> {
        Ok(KillOnDrop(
            Command::new(bin)
                .args(["-g", "2", "-m", "5", "-hold", "1ms", "-linger", "60s"])
                .stdout(Stdio::null())
                .spawn()
                .context("starting a fixture copy")?,
        ))
    };
    let traced = |agent: &mut AgentProc, child: &KillOnDrop| {
        agent.wait_for_log(
            &format!("tracing pid {} ", child.0.id()),
            Duration::from_secs(60),
        )
    };
    let first = start(&bins[0])?;
    traced(&mut agent, &first)?;
    // Let the first binary's tables and the allocator settle.
    std::thread::sleep(Duration::from_secs(1));
    let (kernel0, rss0) = (bpf_map_memlock(pid)?, rss_kb(pid)? * 1024);
    let mut running = vec![first];
    for bin in &bins[1..] {
        let child = start(bin)?;
        traced(&mut agent, &child)?;
        running.push(child);
    }
    std::thread::sleep(Duration::from_secs(1));
    let (kernel1, rss1) = (bpf_map_memlock(pid)?, rss_kb(pid)? * 1024);
    let kernel = kernel1.saturating_sub(kernel0) / MEASURED;
    let rss = rss1.saturating_sub(rss0) / MEASURED;
    println!(
        "per binary: kernel tables {:.2} MiB, agent RSS {:.2} MiB ({MEASURED} binaries after the first)",
        kernel as f64 / (1 << 20) as f64,
        rss as f64 / (1 << 20) as f64
    );
    drop(running);
    let log = agent.log();
    let _ = agent.stop();
    let _ = std::fs::remove_dir_all(&dir);
    // Each binary did load its own tables: a measure of zero would mean
    // this test measured nothing.
    ensure!(
        kernel > 1 << 20,
        "no kernel memory per binary measured ({kernel} B):\n{log}"
    );
    ensure!(
        kernel <= KERNEL_PER_BINARY,
        "each binary costs {kernel} B of kernel memory, budget {KERNEL_PER_BINARY}"
    );
    ensure!(
        rss <= RSS_PER_BINARY,
        "each binary costs {rss} B of agent RSS, budget {RSS_PER_BINARY}"
    );
    Ok(())
}
