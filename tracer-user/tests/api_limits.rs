//! Resource bounds of the gRPC front ends, measured on a server in a child
//! process (this test binary re-run as `serve_child`), so that its RSS and
//! CPU time are its own: a synthetic hub, no eBPF, no root.
//!
//! - Out of file descriptors, the accept loop must wait, not spin.
//! - Never-reading Watch clients must cost the server a bounded amount of
//!   memory each, and give it back once they close.
//!
//! The measured numbers are printed (docs/benchmarks.md records them).

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use tracer_api::v1::{self as pb, tracer_client::TracerClient};
use tracer_user::{
    agent::hub,
    api::{
        ServeOptions,
        synthetic::{agent_info, stack_heavy as big},
    },
};

const CHILD_ENV: &str = "TRACER_API_LIMITS_CHILD";

fn cpu_ms() -> u64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
    ms(ru.ru_utime) + ms(ru.ru_stime)
}

/// The server side, run in a child: `mode` is `emfile` or `watch`.
async fn child(mode: &str) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("tracer-api-limits-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let socket = dir.join("s.sock");
    let (hub, writer) = hub::channel(agent_info(), Duration::from_millis(100), 8);
    writer.snapshots.send_replace(Arc::new(big(1)));
    let opts = ServeOptions {
        grpc_tcp: Some("127.0.0.1:0".parse()?),
        unix_socket: Some(socket.clone()),
        ..Default::default()
    };
    let bound = tracer_user::api::bind(&opts).await?;
    let addr = bound.grpc_addr().context("addr")?;
    tokio::spawn(bound.serve(hub, std::future::pending()));
    println!("ADDR {addr} {}", socket.display());
    match mode {
        "emfile" => {
            // Use up every file descriptor, then let the parent connect.
            let mut held = vec![];
            while let Ok(f) = std::fs::File::open("/dev/null") {
                held.push(f);
            }
            println!("EXHAUSTED {}", held.len());
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (c0, t0) = (cpu_ms(), Instant::now());
            tokio::time::sleep(Duration::from_secs(3)).await;
            println!(
                "CPU_MS {} WALL_MS {}",
                cpu_ms() - c0,
                t0.elapsed().as_millis()
            );
        }
        _ => {
            // New totals every 100 ms, as a busy agent would publish.
            let mut g = 1;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                g += 1;
                writer.snapshots.send_replace(Arc::new(big(g)));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
#[ignore = "the server half of the tests below; they run it"]
fn serve_child() -> Result<()> {
    let mode = std::env::var(CHILD_ENV).context("run by the other tests only")?;
    if mode == "emfile" {
        // Low enough to exhaust quickly, high enough to start the runtime.
        let lim = libc::rlimit {
            rlim_cur: 256,
            rlim_max: 256,
        };
        // SAFETY: plain syscall on a struct we own.
        ensure!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(child(&mode))
}

struct ChildServer {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    tcp: String,
    socket: String,
}

impl ChildServer {
    fn start(mode: &str) -> Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--ignored", "--exact", "serve_child", "--nocapture"])
            .env(CHILD_ENV, mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let out = child.stdout.take().context("stdout")?;
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut s = Self {
            child,
            lines,
            tcp: String::new(),
            socket: String::new(),
        };
        let addr = s.expect("ADDR ")?;
        let (tcp, socket) = addr.split_once(' ').context("ADDR line")?;
        (s.tcp, s.socket) = (tcp.to_string(), socket.to_string());
        Ok(s)
    }

    /// The rest of the child's next line starting with `prefix`.
    fn expect(&self, prefix: &str) -> Result<String> {
        let end = Instant::now() + Duration::from_secs(30);
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    if let Some(rest) = l.strip_prefix(prefix) {
                        return Ok(rest.to_string());
                    }
                }
                Err(_) => break,
            }
        }
        bail!("the child server never printed {prefix:?}")
    }

    fn rss_kib(&self) -> Result<u64> {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("VmRSS")
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn accept_loop_waits_when_file_descriptors_run_out() -> Result<()> {
    let srv = ChildServer::start("emfile")?;
    let n = srv.expect("EXHAUSTED ")?;
    // Connections the server cannot accept (they wait in the backlog).
    let _pending: Vec<_> = (0..4)
        .map(|_| std::net::TcpStream::connect(&srv.tcp))
        .collect::<Result<_, _>>()?;
    let line = srv.expect("CPU_MS ")?;
    let mut it = line.split_whitespace();
    let cpu: u64 = it.next().context("cpu")?.parse()?;
    let wall: u64 = it.nth(1).context("wall")?.parse()?;
    let share = cpu as f64 / wall as f64;
    eprintln!(
        "out of fds ({n} held): accept loop used {cpu} ms CPU in {wall} ms ({:.1}%)",
        share * 100.0
    );
    ensure!(
        share < 0.10,
        "the accept loop spins: {cpu} ms CPU in {wall} ms"
    );
    Ok(())
}

async fn unix_client(path: &str) -> Result<TracerClient<tonic::transport::Channel>> {
    let path = path.to_string();
    let ch = tonic::transport::Endpoint::try_from("http://localhost")?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await?;
    Ok(TracerClient::new(ch).max_decoding_message_size(64 << 20))
}

/// Never-reading Watch clients, one connection each.
const WATCHERS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_reading_watchers_cost_bounded_memory_given_back_on_close() -> Result<()> {
    let srv = ChildServer::start("watch")?;
    // One reading client first: the server's steady state with one stream.
    let mut reader = unix_client(&srv.socket).await?;
    let req = pb::WatchRequest {
        interval_ms: 100,
        top_n: 1000,
        ..Default::default()
    };
    let mut r = reader.watch(req.clone()).await?.into_inner();
    let mut msg_kib = 0;
    for _ in 0..20 {
        let m = r.message().await?.context("stream ended")?;
        msg_kib = prost::Message::encoded_len(&m) as u64 / 1024;
    }
    let base = srv.rss_kib()?;
    let mut held = vec![];
    for _ in 0..WATCHERS {
        let mut c = unix_client(&srv.socket).await?;
        let s = c.watch(req.clone()).await?.into_inner();
        held.push((c, s));
    }
    // Let every stream fill its buffers (snapshots every 100 ms).
    let mut peak = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(srv.rss_kib()?);
        // The reading client still gets fresh snapshots meanwhile.
        tokio::time::timeout(Duration::from_secs(5), r.message())
            .await
            .context("the reading client stalled")??;
    }
    drop(held);
    // The trimmer runs every 10 s after streams closed.
    let mut after = u64::MAX;
    let end = Instant::now() + Duration::from_secs(25);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        after = after.min(srv.rss_kib()?);
        let _ = r.message().await?;
    }
    let per_stream = (peak.saturating_sub(base)) / WATCHERS as u64;
    eprintln!(
        "{WATCHERS} never-reading Watch streams of {msg_kib} KiB snapshots: RSS {base} KiB -> peak {peak} KiB ({per_stream} KiB per stream) -> {after} KiB after they closed"
    );
    // A stuck stream holds the message in flight and the one built behind
    // it (as Rust values, ~4x their encoded size): not a queue of them (it
    // was 9.7 MB, 16x, with 4 buffered).
    ensure!(
        per_stream < 8 * msg_kib,
        "{per_stream} KiB per never-reading stream, snapshots of {msg_kib} KiB"
    );
    ensure!(
        after < base + (peak - base) / 4,
        "memory kept after the streams closed: {base} -> {peak} -> {after} KiB"
    );
    Ok(())
}
