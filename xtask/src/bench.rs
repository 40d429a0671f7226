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

pub(crate) fn elapsed_ns(stdout: &str) -> Result<f64> {
    stdout
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("elapsed_ns="))
        .context("workload printed no elapsed_ns")?
        .parse()
        .context("elapsed_ns")
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `what`: `locks`, `analysis`, `maps` or `all`.
pub fn bench(what: &str) -> Result<()> {
    if !matches!(
        what,
        "locks" | "analysis" | "maps" | "agent" | "tcp" | "all"
    ) {
        bail!("unknown benchmark {what:?}: use locks, analysis, maps, agent, tcp or all");
    }
    if matches!(what, "locks" | "all") {
        bench_locks()?;
    }
    if matches!(what, "analysis" | "all") {
        crate::bench_analysis::bench_analysis()?;
    }
    if matches!(what, "maps" | "all") {
        bench_maps()?;
    }
    if matches!(what, "agent" | "all") {
        crate::bench_agent::bench_agent()?;
    }
    if matches!(what, "tcp" | "all") {
        crate::bench_tcp::bench_tcp()?;
    }
    Ok(())
}

/// Builds the Go program in `tests/fixtures/<fixture>` to `out`, with `-race`
/// (and cgo, which the race detector needs) when `race` is set.
pub(crate) fn build_go(
    go: &std::path::Path,
    fixture: &str,
    out: &std::path::Path,
    race: bool,
) -> Result<()> {
    let mut cmd = Command::new(go);
    cmd.current_dir(repo_root().join("tests/fixtures").join(fixture))
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", if race { "1" } else { "0" })
        .env("GOCACHE", cache_dir().join("gocache"))
        .arg("build");
    if race {
        cmd.arg("-race");
    }
    run(cmd.arg("-o").arg(out).arg("."))
}

/// Map workload configurations: label, tracer arguments (None: untraced),
/// and whether the `-race` build runs.
const MAP_CONFIGS: [(&str, Option<&[&str]>, bool); 5] = [
    ("untraced", None, false),
    ("tracer run (maps always)", Some(&[]), false),
    ("--maps deep", Some(&["--maps", "deep"]), false),
    (
        "--maps deep --maps-sites main",
        Some(&["--maps", "deep", "--maps-sites", "main"]),
        false,
    ),
    ("go build -race", None, true),
];

/// Map workload operations, in one goroutine (no lock contention, so the
/// lock probes stay out of the numbers): modest, since each operation costs
/// two uprobe traps (~40 µs here) under `--maps deep`.
const MAP_OPS: &str = "40000";

fn bench_maps() -> Result<()> {
    build_tracer()?;
    let newest = GO_VERSIONS.last().context("no Go version")?;
    let go = cache_dir().join("go").join(newest).join("bin/go");
    let dir = cache_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let plain = dir.join(format!("mapbench-go{newest}"));
    let race = dir.join(format!("mapbench-race-go{newest}"));
    step(&format!(
        "building the map workload with Go {newest} (plain and -race)"
    ));
    build_go(&go, "mapbench", &plain, false)?;
    build_go(&go, "mapbench", &race, true)?;

    step("map tracing overhead: throughput relative to untraced (higher is better)");
    let mut times: Vec<Vec<f64>> = vec![vec![]; MAP_CONFIGS.len()];
    for _ in 0..ROUNDS {
        for (i, (_, tracer_args, is_race)) in MAP_CONFIGS.iter().enumerate() {
            let bin = if *is_race { &race } else { &plain };
            let mut cmd = match tracer_args {
                Some(a) => {
                    let mut c = Command::new(tracer_bin());
                    c.arg("run").args(*a).arg("--").arg(bin);
                    c
                }
                None => Command::new(bin),
            };
            let out = cmd.args(["-n", MAP_OPS, "-g", "1"]).output()?;
            if !out.status.success() {
                bail!(
                    "map workload failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            times[i].push(elapsed_ns(&String::from_utf8_lossy(&out.stdout))?);
        }
    }
    let med: Vec<f64> = times.into_iter().map(median).collect();
    let ops = MAP_OPS.parse::<f64>()?;
    println!("| configuration | ns/op (median of {ROUNDS}) | throughput vs untraced |");
    println!("|---|---|---|");
    for (i, (label, _, _)) in MAP_CONFIGS.iter().enumerate() {
        println!("| {label} | {:.1} | {:.4} |", med[i] / ops, med[0] / med[i]);
    }

    race_detection(&go, &dir)
}

/// Racy modes of `tests/fixtures/maps`, and the control.
const RACY_MODES: [&str; 4] = ["writers", "readwrite", "iterwrite", "rwlocked"];

/// Which racy modes of the maps fixture `-race` and `--maps deep` catch.
fn race_detection(go: &std::path::Path, dir: &std::path::Path) -> Result<()> {
    step("races caught: go build -race against tracer run --maps deep");
    let plain = dir.join("maps-plain");
    let race = dir.join("maps-race");
    build_go(go, "maps", &plain, false)?;
    build_go(go, "maps", &race, true)?;
    let report =
        std::env::temp_dir().join(format!("tracer-bench-maps-{}.json", std::process::id()));
    println!("| mode | -race | -race run time | --maps deep | --maps deep run time |");
    println!("|---|---|---|---|---|");
    for mode in RACY_MODES {
        let args = ["-mode", mode, "-n", "300"];
        let t = std::time::Instant::now();
        let out = Command::new(&race).args(args).output()?;
        let race_secs = t.elapsed().as_secs_f64();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Reports whose stacks are in the map implementation are map races;
        // the rest are races on other variables (the fixture's `sink`).
        let reports: Vec<&str> = stderr.split("WARNING: DATA RACE").skip(1).collect();
        let on_map = reports
            .iter()
            .filter(|r| r.contains("runtime.map") || r.contains("internal/runtime/maps."))
            .count();
        let mut race_cell = format!(
            "{on_map} map race report(s), {} other",
            reports.len() - on_map
        );
        if stderr.contains("fatal error: concurrent map") {
            race_cell.push_str("; runtime fatal error");
        }
        let t = std::time::Instant::now();
        Command::new(tracer_bin())
            .args(["run", "--maps", "deep", "--json-report"])
            .arg(&report)
            .arg("--")
            .arg(&plain)
            .args(args)
            .output()?;
        let deep_secs = t.elapsed().as_secs_f64();
        let json: serde_json::Value = std::fs::read(&report)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let mut kinds: Vec<String> = json["findings"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|f| f["kind"].as_str())
            .filter(|k| k.starts_with("concurrent_map"))
            .map(str::to_string)
            .collect();
        if json["findings"]
            .as_array()
            .is_some_and(|a| a.iter().any(|f| f["kind"] == "map_fatal"))
        {
            // The runtime's own check fired (and was captured).
            kinds.push("runtime fatal error (captured)".to_string());
        }
        kinds.sort();
        kinds.dedup();
        let deep_cell = if kinds.is_empty() {
            "nothing".to_string()
        } else {
            format!("caught: {}", kinds.join(", "))
        };
        println!("| {mode} | {race_cell} | {race_secs:.2} s | {deep_cell} | {deep_secs:.2} s |");
    }
    let _ = std::fs::remove_file(&report);
    Ok(())
}

fn bench_locks() -> Result<()> {
    build_tracer()?;
    let newest = GO_VERSIONS.last().context("no Go version")?;
    let go = cache_dir().join("go").join(newest).join("bin/go");
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
