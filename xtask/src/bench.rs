//! `cargo xtask bench`: traced against untraced, side by side in one run.
//!
//! Runs are interleaved (untraced, traced, untraced, ...) so machine noise hits
//! both alike; the workload times itself, so tracer's start-up is not counted.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{
    setup::GO_VERSIONS,
    shell::{build_tracer, cache_dir, repo_root, run, step, tracer_bin},
};

const ROUNDS: usize = 5;

fn elapsed_ns(stdout: &str) -> Result<f64> {
    stdout
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("elapsed_ns="))
        .context("workload printed no elapsed_ns")?
        .parse()
        .context("elapsed_ns")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `what`: `locks`, `analysis` or `all`.
pub fn bench(what: &str) -> Result<()> {
    if !matches!(what, "locks" | "analysis" | "all") {
        bail!("unknown benchmark {what:?}: use locks, analysis or all");
    }
    if what != "analysis" {
        bench_locks()?;
    }
    if what != "locks" {
        crate::bench_analysis::bench_analysis()?;
    }
    Ok(())
}

fn bench_locks() -> Result<()> {
    build_tracer()?;
    let newest = GO_VERSIONS.last().context("no Go version")?;
    let go = cache_dir().join("go").join(newest).join("bin/go");
    let bin = cache_dir().join("bench").join(format!("bench-go{newest}"));
    step(&format!("building the bench workload with Go {newest}"));
    run(Command::new(&go)
        .current_dir(repo_root().join("tests/fixtures/bench"))
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", cache_dir().join("gocache"))
        .args(["build", "-o"])
        .arg(&bin)
        .arg("."))?;
    lock_overhead(&bin)?;
    probe_costs(&bin)?;
    Ok(())
}

/// A workload: mode, operation count, hold time inside the critical section.
const WORKLOADS: [(&str, &str, &str, &str); 3] = [
    (
        "uncontended: 1 goroutine, Lock; map write; Unlock",
        "uncontended",
        "5000000",
        "0s",
    ),
    (
        "contended, tiny critical section (pathological)",
        "contended",
        "2000000",
        "0s",
    ),
    (
        "contended, 20µs critical section",
        "contended",
        "40000",
        "20us",
    ),
];

/// How a workload run is observed.
const CONFIGS: [(&str, &[&str], bool); 4] = [
    ("untraced", &[], false),
    ("tracer", &[], true),
    ("block profile rate 1", &["-blockrate", "1"], false),
    ("mutex profile fraction 1", &["-mutexfrac", "1"], false),
];

fn run_workload(bin: &std::path::Path, traced: bool, args: &[&str]) -> Result<f64> {
    let mut cmd = if traced {
        let mut c = Command::new(tracer_bin());
        c.args(["run", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    let out = cmd.args(args).output()?;
    if !out.status.success() {
        bail!("workload failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    elapsed_ns(&String::from_utf8_lossy(&out.stdout))
}

/// Throughput of each configuration relative to untraced, runs interleaved.
fn lock_overhead(bin: &std::path::Path) -> Result<()> {
    step("lock tracing overhead: throughput relative to untraced (higher is better)");
    println!(
        "| workload | untraced ns/op (median of {ROUNDS}) | tracer | block profile rate 1 | mutex profile fraction 1 |"
    );
    println!("|---|---|---|---|---|");
    for (label, mode, n, hold) in WORKLOADS {
        let mut times: Vec<Vec<f64>> = vec![vec![]; CONFIGS.len()];
        for _ in 0..ROUNDS {
            for (i, (_, extra, traced)) in CONFIGS.iter().enumerate() {
                let mut args = vec!["-mode", mode, "-n", n, "-hold", hold];
                args.extend_from_slice(extra);
                times[i].push(run_workload(bin, *traced, &args)?);
            }
        }
        let med: Vec<f64> = times.into_iter().map(median).collect();
        let ops: f64 = n.parse()?;
        let ratio = |i: usize| med[0] / med[i];
        println!(
            "| {label} | {:.1} | {:.3} | {:.3} | {:.3} |",
            med[0] / ops,
            ratio(1),
            ratio(2),
            ratio(3)
        );
    }
    Ok(())
}

/// Per-probe kernel run time and hit rate, from one traced run with BPF stats on.
fn probe_costs(bin: &std::path::Path) -> Result<()> {
    step("per-probe cost (tracer run --bpf-stats)");
    println!("| workload | program | hits | hits/s | avg BPF run time ns |");
    println!("|---|---|---|---|---|");
    let report = std::env::temp_dir().join(format!("tracer-bench-{}.json", std::process::id()));
    for (label, mode, n, hold) in &WORKLOADS[1..] {
        let out = Command::new(tracer_bin())
            .args(["run", "--bpf-stats", "--json-report"])
            .arg(&report)
            .arg("--")
            .arg(bin)
            .args(["-mode", mode, "-n", n, "-hold", hold])
            .output()?;
        if !out.status.success() {
            bail!(
                "traced workload failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let secs = elapsed_ns(&String::from_utf8_lossy(&out.stdout))? / 1e9;
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report)?)?;
        for p in json["bpf_stats"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let hits = p["run_count"].as_u64().unwrap_or(0);
            if hits == 0 {
                continue;
            }
            let ns = p["run_time_ns"].as_u64().unwrap_or(0);
            println!(
                "| {label} | {} | {hits} | {:.0} | {:.0} |",
                p["program"].as_str().unwrap_or("?"),
                hits as f64 / secs,
                ns as f64 / hits as f64
            );
        }
    }
    let _ = std::fs::remove_file(&report);
    Ok(())
}
