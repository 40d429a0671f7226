//! `cargo xtask bench maps`: what map tracing costs (`tracer run` and
//! `--maps deep` against untraced and `go build -race`), and which racy map
//! uses `-race` and `--maps deep` each catch.

use std::process::Command;

use anyhow::{Result, bail};

use super::{
    stats::median,
    workload::{ROUNDS, bench_dir, elapsed_ns, workload_cmd},
};
use crate::{
    go::{build_go, newest_go},
    shell::{build_tracer, step, tracer_bin},
};

/// Map workload configurations: label, tracer arguments (None: untraced),
/// and whether the `-race` build runs.
const MAP_CONFIGS: [(&str, Option<&[&str]>, bool); 6] = [
    ("untraced", None, false),
    ("tracer run (default: --maps budget)", Some(&[]), false),
    ("--maps always", Some(&["--maps", "always"]), false),
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

pub(super) fn bench_maps() -> Result<()> {
    build_tracer()?;
    let (newest, go) = newest_go()?;
    let dir = bench_dir()?;
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
            let out = workload_cmd(bin, *tracer_args)
                .args(["-n", MAP_OPS, "-g", "1"])
                .output()?;
            if !out.status.success() {
                bail!(
                    "map workload failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            times[i].push(elapsed_ns(&String::from_utf8_lossy(&out.stdout))?);
        }
    }
    let med: Vec<f64> = times.iter().map(|t| median(t)).collect();
    let ops = MAP_OPS.parse::<f64>()?;
    println!("| configuration | ns/op (median of {ROUNDS}) | throughput vs untraced |");
    println!("|---|---|---|");
    for (i, (label, _, _)) in MAP_CONFIGS.iter().enumerate() {
        println!("| {label} | {:.1} | {:.4} |", med[i] / ops, med[0] / med[i]);
    }

    race_detection(&go, &dir)?;
    happens_before(&go, &dir)
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

/// The happens-before fixture's cases (tests/fixtures/hbrace), racy first.
const HB_CASES: [&str; 14] = [
    "race-field",
    "race-callback",
    "race-cache",
    "race-waitgroup",
    "race-closure",
    "mutex",
    "rwmutex",
    "channels",
    "waitgroup",
    "once",
    "cond",
    "atomic-pointer",
    "errgroup",
    "syncmap",
];
/// Repetitions of a case in one process.
const HB_REPEAT: &str = "10";

/// Happens-before detection against `-race` on the same patterns, side by
/// side: the program's run time untraced, with `-race` and under
/// `tracer run --maps deep` (the traced time the report gives, so attaching
/// and detaching the probes is shown apart), and what each found.
fn happens_before(go: &std::path::Path, dir: &std::path::Path) -> Result<()> {
    step(
        "happens-before patterns: go build -race against tracer run --maps deep (10 repetitions per process)",
    );
    let plain = dir.join("hbrace-plain");
    let race = dir.join("hbrace-race");
    build_go(go, "hbrace", &plain, false)?;
    build_go(go, "hbrace", &race, true)?;
    let report = std::env::temp_dir().join(format!("tracer-bench-hb-{}.json", std::process::id()));
    println!(
        "| case | untraced | -race | -race found | deep (traced time) | deep slowdown vs -race | deep found | deep wall incl. attach/detach |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let args = |case: &'static str| ["-case", case, "-repeat", HB_REPEAT];
    for case in HB_CASES {
        let t = std::time::Instant::now();
        Command::new(&plain).args(args(case)).output()?;
        let untraced = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        // Without this the race runtime sleeps 1 s at exit.
        let out = Command::new(&race)
            .env("GORACE", "atexit_sleep_ms=0")
            .args(args(case))
            .output()?;
        let race_secs = t.elapsed().as_secs_f64();
        let race_reports = String::from_utf8_lossy(&out.stderr)
            .matches("WARNING: DATA RACE")
            .count();
        let t = std::time::Instant::now();
        Command::new(tracer_bin())
            .args(["run", "--maps", "deep", "--tcp", "off", "--json-report"])
            .arg(&report)
            .arg("--")
            .arg(&plain)
            .args(args(case))
            .output()?;
        let wall = t.elapsed().as_secs_f64();
        let json: serde_json::Value = std::fs::read(&report)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let traced = json["duration_ns"].as_f64().unwrap_or(0.0) / 1e9;
        let found: u64 = json["findings"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter(|f| f["detection"] == "happens_before")
            .map(|f| f["count"].as_u64().unwrap_or(0))
            .sum();
        println!(
            "| {case} | {:.1} ms | {:.1} ms | {race_reports} report(s) | {:.1} ms | {:.1}x | {found} race(s) | {wall:.1} s |",
            untraced * 1e3,
            race_secs * 1e3,
            traced * 1e3,
            traced / race_secs.max(1e-9)
        );
    }
    let _ = std::fs::remove_file(&report);
    Ok(())
}
