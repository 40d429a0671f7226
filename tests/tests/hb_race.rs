//! Happens-before map race detection (issue #19) against Go's own `-race`,
//! on `tests/fixtures/hbrace`: five racy patterns modelled on real bugs,
//! whose two accesses come microseconds apart without overlapping, and
//! nine correctly synchronised ones covering every primitive (Mutex and
//! RWMutex fast and slow paths, channels, WaitGroup, Once, Cond,
//! atomic.Pointer, the errgroup pattern, sync.Map).
//!
//! Every case runs 10 times under `-race` (the reference: each racy case
//! must be reported in at least 9 runs, each synchronised one in none), and
//! under `tracer run --maps deep` as one process repeating the pattern 10
//! times: every racy pair of call sites must be found in at least 9 of the
//! repetitions (the finding's count; a repetition races once per pair), and
//! the synchronised cases must give no race finding at all, by either
//! detector of deep mode.

use anyhow::{Context, Result, ensure};
use tracer_tests::{
    GoToolchain, Variant, build_fixture, classic_and_swiss, marker_line, privileged_test,
    report::Report, run_tracer,
};

const RUNS: usize = 10;

/// Racy case, finding kind, and the marker of each side's line.
const RACY: [(&str, &str, &str, &str); 5] = [
    (
        "race-field",
        "concurrent_map_read_write",
        "// RACE_FIELD_READ",
        "// RACE_FIELD_WRITE",
    ),
    (
        "race-callback",
        "concurrent_map_iteration_write",
        "// RACE_CALLBACK_ITER",
        "// RACE_CALLBACK_WRITE",
    ),
    (
        "race-cache",
        "concurrent_map_read_write",
        "// RACE_CACHE_READ",
        "// RACE_CACHE_WRITE",
    ),
    (
        "race-waitgroup",
        "concurrent_map_read_write",
        "// RACE_WG_READ",
        "// RACE_WG_WRITE",
    ),
    (
        "race-closure",
        "concurrent_map_write",
        "// RACE_CLOSURE_WRITE",
        "// RACE_CLOSURE_WRITE",
    ),
];

const SYNCHRONISED: [&str; 9] = [
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

/// Runs of `case` in which `-race` reported a data race.
fn race_detector_hits(tc: &GoToolchain, case: &str) -> Result<usize> {
    let bin = build_fixture(tc, "hbrace", Variant::Race)?;
    let mut hits = 0;
    for _ in 0..RUNS {
        let out = std::process::Command::new(&bin)
            .args(["-case", case])
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("WARNING: DATA RACE") {
            hits += 1;
        } else {
            ensure!(
                out.status.success(),
                "go {} -race -case {case}: {:?}\n{stderr}",
                tc.version,
                out.status
            );
        }
    }
    Ok(hits)
}

/// How often a racy run may die of the runtime's own check before the
/// test gives up (see [`traced`]).
const OVERLAP_RETRIES: usize = 2;

/// The deep-mode report of `case` repeated [`RUNS`] times in one process.
///
/// A racy pattern's accesses are half a millisecond apart, but on a loaded
/// 2-core VM they can still really overlap; the runtime then kills the
/// process with "concurrent map writes" before the repetitions are done.
/// That run is checked for tracer's `map_fatal` finding (the crash must be
/// caught) and run again, at most [`OVERLAP_RETRIES`] times.
fn traced(tc: &GoToolchain, case: &str, extra: &[&str]) -> Result<(Report, String)> {
    let mut attempt = 0;
    loop {
        match traced_once(tc, case, extra)? {
            Traced::Done(report, ctx) => return Ok((*report, ctx)),
            Traced::RuntimeCaught(_) if attempt < OVERLAP_RETRIES && case.starts_with("race-") => {
                eprintln!(
                    "go {} {case}: accesses overlapped for real, the runtime's check fired and \
                     tracer reported it (map_fatal); running again",
                    tc.version
                );
                attempt += 1;
            }
            Traced::RuntimeCaught(ctx) => anyhow::bail!("{ctx}"),
        }
    }
}

enum Traced {
    Done(Box<Report>, String),
    /// The process died of the runtime's concurrent-map check, and tracer
    /// reported that crash.
    RuntimeCaught(String),
}

fn traced_once(tc: &GoToolchain, case: &str, extra: &[&str]) -> Result<Traced> {
    let bin = build_fixture(tc, "hbrace", Variant::Plain)?;
    let bin = bin.to_str().context("fixture path")?;
    let runs = RUNS.to_string();
    let mut args = vec!["run", "--maps", "deep", "--tcp", "off"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", bin, "-case", case, "-repeat", &runs]);
    let out = run_tracer(&args, true)?;
    let ctx = format!(
        "go {} -case {case} {extra:?}: {:?}\nstdout:\n{}\nstderr:\n{}",
        tc.version,
        out.status,
        out.stdout,
        out.stderr.chars().take(4000).collect::<String>()
    );
    if !out.status.success() && out.stderr.contains("fatal error: concurrent map") {
        let json = out
            .report
            .clone()
            .with_context(|| format!("no report after the crash: {ctx}"))?;
        let fatals = Report::parse(&json)?.map_fatals()?;
        ensure!(
            !fatals.is_empty(),
            "the runtime's map check fired and tracer did not report it: {ctx}"
        );
        return Ok(Traced::RuntimeCaught(ctx));
    }
    ensure!(
        out.status.success() && out.stdout.contains(&format!("done case={case}")),
        "{ctx}"
    );
    let json = out
        .report
        .clone()
        .with_context(|| format!("no report: {ctx}"))?;
    let hb = &json["happens_before"];
    ensure!(
        hb["sync_probes"].as_u64().unwrap_or(0) > 10,
        "happens-before probes missing: {hb}\n{ctx}"
    );
    ensure!(
        hb["unresolved_inlined"] == 0,
        "inlined synchronisation without a probe: {hb}\n{ctx}"
    );
    ensure!(
        hb["stream"]["restarts"] == 0 && json["maps_lost"]["happens_before_events"] == 0,
        "events lost: {hb}\n{ctx}"
    );
    ensure!(
        hb["detector"]["accesses"].as_u64().unwrap_or(0) > 0,
        "no access reached the detector: {hb}\n{ctx}"
    );
    Ok(Traced::Done(
        Box::new(Report::parse(&json)?),
        format!(
            "{ctx}\nhappens_before: {hb}\nmap_probes: {}",
            json["map_probes"]
        ),
    ))
}

#[test]
fn racy_patterns_are_found_as_often_as_by_the_race_detector() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    for tc in classic_and_swiss()? {
        for (case, kind, a, b) in RACY {
            let reference = race_detector_hits(&tc, case)?;
            ensure!(
                reference >= RUNS - 1,
                "go {}: -race found {case} in {reference}/{RUNS} runs only",
                tc.version
            );
            let (la, lb) = (marker_line("hbrace", a)?, marker_line("hbrace", b)?);
            let (report, ctx) = traced(&tc, case, &[])?;
            let found = report.unordered(kind)?;
            let pair = found
                .iter()
                .find(|f| {
                    let at = |s: &tracer_tests::report::OpSide, l| {
                        s.site.as_ref().is_some_and(|s| s.line == l)
                    };
                    (at(&f.op, la) && at(&f.other, lb)) || (at(&f.op, lb) && at(&f.other, la))
                })
                .with_context(|| format!("no {kind} between lines {la} and {lb}: {ctx}"))?;
            ensure!(
                pair.count >= (RUNS - 1) as u64,
                "found in {} of {RUNS} repetitions: {ctx}",
                pair.count
            );
            ensure!(
                pair.op.goroutine.is_some()
                    && pair.other.goroutine.is_some()
                    && pair.op.goroutine != pair.other.goroutine,
                "goroutines: {ctx}"
            );
            ensure!(
                !pair.op.stack.is_empty() && !pair.other.stack.is_empty(),
                "both stacks: {ctx}"
            );
            let why = pair.explanation.as_deref().unwrap_or("");
            ensure!(
                why.contains("synchronised") && pair.overlapped.is_some(),
                "explanation {why:?}: {ctx}"
            );
            eprintln!(
                "go {} {case}: -race in {reference}/{RUNS} runs, tracer {} times in {RUNS} \
                 repetitions ({why})",
                tc.version, pair.count
            );
        }
    }
    Ok(())
}

#[test]
fn synchronised_patterns_give_no_finding() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    for tc in classic_and_swiss()? {
        for case in SYNCHRONISED {
            let reference = race_detector_hits(&tc, case)?;
            ensure!(
                reference == 0,
                "go {}: -race reports {case} in {reference}/{RUNS} runs: the fixture is racy",
                tc.version
            );
            let (report, ctx) = traced(&tc, case, &[])?;
            let races = report.all_map_races()?;
            ensure!(
                races.is_empty(),
                "{} race finding(s) in a synchronised pattern: {:#?}\n{ctx}",
                races.len(),
                races
            );
            eprintln!(
                "go {} {case}: -race 0/{RUNS}, tracer 0 findings",
                tc.version
            );
        }
    }
    Ok(())
}

/// Synchronisation the probes cannot see (raw sync/atomic intrinsics) makes
/// a false report, as docs/maps.md says; declaring the functions that
/// perform it with `--sync-funcs` (one out of line, one inlined into the
/// waiting loop) orders the accesses, and a name not in the binary is a
/// clear error.
#[test]
fn declared_sync_funcs_order_what_the_probes_cannot_see() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    const CASE: &str = "atomic-flag";
    let (read, write) = (
        marker_line("hbrace", "// FLAG_READ")?,
        marker_line("hbrace", "// FLAG_WRITE")?,
    );
    for tc in classic_and_swiss()? {
        let reference = race_detector_hits(&tc, CASE)?;
        ensure!(
            reference == 0,
            "go {}: -race reports {CASE} in {reference}/{RUNS} runs: the fixture is racy",
            tc.version
        );
        let (report, ctx) = traced(&tc, CASE, &[])?;
        let found = report.unordered("concurrent_map_read_write")?;
        ensure!(
            found.iter().any(|f| {
                let lines = [&f.op, &f.other].map(|s| s.site.as_ref().map(|s| s.line));
                lines.contains(&Some(read)) && lines.contains(&Some(write))
            }),
            "undeclared, the flag's ordering is invisible: a read/write report between lines \
             {read} and {write} was expected: {ctx}"
        );
        let funcs = "main.publish,main.isReady";
        let (report, ctx) = traced(&tc, CASE, &["--sync-funcs", funcs])?;
        let races = report.all_map_races()?;
        ensure!(
            races.is_empty(),
            "{} race finding(s) with --sync-funcs {funcs}: {races:#?}\n{ctx}",
            races.len()
        );
        ensure!(
            ctx.contains("for --sync-funcs"),
            "the probe status counts the --sync-funcs probes: {ctx}"
        );
        let bin = build_fixture(&tc, "hbrace", Variant::Plain)?;
        let out = run_tracer(
            &[
                "run",
                "--maps",
                "deep",
                "--tcp",
                "off",
                "--sync-funcs",
                "main.nope",
                "--",
                bin.to_str().context("fixture path")?,
                "-case",
                CASE,
            ],
            true,
        )?;
        ensure!(
            !out.status.success()
                && out
                    .stderr
                    .contains("no function or inlined copy named `main.nope`"),
            "an unknown --sync-funcs name: {:?}\n{}",
            out.status,
            out.stderr
        );
        eprintln!(
            "go {} {CASE}: -race 0/{RUNS}; tracer reports it undeclared, 0 findings with \
             --sync-funcs {funcs}",
            tc.version
        );
    }
    Ok(())
}
