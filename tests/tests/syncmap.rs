//! Privileged tests of the sync.Map counting and advice of `--maps deep`
//! (docs/maps.md), on a Go ≤ 1.23 (classic `sync.Map`) and a Go ≥ 1.24
//! (`internal/sync.HashTrieMap`) build of `tests/fixtures/syncmap`.
//!
//! Ground truth comes from the fixture: how many calls of each method each
//! mode makes on the global `main.m`, whose address `go tool nm` gives.

use std::process::Command;

use anyhow::{Context, Result, ensure};
use tracer_tests::{
    GoToolchain, Variant, build_fixture, classic_and_swiss, privileged_test,
    report::{Report, SyncMapRow},
    run_tracer,
};

/// Runs the fixture under `tracer run --maps deep` and returns the
/// `sync_maps` row of `main.m`, and a context string for failures.
fn run_mode(tc: &GoToolchain, mode: &str, n: u64) -> Result<(SyncMapRow, String)> {
    let bin = build_fixture(tc, "syncmap", Variant::Plain)?;
    let nm = Command::new(&tc.go)
        .args(["tool", "nm"])
        .arg(&bin)
        .output()
        .context("go tool nm")?;
    let nm = String::from_utf8_lossy(&nm.stdout);
    let addr = nm
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[2] == "main.m").then(|| f[0].to_string())
        })
        .context("main.m not in the symbol table")?;
    let addr = format!("{:#x}", u64::from_str_radix(&addr, 16)?);
    let bin = bin.to_str().context("fixture path")?;
    let n = n.to_string();
    let out = run_tracer(
        &["run", "--maps", "deep", "--", bin, "-mode", mode, "-n", &n],
        true,
    )?;
    let ctx = format!(
        "go {} -mode {mode}: status {:?}\nstdout:\n{}\nstderr:\n{}",
        tc.version,
        out.status,
        out.stdout,
        out.stderr.chars().take(4000).collect::<String>()
    );
    ensure!(
        out.status.success() && out.stdout.contains(&format!("done mode={mode}")),
        "fixture did not finish: {ctx}"
    );
    let report = out
        .report
        .with_context(|| format!("no JSON report: {ctx}"))?;
    ensure!(
        report["maps_lost"]["sync_map_calls"] == 0,
        "lost sync.Map calls: {ctx}"
    );
    let probe = report["map_probes"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["feature"] == "sync_map"))
        .with_context(|| format!("no sync_map probe status: {ctx}"))?;
    ensure!(
        probe["status"] == "attached",
        "sync_map probes: {probe}: {ctx}"
    );
    let row = Report::parse(&report)?
        .sync_maps
        .into_iter()
        .find(|r| r.address == addr)
        .with_context(|| format!("no sync_maps row for main.m at {addr}: {ctx}"))?;
    let ctx = format!("{ctx}\nrow: {row:?}");
    Ok((row, ctx))
}

#[test]
fn balanced_use_gets_rwmutex_advice() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    for tc in classic_and_swiss()? {
        let (row, ctx) = run_mode(&tc, "balanced", 2000)?;
        // Two goroutines, 1,000 calls each, every other one a Store.
        ensure!(row.calls_of("Load") == 1000, "{ctx}");
        ensure!(row.calls_of("Store/Swap") == 1000, "{ctx}");
        ensure!(row.reads == 1000 && row.writes == 1000, "{ctx}");
        ensure!(row.read_share == Some(0.5), "{ctx}");
        ensure!(row.advice_kind == "balanced", "{ctx}");
        ensure!(row.advice.contains("RWMutex"), "{ctx}");
    }
    Ok(())
}

#[test]
fn read_mostly_use_gets_sync_map_advice() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    for tc in classic_and_swiss()? {
        let (row, ctx) = run_mode(&tc, "readmostly", 2000)?;
        // 64 prefill Stores, then 99 Loads and 1 Store per 100 calls.
        ensure!(row.calls_of("Load") == 1980, "{ctx}");
        ensure!(row.calls_of("Store/Swap") == 64 + 20, "{ctx}");
        ensure!(row.advice_kind == "read_mostly", "{ctx}");
        ensure!(row.advice.contains("sync.Map fits"), "{ctx}");
        // The classic implementation's slow path is visible: the first loads
        // miss the read-only part until the dirty map is promoted.
        if !tc.swiss_maps() {
            ensure!(row.calls_of("missLocked") >= 1, "{ctx}");
        }
    }
    Ok(())
}

#[test]
fn every_method_is_counted_once() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    for tc in classic_and_swiss()? {
        let (row, ctx) = run_mode(&tc, "every", 0)?;
        for (method, n) in [
            ("Load", 1),
            ("Store/Swap", 3),
            ("LoadOrStore", 1),
            ("Delete/LoadAndDelete", 2),
            ("CompareAndSwap", 1),
            ("CompareAndDelete", 1),
            ("Range", 1),
        ] {
            ensure!(row.calls_of(method) == n, "{method} != {n}: {ctx}");
        }
        ensure!(row.advice_kind == "too_few_calls", "{ctx}");
    }
    Ok(())
}

#[test]
fn range_heavy_use_is_flagged() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    for tc in classic_and_swiss()? {
        let (row, ctx) = run_mode(&tc, "range", 500)?;
        ensure!(row.calls_of("Range") == 500, "{ctx}");
        ensure!(row.calls_of("Load") == 500, "{ctx}");
        ensure!(row.advice_kind == "range_heavy", "{ctx}");
    }
    Ok(())
}
