//! The command line as clap sees it: every flag, its help text and its
//! default. Nothing here acts on a flag; [`super::resolve`] turns the raw
//! values into the options the commands take. The help text is the user
//! interface: `tracer --help` output is compared byte for byte in review.

use std::{ffi::OsString, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{duration, locks::MutexExits, maps::MapsMode};

#[derive(Parser)]
#[command(
    name = "tracer",
    version,
    about = "Zero-instrumentation eBPF tracer for Go services: lock contention, maps, TCP"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// TCP hook preference, per measurement the first that loads and attaches
    /// (default kprobe,fentry,raw_tracepoint,tracepoint; env TRACER_TCP_HOOKS).
    #[arg(long, global = true, value_name = "M,...")]
    pub tcp_hooks: Option<String>,
    /// Accept-queue waits: `auto` measures them where kprobes or fentry hook
    /// `inet_csk_accept`; `syscalls` also with the accept syscall tracepoints,
    /// which put every syscall of every process on the kernel's slow path;
    /// `off` (env TRACER_TCP_ACCEPT_WAIT).
    #[arg(long, global = true, value_name = "auto|syscalls|off")]
    pub tcp_accept_wait: Option<String>,
    /// Smoothed-RTT samples: `calls` reads the socket's RTT every 16
    /// send/recv calls of a flow and at its close (default); `segments`
    /// hooks every received segment, at one more program run per segment
    /// (env TRACER_TCP_RTT).
    #[arg(long, global = true, value_name = "calls|segments")]
    pub tcp_rtt: Option<String>,
}

#[derive(Args, Clone)]
pub struct Output {
    /// Write the full report as JSON to PATH (schema: docs/json-report.md).
    #[arg(long, value_name = "PATH")]
    pub json_report: Option<PathBuf>,
    /// Refresh the contention table on stderr while tracing.
    #[arg(long)]
    pub live: bool,
    /// Refresh interval for --live.
    #[arg(long, default_value = "1s", value_parser = duration::parse)]
    pub interval: Duration,
    /// Rows shown in tables.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Report a lock wait still in progress after this long as a `stuck_lock_wait` finding.
    #[arg(long, default_value = "1s", value_parser = duration::parse)]
    pub stuck_threshold: Duration,
    /// Also probe the unlock slow paths, to show which code held contended locks
    /// (one more uprobe hit per contended unlock).
    #[arg(long)]
    pub holders: bool,
    /// Measure each probe's run count and kernel run time (BPF_ENABLE_STATS);
    /// reported in the JSON report under `bpf_stats`.
    #[arg(long)]
    pub bpf_stats: bool,
    /// Map concurrency checks: `off`; `always` (runtime fatal errors such as
    /// "concurrent map writes" and map growth, rare events only); `budget`
    /// (the default: always, plus the map call sites of the program's own code probed within --race-budget,
    /// finding accesses that overlap at a bounded cost); or `deep` (every map
    /// operation, two probe hits each, and the happens-before detector, at a
    /// large cost; see docs/maps.md).
    #[arg(long, value_name = "off|always|budget|deep")]
    pub maps: Option<MapsMode>,
    /// With `--maps budget`: the share of the traced process's CPU the map
    /// probes may cost, in percent (`1%` or `1`).
    #[arg(long, default_value = "1%", value_parser = parse_percent)]
    pub race_budget: f64,
    /// With `--maps deep`: probe the map operations called from these
    /// packages only (comma-separated import paths, e.g. `main`), at their
    /// call sites, instead of every caller of the runtime's map functions.
    #[arg(long, value_name = "PKG,...", value_delimiter = ',')]
    pub maps_sites: Vec<String>,
    /// With `--maps deep`: Go functions (full names, e.g.
    /// `main.(*ring).publish`) the happens-before detector treats as
    /// synchronisation, for what its probes cannot see (raw sync/atomic
    /// calls, assembly, cgo): a call of any of them is ordered after every
    /// earlier call of any.
    #[arg(long, value_name = "FUNC,...", value_delimiter = ',')]
    pub sync_funcs: Vec<String>,
    /// Pause the lock probes for 5 s whenever contended waits exceed this many
    /// per second (each costs two uprobe traps in the traced program); 0: never.
    #[arg(long, default_value_t = 5000)]
    pub max_lock_rate: u64,
    /// Where sync.Mutex waits are closed: `wakeup` (default: where the woken
    /// waiter does not own the lock yet, decoded from the binary; no probe in
    /// the critical section) or `ret` (on the slow path's RETs, one trap
    /// inside each contended critical section; for comparison).
    #[arg(long, value_enum, default_value_t = MutexExits::Wakeup)]
    pub mutex_exits: MutexExits,
    /// Trace the process's TCP flows (kprobes, fentry or tracepoints): on or off.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    pub tcp: String,
}

/// Files written when `run`/`attach` ends (docs/export.md).
#[derive(Args, Clone)]
pub struct Export {
    /// Write pprof profiles to DIR: `<pid>-block.pb.gz` (waiter stacks,
    /// contentions and delay), `<pid>-mutex.pb.gz` (unlocker stacks, with
    /// --holders) and `<pid>-maps.pb.gz` (map operations, with --maps deep).
    #[arg(long, value_name = "DIR")]
    pub pprof: Option<PathBuf>,
    /// Write the findings as SARIF 2.1.0 to PATH.
    #[arg(long, value_name = "PATH")]
    pub sarif: Option<PathBuf>,
    /// SARIF gives source files under DIR relative to it (uriBaseId
    /// SRCROOT), as code-scanning UIs want; others stay absolute. Default:
    /// the current directory.
    #[arg(long, value_name = "DIR", requires = "sarif")]
    pub sarif_root: Option<PathBuf>,
    /// Exit with code 3 when anything was found (map races or fatals, stuck
    /// lock waits) and the program itself exited 0; a failing program keeps
    /// its own exit code.
    #[arg(long)]
    pub fail_on_findings: bool,
}

#[derive(Args, Clone)]
pub struct AgentArgs {
    /// gRPC on TCP, off by default (the Unix socket is the local endpoint).
    /// Beyond loopback it needs --grpc-token-file or --tls-client-ca (or
    /// --grpc-insecure); on loopback without either it is read-only.
    #[arg(long, default_value = "off", value_name = "ADDR|off")]
    pub grpc_listen: String,
    /// TCP clients must send this token (`authorization: Bearer TOKEN`;
    /// one line, 16+ visible ASCII characters; `tracer top --token-file`).
    #[arg(long, value_name = "PATH")]
    pub grpc_token_file: Option<PathBuf>,
    /// TCP clients may only read (Info, ListProcesses, Watch, Findings);
    /// StartDeepMapTrace and StopDeepMapTrace get PERMISSION_DENIED.
    #[arg(long)]
    pub grpc_read_only: bool,
    /// Serve TCP without a token or client certificates, with full access,
    /// also beyond loopback.
    #[arg(long)]
    pub grpc_insecure: bool,
    /// Deep map traces running at once on the node (StartDeepMapTrace beyond
    /// it: RESOURCE_EXHAUSTED).
    #[arg(long, default_value_t = 2)]
    pub max_deep_traces: usize,
    /// gRPC on a Unix socket (mode 0600, full access). `off` disables.
    #[arg(
        long,
        default_value = "/run/tracer/tracer.sock",
        value_name = "PATH|off"
    )]
    pub unix_socket: String,
    /// Prometheus `/metrics`, `/healthz` and `/readyz`. `off` disables.
    #[arg(long, default_value = "127.0.0.1:9464", value_name = "ADDR|off")]
    pub metrics_listen: String,
    /// Serve gRPC over TLS with this certificate chain (PEM)...
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// ...and this private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Node name in every snapshot (default: $NODE_NAME, else the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// How often the agent rebuilds its snapshot.
    #[arg(long, default_value = "1s", value_parser = duration::parse)]
    pub refresh: Duration,
    /// Trace only these pids (default: every Go process).
    #[arg(long, value_delimiter = ',')]
    pub pid: Vec<u32>,
    /// Trace only processes with these names.
    #[arg(long, value_delimiter = ',')]
    pub comm: Vec<String>,
    /// Trace only executables whose path contains one of these.
    #[arg(long, value_delimiter = ',')]
    pub exe: Vec<String>,
    /// Trace only these containers (id or a prefix of 12+ characters).
    #[arg(long, value_delimiter = ',')]
    pub container: Vec<String>,
    /// Trace only these pods (name or UID).
    #[arg(long, value_delimiter = ',')]
    pub pod: Vec<String>,
    /// Trace only pods in these Kubernetes namespaces.
    #[arg(long, value_delimiter = ',')]
    pub namespace: Vec<String>,
    /// Pod names from the Kubernetes API: `auto` (when KUBERNETES_SERVICE_HOST
    /// or KUBECONFIG is set), `on` (fail without a cluster) or `off`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "on", "off"])]
    pub kube: String,
    /// Most processes traced at once.
    #[arg(long, default_value_t = 256)]
    pub max_processes: usize,
    /// Sites kept as Prometheus label values; the rest are summed as `other`.
    #[arg(long, default_value_t = 50)]
    pub metrics_top_sites: usize,
    /// Push the `/metrics` families to an OpenTelemetry collector, e.g.
    /// `http://127.0.0.1:4317` (grpc) or `http://127.0.0.1:4318` (http; path
    /// `/v1/metrics` by default). Plaintext only.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport: `grpc` or `http` (HTTP/protobuf).
    #[arg(long, default_value = "grpc", value_parser = ["grpc", "http"])]
    pub otlp_protocol: String,
    /// How often to push; also the per-request timeout.
    #[arg(long, default_value = "15s", value_parser = duration::parse)]
    pub otlp_interval: Duration,
    /// Per-process tracing choices; `--json-report PATH` writes the last
    /// snapshot and every finding on exit.
    #[command(flatten)]
    pub output: Output,
}

#[derive(Subcommand)]
pub enum Command {
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
pub struct TopArgs {
    /// Agents to watch: host:port, http://host:port or unix:/path, comma-separated
    /// (default: an embedded agent on this node).
    #[arg(long, value_name = "ADDR[,ADDR...]", value_delimiter = ',')]
    pub connect: Vec<String>,
    /// Send this bearer token to TCP agents (their --grpc-token-file).
    #[arg(long, value_name = "PATH", requires = "connect")]
    pub token_file: Option<PathBuf>,
    /// Refresh interval (+/- change it live).
    #[arg(long, default_value = "1s", value_parser = duration::parse)]
    pub interval: Duration,
    /// Print one round of tables after --interval and exit (also when stdout is not a terminal).
    #[arg(long)]
    pub once: bool,
    /// Print each round as one line of JSON (docs/top.md) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Print N rounds, one per --interval, then exit.
    #[arg(long, value_name = "N")]
    pub count: Option<u32>,
    /// Rows per section the agents send (1..1000).
    #[arg(long, default_value_t = 200)]
    pub top: u32,
    /// Initial filter: `pid=N comm=NAME pod=NAME node=NAME` or words (as with `/`).
    #[arg(long, default_value = "")]
    pub filter: String,
}

/// `1%`, `0.5` (percent) into a fraction, within (0, 50 %].
fn parse_percent(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .trim()
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?} is not a percentage (e.g. 1%)"))?;
    if !(v > 0.0 && v <= 50.0) {
        return Err(format!(
            "{s:?}: the budget must be above 0% and at most 50%"
        ));
    }
    Ok(v / 100.0)
}
