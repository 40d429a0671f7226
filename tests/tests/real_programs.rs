//! Third-party Go programs from the registries, traced as a user would trace
//! them (both installed by `cargo xtask setup`):
//!
//! - Debian's etcd 3.4 (stripped, Go 1.19): `tracer attach` to a running
//!   server under a write load. Its own packages must be named at its lock
//!   sites, and every key it acknowledged must still be there afterwards;
//! - esbuild from npm (stripped, no `.go.buildinfo`): `inspect` finds the
//!   Go version that is really in the binary, and `tracer run` of a bundle
//!   writes byte for byte what an untraced run writes.
//!
//! Debian's prometheus is traced in tests/tests/observability.rs, next to
//! the Prometheus harness it shares.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use anyhow::{Context, Result, ensure};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use serde_json::Value;
use tracer_tests::{
    cache_dir,
    net::{free_addr, http},
    privileged_test,
    process::{KillOnDrop, read_log, scratch_dir, wait_until_ready},
    report::Report,
    run_tracer, serial, tracer_bin,
};

/// Keep in step with `ESBUILD_VERSION` in xtask/src/setup.rs.
const ESBUILD_VERSION: &str = "0.28.2";

/// An etcd member of its own on loopback, with a fresh data directory.
struct Etcd {
    child: KillOnDrop,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Etcd {
    fn start() -> Result<Self> {
        let dir = scratch_dir("etcd")?;
        let (addr, peer) = (free_addr()?, free_addr()?);
        let log = std::fs::File::create(dir.join("etcd.log"))?;
        let child = KillOnDrop(
            Command::new("etcd")
                .args(["--name", "t", "--data-dir"])
                .arg(dir.join("data"))
                .arg(format!("--listen-client-urls=http://{addr}"))
                .arg(format!("--advertise-client-urls=http://{addr}"))
                .arg(format!("--listen-peer-urls=http://{peer}"))
                .arg(format!("--initial-advertise-peer-urls=http://{peer}"))
                .arg(format!("--initial-cluster=t=http://{peer}"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("starting etcd (run `cargo xtask setup`)")?,
        );
        let mut e = Etcd { child, addr, dir };
        let log = e.dir.join("etcd.log");
        wait_until_ready(
            &mut e.child.0,
            "etcd",
            || read_log(&log),
            || {
                http(addr, "GET", "/health", "")
                    .is_ok_and(|(c, b)| c == 200 && b.contains("\"true\""))
            },
        )?;
        Ok(e)
    }

    fn log(&self) -> String {
        read_log(&self.dir.join("etcd.log"))
    }
}

/// One call of etcd's v3 JSON gateway (bytes are base64 there).
fn v3(addr: SocketAddr, call: &str, body: &Value) -> Result<Value> {
    let (code, text) = http(addr, "POST", &format!("/v3/kv/{call}"), &body.to_string())?;
    ensure!(code == 200, "/v3/kv/{call}: {code} {text}");
    serde_json::from_str(&text).with_context(|| format!("/v3/kv/{call} answered {text}"))
}

fn put(addr: SocketAddr, key: &str, value: &str) -> Result<()> {
    v3(
        addr,
        "put",
        &serde_json::json!({"key": B64.encode(key), "value": B64.encode(value)}),
    )
    .map(drop)
}

/// Keys under `prefix` etcd holds now.
fn count_prefix(addr: SocketAddr, prefix: &str) -> Result<u64> {
    // The range end of a prefix: its last byte plus one.
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let r = v3(
        addr,
        "range",
        &serde_json::json!({"key": B64.encode(prefix), "range_end": B64.encode(&end), "count_only": true}),
    )?;
    // int64 fields are JSON strings in the gateway; an empty range omits it.
    match &r["count"] {
        Value::Null => Ok(0),
        Value::String(s) => s.parse().with_context(|| format!("count {s:?}")),
        other => other.as_u64().with_context(|| format!("count {other}")),
    }
}

/// Whether a report's function name is a real one (the symbolizer gives
/// `?` for a PC it cannot place).
fn named(function: &str) -> bool {
    !function.is_empty() && !function.starts_with('?')
}

#[test]
fn debian_etcd_under_writes_names_its_own_lock_sites_and_loses_no_key() -> Result<()> {
    privileged_test!();
    let _serial = serial();
    let mut etcd = Etcd::start()?;
    let addr = etcd.addr;
    let pid = etcd.child.0.id().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    // Four writers of distinct keys: etcd serialises them through raft,
    // its apply loop and the backend's batch transaction.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let stop = stop.clone();
            std::thread::spawn(move || -> Result<u64> {
                let mut acked = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    put(addr, &format!("load/{w}/{acked}"), "v")?;
                    acked += 1;
                }
                Ok(acked)
            })
        })
        .collect();
    let out = run_tracer(&["attach", "--pid", &pid, "--duration", "4s"], true);
    stop.store(true, Ordering::Relaxed);
    let mut acked = 0;
    for w in writers {
        acked += w
            .join()
            .map_err(|_| anyhow::anyhow!("writer thread panicked"))?
            .context("a put failed while etcd was traced")?;
    }
    let out = out?;
    let ctx = format!("stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    eprintln!("{acked} puts acknowledged while traced; {}", out.stdout);
    ensure!(out.status.success(), "tracer attach failed: {ctx}");
    let json = out.report.as_ref().context("no report")?;
    let report = Report::parse(json)?;
    ensure!(
        report.target.go_version.contains("1.19"),
        "Debian's etcd is no longer Go 1.19 ({}): update this test",
        report.target.go_version
    );
    ensure!(
        report.probes.iter().all(|p| p.status == "attached"),
        "lock probes not attached: {:?}",
        report.probes
    );
    ensure!(
        report.locks_of_kind("unknown").is_empty(),
        "waits of no known lock kind: {ctx}"
    );
    // Every wait is placed at a named function, and etcd's own code is
    // among them: the stripped binary's pclntab names the sites.
    ensure!(
        report
            .locks
            .iter()
            .all(|l| named(&l.site.function) && l.site.line > 0),
        "a lock site is not symbolized: {ctx}"
    );
    // The most waited-on site is etcd's own (its backend's batch
    // transaction, in every run so far), and the Go 1.19 RWMutex path sees
    // the readers and writers of its wait list.
    let top = report.locks.iter().max_by_key(|l| l.wait_ns_total);
    ensure!(
        top.is_some_and(|l| l.site.function.starts_with("go.etcd.io/etcd/")),
        "the top lock site under {acked} writes is not in etcd's own packages: {ctx}"
    );
    ensure!(
        report
            .locks
            .iter()
            .any(|l| l.kind.starts_with("rwmutex_")
                && l.site.function.starts_with("go.etcd.io/etcd/")),
        "no RWMutex wait in etcd's own packages under {acked} writes: {ctx}"
    );
    // The budgeted race detector found etcd's own map call sites.
    let sites = report
        .race_budget
        .as_ref()
        .context("no race_budget")?
        .call_sites;
    ensure!(sites > 100, "only {sites} map call sites in etcd: {ctx}");
    ensure!(
        acked > 50,
        "only {acked} puts acknowledged while traced: {ctx}"
    );
    ensure!(
        etcd.child.0.try_wait()?.is_none(),
        "etcd exited while traced:\n{}",
        etcd.log()
    );
    // Every put etcd acknowledged is there: tracing lost or broke nothing.
    let held = count_prefix(addr, "load/")?;
    ensure!(
        held == acked,
        "etcd holds {held} of the {acked} keys it acknowledged:\n{}",
        etcd.log()
    );
    put(addr, "after", "detach").context("etcd stopped serving after the detach")?;
    Ok(())
}

fn esbuild() -> Result<PathBuf> {
    let bin = cache_dir()
        .join("esbuild")
        .join(ESBUILD_VERSION)
        .join("package/bin/esbuild");
    ensure!(
        bin.is_file(),
        "{} missing: run `cargo xtask setup`",
        bin.display()
    );
    Ok(bin)
}

/// A JavaScript project of `modules` chained modules, each building a Map:
/// enough parsing for esbuild's goroutines to share its caches.
fn js_project(dir: &Path, modules: usize) -> Result<PathBuf> {
    let src = dir.join("src");
    std::fs::create_dir_all(&src)?;
    for i in 1..=modules {
        let next = i + 1;
        let body = if i == modules {
            format!("export function f{i}(x) {{ return x }}\n")
        } else {
            format!(
                "import {{ f{next} }} from './m{next}.js';\n\
                 export function f{i}(x) {{ const m = new Map(); for (let k = 0; k < x; k++) \
                 m.set('k' + k, k * {i}); return [...m.values()].reduce((a, b) => a + b, f{next}(0)) }}\n"
            )
        };
        std::fs::write(src.join(format!("m{i}.js")), body)?;
    }
    let entry = src.join("index.js");
    std::fs::write(
        &entry,
        "import { f1 } from './m1.js';\nconsole.log(f1(10));\n",
    )?;
    Ok(entry)
}

#[test]
fn npm_esbuild_without_build_info_is_analysed_and_traced_without_changing_its_output() -> Result<()>
{
    privileged_test!();
    let _serial = serial();
    let bin = esbuild()?;
    let inspect = Command::new(tracer_bin()?)
        .args(["inspect", "--json"])
        .arg(&bin)
        .output()?;
    ensure!(
        inspect.status.success(),
        "inspect failed: {}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let info: Value = serde_json::from_slice(&inspect.stdout).context("inspect --json")?;
    let version = info["go_version"]
        .as_str()
        .context("inspect --json has no go_version")?
        .to_owned();
    ensure!(
        info["go_version_source"] == "runtime_build_version",
        "esbuild's Go version not read from runtime.buildVersion: {info}"
    );
    // The version is the string the binary carries, not a guess.
    let bytes = std::fs::read(&bin)?;
    ensure!(
        version.starts_with("go1.")
            && bytes
                .windows(version.len())
                .any(|w| w == version.as_bytes()),
        "{version:?} is not a Go version string of the binary"
    );
    let functions = info["function_count"]
        .as_u64()
        .context("inspect --json has no function_count")?;
    ensure!(
        functions > 5000,
        "only {functions} functions from esbuild's pclntab"
    );

    let dir = scratch_dir("esbuild")?;
    let entry = js_project(&dir, 2000)?;
    let bundle = |out: &Path| -> Vec<String> {
        vec![
            bin.display().to_string(),
            entry.display().to_string(),
            "--bundle".into(),
            "--minify".into(),
            format!("--outfile={}", out.display()),
        ]
    };
    let (plain, traced) = (dir.join("plain.js"), dir.join("traced.js"));
    let args = bundle(&plain);
    let st = Command::new(&args[0]).args(&args[1..]).output()?;
    ensure!(
        st.status.success(),
        "untraced esbuild failed: {}",
        String::from_utf8_lossy(&st.stderr)
    );
    let args = bundle(&traced);
    let mut run: Vec<&str> = vec!["run", "--"];
    run.extend(args.iter().map(String::as_str));
    let out = run_tracer(&run, true)?;
    let ctx = format!("stdout:\n{}\nstderr:\n{}", out.stdout, out.stderr);
    ensure!(out.status.success(), "tracer run esbuild failed: {ctx}");
    ensure!(
        std::fs::read(&plain)? == std::fs::read(&traced)?,
        "the traced bundle differs from the untraced one: {ctx}"
    );
    let json = out.report.as_ref().context("no report")?;
    let report = Report::parse(json)?;
    ensure!(
        report.target.go_version == version
            && json["target"]["go_version_source"] == "runtime_build_version",
        "the run report's version {:?} is not inspect's {version:?}: {ctx}",
        json["target"]
    );
    ensure!(
        !report.probes.is_empty() && report.probes.iter().all(|p| p.status == "attached"),
        "lock probes not attached: {:?}",
        report.probes
    );
    ensure!(
        report.locks.iter().all(|l| named(&l.site.function)),
        "a lock site is not symbolized: {ctx}"
    );
    let sites = report
        .race_budget
        .as_ref()
        .context("no race_budget")?
        .call_sites;
    ensure!(sites > 100, "only {sites} map call sites in esbuild: {ctx}");
    Ok(())
}
