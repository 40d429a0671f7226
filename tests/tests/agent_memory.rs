//! Privileged test of what each newly seen binary costs the agent in memory
//! (issue "Hardening"): kernel memory of its eBPF tables, which the kernel
//! charges to the agent's memory cgroup, and the agent's own RSS.
//!
//! Before the fixes, each binary's object pinned ≈32 MiB of kernel memory
//! (its hash tables preallocated at full size, per CPU for the aggregates),
//! then ≈19.6 MiB once sized, and ≈4.6 MiB of RSS. Now the aggregate tables
//! are shared by every binary's object, so a second test checks that
//! processes of binaries traced at once still get their own numbers, and
//! only those. Measured side by side in docs/benchmarks.md ("Hardening").

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use tracer_tests::{
    agent::AgentProc,
    agent::process_report,
    build_newest, distinct_copies, fixture_value, privileged_test,
    process::{KillOnDrop, scratch_dir},
    procfs::{bpf_map_memlock, rss_kb},
    serial,
};

/// Binaries measured after the first (whose one-time costs, such as the
/// probe-cost calibration, are not per binary).
const MEASURED: u64 = 6;
/// Kernel memory one more binary may cost (5.7 MiB measured): its stack
/// tables (2 × 2 MiB), rings and per-binary counters. The aggregates (lock
/// waits, map operations, ≈8 MiB on 2 CPUs) are the agent's once, shared
/// by every binary (19.6 MiB per binary when each had its own).
const KERNEL_PER_BINARY: u64 = 8 << 20;
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
    ensure_shared(&agent)?;
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
        "first binary (with the shared tables): kernel tables {:.2} MiB; per binary: kernel tables {:.2} MiB, agent RSS {:.2} MiB ({MEASURED} binaries after the first)",
        kernel0 as f64 / (1 << 20) as f64,
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

/// The agent shares one set of aggregate tables between binaries; where it
/// could not, it says so in its log (and each binary pays ≈20 MiB).
fn ensure_shared(agent: &AgentProc) -> Result<()> {
    let log = agent.log();
    ensure!(
        !log.contains("gets its own kernel tables"),
        "the agent could not share its tables:\n{log}"
    );
    Ok(())
}

/// Two binaries traced at once write the same kernel tables: each process
/// must still report its own waits, all of them and no more, against the
/// time each program measured in its own `mu.Lock()` calls.
#[test]
fn binaries_sharing_tables_each_report_their_own_waits() -> Result<()> {
    privileged_test!();
    let _serial = serial();
    let fixture = build_newest("contention")?;
    let dir = scratch_dir("shared-tables")?;
    let bins = distinct_copies(&fixture, &dir, "sharebin", 2)?;
    let filter = format!("{}/", dir.display());
    let mut agent = AgentProc::start_offline(&["--refresh", "200ms", "--exe", &filter])?;
    // First runs get both binaries analysed and probed, so the measured
    // runs are traced from their exec on (the discovery thread adds them).
    for bin in &bins {
        let out = Command::new(bin)
            .args(["-g", "1", "-m", "1", "-hold", "1ms", "-linger", "1s"])
            .output()
            .context("warm-up run")?;
        ensure!(out.status.success(), "warm-up run failed");
        agent.wait_for_log(
            &format!("analysed {}", bin.display()),
            Duration::from_secs(60),
        )?;
    }
    ensure_shared(&agent)?;
    // Different loads, so a row counted for the wrong process shows.
    let loads = [
        ["-g", "4", "-m", "60", "-hold", "1ms"],
        ["-g", "2", "-m", "120", "-hold", "2ms"],
    ];
    let children = bins
        .iter()
        .zip(loads)
        .map(|(bin, args)| {
            Command::new(bin)
                .args(args)
                .stdout(Stdio::piped())
                .spawn()
                .context("starting a measured run")
        })
        .collect::<Result<Vec<_>>>()?;
    let mut runs = vec![];
    for child in children {
        let pid = child.id();
        let out = child.wait_with_output().context("measured run")?;
        ensure!(out.status.success(), "measured run {pid} failed");
        runs.push((pid, String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    std::thread::sleep(Duration::from_millis(800));
    let log = agent.log();
    let report = agent.stop()?;
    let _ = std::fs::remove_dir_all(&dir);
    for (pid, stdout) in runs {
        let r = process_report(&report, pid)
            .with_context(|| format!("pid {pid} not reported; agent log:\n{log}"))?;
        let typed = tracer_tests::report::Report::parse(r)?;
        let own_wait = fixture_value::<u64>(&stdout, "wait_ns")?;
        let total = typed.wait_ns_total();
        ensure!(typed.contentions() > 0, "pid {pid}: no waits: {r:#}");
        let diff = (total as f64 - own_wait as f64).abs() / own_wait.max(1) as f64;
        ensure!(
            diff <= 0.25,
            "pid {pid}: tracer total {total} vs the program's own {own_wait} ({:.0}% off)\n{stdout}",
            diff * 100.0
        );
    }
    Ok(())
}
