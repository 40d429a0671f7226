//! Soak: the agent under a hostile, busy node's load, with bounded memory
//! and prompt answers throughout (issue "Hardening").
//!
//! Load, all on this machine:
//! - about 200 short-lived Go processes per minute, of 50 distinct binaries;
//! - 100 Watch clients over the Unix socket, a quarter never reading;
//! - a process whose goroutines wait on a lock held for 1.5 s at a time
//!   (stuck waits);
//! - a Go binary padded to 2 GiB, run now and then;
//! - a client that opens connections until the agent refuses them.
//!
//! Throughout: agent RSS under 128 MiB, `/metrics` and gRPC `Info` each
//! answered within 1 s, no traced program crashed. At the end every counter
//! of what was dropped is exposed.
//!
//! `cargo xtask soak` runs it (10 minutes, or `TRACER_SOAK_SECS`). It is
//! not yet part of `cargo xtask test` because it does not pass yet: the
//! agent's RSS peaked at 358 MiB in a 60 s run on 2026-12-03 (the limit is
//! 128 MiB; fifty binaries are live at once, each with its own eBPF object
//! and analysed sections, see docs/agent.md "Memory per binary"), and some
//! `Info` calls are reset during the connection flood (docs/benchmarks.md,
//! "Soak").

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use tracer_tests::{
    Variant,
    agent::{agent_command, wait_ready},
    build_fixture, distinct_copies, go_toolchains,
    net::{free_addr, http_get},
    privileged_test,
    process::{KillOnDrop, read_log, terminate},
    procfs::rss_kb,
};
use tracer_user::top::source::{Addr, connect};

const BINARIES: usize = 50;
const RSS_LIMIT: u64 = 128 << 20;
const ANSWER_LIMIT: Duration = Duration::from_secs(1);
const WATCHERS: usize = 100;

/// Raises this process's open-file limit to its hard limit, for the
/// connection flood.
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// What the load threads saw.
#[derive(Default)]
struct Seen {
    started: AtomicU64,
    crashed: AtomicU64,
    watch_messages: AtomicU64,
    watch_errors: AtomicU64,
}

/// Starts short-lived processes round-robin over `bins` until `stop`, at
/// one per 300 ms (200 a minute), and `padded` every 20 s.
fn launcher(bins: Vec<PathBuf>, padded: PathBuf, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    let mut running: Vec<(std::process::Child, PathBuf)> = Vec::new();
    let mut i = 0usize;
    let t0 = Instant::now();
    let mut last_pad = None::<Instant>;
    while !stop.load(Ordering::Relaxed) {
        let bin = if last_pad.is_none_or(|t| t.elapsed() > Duration::from_secs(20)) {
            last_pad = Some(Instant::now());
            padded.clone()
        } else {
            i += 1;
            bins[i % bins.len()].clone()
        };
        if let Ok(c) = Command::new(&bin)
            .args(["-g", "2", "-m", "20", "-hold", "1ms"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            seen.started.fetch_add(1, Ordering::Relaxed);
            running.push((c, bin));
        }
        running.retain_mut(|(c, _)| match c.try_wait() {
            Ok(Some(st)) => {
                if !st.success() {
                    seen.crashed.fetch_add(1, Ordering::Relaxed);
                }
                false
            }
            _ => true,
        });
        let next = Duration::from_millis(300) * (seen.started.load(Ordering::Relaxed) as u32);
        std::thread::sleep(
            next.saturating_sub(t0.elapsed())
                .min(Duration::from_millis(300)),
        );
    }
    for (mut c, _) in running {
        if let Ok(st) = c.wait()
            && !st.success()
        {
            seen.crashed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A separate process (the agent limits connections per process) that
/// opens Unix-socket connections as fast as it can, up to 4,000, and holds
/// them until killed; the agent closes those over its limit at accept.
fn flood(socket: &Path) -> Result<KillOnDrop> {
    let script = r#"
import socket, sys, time
held = []
for i in range(4000):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(sys.argv[1])
    except OSError:
        break
    held.append(s)
print(len(held), flush=True)
time.sleep(3600)
"#;
    Ok(KillOnDrop(
        Command::new("python3")
            .args(["-c", script])
            .arg(socket)
            .stdout(Stdio::null())
            .spawn()
            .context("starting the connection flood")?,
    ))
}

/// Watch clients: `readers` read every snapshot, the rest open the stream
/// and never read it.
async fn watchers(addr: Addr, stop: Arc<AtomicBool>, seen: Arc<Seen>) {
    let mut tasks = Vec::new();
    // Readers share three connections (HTTP/2 streams, as one client with
    // many views would); each non-reader has its own, since the data it
    // never reads holds its connection's flow-control window.
    let mut shared = Vec::new();
    for _ in 0..3 {
        match connect(&addr).await {
            Ok(c) => shared.push(c),
            Err(_) => {
                seen.watch_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    for n in 0..WATCHERS {
        let (addr, stop, seen) = (addr.clone(), stop.clone(), seen.clone());
        let reader = n % 4 != 0;
        let client = if reader && !shared.is_empty() {
            shared.get(n % shared.len()).cloned()
        } else {
            None
        };
        tasks.push(tokio::spawn(async move {
            let stream = async {
                let mut client = match client {
                    Some(c) => c,
                    None => connect(&addr).await?,
                };
                let req = tracer_api::v1::WatchRequest {
                    interval_ms: 500,
                    top_n: 200,
                    ..Default::default()
                };
                anyhow::Ok(client.watch(req).await?.into_inner())
            };
            let mut stream = match stream.await {
                Ok(s) => s,
                Err(_) => {
                    seen.watch_errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            while !stop.load(Ordering::Relaxed) {
                if reader {
                    match tokio::time::timeout(Duration::from_millis(500), stream.message()).await {
                        Ok(Ok(Some(_))) => {
                            seen.watch_messages.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Ok(None)) | Ok(Err(_)) => {
                            seen.watch_errors.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                        Err(_) => {}
                    }
                } else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }));
        // Spread the connects, as real clients would arrive.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// One gRPC `Info` over a fresh connection: how long it took.
async fn info_latency(addr: &Addr) -> Result<Duration> {
    let t0 = Instant::now();
    let mut c = tokio::time::timeout(Duration::from_secs(5), connect(addr))
        .await
        .context("connect timed out")??;
    tokio::time::timeout(
        Duration::from_secs(5),
        c.info(tracer_api::v1::InfoRequest::default()),
    )
    .await
    .context("Info timed out")??;
    Ok(t0.elapsed())
}

#[test]
#[ignore = "run by `cargo xtask soak`; fails today (RSS and Info under the flood), see the header"]
fn agent_soak_keeps_memory_bounded_and_answers_promptly() -> Result<()> {
    privileged_test!();
    let _serial = tracer_tests::serial();
    let secs: u64 = std::env::var("TRACER_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(90);
    raise_nofile();
    let tc = go_toolchains()?.pop().context("no Go")?;
    let fixture = build_fixture(&tc, "contention", Variant::Plain)?;
    let dir = std::env::temp_dir().join(format!("tracer-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let bins = distinct_copies(&fixture, &dir, "soakbin", BINARIES)?;
    let padded = dir.join("soakpadded");
    std::fs::copy(&fixture, &padded)?;
    {
        let f = std::fs::OpenOptions::new().write(true).open(&padded)?;
        f.set_len(f.metadata()?.len() + (2 << 30))?;
    }
    let stuck_bin = dir.join("soakstuck");
    std::fs::copy(&fixture, &stuck_bin)?;

    let socket = dir.join("agent.sock");
    let metrics = free_addr()?;
    let log = dir.join("agent.log");
    let dir_arg = format!("{}/", dir.display());
    let mut agent = KillOnDrop(
        agent_command(&log)?
            .arg("--unix-socket")
            .arg(&socket)
            .args(["--metrics-listen", &metrics.to_string()])
            .args(["--exe", &dir_arg])
            .env("TRACER_LOG", "warn")
            .spawn()
            .context("starting tracer agent")?,
    );
    let agent_pid = agent.0.id();
    let read_log = || read_log(&log);
    let t0 = Instant::now();
    wait_ready(&mut agent.0, metrics, read_log)?;

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Seen::default());
    let _stuck = KillOnDrop(
        Command::new(&stuck_bin)
            .args(["-g", "3", "-m", "1000000", "-hold", "1500ms"])
            .stdout(Stdio::null())
            .spawn()?,
    );
    let launch = {
        let (bins, padded, stop, seen) = (bins.clone(), padded.clone(), stop.clone(), seen.clone());
        std::thread::spawn(move || launcher(bins, padded, stop, seen))
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let addr = Addr::Unix(socket.clone());
    let watch = rt.spawn(watchers(addr.clone(), stop.clone(), seen.clone()));
    // The flood starts once the watchers are in: it is the last to come.
    std::thread::sleep(Duration::from_secs(5));
    let flooder = flood(&socket)?;

    let (mut max_rss, mut max_metrics, mut max_info) = (0u64, Duration::ZERO, Duration::ZERO);
    let mut failures = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if let Some(st) = agent.0.try_wait()? {
            bail!("agent died ({st}) during the soak:\n{}", read_log());
        }
        let rss = rss_kb(agent_pid).map_or(0, |kb| kb * 1024);
        max_rss = max_rss.max(rss);
        if rss > RSS_LIMIT {
            failures.push(format!("RSS {rss} at {:?}", t0.elapsed()));
        }
        let t = Instant::now();
        match http_get(metrics, "/metrics") {
            Some((200, _)) => max_metrics = max_metrics.max(t.elapsed()),
            other => failures.push(format!("/metrics: {:?}", other.map(|o| o.0))),
        }
        match rt.block_on(info_latency(&addr)) {
            Ok(d) => max_info = max_info.max(d),
            Err(e) => failures.push(format!("Info: {e:#}")),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let (_, body) = http_get(metrics, "/metrics").context("final /metrics")?;
    stop.store(true, Ordering::Relaxed);
    let _ = launch.join();
    drop(flooder);
    let _ = rt.block_on(watch);

    let stop_t = Instant::now();
    let status = terminate(&mut agent.0, Duration::from_secs(240), read_log)
        .context("stopping the agent")?;
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "soak {secs}s: {} processes started, {} crashed; watch messages {}, watch errors {}; max agent RSS {:.1} MiB; max /metrics {:?}, max Info {:?}; stop took {:.1}s",
        g(&seen.started),
        g(&seen.crashed),
        g(&seen.watch_messages),
        g(&seen.watch_errors),
        max_rss as f64 / (1 << 20) as f64,
        max_metrics,
        max_info,
        stop_t.elapsed().as_secs_f64()
    );
    ensure!(status.success(), "agent exit {status}:\n{}", read_log());
    ensure!(
        failures.is_empty(),
        "{} failed checks, first: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    ensure!(max_metrics < ANSWER_LIMIT, "/metrics took {max_metrics:?}");
    ensure!(max_info < ANSWER_LIMIT, "Info took {max_info:?}");
    ensure!(
        g(&seen.crashed) == 0,
        "{} traced programs failed",
        g(&seen.crashed)
    );
    ensure!(
        g(&seen.started) as f64 >= secs as f64 * 3.0 * 0.8,
        "only {} processes started",
        g(&seen.started)
    );
    ensure!(g(&seen.watch_messages) > 0, "no Watch message was read");
    ensure!(
        g(&seen.watch_errors) == 0,
        "{} Watch clients failed",
        g(&seen.watch_errors)
    );
    let refused = body
        .lines()
        .find_map(|l| l.strip_prefix("tracer_agent_connections_refused_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    ensure!(refused > 0.0, "the connection flood was never refused");
    for counter in [
        "tracer_agent_events_lost_total",
        "tracer_agent_map_evictions_total",
        "tracer_agent_processes_missed_total",
        "tracer_agent_processes_unreadable_total",
        "tracer_agent_connections_refused_total",
        "tracer_agent_stream_messages_dropped_total",
    ] {
        ensure!(
            body.lines().any(|l| l.starts_with(counter)),
            "{counter} not exposed in /metrics"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
