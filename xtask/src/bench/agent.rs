//! `cargo xtask bench agent`: what the node agent costs and how fast it is.
//!
//! - attach latency: from a process's exec to its probes being live, for a
//!   binary the agent already knows (the common case on a node) and for a
//!   binary seen for the first time;
//! - the agent's RSS and CPU, idle and while tracing 20 Go processes with
//!   lock contention and TCP flows, at a 1 s refresh;
//! - how long one snapshot takes to build (the agent logs it);
//! - Watch throughput: 50 concurrent `tracer top --connect --json` clients.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{stats::quantile, workload::bench_dir};
use crate::{
    go::{build_go, newest_go},
    shell::{build_tracer, run, step, tracer_bin},
};

/// A `tracer agent` under measurement.
struct Agent {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    report: PathBuf,
}

impl Agent {
    fn start(extra: &[&str]) -> Result<Self> {
        let report = std::env::temp_dir().join(format!("bench-agent-{}.json", std::process::id()));
        let _ = std::fs::remove_file(&report);
        let mut child = Command::new(tracer_bin())
            .arg("agent")
            .arg("--json-report")
            .arg(&report)
            // No servers: only the agent's own cost is measured.
            .args([
                "--grpc-listen",
                "off",
                "--unix-socket",
                "off",
                "--metrics-listen",
                "off",
            ])
            .args(extra)
            .env("TRACER_LOG", "debug,aya=warn,aya_obj=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting tracer agent")?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().context("agent stderr")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
        let agent = Self { child, log, report };
        agent.wait_for("agent ready", Duration::from_secs(60))?;
        Ok(agent)
    }

    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn wait_for(&self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.lines().iter().any(|l| l.contains(needle)) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("agent did not log {needle:?}")
    }

    /// (CPU seconds used so far, RSS in kB).
    fn usage(&self) -> Result<(f64, u64)> {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let after = stat.rsplit_once(')').context("stat")?.1;
        let f: Vec<&str> = after.split_whitespace().collect();
        // Fields 14 and 15 (utime, stime) are 12 and 13 after the comm.
        let ticks: f64 = f.get(11).context("utime")?.parse::<f64>()?
            + f.get(12).context("stime")?.parse::<f64>()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let rss = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("VmRSS")?;
        // USER_HZ is 100 on every Linux we run on.
        Ok((ticks / 100.0, rss))
    }

    /// CPU share of one core and peak RSS over `d`.
    fn measure(&self, d: Duration) -> Result<(f64, u64)> {
        let (c0, mut peak) = self.usage()?;
        let t0 = Instant::now();
        while t0.elapsed() < d {
            std::thread::sleep(Duration::from_millis(250));
            peak = peak.max(self.usage()?.1);
        }
        let (c1, rss) = self.usage()?;
        Ok(((c1 - c0) / t0.elapsed().as_secs_f64(), peak.max(rss)))
    }

    fn stop(mut self) -> Result<(Value, Vec<String>)> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc_kill(self.child.id() as i32, 15) };
        let status = self.child.wait()?;
        if !status.success() {
            bail!("agent exited with {status}");
        }
        let bytes = std::fs::read(&self.report).context("agent report")?;
        let _ = std::fs::remove_file(&self.report);
        Ok((serde_json::from_slice(&bytes)?, self.lines()))
    }
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

pub(super) fn bench_agent() -> Result<()> {
    build_tracer()?;
    let (newest, go) = newest_go()?;
    let dir = bench_dir()?;
    let contention = dir.join(format!("agent-contention-go{newest}"));
    let demo = dir.join(format!("agent-demo-go{newest}"));
    build_go(&go, "contention", &contention, false)?;
    build_go(&go, "demo", &demo, false)?;

    step("attach latency: 40 short runs of a known binary, then first sight of new binaries");
    let filter = dir.to_string_lossy().into_owned();
    let agent = Agent::start(&["--exe", &filter])?;
    let short = ["-g", "2", "-m", "5", "-hold", "1ms"];
    run(Command::new(&contention).args(short).stdout(Stdio::null()))?;
    agent.wait_for("analysed", Duration::from_secs(30))?;
    let mut pids = vec![];
    for _ in 0..40 {
        let child = Command::new(&contention)
            .args(short)
            .stdout(Stdio::null())
            .spawn()?;
        pids.push(child.id());
        child.wait_with_output()?;
    }
    // First sight: fresh copies (new inodes) of the demo binary.
    let mut first = vec![];
    for i in 0..5 {
        let copy = dir.join(format!("agent-first-{i}"));
        std::fs::copy(&demo, &copy)?;
        let mut child = Command::new(&copy)
            .args(["-duration", "1s"])
            .stdout(Stdio::null())
            .spawn()?;
        first.push(child.id());
        child.wait()?;
        let _ = std::fs::remove_file(&copy);
    }
    std::thread::sleep(Duration::from_millis(500));
    let (report, _) = agent.stop()?;
    let latency = |pid: u32| -> Option<f64> {
        report["snapshot"]["processes"]
            .as_array()?
            .iter()
            .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))?["attach_latency_ns"]
            .as_f64()
            .map(|ns| ns / 1e6)
    };
    let known: Vec<f64> = pids.iter().filter_map(|&p| latency(p)).collect();
    let fresh: Vec<f64> = first.iter().filter_map(|&p| latency(p)).collect();
    println!(
        "known binary: {} of {} runs traced; exec -> probes live p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        known.len(),
        pids.len(),
        quantile(&known, 0.5),
        quantile(&known, 0.9),
        quantile(&known, 0.99),
        quantile(&known, 1.0),
    );
    println!(
        "first sight of a binary (analysis + probe placement): {} of {} traced; p50 {:.1} ms, max {:.1} ms",
        fresh.len(),
        first.len(),
        quantile(&fresh, 0.5),
        quantile(&fresh, 1.0),
    );

    step("agent RSS and CPU: idle, then tracing 20 Go processes (contention + TCP), 1 s refresh");
    let agent = Agent::start(&["--exe", &filter, "--refresh", "1s"])?;
    let (idle_cpu, idle_rss) = agent.measure(Duration::from_secs(10))?;
    println!(
        "idle: {:.2}% of one core, RSS {:.1} MB",
        idle_cpu * 100.0,
        idle_rss as f64 / 1024.0
    );
    let mut fleet = vec![];
    for _ in 0..20 {
        fleet.push(
            Command::new(&demo)
                .args(["-duration", "40s", "-clients", "2", "-think", "2ms"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
    }
    std::thread::sleep(Duration::from_secs(5));
    let (busy_cpu, busy_rss) = agent.measure(Duration::from_secs(20))?;
    for mut c in fleet {
        let _ = c.kill();
        let _ = c.wait();
    }
    let (report, lines) = agent.stop()?;
    let traced = report["snapshot"]["processes"]
        .as_array()
        .map_or(0, |p| p.len());
    let snap_ms: Vec<f64> = lines
        .iter()
        .filter_map(|l| {
            let rest = l.split(" processes built in ").nth(1)?;
            rest.trim_end_matches(" ms").trim().parse().ok()
        })
        .collect();
    println!(
        "tracing 20 demo processes ({traced} in the last snapshot): {:.2}% of one core, peak RSS {:.1} MB",
        busy_cpu * 100.0,
        busy_rss as f64 / 1024.0
    );
    println!(
        "snapshot build time over {} refreshes: p50 {:.1} ms, max {:.1} ms",
        snap_ms.len(),
        quantile(&snap_ms, 0.5),
        quantile(&snap_ms, 1.0)
    );
    Ok(())
}
