//! `tracer top`: a live view of one or many agents over the tracer.v1 gRPC
//! API (docs/top.md). Layout:
//!
//! - [`source`]: per-agent gRPC tasks (Watch + Findings, reconnect, resume);
//! - [`model`]: proto snapshots → merged rows tagged with their node;
//! - [`filter`], [`table`]: filtering, columns and sorting (pure);
//! - [`app`]: interactive state and key handling (pure);
//! - [`ui`]: ratatui rendering; [`tui`]: terminal and event loop;
//! - [`plain`], [`oneshot`]: non-interactive tables and JSON.

pub mod app;
pub mod filter;
#[cfg(test)]
mod mock;
pub mod model;
pub mod oneshot;
pub mod plain;
pub mod source;
pub mod table;
pub mod tui;
pub mod ui;

use std::{io::IsTerminal, path::PathBuf, time::Duration};

use anyhow::{Context, Result, anyhow};

use self::{filter::Filter, source::Addr};

/// What `tracer top` was asked to do.
#[derive(Clone, Debug)]
pub struct TopOptions {
    /// Agents to watch; empty: start an embedded agent.
    pub connect: Vec<String>,
    /// Bearer token for TCP agents.
    pub token_file: Option<PathBuf>,
    /// Watch interval (clamped to the API's 100 ms .. 1 h).
    pub interval: Duration,
    /// Print one round of tables and exit.
    pub once: bool,
    /// Print JSON instead of tables (non-interactive).
    pub json: bool,
    /// Rounds to print (non-interactive); implies non-interactive.
    pub count: Option<u32>,
    /// Rows per section the agents send.
    pub top: u32,
    /// Initial filter, in the `/` prompt's syntax.
    pub filter: String,
}

/// The embedded agent's socket and whatever keeps the agent alive: an
/// agent in this process tracing every Go process of the machine.
pub async fn embedded_socket(
    interval: Duration,
) -> Result<(PathBuf, Box<dyn std::any::Any + Send>)> {
    use crate::{
        agent::core::{AgentOptions, Selector},
        commands::agent::{default_node_name, spawn_embedded},
        maps::MapsMode,
        session::OutputOptions,
    };
    let opts = AgentOptions {
        node: default_node_name(),
        // Fresher than the view, so a round never shows a snapshot a whole
        // interval old.
        refresh: (interval / 2).clamp(Duration::from_millis(200), Duration::from_secs(1)),
        select: Selector::default(),
        session: OutputOptions {
            live: false,
            interval,
            top: 20,
            json_report: None,
            stuck_threshold: Duration::from_secs(1),
            holders: false,
            bpf_stats: false,
            maps: MapsMode::Always,
            maps_sites: vec![],
            tcp: true,
            max_lock_rate: 5000,
        },
        max_processes: 256,
        pods: None,
    };
    let a = spawn_embedded(opts)
        .await
        .context("starting the embedded agent (or use --connect ADDR)")?;
    Ok((a.socket.clone(), Box::new(a)))
}

/// Runs `tracer top`.
pub async fn run(opts: TopOptions) -> Result<()> {
    let filter = Filter::parse(&opts.filter).map_err(|e| anyhow!("--filter: {e}"))?;
    let interval_ms = u32::try_from(opts.interval.as_millis())
        .unwrap_or(u32::MAX)
        .clamp(100, 3_600_000);
    let top = opts.top.clamp(1, 1000);
    if let Some(path) = &opts.token_file {
        source::set_token_file(path)?;
    }
    let mut _embedded = None;
    let addrs: Vec<Addr> = if opts.connect.is_empty() {
        let (socket, guard) = embedded_socket(opts.interval).await?;
        _embedded = Some(guard);
        vec![Addr::Unix(socket)]
    } else {
        opts.connect
            .iter()
            .map(|a| Addr::parse(a))
            .collect::<Result<_>>()?
    };
    let interactive =
        !(opts.once || opts.json || opts.count.is_some()) && std::io::stdout().is_terminal();
    if interactive {
        tui::run(addrs, filter, interval_ms, top).await
    } else {
        let rounds = opts.count.unwrap_or(1).max(1);
        oneshot::run(addrs, &filter, interval_ms, top, rounds, opts.json).await
    }
}
