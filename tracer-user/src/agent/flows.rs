//! TCP attribution: the node-wide flows, read from the shared object, handed
//! to the processes they belong to; closed flows kept per process, bounded.

use super::core::Agent;
use super::sessions::Traced;
use crate::tcp::{
    TcpReport,
    flows::{FlowReport, RemoteRollup, rollup_by_listen_port, rollup_by_remote},
};

/// Closed flows kept per process for display; older ones count only in totals.
const MAX_CLOSED_FLOWS: usize = 64;

impl Agent {
    /// Every [`TCP_DRAIN`]: empties the kernel's closed-flow ring buffer;
    /// the flows wait in user space (bounded, see `MAX_KEPT_CLOSED`) for the
    /// next refresh.
    pub(super) fn drain_tcp(&mut self) {
        if let Some(tcp) = self.tcp.as_mut() {
            tcp.collect_closed();
        }
    }

    /// Flows of the node, grouped by pid, with each process's closed flows
    /// kept across refreshes.
    pub(super) fn collect_flows(&mut self) -> Option<TcpReport> {
        let tcp = self.tcp.as_mut()?;
        let report = match tcp.report(&mut self.shared) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("reading TCP flows: {e:#}");
                return None;
            }
        };
        // Closed flows now live in each process's bounded list.
        tcp.clear_closed();
        for f in report.flows.iter().filter(|f| !f.open) {
            if let Some(t) = self.traced.get_mut(&f.pid) {
                if t.closed_flows.len() == MAX_CLOSED_FLOWS
                    && let Some(old) = t.closed_flows.pop_front()
                {
                    t.closed_totals.add(&old);
                }
                t.closed_flows.push_back(f.clone());
            }
        }
        Some(report)
    }
}

/// Process `t`'s part of the node's flows: its open flows, its kept closed
/// ones, and rollups that still count the closed flows aged out of the list.
pub(super) fn process_flows(t: &Traced, node: &TcpReport) -> TcpReport {
    let pid = t.info.pid;
    let mut flows: Vec<FlowReport> = t.closed_flows.iter().cloned().collect();
    flows.extend(
        node.flows
            .iter()
            .filter(|f| f.pid == pid && f.open)
            .cloned(),
    );
    let mut by_remote = rollup_by_remote(&flows);
    // Flows aged out of the list still count, so totals never go back.
    if t.closed_totals.flows > 0 {
        by_remote.push(RemoteRollup {
            pid,
            comm: t.info.comm.clone(),
            remote_addr: None,
            remote_port: 0,
            totals: t.closed_totals.clone(),
        });
    }
    TcpReport {
        hooks: node.hooks.clone(),
        stats: node.stats.clone(),
        by_remote,
        by_listen_port: rollup_by_listen_port(&flows),
        flows,
    }
}
