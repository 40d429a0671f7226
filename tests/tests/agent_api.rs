//! The agent's API from outside: `tests/python/tracer_client.py` (grpcio
//! stubs generated from the .proto at run time, prometheus_client's parser)
//! against
//! - a server over a synthetic hub (no root: checks the client and the
//!   server agree on the wire format, deltas and metrics structure), and
//! - the real `tracer agent` tracing the `contention` and `maps` fixtures
//!   (privileged), where the rows and findings must name the fixtures' own
//!   functions and lines.

use std::{
    io::Read,
    path::PathBuf,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use tracer_tests::{
    Variant,
    agent::{agent_command, wait_ready},
    build_fixture, cache_dir, go_toolchains, marker_line,
    net::{free_addr, http_get as http_status},
    privileged_test,
    process::{KillOnDrop, read_log, terminate},
};
use tracer_user::{
    agent::hub::{self, AgentInfo, Labels, NodeSnapshot},
    api::{
        ServeOptions,
        synthetic::{lock, map_fatal, process, report, site},
    },
    report::AnyFinding,
};

/// The venv `cargo xtask setup` installs grpcio, grpcio-tools and prometheus_client into.
fn python() -> Result<PathBuf> {
    let p = cache_dir().join("python/bin/python");
    ensure!(
        p.is_file(),
        "{} missing: run `cargo xtask setup` (it installs the Python API client packages)",
        p.display()
    );
    Ok(p)
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the Python client; returns its JSON summary or fails with its stderr.
fn run_client(args: &[String], timeout: Duration) -> Result<Value> {
    let mut child = Command::new(python()?)
        .arg(repo().join("python/tracer_client.py"))
        .arg("--proto-root")
        .arg(repo().join("../proto"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the Python client")?;
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if t0.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("Python client still running after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .context("stdout")?
        .read_to_string(&mut out)?;
    child
        .stderr
        .take()
        .context("stderr")?
        .read_to_string(&mut err)?;
    ensure!(
        status.success(),
        "Python client failed ({status}):\n{err}\nstdout:\n{out}"
    );
    let line = out.lines().last().context("no summary line")?;
    serde_json::from_str(line).with_context(|| format!("summary {line:?}"))
}

fn info() -> AgentInfo {
    AgentInfo {
        version: "synthetic".into(),
        node: "node-s".into(),
        kernel: "6.18".into(),
        btf: true,
        started_unix_ns: 1,
        hooks: vec![],
    }
}

/// One process whose lock at main.work gains 10 waits of 1 ms per generation.
fn synthetic(generation: u64) -> NodeSnapshot {
    let samples = vec![1_000_000; (10 * generation) as usize];
    NodeSnapshot {
        generation,
        taken_unix_ns: generation * 100_000_000,
        node: "node-s".into(),
        processes: vec![process(42, "svc", Labels::default())],
        reports: vec![report(
            42,
            vec![lock(
                "0x1000",
                "mutex",
                site("main.work", "/src/main.go", 12),
                &samples,
            )],
            vec![],
            vec![],
        )],
        ..Default::default()
    }
}

#[test]
fn python_client_reads_a_synthetic_agent() -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let (hub, writer) = hub::channel(info(), Duration::from_millis(100), 64);
    let bound = rt.block_on(tracer_user::api::bind(&ServeOptions {
        grpc_tcp: Some("127.0.0.1:0".parse()?),
        metrics: Some("127.0.0.1:0".parse()?),
        ..Default::default()
    }))?;
    let grpc = bound.grpc_addr().context("grpc")?;
    let metrics = bound.metrics_addr().context("metrics")?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(bound.serve(hub, async move {
        let _ = stop_rx.await;
    }));
    // The "agent": a new generation every 100 ms, and one map_fatal finding.
    writer.snapshots.send_replace(Arc::new(synthetic(1)));
    writer.findings.publish(
        42,
        "svc".into(),
        Labels::default(),
        1,
        AnyFinding::Map(Box::new(map_fatal(
            42,
            vec![
                site("main.writer", "/src/m.go", 20),
                site("runtime.goexit", "", 0),
            ],
        ))),
    );
    let feeder = rt.spawn(async move {
        for g in 2..600 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            writer.snapshots.send_replace(Arc::new(synthetic(g)));
        }
    });
    let summary = run_client(
        &[
            "--grpc".into(),
            grpc.to_string(),
            "--metrics".into(),
            metrics.to_string(),
            "--interval-ms".into(),
            "200".into(),
            "--timeout".into(),
            "30".into(),
            "--min-snapshots".into(),
            "5".into(),
            "--lock-function".into(),
            "main.work".into(),
            "--lock-line".into(),
            "12".into(),
            "--finding".into(),
            "map_fatal:main.writer".into(),
        ],
        Duration::from_secs(90),
    )?;
    eprintln!("python client summary: {summary}");
    feeder.abort();
    let _ = stop_tx.send(());
    rt.block_on(server)??;
    ensure!(summary["node"] == "node-s", "{summary}");
    ensure!(summary["snapshots"].as_u64() >= Some(5), "{summary}");
    ensure!(summary["lock"]["pid"] == 42, "{summary}");
    // 10 waits per generation, and the lock row only exists from generation 1.
    let c = summary["lock"]["contentions"].as_u64().unwrap_or(0);
    ensure!(c >= 10 && c % 10 == 0, "{summary}");
    let f = &summary["findings"][0];
    ensure!(
        f["kind"] == "map_fatal" && f["seq"] == 1 && f["message"] == "concurrent map writes",
        "{summary}"
    );
    ensure!(
        summary["metrics"]["histogram_series"].as_u64() >= Some(1),
        "{summary}"
    );
    Ok(())
}

#[test]
fn python_client_sees_the_real_agent_trace_the_fixtures() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    let tc = go_toolchains()?.pop().context("no Go")?;
    let contention = build_fixture(&tc, "contention", Variant::Plain)?;
    // The stuck run uses another binary (a PIE): two processes of one binary
    // share a probe set and, non-PIE, even the lock's address.
    let contention_pie = build_fixture(&tc, "contention", Variant::Pie)?;
    let maps = build_fixture(&tc, "maps", Variant::Plain)?;
    let lock_line = marker_line("contention", "mu.Lock() // LOCKSITE")?;

    let dir = std::env::temp_dir().join(format!("tracer-agent-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("tracer.sock");
    let (grpc, metrics) = (free_addr()?, free_addr()?);
    let log = dir.join("agent.log");
    let mut agent = KillOnDrop(
        agent_command(&log)?
            .args(["--grpc-listen", &grpc.to_string()])
            .arg("--unix-socket")
            .arg(&socket)
            .args(["--metrics-listen", &metrics.to_string()])
            .args(["--refresh", "500ms"])
            .env("TRACER_LOG", "info")
            .spawn()
            .context("starting tracer agent")?,
    );
    let agent_log = || read_log(&log);
    wait_ready(&mut agent.0, metrics, agent_log)?;
    ensure!(socket.exists(), "no Unix socket at {}", socket.display());

    // A long contended run (the lock row), and one whose holds outlast the
    // stuck threshold (a stuck_lock_wait finding).
    let spawn = |bin: &PathBuf, args: &[&str]| -> Result<KillOnDrop> {
        Ok(KillOnDrop(
            Command::new(bin).args(args).stdout(Stdio::null()).spawn()?,
        ))
    };
    // (Holders spin: keep it to one busy core each on this 2-core machine.)
    let busy = spawn(&contention, &["-g", "3", "-m", "1000000", "-hold", "1ms"])?;
    // Probes go live about 1.5 s after exec here, and a wait already in
    // progress then is never seen: three goroutines re-locking keep new
    // waits of 2-4 s coming after that.
    let _stuck = spawn(&contention_pie, &["-g", "3", "-m", "2", "-hold", "2s"])?;
    let busy_pid = busy.0.id();

    // The maps fixture crashes with "concurrent map writes" within
    // milliseconds; rerun it until the agent has caught one crash.
    let mut caught = false;
    for _ in 0..8 {
        let st = Command::new(&maps)
            .args(["-mode", "crash"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        ensure!(st.code() == Some(2), "maps -mode crash exited {st}");
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(2) {
            if http_status(metrics, "/metrics").is_some_and(|(_, b)| {
                b.lines().any(|l| {
                    l.starts_with("tracer_map_findings_total") && l.contains("kind=\"map_fatal\"")
                })
            }) {
                caught = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        if caught {
            break;
        }
    }

    let summary = run_client(
        &[
            "--grpc".into(),
            format!("unix:{}", socket.display()),
            "--metrics".into(),
            metrics.to_string(),
            "--timeout".into(),
            "60".into(),
            "--lock-function".into(),
            "main.holdLock".into(),
            "--lock-line".into(),
            lock_line.to_string(),
            "--lock-pid".into(),
            busy_pid.to_string(),
            "--finding".into(),
            "stuck_lock_wait:main.holdLock".into(),
            "--finding".into(),
            "map_fatal:main.writer".into(),
        ],
        Duration::from_secs(120),
    )
    .with_context(|| {
        format!(
            "map_fatal seen in /metrics: {caught}\nagent log:\n{}",
            agent_log()
        )
    })?;
    eprintln!("python client summary (real agent, unix socket): {summary}");
    ensure!(
        summary["lock"]["pid"] == busy_pid && summary["lock"]["contentions"].as_u64() > Some(0),
        "{summary}"
    );
    let kinds: Vec<&str> = summary["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["kind"].as_str())
        .collect();
    ensure!(
        kinds.contains(&"map_fatal") && kinds.contains(&"stuck_lock_wait"),
        "{summary}"
    );
    // Over TCP too, and the agent shuts down cleanly on SIGTERM.
    let tcp = run_client(
        &[
            "--grpc".into(),
            grpc.to_string(),
            "--timeout".into(),
            "20".into(),
            "--min-snapshots".into(),
            "2".into(),
        ],
        Duration::from_secs(60),
    )?;
    ensure!(tcp["snapshots"].as_u64() >= Some(2), "{tcp}");
    let pid = agent.0.id();
    terminate(&mut agent.0, Duration::from_secs(15), || {
        let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .map(|e| {
                let f = |n: &str| std::fs::read_to_string(e.path().join(n)).unwrap_or_default();
                format!("{} ({})", f("comm").trim(), f("wchan").trim())
            })
            .collect();
        format!("threads: {threads:?}\nagent log:\n{}", agent_log())
    })
    .context("stopping the agent")?;
    ensure!(!socket.exists(), "agent left its socket behind");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
