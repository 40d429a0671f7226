//! Report values built from known samples, for tests of the front ends
//! (gRPC, Prometheus, `tracer top`) that need no eBPF: every total, quantile
//! and histogram is derived from the samples the same way the agent derives
//! them from the kernel's aggregates.

use tracer_common::hist_slot;

use crate::{
    agent::hub::{AgentInfo, Labels, NodeSnapshot, ProcState, ProcessInfo},
    latency::Latency,
    maps::{MapFinding, MapReport, report::OpReport},
    report::{LockReport, Report, Target},
    symbols::Site,
    tcp::{FlowReport, TcpReport, TcpStats, flows::RttBucket},
};

fn latency(samples_ns: &[u64]) -> Latency {
    let mut l = Latency::default();
    for &v in samples_ns {
        l.count += 1;
        l.total_ns += v;
        l.max_ns = l.max_ns.max(v);
        l.hist[hist_slot(v)] += 1;
    }
    l
}

pub fn site(function: &str, file: &str, line: u32) -> Site {
    Site {
        function: function.into(),
        file: file.into(),
        line,
    }
}

/// The runtime's `concurrent map writes` crash of goroutine 9 in `pid`,
/// at the first frame of `stack`.
pub fn map_fatal(pid: u32, stack: Vec<Site>) -> MapFinding {
    MapFinding::fatal(pid, "concurrent map writes", Some(9), stack, 0)
}

/// A lock row whose waits were exactly `samples_ns`.
pub fn lock(address: &str, kind: &'static str, site: Site, samples_ns: &[u64]) -> LockReport {
    let l = latency(samples_ns);
    LockReport {
        address: address.into(),
        kind,
        name: None,
        stack: vec![site.clone()],
        site,
        contentions: l.count,
        goroutines: samples_ns.len().min(4),
        wait_ns_total: l.total_ns,
        wait_ns_p50: l.quantile(0.5),
        wait_ns_p99: l.quantile(0.99),
        wait_ns_max: l.max_ns,
        handoffs: 0,
        handoffs_unmeasured: 0,
        histogram: l.buckets(),
        stacks: vec![],
    }
}

/// A map with `writes` timed write operations of `ns_each` and `growth` growths.
pub fn map(pid: u32, address: &str, writes: u64, ns_each: u64, growth: u64) -> MapReport {
    let l = latency(&vec![ns_each; usize::try_from(writes).unwrap_or(0)]);
    MapReport {
        pid,
        address: address.into(),
        ops: if writes == 0 {
            vec![]
        } else {
            vec![OpReport {
                kind: "write",
                count: l.count,
                ns_total: l.total_ns,
                ns_p50: l.quantile(0.5),
                ns_p99: l.quantile(0.99),
                ns_max: l.max_ns,
                goroutines: 1,
                top_sites: vec![],
                histogram: l.buckets(),
                stacks: vec![],
            }]
        },
        goroutines: 1,
        growth_events: growth,
        count_at_last_growth: None,
        max_count_at_growth: None,
        growth_sites: vec![],
    }
}

/// A client flow to `remote_port` with the given byte counts and RTT samples (µs).
pub fn flow(pid: u32, local_port: u16, sent: u64, received: u64, rtts_us: &[u64]) -> FlowReport {
    let mut hist = [0u64; tracer_common::tcp::RTT_SLOTS];
    for &r in rtts_us {
        hist[tracer_common::tcp::rtt_slot(r)] += 1;
    }
    let rtt_hist = hist
        .iter()
        .enumerate()
        .filter(|(_, c)| **c > 0)
        .map(|(i, c)| RttBucket {
            lo_us: if i == 0 { 0 } else { 1 << i },
            hi_us: if i + 1 >= hist.len() {
                u64::MAX
            } else {
                1 << (i + 1)
            },
            count: *c,
        })
        .collect();
    let loopback = Some(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    FlowReport {
        pid,
        comm: String::new(),
        side: "client",
        family: "ipv4",
        local_addr: loopback,
        local_port,
        remote_addr: loopback,
        remote_port: 8080,
        state: "ESTABLISHED",
        open: true,
        closed_from: None,
        close_reason: None,
        connect_errno: None,
        connect_error: None,
        destroyed: false,
        midstream: false,
        bytes_sent: sent,
        bytes_received: received,
        sends: 1,
        receives: 1,
        start_ns: u64::from(local_port),
        end_ns: None,
        lifetime_ns: 1,
        connect_latency_ns: Some(1000),
        accept_wait_ns: None,
        srtt_us: rtts_us.last().copied(),
        rtt_samples: rtts_us.len() as u64,
        rtt_mean_us: rtts_us
            .iter()
            .sum::<u64>()
            .checked_div(rtts_us.len() as u64),
        rtt_sum_us: rtts_us.iter().sum(),
        rtt_hist,
        retransmits: 0,
        resets_sent: 0,
        resets_received: 0,
        skaddr: u64::from(local_port),
    }
}

/// A report of `pid` with these rows.
pub fn report(
    pid: u32,
    locks: Vec<LockReport>,
    maps: Vec<MapReport>,
    flows: Vec<FlowReport>,
) -> Report {
    Report {
        target: Target {
            pid,
            exe: format!("/usr/bin/svc{pid}"),
            go_version: "go1.24.11".into(),
            go_version_source: crate::gobin::VersionSource::Buildinfo,
        },
        duration_ns: 1,
        probes: vec![],
        runtime_lock_wait: crate::locks::report::RuntimeLockWait {
            total_ns: None,
            probed_ns: locks.iter().map(|l| l.wait_ns_total).sum(),
            reason: Some("synthetic report".into()),
        },
        locks,
        holders: vec![],
        findings: vec![],
        map_probes: vec![],
        maps,
        map_sites: vec![],
        sync_maps: vec![],
        maps_lost: None,
        map_op_hits: None,
        happens_before: None,
        race_budget: None,
        bpf_stats: vec![],
        tcp: (!flows.is_empty()).then(|| TcpReport {
            hooks: vec![],
            stats: TcpStats::default(),
            flows,
            by_remote: vec![],
            by_listen_port: vec![],
        }),
        tcp_off: None,
        lock_probe_pauses: None,
        stuck_waits_dropped: 0,
        image: None,
    }
}

/// A traced process.
pub fn process(pid: u32, comm: &str, labels: Labels) -> ProcessInfo {
    ProcessInfo {
        pid,
        ns_pid: pid,
        comm: comm.into(),
        exe: format!("/usr/bin/{comm}"),
        go_version: "go1.24.11".into(),
        labels,
        state: ProcState::Traced,
        reason: None,
        probes: vec![],
        attach_latency_ns: 1,
        traced_since_unix_ns: 1,
    }
}

/// A node snapshot of one process with 1000 contended locks, each with a
/// 12-frame stack (about 600 KiB encoded at `top_n` 1000): what fills
/// transport buffers and memory fastest. Totals grow with `generation`.
pub fn stack_heavy(generation: u64) -> NodeSnapshot {
    let stack: Vec<_> = (0..12)
        .map(|i| site(&format!("example.com/svc/pkg.F{i}"), "/src/svc/f.go", i))
        .collect();
    let locks = (0..1000u64)
        .map(|i| {
            let mut l = lock(
                &format!("{:#x}", 0x20_0000 + i),
                "mutex",
                site("main.hot", "/src/main.go", i as u32),
                &[1_000_000 + i + generation],
            );
            l.stack = stack.clone();
            l
        })
        .collect();
    NodeSnapshot {
        generation,
        taken_unix_ns: generation,
        node: "node-a".into(),
        processes: vec![process(10, "svc", Labels::default())],
        reports: vec![report(10, locks, vec![], vec![])],
        ..Default::default()
    }
}

/// The agent of node `node-a`, as the API tests describe it.
pub fn agent_info() -> AgentInfo {
    AgentInfo {
        version: "test".into(),
        node: "node-a".into(),
        kernel: "6.18".into(),
        btf: true,
        started_unix_ns: 1,
        hooks: vec![],
    }
}
