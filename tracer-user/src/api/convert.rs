//! The agent's report types turned into `tracer.v1` messages.
//!
//! Rows carry their process's labels (comm, pod, container, node) because a
//! client that shows one row must not have to join it with the process list.
//! Each row comes with a stable key so Watch can compute deltas against the
//! previous snapshot a stream sent.

use std::collections::HashMap;

use tracer_api::v1 as pb;

use crate::{
    agent::hub::{AgentInfo, FindingRecord, Health, Labels, NodeSnapshot, ProcState, ProcessInfo},
    ebpf::ProbeStatus,
    latency::Bucket,
    maps::{MapFinding, MapReport, report::OpSideReport, syncmap::SyncMapReport},
    report::{AnyFinding, LockReport, Report},
    symbols::Site,
    tcp::FlowReport,
};

pub fn site(s: &Site) -> pb::Site {
    pb::Site {
        function: s.function.clone(),
        file: s.file.clone(),
        line: s.line,
    }
}

fn sites(v: &[Site]) -> Vec<pb::Site> {
    v.iter().map(site).collect()
}

fn bucket(b: &Bucket) -> pb::Bucket {
    pb::Bucket {
        lo_ns: b.lo_ns,
        hi_ns: b.hi_ns,
        count: b.count,
    }
}

pub fn probe(p: &ProbeStatus) -> pb::ProbeStatus {
    pb::ProbeStatus {
        feature: p.feature.clone(),
        function: p.function.clone().unwrap_or_default(),
        status: p.status.to_string(),
        reason: p.reason.clone().unwrap_or_default(),
    }
}

pub fn health(h: &Health) -> pb::AgentHealth {
    pb::AgentHealth {
        processes_traced: h.processes_traced,
        events_lost: h.events_lost,
        map_evictions: h.map_evictions,
        probe_hits: h.probe_hits,
        bpf_run_time_ns: h.bpf_run_time_ns,
        processes_failed: h.processes_failed,
        rss_bytes: h.rss_bytes,
        processes_missed: h.processes_missed,
        processes_unreadable: h.processes_unreadable,
        // The front ends' own counters, not the agent loop's.
        connections_refused: super::limits::connections_refused(),
        stream_messages_dropped: super::limits::stream_messages_dropped(),
    }
}

pub fn state_name(s: ProcState) -> &'static str {
    match s {
        ProcState::Traced => "traced",
        ProcState::Failed => "failed",
        ProcState::Exited => "exited",
        ProcState::Detached => "detached",
    }
}

pub fn process(p: &ProcessInfo, node: &str) -> pb::Process {
    let l = &p.labels;
    pb::Process {
        pid: p.pid,
        ns_pid: p.ns_pid,
        comm: p.comm.clone(),
        exe: p.exe.clone(),
        go_version: p.go_version.clone(),
        container_id: l.container_id.clone().unwrap_or_default(),
        pod_uid: l.pod_uid.clone().unwrap_or_default(),
        pod_name: l.pod_name.clone().unwrap_or_default(),
        namespace: l.namespace.clone().unwrap_or_default(),
        container_name: l.container_name.clone().unwrap_or_default(),
        status: state_name(p.state).to_string(),
        reason: p.reason.clone().unwrap_or_default(),
        probes: p.probes.iter().map(probe).collect(),
        attach_latency_ns: p.attach_latency_ns,
        traced_since_unix_ns: p.traced_since_unix_ns,
        node: node.to_string(),
    }
}

pub fn info(i: &AgentInfo, snap: &NodeSnapshot) -> pb::InfoResponse {
    pb::InfoResponse {
        version: i.version.clone(),
        node: i.node.clone(),
        kernel: i.kernel.clone(),
        btf: i.btf,
        started_unix_ns: i.started_unix_ns,
        hooks: i
            .hooks
            .iter()
            .map(|h| pb::Hook {
                feature: h.feature.clone(),
                mechanism: h.mechanism.clone(),
                status: h.status.clone(),
                reason: h.reason.clone().unwrap_or_default(),
            })
            .collect(),
        go_versions: snap.go_versions.clone(),
        health: Some(health(&snap.health)),
    }
}

/// Who a row belongs to: what every row repeats.
#[derive(Clone, Debug, Default)]
pub struct Owner {
    pub pid: u32,
    pub comm: String,
    pub labels: Labels,
}

impl Owner {
    /// The process of `report`, or a bare owner when the snapshot lists no
    /// such process (the comm then falls back to the executable's name).
    pub fn of(report: &Report, procs: &HashMap<u32, &ProcessInfo>) -> Owner {
        let pid = report.target.pid;
        match procs.get(&pid) {
            Some(p) => Owner {
                pid,
                comm: p.comm.clone(),
                labels: p.labels.clone(),
            },
            None => Owner {
                pid,
                comm: report
                    .target
                    .exe
                    .rsplit('/')
                    .next()
                    .unwrap_or_default()
                    .chars()
                    .take(15)
                    .collect(),
                labels: Labels::default(),
            },
        }
    }

    fn pod(&self) -> String {
        self.labels.pod_name.clone().unwrap_or_default()
    }

    fn container(&self) -> String {
        self.labels.container_id.clone().unwrap_or_default()
    }
}

/// Processes of a snapshot by pid.
pub fn process_index(snap: &NodeSnapshot) -> HashMap<u32, &ProcessInfo> {
    snap.processes.iter().map(|p| (p.pid, p)).collect()
}

/// Row keys: what identifies "the same row" across two snapshots.
pub fn lock_key(pid: u32, l: &LockReport) -> String {
    format!(
        "{pid}|{}|{}|{}|{}|{}",
        l.address, l.kind, l.site.function, l.site.file, l.site.line
    )
}

pub fn map_key(pid: u32, address: &str) -> String {
    format!("{pid}|{address}")
}

pub fn flow_key(f: &FlowReport) -> String {
    format!(
        "{}|{}|{}|{}|{}",
        f.pid,
        f.skaddr,
        f.start_ns,
        endpoint(f.local_addr, f.local_port),
        endpoint(f.remote_addr, f.remote_port)
    )
}

pub fn lock_row(o: &Owner, l: &LockReport, node: &str) -> pb::LockRow {
    pb::LockRow {
        pid: o.pid,
        comm: o.comm.clone(),
        kind: l.kind.to_string(),
        address: l.address.clone(),
        name: l.name.clone().unwrap_or_default(),
        site: Some(site(&l.site)),
        stack: sites(&l.stack),
        contentions: l.contentions,
        wait_ns_total: l.wait_ns_total,
        wait_ns_max: l.wait_ns_max,
        wait_ns_p50: l.wait_ns_p50,
        wait_ns_p99: l.wait_ns_p99,
        goroutines: l.goroutines as u64,
        histogram: l.histogram.iter().map(bucket).collect(),
        delta_contentions: 0,
        delta_wait_ns: 0,
        pod: o.pod(),
        container_id: o.container(),
        node: node.to_string(),
    }
}

/// Operations (deep tier) on a map, all kinds.
pub fn map_ops(m: &MapReport) -> u64 {
    m.ops.iter().map(|o| o.count).sum()
}

pub fn map_row(o: &Owner, m: &MapReport, node: &str) -> pb::MapRow {
    pb::MapRow {
        pid: o.pid,
        comm: o.comm.clone(),
        address: m.address.clone(),
        ops: m
            .ops
            .iter()
            .map(|op| pb::MapOp {
                kind: op.kind.to_string(),
                count: op.count,
                ns_total: op.ns_total,
                ns_p50: op.ns_p50,
                ns_p99: op.ns_p99,
                ns_max: op.ns_max,
                goroutines: op.goroutines as u64,
                top_sites: op.top_sites.iter().map(|s| site(&s.site)).collect(),
            })
            .collect(),
        growth_events: m.growth_events,
        count_at_last_growth: m.count_at_last_growth.unwrap_or(0),
        growth_sites: m.growth_sites.iter().map(|s| site(&s.site)).collect(),
        delta_ops: 0,
        delta_growth_events: 0,
        pod: o.pod(),
        container_id: o.container(),
        node: node.to_string(),
    }
}

pub fn sync_map_row(o: &Owner, s: &SyncMapReport, node: &str) -> pb::SyncMapRow {
    pb::SyncMapRow {
        pid: o.pid,
        comm: o.comm.clone(),
        address: s.address.clone(),
        calls: s.calls.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        total: s.total,
        read_share: s.read_share,
        advice_kind: s.advice_kind.to_string(),
        advice: s.advice.clone(),
        delta_total: 0,
        pod: o.pod(),
        container_id: o.container(),
        node: node.to_string(),
    }
}

/// `addr:port`, IPv6 in brackets, `?` for an unknown address.
pub fn endpoint(a: Option<std::net::IpAddr>, port: u16) -> String {
    match a {
        Some(std::net::IpAddr::V6(a)) => format!("[{a}]:{port}"),
        Some(a) => format!("{a}:{port}"),
        None => format!("?:{port}"),
    }
}

pub fn flow_row(o: &Owner, f: &FlowReport, node: &str) -> pb::FlowRow {
    pb::FlowRow {
        pid: o.pid,
        comm: if f.comm.is_empty() {
            o.comm.clone()
        } else {
            f.comm.clone()
        },
        side: f.side.to_string(),
        family: f.family.to_string(),
        local: endpoint(f.local_addr, f.local_port),
        remote: endpoint(f.remote_addr, f.remote_port),
        state: f.state.to_string(),
        open: f.open,
        bytes_sent: f.bytes_sent,
        bytes_received: f.bytes_received,
        lifetime_ns: f.lifetime_ns,
        connect_latency_ns: f.connect_latency_ns.unwrap_or(0),
        accept_wait_ns: f.accept_wait_ns,
        srtt_us: f.srtt_us.unwrap_or(0),
        retransmits: f.retransmits,
        resets_sent: f.resets_sent,
        resets_received: f.resets_received,
        rtt: f
            .rtt_hist
            .iter()
            .map(|b| pb::Bucket {
                lo_ns: b.lo_us.saturating_mul(1000),
                hi_ns: b.hi_us.saturating_mul(1000),
                count: b.count,
            })
            .collect(),
        delta_bytes_sent: 0,
        delta_bytes_received: 0,
        pod: o.pod(),
        container_id: o.container(),
        node: node.to_string(),
        close_reason: f.close_reason.unwrap_or_default().to_string(),
        connect_error: f.connect_error.unwrap_or_default().to_string(),
    }
}

fn op_side(s: &OpSideReport) -> pb::OpSide {
    pb::OpSide {
        op: s.op.to_string(),
        goroutine: s.goroutine.unwrap_or(0),
        stack: sites(&s.stack),
    }
}

fn map_finding(ev: &mut pb::FindingEvent, m: &MapFinding) {
    ev.kind = m.kind.to_string();
    ev.address = m.map.clone().unwrap_or_default();
    ev.message = m.message.clone().unwrap_or_default();
    ev.count = m.count;
    ev.op = m.op.as_ref().map(op_side);
    ev.other = m.other.as_ref().map(op_side);
    ev.stack = sites(&m.stack);
    ev.goroutine = m.goroutine.unwrap_or(0);
}

pub fn finding(r: &FindingRecord, node: &str) -> pb::FindingEvent {
    let mut ev = pb::FindingEvent {
        seq: r.seq,
        at_unix_ns: r.at_unix_ns,
        node: node.to_string(),
        pid: r.pid,
        comm: r.comm.clone(),
        pod: r.labels.pod_name.clone().unwrap_or_default(),
        container_id: r.labels.container_id.clone().unwrap_or_default(),
        ..Default::default()
    };
    match &r.finding {
        AnyFinding::Lock(f) => {
            ev.kind = f.kind.to_string();
            ev.address = f.lock.address.clone();
            ev.count = 1;
            ev.stack = sites(&f.stack);
            if ev.stack.is_empty()
                && let Some(s) = &f.site
            {
                ev.stack.push(site(s));
            }
            ev.goroutine = f.goroutine.unwrap_or(0);
            ev.age_ns = f.age_ns;
        }
        AnyFinding::Map(m) => map_finding(&mut ev, m),
    }
    ev
}
