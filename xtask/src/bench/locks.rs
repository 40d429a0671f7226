//! `cargo xtask bench locks`: what lock tracing costs against untraced
//! and Go's block and mutex profiles, and each probe's kernel run time.

use std::process::Command;

use anyhow::{Result, bail};

use super::{
    stats::median,
    workload::{elapsed_ns, workload_cmd},
};
use crate::{
    go::{build_go, newest_go},
    shell::{build_tracer, cache_dir, step, tracer_bin},
};

pub(super) fn bench_locks() -> Result<()> {
    build_tracer()?;
    let (newest, go) = newest_go()?;
    let bin = cache_dir().join("bench").join(format!("bench-go{newest}"));
    step(&format!("building the bench workload with Go {newest}"));
    build_go(&go, "bench", &bin, false)?;
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

/// Rounds of interleaved runs: the bar is a median of at least 7.
const LOCK_ROUNDS: usize = 7;

/// How a workload run is observed: its label, the workload's own extra
/// arguments, and `tracer run`'s arguments when traced.
type Config = (
    &'static str,
    &'static [&'static str],
    Option<&'static [&'static str]>,
);
const CONFIGS: [Config; 5] = [
    ("untraced", &[], None),
    ("tracer", &[], Some(&[])),
    (
        "tracer --mutex-exits ret",
        &[],
        Some(&["--mutex-exits", "ret"]),
    ),
    ("block profile rate 1", &["-blockrate", "1"], None),
    ("mutex profile fraction 1", &["-mutexfrac", "1"], None),
];

fn run_workload(bin: &std::path::Path, tracer: Option<&[&str]>, args: &[&str]) -> Result<f64> {
    let out = workload_cmd(bin, tracer).args(args).output()?;
    if !out.status.success() {
        bail!("workload failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    elapsed_ns(&String::from_utf8_lossy(&out.stdout))
}

/// Throughput of each configuration relative to untraced, runs interleaved.
fn lock_overhead(bin: &std::path::Path) -> Result<()> {
    step("lock tracing overhead: throughput relative to untraced (higher is better)");
    println!(
        "| workload | untraced ns/op (median of {LOCK_ROUNDS}) | tracer | tracer --mutex-exits ret | block profile rate 1 | mutex profile fraction 1 |"
    );
    println!("|---|---|---|---|---|---|");
    for (label, mode, n, hold) in WORKLOADS {
        let mut times: Vec<Vec<f64>> = vec![vec![]; CONFIGS.len()];
        for _ in 0..LOCK_ROUNDS {
            for (i, (_, extra, tracer)) in CONFIGS.iter().enumerate() {
                let mut args = vec!["-mode", mode, "-n", n, "-hold", hold];
                args.extend_from_slice(extra);
                times[i].push(run_workload(bin, *tracer, &args)?);
            }
        }
        let med: Vec<f64> = times.iter().map(|t| median(t)).collect();
        let ops: f64 = n.parse()?;
        let ratio = |i: usize| med[0] / med[i];
        println!(
            "| {label} | {:.1} | {:.3} | {:.3} | {:.3} | {:.3} |",
            med[0] / ops,
            ratio(1),
            ratio(2),
            ratio(3),
            ratio(4)
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
