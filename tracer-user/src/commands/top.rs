//! `tracer top`: live view of one or many agents (docs/top.md). Without
//! `--connect`, the view watches an agent embedded in this process, tracing
//! every Go process of the machine; the view itself only speaks gRPC.

use std::time::Duration;

use anyhow::{Context, Result};

pub use crate::top::TopOptions;
use crate::{
    agent::core::AgentOptions,
    commands::agent::{default_node_name, spawn_embedded},
    maps::MapsMode,
    options::TraceOptions,
    process::Selector,
    tcp::TcpOptions,
    top::{Addr, View},
};

/// Runs `tracer top`; `tcp` are the hook choices of an embedded agent.
pub async fn top(opts: TopOptions, tcp: TcpOptions) -> Result<()> {
    let view = View::new(&opts)?;
    if !opts.connect.is_empty() {
        let addrs = opts
            .connect
            .iter()
            .map(|a| Addr::parse(a))
            .collect::<Result<_>>()?;
        return view.run(addrs).await;
    }
    let agent = spawn_embedded(embedded_agent(opts.interval, tcp))
        .await
        .context("starting the embedded agent (or use --connect ADDR)")?;
    // The agent lives until the view ends.
    view.run(vec![Addr::Unix(agent.socket.clone())]).await
}

/// The embedded agent: the `agent` command's defaults, refreshed faster
/// than the view so a round never shows a snapshot a whole interval old.
fn embedded_agent(interval: Duration, tcp: TcpOptions) -> AgentOptions {
    AgentOptions {
        node: default_node_name(),
        refresh: (interval / 2).clamp(Duration::from_millis(200), Duration::from_secs(1)),
        select: Selector::default(),
        session: TraceOptions {
            stuck_threshold: Duration::from_secs(1),
            holders: false,
            bpf_stats: false,
            maps: MapsMode::Always,
            maps_sites: vec![],
            sync_funcs: vec![],
            race_budget: crate::maps::budget::DEFAULT_BUDGET,
            tcp: Some(tcp),
            max_lock_rate: 5000,
            mutex_exits: Default::default(),
        },
        max_processes: 256,
        pods: None,
    }
}
