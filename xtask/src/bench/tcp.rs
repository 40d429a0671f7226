//! `cargo xtask bench tcp`: what TCP flow tracing costs a Go program.
//!
//! Loopback workloads of `tests/fixtures/tcpload` (it times itself, so
//! tracer's start-up is not counted): bulk transfers (throughput) and many
//! short connections (connections per second), each in two set-ups: client
//! and server in one traced process (both ends of every connection traced,
//! the scheduler free to place them), and a server process traced alone,
//! pinned to CPU 1, with an untraced client process pinned to CPU 0 (what a
//! traced service pays; pinning removes most of this VM's run-to-run
//! spread), plus bulk against that server reading 32 KiB per call
//! (gRPC-go's read buffer) instead of `io.Discard`'s 8 KiB. Untraced, `tracer run`, `tracer run --tcp-hooks tracepoint` and
//! `tracer run --tcp off` (the lock and map probes alone) run in an order
//! rotated each round; every round's traced runs are compared with that
//! round's untraced run, and the median and quartiles of those paired
//! ratios are reported. Then one `tracer run --bpf-stats` per workload gives
//! each TCP program's run count and run time.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{
    stats::{median, quantile},
    workload::{bench_dir, elapsed_ns, workload_cmd},
};
use crate::{
    go::{build_go, newest_go},
    shell::{build_tracer, step, tracer_bin},
};

const ROUNDS: usize = 11;
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

/// How a workload is run: one process, or a traced-alone server.
#[derive(Clone, Copy)]
enum Setup {
    /// Client and server in one process, traced together.
    OneProcess,
    /// `-mode serve` under the configuration on CPU 1; an untraced client
    /// process on CPU 0.
    PinnedServer,
}

struct Workload {
    name: &'static str,
    args: Vec<String>,
    /// Extra arguments of the traced-alone server ([`Setup::PinnedServer`]).
    server_args: &'static [&'static str],
    /// Bytes (bulk) or connections per run.
    units: f64,
    setup: Setup,
}

/// gRPC-go's default read buffer (`ReadBufferSize`, 32 KiB): the bulk row
/// with it shows how the cost follows read calls, not bytes.
const GRPC_READ: &[&str] = &["-readbuf", "32768"];

/// Each workload of [`workloads`] in one process, then the same load
/// against a server traced alone (pinned), then bulk against a traced-alone
/// server reading 32 KiB per call.
fn all_workloads() -> Vec<Workload> {
    let pinned = [
        "bulk, server process traced alone, pinned (4 GiB)",
        "short connections, server process traced alone, pinned (20000, 8 at a time)",
    ];
    let base = workloads();
    let one = base
        .clone()
        .into_iter()
        .map(|(name, args, units)| Workload {
            name,
            args,
            server_args: &[],
            units,
            setup: Setup::OneProcess,
        });
    let bulk = base[0].clone();
    let alone = base
        .into_iter()
        .zip(pinned)
        .map(|((_, args, units), name)| Workload {
            name,
            args,
            server_args: &[],
            units,
            setup: Setup::PinnedServer,
        });
    let grpc_reads = Workload {
        name: "bulk, server process traced alone, pinned, 32 KiB per read (4 GiB)",
        args: bulk.1,
        server_args: GRPC_READ,
        units: bulk.2,
        setup: Setup::PinnedServer,
    };
    one.chain(alone).chain([grpc_reads]).collect()
}

pub(super) fn bench_tcp() -> Result<()> {
    build_tracer()?;
    let (newest, go) = newest_go()?;
    let dir = bench_dir()?;
    let bin = dir.join(format!("tcpload-go{newest}"));
    step(&format!("building the TCP workload with Go {newest}"));
    build_go(&go, "tcpload", &bin, false)?;

    step("TCP tracing overhead: throughput relative to untraced (higher is better)");
    println!(
        "| workload | configuration | median rate | paired ratio vs untraced, median of {ROUNDS} | quartiles |"
    );
    println!("|---|---|---|---|---|");
    for w in all_workloads() {
        let mut times: Vec<Vec<f64>> = vec![vec![]; CONFIGS.len()];
        for round in 0..ROUNDS {
            for i in rotated(round) {
                let t = match w.setup {
                    Setup::OneProcess => one_process(&bin, CONFIGS[i].1, &w)?,
                    Setup::PinnedServer => server_alone(&bin, CONFIGS[i].1, &w)?,
                };
                times[i].push(t);
            }
        }
        print_rows(&w, times);
    }
    bpf_stats(&bin)
}

fn one_process(bin: &Path, tracer_args: Option<&[&str]>, w: &Workload) -> Result<f64> {
    let out = workload_cmd(bin, tracer_args).args(&w.args).output()?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            w.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    elapsed_ns(&String::from_utf8_lossy(&out.stdout))
}

/// Config indices for one round, starting one later each round: a flood
/// leaves thousands of ports in TIME_WAIT and machine state drifts, so a
/// fixed order would favour or penalise whichever configuration runs first.
fn rotated(round: usize) -> impl Iterator<Item = usize> {
    (0..CONFIGS.len()).map(move |i| (i + round) % CONFIGS.len())
}

/// Rows of one workload: the median rate of each configuration, and the
/// median and quartiles of its per-round ratio to that round's untraced run
/// (pairing cancels the slow drift of this VM's speed).
fn print_rows(w: &Workload, times: Vec<Vec<f64>>) {
    for (i, (label, _)) in CONFIGS.iter().enumerate() {
        let rate = w.units / (median(&times[i]) / 1e9);
        let cell = if w.units == BULK_BYTES as f64 {
            format!("{:.2} GB/s", rate / 1e9)
        } else {
            format!("{rate:.0} conn/s")
        };
        let ratios: Vec<f64> = times[0]
            .iter()
            .zip(&times[i])
            .map(|(untraced, t)| untraced / t)
            .collect();
        println!(
            "| {} | {label} | {cell} | {:.3} | {:.3}–{:.3} |",
            w.name,
            quantile(&ratios, 0.5),
            quantile(&ratios, 0.25),
            quantile(&ratios, 0.75)
        );
    }
}

/// `tcpload -mode serve` (plus the workload's server arguments) on CPU 1
/// (under `tracer run` when `tracer_args` is set; the tracer shares that
/// CPU), and an untraced client process on CPU 0 running the workload's
/// arguments against it; the client's time, ns.
fn server_alone(bin: &Path, tracer_args: Option<&[&str]>, w: &Workload) -> Result<f64> {
    use std::io::{BufRead, BufReader};
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1"]);
    if let Some(a) = tracer_args {
        cmd.arg(tracer_bin()).arg("run").args(a).arg("--");
    }
    let mut server = cmd
        .arg(bin)
        .args(["-mode", "serve"])
        .args(w.server_args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting the server (taskset from util-linux)")?;
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
    let out = Command::new("taskset")
        .args(["-c", "0"])
        .arg(bin)
        .args(&w.args)
        .args(["-addr", &addr])
        .output()?;
    drop(server.stdin.take());
    // Drain the server's output so it can exit.
    for _ in lines.by_ref() {}
    let status = server.wait()?;
    if !out.status.success() || !status.success() {
        bail!(
            "server-alone run failed (server {status}): {}",
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
        let out = workload_cmd(bin, Some(&["--bpf-stats", "--json-report", r]))
            .args(&args)
            .output()?;
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
