//! The gRPC side of `tracer top`: one task per agent keeps a Watch stream and
//! a Findings stream open, reconnects with back-off when either breaks, and
//! resumes findings after the last sequence number it saw. Everything it
//! learns goes to the UI as [`Tagged`] events over one channel.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, watch};
use tonic::{
    metadata::AsciiMetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint, Uri},
};
use tracer_api::v1::{self as api, tracer_client::TracerClient};

use super::model::ConnState;

/// Where an agent listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addr {
    /// `host:port` or `http://host:port`, kept as an `http://` URI.
    Tcp(String),
    /// `unix:/path/to/socket`.
    Unix(PathBuf),
}

impl Addr {
    /// Parses `host:port`, `http://host:port` or `unix:/path`.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if let Some(path) = s.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                bail!("{s:?}: unix: needs a socket path");
            }
            return Ok(Addr::Unix(PathBuf::from(path)));
        }
        let uri = if s.starts_with("http://") || s.starts_with("https://") {
            s.to_string()
        } else {
            format!("http://{s}")
        };
        let parsed: Uri = uri.parse().with_context(|| {
            format!("{s:?}: expected host:port, http://host:port or unix:/path")
        })?;
        if parsed.port_u16().is_none() {
            bail!("{s:?}: no port (expected host:port)");
        }
        Ok(Addr::Tcp(uri))
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Tcp(u) => write!(f, "{}", u.strip_prefix("http://").unwrap_or(u)),
            Addr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// The bearer token sent to TCP agents (`--token-file`), set once.
static TOKEN: OnceLock<AsciiMetadataValue> = OnceLock::new();

/// Reads `--token-file` and sends it to every TCP agent from now on.
pub fn set_token_file(path: &Path) -> Result<()> {
    let token = crate::api::auth::Token::from_file(path).context("--token-file")?;
    let value = AsciiMetadataValue::try_from(token.header_value())
        .context("--token-file: not a valid header value")?;
    if TOKEN.set(value).is_err() {
        bail!("--token-file given twice");
    }
    Ok(())
}

/// Adds `authorization: Bearer TOKEN` to requests over TCP; the Unix socket
/// needs none (and never sees the token).
#[derive(Clone)]
pub struct BearerAuth(Option<AsciiMetadataValue>);

impl Interceptor for BearerAuth {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A client of one agent.
pub type Client = TracerClient<InterceptedService<Channel, BearerAuth>>;

/// Opens a client to one agent.
pub async fn connect(addr: &Addr) -> Result<Client> {
    let token = match addr {
        Addr::Tcp(_) => TOKEN.get().cloned(),
        Addr::Unix(_) => None,
    };
    let channel = match addr {
        Addr::Tcp(uri) => Endpoint::from_shared(uri.clone())?
            .connect_timeout(Duration::from_secs(3))
            .connect()
            .await
            .with_context(|| format!("connect {addr}"))?,
        Addr::Unix(path) => {
            let path = path.clone();
            // The URI is a placeholder: the connector ignores it.
            Endpoint::from_static("http://localhost")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await
                .with_context(|| format!("connect {addr}"))?
        }
    };
    // Snapshots of a busy node can exceed tonic's 4 MiB default.
    Ok(TracerClient::with_interceptor(channel, BearerAuth(token))
        .max_decoding_message_size(64 << 20))
}

/// Turns on the deep map tier for `pid` on one agent; returns a one-line result.
pub async fn start_deep_maps(addr: &Addr, pid: u32, duration: Duration) -> Result<String> {
    let mut client = connect(addr).await?;
    let ms = u32::try_from(duration.as_millis()).unwrap_or(u32::MAX);
    let resp = client
        .start_deep_map_trace(api::StartDeepMapTraceRequest {
            pid,
            duration_ms: ms,
            sites: vec![],
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let attached = resp
        .probes
        .iter()
        .filter(|p| p.status == "attached")
        .count();
    Ok(format!(
        "deep map tracing on for pid {pid} for {}s: {attached}/{} probes attached",
        duration.as_secs(),
        resp.probes.len()
    ))
}

/// What each Watch stream asks for; a change restarts the streams.
#[derive(Clone, Debug, PartialEq)]
pub struct WatchParams {
    pub filter: api::Filter,
    pub interval_ms: u32,
    pub top_n: u32,
    pub sort: api::SortKey,
}

impl WatchParams {
    fn request(&self) -> api::WatchRequest {
        api::WatchRequest {
            filter: Some(self.filter.clone()),
            interval_ms: self.interval_ms,
            top_n: self.top_n,
            sort: self.sort as i32,
        }
    }
}

/// Something an agent task learned.
#[derive(Debug)]
pub enum AgentEvent {
    State(ConnState),
    Info(Box<api::InfoResponse>),
    Snapshot(Box<api::Snapshot>),
    Finding(Box<api::FindingEvent>),
}

/// An event and the index of the agent it is about.
#[derive(Debug)]
pub struct Tagged {
    pub agent: usize,
    pub event: AgentEvent,
}

/// Back-off between reconnect attempts: 250 ms doubling to 5 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << attempt.min(5))).min(Duration::from_secs(5))
}

/// Runs until `tx` is closed: connects, streams, reconnects.
pub async fn run_agent(
    agent: usize,
    addr: Addr,
    mut params: watch::Receiver<WatchParams>,
    tx: mpsc::Sender<Tagged>,
) {
    let send = |event| {
        let tx = tx.clone();
        async move { tx.send(Tagged { agent, event }).await.is_ok() }
    };
    let mut after_seq = 0u64;
    let mut attempt = 0u32;
    loop {
        if !send(AgentEvent::State(ConnState::Connecting)).await {
            return;
        }
        let err = match session(agent, &addr, &mut params, &tx, &mut after_seq, &mut attempt).await
        {
            Ok(()) => return, // the UI went away
            Err(e) => e,
        };
        attempt = attempt.saturating_add(1);
        let state = ConnState::Retrying {
            error: format!("{err:#}"),
            attempt,
        };
        if !send(AgentEvent::State(state)).await {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff(attempt)) => {}
            () = tx.closed() => return,
        }
    }
}

/// One connection: Info, then Watch and Findings until either fails.
/// `Ok` means the receiver is gone and the task should end.
async fn session(
    agent: usize,
    addr: &Addr,
    params: &mut watch::Receiver<WatchParams>,
    tx: &mpsc::Sender<Tagged>,
    after_seq: &mut u64,
    attempt: &mut u32,
) -> Result<()> {
    let mut client = connect(addr).await?;
    let info = client
        .info(api::InfoRequest {})
        .await
        .context("Info")?
        .into_inner();
    let tag = |event| Tagged { agent, event };
    if tx
        .send(tag(AgentEvent::Info(Box::new(info))))
        .await
        .is_err()
        || tx
            .send(tag(AgentEvent::State(ConnState::Connected)))
            .await
            .is_err()
    {
        return Ok(());
    }
    *attempt = 0;
    let mut findings_client = client.clone();
    let watch = async {
        loop {
            let req = params.borrow_and_update().request();
            let mut stream = client.watch(req).await.context("Watch")?.into_inner();
            loop {
                tokio::select! {
                    changed = params.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                        break;
                    }
                    msg = stream.message() => match msg.context("Watch stream")? {
                        Some(s) => {
                            if tx.send(tag(AgentEvent::Snapshot(Box::new(s)))).await.is_err() {
                                return Ok(());
                            }
                        }
                        None => bail!("Watch stream ended"),
                    },
                }
            }
        }
    };
    let findings = async {
        let req = api::FindingsRequest {
            filter: None,
            after_seq: *after_seq,
        };
        let mut stream = findings_client
            .findings(req)
            .await
            .context("Findings")?
            .into_inner();
        while let Some(f) = stream.message().await.context("Findings stream")? {
            *after_seq = (*after_seq).max(f.seq);
            if tx
                .send(tag(AgentEvent::Finding(Box::new(f))))
                .await
                .is_err()
            {
                return Ok(());
            }
        }
        bail!("Findings stream ended")
    };
    tokio::select! {
        r = watch => r,
        r = findings => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse() {
        assert_eq!(
            Addr::parse("127.0.0.1:7000").unwrap(),
            Addr::Tcp("http://127.0.0.1:7000".into())
        );
        assert_eq!(
            Addr::parse("http://node-1:7000").unwrap(),
            Addr::Tcp("http://node-1:7000".into())
        );
        assert_eq!(
            Addr::parse("unix:/run/tracer.sock").unwrap(),
            Addr::Unix("/run/tracer.sock".into())
        );
        assert_eq!(
            Addr::parse("unix:/run/t.sock").unwrap().to_string(),
            "unix:/run/t.sock"
        );
        assert_eq!(Addr::parse("[::1]:7000").unwrap().to_string(), "[::1]:7000");
        assert!(Addr::parse("unix:").is_err());
        assert!(Addr::parse("node-1").is_err(), "no port");
        assert!(Addr::parse("a b:1").is_err());
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(0), Duration::from_millis(250));
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(5), Duration::from_secs(5));
        assert_eq!(backoff(100), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn unreachable_agent_reports_retrying_with_the_error() {
        let dir = std::env::temp_dir().join(format!("tracer-top-src-{}", std::process::id()));
        let addr = Addr::Unix(dir.join("missing.sock"));
        let (ptx, prx) = watch::channel(WatchParams {
            filter: api::Filter::default(),
            interval_ms: 1000,
            top_n: 20,
            sort: api::SortKey::TotalTime,
        });
        let (tx, mut rx) = mpsc::channel(8);
        let task = tokio::spawn(run_agent(3, addr, prx, tx));
        let first = rx.recv().await.unwrap();
        assert_eq!(first.agent, 3);
        assert!(matches!(
            first.event,
            AgentEvent::State(ConnState::Connecting)
        ));
        let second = rx.recv().await.unwrap();
        match second.event {
            AgentEvent::State(ConnState::Retrying { error, attempt }) => {
                assert_eq!(attempt, 1);
                assert!(error.contains("missing.sock"), "{error}");
            }
            other => panic!("unexpected {other:?}"),
        }
        drop(rx);
        drop(ptx);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn streams_reconnect_and_resume_findings_after_the_last_seq() {
        use std::sync::{Arc, Mutex};

        use crate::top::{
            mock::{Script, serve, tempdir},
            model::fixtures::{race, snapshot},
        };
        let dir = tempdir("resume");
        let script = Arc::new(Mutex::new(Script {
            node: "n1".into(),
            snapshot: snapshot("", vec![]),
            findings: vec![race(1, 10), race(2, 10)],
            break_findings_once: true,
            ..Script::default()
        }));
        let path = serve(&dir, script.clone());
        let (ptx, prx) = watch::channel(WatchParams {
            filter: api::Filter::default(),
            interval_ms: 100,
            top_n: 20,
            sort: api::SortKey::TotalTime,
        });
        let (tx, mut rx) = mpsc::channel(64);
        let task = tokio::spawn(run_agent(0, Addr::Unix(path), prx, tx));
        let mut states = vec![];
        let mut seqs = vec![];
        let mut snaps = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while (snaps < 3
            || seqs.len() < 2
            || states
                .iter()
                .filter(|s| **s == ConnState::Connected)
                .count()
                < 2)
            && tokio::time::Instant::now() < deadline
        {
            let Ok(Some(ev)) = tokio::time::timeout_at(deadline, rx.recv()).await else {
                break;
            };
            match ev.event {
                AgentEvent::State(s) => states.push(s),
                AgentEvent::Finding(f) => seqs.push(f.seq),
                AgentEvent::Snapshot(s) => {
                    assert_eq!(s.node, "n1");
                    snaps += 1;
                }
                AgentEvent::Info(i) => assert_eq!(i.version, "mock"),
            }
        }
        assert_eq!(seqs, vec![1, 2], "each finding once");
        assert!(
            states.iter().any(|s| matches!(s, ConnState::Retrying { error, .. } if error.contains("stream broken"))),
            "{states:?}"
        );
        assert_eq!(
            states
                .iter()
                .filter(|s| **s == ConnState::Connected)
                .count(),
            2,
            "reconnected: {states:?}"
        );
        assert_eq!(
            script.lock().unwrap().findings_after,
            vec![0, 2],
            "resumed after seq 2"
        );

        // New parameters restart the Watch stream with them.
        let n = script.lock().unwrap().watch_requests.len();
        ptx.send_replace(WatchParams {
            filter: api::Filter {
                pids: vec![7],
                ..Default::default()
            },
            interval_ms: 300,
            top_n: 5,
            sort: api::SortKey::Max,
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while script.lock().unwrap().watch_requests.len() == n
            && tokio::time::Instant::now() < deadline
        {
            let _ = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await;
        }
        let last = script
            .lock()
            .unwrap()
            .watch_requests
            .last()
            .cloned()
            .unwrap();
        assert_eq!(last.interval_ms, 300);
        assert_eq!(last.top_n, 5);
        assert_eq!(last.sort, api::SortKey::Max as i32);
        assert_eq!(last.filter.unwrap().pids, vec![7]);
        drop(rx);
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn deep_maps_request_reaches_the_agent() {
        use std::sync::{Arc, Mutex};

        use crate::top::mock::{Script, serve, tempdir};
        let dir = tempdir("deep");
        let script = Arc::new(Mutex::new(Script::default()));
        let addr = Addr::Unix(serve(&dir, script.clone()));
        let msg = start_deep_maps(&addr, 42, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(
            msg,
            "deep map tracing on for pid 42 for 30s: 1/1 probes attached"
        );
        let reqs = script.lock().unwrap().deep_requests.clone();
        assert_eq!((reqs[0].pid, reqs[0].duration_ms), (42, 30_000));
        let err = start_deep_maps(&addr, 0, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("no such pid"), "{err}");
    }
}
