//! The `tracer` command line.

use std::{ffi::OsString, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use tracer_user::{
    agent::core::{AgentOptions, Selector},
    commands::{
        self,
        agent::{Frontends, default_node_name},
    },
    duration,
    maps::MapsMode,
    session::OutputOptions,
};

#[derive(Parser)]
#[command(
    name = "tracer",
    version,
    about = "Zero-instrumentation eBPF tracer for Go services: lock contention, maps, TCP"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// TCP hook preference, per measurement the first that loads and attaches
    /// (default kprobe,fentry,raw_tracepoint,tracepoint; env TRACER_TCP_HOOKS).
    #[arg(long, global = true, value_name = "M,...")]
    tcp_hooks: Option<String>,
    /// Accept-queue waits: `auto` measures them where kprobes or fentry hook
    /// `inet_csk_accept`; `syscalls` also with the accept syscall tracepoints,
    /// which put every syscall of every process on the kernel's slow path;
    /// `off` (env TRACER_TCP_ACCEPT_WAIT).
    #[arg(long, global = true, value_name = "auto|syscalls|off")]
    tcp_accept_wait: Option<String>,
    /// Smoothed-RTT samples: `calls` reads the socket's RTT every 16
    /// send/recv calls of a flow and at its close (default); `segments`
    /// hooks every received segment, at one more program run per segment
    /// (env TRACER_TCP_RTT).
    #[arg(long, global = true, value_name = "calls|segments")]
    tcp_rtt: Option<String>,
}

#[derive(Args, Clone)]
struct Output {
    /// Write the full report as JSON to PATH (schema: docs/json-report.md).
    #[arg(long, value_name = "PATH")]
    json_report: Option<PathBuf>,
    /// Refresh the contention table on stderr while tracing.
    #[arg(long)]
    live: bool,
    /// Refresh interval for --live.
    #[arg(long, default_value = "1s", value_parser = duration::parse)]
    interval: Duration,
    /// Rows shown in tables.
    #[arg(long, default_value_t = 20)]
    top: usize,
    /// Report a lock wait still in progress after this long as a `stuck_lock_wait` finding.
    #[arg(long, default_value = "1s", value_parser = duration::parse)]
    stuck_threshold: Duration,
    /// Also probe the unlock slow paths, to show which code held contended locks
    /// (one more uprobe hit per contended unlock).
    #[arg(long)]
    holders: bool,
    /// Measure each probe's run count and kernel run time (BPF_ENABLE_STATS);
    /// reported in the JSON report under `bpf_stats`.
    #[arg(long)]
    bpf_stats: bool,
    /// Map concurrency checks: `off`; `always` (default: runtime fatal errors
    /// such as "concurrent map writes" and map growth, rare events only); or
    /// `deep` (every map operation, two probe hits each: finds overlapping
    /// accesses before the runtime crashes, at a large cost; see docs/maps.md).
    #[arg(long, default_value = "always", value_name = "off|always|deep")]
    maps: MapsMode,
    /// With `--maps deep`: probe the map operations called from these
    /// packages only (comma-separated import paths, e.g. `main`), at their
    /// call sites, instead of every caller of the runtime's map functions.
    #[arg(long, value_name = "PKG,...", value_delimiter = ',')]
    maps_sites: Vec<String>,
    /// Pause the lock probes for 5 s whenever contended waits exceed this many
    /// per second (each costs two uprobe traps in the traced program); 0: never.
    #[arg(long, default_value_t = 5000)]
    max_lock_rate: u64,
    /// Trace the process's TCP flows (kprobes, fentry or tracepoints): on or off.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    tcp: String,
}

impl From<Output> for OutputOptions {
    fn from(o: Output) -> Self {
        OutputOptions {
            live: o.live,
            interval: o.interval,
            top: o.top,
            json_report: o.json_report,
            stuck_threshold: o.stuck_threshold,
            holders: o.holders,
            bpf_stats: o.bpf_stats,
            maps: o.maps,
            maps_sites: o.maps_sites,
            tcp: o.tcp == "on",
            max_lock_rate: o.max_lock_rate,
        }
    }
}

/// Files written when `run`/`attach` ends (docs/export.md).
#[derive(Args, Clone)]
struct Export {
    /// Write pprof profiles to DIR: `<pid>-block.pb.gz` (waiter stacks,
    /// contentions and delay), `<pid>-mutex.pb.gz` (unlocker stacks, with
    /// --holders) and `<pid>-maps.pb.gz` (map operations, with --maps deep).
    #[arg(long, value_name = "DIR")]
    pprof: Option<PathBuf>,
    /// Write the findings as SARIF 2.1.0 to PATH.
    #[arg(long, value_name = "PATH")]
    sarif: Option<PathBuf>,
    /// Exit with code 3 when anything was found (map races or fatals, stuck
    /// lock waits) and the program itself exited 0; a failing program keeps
    /// its own exit code.
    #[arg(long)]
    fail_on_findings: bool,
}

impl From<Export> for tracer_user::export::ExportOptions {
    fn from(e: Export) -> Self {
        Self {
            pprof: e.pprof,
            sarif: e.sarif,
            fail_on_findings: e.fail_on_findings,
        }
    }
}

#[derive(Args, Clone)]
struct AgentArgs {
    /// gRPC on TCP, off by default (the Unix socket is the local endpoint).
    /// Beyond loopback it needs --grpc-token-file or --tls-client-ca (or
    /// --grpc-insecure); on loopback without either it is read-only.
    #[arg(long, default_value = "off", value_name = "ADDR|off")]
    grpc_listen: String,
    /// TCP clients must send this token (`authorization: Bearer TOKEN`;
    /// one line, 16+ visible ASCII characters; `tracer top --token-file`).
    #[arg(long, value_name = "PATH")]
    grpc_token_file: Option<PathBuf>,
    /// TCP clients may only read (Info, ListProcesses, Watch, Findings);
    /// StartDeepMapTrace and StopDeepMapTrace get PERMISSION_DENIED.
    #[arg(long)]
    grpc_read_only: bool,
    /// Serve TCP without a token or client certificates, with full access,
    /// also beyond loopback.
    #[arg(long)]
    grpc_insecure: bool,
    /// Deep map traces running at once on the node (StartDeepMapTrace beyond
    /// it: RESOURCE_EXHAUSTED).
    #[arg(long, default_value_t = 2)]
    max_deep_traces: usize,
    /// gRPC on a Unix socket (mode 0600, full access). `off` disables.
    #[arg(
        long,
        default_value = "/run/tracer/tracer.sock",
        value_name = "PATH|off"
    )]
    unix_socket: String,
    /// Prometheus `/metrics`, `/healthz` and `/readyz`. `off` disables.
    #[arg(long, default_value = "127.0.0.1:9464", value_name = "ADDR|off")]
    metrics_listen: String,
    /// Serve gRPC over TLS with this certificate chain (PEM)...
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// ...and this private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Node name in every snapshot (default: $NODE_NAME, else the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// How often the agent rebuilds its snapshot.
    #[arg(long, default_value = "1s", value_parser = duration::parse)]
    refresh: Duration,
    /// Trace only these pids (default: every Go process).
    #[arg(long, value_delimiter = ',')]
    pid: Vec<u32>,
    /// Trace only processes with these names.
    #[arg(long, value_delimiter = ',')]
    comm: Vec<String>,
    /// Trace only executables whose path contains one of these.
    #[arg(long, value_delimiter = ',')]
    exe: Vec<String>,
    /// Trace only these containers (id or a prefix of 12+ characters).
    #[arg(long, value_delimiter = ',')]
    container: Vec<String>,
    /// Trace only these pods (name or UID).
    #[arg(long, value_delimiter = ',')]
    pod: Vec<String>,
    /// Trace only pods in these Kubernetes namespaces.
    #[arg(long, value_delimiter = ',')]
    namespace: Vec<String>,
    /// Pod names from the Kubernetes API: `auto` (when KUBERNETES_SERVICE_HOST
    /// or KUBECONFIG is set), `on` (fail without a cluster) or `off`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    kube: String,
    /// Most processes traced at once.
    #[arg(long, default_value_t = 256)]
    max_processes: usize,
    /// Sites kept as Prometheus label values; the rest are summed as `other`.
    #[arg(long, default_value_t = 50)]
    metrics_top_sites: usize,
    /// Push the `/metrics` families to an OpenTelemetry collector, e.g.
    /// `http://127.0.0.1:4317` (grpc) or `http://127.0.0.1:4318` (http; path
    /// `/v1/metrics` by default). Plaintext only.
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// OTLP transport: `grpc` or `http` (HTTP/protobuf).
    #[arg(long, default_value = "grpc", value_parser = ["grpc", "http"])]
    otlp_protocol: String,
    /// How often to push; also the per-request timeout.
    #[arg(long, default_value = "15s", value_parser = duration::parse)]
    otlp_interval: Duration,
    /// Per-process tracing choices; `--json-report PATH` writes the last
    /// snapshot and every finding on exit.
    #[command(flatten)]
    output: Output,
}

/// `off` or an address.
fn listen_addr(s: &str) -> anyhow::Result<Option<std::net::SocketAddr>> {
    if s == "off" {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|e| anyhow::anyhow!("bad listen address {s:?}: {e}"))
}

fn agent_command(a: AgentArgs) -> anyhow::Result<(AgentOptions, Frontends, String)> {
    let node = a.node_name.clone().unwrap_or_else(default_node_name);
    let fe = Frontends {
        grpc_tcp: listen_addr(&a.grpc_listen)?,
        unix_socket: (a.unix_socket != "off").then(|| PathBuf::from(&a.unix_socket)),
        metrics: listen_addr(&a.metrics_listen)?,
        tls_cert: a.tls_cert,
        tls_key: a.tls_key,
        tls_client_ca: a.tls_client_ca,
        grpc_token_file: a.grpc_token_file,
        grpc_read_only: a.grpc_read_only,
        grpc_insecure: a.grpc_insecure,
        max_deep_traces: a.max_deep_traces,
        metrics_top_sites: a.metrics_top_sites,
        json_report: a.output.json_report.clone(),
        otlp: match &a.otlp_endpoint {
            Some(endpoint) => Some(tracer_user::api::otlp::OtlpOptions {
                endpoint: endpoint.clone(),
                protocol: a.otlp_protocol.parse()?,
                interval: a.otlp_interval,
                timeout: a.otlp_interval,
                top_sites: a.metrics_top_sites,
            }),
            None => None,
        },
    };
    let opts = AgentOptions {
        node,
        refresh: a.refresh,
        select: Selector {
            pids: a.pid,
            comms: a.comm,
            exes: a.exe,
            containers: a.container,
            pods: a.pod,
            namespaces: a.namespace,
        },
        session: a.output.into(),
        max_processes: a.max_processes,
        pods: None,
    };
    Ok((opts, fe, a.kube))
}

#[derive(Subcommand)]
enum Command {
    /// Start PROGRAM with probes in place, trace it until it exits, then report.
    /// Exits with the program's exit code (3 with --fail-on-findings when the
    /// program exited 0 and something was found).
    Run {
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        export: Export,
        /// The Go program to run.
        program: PathBuf,
        /// Its arguments (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Trace a running Go process, then report.
    Attach {
        #[arg(long)]
        pid: u32,
        /// Stop after this long (default: until the process exits or Ctrl-C).
        #[arg(long, value_parser = duration::parse)]
        duration: Option<Duration>,
        #[command(flatten)]
        output: Output,
        #[command(flatten)]
        export: Export,
    },
    /// Trace every Go process on this node until SIGTERM, serving the
    /// tracer.v1 gRPC API and Prometheus metrics (docs/grpc.md).
    Agent(Box<AgentArgs>),
    /// Show what tracer finds in a Go binary: version, probe targets, offsets;
    /// or, with --kernel, which TCP hooks this kernel takes and why.
    Inspect {
        /// Path of the binary.
        #[arg(required_unless_present_any = ["pid", "kernel"])]
        binary: Option<PathBuf>,
        /// Inspect the running kernel: release, BTF, kprobes, and per TCP
        /// measurement the hook chosen and why the others were rejected.
        #[arg(long, conflicts_with_all = ["binary", "pid"])]
        kernel: bool,
        /// Inspect the binary of a running process instead.
        #[arg(long, conflicts_with = "binary")]
        pid: Option<u32>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Live view of agents: locks, maps, sync.Map, TCP and findings (docs/top.md).
    Top(TopArgs),
}

#[derive(Args)]
struct TopArgs {
    /// Agents to watch: host:port, http://host:port or unix:/path, comma-separated
    /// (default: an embedded agent on this node).
    #[arg(long, value_name = "ADDR[,ADDR...]", value_delimiter = ',')]
    connect: Vec<String>,
    /// Send this bearer token to TCP agents (their --grpc-token-file).
    #[arg(long, value_name = "PATH", requires = "connect")]
    token_file: Option<PathBuf>,
    /// Refresh interval (+/- change it live).
    #[arg(long, default_value = "1s", value_parser = duration::parse)]
    interval: Duration,
    /// Print one round of tables after --interval and exit (also when stdout is not a terminal).
    #[arg(long)]
    once: bool,
    /// Print each round as one line of JSON (docs/top.md) instead of tables.
    #[arg(long)]
    json: bool,
    /// Print N rounds, one per --interval, then exit.
    #[arg(long, value_name = "N")]
    count: Option<u32>,
    /// Rows per section the agents send (1..1000).
    #[arg(long, default_value_t = 200)]
    top: u32,
    /// Initial filter: `pid=N comm=NAME pod=NAME node=NAME` or words (as with `/`).
    #[arg(long, default_value = "")]
    filter: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The full-screen view owns the terminal: its embedded agent's log lines
    // would scribble over it, so they are off unless TRACER_LOG asks.
    // The agent is a daemon: its log is the only sign of life an operator
    // has (what it listens on, that it is ready, what it traces), so it logs
    // at info by default.
    let default_log = match &cli.command {
        Command::Top(_) => "off",
        Command::Agent(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TRACER_LOG")
                .unwrap_or_else(|_| default_log.into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in a log file
        // or `kubectl logs`.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let flags = apply_flag(
        &cli.tcp_hooks,
        "--tcp-hooks",
        tracer_user::tcp::hooks::parse_order,
        tracer_user::tcp::set_hook_order,
    )
    .and_then(|()| {
        apply_flag(
            &cli.tcp_accept_wait,
            "--tcp-accept-wait",
            tracer_user::tcp::AcceptWait::parse,
            tracer_user::tcp::set_accept_wait,
        )
    })
    .and_then(|()| {
        apply_flag(
            &cli.tcp_rtt,
            "--tcp-rtt",
            tracer_user::tcp::RttMode::parse,
            tracer_user::tcp::set_rtt_mode,
        )
    });
    if let Err(e) = flags {
        eprintln!("tracer: error: {e}");
        return ExitCode::from(2);
    }
    if matches!(cli.command, Command::Agent(_)) {
        // A long-running daemon with many short-lived blocking threads:
        // glibc would give each its own 64 MiB heap arena and keep what they
        // freed. Two arenas hold the agent's whole working set.
        #[cfg(target_env = "gnu")]
        // SAFETY: mallopt before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tracer: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Run {
                output,
                export,
                program,
                args,
            } => commands::run::run(&program, &args, &output.into(), &export.into()).await,
            Command::Attach {
                pid,
                duration,
                output,
                export,
            } => commands::attach::attach(pid, duration, &output.into(), &export.into()).await,
            Command::Agent(a) => match agent_command(*a) {
                Ok((mut opts, fe, kube)) => {
                    match commands::agent::pod_index(&kube, &opts.node).await {
                        Ok(p) => {
                            opts.pods = p;
                            commands::agent::agent(opts, fe).await.map(|()| 0)
                        }
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            },
            Command::Inspect {
                kernel: true, json, ..
            } => commands::inspect::inspect_kernel(json).map(|()| 0),
            Command::Inspect {
                binary, pid, json, ..
            } => commands::inspect::inspect(binary.as_deref(), pid, json).map(|()| 0),
            Command::Top(a) => commands::top::top(commands::top::TopOptions {
                connect: a.connect,
                token_file: a.token_file,
                interval: a.interval,
                once: a.once,
                json: a.json,
                count: a.count,
                top: a.top,
                filter: a.filter,
            })
            .await
            .map(|()| 0),
        }
    });
    match result {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("tracer: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Parses a process-wide option given as `flag` and sets it; the error
/// names the flag.
fn apply_flag<T, E: std::fmt::Display>(
    value: &Option<String>,
    flag: &str,
    parse: impl Fn(&str) -> Result<T, E>,
    set: impl FnOnce(T),
) -> Result<(), String> {
    if let Some(v) = value {
        set(parse(v).map_err(|e| format!("{flag}: {e}"))?);
    }
    Ok(())
}
