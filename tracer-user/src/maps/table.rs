//! Table output of the map feature: a warning block for findings (printed
//! before anything else) and the per-map rows.

use std::fmt::Write as _;

use super::report::{MapFinding, MapSiteReport};
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

/// Growth rows of sites whose maps never reached this many entries are left
/// out of the table.
const SMALL_MAP: u64 = 1024;

/// The map rows, one per call site and kind: operations (deep and budget
/// tiers) and growth. Keyed by site, not by map: a site usually touches many
/// maps, and small maps' addresses are reused after GC.
pub fn table(sites: &[MapSiteReport], limit: usize, out: &mut String) {
    // Growth of maps that never held many entries is allocation, not a
    // memory-growth suspect: such rows stay in the JSON but not in the table.
    let (shown, hidden): (Vec<&MapSiteReport>, Vec<&MapSiteReport>) = sites
        .iter()
        .partition(|s| s.kind != "grow" || s.max_len_at_growth.unwrap_or(0) >= SMALL_MAP);
    if !hidden.is_empty() {
        let _ = writeln!(
            out,
            "  {} site(s) growing maps that never held {SMALL_MAP}+ entries not shown (see --json-report)",
            hidden.len()
        );
    }
    if shown.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "{:<8} {:>9} {:>7} {:>9} {:>9}  MAP SITE",
        "MAP OP", "COUNT", "MAPS", "P50", "P99"
    );
    for s in shown.into_iter().take(limit) {
        let time = match (s.ns_p50, s.ns_p99) {
            (Some(p50), Some(p99)) => format!("{:>9} {:>9}", fmt_ns(p50), fmt_ns(p99)),
            _ => format!(
                "{:>19}",
                s.max_len_at_growth
                    .map_or("len ?".to_string(), |c| format!("max len {c}"))
            ),
        };
        let _ = writeln!(
            out,
            "{:<8} {:>9} {:>7} {time}  {}",
            s.kind, s.count, s.maps, s.site
        );
    }
}
