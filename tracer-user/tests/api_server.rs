//! The gRPC and HTTP endpoints over a hub fed with synthetic snapshots and
//! findings: no eBPF, no root. Every expected number is derived from the
//! samples pushed into the hub.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::oneshot,
    task::JoinHandle,
};
use tonic::{Code, Streaming, transport::Channel};
use tracer_api::v1::{self as pb, tracer_client::TracerClient};
use tracer_user::{
    agent::hub::{self, AgentInfo, Command, HubWriter, Labels, NodeSnapshot},
    api::{
        ServeOptions,
        synthetic::{flow, lock, map, process, report, site},
    },
    ebpf::ProbeStatus,
    report::{AnyFinding, Finding, LockRef},
};

const REFRESH: Duration = Duration::from_millis(100);

fn info() -> AgentInfo {
    tracer_user::api::synthetic::agent_info()
}

struct Server {
    writer: HubWriter,
    grpc: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<()>>,
    _dir: TempDir,
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "tracer-api-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p)?;
        Ok(Self(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start(findings_capacity: usize) -> Result<Server> {
    start_with(findings_capacity, ServeOptions::default()).await
}

/// A server with `base`'s policy and limits, on fresh addresses.
async fn start_with(findings_capacity: usize, base: ServeOptions) -> Result<Server> {
    let dir = TempDir::new()?;
    let socket = dir.0.join("tracer.sock");
    let (hub, writer) = hub::channel(info(), REFRESH, findings_capacity);
    let opts = ServeOptions {
        grpc_tcp: Some("127.0.0.1:0".parse()?),
        unix_socket: Some(socket.clone()),
        metrics: Some("127.0.0.1:0".parse()?),
        ..base
    };
    let bound = tracer_user::api::bind(&opts).await?;
    let grpc = bound.grpc_addr().context("grpc addr")?;
    let metrics = bound.metrics_addr().context("metrics addr")?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(bound.serve(hub, async move {
        let _ = stopped.await;
    }));
    Ok(Server {
        writer,
        grpc,
        metrics,
        socket,
        stop: Some(stop),
        task,
        _dir: dir,
    })
}

impl Server {
    async fn tcp_client(&self) -> Result<TracerClient<Channel>> {
        Ok(TracerClient::connect(format!("http://{}", self.grpc)).await?)
    }

    async fn unix_client(&self) -> Result<TracerClient<Channel>> {
        unix_client(&self.socket).await
    }

    fn publish(&self, snap: NodeSnapshot) {
        self.writer.snapshots.send_replace(Arc::new(snap));
    }

    async fn shutdown(mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .context("serve did not stop within 10 s")???;
        Ok(())
    }
}

async fn unix_client(path: &Path) -> Result<TracerClient<Channel>> {
    let path = path.to_path_buf();
    let ch = tonic::transport::Endpoint::try_from("http://localhost")?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await?;
    Ok(TracerClient::new(ch))
}

fn ms(n: u64) -> u64 {
    n * 1_000_000
}

/// Two processes; pid 10 has five locks whose waits grow by `step` (row i
/// gains i+1 waits of `step` ms), pid 11 one lock and a flow.
fn node(generation: u64, step: u64) -> NodeSnapshot {
    let labels = Labels {
        container_id: Some("c0ffee0123456789".into()),
        pod_uid: Some("uid-10".into()),
        pod_name: Some("web-1".into()),
        namespace: Some("prod".into()),
        container_name: Some("web".into()),
    };
    let locks10 = (0..5u64)
        .map(|i| {
            // Row i: (i+1)*10 base waits of (i+1) ms, plus (i+1)*step.
            let mut samples = vec![ms(i + 1); ((i + 1) * 10) as usize];
            samples.extend(vec![ms(1); ((i + 1) * step) as usize]);
            lock(
                &format!("{:#x}", 0x1000 + i),
                "mutex",
                site("main.work", "/src/main.go", 40 + i as u32),
                &samples,
            )
        })
        .collect();
    NodeSnapshot {
        generation,
        taken_unix_ns: generation * 1_000_000_000,
        node: "node-a".into(),
        processes: vec![
            process(10, "svc", labels),
            process(11, "other", Labels::default()),
        ],
        reports: vec![
            report(
                10,
                locks10,
                vec![map(10, "0xc000", 10 * generation, 50, 2)],
                vec![],
            ),
            report(
                11,
                vec![lock(
                    "0x2000",
                    "rwmutex_read",
                    site("main.other", "/src/o.go", 7),
                    &[ms(500)],
                )],
                vec![],
                vec![flow(11, 40000, 1000 * generation, 10, &[40])],
            ),
        ],
        ..Default::default()
    }
}

async fn next(s: &mut Streaming<pb::Snapshot>) -> Result<pb::Snapshot> {
    tokio::time::timeout(Duration::from_secs(5), s.message())
        .await
        .context("no snapshot within 5 s")??
        .context("stream ended")
}

/// The next snapshot taken at `taken` (skipping repeats of older ones).
async fn next_taken(s: &mut Streaming<pb::Snapshot>, taken: u64) -> Result<pb::Snapshot> {
    loop {
        let m = next(s).await?;
        if m.taken_unix_ns == taken {
            return Ok(m);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_filters_sorts_limits_and_computes_deltas() -> Result<()> {
    let srv = start(64).await?;
    srv.publish(node(1, 0));
    let mut c = srv.unix_client().await?;
    let req = |sort: pb::SortKey| pb::WatchRequest {
        filter: Some(pb::Filter {
            pids: vec![10],
            ..Default::default()
        }),
        interval_ms: 100,
        top_n: 3,
        sort: sort as i32,
    };
    let mut by_total = c.watch(req(pb::SortKey::TotalTime)).await?.into_inner();
    let mut by_delta = c.watch(req(pb::SortKey::Delta)).await?.into_inner();

    let first = next(&mut by_total).await?;
    // Both streams have their baseline at generation 1.
    ensure!(next(&mut by_delta).await?.taken_unix_ns == 1_000_000_000);
    ensure!(first.seq == 1 && first.dropped == 0, "{first:?}");
    ensure!(first.interval_ns == 0, "no baseline yet");
    ensure!(first.locks.len() == 3, "top_n 3: {}", first.locks.len());
    ensure!(first.locks.iter().all(|l| l.pid == 10), "filter by pid");
    ensure!(first.flows.is_empty(), "pid 11's flow filtered out");
    ensure!(first.processes.len() == 1, "one process passes");
    // Row i waited (i+1)*10 times (i+1) ms: rows 4, 3, 2 lead.
    let totals: Vec<u64> = first.locks.iter().map(|l| l.wait_ns_total).collect();
    ensure!(
        totals == vec![ms(250), ms(160), ms(90)],
        "sorted by total: {totals:?}"
    );
    let l = &first.locks[0];
    ensure!(
        l.pod == "web-1" && l.container_id == "c0ffee0123456789" && l.node == "node-a",
        "labels on rows: {l:?}"
    );
    ensure!(l.comm == "svc" && l.kind == "mutex", "{l:?}");
    ensure!(
        l.site
            .as_ref()
            .is_some_and(|s| s.function == "main.work" && s.line == 44),
        "{l:?}"
    );
    ensure!(l.histogram.iter().map(|b| b.count).sum::<u64>() == l.contentions);
    ensure!(first.locks.iter().all(|l| l.delta_contentions == 0));
    ensure!(first.maps.len() == 1 && first.maps[0].delta_ops == 0);

    // Generation 2: row i gains (i+1)*100 waits of 1 ms; the map 10 ops.
    srv.publish(node(2, 100));
    let second = next_taken(&mut by_total, 2_000_000_000).await?;
    ensure!(
        second.interval_ns == 1_000_000_000,
        "{}",
        second.interval_ns
    );
    for l in &second.locks {
        let i = u64::from(l.site.as_ref().context("site")?.line - 40);
        ensure!(
            l.delta_contentions == (i + 1) * 100 && l.delta_wait_ns == (i + 1) * ms(100),
            "row {i}: deltas {} / {}",
            l.delta_contentions,
            l.delta_wait_ns
        );
    }
    ensure!(second.maps[0].delta_ops == 10, "{:?}", second.maps[0]);
    // The same generation again: nothing changed, deltas are zero.
    srv.publish(NodeSnapshot {
        generation: 3,
        ..node(2, 100)
    });
    let repeat = next_taken(&mut by_total, 2_000_000_000).await?;
    ensure!(repeat.locks.iter().all(|l| l.delta_contentions == 0));

    // The delta-sorted stream ranks by what changed: row 4 gained most.
    let d = next_taken(&mut by_delta, 2_000_000_000).await?;
    let deltas: Vec<u64> = d.locks.iter().map(|l| l.delta_wait_ns).collect();
    ensure!(
        deltas.windows(2).all(|w| w[0] >= w[1]) && deltas[0] == ms(500),
        "sorted by delta: {deltas:?}"
    );
    ensure!(d.seq > 1 && d.dropped == 0);
    drop((by_total, by_delta));
    srv.shutdown().await
}

fn stuck(pid: u32) -> AnyFinding {
    AnyFinding::Lock(Finding {
        kind: "stuck_lock_wait",
        pid,
        goroutine: Some(7),
        lock: LockRef {
            address: "0x1000".into(),
            kind: "mutex",
            name: None,
        },
        age_ns: 2_000_000_000,
        ongoing: true,
        site: Some(site("main.work", "/src/main.go", 40)),
        stack: vec![],
    })
}

async fn collect_findings(
    s: &mut Streaming<pb::FindingEvent>,
    n: usize,
) -> Result<Vec<pb::FindingEvent>> {
    let mut v = vec![];
    while v.len() < n {
        let e = tokio::time::timeout(Duration::from_secs(5), s.message())
            .await
            .context("no finding within 5 s")??
            .context("stream ended")?;
        v.push(e);
    }
    Ok(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn findings_replay_resume_filter_and_report_aged_out_gaps() -> Result<()> {
    let srv = start(8).await?;
    srv.publish(node(1, 0));
    let log = srv.writer.findings.clone();
    let publish = |pid: u32| {
        log.publish(
            pid,
            if pid == 10 { "svc" } else { "other" }.into(),
            Labels::default(),
            123,
            stuck(pid),
        )
    };
    for pid in [10, 11, 10, 11, 10] {
        publish(pid);
    }
    let mut c = srv.tcp_client().await?;
    let mut all = c
        .findings(pb::FindingsRequest::default())
        .await?
        .into_inner();
    let got = collect_findings(&mut all, 5).await?;
    let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
    ensure!(seqs == vec![1, 2, 3, 4, 5], "{seqs:?}");
    let e = &got[0];
    ensure!(
        e.kind == "stuck_lock_wait"
            && e.node == "node-a"
            && e.pid == 10
            && e.address == "0x1000"
            && e.goroutine == 7
            && e.age_ns == 2_000_000_000
            && e.stack.first().is_some_and(|s| s.function == "main.work")
            && e.dropped_before == 0,
        "{e:?}"
    );

    let mut resumed = c
        .findings(pb::FindingsRequest {
            after_seq: 3,
            ..Default::default()
        })
        .await?
        .into_inner();
    let got = collect_findings(&mut resumed, 2).await?;
    ensure!(got.iter().map(|e| e.seq).collect::<Vec<_>>() == vec![4, 5]);

    let mut only11 = c
        .findings(pb::FindingsRequest {
            filter: Some(pb::Filter {
                pids: vec![11],
                ..Default::default()
            }),
            after_seq: 0,
        })
        .await?
        .into_inner();
    let got = collect_findings(&mut only11, 2).await?;
    ensure!(got.iter().all(|e| e.pid == 11 && e.dropped_before == 0));
    ensure!(got.iter().map(|e| e.seq).collect::<Vec<_>>() == vec![2, 4]);

    // Live: new findings reach every open stream, in order.
    let s6 = publish(11);
    let live = collect_findings(&mut all, 1).await?;
    ensure!(live[0].seq == s6);
    ensure!(collect_findings(&mut only11, 1).await?[0].seq == s6);

    // History holds 8: after 12 more, a client resuming at 5 finds 6..=10 gone.
    for _ in 0..12 {
        publish(10);
    }
    let mut late = c
        .findings(pb::FindingsRequest {
            after_seq: 5,
            ..Default::default()
        })
        .await?
        .into_inner();
    let got = collect_findings(&mut late, 8).await?;
    ensure!(got[0].seq == 11, "oldest held: {}", got[0].seq);
    ensure!(
        got[0].dropped_before == 5,
        "aged out: {}",
        got[0].dropped_before
    );
    ensure!(
        got.windows(2)
            .all(|w| w[1].seq == w[0].seq + 1 && w[1].dropped_before == 0)
    );
    // The live stream raced the publisher: whatever aged out before it read
    // is reported, so delivered + dropped accounts for every finding.
    let (mut delivered, mut dropped, mut last) = (0u64, 0u64, s6);
    while last < s6 + 12 {
        let e = collect_findings(&mut all, 1).await?.remove(0);
        ensure!(e.seq > last, "seq {} after {last}", e.seq);
        ensure!(e.seq == last + 1 + e.dropped_before, "{e:?} after {last}");
        delivered += 1;
        dropped += e.dropped_before;
        last = e.seq;
    }
    ensure!(delivered + dropped == 12, "{delivered} + {dropped}");
    drop((all, resumed, only11, late));
    srv.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_rejected_with_the_field_named() -> Result<()> {
    let srv = start(8).await?;
    srv.publish(node(1, 0));
    let mut c = srv.tcp_client().await?;
    let watch = |interval_ms, top_n, filter: Option<pb::Filter>| pb::WatchRequest {
        filter,
        interval_ms,
        top_n,
        sort: 0,
    };
    let cases = [
        (watch(50, 0, None), "interval_ms"),
        (watch(3_600_001, 0, None), "interval_ms"),
        (watch(0, 1001, None), "top_n"),
        (
            watch(
                0,
                0,
                Some(pb::Filter {
                    containers: vec!["c0ffee".into()],
                    ..Default::default()
                }),
            ),
            "filter.containers",
        ),
        (
            watch(
                0,
                0,
                Some(pb::Filter {
                    comms: vec!["x".into(); 257],
                    ..Default::default()
                }),
            ),
            "filter.comms",
        ),
        (
            pb::WatchRequest {
                sort: 42,
                ..Default::default()
            },
            "sort",
        ),
    ];
    for (req, field) in cases {
        let e = c.watch(req).await.err().context(field)?;
        ensure!(e.code() == Code::InvalidArgument, "{field}: {e:?}");
        ensure!(e.message().contains(field), "{field}: {}", e.message());
    }
    // An unknown pid in a filter is no error: it may appear later.
    let procs = c
        .list_processes(pb::ListProcessesRequest {
            filter: Some(pb::Filter {
                pids: vec![99999],
                ..Default::default()
            }),
        })
        .await?
        .into_inner();
    ensure!(procs.processes.is_empty());
    let all = c
        .list_processes(pb::ListProcessesRequest::default())
        .await?
        .into_inner();
    ensure!(all.processes.len() == 2 && all.processes[0].status == "traced");

    let deep = |pid, duration_ms| pb::StartDeepMapTraceRequest {
        pid,
        duration_ms,
        sites: vec![],
    };
    let e = c
        .start_deep_map_trace(deep(99999, 1000))
        .await
        .err()
        .context("unknown pid")?;
    ensure!(
        e.code() == Code::NotFound && e.message().contains("99999"),
        "{e:?}"
    );
    for (req, field) in [
        (deep(10, 0), "duration_ms"),
        (deep(10, 600_001), "duration_ms"),
        (deep(0, 1000), "pid"),
    ] {
        let e = c.start_deep_map_trace(req).await.err().context(field)?;
        ensure!(
            e.code() == Code::InvalidArgument && e.message().contains(field),
            "{field}: {e:?}"
        );
    }
    srv.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_map_trace_goes_through_the_agent_loop() -> Result<()> {
    let mut srv = start(8).await?;
    srv.publish(node(1, 0));
    // The agent loop's side: answer one command.
    let mut commands = std::mem::replace(&mut srv.writer.commands, tokio::sync::mpsc::channel(1).1);
    let agent = tokio::spawn(async move {
        let Some(Command::DeepMaps {
            pid,
            duration,
            sites,
            reply,
            ..
        }) = commands.recv().await
        else {
            return None;
        };
        let _ = reply.send(Ok(vec![ProbeStatus {
            feature: "map_ops".into(),
            function: Some("runtime.mapassign".into()),
            status: "attached",
            ret_sites: 3,
            reason: None,
            kind: 0,
        }]));
        Some((pid, duration, sites))
    });
    let mut c = srv.tcp_client().await?;
    let before = tracer_user::api::server::unix_now_ns();
    let r = c
        .start_deep_map_trace(pb::StartDeepMapTraceRequest {
            pid: 10,
            duration_ms: 2500,
            sites: vec!["main".into()],
        })
        .await?
        .into_inner();
    let (pid, duration, sites) = agent.await?.context("no command")?;
    ensure!(pid == 10 && duration == Duration::from_millis(2500) && sites == vec!["main"]);
    ensure!(r.probes.len() == 1 && r.probes[0].status == "attached");
    ensure!(
        r.ends_unix_ns >= before + 2_500_000_000,
        "{}",
        r.ends_unix_ns
    );
    srv.shutdown().await
}

/// A snapshot large enough (~600 KB encoded) to fill transport buffers fast.
fn big(generation: u64) -> NodeSnapshot {
    tracer_user::api::synthetic::stack_heavy(generation)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_client_does_not_stall_others_and_learns_what_it_missed() -> Result<()> {
    let srv = start(8).await?;
    srv.publish(big(1));
    let req = pb::WatchRequest {
        interval_ms: 100,
        top_n: 1000,
        ..Default::default()
    };
    // Separate connections: HTTP/2 flow control is per connection too.
    let mut slow_c = srv.tcp_client().await?;
    let mut fast_c = srv.unix_client().await?;
    let mut slow = slow_c.watch(req.clone()).await?.into_inner();
    let mut fast = fast_c.watch(req).await?.into_inner();
    let mut generation = 1;
    let t0 = Instant::now();
    let mut got = vec![];
    while t0.elapsed() < Duration::from_secs(3) {
        generation += 1;
        srv.publish(big(generation));
        let m = next(&mut fast).await?;
        got.push((m.seq, m.dropped, t0.elapsed()));
    }
    let n = got.len();
    // 3 s at 100 ms: ~30 snapshots; allow for a loaded 2-core machine.
    ensure!(n >= 15, "fast client got only {n} snapshots in 3 s");
    let dropped_fast: u64 = got.iter().map(|g| g.1).sum();
    // The slow stream never read a byte in those 3 s; now it reads.
    let mut seen = 0u64;
    let mut dropped = 0u64;
    let mut last_seq = 0;
    let t1 = Instant::now();
    while dropped == 0 && t1.elapsed() < Duration::from_secs(10) {
        let m = next(&mut slow).await?;
        ensure!(m.seq > last_seq, "seq must increase");
        ensure!(
            m.seq == last_seq + 1 + m.dropped,
            "seq gap {} -> {} must equal dropped {}",
            last_seq,
            m.seq,
            m.dropped
        );
        last_seq = m.seq;
        dropped += m.dropped;
        seen += 1;
    }
    ensure!(
        dropped > 0,
        "slow client read {seen} snapshots, none reported dropped"
    );
    eprintln!(
        "fast client: {n} snapshots in 3 s ({dropped_fast} dropped); slow client: {seen} buffered, then dropped={dropped}"
    );
    drop((slow, fast));
    srv.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_watchers_all_receive_and_info_still_answers() -> Result<()> {
    let srv = start(8).await?;
    srv.publish(node(1, 0));
    let c = srv.tcp_client().await?;
    let t0 = Instant::now();
    let mut tasks = vec![];
    for _ in 0..50 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = c
                .watch(pb::WatchRequest {
                    interval_ms: 100,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let mut n = 0u64;
            let mut dropped = 0;
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(2) {
                let m = next(&mut s).await?;
                ensure!(m.locks.len() == 6, "{} rows", m.locks.len());
                dropped += m.dropped;
                n += 1;
            }
            anyhow::Ok((n, dropped))
        }));
    }
    // Meanwhile, unary calls keep working.
    let mut ic = c.clone();
    let mut infos = 0;
    while t0.elapsed() < Duration::from_secs(2) {
        let i = tokio::time::timeout(Duration::from_secs(2), ic.info(pb::InfoRequest {}))
            .await
            .context("Info timed out under 50 watchers")??
            .into_inner();
        ensure!(i.node == "node-a" && i.health.is_some());
        infos += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut total = 0;
    for t in tasks {
        let (n, _dropped) = t.await??;
        ensure!(n >= 5, "a watcher got only {n} snapshots in 2 s");
        total += n;
    }
    eprintln!(
        "50 watchers: {total} snapshots in {:.1}s ({:.0}/s), {infos} Info calls answered",
        t0.elapsed().as_secs_f64(),
        total as f64 / t0.elapsed().as_secs_f64()
    );
    srv.shutdown().await
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut buf)).await??;
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("status line")?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|b| b.1)
        .unwrap_or("")
        .to_string();
    Ok((code, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_and_clean_shutdown() -> Result<()> {
    let srv = start(8).await?;
    ensure!(http_get(srv.metrics, "/healthz").await?.0 == 200);
    ensure!(
        http_get(srv.metrics, "/readyz").await?.0 == 503,
        "not ready before the first snapshot"
    );
    srv.publish(node(1, 0));
    ensure!(http_get(srv.metrics, "/readyz").await?.0 == 200);
    let (code, body) = http_get(srv.metrics, "/metrics").await?;
    ensure!(code == 200);
    ensure!(
        body.contains("tracer_lock_wait_seconds_count{pid=\"10\",comm=\"svc\",kind=\"mutex\",site=\"main.work main.go:44\",pod=\"web-1\",namespace=\"prod\",container=\"web\"} 50"),
        "{body}"
    );
    // The socket is private to the agent's user.
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&srv.socket)?.permissions());
    ensure!(mode & 0o777 == 0o600, "socket mode {mode:o}");
    // An open stream must not hold up shutdown.
    let mut c = srv.unix_client().await?;
    let mut s = c.watch(pb::WatchRequest::default()).await?.into_inner();
    next(&mut s).await?;
    let socket = srv.socket.clone();
    srv.shutdown().await?;
    ensure!(!socket.exists(), "socket removed on shutdown");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced_but_other_files_are_not() -> Result<()> {
    let dir = TempDir::new()?;
    let sock = dir.0.join("s.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock)?);
    let (hub, _w) = hub::channel(info(), REFRESH, 8);
    let opts = |p: &Path| ServeOptions {
        unix_socket: Some(p.to_path_buf()),
        ..Default::default()
    };
    let b = tracer_user::api::bind(&opts(&sock)).await?;
    ensure!(b.unix_path() == Some(sock.as_path()));
    drop(b);
    let file = dir.0.join("plain");
    std::fs::write(&file, "keep me")?;
    let e = tracer_user::api::bind(&opts(&file))
        .await
        .err()
        .context("must refuse")?;
    ensure!(format!("{e:#}").contains("not a socket"), "{e:#}");
    ensure!(std::fs::read_to_string(&file)? == "keep me");
    let none = tracer_user::api::serve(hub, ServeOptions::default(), async {}).await;
    ensure!(none.is_err(), "nothing to serve is an error");
    Ok(())
}

/// A CA, a server certificate for `localhost` and a client certificate, PEM.
struct Pki {
    ca: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Result<Pki> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
        KeyPair, KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(vec![name.to_string()])?;
        p.extended_key_usages = vec![usage];
        Ok((p.signed_by(&key, &ca)?.pem(), key.serialize_pem()))
    };
    Ok(Pki {
        server: leaf("localhost", ExtendedKeyUsagePurpose::ServerAuth)?,
        client: leaf("client", ExtendedKeyUsagePurpose::ClientAuth)?,
        ca: ca.pem(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() -> Result<()> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let dir = TempDir::new()?;
    let pki = pki()?;
    let file = |name: &str, pem: &str| -> Result<PathBuf> {
        let p = dir.0.join(name);
        std::fs::write(&p, pem)?;
        Ok(p)
    };
    let tls = tracer_user::api::TlsOptions {
        cert: file("server.pem", &pki.server.0)?,
        key: file("server.key", &pki.server.1)?,
        client_ca: Some(file("ca.pem", &pki.ca)?),
    };
    let (hub, writer) = hub::channel(info(), REFRESH, 8);
    writer.snapshots.send_replace(Arc::new(node(1, 0)));
    let bound = tracer_user::api::bind(&ServeOptions {
        grpc_tcp: Some("127.0.0.1:0".parse()?),
        tls: Some(tls),
        ..Default::default()
    })
    .await?;
    let addr = bound.grpc_addr().context("addr")?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(bound.serve(hub, async move {
        let _ = stopped.await;
    }));
    let tls_client = |identity: bool| {
        let mut cfg = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.ca))
            .domain_name("localhost");
        if identity {
            cfg = cfg.identity(Identity::from_pem(&pki.client.0, &pki.client.1));
        }
        cfg
    };
    let call = |endpoint: Endpoint| async move {
        let ch = endpoint.connect().await?;
        let r = TracerClient::new(ch).info(pb::InfoRequest {}).await?;
        anyhow::Ok(r.into_inner())
    };
    let https = Endpoint::from_shared(format!("https://{addr}"))?;
    let ok = call(https.clone().tls_config(tls_client(true))?).await?;
    ensure!(ok.node == "node-a", "{ok:?}");
    ensure!(
        call(https.tls_config(tls_client(false))?).await.is_err(),
        "a client without a certificate must be refused"
    );
    ensure!(
        call(Endpoint::from_shared(format!("http://{addr}"))?)
            .await
            .is_err(),
        "plaintext must be refused"
    );
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), task).await???;
    Ok(())
}

/// A client of the TCP endpoint at `addr` sending `authorization: VALUE`.
async fn tcp_client_with(
    addr: std::net::SocketAddr,
    auth: Option<String>,
) -> Result<
    TracerClient<
        tonic::service::interceptor::InterceptedService<
            Channel,
            impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone,
        >,
    >,
> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let value: Option<tonic::metadata::AsciiMetadataValue> = auth.map(|a| a.parse()).transpose()?;
    Ok(TracerClient::with_interceptor(
        ch,
        move |mut r: tonic::Request<()>| {
            if let Some(v) = &value {
                r.metadata_mut().insert("authorization", v.clone());
            }
            Ok(r)
        },
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_needs_the_token_and_read_only_refuses_deep_traces() -> Result<()> {
    use tracer_user::api::auth::{Policy, Token};
    let token = Token::parse("s3cret-token-0123456789")?;
    let srv = start_with(
        8,
        ServeOptions {
            tcp_policy: Policy {
                token: Some(token.clone()),
                read_only: true,
            },
            ..Default::default()
        },
    )
    .await?;
    srv.publish(node(1, 0));
    for auth in [
        None,
        Some("Bearer wrong-token-0123456789".to_string()),
        Some("Bearer s3cret-token-012345678".to_string()),
        Some("s3cret-token-0123456789".to_string()),
    ] {
        let mut c = tcp_client_with(srv.grpc, auth.clone()).await?;
        let e = c
            .info(pb::InfoRequest {})
            .await
            .err()
            .with_context(|| format!("{auth:?} must be refused"))?;
        ensure!(e.code() == Code::Unauthenticated, "{auth:?}: {e:?}");
        let e = c
            .watch(pb::WatchRequest::default())
            .await
            .err()
            .context("watch without the token")?;
        ensure!(e.code() == Code::Unauthenticated, "{e:?}");
    }
    let mut c = tcp_client_with(srv.grpc, Some(token.header_value())).await?;
    ensure!(c.info(pb::InfoRequest {}).await?.into_inner().node == "node-a");
    let mut w = c.watch(pb::WatchRequest::default()).await?.into_inner();
    ensure!(
        w.message().await?.is_some(),
        "a watch with the token streams"
    );
    for e in [
        c.start_deep_map_trace(pb::StartDeepMapTraceRequest {
            pid: 10,
            duration_ms: 1000,
            sites: vec![],
        })
        .await
        .err(),
        c.stop_deep_map_trace(pb::StopDeepMapTraceRequest { pid: 10 })
            .await
            .err(),
    ] {
        let e = e.context("a mutating RPC on a read-only endpoint")?;
        ensure!(e.code() == Code::PermissionDenied, "{e:?}");
    }
    // The root-only Unix socket: no token, full access (the request reaches
    // the agent loop, which this test does not run: it times out there or
    // is refused by the handler, never PERMISSION_DENIED).
    let mut u = srv.unix_client().await?;
    ensure!(u.info(pb::InfoRequest {}).await.is_ok());
    let e = u
        .start_deep_map_trace(pb::StartDeepMapTraceRequest {
            pid: 99999,
            duration_ms: 1000,
            sites: vec![],
        })
        .await
        .err()
        .context("unknown pid")?;
    ensure!(e.code() == Code::NotFound, "{e:?}");
    drop(w);
    srv.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_trace_limit_and_stop_map_to_their_codes() -> Result<()> {
    use tracer_user::agent::hub::Refused;
    let mut srv = start_with(
        8,
        ServeOptions {
            max_deep_traces: 1,
            ..Default::default()
        },
    )
    .await?;
    srv.publish(node(1, 0));
    let mut commands = std::mem::replace(&mut srv.writer.commands, tokio::sync::mpsc::channel(1).1);
    // The agent loop's side: one deep trace may run; a second is over the limit.
    let agent = tokio::spawn(async move {
        let mut running: Option<u32> = None;
        let mut seen_max = vec![];
        while let Some(cmd) = commands.recv().await {
            match cmd {
                Command::DeepMaps {
                    pid,
                    max_running,
                    reply,
                    ..
                } => {
                    seen_max.push(max_running);
                    let r = if running.is_some() {
                        Err(Refused::Limit("1 deep map trace already runs".into()))
                    } else {
                        running = Some(pid);
                        Ok(vec![])
                    };
                    let _ = reply.send(r);
                }
                Command::StopDeepMaps { pid, reply } => {
                    let r = if running == Some(pid) {
                        running = None;
                        Ok(())
                    } else {
                        Err(Refused::NotFound(format!("pid {pid}: none running")))
                    };
                    let _ = reply.send(r);
                }
            }
        }
        seen_max
    });
    let mut c = srv.unix_client().await?;
    let deep = |pid| pb::StartDeepMapTraceRequest {
        pid,
        duration_ms: 5000,
        sites: vec![],
    };
    c.start_deep_map_trace(deep(10)).await?;
    let e = c
        .start_deep_map_trace(deep(11))
        .await
        .err()
        .context("over the limit")?;
    ensure!(e.code() == Code::ResourceExhausted, "{e:?}");
    let e = c
        .stop_deep_map_trace(pb::StopDeepMapTraceRequest { pid: 11 })
        .await
        .err()
        .context("stop with none running")?;
    ensure!(e.code() == Code::NotFound, "{e:?}");
    let e = c
        .stop_deep_map_trace(pb::StopDeepMapTraceRequest { pid: 0 })
        .await
        .err()
        .context("pid 0")?;
    ensure!(e.code() == Code::InvalidArgument, "{e:?}");
    c.stop_deep_map_trace(pb::StopDeepMapTraceRequest { pid: 10 })
        .await?;
    c.start_deep_map_trace(deep(11)).await?;
    drop(c);
    srv.shutdown().await?;
    let seen = agent.await?;
    ensure!(
        seen == vec![1, 1, 1],
        "the limit reaches the agent loop: {seen:?}"
    );
    Ok(())
}

/// Sends raw bytes as the request of `method`, to see how the server
/// answers what no generated client can send.
async fn raw_call(ch: Channel, method: &'static str, body: Vec<u8>) -> tonic::Status {
    use prost::bytes::{Buf, BufMut};
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    #[derive(Default)]
    struct Raw;
    impl Codec for Raw {
        type Encode = Vec<u8>;
        type Decode = Vec<u8>;
        type Encoder = Raw;
        type Decoder = Raw;
        fn encoder(&mut self) -> Raw {
            Raw
        }
        fn decoder(&mut self) -> Raw {
            Raw
        }
    }
    impl Encoder for Raw {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }
    impl Decoder for Raw {
        type Item = Vec<u8>;
        type Error = tonic::Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
            let v = src.chunk().to_vec();
            src.advance(v.len());
            Ok(Some(v))
        }
    }
    let mut grpc = tonic::client::Grpc::new(ch).max_encoding_message_size(usize::MAX);
    if let Err(e) = grpc.ready().await {
        return tonic::Status::unavailable(e.to_string());
    }
    let path = http::uri::PathAndQuery::from_static(method);
    match grpc.unary(tonic::Request::new(body), path, Raw).await {
        Ok(_) => tonic::Status::ok("no error"),
        Err(s) => s,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_get_client_error_codes() -> Result<()> {
    let srv = start(8).await?;
    srv.publish(node(1, 0));
    let tcp = tonic::transport::Endpoint::from_shared(format!("http://{}", srv.grpc))?
        .connect()
        .await?;
    // Field 1 (Filter, a message) declared 255 bytes long with 1 present.
    let truncated = vec![0x0a, 0xff, 0x01, 0x00];
    // Field 1 with the varint wire type: not a Filter.
    let wrong_type = vec![0x08, 0x01];
    for method in [
        "/tracer.v1.Tracer/ListProcesses",
        "/tracer.v1.Tracer/Watch",
        "/tracer.v1.Tracer/StartDeepMapTrace",
    ] {
        for body in [truncated.clone(), wrong_type.clone()] {
            let s = raw_call(tcp.clone(), method, body.clone()).await;
            ensure!(
                s.code() == Code::InvalidArgument,
                "{method} {body:x?}: {:?} {}",
                s.code(),
                s.message()
            );
        }
        let s = raw_call(tcp.clone(), method, vec![0u8; 2 << 20]).await;
        ensure!(
            s.code() == Code::ResourceExhausted,
            "{method} 2 MiB: {:?} {}",
            s.code(),
            s.message()
        );
    }
    // A valid request still works on the same connection.
    let mut c = TracerClient::new(tcp);
    ensure!(c.info(pb::InfoRequest {}).await.is_ok());
    srv.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_client_limit_are_closed_and_counted() -> Result<()> {
    use tracer_user::api::limits;
    let srv = start(8).await?;
    srv.publish(node(1, 0));
    let before = limits::connections_refused();
    // An HTTP/2 server speaks first (SETTINGS): an admitted connection
    // has bytes to read, a refused one reads end-of-file.
    async fn first_read(s: &mut tokio::net::TcpStream) -> Result<usize> {
        let mut buf = [0u8; 64];
        Ok(
            tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .context("no answer within 5 s")?
                .unwrap_or(0),
        )
    }
    let mut held = vec![];
    for i in 0..limits::MAX_CONNECTIONS_PER_PEER {
        let mut s = tokio::net::TcpStream::connect(srv.grpc).await?;
        ensure!(first_read(&mut s).await? > 0, "connection {i} was refused");
        held.push(s);
    }
    for i in 0..3 {
        let mut s = tokio::net::TcpStream::connect(srv.grpc).await?;
        ensure!(
            first_read(&mut s).await? == 0,
            "extra connection {i} was served"
        );
    }
    let refused = limits::connections_refused() - before;
    ensure!(refused >= 3, "{refused} refusals counted");
    // The Unix socket has its own budget: tracer top still gets in, and
    // sees the counter.
    let mut u = srv.unix_client().await?;
    let h = u
        .info(pb::InfoRequest {})
        .await?
        .into_inner()
        .health
        .context("health")?;
    ensure!(h.connections_refused >= before + 3, "{h:?}");
    let (_, body) = http_get(srv.metrics, "/metrics").await?;
    let line = body
        .lines()
        .find(|l| l.starts_with("tracer_agent_connections_refused_total "))
        .context("no tracer_agent_connections_refused_total")?;
    let n: f64 = line.rsplit(' ').next().unwrap_or("").parse()?;
    ensure!(n >= (before + 3) as f64, "{line}");
    // Closing held connections gives their slots back.
    held.truncate(limits::MAX_CONNECTIONS_PER_PEER - 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut s = tokio::net::TcpStream::connect(srv.grpc).await?;
    ensure!(first_read(&mut s).await? > 0, "a freed slot is not reused");
    drop((held, s));
    srv.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tcp_client_cannot_take_every_stream_and_drops_are_counted() -> Result<()> {
    use tracer_user::api::{limits, server};
    let srv = start(8).await?;
    srv.publish(big(1));
    let before = limits::stream_messages_dropped();
    // One TCP client address, several connections: capped per address.
    let mut clients = vec![];
    for _ in 0..2 {
        clients.push(srv.tcp_client().await?);
    }
    let req = pb::WatchRequest {
        interval_ms: 100,
        top_n: 1000,
        ..Default::default()
    };
    let mut streams = vec![];
    let mut refused = None;
    for i in 0..server::MAX_STREAMS_PER_PEER + 1 {
        let c = &mut clients[i % 2];
        match c.watch(req.clone()).await {
            Ok(s) => streams.push(s.into_inner()),
            Err(e) => {
                refused = Some((i, e));
                break;
            }
        }
    }
    let (i, e) = refused.context("no stream refused")?;
    ensure!(i == server::MAX_STREAMS_PER_PEER, "refused at {i}");
    ensure!(e.code() == Code::ResourceExhausted, "{e:?}");
    // The Unix socket (tracer top on the node) still streams.
    let mut u = srv.unix_client().await?;
    let mut w = u.watch(req).await?.into_inner();
    ensure!(next(&mut w).await?.seq >= 1);
    // Nobody reads the TCP streams: snapshots are dropped and counted.
    let end = Instant::now() + Duration::from_secs(10);
    while limits::stream_messages_dropped() == before {
        ensure!(Instant::now() < end, "no dropped snapshot counted");
        srv.publish(big(2));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let h = u
        .info(pb::InfoRequest {})
        .await?
        .into_inner()
        .health
        .context("health")?;
    ensure!(h.stream_messages_dropped > before, "{h:?}");
    drop((streams, w));
    srv.shutdown().await
}
