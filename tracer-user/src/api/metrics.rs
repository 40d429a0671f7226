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

    fn count(&self) -> u64 {
        self.counts.iter().sum()
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
    tcp_rtt: Series<Hist>,
    tcp_bytes: Series<u64>,
    tcp_retransmits: Series<u64>,
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
    for report in &snap.reports {
        let owner = Owner::of(report, &procs);
        let base = proc_labels(&owner);

        // Map operations: the deep tier keeps per-map quantiles, which cannot
        // be summed, so these histograms carry only +Inf, _count and _sum.
        let mut ops: Vec<(&'static str, Hist)> = Vec::new();
        for op in report.maps.iter().flat_map(|m| &m.ops) {
            let i = match ops.iter().position(|(k, _)| *k == op.kind) {
                Some(i) => i,
                None => {
                    ops.push((op.kind, Hist::new(0)));
                    ops.len() - 1
                }
            };
            ops[i].1.counts[0] = ops[i].1.counts[0].saturating_add(op.count);
            ops[i].1.sum_seconds += op.ns_total as f64 / 1e9;
        }
        ops.sort_by_key(|(k, _)| *k);
        for (kind, h) in ops {
            f.map_op.push((with(base.clone(), &[("op", kind)]), h));
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

        if let Some(tcp) = &report.tcp {
            let mut rtt = Hist::new(rtt_bounds.len());
            let (mut sent, mut received, mut retrans) = (0u64, 0u64, 0u64);
            for fl in &tcp.flows {
                for b in &fl.rtt_hist {
                    rtt.add_slot(&rtt_bounds, b.hi_us, b.count);
                }
                rtt.sum_seconds += fl.rtt_sum_us as f64 / 1e6;
                sent = sent.saturating_add(fl.bytes_sent);
                received = received.saturating_add(fl.bytes_received);
                retrans = retrans.saturating_add(fl.retransmits);
            }
            f.tcp_rtt.push((base.clone(), rtt));
            f.tcp_bytes
                .push((with(base.clone(), &[("direction", "sent")]), sent));
            f.tcp_bytes
                .push((with(base.clone(), &[("direction", "received")]), received));
            f.tcp_retransmits.push((base, retrans));
        }
    }
    f
}

/// Encodes the newest snapshot on each scrape.
#[derive(Debug)]
pub struct SnapshotCollector {
    snap: Arc<NodeSnapshot>,
    top_sites: usize,
}

fn histograms(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    bounds_s: &[f64],
    series: &Series<Hist>,
) -> fmt::Result {
    let mut d = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in series {
        let buckets: Vec<(f64, u64)> = bounds_s
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(h.counts.iter().copied())
            .collect();
        d.encode_family(labels)?.encode_histogram::<NoLabelSet>(
            h.sum_seconds,
            h.count(),
            &buckets,
            None,
        )?;
    }
    Ok(())
}

fn counters<T: prometheus_client::encoding::EncodeCounterValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &Series<T>,
) -> fmt::Result {
    let mut d = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in series {
        d.encode_family(labels)?
            .encode_counter::<NoLabelSet, T, u64>(v, None)?;
    }
    Ok(())
}

fn gauge<T: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &Series<T>,
) -> fmt::Result {
    let mut d = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in series {
        d.encode_family(labels)?.encode_gauge(v)?;
    }
    Ok(())
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let f = families(&self.snap, self.top_sites);
        let ns_to_s = |v: Vec<u64>| v.into_iter().map(|b| b as f64 / 1e9).collect::<Vec<_>>();
        let lock_bounds = ns_to_s(lock_bounds_ns());
        let rtt_bounds: Vec<f64> = rtt_bounds_us()
            .into_iter()
            .map(|b| b as f64 / 1e6)
            .collect();
        histograms(
            &mut enc,
            "tracer_lock_wait_seconds",
            "Contended lock waits (sync.Mutex, sync.RWMutex) by process, kind and call site.",
            &lock_bounds,
            &f.lock_wait,
        )?;
        histograms(
            &mut enc,
            "tracer_map_op_duration_seconds",
            "Map operations timed by the deep map tier (no finite buckets: per-map quantiles cannot be summed).",
            &[],
            &f.map_op,
        )?;
        counters(
            &mut enc,
            "tracer_map_findings",
            "Map misuse findings (overlapping operations count each occurrence).",
            &f.map_findings,
        )?;
        histograms(
            &mut enc,
            "tracer_tcp_rtt_seconds",
            "Smoothed RTT samples of the process's TCP flows.",
            &rtt_bounds,
            &f.tcp_rtt,
        )?;
        counters(
            &mut enc,
            "tracer_tcp_bytes",
            "TCP payload bytes of the process's flows kept by the agent.",
            &f.tcp_bytes,
        )?;
        counters(
            &mut enc,
            "tracer_tcp_retransmits",
            "TCP retransmissions of the process's flows kept by the agent.",
            &f.tcp_retransmits,
        )?;
        let h = &self.snap.health;
        let none = Vec::new;
        counters(
            &mut enc,
            "tracer_agent_probe_hits",
            "Probe program runs (with BPF statistics on).",
            &vec![(none(), h.probe_hits)],
        )?;
        counters(
            &mut enc,
            "tracer_agent_events_lost",
            "Events the kernel side could not deliver or keep.",
            &vec![(none(), h.events_lost)],
        )?;
        counters(
            &mut enc,
            "tracer_agent_map_evictions",
            "Entries evicted from the kernel's bounded LRU tables.",
            &vec![(none(), h.map_evictions)],
        )?;
        counters(
            &mut enc,
            "tracer_agent_bpf_run_time_seconds",
            "Kernel run time of the probe programs (with BPF statistics on).",
            &vec![(none(), h.bpf_run_time_ns as f64 / 1e9)],
        )?;
        gauge(
            &mut enc,
            "tracer_agent_processes",
            "Go processes known to the agent, by state.",
            &vec![
                (
                    vec![("state".to_string(), "traced".to_string())],
                    u64::from(h.processes_traced),
                ),
                (
                    vec![("state".to_string(), "failed".to_string())],
                    u64::from(h.processes_failed),
                ),
            ],
        )?;
        gauge(
            &mut enc,
            "tracer_agent_rss_bytes",
            "Resident memory of the agent.",
            &vec![(none(), h.rss_bytes)],
        )?;
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
