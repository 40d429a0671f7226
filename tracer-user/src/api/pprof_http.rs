//! `GET /debug/pprof/{mutex,block,maps}?pid=P[&seconds=S]` on the agent's HTTP
//! port, so `go tool pprof http://HOST:PORT/debug/pprof/block?pid=P` works as
//! with net/http/pprof. Without `seconds` the profile is cumulative since the
//! process was first traced; with it, the difference between the agent's
//! snapshots at the start and the end of the window.

use std::time::Duration;

use axum::{
    extract::{Path, RawQuery, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::agent::hub::{Hub, NodeSnapshot};
use crate::export::{Kind, Samples, pprof};
use crate::report::Report;

/// Longest window a request may hold a connection for.
pub const MAX_SECONDS: u64 = 300;
/// Longest query string looked at; real ones are a few dozen bytes.
const MAX_QUERY: usize = 256;

#[derive(Debug, PartialEq, Eq)]
pub struct Query {
    pub pid: u32,
    pub seconds: Option<u64>,
}

/// Parses `pid=P&seconds=S`; unknown keys are ignored (pprof clients may
/// add their own), repeated or malformed ones refused.
pub fn parse_query(q: Option<&str>) -> Result<Query, String> {
    let q = q.unwrap_or("");
    if q.len() > MAX_QUERY {
        return Err(format!("query longer than {MAX_QUERY} bytes"));
    }
    let (mut pid, mut seconds) = (None, None);
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "pid" => {
                if pid.is_some() {
                    return Err("pid given twice".into());
                }
                pid = Some(
                    v.parse::<u32>()
                        .ok()
                        .filter(|&p| p > 0)
                        .ok_or_else(|| format!("bad pid {v:?}: a process id is expected"))?,
                );
            }
            "seconds" => {
                if seconds.is_some() {
                    return Err("seconds given twice".into());
                }
                seconds = Some(
                    v.parse::<u64>()
                        .ok()
                        .filter(|s| (1..=MAX_SECONDS).contains(s))
                        .ok_or_else(|| {
                            format!("bad seconds {v:?}: a whole number from 1 to {MAX_SECONDS}")
                        })?,
                );
            }
            _ => {}
        }
    }
    Ok(Query {
        pid: pid.ok_or("pid=P is required (the process to profile)")?,
        seconds,
    })
}

fn text(code: StatusCode, msg: String) -> Response {
    (code, format!("{msg}\n")).into_response()
}

fn report_of(snap: &NodeSnapshot, pid: u32) -> Option<&Report> {
    snap.reports.iter().find(|r| r.target.pid == pid)
}

/// Samples of `pid` in the newest snapshot, or the status and text saying why not.
fn samples_now(
    hub: &Hub,
    pid: u32,
    kind: Kind,
) -> Result<(Samples, Report, u64), (StatusCode, String)> {
    let snap = hub.snapshot();
    let Some(report) = report_of(&snap, pid) else {
        return Err((
            StatusCode::NOT_FOUND,
            format!("pid {pid} is not traced by this agent"),
        ));
    };
    let s = Samples::of(report, kind).map_err(|why| {
        (
            StatusCode::NOT_FOUND,
            format!("no {} profile for pid {pid}: {why}", kind.name()),
        )
    })?;
    Ok((s, report.clone(), snap.taken_unix_ns))
}

pub async fn handler(
    State(hub): State<Hub>,
    Path(kind): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let Some(kind) = Kind::parse(&kind) else {
        return text(
            StatusCode::NOT_FOUND,
            format!("unknown profile {kind:?}: mutex, block or maps"),
        );
    };
    let q = match parse_query(q.as_deref()) {
        Ok(q) => q,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let (first, report, t0) = match samples_now(&hub, q.pid, kind) {
        Ok(v) => v,
        Err((code, msg)) => return text(code, msg),
    };
    let (samples, report, time_ns, span_ns) = match q.seconds {
        None => {
            let span = report.duration_ns;
            (first, report, t0.saturating_sub(span), span)
        }
        Some(secs) => {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let (last, report, t1) = match samples_now(&hub, q.pid, kind) {
                Ok(v) => v,
                Err((code, msg)) => return text(code, msg),
            };
            (last.since(&first), report, t0, t1.saturating_sub(t0))
        }
    };
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let profile = samples.to_profile(report.image.as_ref(), clamp(time_ns), clamp(span_ns));
    match pprof::encode_gz(&profile) {
        Ok(body) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{}-{}.pb.gz\"", q.pid, kind.name()),
                ),
            ],
            body,
        )
            .into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_bounded_and_checked() {
        assert_eq!(
            parse_query(Some("pid=42")),
            Ok(Query {
                pid: 42,
                seconds: None
            })
        );
        assert_eq!(
            parse_query(Some("seconds=5&pid=42&debug=0")),
            Ok(Query {
                pid: 42,
                seconds: Some(5)
            })
        );
        for bad in [
            None,
            Some(""),
            Some("pid="),
            Some("pid=0"),
            Some("pid=-1"),
            Some("pid=99999999999"),
            Some("pid=1&pid=2"),
            Some("pid=1&seconds=0"),
            Some("pid=1&seconds=301"),
            Some("pid=1&seconds=1e3"),
            Some("pid=1&seconds=1&seconds=2"),
        ] {
            assert!(parse_query(bad).is_err(), "{bad:?}");
        }
        let long = format!("pid=1&x={}", "a".repeat(300));
        assert!(parse_query(Some(&long)).is_err());
    }
}
