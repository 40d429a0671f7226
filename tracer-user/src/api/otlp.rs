//! OTLP metrics push (`tracer agent --otlp-endpoint URL`): the families of
//! `/metrics` ([`all_families`]), one resource per traced process, sent every
//! interval over gRPC or HTTP/protobuf.
//!
//! Every value is a cumulative total since the process was first traced, so
//! an export that fails loses resolution, not data: nothing is queued. One
//! request is in flight at most, failures back off exponentially (to
//! [`MAX_BACKOFF`]), and every interval that sent nothing counts as one
//! dropped export (`tracer_agent_otlp_dropped_total`).

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        ExportMetricsServiceRequest, metrics_service_client::MetricsServiceClient,
    },
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
        ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
    },
    resource::v1::Resource,
};
use prost::Message;

use super::metrics::{Family, Kind, Value, all_families};
use crate::agent::hub::{Hub, NodeSnapshot};

/// Longest wait between attempts while the collector is down.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

static EXPORTED: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Export counts since the agent started (zero without `--otlp-endpoint`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub exported: u64,
    pub dropped: u64,
}

pub fn stats() -> Stats {
    Stats {
        exported: EXPORTED.load(Ordering::Relaxed),
        dropped: DROPPED.load(Ordering::Relaxed),
    }
}

/// OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    /// HTTP/1.1 POST of the protobuf body to `/v1/metrics`.
    Http,
}

impl std::str::FromStr for Protocol {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "grpc" => Ok(Self::Grpc),
            "http" | "http/protobuf" => Ok(Self::Http),
            _ => bail!("unknown OTLP protocol {s:?} (grpc or http)"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct OtlpOptions {
    /// `http://HOST:PORT` (gRPC) or `http://HOST:PORT[/v1/metrics]` (HTTP).
    pub endpoint: String,
    pub protocol: Protocol,
    pub interval: Duration,
    /// Per request.
    pub timeout: Duration,
    pub top_sites: usize,
}

/// Checks the endpoint up front, so a typo fails the agent's start instead
/// of counting drops forever. Only plaintext `http://` is supported.
pub fn check_endpoint(opts: &OtlpOptions) -> Result<http::Uri> {
    let uri: http::Uri = opts
        .endpoint
        .parse()
        .with_context(|| format!("bad --otlp-endpoint {:?}", opts.endpoint))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(s) => bail!("--otlp-endpoint: scheme {s:?} is not supported (plaintext http:// only)"),
        None => bail!("--otlp-endpoint needs a scheme, e.g. http://127.0.0.1:4317"),
    }
    if uri.host().is_none() {
        bail!("--otlp-endpoint {:?} has no host", opts.endpoint);
    }
    if opts.protocol == Protocol::Http && uri.path() == "/" {
        // The OTLP/HTTP default path for metrics.
        let mut parts = uri.into_parts();
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/v1/metrics"));
        return http::Uri::from_parts(parts).context("building the OTLP/HTTP URL");
    }
    Ok(uri)
}

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn s(key: &str, v: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.to_string()))
}

/// Labels that become resource attributes instead of point attributes.
const RESOURCE_LABELS: [&str; 5] = ["pid", "comm", "pod", "namespace", "container"];

/// Resource attributes of process `pid` (node-level when `None`).
fn resource(snap: &NodeSnapshot, pid: Option<u32>) -> Resource {
    let mut attrs = vec![
        s("service.name", "tracer-agent"),
        s("host.name", &snap.node),
    ];
    if let Some(pid) = pid {
        attrs.push(kv(
            "process.pid",
            any_value::Value::IntValue(i64::from(pid)),
        ));
        if let Some(p) = snap.processes.iter().find(|p| p.pid == pid) {
            attrs.push(s("process.executable.name", &p.comm));
            let l = &p.labels;
            for (k, v) in [
                ("k8s.pod.name", &l.pod_name),
                ("k8s.namespace.name", &l.namespace),
                ("k8s.pod.uid", &l.pod_uid),
                ("k8s.container.name", &l.container_name),
                ("container.id", &l.container_id),
            ] {
                if let Some(v) = v {
                    attrs.push(s(k, v));
                }
            }
        } else if let Some(r) = snap.reports.iter().find(|r| r.target.pid == pid) {
            let exe = r.target.exe.rsplit('/').next().unwrap_or(&r.target.exe);
            attrs.push(s("process.executable.name", exe));
        }
    }
    Resource {
        attributes: attrs,
        ..Default::default()
    }
}

/// When the totals of `pid` started: its tracing start, else the snapshot's.
fn start_ns(snap: &NodeSnapshot, pid: Option<u32>, agent_start: u64) -> u64 {
    pid.and_then(|p| snap.processes.iter().find(|x| x.pid == p))
        .map_or(agent_start, |p| p.traced_since_unix_ns)
}

/// The export request for `snap`: one `ResourceMetrics` per process (and one
/// for the agent's own metrics), each family as one OTLP metric.
pub fn request(
    snap: &NodeSnapshot,
    families: &[Family],
    agent_start_ns: u64,
) -> ExportMetricsServiceRequest {
    let now = snap.taken_unix_ns.max(agent_start_ns);
    // pid -> family name -> metric.
    let mut by_pid: BTreeMap<Option<u32>, BTreeMap<&str, Metric>> = BTreeMap::new();
    for fam in families {
        for (labels, value) in &fam.series {
            let pid = labels
                .iter()
                .find(|(k, _)| k == "pid")
                .and_then(|(_, v)| v.parse::<u32>().ok());
            let attributes: Vec<KeyValue> = labels
                .iter()
                .filter(|(k, _)| !RESOURCE_LABELS.contains(&k.as_str()))
                .map(|(k, v)| s(k, v))
                .collect();
            let start = start_ns(snap, pid, agent_start_ns);
            let m = by_pid
                .entry(pid)
                .or_default()
                .entry(fam.name)
                .or_insert_with(|| empty_metric(fam));
            push_point(m, &fam.kind, attributes, value, start, now);
        }
    }
    let scope = InstrumentationScope {
        name: "tracer".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    ExportMetricsServiceRequest {
        resource_metrics: by_pid
            .into_iter()
            .map(|(pid, metrics)| ResourceMetrics {
                resource: Some(resource(snap, pid)),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope.clone()),
                    metrics: metrics.into_values().collect(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

fn empty_metric(fam: &Family) -> Metric {
    let cumulative = AggregationTemporality::Cumulative as i32;
    let (unit, data) = match &fam.kind {
        Kind::Counter => (
            "",
            metric::Data::Sum(Sum {
                data_points: vec![],
                aggregation_temporality: cumulative,
                is_monotonic: true,
            }),
        ),
        Kind::Gauge => ("", metric::Data::Gauge(Gauge::default())),
        Kind::Histogram(_) => (
            "s",
            metric::Data::Histogram(Histogram {
                data_points: vec![],
                aggregation_temporality: cumulative,
            }),
        ),
    };
    let unit = if fam.name.ends_with("_bytes") {
        "By"
    } else if fam.name.ends_with("_seconds") {
        "s"
    } else {
        unit
    };
    Metric {
        name: fam.name.to_string(),
        description: fam.help.to_string(),
        unit: unit.to_string(),
        data: Some(data),
        ..Default::default()
    }
}

fn push_point(
    m: &mut Metric,
    kind: &Kind,
    attributes: Vec<KeyValue>,
    value: &Value,
    start: u64,
    now: u64,
) {
    let number = match value {
        Value::Int(n) => Some(number_data_point::Value::AsInt(
            i64::try_from(*n).unwrap_or(i64::MAX),
        )),
        Value::Float(x) => Some(number_data_point::Value::AsDouble(*x)),
        Value::Hist { .. } => None,
    };
    let point = |attributes| NumberDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: number,
        ..Default::default()
    };
    match (&mut m.data, kind, value) {
        (Some(metric::Data::Sum(s)), _, _) => s.data_points.push(point(attributes)),
        (Some(metric::Data::Gauge(g)), _, _) => g.data_points.push(point(attributes)),
        (
            Some(metric::Data::Histogram(h)),
            Kind::Histogram(bounds),
            Value::Hist { counts, sum },
        ) => {
            h.data_points.push(HistogramDataPoint {
                attributes,
                start_time_unix_nano: start,
                time_unix_nano: now,
                count: counts.iter().sum(),
                sum: Some(*sum),
                bucket_counts: counts.clone(),
                explicit_bounds: bounds.clone(),
                ..Default::default()
            });
        }
        _ => {}
    }
}

/// One way of sending a request.
enum Sender {
    Grpc(MetricsServiceClient<tonic::transport::Channel>),
    /// Boxed: the client is much larger than the gRPC one.
    Http(Box<HttpSender>),
}

struct HttpSender {
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
    uri: http::Uri,
}

impl Sender {
    fn new(opts: &OtlpOptions) -> Result<Self> {
        let uri = check_endpoint(opts)?;
        Ok(match opts.protocol {
            Protocol::Grpc => {
                // Lazy: a collector that is down at start is retried, not fatal.
                let channel = tonic::transport::Endpoint::from(uri)
                    .connect_timeout(opts.timeout)
                    .timeout(opts.timeout)
                    .connect_lazy();
                Sender::Grpc(MetricsServiceClient::new(channel))
            }
            Protocol::Http => {
                let mut conn = hyper_util::client::legacy::connect::HttpConnector::new();
                conn.set_connect_timeout(Some(opts.timeout));
                Sender::Http(Box::new(HttpSender {
                    client: hyper_util::client::legacy::Client::builder(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .build(conn),
                    uri,
                }))
            }
        })
    }

    async fn send(&mut self, req: ExportMetricsServiceRequest) -> Result<()> {
        match self {
            Sender::Grpc(c) => {
                c.export(req).await.context("OTLP/gRPC export")?;
            }
            Sender::Http(h) => {
                let HttpSender { client, uri } = h.as_ref();
                let body = http_body_util::Full::new(bytes::Bytes::from(req.encode_to_vec()));
                let r = http::Request::post(uri.clone())
                    .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                    .body(body)
                    .context("building the OTLP/HTTP request")?;
                let resp = client.request(r).await.context("OTLP/HTTP export")?;
                if !resp.status().is_success() {
                    bail!("OTLP/HTTP export: collector answered {}", resp.status());
                }
            }
        }
        Ok(())
    }
}

/// Wait after `failures` consecutive failures: interval × 2^failures, capped.
pub fn backoff(interval: Duration, failures: u32) -> Duration {
    interval
        .saturating_mul(1u32 << failures.min(16))
        .min(MAX_BACKOFF.max(interval))
}

/// Pushes `hub`'s snapshot every interval until `stop` fires.
pub async fn run(
    hub: Hub,
    opts: OtlpOptions,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    let mut sender = Sender::new(&opts)?;
    let agent_start = hub.info().started_unix_ns;
    let mut tick = tokio::time::interval(opts.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut failures = 0u32;
    let mut next_try = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
        if Instant::now() < next_try {
            // Backing off: this interval's export is not sent.
            DROPPED.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let snap = hub.snapshot();
        let req = request(&snap, &all_families(&snap, opts.top_sites), agent_start);
        let sent = tokio::time::timeout(opts.timeout, sender.send(req)).await;
        match sent {
            Ok(Ok(())) => {
                if failures > 0 {
                    tracing::info!("OTLP export to {} works again", opts.endpoint);
                }
                failures = 0;
                EXPORTED.fetch_add(1, Ordering::Relaxed);
            }
            err => {
                DROPPED.fetch_add(1, Ordering::Relaxed);
                let wait = backoff(opts.interval, failures);
                failures = failures.saturating_add(1);
                next_try = Instant::now() + wait;
                let msg = match err {
                    Ok(Err(e)) => format!("{e:#}"),
                    _ => format!("no answer within {:?}", opts.timeout),
                };
                // Once per outage at WARN, then at DEBUG.
                if failures == 1 {
                    tracing::warn!(
                        "OTLP export to {} failed: {msg}; backing off",
                        opts.endpoint
                    );
                } else {
                    tracing::debug!("OTLP export failed again ({failures}): {msg}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::synthetic::{lock, process, report, site};

    fn snap() -> NodeSnapshot {
        let mut p = process(10, "svc", Default::default());
        p.labels.pod_name = Some("web-1".into());
        p.labels.namespace = Some("prod".into());
        p.labels.container_id = Some("0123456789abcdef".into());
        NodeSnapshot {
            node: "n1".into(),
            taken_unix_ns: 2_000,
            processes: vec![p],
            reports: vec![report(
                10,
                vec![lock(
                    "0x1",
                    "mutex",
                    site("main.a", "/src/a.go", 1),
                    &[5_000, 3_000_000],
                )],
                vec![],
                vec![],
            )],
            ..Default::default()
        }
    }

    fn attr<'a>(r: &'a Resource, k: &str) -> Option<&'a any_value::Value> {
        r.attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.as_ref()?.value.as_ref())
    }

    #[test]
    fn one_resource_per_process_with_its_attributes() {
        let snap = snap();
        let req = request(&snap, &all_families(&snap, 50), 1_000);
        let proc_rm = req
            .resource_metrics
            .iter()
            .find(|rm| {
                rm.resource
                    .as_ref()
                    .is_some_and(|r| attr(r, "process.pid").is_some())
            })
            .expect("process resource");
        let r = proc_rm.resource.as_ref().expect("resource");
        assert_eq!(
            attr(r, "process.pid"),
            Some(&any_value::Value::IntValue(10))
        );
        for (k, v) in [
            ("host.name", "n1"),
            ("process.executable.name", "svc"),
            ("k8s.pod.name", "web-1"),
            ("k8s.namespace.name", "prod"),
            ("container.id", "0123456789abcdef"),
        ] {
            assert_eq!(
                attr(r, k),
                Some(&any_value::Value::StringValue(v.into())),
                "{k}"
            );
        }
        let m = &proc_rm.scope_metrics[0].metrics;
        let wait = m
            .iter()
            .find(|m| m.name == "tracer_lock_wait_seconds")
            .expect("lock waits");
        let Some(metric::Data::Histogram(h)) = &wait.data else {
            panic!("histogram expected: {wait:?}");
        };
        let p = &h.data_points[0];
        assert_eq!(p.count, 2);
        assert_eq!(p.bucket_counts.len(), p.explicit_bounds.len() + 1);
        assert_eq!(p.bucket_counts.iter().sum::<u64>(), 2);
        assert!((p.sum.unwrap_or(0.0) - 3.005e-3).abs() < 1e-12);
        assert!(p.attributes.iter().any(|a| a.key == "site"));
        assert!(
            !p.attributes.iter().any(|a| a.key == "pid"),
            "pid is a resource attribute"
        );
        // The agent's own metrics sit on the node resource.
        let node = req
            .resource_metrics
            .iter()
            .find(|rm| {
                rm.resource
                    .as_ref()
                    .is_some_and(|r| attr(r, "process.pid").is_none())
            })
            .expect("node resource");
        assert!(
            node.scope_metrics[0]
                .metrics
                .iter()
                .any(|m| m.name == "tracer_agent_events_lost")
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let i = Duration::from_secs(1);
        assert_eq!(backoff(i, 0), i);
        assert_eq!(backoff(i, 3), Duration::from_secs(8));
        assert_eq!(backoff(i, 30), MAX_BACKOFF);
    }

    #[test]
    fn endpoints_are_checked() {
        let o = |e: &str, p| OtlpOptions {
            endpoint: e.into(),
            protocol: p,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            top_sites: 50,
        };
        assert!(check_endpoint(&o("127.0.0.1:4317", Protocol::Grpc)).is_err());
        assert!(check_endpoint(&o("https://x:4317", Protocol::Grpc)).is_err());
        assert_eq!(
            check_endpoint(&o("http://x:4318", Protocol::Http))
                .expect("ok")
                .path(),
            "/v1/metrics"
        );
    }
}
