//! A scripted tracer.v1 server on a Unix socket, for testing the client side
//! of `tracer top` (streams, reconnects, resume) without an agent.

use std::{
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, transport::Server};
use tracer_api::v1::{
    self as api,
    tracer_server::{Tracer, TracerServer},
};

/// What the mock serves and what it was asked.
#[derive(Default)]
pub struct Script {
    pub node: String,
    /// Sent on every Watch tick, with `seq` and `interval_ns` filled in.
    pub snapshot: api::Snapshot,
    /// Served to Findings requests (those with `seq > after_seq`).
    pub findings: Vec<api::FindingEvent>,
    /// Fail the first Findings stream after its backlog, forcing a reconnect.
    pub break_findings_once: bool,
    pub watch_requests: Vec<api::WatchRequest>,
    pub findings_after: Vec<u64>,
    pub deep_requests: Vec<api::StartDeepMapTraceRequest>,
}

#[derive(Clone)]
pub struct Mock(pub Arc<Mutex<Script>>);

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Tracer for Mock {
    async fn info(
        &self,
        _: Request<api::InfoRequest>,
    ) -> Result<Response<api::InfoResponse>, Status> {
        let s = self.0.lock().unwrap();
        Ok(Response::new(api::InfoResponse {
            version: "mock".into(),
            node: s.node.clone(),
            hooks: vec![api::Hook {
                feature: "locks".into(),
                mechanism: "uprobe".into(),
                status: "attached".into(),
                reason: String::new(),
            }],
            ..Default::default()
        }))
    }

    async fn list_processes(
        &self,
        _: Request<api::ListProcessesRequest>,
    ) -> Result<Response<api::ListProcessesResponse>, Status> {
        Ok(Response::new(api::ListProcessesResponse::default()))
    }

    type WatchStream = Boxed<api::Snapshot>;

    async fn watch(
        &self,
        req: Request<api::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = req.into_inner();
        let interval = Duration::from_millis(u64::from(req.interval_ms.max(10)));
        let (snap, node) = {
            let mut s = self.0.lock().unwrap();
            s.watch_requests.push(req);
            (s.snapshot.clone(), s.node.clone())
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            for seq in 1.. {
                let mut s = snap.clone();
                s.seq = seq;
                s.node = node.clone();
                s.interval_ns = interval.as_nanos() as u64;
                if tx.send(Ok(s)).await.is_err() {
                    return;
                }
                tokio::time::sleep(interval).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type FindingsStream = Boxed<api::FindingEvent>;

    async fn findings(
        &self,
        req: Request<api::FindingsRequest>,
    ) -> Result<Response<Self::FindingsStream>, Status> {
        let after = req.into_inner().after_seq;
        let (backlog, fail) = {
            let mut s = self.0.lock().unwrap();
            s.findings_after.push(after);
            let fail = std::mem::take(&mut s.break_findings_once);
            let backlog: Vec<_> = s
                .findings
                .iter()
                .filter(|f| f.seq > after)
                .cloned()
                .collect();
            (backlog, fail)
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            for f in backlog {
                if tx.send(Ok(f)).await.is_err() {
                    return;
                }
            }
            if fail {
                let _ = tx
                    .send(Err(Status::unavailable("mock: stream broken")))
                    .await;
            } else {
                tx.closed().await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn start_deep_map_trace(
        &self,
        req: Request<api::StartDeepMapTraceRequest>,
    ) -> Result<Response<api::StartDeepMapTraceResponse>, Status> {
        let req = req.into_inner();
        if req.pid == 0 {
            return Err(Status::not_found("mock: no such pid"));
        }
        self.0.lock().unwrap().deep_requests.push(req);
        Ok(Response::new(api::StartDeepMapTraceResponse {
            ends_unix_ns: 1,
            probes: vec![api::ProbeStatus {
                feature: "maps".into(),
                function: "runtime.mapassign".into(),
                status: "attached".into(),
                reason: String::new(),
            }],
        }))
    }

    async fn stop_deep_map_trace(
        &self,
        _req: Request<api::StopDeepMapTraceRequest>,
    ) -> Result<Response<api::StopDeepMapTraceResponse>, Status> {
        Err(Status::unimplemented("mock: StopDeepMapTrace"))
    }
}

/// Serves `script` on a socket in `dir`; returns the socket path.
pub fn serve(dir: &Path, script: Arc<Mutex<Script>>) -> PathBuf {
    let path = dir.join("mock.sock");
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).expect("bind mock socket");
    tokio::spawn(
        Server::builder()
            .add_service(TracerServer::new(Mock(script)))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    path
}

/// A fresh temporary directory for one test.
pub fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tracer-top-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}
