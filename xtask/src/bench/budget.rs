//! `cargo xtask bench budget` (also part of `bench maps`): the default,
//! budgeted map race detector on the service-shaped fixture
//! (tests/fixtures/service), side by side with the other modes and with
//! `go build -race`, alternated round by round: request throughput relative
//! to untraced, and whether and when each run reported the struct-field
//! race.

use std::{path::Path, process::Command};

use anyhow::{Context, Result};

use super::{
    stats::median,
    workload::{bench_dir, reported_cmd},
};
use crate::{
    go::{build_go, newest_go},
    shell::{build_tracer, step},
};

/// Label, tracer arguments (None: untraced), whether the `-race` build runs.
const CONFIGS: [(&str, Option<&[&str]>, bool); 6] = [
    ("untraced", None, false),
    (
        "tracer run --maps off (locks only)",
        Some(&["--maps", "off"]),
        false,
    ),
    (
        "tracer run --maps always",
        Some(&["--maps", "always"]),
        false,
    ),
    ("tracer run (default: --maps budget)", Some(&[]), false),
    ("go build -race", None, true),
    ("tracer run --maps deep", Some(&["--maps", "deep"]), false),
];
const ROUNDS: usize = 3;
const DURATION: &str = "15s";

/// Requests per second a run printed (None: the runtime's own map check
/// killed it, the race being real), and the report of a traced run.
fn run(
    bin: &Path,
    tracer_args: Option<&[&str]>,
    report: &Path,
) -> Result<(Option<f64>, serde_json::Value)> {
    let _ = std::fs::remove_file(report);
    let mut cmd = reported_cmd(bin, tracer_args, report);
    let out = cmd
        .env("GORACE", "atexit_sleep_ms=0")
        .args(["-duration", DURATION])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = std::fs::read(report)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if String::from_utf8_lossy(&out.stderr).contains("fatal error: concurrent map") {
        return Ok((None, json));
    }
    let field = |k: &str| -> Result<f64> {
        stdout
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(k))
            .with_context(|| {
                format!(
                    "service printed no {k}: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?
            .parse()
            .context("a number")
    };
    let (n, ns) = (field("requests=")?, field("elapsed_ns=")?);
    Ok((Some(n / (ns / 1e9)), json))
}

/// The route/refresh race in a report: its first sighting, seconds.
fn race_found(json: &serde_json::Value) -> Option<f64> {
    json["findings"]
        .as_array()?
        .iter()
        .filter(|f| f["kind"] == "concurrent_map_read_write")
        .filter_map(|f| f["first_seen_ns"].as_f64())
        .map(|ns| ns / 1e9)
        .reduce(f64::min)
}

pub(super) fn bench_budget() -> Result<()> {
    build_tracer()?;
    let (newest, go) = newest_go()?;
    let dir = bench_dir()?;
    let plain = dir.join(format!("service-go{newest}"));
    let race = dir.join(format!("service-race-go{newest}"));
    step(&format!(
        "building the service fixture with Go {newest} (plain and -race)"
    ));
    build_go(&go, "service", &plain, false)?;
    build_go(&go, "service", &race, true)?;
    let report =
        std::env::temp_dir().join(format!("tracer-bench-budget-{}.json", std::process::id()));
    step(&format!(
        "service fixture, {DURATION} per run, {ROUNDS} rounds alternated: requests/s relative to untraced"
    ));
    let mut rates: Vec<Vec<f64>> = vec![vec![]; CONFIGS.len()];
    let mut found: Vec<Vec<Option<f64>>> = vec![vec![]; CONFIGS.len()];
    let mut spent: Vec<String> = Vec::new();
    let mut died = vec![0usize; CONFIGS.len()];
    for _ in 0..ROUNDS {
        for (i, (_, args, is_race)) in CONFIGS.iter().enumerate() {
            let bin = if *is_race { &race } else { &plain };
            let (rate, json) = run(bin, *args, &report)?;
            match rate {
                Some(r) => rates[i].push(r),
                None => died[i] += 1,
            }
            found[i].push(race_found(&json));
            if args.is_some_and(|a| a.is_empty()) {
                let b = &json["race_budget"];
                spent.push(format!(
                    "{:.0} of {:.0} ms",
                    b["spent_ns"].as_f64().unwrap_or(0.0) / 1e6,
                    b["allowed_ns"].as_f64().unwrap_or(0.0) / 1e6
                ));
            }
        }
    }
    let untraced = median(&rates[0]);
    println!(
        "| configuration | requests/s (median of {ROUNDS}) | vs untraced | race reported (first seen) |"
    );
    println!("|---|---|---|---|");
    for (i, (label, args, is_race)) in CONFIGS.iter().enumerate() {
        let m = if rates[i].is_empty() {
            f64::NAN
        } else {
            median(&rates[i])
        };
        let mut cell = if *is_race {
            "see -race output".to_string()
        } else if args.is_none() {
            "-".to_string()
        } else {
            found[i]
                .iter()
                .map(|f| f.map_or("no".to_string(), |s| format!("yes ({s:.1} s)")))
                .collect::<Vec<_>>()
                .join(", ")
        };
        if died[i] > 0 {
            cell.push_str(&format!(
                "; {} run(s) killed by the runtime's own map check",
                died[i]
            ));
        }
        println!("| {label} | {m:.0} | {:.3} | {cell} |", m / untraced);
    }
    println!("\ndefault mode, probe cost per run: {}", spent.join("; "));
    let out = Command::new(&race)
        .env("GORACE", "atexit_sleep_ms=0")
        .args(["-duration", "2s"])
        .output()?;
    println!(
        "go build -race: {} DATA RACE report(s) in a 2 s run",
        String::from_utf8_lossy(&out.stderr)
            .matches("WARNING: DATA RACE")
            .count()
    );
    let _ = std::fs::remove_file(&report);
    Ok(())
}
