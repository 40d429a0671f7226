//! Reading the TCP report of an in-process [`TcpTracing`], shared by the
//! TCP test binaries (`tcp.rs`, `tcp_loopback.rs`). A module of the test
//! files rather than of tests/src: it uses tracer-user's TCP types, which
//! the other test binaries need not build against.

use std::{
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tracer_user::{
    ebpf::Tracer,
    tcp::{FlowReport, TcpReport, TcpTracing},
};

/// Reports until every flow of `pid` with one of `ports` (either side) is
/// closed, or 5 s pass.
pub fn settled_report(
    tcp: &mut TcpTracing,
    tracer: &mut Tracer,
    pid: u32,
    ports: &[u16],
    want: usize,
) -> Result<TcpReport> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = tcp.report(tracer)?;
        let ours: Vec<&FlowReport> = r
            .flows
            .iter()
            .filter(|f| {
                f.pid == pid && (ports.contains(&f.local_port) || ports.contains(&f.remote_port))
            })
            .collect();
        if (ours.len() >= want && ours.iter().all(|f| !f.open)) || Instant::now() > deadline {
            return Ok(r);
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The flow of `pid` on `side` from port `local` to `remote`; fails listing
/// every flow when there is none.
pub fn find<'a>(
    r: &'a TcpReport,
    pid: u32,
    side: &str,
    local: u16,
    remote: u16,
) -> Result<&'a FlowReport> {
    r.flows
        .iter()
        .find(|f| {
            f.pid == pid && f.side == side && f.local_port == local && f.remote_port == remote
        })
        .with_context(|| {
            format!(
                "no {side} flow {local}->{remote} for pid {pid}; flows: {:#?}",
                r.flows
            )
        })
}
