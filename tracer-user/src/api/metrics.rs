//! Prometheus metrics rendered from the newest [`NodeSnapshot`] at scrape
//! time: the snapshot already holds totals since each process was first
//! traced, so a collector that re-encodes it is exact and keeps no state.
//!
//! Histogram buckets are powers of two (in ns for lock waits, µs for RTT):
//! the kernel's histograms have a slot boundary at every power of two, so
//! each slot falls wholly inside one Prometheus bucket and no count is
//! guessed. Lock call sites are the only unbounded label; only the top N by
//! wait time keep theirs, the rest are summed per process and kind under
//! `site="other"`.
//!
//! About 630 lines of code: every metric family is defined once here, for
//! both `/metrics` and the OTLP push (`all_families`), so the two cannot
//! drift apart.

use std::{collections::HashMap, fmt, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, NoLabelSet},
    metrics::MetricType,
    registry::Registry,
};

use super::convert::{Owner, process_index};
use crate::{
    agent::hub::{Labels, NodeSnapshot},
    latency::Bucket,
    report::AnyFinding,
};

/// Call sites that keep their own `site` label by default.
pub const DEFAULT_TOP_SITES: usize = 50;
/// `site` label of the folded remainder.
pub const OTHER_SITE: &str = "other";

/// Upper bounds (ns) of the lock wait buckets: 2^10 ns (≈1 µs) to 2^34 ns
/// (≈17 s), a factor of 4 apart.
fn lock_bounds_ns() -> Vec<u64> {
    (10..=34).step_by(2).map(|k| 1u64 << k).collect()
}

/// Upper bounds (µs) of the RTT buckets: 4 µs to ≈16.8 s, a factor of 4 apart.
fn rtt_bounds_us() -> Vec<u64> {
    (2..=24).step_by(2).map(|k| 1u64 << k).collect()
}

/// A histogram on fixed bounds plus `+Inf`, counts per bucket (not cumulative).
#[derive(Clone, Debug)]
struct Hist {
    counts: Vec<u64>,
    sum_seconds: f64,
}

impl Hist {
    fn new(bounds: usize) -> Self {
        Self {
            counts: vec![0; bounds + 1],
            sum_seconds: 0.0,
        }
    }

    /// Adds a slot `[lo, hi)`: it belongs to the first bound `b` with
    /// `hi <= b` (every value in it is `< hi <= b`), else to `+Inf`.
    fn add_slot(&mut self, bounds: &[u64], hi: u64, count: u64) {
        let i = bounds.iter().position(|b| hi <= *b).unwrap_or(bounds.len());
        self.counts[i] = self.counts[i].saturating_add(count);
    }

    fn merge(&mut self, o: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a = a.saturating_add(*b);
        }
        self.sum_seconds += o.sum_seconds;
    }
}

/// Labels of one process: pid, comm, and pod/namespace/container when known.
fn proc_labels(o: &Owner) -> Vec<(String, String)> {
    let mut v = vec![
        ("pid".to_string(), o.pid.to_string()),
        ("comm".to_string(), o.comm.clone()),
    ];
    k8s_labels(&o.labels, &mut v);
    v
}

fn k8s_labels(l: &Labels, v: &mut Vec<(String, String)>) {
    if let Some(p) = &l.pod_name {
        v.push(("pod".into(), p.clone()));
    }
    if let Some(n) = &l.namespace {
        v.push(("namespace".into(), n.clone()));
    }
    let container = l.container_name.clone().or_else(|| {
        l.container_id
            .as_ref()
            .map(|c| c.chars().take(12).collect())
    });
    if let Some(c) = container {
        v.push(("container".into(), c));
    }
}

fn with(mut v: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    // Extra labels go right after pid and comm, before the k8s ones.
    for (i, (k, val)) in extra.iter().enumerate() {
        v.insert(2 + i, (k.to_string(), val.to_string()));
    }
    v
}

/// One series: labels and a value.
type Series<T> = Vec<(Vec<(String, String)>, T)>;

/// Everything the collector writes, computed from one snapshot.
#[derive(Debug, Default)]
struct Families {
    lock_wait: Series<Hist>,
    map_op: Series<Hist>,
    map_findings: Series<u64>,
    /// CPU seconds the map race budget allowed and its probes spent.
    race_budget: Series<f64>,
    /// The Go runtime's own lock-wait total per process, read from memory.
    runtime_lock_wait: Series<f64>,
    tcp_rtt: Series<Hist>,
    tcp_accept_wait: Series<Hist>,
    tcp_bytes: Series<u64>,
    tcp_retransmits: Series<u64>,
    lock_findings: Series<u64>,
    syncmap_calls: Series<u64>,
    syncmap_advice: Series<u64>,
    tcp_remote_bytes: Series<u64>,
}

fn lock_families(snap: &NodeSnapshot, top_sites: usize) -> Series<Hist> {
    let bounds = lock_bounds_ns();
    let procs = process_index(snap);
    // (pid, kind, site) -> owner, histogram, wait ns.
    let mut groups: HashMap<(u32, &'static str, String), (Owner, Hist, u64)> = HashMap::new();
    for report in &snap.reports {
        let owner = Owner::of(report, &procs);
        for l in &report.locks {
            let e = groups
                .entry((owner.pid, l.kind, l.site.to_string()))
                .or_insert_with(|| (owner.clone(), Hist::new(bounds.len()), 0));
            add_buckets(&mut e.1, &bounds, &l.histogram);
            e.1.sum_seconds += l.wait_ns_total as f64 / 1e9;
            e.2 = e.2.saturating_add(l.wait_ns_total);
        }
    }
    let mut ranked: Vec<_> = groups.into_iter().collect();
    ranked.sort_by(|a, b| b.1.2.cmp(&a.1.2).then_with(|| a.0.cmp(&b.0)));
    let mut out: Series<Hist> = Vec::new();
    let mut other: HashMap<(u32, &'static str), (Owner, Hist)> = HashMap::new();
    for (i, ((pid, kind, site), (owner, hist, _))) in ranked.into_iter().enumerate() {
        if i < top_sites {
            out.push((
                with(proc_labels(&owner), &[("kind", kind), ("site", &site)]),
                hist,
            ));
        } else {
            other
                .entry((pid, kind))
                .or_insert_with(|| (owner, Hist::new(bounds.len())))
                .1
                .merge(&hist);
        }
    }
    let mut rest: Vec<_> = other.into_iter().collect();
    rest.sort_by_key(|(k, _)| *k);
    for ((_, kind), (owner, hist)) in rest {
        out.push((
            with(proc_labels(&owner), &[("kind", kind), ("site", OTHER_SITE)]),
            hist,
        ));
    }
    out
}

fn add_buckets(h: &mut Hist, bounds: &[u64], buckets: &[Bucket]) {
    for b in buckets {
        h.add_slot(bounds, b.hi_ns, b.count);
    }
}

fn families(snap: &NodeSnapshot, top_sites: usize) -> Families {
    let mut f = Families {
        lock_wait: lock_families(snap, top_sites),
        ..Default::default()
    };
    let procs = process_index(snap);
    let rtt_bounds = rtt_bounds_us();
    let wait_bounds = lock_bounds_ns();
    for report in &snap.reports {
        let owner = Owner::of(report, &procs);
        let base = proc_labels(&owner);

        // Map operations (deep tier): the same log-linear buckets as lock
        // waits, folded onto the same fixed bounds.
        let op_bounds = lock_bounds_ns();
        let mut ops: Vec<(&'static str, Hist)> = Vec::new();
        for op in report.maps.iter().flat_map(|m| &m.ops) {
            let i = match ops.iter().position(|(k, _)| *k == op.kind) {
                Some(i) => i,
                None => {
                    ops.push((op.kind, Hist::new(op_bounds.len())));
                    ops.len() - 1
                }
            };
            add_buckets(&mut ops[i].1, &op_bounds, &op.histogram);
            ops[i].1.sum_seconds += op.ns_total as f64 / 1e9;
        }
        ops.sort_by_key(|(k, _)| *k);
        for (kind, h) in ops {
            f.map_op.push((with(base.clone(), &[("op", kind)]), h));
        }

        if let Some(b) = &report.race_budget {
            for (kind, ns) in [("allowed", b.allowed_ns), ("spent", b.spent_ns)] {
                f.race_budget
                    .push((with(base.clone(), &[("kind", kind)]), ns as f64 / 1e9));
            }
        }

        if let Some(ns) = report.runtime_lock_wait.total_ns {
            f.runtime_lock_wait.push((base.clone(), ns as f64 / 1e9));
        }

        let mut kinds: Vec<(&'static str, u64)> = Vec::new();
        for finding in &report.findings {
            if let AnyFinding::Map(m) = finding {
                match kinds.iter_mut().find(|(k, _)| *k == m.kind) {
                    Some(e) => e.1 = e.1.saturating_add(m.count),
                    None => kinds.push((m.kind, m.count)),
                }
            }
        }
        kinds.sort();
        for (kind, n) in kinds {
            f.map_findings
                .push((with(base.clone(), &[("kind", kind)]), n));
        }
        let stuck = report
            .findings
            .iter()
            .filter(|x| matches!(x, AnyFinding::Lock(l) if l.kind == "stuck_lock_wait"))
            .count() as u64;
        if stuck > 0 {
            f.lock_findings
                .push((with(base.clone(), &[("kind", "stuck_lock_wait")]), stuck));
        }
        syncmap_families(&mut f, &base, report);

        if let Some(tcp) = &report.tcp {
            let mut rtt = Hist::new(rtt_bounds.len());
            let mut accept_wait = Hist::new(wait_bounds.len());
            let (mut sent, mut received, mut retrans) = (0u64, 0u64, 0u64);
            for fl in &tcp.flows {
                if let Some(w) = fl.accept_wait_ns {
                    // An exact value: its bucket is the first bound >= it.
                    accept_wait.add_slot(&wait_bounds, w, 1);
                    accept_wait.sum_seconds += w as f64 / 1e9;
                }
                for b in &fl.rtt_hist {
                    rtt.add_slot(&rtt_bounds, b.hi_us, b.count);
                }
                rtt.sum_seconds += fl.rtt_sum_us as f64 / 1e6;
                sent = sent.saturating_add(fl.bytes_sent);
                received = received.saturating_add(fl.bytes_received);
                retrans = retrans.saturating_add(fl.retransmits);
            }
            f.tcp_rtt.push((base.clone(), rtt));
            f.tcp_accept_wait.push((base.clone(), accept_wait));
            f.tcp_bytes
                .push((with(base.clone(), &[("direction", "sent")]), sent));
            f.tcp_bytes
                .push((with(base.clone(), &[("direction", "received")]), received));
            f.tcp_retransmits.push((base.clone(), retrans));
            remote_families(&mut f, &base, &tcp.by_remote, top_sites);
        }
    }
    f
}

/// sync.Map calls by read/write/range, and the advice as an info-style gauge
/// (value 1) so a dashboard can join it without the label churning a counter.
fn syncmap_families(f: &mut Families, base: &[(String, String)], report: &crate::report::Report) {
    for m in &report.sync_maps {
        for (op, n) in [("read", m.reads), ("write", m.writes), ("range", m.ranges)] {
            f.syncmap_calls
                .push((with(base.to_vec(), &[("map", &m.address), ("op", op)]), n));
        }
        f.syncmap_advice.push((
            with(
                base.to_vec(),
                &[("map", &m.address), ("advice", m.advice_kind)],
            ),
            1,
        ));
    }
}

/// Bytes per remote endpoint (client and mid-stream flows): the `top` heaviest
/// remotes of the process keep their `remote` label, the rest are summed under
/// `remote="other"`, so a process talking to many peers stays bounded.
fn remote_families(
    f: &mut Families,
    base: &[(String, String)],
    remotes: &[crate::tcp::RemoteRollup],
    top: usize,
) {
    let mut ranked: Vec<(String, u64, u64)> = remotes
        .iter()
        .map(|r| {
            let addr = match r.remote_addr {
                Some(std::net::IpAddr::V6(a)) => format!("[{a}]:{}", r.remote_port),
                Some(a) => format!("{a}:{}", r.remote_port),
                None => format!("unknown:{}", r.remote_port),
            };
            (addr, r.totals.bytes_sent, r.totals.bytes_received)
        })
        .collect();
    ranked.sort_by(|a, b| {
        (b.1.saturating_add(b.2))
            .cmp(&a.1.saturating_add(a.2))
            .then_with(|| a.0.cmp(&b.0))
    });
    let mut other: Option<(u64, u64)> = None;
    let mut push = |remote: &str, sent: u64, received: u64| {
        for (dir, v) in [("sent", sent), ("received", received)] {
            f.tcp_remote_bytes.push((
                with(base.to_vec(), &[("remote", remote), ("direction", dir)]),
                v,
            ));
        }
    };
    for (i, (remote, sent, received)) in ranked.into_iter().enumerate() {
        if i < top {
            push(&remote, sent, received);
        } else {
            let o = other.get_or_insert((0, 0));
            o.0 = o.0.saturating_add(sent);
            o.1 = o.1.saturating_add(received);
        }
    }
    if let Some((sent, received)) = other {
        push(OTHER_SITE, sent, received);
    }
}

/// What kind of Prometheus/OTLP metric a family is.
#[derive(Clone, Debug)]
pub enum Kind {
    Counter,
    Gauge,
    /// Upper bounds in seconds, `+Inf` implied.
    Histogram(Vec<f64>),
}

/// One sample's value.
#[derive(Clone, Debug)]
pub enum Value {
    Int(u64),
    Float(f64),
    /// Counts per bucket (not cumulative; last is `+Inf`) and the sum in seconds.
    Hist {
        counts: Vec<u64>,
        sum: f64,
    },
}

/// One metric family, independent of the wire format: `/metrics` and the
/// OTLP push (api/otlp.rs) both encode this, so they carry the same data.
#[derive(Clone, Debug)]
pub struct Family {
    /// Base name: Prometheus appends `_total` to counters.
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub series: Vec<(Vec<(String, String)>, Value)>,
}

fn ints(series: Series<u64>) -> Vec<(Vec<(String, String)>, Value)> {
    series
        .into_iter()
        .map(|(l, v)| (l, Value::Int(v)))
        .collect()
}

fn hists(series: Series<Hist>) -> Vec<(Vec<(String, String)>, Value)> {
    series
        .into_iter()
        .map(|(l, h)| {
            (
                l,
                Value::Hist {
                    counts: h.counts,
                    sum: h.sum_seconds,
                },
            )
        })
        .collect()
}

fn family(
    name: &'static str,
    help: &'static str,
    kind: Kind,
    series: Vec<(Vec<(String, String)>, Value)>,
) -> Family {
    Family {
        name,
        help,
        kind,
        series,
    }
}

/// Every family of `snap`, in `/metrics` order.
pub fn all_families(snap: &NodeSnapshot, top_sites: usize) -> Vec<Family> {
    let f = families(snap, top_sites);
    let lock_bounds: Vec<f64> = lock_bounds_ns()
        .into_iter()
        .map(|b| b as f64 / 1e9)
        .collect();
    let rtt_bounds: Vec<f64> = rtt_bounds_us()
        .into_iter()
        .map(|b| b as f64 / 1e6)
        .collect();
    let lock_h = || Kind::Histogram(lock_bounds.clone());
    let h = &snap.health;
    let one = |v: Value| vec![(Vec::new(), v)];
    let otlp = super::otlp::stats();
    let state = |s: &str, n: u32| {
        (
            vec![("state".to_string(), s.to_string())],
            Value::Int(n.into()),
        )
    };
    vec![
        family(
            "tracer_lock_wait_seconds",
            "Contended lock waits (sync.Mutex, sync.RWMutex) by process, kind and call site.",
            lock_h(),
            hists(f.lock_wait),
        ),
        family(
            "tracer_map_op_duration_seconds",
            "Map operations timed by the deep map tier, by process and kind of operation.",
            lock_h(),
            hists(f.map_op),
        ),
        family(
            "tracer_map_findings",
            "Map misuse findings (overlapping operations count each occurrence).",
            Kind::Counter,
            ints(f.map_findings),
        ),
        family(
            "tracer_map_race_budget_seconds",
            "CPU time the map race budget allowed (kind=allowed) and its probes cost (kind=spent), by process (--maps budget).",
            Kind::Counter,
            f.race_budget
                .into_iter()
                .map(|(l, v)| (l, Value::Float(v)))
                .collect(),
        ),
        family(
            "tracer_go_runtime_lock_wait_seconds",
            "The Go runtime's own cumulative lock-wait total (/sync/mutex/wait/total:seconds, sampled by the runtime), read from the process's memory with no probe; beside tracer_lock_wait_seconds it shows how much of the wait the probes saw.",
            Kind::Counter,
            f.runtime_lock_wait
                .into_iter()
                .map(|(l, v)| (l, Value::Float(v)))
                .collect(),
        ),
        family(
            "tracer_tcp_rtt_seconds",
            "Smoothed RTT samples of the process's TCP flows.",
            Kind::Histogram(rtt_bounds),
            hists(f.tcp_rtt),
        ),
        family(
            "tracer_tcp_accept_wait_seconds",
            "Accept-queue waits of the process's accepted TCP connections (ESTABLISHED to accept() returning).",
            lock_h(),
            hists(f.tcp_accept_wait),
        ),
        family(
            "tracer_tcp_bytes",
            "TCP payload bytes of the process's flows kept by the agent.",
            Kind::Counter,
            ints(f.tcp_bytes),
        ),
        family(
            "tracer_tcp_retransmits",
            "TCP retransmissions of the process's flows kept by the agent.",
            Kind::Counter,
            ints(f.tcp_retransmits),
        ),
        family(
            "tracer_lock_findings",
            "Lock findings (stuck_lock_wait: a wait in progress longer than the threshold).",
            Kind::Counter,
            ints(f.lock_findings),
        ),
        family(
            "tracer_syncmap_calls",
            "sync.Map calls by read/write/range, with the deep map tier.",
            Kind::Counter,
            ints(f.syncmap_calls),
        ),
        family(
            "tracer_syncmap_advice",
            "Always 1: the advice for a sync.Map (advice label), with the deep map tier.",
            Kind::Gauge,
            ints(f.syncmap_advice),
        ),
        family(
            "tracer_tcp_remote_bytes",
            "TCP payload bytes of the process's client flows by remote endpoint (the heaviest N; the rest as remote=\"other\").",
            Kind::Counter,
            ints(f.tcp_remote_bytes),
        ),
        family(
            "tracer_agent_probe_hits",
            "Probe program runs (with BPF statistics on).",
            Kind::Counter,
            one(Value::Int(h.probe_hits)),
        ),
        family(
            "tracer_agent_events_lost",
            "Events the kernel side could not deliver or keep.",
            Kind::Counter,
            one(Value::Int(h.events_lost)),
        ),
        family(
            "tracer_agent_processes_missed",
            "Go processes that exited before their probes were live (nothing of them was recorded).",
            Kind::Counter,
            one(Value::Int(h.processes_missed)),
        ),
        family(
            "tracer_agent_processes_unreadable",
            "Selected processes whose executable the agent may not open (it lacks CAP_SYS_PTRACE).",
            Kind::Counter,
            one(Value::Int(h.processes_unreadable)),
        ),
        family(
            "tracer_agent_connections_refused",
            "gRPC connections closed at accept: over the connection limit of a listener or of one client address.",
            Kind::Counter,
            one(Value::Int(super::limits::connections_refused())),
        ),
        family(
            "tracer_agent_stream_messages_dropped",
            "Watch snapshots not sent because the client read too slowly.",
            Kind::Counter,
            one(Value::Int(super::limits::stream_messages_dropped())),
        ),
        family(
            "tracer_agent_map_evictions",
            "Entries evicted from the kernel's bounded LRU tables.",
            Kind::Counter,
            one(Value::Int(h.map_evictions)),
        ),
        family(
            "tracer_agent_bpf_run_time_seconds",
            "Kernel run time of the probe programs (with BPF statistics on).",
            Kind::Counter,
            one(Value::Float(h.bpf_run_time_ns as f64 / 1e9)),
        ),
        family(
            "tracer_agent_processes",
            "Go processes known to the agent, by state.",
            Kind::Gauge,
            vec![
                state("traced", h.processes_traced),
                state("failed", h.processes_failed),
            ],
        ),
        family(
            "tracer_agent_rss_bytes",
            "Resident memory of the agent.",
            Kind::Gauge,
            one(Value::Int(h.rss_bytes)),
        ),
        family(
            "tracer_agent_otlp_exports",
            "OTLP export requests the collector accepted.",
            Kind::Counter,
            one(Value::Int(otlp.exported)),
        ),
        family(
            "tracer_agent_otlp_dropped",
            "OTLP export requests dropped (collector down or refusing, queue full).",
            Kind::Counter,
            one(Value::Int(otlp.dropped)),
        ),
    ]
}

/// Encodes the newest snapshot on each scrape.
#[derive(Debug)]
pub struct SnapshotCollector {
    snap: Arc<NodeSnapshot>,
    top_sites: usize,
}

fn encode_family(enc: &mut DescriptorEncoder, fam: &Family) -> fmt::Result {
    let ty = match fam.kind {
        Kind::Counter => MetricType::Counter,
        Kind::Gauge => MetricType::Gauge,
        Kind::Histogram(_) => MetricType::Histogram,
    };
    let mut d = enc.encode_descriptor(fam.name, fam.help, None, ty)?;
    for (labels, v) in &fam.series {
        let mut e = d.encode_family(labels)?;
        match (&fam.kind, v) {
            (Kind::Counter, Value::Int(n)) => e.encode_counter::<NoLabelSet, u64, u64>(n, None)?,
            (Kind::Counter, Value::Float(x)) => {
                e.encode_counter::<NoLabelSet, f64, u64>(x, None)?
            }
            (Kind::Gauge, Value::Int(n)) => e.encode_gauge(n)?,
            (Kind::Gauge, Value::Float(x)) => e.encode_gauge(x)?,
            (Kind::Histogram(bounds), Value::Hist { counts, sum }) => {
                let buckets: Vec<(f64, u64)> = bounds
                    .iter()
                    .copied()
                    .chain(std::iter::once(f64::INFINITY))
                    .zip(counts.iter().copied())
                    .collect();
                e.encode_histogram::<NoLabelSet>(*sum, counts.iter().sum(), &buckets, None)?
            }
            // Every family is built with values of its own kind above.
            _ => return Err(fmt::Error),
        }
    }
    Ok(())
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        for fam in all_families(&self.snap, self.top_sites) {
            encode_family(&mut enc, &fam)?;
        }
        Ok(())
    }
}

/// The Prometheus text format (0.0.4) of `snap`.
pub fn render(snap: Arc<NodeSnapshot>, top_sites: usize) -> Result<String, fmt::Error> {
    let mut reg = Registry::default();
    reg.register_collector(Box::new(SnapshotCollector { snap, top_sites }));
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, &reg)?;
    Ok(out)
}

/// `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        agent::hub::Labels,
        api::synthetic::{flow, lock, process, report, site},
        tcp::FlowReport,
    };

    type Labelset = BTreeMap<String, String>;
    /// Per label set (without `le`): (bound, cumulative count) pairs, _count, _sum.
    type Parsed = BTreeMap<Labelset, (Vec<(f64, f64)>, f64, f64)>;

    /// Minimal parser of the text format: `name{k="v",...} value` lines.
    fn parse(text: &str) -> Vec<(String, Labelset, f64)> {
        let mut out = vec![];
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                v => v.parse().expect("numeric value"),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), Labelset::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    let mut labels = Labelset::new();
                    // Label values here hold no `",` sequences.
                    for kv in body.split("\",").filter(|s| !s.is_empty()) {
                        let (k, v) = kv.split_once("=\"").expect("k=\"v\"");
                        labels.insert(k.into(), v.trim_end_matches('"').into());
                    }
                    (name.to_string(), labels)
                }
            };
            out.push((name, labels, value));
        }
        out
    }

    /// Histograms of family `name`, by label set without `le`:
    /// (bucket bounds and cumulative counts, _count, _sum).
    fn histograms(samples: &[(String, Labelset, f64)], name: &str) -> Parsed {
        let mut m: Parsed = BTreeMap::new();
        for (n, labels, v) in samples {
            let mut l = labels.clone();
            let le = l.remove("le");
            let e = m.entry(l).or_default();
            if *n == format!("{name}_bucket") {
                let le = le.expect("bucket has le");
                let b = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect("le")
                };
                e.0.push((b, *v));
            } else if *n == format!("{name}_count") {
                e.1 = *v;
            } else if *n == format!("{name}_sum") {
                e.2 = *v;
            }
        }
        m.retain(|_, v| !v.0.is_empty());
        m
    }

    fn check_structure(h: &Parsed) {
        for (labels, (buckets, count, _)) in h {
            assert!(
                buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{labels:?}: le must increase and counts be cumulative: {buckets:?}"
            );
            let last = buckets.last().expect("buckets");
            assert_eq!(last.0, f64::INFINITY, "{labels:?}: last bucket is +Inf");
            assert_eq!(last.1, *count, "{labels:?}: +Inf bucket == _count");
        }
    }

    fn k8s() -> Labels {
        Labels {
            container_id: Some("0123456789abcdef0123".into()),
            pod_uid: None,
            pod_name: Some("web-1".into()),
            namespace: Some("prod".into()),
            container_name: None,
        }
    }

    /// Three call sites with known waits; 5 µs to 3 s.
    fn snapshot() -> NodeSnapshot {
        let a = [5_000, 7_000, 2_000_000, 3_000_000_000];
        let b = [40_000, 40_000, 900_000];
        let c = [1_500, 80_000_000];
        NodeSnapshot {
            generation: 1,
            node: "n1".into(),
            processes: vec![process(10, "svc", k8s())],
            reports: vec![
                report(
                    10,
                    vec![
                        lock("0x1", "mutex", site("main.a", "/src/a.go", 1), &a),
                        lock("0x2", "mutex", site("main.b", "/src/b.go", 2), &b),
                        lock("0x3", "mutex", site("main.c", "/src/c.go", 3), &c),
                        // Same site as the first on another lock: summed into one series.
                        lock("0x4", "mutex", site("main.a", "/src/a.go", 1), &[9_000]),
                    ],
                    vec![],
                    vec![
                        flow(10, 40000, 100, 200, &[30, 50, 3000]),
                        accepted(8080, 50_000),
                        accepted(8080, 2_000_000),
                    ],
                ),
                report(11, vec![], vec![], vec![]),
            ],
            ..Default::default()
        }
    }

    /// A server flow that moved nothing, accepted after `wait_ns` in the queue.
    fn accepted(port: u16, wait_ns: u64) -> FlowReport {
        FlowReport {
            side: "server",
            accept_wait_ns: Some(wait_ns),
            connect_latency_ns: None,
            ..flow(10, port, 0, 0, &[])
        }
    }

    #[test]
    fn lock_histograms_add_up_to_the_rows() {
        let snap = Arc::new(snapshot());
        let text = render(snap.clone(), 50).expect("render");
        let samples = parse(&text);
        let h = histograms(&samples, "tracer_lock_wait_seconds");
        check_structure(&h);
        assert_eq!(h.len(), 3, "one series per (pid, kind, site): {text}");
        let locks = &snap.reports[0].locks;
        let total_count: u64 = locks.iter().map(|l| l.contentions).sum();
        let total_wait: u64 = locks.iter().map(|l| l.wait_ns_total).sum();
        let got_count: f64 = h.values().map(|v| v.1).sum();
        let got_sum: f64 = h.values().map(|v| v.2).sum();
        assert_eq!(got_count, total_count as f64);
        assert!((got_sum - total_wait as f64 / 1e9).abs() < 1e-9);
        // Every sample lands in the first bucket whose bound is >= it.
        let a = h
            .iter()
            .find(|(l, _)| l["site"] == "main.a a.go:1")
            .expect("site a")
            .1;
        let le_count = |le: f64| a.0.iter().find(|(b, _)| *b >= le).expect("bucket").1;
        assert_eq!(le_count(4.096e-6), 0.0, "nothing below 4 µs");
        assert_eq!(le_count(16.384e-6), 3.0, "5, 7 and 9 µs");
        assert_eq!(le_count(4.194304e-3), 4.0, "plus 2 ms");
        assert_eq!(a.1, 5.0);
        let labels = h.keys().next().expect("series");
        for k in [
            "pid",
            "comm",
            "kind",
            "site",
            "pod",
            "namespace",
            "container",
        ] {
            assert!(labels.contains_key(k), "label {k} missing: {labels:?}");
        }
        assert_eq!(labels["container"], "0123456789ab");
    }

    #[test]
    fn map_op_histograms_have_buckets_that_add_up() {
        let mut snap = snapshot();
        snap.reports[1]
            .maps
            .push(crate::api::synthetic::map(11, "0xm", 1000, 20_000, 0));
        let text = render(Arc::new(snap), 50).expect("render");
        let h = histograms(&parse(&text), "tracer_map_op_duration_seconds");
        check_structure(&h);
        let (buckets, count, sum) = h
            .iter()
            .find(|(l, _)| l["op"] == "write" && l["pid"] == "11")
            .expect("write series of pid 11")
            .1;
        assert_eq!(*count, 1000.0);
        assert!((sum - 0.02).abs() < 1e-9, "sum {sum}");
        let le = |x: f64| buckets.iter().find(|(b, _)| *b >= x).expect("bucket").1;
        assert_eq!(le(16.384e-6), 0.0, "nothing below 16 µs");
        assert_eq!(le(32.768e-6), 1000.0, "all 1000 at 20 µs");
    }

    #[test]
    fn race_budget_seconds_are_exported_per_process() {
        let mut snap = snapshot();
        snap.reports[1].race_budget = Some(crate::maps::budget::BudgetReport {
            budget: 0.01,
            trap_ns: Some(15_000.0),
            elapsed_ns: 60_000_000_000,
            allowed_ns: 1_000_000_000,
            spent_ns: 250_000_000,
            call_sites: 8,
            left_out_table_full: 0,
            never_probed: 0,
            continuous: 5,
            hot: 3,
            failed: 0,
            windows: 2,
            error: None,
            sites: vec![],
            growth: vec![],
        });
        let text = render(Arc::new(snap), 50).expect("render");
        let line = |kind: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("tracer_map_race_budget_seconds_total{")
                        && l.contains("pid=\"11\"")
                        && l.contains(&format!("kind=\"{kind}\""))
                })
                .map(|l| l.rsplit(' ').next().unwrap_or("").parse::<f64>())
        };
        assert_eq!(line("allowed"), Some(Ok(1.0)), "{text}");
        assert_eq!(line("spent"), Some(Ok(0.25)), "{text}");
        assert!(
            !text.contains("tracer_map_race_budget_seconds_total{pid=\"10\""),
            "only processes with a budget"
        );
    }

    #[test]
    fn runtime_lock_wait_is_exported_where_it_was_read() {
        let mut snap = snapshot();
        snap.reports[0].runtime_lock_wait.total_ns = Some(2_500_000_000);
        snap.reports[0].runtime_lock_wait.reason = None;
        let text = render(Arc::new(snap), 50).expect("render");
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("tracer_go_runtime_lock_wait_seconds_total{"))
            .collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(
            lines[0].contains("pid=\"10\"") && lines[0].ends_with(" 2.5"),
            "{text}"
        );
    }

    #[test]
    fn sites_beyond_the_top_n_fold_into_other() {
        let text = render(Arc::new(snapshot()), 1).expect("render");
        let h = histograms(&parse(&text), "tracer_lock_wait_seconds");
        check_structure(&h);
        let sites: Vec<&str> = h.keys().map(|l| l["site"].as_str()).collect();
        // main.a waited ~3 s: the heaviest keeps its label.
        assert_eq!(sites.len(), 2, "{sites:?}");
        assert!(sites.contains(&"main.a a.go:1"), "{sites:?}");
        assert!(sites.contains(&OTHER_SITE), "{sites:?}");
        let other = h
            .iter()
            .find(|(l, _)| l["site"] == OTHER_SITE)
            .expect("other")
            .1;
        assert_eq!(other.1, 5.0, "b (3) + c (2) waits");
        let want = (40_000.0 + 40_000.0 + 900_000.0 + 1_500.0 + 80_000_000.0) / 1e9;
        assert!((other.2 - want).abs() < 1e-12, "{} vs {want}", other.2);
    }

    #[test]
    fn tcp_and_agent_metrics() {
        let mut snap = snapshot();
        snap.health.processes_missed = 7;
        let text = render(Arc::new(snap), 50).expect("render");
        let samples = parse(&text);
        let rtt = histograms(&samples, "tracer_tcp_rtt_seconds");
        check_structure(&rtt);
        let (buckets, count, sum) = rtt.values().next().expect("rtt series");
        assert_eq!(*count, 3.0);
        assert!((sum - 3080e-6).abs() < 1e-12);
        let le = |b: f64| buckets.iter().find(|(x, _)| *x >= b).expect("bucket").1;
        assert_eq!(le(64e-6), 2.0, "30 and 50 µs");
        let value = |name: &str, dir: Option<&str>| {
            samples
                .iter()
                .find(|(n, l, _)| {
                    n == name
                        && dir.is_none_or(|d| l.get("direction").map(String::as_str) == Some(d))
                })
                .map(|s| s.2)
        };
        assert_eq!(value("tracer_tcp_bytes_total", Some("sent")), Some(100.0));
        assert_eq!(
            value("tracer_tcp_bytes_total", Some("received")),
            Some(200.0)
        );
        assert_eq!(value("tracer_tcp_retransmits_total", None), Some(0.0));
        let waits = histograms(&samples, "tracer_tcp_accept_wait_seconds");
        check_structure(&waits);
        let (buckets, count, sum) = waits.values().next().expect("accept wait series");
        assert_eq!(*count, 2.0);
        assert!((sum - 2.05e-3).abs() < 1e-12, "{sum}");
        let le = |b: f64| buckets.iter().find(|(x, _)| *x >= b).expect("bucket").1;
        assert_eq!(le(65_536e-9), 1.0, "50 µs");
        assert_eq!(le(4_194_304e-9), 2.0, "and 2 ms");
        for n in [
            "tracer_agent_probe_hits_total",
            "tracer_agent_events_lost_total",
            "tracer_agent_map_evictions_total",
            "tracer_agent_processes_missed_total",
            "tracer_agent_processes_unreadable_total",
            "tracer_agent_connections_refused_total",
            "tracer_agent_stream_messages_dropped_total",
            "tracer_agent_bpf_run_time_seconds_total",
            "tracer_agent_processes",
            "tracer_agent_rss_bytes",
        ] {
            assert!(value(n, None).is_some(), "{n} missing:\n{text}");
        }
        assert_eq!(
            value("tracer_agent_processes_missed_total", None),
            Some(7.0)
        );
    }
}
