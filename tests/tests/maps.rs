//! Privileged tests of the map feature (docs/maps.md) on a Go ≤ 1.23 (classic
//! `hmap`) and a Go ≥ 1.24 (Swiss tables) build of `tests/fixtures/maps`.
//!
//! Ground truth comes from the fixture: which functions touch the map without
//! a lock, how many writes one site does, how many growths a classic map of
//! 1,000,000 int keys goes through, and what the runtime itself prints when
//! it catches the misuse.

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use tracer_tests::{
    GoToolchain, TracerRun, Variant, build_fixture, classic_and_swiss, marker_line,
    privileged_tests_enabled, run_tracer,
};

/// Runs the fixture under `tracer run` with `--maps <tier>`.
fn run_maps(
    tc: &GoToolchain,
    tier: &str,
    mode: &str,
    n: u64,
) -> Result<(TracerRun, Value, String)> {
    let bin = build_fixture(tc, "maps", Variant::Plain)?;
    let bin = bin.to_str().context("fixture path")?;
    let n = n.to_string();
    let out = run_tracer(
        &["run", "--maps", tier, "--", bin, "-mode", mode, "-n", &n],
        true,
    )?;
    let ctx = format!(
        "go {} --maps {tier} -mode {mode}: status {:?}\nstdout:\n{}\nstderr:\n{}",
        tc.version,
        out.status,
        out.stdout,
        out.stderr.chars().take(4000).collect::<String>()
    );
    let report = out
        .report
        .clone()
        .with_context(|| format!("no JSON report: {ctx}"))?;
    for (k, v) in report["maps_lost"].as_object().into_iter().flatten() {
        ensure!(v == 0, "lost {k}: {v}: {ctx}");
    }
    Ok((out, report, ctx))
}

fn findings<'a>(report: &'a Value, kind: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .map(|a| a.iter().filter(|f| f["kind"] == kind).collect())
        .unwrap_or_default()
}

fn site_is(side: &Value, func: &str, line: u32) -> bool {
    side["site"]["function"] == func && side["site"]["line"] == line
}

/// The program either finished or was stopped by the runtime's own check
/// (exit 2, "fatal error: concurrent map ..."): both are legitimate outcomes
/// of a racy program; anything else is a failure.
fn finished_or_runtime_caught(out: &TracerRun, mode: &str, ctx: &str) -> Result<()> {
    let code = out.status.code();
    let done = out.stdout.contains(&format!("done mode={mode}")) && code == Some(0);
    let caught = code == Some(2) && out.stderr.contains("fatal error: concurrent map");
    ensure!(done || caught, "unexpected outcome: {ctx}");
    Ok(())
}

/// Checks one overlap finding of `kind` between the two fixture sites.
fn expect_overlap(
    report: &Value,
    kind: &str,
    (f1, l1): (&str, u32),
    (f2, l2): (&str, u32),
    ctx: &str,
) -> Result<()> {
    let all = findings(report, kind);
    let f = all
        .iter()
        .find(|f| {
            (site_is(&f["op"], f1, l1) && site_is(&f["other"], f2, l2))
                || (site_is(&f["op"], f2, l2) && site_is(&f["other"], f1, l1))
        })
        .with_context(|| format!("no {kind} between {f1}:{l1} and {f2}:{l2}: {ctx}"))?;
    ensure!(f["count"].as_u64().unwrap_or(0) >= 1, "{kind} count: {ctx}");
    ensure!(
        f["map"].as_str().is_some_and(|m| m.starts_with("0x")),
        "{ctx}"
    );
    let (ga, gb) = (
        f["op"]["goroutine"].as_u64(),
        f["other"]["goroutine"].as_u64(),
    );
    ensure!(
        ga.is_some() && gb.is_some() && ga != gb,
        "goroutines {ga:?} / {gb:?}: {ctx}"
    );
    ensure!(
        f["first_seen_ns"].as_u64() <= f["last_seen_ns"].as_u64(),
        "{ctx}"
    );
    Ok(())
}

#[test]
fn concurrent_writers_are_found_in_deep_mode() -> Result<()> {
    if !privileged_tests_enabled("maps_writers") {
        return Ok(());
    }
    let _serial = tracer_tests::serial();
    let line = marker_line("maps", "// WRITESITE")?;
    for tc in classic_and_swiss()? {
        let (out, report, ctx) = run_maps(&tc, "deep", "writers", 300)?;
        finished_or_runtime_caught(&out, "writers", &ctx)?;
        expect_overlap(
            &report,
            "concurrent_map_write",
            ("main.writer", line),
            ("main.writer", line),
            &ctx,
        )?;
    }
    Ok(())
}

#[test]
fn runtime_crash_is_reported_with_message_and_call_site() -> Result<()> {
    if !privileged_tests_enabled("maps_crash") {
        return Ok(());
    }
    let _serial = tracer_tests::serial();
    let line = marker_line("maps", "// WRITESITE")?;
    for tc in classic_and_swiss()? {
        let (out, report, ctx) = run_maps(&tc, "always", "crash", 0)?;
        // tracer exits with the program's code: the runtime's fatal error is 2.
        ensure!(out.status.code() == Some(2), "exit status: {ctx}");
        ensure!(
            out.stderr.contains("fatal error: concurrent map writes"),
            "the runtime did not report the crash itself: {ctx}"
        );
        let fatal = findings(&report, "map_fatal");
        ensure!(
            fatal.len() == 1,
            "{} map_fatal findings: {ctx}",
            fatal.len()
        );
        let f = fatal[0];
        ensure!(f["message"] == "concurrent map writes", "message: {ctx}");
        ensure!(site_is(f, "main.writer", line), "site {}: {ctx}", f["site"]);
        ensure!(
            f["goroutine"].as_u64().is_some_and(|g| g > 1),
            "goroutine: {ctx}"
        );
        // Always-on tier: no per-operation probes, so no overlap findings.
        ensure!(
            findings(&report, "concurrent_map_write").is_empty(),
            "overlaps without --maps deep: {ctx}"
        );
        ensure!(
            out.stdout.contains("FINDING map_fatal"),
            "table lacks the finding: {ctx}"
        );
    }
    Ok(())
}

#[test]
fn iteration_during_write_is_found() -> Result<()> {
    if !privileged_tests_enabled("maps_iterwrite") {
        return Ok(());
    }
    let _serial = tracer_tests::serial();
    let (iter_line, write_line) = (
        marker_line("maps", "// ITERSITE")?,
        marker_line("maps", "// WRITESITE")?,
    );
    for tc in classic_and_swiss()? {
        let (out, report, ctx) = run_maps(&tc, "deep", "iterwrite", 2000)?;
        finished_or_runtime_caught(&out, "iterwrite", &ctx)?;
        expect_overlap(
            &report,
            "concurrent_map_iteration_write",
            ("main.iterate", iter_line),
            ("main.writer", write_line),
            &ctx,
        )?;
    }
    Ok(())
}

#[test]
fn unlocked_read_during_write_is_found() -> Result<()> {
    if !privileged_tests_enabled("maps_readwrite") {
        return Ok(());
    }
    let _serial = tracer_tests::serial();
    let (read_line, write_line) = (
        marker_line("maps", "// READSITE")?,
        marker_line("maps", "// WRITESITE")?,
    );
    for tc in classic_and_swiss()? {
        let (out, report, ctx) = run_maps(&tc, "deep", "readwrite", 2000)?;
        finished_or_runtime_caught(&out, "readwrite", &ctx)?;
        expect_overlap(
            &report,
            "concurrent_map_read_write",
            ("main.reader", read_line),
            ("main.writer", write_line),
            &ctx,
        )?;
    }
    Ok(())
}

/// Operations of `kind` made from a call site in `func`, over all maps.
fn op_count(report: &Value, func: &str, kind: &str) -> u64 {
    let mut n = 0;
    for m in report["maps"].as_array().into_iter().flatten() {
        for o in m["ops"].as_array().into_iter().flatten() {
            if o["kind"] != kind {
                continue;
            }
            for s in o["top_sites"].as_array().into_iter().flatten() {
                if s["site"]["function"] == func {
                    n += s["count"].as_u64().unwrap_or(0);
                }
            }
        }
    }
    n
}

#[test]
fn rwmutex_protected_map_has_no_findings() -> Result<()> {
    if !privileged_tests_enabled("maps_rwlocked") {
        return Ok(());
    }
    let _serial = tracer_tests::serial();
    const N: u64 = 300;
    for tc in classic_and_swiss()? {
        for run in 0..5 {
            let (out, report, ctx) = run_maps(&tc, "deep", "rwlocked", N)?;
            let ctx = format!("run {run}: {ctx}");
            ensure!(out.status.success(), "{ctx}");
            ensure!(out.stdout.contains("done mode=rwlocked"), "{ctx}");
            let map_findings: Vec<&Value> = report["findings"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| f["kind"].as_str().is_some_and(|k| k.contains("map")))
                .collect();
            ensure!(
                map_findings.is_empty(),
                "false findings {map_findings:?}: {ctx}"
            );
            // The probes did see every operation: two readers and two writers, N each.
            ensure!(
                op_count(&report, "main.lockedReader", "read") == 2 * N,
                "reads {}: {ctx}",
                op_count(&report, "main.lockedReader", "read")
            );
            ensure!(
                op_count(&report, "main.lockedWriter", "write") == 2 * N,
                "writes {}: {ctx}",
                op_count(&report, "main.lockedWriter", "write")
            );
        }
    }
    Ok(())
}

#[test]
fn writes_are_counted_exactly() -> Result<()> {
    if !privileged_tests_enabled("maps_count") {
        return Ok(());
    }
    let _serial = tracer_tests::serial();
    const N: u64 = 10_000;
    let line = marker_line("maps", "// COUNTSITE")?;
    for tc in classic_and_swiss()? {
        let (out, report, ctx) = run_maps(&tc, "deep", "count", N)?;
        ensure!(out.status.success(), "{ctx}");
        let row = report["maps"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["ops"][0]["top_sites"][0]["site"]["function"] == "main.countWrites")
            .with_context(|| format!("no map written by main.countWrites: {ctx}"))?;
        let ops = row["ops"].as_array().context("ops")?;
        ensure!(ops.len() == 1, "only writes expected, got {ops:?}: {ctx}");
        let w = &ops[0];
        ensure!(w["kind"] == "write", "{ctx}");
        ensure!(
            w["count"].as_u64() == Some(N),
            "count {}: {ctx}",
            w["count"]
        );
        ensure!(w["top_sites"][0]["site"]["line"] == line, "{ctx}");
        ensure!(w["goroutines"] == 1, "{ctx}");
        ensure!(
            w["ns_p50"].as_u64().is_some_and(|p| p > 0)
                && w["ns_p99"].as_u64() >= w["ns_p50"].as_u64(),
            "{ctx}"
        );
        ensure!(report["map_op_hits"].as_u64() >= Some(N), "{ctx}");
        ensure!(
            findings(&report, "concurrent_map_write").is_empty(),
            "{ctx}"
        );
    }
    Ok(())
}

#[test]
fn growth_to_a_million_entries_is_counted() -> Result<()> {
    if !privileged_tests_enabled("maps_grow") {
        return Ok(());
    }
    let _serial = tracer_tests::serial();
    const N: u64 = 1_000_000;
    let line = marker_line("maps", "// GROWSITE")?;
    for tc in classic_and_swiss()? {
        let (out, report, ctx) = run_maps(&tc, "always", "grow", N)?;
        ensure!(out.status.success(), "{ctx}");
        ensure!(out.stdout.contains("len=1000000"), "{ctx}");
        let row = report["maps"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["growth_sites"][0]["site"]["function"] == "main.grow")
            .with_context(|| format!("no map grown by main.grow: {ctx}"))?;
        ensure!(row["growth_sites"][0]["site"]["line"] == line, "{ctx}");
        ensure!(row["ops"].as_array().is_some_and(Vec::is_empty), "{ctx}");
        let events = row["growth_events"].as_u64().context("events")?;
        let last = row["count_at_last_growth"].as_u64().context("count")?;
        if tc.swiss_maps() {
            // Tables hold at most 1024 slots at 7/8 load: ≥ 1,116 tables for
            // 10^6 keys, each born from a split, each split one event. The
            // 475,712 keys after 2^19 cannot fit the tables that exist then
            // without more growth, so the last growth is past 2^19.
            ensure!(events >= 1_000, "{events} growths: {ctx}");
            ensure!((1 << 19..=N).contains(&last), "last count {last}: {ctx}");
        } else {
            // hashGrow runs when count+1 > 6.5·2^B (and > 8 at B = 0):
            // at 8, 13, 26, …, 13·2^16 = 851,968 — 18 growths below 10^6.
            ensure!(events == 18, "{events} growths: {ctx}");
            ensure!(last == 851_968, "last count {last}: {ctx}");
        }
        ensure!(row["max_count_at_growth"].as_u64() == Some(last), "{ctx}");
    }
    Ok(())
}

/// `tracer attach --maps deep` on a running process: probes appear while
/// operations are in progress, which must not leave half-seen operations that
/// look like overlaps (the map is locked: there are none), and operations
/// are counted from then on. (An unlocked fixture cannot be attached to
/// reliably: without probes slowing it the runtime kills it within ms.)
#[test]
fn attach_deep_to_running_process_has_no_false_findings() -> Result<()> {
    if !privileged_tests_enabled("maps_attach") {
        return Ok(());
    }
    let _serial = tracer_tests::serial();
    for tc in classic_and_swiss()? {
        let bin = build_fixture(&tc, "maps", Variant::Plain)?;
        // Long enough to outlive the attach; killed below.
        let mut child = std::process::Command::new(&bin)
            .args(["-mode", "rwlocked", "-n", "1000000000"])
            .stdout(std::process::Stdio::null())
            .spawn()?;
        std::thread::sleep(std::time::Duration::from_millis(300));
        let pid = child.id().to_string();
        let out = run_tracer(
            &[
                "attach",
                "--pid",
                &pid,
                "--maps",
                "deep",
                "--duration",
                "2s",
            ],
            true,
        );
        let _ = child.kill();
        let _ = child.wait();
        let out = out?;
        let ctx = format!(
            "go {}: {:?}\n{}\n{}",
            tc.version, out.status, out.stdout, out.stderr
        );
        ensure!(out.status.success(), "{ctx}");
        let report = out.report.with_context(|| format!("no report: {ctx}"))?;
        let map_findings: Vec<&Value> = report["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f["kind"].as_str().is_some_and(|k| k.contains("map")))
            .collect();
        ensure!(map_findings.is_empty(), "false findings: {ctx}");
        ensure!(op_count(&report, "main.lockedReader", "read") > 0, "{ctx}");
        ensure!(op_count(&report, "main.lockedWriter", "write") > 0, "{ctx}");
    }
    Ok(())
}

/// `--maps-sites main`: probes only at the map calls inside package main, so
/// the same ground truth holds (exact count, overlaps found) while the
/// runtime's and standard library's own map operations are not probed.
#[test]
fn call_site_probes_cover_only_the_chosen_package() -> Result<()> {
    if !privileged_tests_enabled("maps_sites") {
        return Ok(());
    }
    let _serial = tracer_tests::serial();
    const N: u64 = 10_000;
    let (count_line, write_line) = (
        marker_line("maps", "// COUNTSITE")?,
        marker_line("maps", "// WRITESITE")?,
    );
    for tc in classic_and_swiss()? {
        let bin = build_fixture(&tc, "maps", Variant::Plain)?;
        let bin = bin.to_str().context("fixture path")?;
        let n = N.to_string();
        let args = |mode: &'static str, n: &str| -> Vec<String> {
            [
                "run",
                "--maps",
                "deep",
                "--maps-sites",
                "main",
                "--",
                bin,
                "-mode",
                mode,
                "-n",
                n,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        };
        let a = args("count", &n);
        let out = run_tracer(&a.iter().map(String::as_str).collect::<Vec<_>>(), true)?;
        let ctx = format!("go {}: {}\n{}", tc.version, out.stdout, out.stderr);
        ensure!(out.status.success(), "{ctx}");
        let report = out.report.context("no report")?;
        let sites = report["map_probes"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["feature"] == "map_ops"))
            .with_context(|| format!("no map_ops probes: {ctx}"))?;
        ensure!(sites["status"] == "attached", "{ctx}");
        // countWrites is inlined into main.main: the CALL is in main.main,
        // the site still symbolizes to countWrites (inlined frames).
        ensure!(
            sites["function"]
                .as_str()
                .is_some_and(|f| f.split(", ").all(|s| s.starts_with("main."))),
            "{ctx}"
        );
        ensure!(op_count(&report, "main.countWrites", "write") == N, "{ctx}");
        ensure!(
            report["map_op_hits"].as_u64() == Some(N),
            "only main's calls: {ctx}"
        );
        let row = report["maps"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["ops"][0]["kind"] == "write")
            .with_context(|| format!("no written map: {ctx}"))?;
        ensure!(
            row["ops"][0]["top_sites"][0]["site"]["line"] == count_line,
            "{ctx}"
        );

        let a = args("writers", "300");
        let out = run_tracer(&a.iter().map(String::as_str).collect::<Vec<_>>(), true)?;
        let ctx = format!("go {}: {}\n{}", tc.version, out.stdout, out.stderr);
        finished_or_runtime_caught(&out, "writers", &ctx)?;
        let report = out.report.context("no report")?;
        expect_overlap(
            &report,
            "concurrent_map_write",
            ("main.writer", write_line),
            ("main.writer", write_line),
            &ctx,
        )?;
    }
    Ok(())
}
