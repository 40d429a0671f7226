//! The budgeted map race detector (issue #20), on by default: `tracer run`
//! with no flags on `tests/fixtures/service` (handlers hammering two
//! guarded maps, a struct-field routing table read by handlers and written
//! by a refresher without a lock) must report the read/write race with
//! both functions, spend no more than the budget allowed, probe the cold
//! sites continuously and take the hot ones off. The same program with its
//! table locked (`-race-free`) must give no finding.

use anyhow::{Context, Result, ensure};
use tracer_tests::{
    GoToolchain, Variant, build_fixture, classic_and_swiss, marker_line, newest_go,
    privileged_test,
    report::{RaceBudget, Report},
    run_tracer,
};

const READER: &str = "main.(*server).route";
const WRITER: &str = "main.(*server).refresh";

enum Served {
    Done(Box<(Report, RaceBudget, String)>),
    /// The accesses really overlapped, the runtime's own check killed the
    /// program and tracer reported that crash.
    RuntimeCaught,
}

/// [`serve_once`], again when the runtime's check killed the program (about
/// a few runs in a hundred: the race is real); at most twice more.
fn serve(tc: &GoToolchain, extra: &[&str]) -> Result<(Report, RaceBudget, String)> {
    for _ in 0..3 {
        match serve_once(tc, extra)? {
            Served::Done(r) => return Ok(*r),
            Served::RuntimeCaught => eprintln!(
                "go {}: the runtime's own check fired (tracer reported it); running again",
                tc.version
            ),
        }
    }
    anyhow::bail!(
        "go {}: the runtime killed the program three times",
        tc.version
    )
}

/// `tracer run` with default map flags on the service fixture.
fn serve_once(tc: &GoToolchain, extra: &[&str]) -> Result<Served> {
    let bin = build_fixture(tc, "service", Variant::Plain)?;
    let bin = bin.to_str().context("fixture path")?;
    let mut args = vec!["run", "--tcp", "off", "--", bin];
    args.extend_from_slice(extra);
    let out = run_tracer(&args, true)?;
    let ctx = format!(
        "go {} {extra:?}: {:?}\nstdout:\n{}\nstderr:\n{}",
        tc.version,
        out.status,
        out.stdout,
        out.stderr.chars().take(4000).collect::<String>()
    );
    let json = out
        .report
        .clone()
        .with_context(|| format!("no report: {ctx}"))?;
    let report = Report::parse(&json)?;
    if !out.status.success() && out.stderr.contains("fatal error: concurrent map") {
        ensure!(
            !report.map_fatals()?.is_empty(),
            "the runtime's map check fired and tracer did not report it: {ctx}"
        );
        return Ok(Served::RuntimeCaught);
    }
    ensure!(
        out.status.success() && out.stdout.contains("requests="),
        "{ctx}"
    );
    let budget = report
        .race_budget
        .clone()
        .with_context(|| format!("no race_budget in the default mode: {ctx}"))?;
    let ctx = format!("{ctx}\nrace_budget: {}", json["race_budget"]);
    ensure!(
        (budget.budget - 0.01).abs() < 1e-9 && budget.trap_ns > 100.0,
        "default budget 1% and a measured trap cost: {ctx}"
    );
    ensure!(
        budget.spent_ns <= budget.allowed_ns && budget.spent_ns > 0,
        "probes cost {} ns, the budget allowed {} ns: {ctx}",
        budget.spent_ns,
        budget.allowed_ns
    );
    // The handlers' guarded maps are hit millions of times a second: too
    // hot to stay probed. The refresher's write is cold: probed throughout.
    let session = marker_line("service", "// SERVICE_SESSION_WRITE")?;
    let hot = budget.sites_at("main.(*server).session", session);
    ensure!(
        !hot.is_empty() && hot.iter().all(|s| s.state == "hot"),
        "guarded session map sites: {ctx}"
    );
    let write = budget.sites_at(WRITER, marker_line("service", "// SERVICE_ROUTE_WRITE")?);
    ensure!(
        write.len() == 1 && write[0].state == "continuous" && write[0].hits > 0,
        "refresher's write site: {ctx}"
    );
    Ok(Served::Done(Box::new((report, budget, ctx))))
}

#[test]
fn default_mode_finds_the_struct_field_race_within_budget() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    let read_line = marker_line("service", "// SERVICE_ROUTE_READ")?;
    let write_line = marker_line("service", "// SERVICE_ROUTE_WRITE")?;
    for tc in classic_and_swiss()? {
        let (report, budget, ctx) = serve(&tc, &["-duration", "60s"])?;
        let races = report.overlaps("concurrent_map_read_write")?;
        let race = races
            .iter()
            .find(|f| {
                (f.op.at(READER, read_line) && f.other.at(WRITER, write_line))
                    || (f.op.at(WRITER, write_line) && f.other.at(READER, read_line))
            })
            .with_context(|| format!("no read/write race between route and refresh: {ctx}"))?;
        ensure!(
            race.op.goroutine.is_some()
                && race.other.goroutine.is_some()
                && race.op.goroutine != race.other.goroutine
                && !race.op.stack.is_empty()
                && !race.other.stack.is_empty(),
            "both goroutines and stacks: {ctx}"
        );
        let others = report.all_map_races()?.len() - races.len();
        ensure!(others == 0, "races on the guarded maps: {ctx}");
        eprintln!(
            "go {}: race found {} times, first after {:.1} s; probes cost {:.1} ms of {:.1} ms \
             allowed over {:.0} s ({} sites: {} continuous, {} hot; trap {:.1} µs)",
            tc.version,
            race.count,
            race.first_seen_ns as f64 / 1e9,
            budget.spent_ns as f64 / 1e6,
            budget.allowed_ns as f64 / 1e6,
            budget.elapsed_ns as f64 / 1e9,
            budget.call_sites,
            budget.continuous,
            budget.hot,
            budget.trap_ns / 1000.0
        );
    }
    Ok(())
}

#[test]
fn default_mode_reports_nothing_on_guarded_maps() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    let tc = newest_go()?;
    let (report, budget, ctx) = serve(&tc, &["-duration", "20s", "-race-free"])?;
    let read = budget.sites_at(READER, marker_line("service", "// SERVICE_ROUTE_READ")?);
    ensure!(
        read.iter().any(|s| s.hits > 0),
        "the locked routing table's read site was probed: {ctx}"
    );
    let races = report.all_map_races()?;
    ensure!(
        races.is_empty(),
        "{} race finding(s): {races:#?}\n{ctx}",
        races.len()
    );
    Ok(())
}
