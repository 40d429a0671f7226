//! Raw flags ([`super::args`]) resolved into what the commands take: a
//! [`TraceOptions`] (what to trace), an [`OutputOptions`] (how to show it),
//! the agent's front ends and the top view's choices.

use std::path::PathBuf;

use anyhow::Result;

use super::args::{AgentArgs, Cli, Export, Output, TopArgs};
use crate::{
    agent::core::AgentOptions,
    commands::{
        agent::{Frontends, default_node_name},
        top::TopOptions,
    },
    export::ExportOptions,
    maps::MapsMode,
    options::{OutputOptions, TraceOptions},
    process::Selector,
    tcp::{AcceptWait, RttMode, TcpOptions, hooks::parse_order},
};

/// The global `--tcp-*` flags, each checked here so a bad value fails before
/// anything starts; the error names the flag.
pub fn tcp_options(cli: &Cli) -> Result<TcpOptions, String> {
    Ok(TcpOptions {
        hook_order: parse_flag(&cli.tcp_hooks, "--tcp-hooks", parse_order)?,
        accept_wait: parse_flag(&cli.tcp_accept_wait, "--tcp-accept-wait", AcceptWait::parse)?,
        rtt: parse_flag(&cli.tcp_rtt, "--tcp-rtt", RttMode::parse)?,
        unhooked: Vec::new(),
    })
}

fn parse_flag<T, E: std::fmt::Display>(
    value: &Option<String>,
    flag: &str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Option<T>, String> {
    value
        .as_deref()
        .map(|v| parse(v).map_err(|e| format!("{flag}: {e}")))
        .transpose()
}

/// What `run`, `attach` and the agent's sessions trace; `maps` is the map
/// tier when `--maps` is not given.
pub fn trace_options(o: &Output, tcp: &TcpOptions, maps: MapsMode) -> TraceOptions {
    TraceOptions {
        stuck_threshold: o.stuck_threshold,
        holders: o.holders,
        bpf_stats: o.bpf_stats,
        maps: o.maps.unwrap_or(maps),
        maps_sites: o.maps_sites.clone(),
        sync_funcs: o.sync_funcs.clone(),
        race_budget: o.race_budget,
        tcp: (o.tcp == "on").then(|| tcp.clone()),
        max_lock_rate: o.max_lock_rate,
        mutex_exits: o.mutex_exits,
    }
}

/// How `run` and `attach` show it.
pub fn output_options(o: &Output) -> OutputOptions {
    OutputOptions {
        live: o.live,
        interval: o.interval,
        top: o.top,
        json_report: o.json_report.clone(),
    }
}

impl From<Export> for ExportOptions {
    fn from(e: Export) -> Self {
        Self {
            pprof: e.pprof,
            sarif: e.sarif,
            sarif_root: e.sarif_root,
            fail_on_findings: e.fail_on_findings,
        }
    }
}

impl From<TopArgs> for TopOptions {
    fn from(a: TopArgs) -> Self {
        Self {
            connect: a.connect,
            token_file: a.token_file,
            interval: a.interval,
            once: a.once,
            json: a.json,
            count: a.count,
            top: a.top,
            filter: a.filter,
        }
    }
}

/// `off` or an address.
fn listen_addr(s: &str) -> Result<Option<std::net::SocketAddr>> {
    if s == "off" {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|e| anyhow::anyhow!("bad listen address {s:?}: {e}"))
}

/// The agent's options, its front ends and its `--kube` choice.
pub fn agent_options(a: AgentArgs, tcp: &TcpOptions) -> Result<(AgentOptions, Frontends, String)> {
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
            Some(endpoint) => Some(crate::api::otlp::OtlpOptions {
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
        session: trace_options(&a.output, tcp, MapsMode::Budget),
        max_processes: a.max_processes,
        pods: None,
    };
    Ok((opts, fe, a.kube))
}
