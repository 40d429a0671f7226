//! Binds and runs the agent's endpoints: gRPC on TCP (optionally TLS, with
//! client certificates when a CA is given) and/or a Unix socket, and HTTP
//! `/metrics`, `/healthz`, `/readyz` and `/debug/pprof/{mutex,block,maps}`.
//!
//! [`serve`] trusts its options: deciding whether a non-loopback address is
//! acceptable (the user asked for it explicitly) and what TCP clients must
//! present is the CLI's job ([`tcp_policy`]). It logs every address it binds.
//! Both gRPC listeners run under the bounds of [`limits`](super::limits).

use std::{
    future::Future,
    net::SocketAddr,
    os::unix::fs::{FileTypeExt, PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use tokio::{
    net::{TcpListener, UnixListener},
    sync::watch,
    task::JoinSet,
};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracer_api::v1::tracer_server::TracerServer;

use super::{
    auth::{GuardLayer, Policy},
    codes::CodesLayer,
    limits::{self, Slots},
    metrics,
    server::TracerService,
};
use crate::agent::hub::Hub;

/// Largest request accepted: a valid one (five lists of 256 × 256 bytes) is
/// far below this.
const MAX_REQUEST_BYTES: usize = 1 << 20;
/// How long connections may take to close after shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// TLS for the gRPC TCP listener.
#[derive(Clone, Debug)]
pub struct TlsOptions {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    pub client_ca: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub grpc_tcp: Option<SocketAddr>,
    pub unix_socket: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
    pub tls: Option<TlsOptions>,
    /// What TCP clients must present and may call (the Unix socket is
    /// root-only and gets full access).
    pub tcp_policy: Policy,
    /// Lock call sites that keep their own `site` label in `/metrics`.
    pub metrics_top_sites: usize,
    /// Deep map traces running at once on the node (StartDeepMapTrace).
    pub max_deep_traces: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            grpc_tcp: None,
            unix_socket: None,
            metrics: None,
            tls: None,
            tcp_policy: Policy::default(),
            metrics_top_sites: metrics::DEFAULT_TOP_SITES,
            max_deep_traces: super::server::DEFAULT_MAX_DEEP_TRACES,
        }
    }
}

/// Listeners bound by [`bind`], not yet serving.
pub struct Bound {
    grpc_tcp: Option<TcpListener>,
    unix: Option<(UnixListener, PathBuf)>,
    metrics: Option<TcpListener>,
    tls: Option<ServerTlsConfig>,
    tcp_policy: Policy,
    top_sites: usize,
    max_deep_traces: usize,
}

impl Bound {
    /// The gRPC TCP address actually bound (port 0 resolved).
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc_tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn unix_path(&self) -> Option<&Path> {
        self.unix.as_ref().map(|(_, p)| p.as_path())
    }
}

fn tls_config(t: &TlsOptions) -> Result<ServerTlsConfig> {
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut cfg =
        ServerTlsConfig::new().identity(Identity::from_pem(read(&t.cert)?, read(&t.key)?));
    if let Some(ca) = &t.client_ca {
        cfg = cfg
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(false);
    }
    Ok(cfg)
}

/// A socket file left by an earlier run is removed; any other file at the
/// path is an error (we never delete what we did not create).
fn remove_stale_socket(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display())),
        Ok(_) => bail!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("checking {}", path.display())),
    }
}

/// Creates the socket's directory when it is missing (`/run/tracer` does not
/// exist on a fresh node: `/run` is a tmpfs), owner-only so that the 0600
/// socket inside is not the only guard. An existing directory is left as it
/// is: it may be a volume the operator mounted with its own mode.
fn ensure_socket_dir(path: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating the socket directory {}", dir.display()))
}

/// For the CLI: a gRPC or metrics address that is not loopback exposes the
/// node's process data, so it is refused unless the user asked for remote
/// access explicitly (`allow_remote`).
pub fn check_exposure(what: &str, addr: SocketAddr, allow_remote: bool) -> Result<()> {
    if addr.ip().is_loopback() || allow_remote {
        return Ok(());
    }
    bail!(
        "{what} address {addr} is reachable from other hosts; pass it explicitly to accept that (use 127.0.0.1 or a Unix socket otherwise)"
    )
}

/// What TCP clients must present, from the CLI's flags: a listener without
/// a token or client certificates is refused beyond loopback unless
/// `insecure`, and is read-only on loopback unless `insecure` (any local
/// user can reach it). `read_only` makes it read-only in any case.
pub fn tcp_policy(
    addr: SocketAddr,
    token: Option<super::auth::Token>,
    client_certs: bool,
    read_only: bool,
    insecure: bool,
) -> Result<Policy> {
    let authenticated = token.is_some() || client_certs;
    if !authenticated && !insecure && !addr.ip().is_loopback() {
        bail!(
            "gRPC on {addr} would let anyone who can reach it list this node's processes and start deep traces; give --grpc-token-file or --tls-client-ca (or --grpc-insecure to accept that)"
        );
    }
    let read_only = read_only || (!authenticated && !insecure);
    if !authenticated {
        tracing::warn!(
            "gRPC on {addr} has no authentication: {} may use it{}",
            if addr.ip().is_loopback() {
                "every local user"
            } else {
                "anyone who can reach it"
            },
            if read_only {
                " (read-only)"
            } else {
                ", including StartDeepMapTrace"
            }
        );
    }
    Ok(Policy { token, read_only })
}

/// HTTP/2 settings shared by both gRPC listeners; see [`limits`].
fn grpc_builder() -> Server {
    Server::builder()
        .max_concurrent_streams(limits::MAX_STREAMS_PER_CONNECTION)
        .initial_stream_window_size(limits::STREAM_WINDOW)
        .initial_connection_window_size(limits::CONNECTION_WINDOW)
        .max_frame_size(limits::MAX_FRAME)
        .http2_keepalive_interval(Some(limits::KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(limits::KEEPALIVE_TIMEOUT))
        .http2_max_header_list_size(16u32 << 10)
}

/// Binds every endpoint in `opts`; errors name the address that failed.
pub async fn bind(opts: &ServeOptions) -> Result<Bound> {
    if opts.grpc_tcp.is_none() && opts.unix_socket.is_none() && opts.metrics.is_none() {
        bail!("nothing to serve: no gRPC address, Unix socket or metrics address given");
    }
    let tls = opts.tls.as_ref().map(tls_config).transpose()?;
    if tls.is_some() && opts.grpc_tcp.is_none() {
        bail!("TLS options given without a gRPC TCP address");
    }
    let grpc_tcp = match opts.grpc_tcp {
        Some(a) => {
            let l = TcpListener::bind(a)
                .await
                .with_context(|| format!("binding gRPC on {a}"))?;
            tracing::info!(
                "gRPC listening on {}{}",
                l.local_addr()?,
                if tls.is_some() { " (TLS)" } else { "" }
            );
            Some(l)
        }
        None => None,
    };
    let unix = match &opts.unix_socket {
        Some(p) => {
            ensure_socket_dir(p)?;
            remove_stale_socket(p)?;
            let l = UnixListener::bind(p)
                .with_context(|| format!("binding gRPC on Unix socket {}", p.display()))?;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("setting 0600 on {}", p.display()))?;
            tracing::info!("gRPC listening on unix:{}", p.display());
            Some((l, p.clone()))
        }
        None => None,
    };
    let metrics = match opts.metrics {
        Some(a) => {
            let l = TcpListener::bind(a)
                .await
                .with_context(|| format!("binding metrics on {a}"))?;
            tracing::info!("metrics on http://{}/metrics", l.local_addr()?);
            Some(l)
        }
        None => None,
    };
    Ok(Bound {
        grpc_tcp,
        unix,
        metrics,
        tls,
        tcp_policy: opts.tcp_policy.clone(),
        top_sites: opts.metrics_top_sites,
        max_deep_traces: opts.max_deep_traces,
    })
}

#[derive(Clone)]
struct HttpState {
    hub: Hub,
    top_sites: usize,
}

async fn metrics_handler(State(s): State<HttpState>) -> impl IntoResponse {
    match metrics::render(s.hub.snapshot(), s.top_sites) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
            body,
        )
            .into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response(),
    }
}

async fn ready_handler(State(s): State<HttpState>) -> impl IntoResponse {
    if s.hub.snapshot().generation > 0 {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no snapshot yet\n")
    }
}

/// The HTTP side: metrics, probes and pprof profiles.
pub fn http_router(hub: Hub, top_sites: usize) -> Router {
    let pprof = Router::new()
        .route("/debug/pprof/{kind}", get(super::pprof_http::handler))
        .with_state(hub.clone());
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready_handler))
        .with_state(HttpState { hub, top_sites })
        .merge(pprof)
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

impl Bound {
    /// Serves until `shutdown` completes (then drains and returns Ok) or an
    /// endpoint fails (then stops the others and returns its error).
    pub async fn serve(
        self,
        hub: Hub,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let svc = TracerServer::new(
            TracerService::with_stop(hub.clone(), stop_rx.clone())
                .max_deep_traces(self.max_deep_traces),
        )
        .max_decoding_message_size(MAX_REQUEST_BYTES);
        limits::spawn_trimmer();
        let mut tasks: JoinSet<Result<()>> = JoinSet::new();
        if let Some(l) = self.grpc_tcp {
            let mut b = grpc_builder();
            if let Some(tls) = self.tls {
                b = b.tls_config(tls).context("TLS configuration")?;
            }
            let router = b
                .layer(CodesLayer)
                .layer(GuardLayer::new(self.tcp_policy))
                .add_service(svc.clone());
            let stop = stopped(stop_rx.clone());
            let conns = Slots::new(limits::MAX_CONNECTIONS, limits::MAX_CONNECTIONS_PER_PEER);
            tasks.spawn(async move {
                router
                    .serve_with_incoming_shutdown(limits::incoming(l, conns), stop)
                    .await
                    .context("gRPC over TCP")
            });
        }
        if let Some((l, path)) = self.unix {
            let router = grpc_builder().layer(CodesLayer).add_service(svc.clone());
            let stop = stopped(stop_rx.clone());
            // Its own budget: TCP clients cannot take the Unix socket's.
            let conns = Slots::new(limits::MAX_CONNECTIONS, limits::MAX_CONNECTIONS);
            tasks.spawn(async move {
                let r = router
                    .serve_with_incoming_shutdown(limits::incoming(l, conns), stop)
                    .await
                    .context("gRPC over the Unix socket");
                let _ = std::fs::remove_file(&path);
                r
            });
        }
        if let Some(l) = self.metrics {
            let app = http_router(hub, self.top_sites);
            let stop = stopped(stop_rx.clone());
            tasks.spawn(async move {
                axum::serve(l, app)
                    .with_graceful_shutdown(stop)
                    .await
                    .context("metrics HTTP server")
            });
        }
        let mut shutdown = std::pin::pin!(shutdown);
        let mut result = Ok(());
        let mut stopping = false;
        // Connections get this long to finish once stopping; then they are cut.
        let grace = tokio::time::sleep(Duration::from_secs(3600));
        let mut grace = std::pin::pin!(grace);
        loop {
            tokio::select! {
                () = &mut shutdown, if !stopping => {
                    stopping = true;
                    let _ = stop_tx.send(true);
                    grace.as_mut().reset(tokio::time::Instant::now() + SHUTDOWN_GRACE);
                }
                () = &mut grace, if stopping => {
                    tracing::warn!("endpoints did not stop within {SHUTDOWN_GRACE:?}; closing them");
                    tasks.abort_all();
                    while tasks.join_next().await.is_some() {}
                    break;
                }
                done = tasks.join_next() => match done {
                    None => break,
                    Some(r) => {
                        let r = r.context("server task panicked").and_then(|r| r);
                        if let Err(e) = r
                            && result.is_ok()
                        {
                            result = Err(e);
                        }
                        // One endpoint ended (failed, or stopped): stop the rest.
                        if !stopping {
                            stopping = true;
                            let _ = stop_tx.send(true);
                            grace.as_mut().reset(tokio::time::Instant::now() + SHUTDOWN_GRACE);
                        }
                    }
                }
            }
        }
        result
    }
}

/// Binds `opts` and serves `hub` until `shutdown` completes.
pub async fn serve(
    hub: Hub,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    bind(&opts).await?.serve(hub, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_addresses_need_consent() {
        let local: SocketAddr = "127.0.0.1:7000".parse().expect("addr");
        let any: SocketAddr = "0.0.0.0:7000".parse().expect("addr");
        let v6: SocketAddr = "[::1]:7000".parse().expect("addr");
        assert!(check_exposure("gRPC", local, false).is_ok());
        assert!(check_exposure("gRPC", v6, false).is_ok());
        let e = check_exposure("gRPC", any, false).expect_err("remote");
        assert!(e.to_string().contains("0.0.0.0:7000"), "{e}");
        assert!(check_exposure("gRPC", any, true).is_ok());
    }

    #[test]
    fn unauthenticated_tcp_is_read_only_or_refused() {
        let local: SocketAddr = "127.0.0.1:7070".parse().expect("addr");
        let any: SocketAddr = "0.0.0.0:7070".parse().expect("addr");
        let token = || Some(super::super::auth::Token::parse(&"t".repeat(32)).expect("token"));
        // (addr, token, client CA, --grpc-read-only, --grpc-insecure) -> read-only?
        for (addr, tok, ca, ro, insecure, want) in [
            (local, false, false, false, false, Some(true)),
            (local, false, false, false, true, Some(false)),
            (local, true, false, false, false, Some(false)),
            (local, true, false, true, false, Some(true)),
            (any, false, false, false, false, None),
            (any, false, false, true, false, None),
            (any, false, false, false, true, Some(false)),
            (any, true, false, false, false, Some(false)),
            (any, false, true, false, false, Some(false)),
            (any, false, true, true, false, Some(true)),
        ] {
            let got = tcp_policy(addr, tok.then(token).flatten(), ca, ro, insecure)
                .ok()
                .map(|p| p.read_only);
            assert_eq!(
                got, want,
                "{addr} token={tok} ca={ca} ro={ro} insecure={insecure}"
            );
        }
        let e = tcp_policy(any, None, false, false, false).expect_err("refused");
        assert!(e.to_string().contains("--grpc-token-file"), "{e}");
    }
}
