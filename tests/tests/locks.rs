//! Privileged tests of RWMutex waits and stuck-waiter findings on global locks,
//! for a Go ≤ 1.23 and a Go ≥ 1.24 build (and Go 1.19 for RWMutex).

use anyhow::{Context, Result, ensure};
use tracer_tests::{
    Variant, build_fixture, classic_and_swiss, debian_go, fixture_value, marker_line,
    privileged_test, report::Report, run_tracer,
};

fn run_locks(version_bin: &str, mode: &str, extra: &[&str]) -> Result<(Report, String)> {
    let mut args = vec![
        "run",
        "--stuck-threshold",
        "1s",
        "--",
        version_bin,
        "-mode",
        mode,
    ];
    args.extend_from_slice(extra);
    let out = run_tracer(&args, true)?;
    let ctx = format!("stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    ensure!(out.status.success(), "tracer run failed: {ctx}");
    ensure!(
        out.stdout.contains(&format!("done mode={mode}")),
        "fixture did not finish: {ctx}"
    );
    let report = out.report.with_context(|| format!("no report: {ctx}"))?;
    Ok((Report::parse(&report)?, ctx))
}

#[test]
fn rwmutex_reader_and_writer_waits_are_kept_apart() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    let (read_line, write_line) = (
        marker_line("locks", "// READSITE")?,
        marker_line("locks", "// WRITESITE")?,
    );
    // Go 1.19 has no RWMutex semaphore functions of its own: both sides wait
    // on the Mutex's, and must still be kept apart from the Mutex's sleeps.
    let mut toolchains = vec![debian_go()?];
    toolchains.extend(classic_and_swiss()?);
    for tc in toolchains {
        let bin = build_fixture(&tc, "locks", Variant::Plain)?;
        let (report, ctx) = run_locks(bin.to_str().context("path")?, "rwmutex", &[])?;
        let ctx = format!("go {}: {ctx}", tc.version);
        let rw_features: &[&str] = if tc.version.starts_with("1.19") {
            &["rwmutex"]
        } else {
            &["rwmutex_read", "rwmutex_write"]
        };
        for f in rw_features {
            ensure!(
                report
                    .probes
                    .iter()
                    .any(|p| p.feature == *f && p.status == "attached"),
                "{f} probes not attached: {ctx}"
            );
        }
        ensure!(
            report.locks_of_kind("unknown").is_empty(),
            "waits of no known lock kind: {ctx}"
        );
        for (kind, func, line) in [
            ("rwmutex_read", "main.reader", read_line),
            ("rwmutex_write", "main.writer", write_line),
        ] {
            let rows = report.locks_of_kind(kind);
            let row = rows
                .iter()
                .find(|r| r.site.function == func)
                .with_context(|| format!("no {kind} row at {func}: {ctx}"))?;
            ensure!(row.contentions > 0, "{kind}: {ctx}");
            ensure!(
                row.site.line == line,
                "{kind} line {:?} != {line}: {ctx}",
                row.site
            );
            // The semaphore address was mapped back to the RWMutex itself.
            ensure!(
                row.name.as_deref() == Some("main.rw"),
                "{kind} lock named {:?}: {ctx}",
                row.name
            );
        }
        // Readers never wait as writers and vice versa.
        ensure!(
            report
                .locks_of_kind("rwmutex_read")
                .iter()
                .all(|r| r.site.function != "main.writer"),
            "{ctx}"
        );
        ensure!(
            report
                .locks_of_kind("rwmutex_write")
                .iter()
                .all(|r| r.site.function != "main.reader"),
            "{ctx}"
        );
    }
    Ok(())
}

#[test]
fn deadlock_is_reported_as_two_stuck_waits_within_threshold() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    for tc in classic_and_swiss()? {
        let bin = build_fixture(&tc, "locks", Variant::Plain)?;
        // The deadlock forms at 0.1 s and passes the 1 s threshold at 1.1 s; the
        // program exits at 1.9 s, so the findings must come within threshold + 0.8 s.
        let (report, ctx) = run_locks(
            bin.to_str().context("path")?,
            "deadlock",
            &["-wait", "1.9s"],
        )?;
        let ctx = format!("go {}: {ctx}", tc.version);
        let found = report.stuck_waits()?;
        ensure!(
            found.len() == 2,
            "want 2 stuck waits, got {}: {ctx}",
            found.len()
        );
        let mut locks: Vec<&str> = found
            .iter()
            .filter_map(|f| f.lock.name.as_deref())
            .collect();
        locks.sort();
        ensure!(locks == ["main.a", "main.b"], "locks {locks:?}: {ctx}");
        let mut sites: Vec<&str> = found
            .iter()
            .filter_map(|f| f.site.as_ref().map(|s| s.function.as_str()))
            .collect();
        sites.sort();
        ensure!(
            sites == ["main.deadlockAB", "main.deadlockBA"],
            "sites {sites:?}: {ctx}"
        );
        let goroutines: Vec<u64> = found.iter().filter_map(|f| f.goroutine).collect();
        ensure!(
            goroutines.len() == 2 && goroutines[0] != goroutines[1],
            "goroutine ids {goroutines:?}: {ctx}"
        );
        for f in &found {
            let age = f.age_ns;
            ensure!(
                (1_000_000_000..=1_900_000_000).contains(&age),
                "age {age}: {ctx}"
            );
            ensure!(f.ongoing, "a deadlocked wait ended: {ctx}");
            ensure!(!f.stack.is_empty(), "no stack: {ctx}");
        }
    }
    Ok(())
}

#[test]
fn lock_held_across_sleep_gives_stuck_waits_that_end() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    for tc in classic_and_swiss()? {
        let bin = build_fixture(&tc, "locks", Variant::Plain)?;
        let (report, ctx) = run_locks(bin.to_str().context("path")?, "sleephold", &[])?;
        let ctx = format!("go {}: {ctx}", tc.version);
        let found = report.stuck_waits()?;
        ensure!(
            found.len() == 3,
            "want 3 stuck waiters, got {}: {ctx}",
            found.len()
        );
        for f in &found {
            ensure!(f.lock.name.as_deref() == Some("main.held"), "{ctx}");
            ensure!(
                f.site
                    .as_ref()
                    .is_some_and(|s| s.function == "main.waitForHeld"),
                "{ctx}"
            );
            ensure!(f.age_ns >= 1_000_000_000, "{ctx}");
            // The holder woke up and released it before the program ended.
            ensure!(!f.ongoing, "wait never ended: {ctx}");
        }
        // The finished waits are in the contention table too, each ~1.95 s.
        let row = report
            .locks_of_kind("mutex")
            .into_iter()
            .find(|r| r.name.as_deref() == Some("main.held"))
            .with_context(|| format!("no main.held row: {ctx}"))?;
        ensure!(row.contentions == 3, "{ctx}");
        let max = row.wait_ns_max;
        ensure!(
            (1_500_000_000..=2_500_000_000).contains(&max),
            "max wait {max}: {ctx}"
        );
    }
    Ok(())
}

#[test]
fn totals_agree_with_gos_own_block_profile() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    for tc in classic_and_swiss()? {
        let bin = build_fixture(&tc, "blockprof", Variant::Plain)?;
        let out = run_tracer(&["run", "--", bin.to_str().context("path")?], true)?;
        let ctx = format!(
            "go {}\nstdout:\n{}\nstderr:\n{}",
            tc.version, out.stdout, out.stderr
        );
        ensure!(out.status.success(), "{ctx}");
        let report = Report::parse(out.report.as_ref().context("no report")?)?;
        let total = |kinds: &[&str]| -> f64 {
            report
                .locks
                .iter()
                .filter(|l| kinds.contains(&l.kind.as_str()))
                .map(|l| l.wait_ns_total as f64)
                .sum()
        };
        let checks = [
            (
                "Mutex",
                total(&["mutex"]),
                fixture_value::<f64>(&out.stdout, "block_mutex_ns")?,
            ),
            (
                "RWMutex",
                total(&["rwmutex_read", "rwmutex_write"]),
                fixture_value::<f64>(&out.stdout, "block_rw_ns")?,
            ),
        ];
        for (what, ours, go) in checks {
            ensure!(go > 0.0, "block profile recorded no {what} waits: {ctx}");
            let diff = (ours - go).abs() / go;
            ensure!(
                diff <= 0.25,
                "{what}: tracer {ours:.0} ns vs block profile {go:.0} ns ({:.0}% apart): {ctx}",
                diff * 100.0
            );
        }
    }
    Ok(())
}
