//! `tracer top`: a live view of one or many agents over the tracer.v1 gRPC
//! API (docs/top.md). Layout:
//!
//! - [`source`]: per-agent gRPC tasks (Watch + Findings, reconnect, resume);
//! - [`model`]: proto snapshots → merged rows tagged with their node;
//! - [`filter`], [`table`]: filtering, columns and sorting (pure);
//! - [`app`]: interactive state and key handling (pure);
//! - [`ui`]: ratatui rendering; [`tui`]: terminal and event loop;
//! - [`plain`], [`oneshot`]: non-interactive tables and JSON.
//!
//! A pure gRPC client: without `--connect`, the `top` command
//! (`commands/top.rs`) starts an embedded agent and hands over its socket.

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

use anyhow::{Result, anyhow};

use self::filter::Filter;
pub use self::source::Addr;

/// What `tracer top` was asked to do.
#[derive(Clone, Debug)]
pub struct TopOptions {
    /// Agents to watch; empty: the `top` command starts an embedded agent.
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

/// A view ready to run: the checked filter and clamped request sizes.
pub struct View {
    filter: Filter,
    interval_ms: u32,
    top: u32,
    interactive: bool,
    rounds: u32,
    json: bool,
}

impl View {
    /// Checks `opts` (filter syntax, token file) before any agent is
    /// contacted or started.
    pub fn new(opts: &TopOptions) -> Result<Self> {
        let filter = Filter::parse(&opts.filter).map_err(|e| anyhow!("--filter: {e}"))?;
        let interval_ms = u32::try_from(opts.interval.as_millis())
            .unwrap_or(u32::MAX)
            .clamp(100, 3_600_000);
        let top = opts.top.clamp(1, 1000);
        if let Some(path) = &opts.token_file {
            source::set_token_file(path)?;
        }
        Ok(Self {
            filter,
            interval_ms,
            top,
            interactive: !(opts.once || opts.json || opts.count.is_some())
                && std::io::stdout().is_terminal(),
            rounds: opts.count.unwrap_or(1).max(1),
            json: opts.json,
        })
    }

    /// Watches `addrs` (see [`Addr::parse`]) until the user quits or the
    /// non-interactive rounds are printed.
    pub async fn run(self, addrs: Vec<Addr>) -> Result<()> {
        if self.interactive {
            tui::run(addrs, self.filter, self.interval_ms, self.top).await
        } else {
            oneshot::run(
                addrs,
                &self.filter,
                self.interval_ms,
                self.top,
                self.rounds,
                self.json,
            )
            .await
        }
    }
}
