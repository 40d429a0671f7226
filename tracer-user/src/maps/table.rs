//! Table output of the map feature: a warning block for findings (printed
//! before anything else) and the per-map rows.

use std::fmt::Write as _;

use super::report::{MapFinding, MapReport};
use crate::{latency::fmt_ns, symbols::Site};

/// The warning block for map findings, printed before everything else.
pub fn findings_table(findings: &[&MapFinding], out: &mut String) {
    if findings.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "!!! WARNING: unsafe concurrent map use or runtime crash ({} finding{}) !!!",
        findings.len(),
        if findings.len() == 1 { "" } else { "s" }
    );
    let site = |s: &Option<Site>| s.as_ref().map_or("?".to_string(), |s| s.to_string());
    let gid = |g: Option<u64>| g.map_or("?".to_string(), |g| g.to_string());
    for f in findings {
        if f.message.is_some() {
            let _ = writeln!(
                out,
                "FINDING {}: goroutine {} died: fatal error: {} at {}",
                f.kind,
                gid(f.goroutine),
                f.message.as_deref().unwrap_or("?"),
                site(&f.site)
            );
            continue;
        }
        let (Some(a), Some(b)) = (&f.op, &f.other) else {
            continue;
        };
        if let Some(why) = &f.explanation {
            let _ = writeln!(
                out,
                "FINDING {} on map {} ({}x, {}): {} by goroutine {} at {} and {} by goroutine {} at {}\n  {}",
                f.kind,
                f.map.as_deref().unwrap_or("?"),
                f.count,
                if f.overlapped == Some(true) {
                    "overlapped"
                } else {
                    "unordered, not overlapping"
                },
                b.op,
                gid(b.goroutine),
                site(&b.site),
                a.op,
                gid(a.goroutine),
                site(&a.site),
                why
            );
            continue;
        }
        let _ = writeln!(
            out,
            "FINDING {} on map {} ({}x): {} by goroutine {} at {} overlapped {} by goroutine {} at {}",
            f.kind,
            f.map.as_deref().unwrap_or("?"),
            f.count,
            a.op,
            gid(a.goroutine),
            site(&a.site),
            b.op,
            gid(b.goroutine),
            site(&b.site)
        );
    }
}

/// Growth rows of maps that never reached this many entries are left out of the table.
const SMALL_MAP: u64 = 1024;

/// The map rows: operations (deep tier) and growth.
pub fn table(maps: &[MapReport], limit: usize, out: &mut String) {
    // Growth of a map that never held many entries is allocation, not a
    // memory-growth suspect (and small maps' addresses are reused after GC):
    // such rows stay in the JSON but not in the table.
    let (shown, hidden): (Vec<&MapReport>, Vec<&MapReport>) = maps
        .iter()
        .partition(|m| !m.ops.is_empty() || m.max_count_at_growth.unwrap_or(0) >= SMALL_MAP);
    if !hidden.is_empty() {
        let _ = writeln!(
            out,
            "  {} map(s) that grew but never held {SMALL_MAP}+ entries not shown (see --json-report)",
            hidden.len()
        );
    }
    if shown.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "{:<16} {:<8} {:>9} {:>9} {:>9} {:>7}  SITE",
        "MAP", "OP", "COUNT", "P50", "P99", "GOROUT"
    );
    for m in shown.into_iter().take(limit) {
        for o in &m.ops {
            let _ = writeln!(
                out,
                "{:<16} {:<8} {:>9} {:>9} {:>9} {:>7}  {}",
                m.address,
                o.kind,
                o.count,
                fmt_ns(o.ns_p50),
                fmt_ns(o.ns_p99),
                o.goroutines,
                o.top_sites
                    .first()
                    .map_or(String::new(), |s| s.site.to_string())
            );
        }
        if m.growth_events > 0 {
            let _ = writeln!(
                out,
                "{:<16} {:<8} {:>9} {:>29}  {}",
                m.address,
                "grow",
                m.growth_events,
                m.count_at_last_growth
                    .map_or("len ?".to_string(), |c| format!("len {c} at last")),
                m.growth_sites
                    .first()
                    .map_or(String::new(), |s| s.site.to_string())
            );
        }
    }
}
