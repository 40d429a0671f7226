//! Race findings of the happens-before detector: both accesses, and why no
//! synchronisation orders them, in words a Go developer can act on.

use serde::Serialize;

use super::{Goid, Tick, shadow::Record};
use crate::maps::report::{conflict_kind, op_name};

/// One side of a race.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AccessInfo {
    pub goid: Goid,
    /// `read`, `write`, `delete`, `iterate` or `clear`.
    pub op: &'static str,
    /// Call site (return address into user code; symbolized by the caller).
    pub site: u64,
    pub stack: Option<u32>,
    pub t_ns: u64,
    /// The goroutine's tick at the access.
    pub tick: Tick,
    /// Mutexes the goroutine held (addresses).
    pub held: Vec<u64>,
}

impl AccessInfo {
    fn from_record(r: &Record) -> Self {
        AccessInfo {
            goid: r.epoch.g,
            op: op_name(r.access.op),
            site: r.access.site,
            stack: r.access.stack,
            t_ns: r.t_ns,
            tick: r.epoch.tick,
            held: r.held.clone(),
        }
    }
}

/// Two accesses to one map, at least one a write, that no synchronisation
/// the probes saw orders. Repeats of the same pair of sites are counted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HbFinding {
    /// `concurrent_map_write`, `concurrent_map_read_write` or
    /// `concurrent_map_iteration_write`, as deep mode's overlap findings.
    pub kind: &'static str,
    pub map: u64,
    pub earlier: AccessInfo,
    pub later: AccessInfo,
    /// The later goroutine had synchronised with the earlier one's events up
    /// to this tick; the earlier access was at `earlier.tick`, after it.
    pub known_tick: Tick,
    /// Time from the earlier access to the later one (first occurrence).
    pub gap_ns: u64,
    /// Whether the two operations overlapped in time (known only when the
    /// earlier one's return was seen); otherwise they were only unordered.
    pub overlapped: Option<bool>,
    pub count: u64,
}

impl HbFinding {
    pub(super) fn new(earlier: &Record, later: &Record, known_tick: Tick) -> Self {
        HbFinding {
            kind: conflict_kind(earlier.access.op, later.access.op),
            map: later.access.map,
            earlier: AccessInfo::from_record(earlier),
            later: AccessInfo::from_record(later),
            known_tick,
            gap_ns: later.t_ns.saturating_sub(earlier.t_ns),
            overlapped: earlier.access.end_ns.map(|end| end > later.t_ns),
            count: 1,
        }
    }

    /// Why the accesses are unordered, in one sentence.
    pub fn explain(&self) -> String {
        let (a, b) = (&self.earlier, &self.later);
        let timing = match self.overlapped {
            Some(true) => "they overlapped in time".to_owned(),
            Some(false) | None => format!("{} apart, ordered by luck only", fmt_ns(self.gap_ns)),
        };
        let sync = if self.known_tick == 0 {
            format!(
                "goroutine {} never synchronised with goroutine {}",
                b.goid, a.goid
            )
        } else {
            format!(
                "goroutine {} last synchronised with goroutine {} before its {} (at its tick {}, the {} was at tick {})",
                b.goid, a.goid, a.op, self.known_tick, a.op, a.tick
            )
        };
        let common: Vec<&u64> = a.held.iter().filter(|l| b.held.contains(l)).collect();
        let locks = if !common.is_empty() {
            // Cannot happen for real locks: a common held lock orders them.
            "both held a lock the probes saw, yet no release reached the later one".to_owned()
        } else {
            match (a.held.first(), b.held.first()) {
                (Some(l), None) => format!(
                    "goroutine {} held mutex {l:#x}, goroutine {} held none",
                    a.goid, b.goid
                ),
                (None, Some(l)) => format!(
                    "goroutine {} held mutex {l:#x}, goroutine {} held none",
                    b.goid, a.goid
                ),
                (Some(_), Some(_)) => "no common lock".to_owned(),
                (None, None) => "neither held a lock".to_owned(),
            }
        };
        format!(
            "{} by goroutine {} and {} by goroutine {}: {timing}; {sync}; {locks}",
            a.op, a.goid, b.op, b.goid
        )
    }
}

fn fmt_ns(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.1} µs", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} ms", ns as f64 / 1e6),
        _ => format!("{:.1} s", ns as f64 / 1e9),
    }
}
