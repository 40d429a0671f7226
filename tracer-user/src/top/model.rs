//! What `tracer top` shows, independent of how: proto snapshots from every
//! agent converted into plain rows (with the node each came from) and merged
//! into one [`MergedSnapshot`]. `--json` prints exactly this struct, so the
//! TUI, the plain tables and the JSON agree on every number.
//!
//! Over 600 lines with its unit tests (the code is about 530): they stay next
//! to the conversions they check.

use std::collections::BTreeMap;

use serde::Serialize;
use tracer_api::v1 as api;

/// One source file location.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SiteView {
    pub function: String,
    pub file: String,
    pub line: u32,
}

impl SiteView {
    fn from_proto(s: &api::Site) -> Self {
        Self {
            function: s.function.clone(),
            file: s.file.clone(),
            line: s.line,
        }
    }
}

impl std::fmt::Display for SiteView {
    /// `pkg.func file.go:42`, with only the file's base name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let base = self.file.rsplit('/').next().unwrap_or(&self.file);
        match (self.function.is_empty(), base.is_empty()) {
            (false, false) => write!(f, "{} {}:{}", self.function, base, self.line),
            (false, true) => write!(f, "{}", self.function),
            (true, false) => write!(f, "{}:{}", base, self.line),
            (true, true) => write!(f, "?"),
        }
    }
}

fn sites(v: &[api::Site]) -> Vec<SiteView> {
    v.iter().map(SiteView::from_proto).collect()
}

/// `count` samples in `[lo_ns, hi_ns)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct BucketView {
    pub lo_ns: u64,
    pub hi_ns: u64,
    pub count: u64,
}

fn buckets(v: &[api::Bucket]) -> Vec<BucketView> {
    v.iter()
        .map(|b| BucketView {
            lo_ns: b.lo_ns,
            hi_ns: b.hi_ns,
            count: b.count,
        })
        .collect()
}

/// Contended waits on one lock from one call site (`LockRow`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LockView {
    pub node: String,
    pub pid: u32,
    pub comm: String,
    pub pod: String,
    pub kind: String,
    pub address: String,
    pub name: String,
    pub site: Option<SiteView>,
    pub stack: Vec<SiteView>,
    pub contentions: u64,
    pub wait_ns_total: u64,
    pub wait_ns_p50: u64,
    pub wait_ns_p99: u64,
    pub wait_ns_max: u64,
    pub goroutines: u64,
    pub histogram: Vec<BucketView>,
    /// Since the agent's previous snapshot on this stream.
    pub delta_contentions: u64,
    pub delta_wait_ns: u64,
}

impl LockView {
    /// The lock's global name when known, else its address.
    pub fn lock(&self) -> &str {
        if self.name.is_empty() {
            &self.address
        } else {
            &self.name
        }
    }
}

/// One kind of operation on one map (deep tier).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MapOpView {
    pub kind: String,
    pub count: u64,
    pub ns_total: u64,
    pub ns_p50: u64,
    pub ns_p99: u64,
    pub ns_max: u64,
    pub goroutines: u64,
    pub top_sites: Vec<SiteView>,
}

/// One Go map (`MapRow`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MapView {
    pub node: String,
    pub pid: u32,
    pub comm: String,
    pub pod: String,
    pub address: String,
    pub ops: Vec<MapOpView>,
    /// Sum of `ops[].count`.
    pub total_ops: u64,
    pub growth_events: u64,
    pub count_at_last_growth: u64,
    pub growth_sites: Vec<SiteView>,
    pub delta_ops: u64,
    pub delta_growth_events: u64,
}

/// One `sync.Map` (`SyncMapRow`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SyncMapView {
    pub node: String,
    pub pid: u32,
    pub comm: String,
    pub pod: String,
    pub address: String,
    pub calls: BTreeMap<String, u64>,
    pub total: u64,
    pub read_share: Option<f64>,
    pub advice_kind: String,
    pub advice: String,
    pub delta_total: u64,
}

/// One TCP connection (`FlowRow`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FlowView {
    pub node: String,
    pub pid: u32,
    pub comm: String,
    pub pod: String,
    pub side: String,
    pub family: String,
    pub local: String,
    pub remote: String,
    pub state: String,
    pub open: bool,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub lifetime_ns: u64,
    pub connect_latency_ns: u64,
    /// Accept-queue wait of an accepted server flow; `None` otherwise.
    pub accept_wait_ns: Option<u64>,
    pub srtt_us: u64,
    pub retransmits: u64,
    pub resets_sent: u64,
    pub resets_received: u64,
    /// Smoothed-RTT samples; bounds are microseconds × 1000 (see the proto).
    pub rtt: Vec<BucketView>,
    pub delta_bytes_sent: u64,
    pub delta_bytes_received: u64,
}

/// One side of a racing pair of map operations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OpSideView {
    pub op: String,
    pub goroutine: u64,
    pub stack: Vec<SiteView>,
}

impl OpSideView {
    fn from_proto(o: &api::OpSide) -> Self {
        Self {
            op: o.op.clone(),
            goroutine: o.goroutine,
            stack: sites(&o.stack),
        }
    }
}

/// One finding (`FindingEvent`); `seq` is per agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FindingView {
    pub node: String,
    pub seq: u64,
    pub at_unix_ns: u64,
    pub pid: u32,
    pub comm: String,
    pub pod: String,
    pub kind: String,
    pub address: String,
    pub message: String,
    pub count: u64,
    pub op: Option<OpSideView>,
    pub other: Option<OpSideView>,
    pub stack: Vec<SiteView>,
    pub goroutine: u64,
    pub dropped_before: u64,
    pub age_ns: u64,
}

impl FindingView {
    /// The most telling code location: the op's top frame for races, else the
    /// finding's own stack.
    pub fn site(&self) -> Option<&SiteView> {
        self.op
            .as_ref()
            .and_then(|o| o.stack.first())
            .or_else(|| self.stack.first())
    }

    pub fn from_proto(f: &api::FindingEvent, node: &str) -> Self {
        Self {
            node: pick_node(&f.node, node),
            seq: f.seq,
            at_unix_ns: f.at_unix_ns,
            pid: f.pid,
            comm: f.comm.clone(),
            pod: f.pod.clone(),
            kind: f.kind.clone(),
            address: f.address.clone(),
            message: f.message.clone(),
            count: f.count,
            op: f.op.as_ref().map(OpSideView::from_proto),
            other: f.other.as_ref().map(OpSideView::from_proto),
            stack: sites(&f.stack),
            goroutine: f.goroutine,
            dropped_before: f.dropped_before,
            age_ns: f.age_ns,
        }
    }
}

/// One hook of an agent and the mechanism in use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HookView {
    pub feature: String,
    pub mechanism: String,
    pub status: String,
    pub reason: String,
}

/// An agent's own health (`AgentHealth`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HealthView {
    pub processes_traced: u32,
    pub processes_failed: u32,
    pub processes_missed: u64,
    pub events_lost: u64,
    pub map_evictions: u64,
    pub probe_hits: u64,
    pub bpf_run_time_ns: u64,
    pub rss_bytes: u64,
}

impl HealthView {
    fn from_proto(h: &api::AgentHealth) -> Self {
        Self {
            processes_traced: h.processes_traced,
            processes_failed: h.processes_failed,
            processes_missed: h.processes_missed,
            events_lost: h.events_lost,
            map_evictions: h.map_evictions,
            probe_hits: h.probe_hits,
            bpf_run_time_ns: h.bpf_run_time_ns,
            rss_bytes: h.rss_bytes,
        }
    }
}

/// Connection state of one agent, as `tracer top` sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ConnState {
    #[default]
    Connecting,
    Connected,
    /// The last attempt failed; the next one is due after a back-off.
    Retrying {
        error: String,
        attempt: u32,
    },
}

impl std::fmt::Display for ConnState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnState::Connecting => write!(f, "connecting"),
            ConnState::Connected => write!(f, "connected"),
            ConnState::Retrying { error, attempt } => {
                write!(f, "retrying (attempt {attempt}): {error}")
            }
        }
    }
}

/// One agent as shown in the status line and in `agents` of the JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AgentView {
    /// The address given to `--connect` (or the embedded agent's socket).
    pub addr: String,
    pub node: String,
    pub connection: ConnState,
    pub version: String,
    pub kernel: String,
    pub hooks: Vec<HookView>,
    pub health: HealthView,
    /// Snapshots the agent did not send because this client read too slowly.
    pub dropped: u64,
    /// Sequence number of the newest snapshot shown.
    pub snapshot_seq: u64,
    pub taken_unix_ns: u64,
    /// Time covered by the deltas of the snapshot shown.
    pub interval_ns: u64,
}

/// Everything `tracer top` shows at one instant, merged over all agents:
/// the `--json` output (one object per snapshot round). Rows carry the node
/// they came from; findings are the ones received so far, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MergedSnapshot {
    pub agents: Vec<AgentView>,
    pub locks: Vec<LockView>,
    pub maps: Vec<MapView>,
    pub sync_maps: Vec<SyncMapView>,
    pub flows: Vec<FlowView>,
    pub findings: Vec<FindingView>,
}

/// What `tracer top` holds per agent: the raw proto messages.
#[derive(Clone, Debug, Default)]
pub struct AgentSlot {
    pub addr: String,
    pub connection: ConnState,
    pub info: Option<api::InfoResponse>,
    /// The snapshot on screen (frozen while paused).
    pub shown: Option<api::Snapshot>,
    /// The newest snapshot received.
    pub latest: Option<api::Snapshot>,
    pub findings: Vec<FindingView>,
}

/// Findings kept per agent; older ones are forgotten.
pub const MAX_FINDINGS_PER_AGENT: usize = 2000;

impl AgentSlot {
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            ..Self::default()
        }
    }

    /// The node name: from the snapshot, else from Info, else the address.
    pub fn node(&self) -> String {
        let from_snap = self.shown.as_ref().map(|s| s.node.as_str()).unwrap_or("");
        let from_info = self.info.as_ref().map(|i| i.node.as_str()).unwrap_or("");
        pick_node(from_snap, &pick_node(from_info, &self.addr))
    }

    /// Adds a finding unless its sequence number was seen already (a resumed
    /// stream may repeat the last one). Returns whether it was new.
    pub fn add_finding(&mut self, f: &api::FindingEvent) -> bool {
        if self.findings.iter().rev().any(|x| x.seq == f.seq) {
            return false;
        }
        let node = self.node();
        self.findings.push(FindingView::from_proto(f, &node));
        self.findings.sort_by_key(|x| x.seq);
        if self.findings.len() > MAX_FINDINGS_PER_AGENT {
            let extra = self.findings.len() - MAX_FINDINGS_PER_AGENT;
            self.findings.drain(..extra);
        }
        true
    }

    /// The sequence number to resume the findings stream after.
    pub fn last_finding_seq(&self) -> u64 {
        self.findings.last().map_or(0, |f| f.seq)
    }
}

fn pick_node(row: &str, fallback: &str) -> String {
    if row.is_empty() { fallback } else { row }.to_string()
}

/// Merges the shown snapshot and findings of every agent into one view.
pub fn merge(agents: &[AgentSlot]) -> MergedSnapshot {
    let mut m = MergedSnapshot::default();
    for a in agents {
        let node = a.node();
        let mut view = AgentView {
            addr: a.addr.clone(),
            node: node.clone(),
            connection: a.connection.clone(),
            ..AgentView::default()
        };
        if let Some(info) = &a.info {
            view.version = info.version.clone();
            view.kernel = info.kernel.clone();
            view.hooks = info
                .hooks
                .iter()
                .map(|h| HookView {
                    feature: h.feature.clone(),
                    mechanism: h.mechanism.clone(),
                    status: h.status.clone(),
                    reason: h.reason.clone(),
                })
                .collect();
            if let Some(h) = &info.health {
                view.health = HealthView::from_proto(h);
            }
        }
        if let Some(s) = &a.shown {
            if let Some(h) = &s.health {
                view.health = HealthView::from_proto(h);
            }
            view.dropped = s.dropped;
            view.snapshot_seq = s.seq;
            view.taken_unix_ns = s.taken_unix_ns;
            view.interval_ns = s.interval_ns;
            add_rows(&mut m, s, &node);
        }
        m.findings.extend(a.findings.iter().cloned());
        m.agents.push(view);
    }
    m.findings.sort_by_key(|f| (f.at_unix_ns, f.seq));
    m
}

fn add_rows(m: &mut MergedSnapshot, s: &api::Snapshot, node: &str) {
    m.locks.extend(s.locks.iter().map(|r| LockView {
        node: pick_node(&r.node, node),
        pid: r.pid,
        comm: r.comm.clone(),
        pod: r.pod.clone(),
        kind: r.kind.clone(),
        address: r.address.clone(),
        name: r.name.clone(),
        site: r.site.as_ref().map(SiteView::from_proto),
        stack: sites(&r.stack),
        contentions: r.contentions,
        wait_ns_total: r.wait_ns_total,
        wait_ns_p50: r.wait_ns_p50,
        wait_ns_p99: r.wait_ns_p99,
        wait_ns_max: r.wait_ns_max,
        goroutines: r.goroutines,
        histogram: buckets(&r.histogram),
        delta_contentions: r.delta_contentions,
        delta_wait_ns: r.delta_wait_ns,
    }));
    m.maps.extend(s.maps.iter().map(|r| {
        let ops: Vec<MapOpView> = r
            .ops
            .iter()
            .map(|o| MapOpView {
                kind: o.kind.clone(),
                count: o.count,
                ns_total: o.ns_total,
                ns_p50: o.ns_p50,
                ns_p99: o.ns_p99,
                ns_max: o.ns_max,
                goroutines: o.goroutines,
                top_sites: sites(&o.top_sites),
            })
            .collect();
        MapView {
            node: pick_node(&r.node, node),
            pid: r.pid,
            comm: r.comm.clone(),
            pod: r.pod.clone(),
            address: r.address.clone(),
            total_ops: ops.iter().map(|o| o.count).fold(0, u64::saturating_add),
            ops,
            growth_events: r.growth_events,
            count_at_last_growth: r.count_at_last_growth,
            growth_sites: sites(&r.growth_sites),
            delta_ops: r.delta_ops,
            delta_growth_events: r.delta_growth_events,
        }
    }));
    m.sync_maps.extend(s.sync_maps.iter().map(|r| SyncMapView {
        node: pick_node(&r.node, node),
        pid: r.pid,
        comm: r.comm.clone(),
        pod: r.pod.clone(),
        address: r.address.clone(),
        calls: r.calls.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        total: r.total,
        read_share: r.read_share.filter(|v| v.is_finite()),
        advice_kind: r.advice_kind.clone(),
        advice: r.advice.clone(),
        delta_total: r.delta_total,
    }));
    m.flows.extend(s.flows.iter().map(|r| FlowView {
        node: pick_node(&r.node, node),
        pid: r.pid,
        comm: r.comm.clone(),
        pod: r.pod.clone(),
        side: r.side.clone(),
        family: r.family.clone(),
        local: r.local.clone(),
        remote: r.remote.clone(),
        state: r.state.clone(),
        open: r.open,
        bytes_sent: r.bytes_sent,
        bytes_received: r.bytes_received,
        lifetime_ns: r.lifetime_ns,
        connect_latency_ns: r.connect_latency_ns,
        accept_wait_ns: r.accept_wait_ns,
        srtt_us: r.srtt_us,
        retransmits: r.retransmits,
        resets_sent: r.resets_sent,
        resets_received: r.resets_received,
        rtt: buckets(&r.rtt),
        delta_bytes_sent: r.delta_bytes_sent,
        delta_bytes_received: r.delta_bytes_received,
    }));
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Synthetic proto snapshots for the model, table and render tests.
    use super::*;

    pub fn site(function: &str, line: u32) -> api::Site {
        api::Site {
            function: function.into(),
            file: "/src/app/main.go".into(),
            line,
        }
    }

    pub fn lock(pid: u32, comm: &str, name: &str, contentions: u64, total: u64) -> api::LockRow {
        api::LockRow {
            pid,
            comm: comm.into(),
            kind: "mutex".into(),
            address: format!("0x{:x}", 0xa000 + pid),
            name: name.into(),
            site: Some(site("main.lookup", 45)),
            stack: vec![site("main.lookup", 45), site("main.handler", 80)],
            contentions,
            wait_ns_total: total,
            wait_ns_max: total / 2,
            wait_ns_p50: total / contentions.max(1),
            wait_ns_p99: total / 3,
            goroutines: 4,
            histogram: vec![
                api::Bucket {
                    lo_ns: 1_000,
                    hi_ns: 2_000,
                    count: 10,
                },
                api::Bucket {
                    lo_ns: 2_000,
                    hi_ns: 4_000,
                    count: 40,
                },
            ],
            delta_contentions: contentions / 2,
            delta_wait_ns: total / 2,
            pod: "web-1".into(),
            ..Default::default()
        }
    }

    pub fn snapshot(node: &str, locks: Vec<api::LockRow>) -> api::Snapshot {
        api::Snapshot {
            seq: 3,
            taken_unix_ns: 1_700_000_000_000_000_000,
            interval_ns: 1_000_000_000,
            node: node.into(),
            locks,
            maps: vec![api::MapRow {
                pid: 10,
                comm: "svc".into(),
                address: "0xc000123".into(),
                ops: vec![api::MapOp {
                    kind: "write".into(),
                    count: 500,
                    ns_total: 9_000,
                    top_sites: vec![site("main.writer", 24)],
                    ..Default::default()
                }],
                growth_events: 7,
                count_at_last_growth: 4096,
                growth_sites: vec![site("main.grow", 71)],
                delta_ops: 20,
                ..Default::default()
            }],
            sync_maps: vec![api::SyncMapRow {
                pid: 10,
                comm: "svc".into(),
                address: "0xc000999".into(),
                calls: [("Load".to_string(), 90u64), ("Store".to_string(), 10u64)]
                    .into_iter()
                    .collect(),
                total: 100,
                read_share: Some(0.9),
                advice_kind: "fits".into(),
                advice: "read-mostly: sync.Map fits".into(),
                delta_total: 5,
                ..Default::default()
            }],
            flows: vec![api::FlowRow {
                pid: 10,
                comm: "svc".into(),
                side: "client".into(),
                family: "ipv4".into(),
                local: "127.0.0.1:40000".into(),
                remote: "10.0.0.7:5432".into(),
                state: "ESTABLISHED".into(),
                open: true,
                bytes_sent: 123_456,
                bytes_received: 654_321,
                srtt_us: 250,
                rtt: vec![api::Bucket {
                    lo_ns: 128_000,
                    hi_ns: 256_000,
                    count: 12,
                }],
                ..Default::default()
            }],
            health: Some(api::AgentHealth {
                processes_traced: 2,
                events_lost: 3,
                ..Default::default()
            }),
            dropped: 1,
            ..Default::default()
        }
    }

    pub fn race(seq: u64, pid: u32) -> api::FindingEvent {
        api::FindingEvent {
            seq,
            at_unix_ns: 1_700_000_000_000_000_000 + seq,
            pid,
            comm: "maps".into(),
            kind: "concurrent_map_write".into(),
            address: "0xc000abc".into(),
            count: 3,
            op: Some(api::OpSide {
                op: "write".into(),
                goroutine: 7,
                stack: vec![site("main.writer", 24)],
            }),
            other: Some(api::OpSide {
                op: "write".into(),
                goroutine: 8,
                stack: vec![site("main.writer", 24)],
            }),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fixtures::*, *};

    #[test]
    fn merge_tags_rows_with_their_node_and_keeps_every_agent() {
        let mut a = AgentSlot::new("10.0.0.1:7000");
        a.shown = Some(snapshot(
            "node-a",
            vec![lock(1, "api", "main.mu", 10, 5_000)],
        ));
        let mut b = AgentSlot::new("unix:/run/b.sock");
        b.shown = Some(snapshot("", vec![lock(2, "db", "", 4, 900)]));
        b.connection = ConnState::Retrying {
            error: "refused".into(),
            attempt: 2,
        };
        let m = merge(&[a, b]);
        assert_eq!(m.agents.len(), 2);
        assert_eq!(m.agents[0].node, "node-a");
        // No node name anywhere: the address stands in.
        assert_eq!(m.agents[1].node, "unix:/run/b.sock");
        assert_eq!(m.locks.len(), 2);
        assert_eq!(m.locks[0].node, "node-a");
        assert_eq!(m.locks[1].node, "unix:/run/b.sock");
        assert_eq!(m.locks[1].lock(), "0xa002", "address when unnamed");
        assert_eq!(m.maps.len(), 2);
        assert_eq!(m.maps[0].total_ops, 500);
        assert_eq!(m.agents[0].health.events_lost, 3);
        assert_eq!(m.agents[0].dropped, 1);
    }

    #[test]
    fn findings_are_deduplicated_by_seq_and_bounded() {
        let mut a = AgentSlot::new("x");
        assert!(a.add_finding(&race(5, 1)));
        assert!(!a.add_finding(&race(5, 1)), "a resumed stream repeats");
        assert!(a.add_finding(&race(3, 1)));
        assert_eq!(a.last_finding_seq(), 5);
        assert_eq!(
            a.findings.iter().map(|f| f.seq).collect::<Vec<_>>(),
            vec![3, 5]
        );
        for s in 10..(10 + MAX_FINDINGS_PER_AGENT as u64) {
            a.add_finding(&race(s, 1));
        }
        assert_eq!(a.findings.len(), MAX_FINDINGS_PER_AGENT);
        assert_eq!(a.findings[0].seq, 10, "oldest dropped");
    }

    #[test]
    fn site_display_uses_the_file_base_name() {
        let s = SiteView::from_proto(&site("main.lookup", 45));
        assert_eq!(s.to_string(), "main.lookup main.go:45");
    }
}
