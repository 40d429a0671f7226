//! The lock sections of the text table: stuck-wait findings and the rows per
//! lock and call site.

use std::fmt::Write as _;

use super::{
    report::{Finding, HolderReport, LockPauses, LockReport, RuntimeLockWait},
    stuck::MAX_STUCK_PER_PROCESS,
};
use crate::{latency::fmt_ns, symbols::at_site};

/// One line per stuck-wait finding, then how many were left out.
pub fn findings<'a>(findings: impl Iterator<Item = &'a Finding>, dropped: u64, out: &mut String) {
    for f in findings {
        let lock = f.lock.name.as_deref().unwrap_or(&f.lock.address);
        let _ = writeln!(
            out,
            "FINDING {}: goroutine {} {} on {} {} for {}{}",
            f.kind,
            f.goroutine.map_or("?".into(), |g| g.to_string()),
            if f.ongoing { "waiting" } else { "waited" },
            f.lock.kind,
            lock,
            fmt_ns(f.age_ns),
            at_site(f.site.as_ref())
        );
    }
    if dropped > 0 {
        let _ = writeln!(
            out,
            "  {dropped} more stuck lock wait(s) not listed (at most {MAX_STUCK_PER_PROCESS} kept per process)"
        );
    }
}

/// The lock table (rows, then holders), after a note on rate-guard pauses;
/// `limit` caps the rows shown.
pub fn table(
    locks: &[LockReport],
    holders: &[HolderReport],
    pauses: Option<&LockPauses>,
    runtime: &RuntimeLockWait,
    limit: usize,
    out: &mut String,
) {
    match (runtime.total_ns, &runtime.reason) {
        (Some(t), _) if t > 0 || runtime.probed_ns > 0 => {
            let _ = writeln!(
                out,
                "  Go runtime's own lock-wait total (/sync/mutex/wait/total:seconds, sampled by the runtime): {}; probed waits below: {}",
                fmt_ns(t),
                fmt_ns(runtime.probed_ns)
            );
        }
        (None, Some(why)) if runtime.probed_ns > 0 => {
            let _ = writeln!(out, "  Go runtime's own lock-wait total not read: {why}");
        }
        _ => {}
    }
    if let Some(p) = pauses {
        let _ = writeln!(
            out,
            "  lock probes paused {} time(s), {} in all: more than {} contended waits/s (--max-lock-rate); lock counts are lower bounds",
            p.pauses,
            fmt_ns(p.paused_ns),
            p.limit_per_sec
        );
    }
    if locks.is_empty() {
        let _ = writeln!(out, "no lock contention recorded");
        return;
    }
    // Wide enough for the longest lock name shown (global names can be long).
    let w = locks
        .iter()
        .take(limit)
        .map(|l| l.name.as_deref().unwrap_or(&l.address).len())
        .chain(
            holders
                .iter()
                .take(limit)
                .map(|h| h.name.as_deref().unwrap_or(&h.address).len()),
        )
        .max()
        .unwrap_or(0)
        .clamp(16, 48);
    let _ = writeln!(
        out,
        "{:<w$} {:<13} {:>11} {:>10} {:>9} {:>9} {:>9}  CALL SITE",
        "LOCK", "KIND", "CONTENTIONS", "TOTAL", "P50", "P99", "MAX"
    );
    for l in locks.iter().take(limit) {
        let _ = writeln!(
            out,
            "{:<w$} {:<13} {:>11} {:>10} {:>9} {:>9} {:>9}  {}",
            l.name.as_deref().unwrap_or(&l.address),
            l.kind,
            l.contentions,
            fmt_ns(l.wait_ns_total),
            fmt_ns(l.wait_ns_p50),
            fmt_ns(l.wait_ns_p99),
            fmt_ns(l.wait_ns_max),
            l.site
        );
    }
    if !holders.is_empty() {
        let _ = writeln!(out, "HOLDERS (unlocks that woke waiters)");
        for h in holders.iter().take(limit) {
            let _ = writeln!(
                out,
                "{:<w$} {:<13} {:>11}  {}",
                h.name.as_deref().unwrap_or(&h.address),
                h.kind,
                h.wakeups,
                h.site
            );
        }
    }
    if locks.len() > limit {
        let _ = writeln!(
            out,
            "... {} more rows (see --json-report)",
            locks.len() - limit
        );
    }
}
