//! `cargo xtask bench tcp`: what TCP flow tracing costs a Go program.
//!
//! Two loopback workloads of `tests/fixtures/tcpload` (it times itself, so
//! tracer's start-up is not counted): one bulk transfer (throughput) and many
//! short connections (connections per second). Untraced, `tracer run` and
//! `tracer run --tcp off` (the lock and map probes alone) run interleaved, in
//! an order rotated each round, with `tracer run --tcp-hooks tracepoint`;
//! then one `tracer run --bpf-stats` per workload gives each TCP program's
//! run count and run time.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    bench::{elapsed_ns, median},
    setup::GO_VERSIONS,
    shell::{build_tracer, cache_dir, step, tracer_bin},
};

const ROUNDS: usize = 9;
const BULK_BYTES: u64 = 4 << 30;
const CONNS: u64 = 20000;

/// (label, tracer arguments before `--`; None: untraced).
/// `--tcp-hooks tracepoint` shows, side by side, what raw tracepoints (the
/// default where kprobes and fentry are missing) save over tracefs-offset
/// tracepoints.
const CONFIGS: [(&str, Option<&[&str]>); 4] = [
    ("untraced", None),
    ("tracer run", Some(&[])),
    (
        "tracer run --tcp-hooks tracepoint",
        Some(&["--tcp-hooks", "tracepoint"]),
    ),
    ("tracer run --tcp off", Some(&["--tcp", "off"])),
];

fn workloads() -> [(&'static str, Vec<String>, f64); 2] {
    [
        (
            "bulk (1 connection, 4 GiB)",
            vec![
                "-mode".into(),
                "bulk".into(),
                "-bytes".into(),
                BULK_BYTES.to_string(),
            ],
            BULK_BYTES as f64,
        ),
        (
            "short connections (20000, 8 at a time, 100 B each)",
            vec![
                "-mode".into(),
                "flood".into(),
                "-n".into(),
                CONNS.to_string(),
                "-c".into(),
                "8".into(),
            ],
            CONNS as f64,
        ),
    ]
}

fn workload_cmd(bin: &Path, tracer_args: Option<&[&str]>, args: &[String]) -> Command {
    let mut cmd = match tracer_args {
        Some(a) => {
            let mut c = Command::new(tracer_bin());
            c.arg("run").args(a).arg("--").arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.args(args);
    cmd
}

pub fn bench_tcp() -> Result<()> {
    build_tracer()?;
    let newest = GO_VERSIONS.last().context("no Go version")?;
    let go = cache_dir().join("go").join(newest).join("bin/go");
    let dir = cache_dir().join("bench");
    std::fs::create_dir_all(&dir)?;
    let bin = dir.join(format!("tcpload-go{newest}"));
    step(&format!("building the TCP workload with Go {newest}"));
    crate::bench::build_go(&go, "tcpload", &bin, false)?;

    step("TCP tracing overhead: throughput relative to untraced (higher is better)");
    println!("| workload | configuration | median of {ROUNDS} | vs untraced |");
    println!("|---|---|---|---|");
    for (name, args, units) in workloads() {
        let mut times: Vec<Vec<f64>> = vec![vec![]; CONFIGS.len()];
        for round in 0..ROUNDS {
            for i in rotated(round) {
                let out = workload_cmd(&bin, CONFIGS[i].1, &args).output()?;
                if !out.status.success() {
                    bail!("{name} failed: {}", String::from_utf8_lossy(&out.stderr));
                }
                times[i].push(elapsed_ns(&String::from_utf8_lossy(&out.stdout))?);
            }
        }
        print_rows(name, units, times);
    }
    // A server traced alone, its clients in another, untraced process: what
    // a traced service pays (one traced flow per connection, not two).
    let name = "short connections, server process traced alone (20000, 8 at a time)";
    let mut times: Vec<Vec<f64>> = vec![vec![]; CONFIGS.len()];
    for round in 0..ROUNDS {
        for i in rotated(round) {
            times[i].push(server_alone(&bin, CONFIGS[i].1)?);
        }
    }
    print_rows(name, CONNS as f64, times);
    bpf_stats(&bin)
}

/// Config indices for one round, starting one later each round: a flood
/// leaves thousands of ports in TIME_WAIT and machine state drifts, so a
/// fixed order would favour or penalise whichever configuration runs first.
fn rotated(round: usize) -> impl Iterator<Item = usize> {
    (0..CONFIGS.len()).map(move |i| (i + round) % CONFIGS.len())
}

fn print_rows(name: &str, units: f64, times: Vec<Vec<f64>>) {
    let med: Vec<f64> = times.into_iter().map(median).collect();
    for (i, (label, _)) in CONFIGS.iter().enumerate() {
        let rate = units / (med[i] / 1e9);
        let cell = if units == BULK_BYTES as f64 {
            format!("{:.2} GB/s", rate / 1e9)
        } else {
            format!("{rate:.0} conn/s")
        };
        println!("| {name} | {label} | {cell} | {:.3} |", med[0] / med[i]);
    }
}

/// One flood from an untraced client process against `tcpload -mode serve`
/// (under `tracer run` when `tracer_args` is set); the clients' time, ns.
fn server_alone(bin: &Path, tracer_args: Option<&[&str]>) -> Result<f64> {
    use std::io::{BufRead, BufReader};
    let mut server = workload_cmd(bin, tracer_args, &["-mode".into(), "serve".into()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting the server")?;
    let mut lines = BufReader::new(server.stdout.take().context("server stdout")?).lines();
    let addr = loop {
        match lines.next() {
            Some(line) => {
                if let Some(a) = line?.strip_prefix("listen addr=") {
                    break a.to_owned();
                }
            }
            None => bail!("the server exited before listening"),
        }
    };
    let out = Command::new(bin)
        .args([
            "-mode",
            "flood",
            "-addr",
            &addr,
            "-n",
            &CONNS.to_string(),
            "-c",
            "8",
        ])
        .output()?;
    drop(server.stdin.take());
    let status = server.wait()?;
    if !out.status.success() || !status.success() {
        bail!(
            "server-alone flood failed (server {status}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    elapsed_ns(&String::from_utf8_lossy(&out.stdout))
}

/// One `tracer run --bpf-stats` per workload: per TCP program, runs, mean run
/// time and runs per second of workload. Tracepoints fire for every socket
/// on the machine; the programs return early for untraced ones.
fn bpf_stats(bin: &Path) -> Result<()> {
    step("TCP programs under --bpf-stats (one traced run per workload)");
    let report = std::env::temp_dir().join(format!("bench-tcp-{}.json", std::process::id()));
    println!("| workload | program | runs | runs/s | mean ns/run | CPU % of one core |");
    println!("|---|---|---|---|---|---|");
    for (name, args, _) in workloads() {
        let _ = std::fs::remove_file(&report);
        let r = report.to_str().context("report path")?;
        let out = workload_cmd(bin, Some(&["--bpf-stats", "--json-report", r]), &args).output()?;
        if !out.status.success() {
            bail!("{name} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let secs = elapsed_ns(&String::from_utf8_lossy(&out.stdout))? / 1e9;
        let json: Value = serde_json::from_slice(&std::fs::read(&report)?)?;
        let mut progs: Vec<&Value> = json["bpf_stats"]
            .as_array()
            .context("no bpf_stats in the report")?
            .iter()
            .filter(|p| p["program"].as_str().is_some_and(|n| n.starts_with("tcp_")))
            .filter(|p| p["run_count"].as_u64().unwrap_or(0) > 0)
            .collect();
        progs.sort_by_key(|p| std::cmp::Reverse(p["run_count"].as_u64()));
        for p in progs {
            let runs = p["run_count"].as_u64().unwrap_or(0) as f64;
            let ns = p["run_time_ns"].as_u64().unwrap_or(0) as f64;
            println!(
                "| {name} | {} | {runs:.0} | {:.0} | {:.0} | {:.2} |",
                p["program"].as_str().unwrap_or("?"),
                runs / secs,
                ns / runs,
                ns / 1e9 / secs * 100.0
            );
        }
    }
    let _ = std::fs::remove_file(&report);
    Ok(())
}
