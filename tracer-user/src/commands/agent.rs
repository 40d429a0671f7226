//! `tracer agent`: trace every Go process on the node until SIGTERM, serving
//! what it sees over gRPC and Prometheus.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context, Result};

use crate::agent::{
    core::{AgentOptions, initial_info, run},
    hub::{self, Hub, NodeSnapshot},
};

/// Where the agent serves, and what it writes on exit.
#[derive(Clone, Debug)]
pub struct Frontends {
    pub grpc_tcp: Option<SocketAddr>,
    pub unix_socket: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
    /// Bearer token TCP clients must send.
    pub grpc_token_file: Option<PathBuf>,
    /// TCP clients may only read.
    pub grpc_read_only: bool,
    /// TCP without authentication, full access, on any address.
    pub grpc_insecure: bool,
    pub max_deep_traces: usize,
    pub metrics_top_sites: usize,
    /// Write the last snapshot and every finding as JSON here on exit.
    pub json_report: Option<PathBuf>,
    /// Push the metrics to an OTLP collector.
    pub otlp: Option<crate::api::otlp::OtlpOptions>,
}

/// Findings kept for clients that resume.
const FINDINGS_HISTORY: usize = 4096;

/// The node name: `--node-name`, else `$NODE_NAME` (set by the DaemonSet),
/// else the host name.
pub fn default_node_name() -> String {
    if let Ok(n) = std::env::var("NODE_NAME")
        && !n.is_empty()
    {
        return n;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

/// The pod index for `--kube auto|on|off`: absent outside a cluster (auto),
/// an error there with `on`.
pub async fn pod_index(mode: &str, node: &str) -> Result<Option<crate::process::pods::PodIndex>> {
    match mode {
        "off" => Ok(None),
        "on" => Ok(Some(crate::process::pods::start(node).await?.context(
            "--kube on: neither KUBERNETES_SERVICE_HOST nor KUBECONFIG is set",
        )?)),
        _ => Ok(crate::process::pods::start(node).await.unwrap_or_else(|e| {
            tracing::warn!("pod names unavailable: {e:#}");
            None
        })),
    }
}

/// Resolves on SIGTERM or Ctrl-C.
async fn terminated() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// Binds every front end in `fe` now, before any probe is loaded, so that a
/// bad address or a missing socket directory fails start-up with its reason
/// instead of leaving an agent that traces but serves nothing. `None` when
/// every front end is off (a run that only writes --json-report).
async fn bind_frontends(fe: &Frontends) -> Result<Option<crate::api::Bound>> {
    let tls = match (&fe.tls_cert, &fe.tls_key) {
        (Some(cert), Some(key)) => Some(crate::api::TlsOptions {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: fe.tls_client_ca.clone(),
        }),
        _ => None,
    };
    anyhow::ensure!(
        fe.grpc_tcp.is_some()
            || (fe.grpc_token_file.is_none() && !fe.grpc_read_only && !fe.grpc_insecure),
        "--grpc-token-file, --grpc-read-only and --grpc-insecure apply to --grpc-listen, which is off"
    );
    if fe.grpc_tcp.is_none() && fe.unix_socket.is_none() && fe.metrics.is_none() {
        return Ok(None);
    }
    let tcp_policy = match fe.grpc_tcp {
        Some(addr) => {
            let token = fe
                .grpc_token_file
                .as_deref()
                .map(crate::api::auth::Token::from_file)
                .transpose()
                .context("--grpc-token-file")?;
            let client_certs = tls.as_ref().is_some_and(|t| t.client_ca.is_some());
            crate::api::tcp_policy(
                addr,
                token,
                client_certs,
                fe.grpc_read_only,
                fe.grpc_insecure,
            )?
        }
        None => crate::api::auth::Policy::default(),
    };
    let opts = crate::api::ServeOptions {
        grpc_tcp: fe.grpc_tcp,
        unix_socket: fe.unix_socket.clone(),
        metrics: fe.metrics,
        tls,
        tcp_policy,
        metrics_top_sites: fe.metrics_top_sites,
        max_deep_traces: fe.max_deep_traces,
    };
    crate::api::bind(&opts).await.map(Some)
}

/// Serves `bound` on `hub` until `stop` fires. If an endpoint fails, `failed`
/// fires, so the caller stops tracing instead of running on deaf.
fn spawn_frontends(
    hub: Hub,
    bound: Option<crate::api::Bound>,
    mut stop: tokio::sync::watch::Receiver<bool>,
    failed: tokio::sync::oneshot::Sender<()>,
) -> tokio::task::JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let Some(bound) = bound else {
            return Ok(());
        };
        let r = bound
            .serve(hub, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = &r {
            tracing::error!("serving failed, stopping the agent: {e:#}");
            let _ = failed.send(());
        }
        r
    })
}

/// An agent running inside this process (for `tracer top` without
/// `--connect`), serving gRPC on a private Unix socket. Stops when dropped.
pub struct EmbeddedAgent {
    pub socket: PathBuf,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Drop for EmbeddedAgent {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        let _ = std::fs::remove_file(&self.socket);
        if let Some(dir) = self.socket.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Starts an agent in this process with `opts`, serving on a fresh private
/// socket; fails as the agent would (capabilities, tracefs).
pub async fn spawn_embedded(opts: AgentOptions) -> Result<EmbeddedAgent> {
    crate::privileges::check()?;
    crate::kernelfs::ensure_tracefs()?;
    let dir = std::env::temp_dir().join(format!("tracer-top-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let socket = dir.join("agent.sock");
    let (hub, writer) = hub::channel(initial_info(&opts.node), opts.refresh, FINDINGS_HISTORY);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let fe = Frontends {
        grpc_tcp: None,
        unix_socket: Some(socket.clone()),
        metrics: None,
        tls_cert: None,
        tls_key: None,
        tls_client_ca: None,
        grpc_token_file: None,
        grpc_read_only: false,
        grpc_insecure: false,
        max_deep_traces: crate::api::server::DEFAULT_MAX_DEEP_TRACES,
        metrics_top_sites: 50,
        json_report: None,
        otlp: None,
    };
    let bound = bind_frontends(&fe).await?;
    let (failed, _) = tokio::sync::oneshot::channel();
    spawn_frontends(hub, bound, stop_rx.clone(), failed);
    let mut agent_stop = stop_rx;
    tokio::spawn(async move {
        let stopped = async move {
            let _ = agent_stop.wait_for(|s| *s).await;
        };
        if let Err(e) = run(opts, writer, stopped).await {
            tracing::error!("embedded agent stopped: {e:#}");
        }
    });
    Ok(EmbeddedAgent { socket, stop })
}

/// The final JSON document: the last snapshot and every finding.
#[derive(serde::Serialize)]
struct FinalReport<'a> {
    snapshot: &'a NodeSnapshot,
    findings: Vec<&'a hub::FindingRecord>,
}

/// Runs the agent until SIGTERM/Ctrl-C (then Ok), or until a front end
/// fails (then its error, so the process exits non-zero and its supervisor
/// restarts it).
pub async fn agent(opts: AgentOptions, fe: Frontends) -> Result<()> {
    let bound = bind_frontends(&fe).await?;
    let (hub, writer) = hub::channel(initial_info(&opts.node), opts.refresh, FINDINGS_HISTORY);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let otlp = match &fe.otlp {
        Some(o) => {
            crate::api::otlp::check_endpoint(o)?;
            let (hub, o, stop) = (hub.clone(), o.clone(), stop_rx.clone());
            Some(tokio::spawn(crate::api::otlp::run(hub, o, stop)))
        }
        None => None,
    };
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel();
    let frontends = spawn_frontends(hub.clone(), bound, stop_rx, failed_tx);
    let shutdown = async move {
        tokio::select! {
            () = terminated() => {}
            Ok(()) = failed_rx => {}
        }
    };
    let result = run(opts, writer, shutdown).await;
    let _ = stop_tx.send(true);
    let served = match tokio::time::timeout(Duration::from_secs(5), frontends).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(anyhow::anyhow!("serving task failed: {e}")),
        Err(_) => {
            tracing::warn!("front ends did not stop within 5 s");
            Ok(())
        }
    };
    if let Some(t) = otlp
        && let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(5), t).await
    {
        tracing::warn!("OTLP push stopped with an error: {e:#}");
    }
    if let Some(path) = &fe.json_report {
        let snap = hub.snapshot();
        let findings = hub.findings.since(0, usize::MAX);
        let doc = FinalReport {
            snapshot: &snap,
            findings: findings.iter().map(Arc::as_ref).collect(),
        };
        let json = serde_json::to_vec_pretty(&doc)?;
        std::fs::write(path, json)
            .with_context(|| format!("writing JSON report to {}", path.display()))?;
    }
    result.and(served)
}
