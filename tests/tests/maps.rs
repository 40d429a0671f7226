//! Privileged tests of the map feature (docs/maps.md) on a Go ≤ 1.23 (classic
//! `hmap`) and a Go ≥ 1.24 (Swiss tables) build of `tests/fixtures/maps`; the
//! core ones also on a Go 1.24/1.25 build with `GOEXPERIMENT=noswissmap`
//! (classic maps in a new runtime).
//!
//! Ground truth comes from the fixture: which functions touch the map without
//! a lock, how many writes one site does, how many growths a classic map of
//! 1,000,000 int keys goes through, and what the runtime itself prints when
//! it catches the misuse.
//!
//! Over 600 lines: one test per detection the tier promises, each against
//! its ground truth (a known operation count, the runtime's own message);
//! they share the fixture runner at the top, which a split would duplicate
//! or move away from its only users.

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use tracer_tests::{
    GoToolchain, TracerRun, Variant, build_fixture, classic_and_swiss, debian_go, go_toolchains,
    marker_line, newest_noswissmap, privileged_test, report::Report, run_tracer,
};

/// Debian's Go 1.19 and the classic/Swiss pair as plain builds, plus the
/// newest Go that accepts `GOEXPERIMENT=noswissmap` built with it: a ≥ 1.24
/// runtime with classic maps, which must get the classic probe set.
fn builds_with_noswiss() -> Result<Vec<(GoToolchain, Variant)>> {
    let mut out: Vec<_> = std::iter::once(debian_go()?)
        .chain(classic_and_swiss()?)
        .map(|tc| (tc, Variant::Plain))
        .collect();
    out.push((newest_noswissmap()?, Variant::NoSwiss));
    Ok(out)
}

/// Whether this build's maps are Swiss tables.
fn swiss(tc: &GoToolchain, variant: Variant) -> bool {
    tc.swiss_maps() && variant != Variant::NoSwiss
}

/// Runs the plain fixture under `tracer run` with `--maps <tier>`.
fn run_maps(
    tc: &GoToolchain,
    tier: &str,
    mode: &str,
    n: u64,
) -> Result<(TracerRun, Value, String)> {
    run_maps_variant(tc, Variant::Plain, tier, mode, n)
}

/// Runs the fixture built as `variant` under `tracer run` with `--maps <tier>`.
fn run_maps_variant(
    tc: &GoToolchain,
    variant: Variant,
    tier: &str,
    mode: &str,
    n: u64,
) -> Result<(TracerRun, Value, String)> {
    let bin = build_fixture(tc, "maps", variant)?;
    let bin = bin.to_str().context("fixture path")?;
    let n = n.to_string();
    let out = run_tracer(
        &["run", "--maps", tier, "--", bin, "-mode", mode, "-n", &n],
        true,
    )?;
    let ctx = format!(
        "go {} ({variant:?}) --maps {tier} -mode {mode}: status {:?}\nstdout:\n{}\nstderr:\n{}",
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
        // The table's size and when it filled are not counts.
        if !k.starts_with("ops_table_") {
            ensure!(v == 0, "lost {k}: {v}: {ctx}");
        }
    }
    Ok((out, report, ctx))
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
    let all = Report::parse(report)?.overlaps(kind)?;
    let f = all
        .iter()
        .find(|f| {
            (f.op.at(f1, l1) && f.other.at(f2, l2)) || (f.op.at(f2, l2) && f.other.at(f1, l1))
        })
        .with_context(|| format!("no {kind} between {f1}:{l1} and {f2}:{l2}: {ctx}"))?;
    ensure!(f.count >= 1, "{kind} count: {ctx}");
    ensure!(f.map.starts_with("0x"), "{ctx}");
    let (ga, gb) = (f.op.goroutine, f.other.goroutine);
    ensure!(
        ga.is_some() && gb.is_some() && ga != gb,
        "goroutines {ga:?} / {gb:?}: {ctx}"
    );
    ensure!(f.first_seen_ns <= f.last_seen_ns, "{ctx}");
    Ok(())
}

#[test]
fn concurrent_writers_are_found_in_deep_mode() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    let line = marker_line("maps", "// WRITESITE")?;
    for (tc, variant) in builds_with_noswiss()? {
        let (out, report, ctx) = run_maps_variant(&tc, variant, "deep", "writers", 300)?;
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
    privileged_test!();
    let _serial = tracer_tests::serial();
    let line = marker_line("maps", "// WRITESITE")?;
    for (tc, variant) in builds_with_noswiss()? {
        let (out, report, ctx) = run_maps_variant(&tc, variant, "always", "crash", 0)?;
        // tracer exits with the program's code: the runtime's fatal error is 2.
        ensure!(out.status.code() == Some(2), "exit status: {ctx}");
        ensure!(
            out.stderr.contains("fatal error: concurrent map writes"),
            "the runtime did not report the crash itself: {ctx}"
        );
        // Usually one goroutine dies; two writers can both see the flag and
        // enter the fatal path before the process is gone. Each is reported
        // once (one finding per goroutine), never duplicated.
        let typed = Report::parse(&report)?;
        let fatal = typed.map_fatals()?;
        ensure!(
            (1..=2).contains(&fatal.len()),
            "{} map_fatal findings: {ctx}",
            fatal.len()
        );
        let mut goroutines = std::collections::HashSet::new();
        for f in &fatal {
            ensure!(f.message == "concurrent map writes", "message: {ctx}");
            ensure!(
                f.site
                    .as_ref()
                    .is_some_and(|s| s.function == "main.writer" && s.line == line),
                "site {:?}: {ctx}",
                f.site
            );
            let g = f.goroutine.with_context(|| format!("goroutine: {ctx}"))?;
            ensure!(g > 1, "goroutine: {ctx}");
            ensure!(goroutines.insert(g), "goroutine {g} reported twice: {ctx}");
        }
        // Always-on tier: no per-operation probes, so no overlap findings.
        ensure!(
            typed.findings_of_kind("concurrent_map_write").is_empty(),
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
    privileged_test!();
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
    privileged_test!();
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

#[test]
fn rwmutex_protected_map_has_no_findings() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    const N: u64 = 300;
    for tc in classic_and_swiss()? {
        // One run per Go: the 20-run zero-findings check is under the agent
        // (tests/tests/maps_agent.rs), where runs do not pay the deep
        // tier's uprobe teardown each; this one keeps the exact counts.
        let (out, report, ctx) = run_maps(&tc, "deep", "rwlocked", N)?;
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
            Report::parse(&report)?.op_count("main.lockedReader", "read") == 2 * N,
            "reads {}: {ctx}",
            Report::parse(&report)?.op_count("main.lockedReader", "read")
        );
        ensure!(
            Report::parse(&report)?.op_count("main.lockedWriter", "write") == 2 * N,
            "writes {}: {ctx}",
            Report::parse(&report)?.op_count("main.lockedWriter", "write")
        );
    }
    Ok(())
}

#[test]
fn writes_are_counted_exactly() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    const N: u64 = 10_000;
    let line = marker_line("maps", "// COUNTSITE")?;
    for (tc, variant) in builds_with_noswiss()? {
        let (out, report, ctx) = run_maps_variant(&tc, variant, "deep", "count", N)?;
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
            Report::parse(&report)?
                .findings_of_kind("concurrent_map_write")
                .is_empty(),
            "{ctx}"
        );
    }
    Ok(())
}

#[test]
fn growth_to_a_million_entries_is_counted() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    const N: u64 = 1_000_000;
    let line = marker_line("maps", "// GROWSITE")?;
    for (tc, variant) in builds_with_noswiss()? {
        let (out, report, ctx) = run_maps_variant(&tc, variant, "always", "grow", N)?;
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
        if swiss(&tc, variant) {
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
        // The probe set matches the map implementation linked in.
        let growth = report["map_probes"]
            .as_array()
            .and_then(|a| a.iter().find(|p| p["feature"] == "map_growth"))
            .with_context(|| format!("no map_growth probes: {ctx}"))?;
        let funcs = growth["function"].as_str().unwrap_or_default();
        ensure!(growth["status"] == "attached", "{ctx}");
        if swiss(&tc, variant) {
            ensure!(
                funcs.contains("(*Map).growToTable") && !funcs.contains("runtime.hashGrow"),
                "growth probes {funcs}: {ctx}"
            );
        } else {
            ensure!(
                funcs.contains("runtime.hashGrow") && !funcs.contains("internal/runtime/maps"),
                "growth probes {funcs}: {ctx}"
            );
        }
    }
    Ok(())
}

/// Every Go that accepts `GOEXPERIMENT=noswissmap` (1.24, 1.25) builds a
/// binary with the classic map runtime: `tracer inspect` must say so and list
/// the classic targets (`runtime.hashGrow`, `runtime.mapiterinit`) as found
/// and the Swiss ones as not applying. Ground truth: `go tool nm`.
#[test]
fn noswissmap_builds_are_analysed_as_classic_maps() -> Result<()> {
    let tcs: Vec<GoToolchain> = go_toolchains()?
        .into_iter()
        .filter(GoToolchain::supports_noswissmap)
        .collect();
    ensure!(!tcs.is_empty(), "no Go 1.24/1.25 installed");
    for tc in tcs {
        let bin = build_fixture(&tc, "maps", Variant::NoSwiss)?;
        let nm = std::process::Command::new(&tc.go)
            .args(["tool", "nm"])
            .arg(&bin)
            .output()
            .context("go tool nm")?;
        let nm = String::from_utf8_lossy(&nm.stdout);
        let has = |sym: &str| nm.lines().any(|l| l.split_whitespace().nth(2) == Some(sym));
        ensure!(
            has("runtime.hashGrow") && !has("internal/runtime/maps.(*Map).growToTable"),
            "go {}: the noswissmap build is not classic per nm",
            tc.version
        );
        let out = run_tracer(&["inspect", bin.to_str().context("path")?, "--json"], false)?;
        let ctx = format!("go {}: {}\n{}", tc.version, out.stdout, out.stderr);
        ensure!(out.status.success(), "{ctx}");
        let r: Value = serde_json::from_str(&out.stdout).with_context(|| ctx.clone())?;
        ensure!(
            r["build_info"]["experiments"]
                .as_array()
                .is_some_and(|e| e.iter().any(|x| x == "noswissmap")),
            "experiments: {ctx}"
        );
        ensure!(r["map_impl"] == "classic", "map_impl: {ctx}");
        let target = |name: &str| {
            r["targets"]
                .as_array()
                .and_then(|a| a.iter().find(|t| t["name"] == name))
        };
        for name in [
            "runtime.hashGrow",
            "runtime.mapiterinit",
            "runtime.mapiternext",
        ] {
            ensure!(
                target(name).is_some_and(|t| t["found"] == true),
                "{name} not found: {ctx}"
            );
        }
        ensure!(
            target("internal/runtime/maps.(*Map).growToTable").is_none(),
            "Swiss target listed for a classic build: {ctx}"
        );
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
    privileged_test!();
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
        ensure!(
            Report::parse(&report)?.op_count("main.lockedReader", "read") > 0,
            "{ctx}"
        );
        ensure!(
            Report::parse(&report)?.op_count("main.lockedWriter", "write") > 0,
            "{ctx}"
        );
    }
    Ok(())
}

/// `--maps-sites main`: probes only at the map calls inside package main, so
/// the same ground truth holds (exact count, overlaps found) while the
/// runtime's and standard library's own map operations are not probed.
/// `tracer run --maps deep --maps-sites main` on the maps fixture.
fn run_main_sites(bin: &str, mode: &str, n: &str) -> Result<TracerRun> {
    run_tracer(
        &[
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
        ],
        true,
    )
}

#[test]
fn call_site_probes_cover_only_the_chosen_package() -> Result<()> {
    privileged_test!();
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
        let out = run_main_sites(bin, "count", &n)?;
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
        ensure!(
            Report::parse(&report)?.op_count("main.countWrites", "write") == N,
            "{ctx}"
        );
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

        let out = run_main_sites(bin, "writers", "300")?;
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

/// Issue #20: a deep-mode operation table that overflows says so, in the
/// JSON and the human report, with the share lost. 12,000 new maps get one
/// write each from one site: 12,000 distinct (map, site) rows for a table
/// of 8,192, so at least 3,808 operations cannot be counted, and counted
/// plus lost must be exactly 12,000.
#[test]
fn overflowing_operation_table_is_reported_with_the_share_lost() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    const N: u64 = 12_000;
    let tc = tracer_tests::newest_go()?;
    let bin = build_fixture(&tc, "maps", Variant::Plain)?;
    let bin = bin.to_str().context("fixture path")?;
    let n = N.to_string();
    let out = run_main_sites(bin, "manymaps", &n)?;
    let ctx = format!("go {}: {}\n{}", tc.version, out.stdout, out.stderr);
    ensure!(
        out.status.success() && out.stdout.contains("maps=12000"),
        "{ctx}"
    );
    let report = out.report.context("no report")?;
    let lost = &report["maps_lost"];
    let dropped = lost["ops"].as_u64().context("maps_lost.ops")?;
    let counted = report["map_op_hits"].as_u64().context("map_op_hits")?;
    let entries = lost["ops_table_entries"].as_u64().context("table size")?;
    ensure!(
        counted + dropped == N && entries == 8192 && dropped >= N - entries,
        "{counted} counted + {dropped} lost, table of {entries}: {ctx}"
    );
    ensure!(
        lost["ops_table_full_after_ns"].as_u64().is_some(),
        "when the table filled: {lost}"
    );
    // Keyed by site: one row for the 12,000 maps' write site, its count
    // the operations counted, each on its own map.
    let site_line = marker_line("maps", "// MANYSITE")?;
    let rows: Vec<&Value> = report["map_sites"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["kind"] == "write" && r["site"]["function"] == "main.manyMaps")
        .collect();
    ensure!(
        rows.len() == 1
            && rows[0]["site"]["line"] == site_line
            && rows[0]["count"].as_u64() == Some(counted)
            && rows[0]["maps"].as_u64() == Some(counted),
        "map_sites write rows {rows:?}: {ctx}"
    );
    let line = format!("{dropped} of {N} map operations seen");
    ensure!(
        out.stdout.contains(&line) && out.stdout.contains("lower bounds"),
        "human report lacks {line:?}: {ctx}"
    );
    Ok(())
}
