//! Request validation: gRPC requests come from clients we do not control, so
//! every field is bounded and a bad one is rejected with `InvalidArgument`
//! naming the field, never clamped silently or allowed to cost unbounded work.

use std::time::Duration;

use tonic::Status;
use tracer_api::v1 as pb;

use crate::process::{Labels, Selector};

/// Entries per filter list.
pub const MAX_LIST: usize = 256;
/// Bytes per filter string.
pub const MAX_STRING: usize = 256;
/// A container id prefix must be at least this long to be specific.
pub const MIN_CONTAINER_PREFIX: usize = 12;
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
pub const MIN_INTERVAL_MS: u32 = 100;
pub const MAX_INTERVAL_MS: u32 = 3_600_000;
pub const DEFAULT_TOP_N: usize = 20;
pub const MAX_TOP_N: u32 = 1000;
pub const MIN_DEEP_MS: u32 = 100;
pub const MAX_DEEP_MS: u32 = 600_000;

fn invalid(msg: String) -> Status {
    Status::invalid_argument(msg)
}

/// Which processes a request is about; see `Filter` in the proto. The
/// matching is the agent's own [`Selector`]; a request has no exe list.
#[derive(Clone, Debug, Default)]
pub struct ProcFilter(Selector);

impl ProcFilter {
    /// Everything matches.
    pub fn all() -> Self {
        Self::default()
    }

    /// Validates a request's filter (absent: everything). Unknown pids are
    /// fine: the process may appear later.
    pub fn parse(f: Option<&pb::Filter>) -> Result<Self, Status> {
        let Some(f) = f else {
            return Ok(Self::all());
        };
        if f.pids.len() > MAX_LIST {
            return Err(invalid(format!(
                "filter.pids: {} entries, at most {MAX_LIST}",
                f.pids.len()
            )));
        }
        if let Some(p) = f.pids.iter().find(|p| **p == 0) {
            return Err(invalid(format!("filter.pids: pid {p} is not a process")));
        }
        let comms = strings("filter.comms", &f.comms)?;
        let containers = strings("filter.containers", &f.containers)?;
        if let Some(c) = containers.iter().find(|c| c.len() < MIN_CONTAINER_PREFIX) {
            return Err(invalid(format!(
                "filter.containers: {c:?} is shorter than {MIN_CONTAINER_PREFIX} characters; give the container id or a prefix of at least {MIN_CONTAINER_PREFIX}"
            )));
        }
        Ok(Self(Selector {
            pids: f.pids.clone(),
            comms,
            exes: Vec::new(),
            containers,
            pods: strings("filter.pods", &f.pods)?,
            namespaces: strings("filter.namespaces", &f.namespaces)?,
        }))
    }

    /// Whether a process (by pid, comm and labels) passes every non-empty list.
    pub fn matches(&self, pid: u32, comm: &str, labels: &Labels) -> bool {
        self.0.matches(pid, comm, "", labels)
    }
}

/// A bounded list of non-empty strings without control characters.
fn strings(field: &str, v: &[String]) -> Result<Vec<String>, Status> {
    if v.len() > MAX_LIST {
        return Err(invalid(format!(
            "{field}: {} entries, at most {MAX_LIST}",
            v.len()
        )));
    }
    for (i, s) in v.iter().enumerate() {
        if s.is_empty() {
            return Err(invalid(format!("{field}[{i}]: empty string")));
        }
        if s.len() > MAX_STRING {
            return Err(invalid(format!(
                "{field}[{i}]: {} bytes, at most {MAX_STRING}",
                s.len()
            )));
        }
        if s.chars().any(char::is_control) {
            return Err(invalid(format!("{field}[{i}]: control character")));
        }
    }
    Ok(v.to_vec())
}

/// A validated Watch request.
#[derive(Clone, Debug)]
pub struct WatchParams {
    pub filter: ProcFilter,
    pub interval: Duration,
    pub top_n: usize,
    pub sort: pb::SortKey,
}

pub fn watch(r: &pb::WatchRequest) -> Result<WatchParams, Status> {
    let interval = match r.interval_ms {
        0 => DEFAULT_INTERVAL,
        ms @ MIN_INTERVAL_MS..=MAX_INTERVAL_MS => Duration::from_millis(u64::from(ms)),
        ms => {
            return Err(invalid(format!(
                "interval_ms: {ms} is out of range (0 for 1000, or {MIN_INTERVAL_MS}..={MAX_INTERVAL_MS})"
            )));
        }
    };
    let top_n = match r.top_n {
        0 => DEFAULT_TOP_N,
        n @ 1..=MAX_TOP_N => n as usize,
        n => {
            return Err(invalid(format!(
                "top_n: {n} is out of range (0 for {DEFAULT_TOP_N}, or 1..={MAX_TOP_N})"
            )));
        }
    };
    let sort = pb::SortKey::try_from(r.sort)
        .map_err(|_| invalid(format!("sort: unknown SortKey value {}", r.sort)))?;
    Ok(WatchParams {
        filter: ProcFilter::parse(r.filter.as_ref())?,
        interval,
        top_n,
        sort,
    })
}

/// A validated StartDeepMapTrace request (the pid is checked against the
/// agent's processes by the server).
#[derive(Clone, Debug)]
pub struct DeepParams {
    pub pid: u32,
    pub duration: Duration,
    pub sites: Vec<String>,
}

pub fn deep(r: &pb::StartDeepMapTraceRequest) -> Result<DeepParams, Status> {
    if r.pid == 0 {
        return Err(invalid("pid: required (0 is not a process)".into()));
    }
    if !(MIN_DEEP_MS..=MAX_DEEP_MS).contains(&r.duration_ms) {
        return Err(invalid(format!(
            "duration_ms: {} is out of range ({MIN_DEEP_MS}..={MAX_DEEP_MS})",
            r.duration_ms
        )));
    }
    let sites = strings("sites", &r.sites)?;
    if let Some((i, s)) = sites
        .iter()
        .enumerate()
        .find(|(_, s)| s.chars().any(char::is_whitespace))
    {
        return Err(invalid(format!(
            "sites[{i}]: {s:?} contains whitespace; expected a package pattern such as main or example.com/svc/..."
        )));
    }
    Ok(DeepParams {
        pid: r.pid,
        duration: Duration::from_millis(u64::from(r.duration_ms)),
        sites,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(container: &str, pod: &str, ns: &str) -> Labels {
        Labels {
            container_id: Some(container.into()),
            pod_uid: Some("uid-1".into()),
            pod_name: Some(pod.into()),
            namespace: Some(ns.into()),
            container_name: None,
        }
    }

    #[test]
    fn watch_limits() {
        let ok = |interval_ms, top_n| {
            watch(&pb::WatchRequest {
                interval_ms,
                top_n,
                ..Default::default()
            })
        };
        let p = ok(0, 0).expect("defaults");
        assert_eq!((p.interval, p.top_n), (DEFAULT_INTERVAL, DEFAULT_TOP_N));
        assert_eq!(ok(100, 1000).expect("edges").top_n, 1000);
        assert!(ok(3_600_000, 1).is_ok());
        for (i, n, field) in [
            (99, 1, "interval_ms"),
            (3_600_001, 1, "interval_ms"),
            (1000, 1001, "top_n"),
        ] {
            let e = ok(i, n).expect_err("out of range");
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with(field), "{}", e.message());
        }
        let e = watch(&pb::WatchRequest {
            sort: 99,
            ..Default::default()
        })
        .expect_err("bad sort");
        assert!(e.message().starts_with("sort"), "{}", e.message());
    }

    #[test]
    fn filter_bounds() {
        let f = |filter: pb::Filter| ProcFilter::parse(Some(&filter));
        let e = f(pb::Filter {
            containers: vec!["abc".into()],
            ..Default::default()
        })
        .expect_err("short prefix");
        assert!(e.message().contains("filter.containers"), "{}", e.message());
        let e = f(pb::Filter {
            comms: vec!["x".repeat(257)],
            ..Default::default()
        })
        .expect_err("long");
        assert!(e.message().contains("filter.comms[0]"), "{}", e.message());
        let e = f(pb::Filter {
            pids: (1..=257).collect(),
            ..Default::default()
        })
        .expect_err("many");
        assert!(e.message().contains("filter.pids"), "{}", e.message());
        assert!(
            f(pb::Filter {
                pids: (1..=256).collect(),
                ..Default::default()
            })
            .is_ok()
        );
    }

    #[test]
    fn filter_matching() {
        let l = labels("0123456789abcdef", "web-1", "prod");
        let f = ProcFilter::parse(Some(&pb::Filter {
            containers: vec!["0123456789ab".into()],
            pods: vec!["uid-1".into()],
            namespaces: vec!["prod".into()],
            ..Default::default()
        }))
        .expect("valid");
        assert!(f.matches(1, "x", &l));
        assert!(!f.matches(1, "x", &labels("ffff56789abcdef", "web-1", "prod")));
        assert!(!f.matches(1, "x", &Labels::default()));
        let f = ProcFilter::parse(Some(&pb::Filter {
            pids: vec![7, 8],
            comms: vec!["svc".into()],
            ..Default::default()
        }))
        .expect("valid");
        assert!(f.matches(8, "svc", &Labels::default()));
        assert!(!f.matches(9, "svc", &Labels::default()));
        assert!(!f.matches(7, "other", &Labels::default()));
        assert!(ProcFilter::all().matches(1, "", &Labels::default()));
    }

    #[test]
    fn deep_limits() {
        let d = |pid, duration_ms, sites: Vec<&str>| {
            deep(&pb::StartDeepMapTraceRequest {
                pid,
                duration_ms,
                sites: sites.into_iter().map(String::from).collect(),
            })
        };
        assert!(d(5, 100, vec!["main"]).is_ok());
        for (r, field) in [
            (d(0, 1000, vec![]), "pid"),
            (d(5, 99, vec![]), "duration_ms"),
            (d(5, 600_001, vec![]), "duration_ms"),
            (d(5, 1000, vec!["a b"]), "sites[0]"),
            (d(5, 1000, vec![""]), "sites[0]"),
        ] {
            let e = r.expect_err(field);
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().starts_with(field), "{}", e.message());
        }
    }
}
