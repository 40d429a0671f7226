//! Turns the map feature's kernel records into report rows and findings.
//!
//! Over 600 lines with its unit tests (the code is about 680): the row and
//! finding builders share the symbolised call sites and stay in one place.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::Result;
use serde::Serialize;
use tracer_common::maps::{
    LOST_CONFLICT, LOST_FATAL, LOST_GROWTH, LOST_HB, LOST_OPS, LOST_SYNC_MAP, OP_CLEAR, OP_DELETE,
    OP_ITERATE, OP_READ, OP_WRITE, is_write,
};

use super::{
    MapsMode,
    probes::MapProbes,
    read::{self, Fatal, Stacks},
};
use crate::{
    ebpf::Tracer,
    gobin::GoBinary,
    symbols::{Site, Symbolizer, bias_from_entry_frame},
};

/// Rows kept in the JSON report, most active maps first.
const MAX_MAPS: usize = 200;
/// Call sites kept per row.
const TOP_SITES: usize = 5;

/// Frames of the map implementation itself, skipped to reach the call site.
fn is_map_machinery(function: &str) -> bool {
    const PREFIXES: [&str; 4] = ["runtime.", "internal/runtime/", "sync.", "internal/sync."];
    PREFIXES.iter().any(|p| function.starts_with(p))
}

pub fn op_name(kind: u32) -> &'static str {
    match kind {
        OP_READ => "read",
        OP_WRITE => "write",
        OP_DELETE => "delete",
        OP_ITERATE => "iterate",
        OP_CLEAR => "clear",
        _ => "unknown",
    }
}

/// Finding kind for two overlapping operations (one of them is a write).
pub fn conflict_kind(a: u32, b: u32) -> &'static str {
    match (is_write(a), is_write(b)) {
        (true, true) => "concurrent_map_write",
        _ if a == OP_ITERATE || b == OP_ITERATE => "concurrent_map_iteration_write",
        _ => "concurrent_map_read_write",
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SiteCount {
    pub site: Site,
    pub count: u64,
}

/// One kind of operation on one map (deep tier).
#[derive(Clone, Debug, Serialize)]
pub struct OpReport {
    pub kind: &'static str,
    pub count: u64,
    pub ns_total: u64,
    pub ns_p50: u64,
    pub ns_p99: u64,
    pub ns_max: u64,
    pub goroutines: usize,
    pub top_sites: Vec<SiteCount>,
    /// Operation time, log-linear buckets (empty buckets omitted).
    pub histogram: Vec<crate::latency::Bucket>,
    /// Operations per full stack, for pprof profiles (not in the JSON).
    #[serde(skip)]
    pub stacks: Vec<crate::symbols::StackCount>,
}

/// One map of the traced process.
#[derive(Clone, Debug, Serialize)]
pub struct MapReport {
    pub pid: u32,
    /// The map header's address (`*hmap` or Swiss `*maps.Map`), hex.
    pub address: String,
    /// Operations by kind; empty unless `--maps deep`.
    pub ops: Vec<OpReport>,
    /// Distinct goroutines that operated on the map (deep tier).
    pub goroutines: usize,
    pub growth_events: u64,
    /// Element count at the latest growth; null when unreadable.
    pub count_at_last_growth: Option<u64>,
    /// Largest element count seen at a growth.
    pub max_count_at_growth: Option<u64>,
    /// Where growths (always tier) came from, most first.
    pub growth_sites: Vec<SiteCount>,
}

/// One side of an overlap.
#[derive(Clone, Debug, Serialize)]
pub struct OpSideReport {
    pub op: &'static str,
    pub goroutine: Option<u64>,
    pub site: Option<Site>,
    pub stack: Vec<Site>,
}

/// Map use per call site: what the human table shows, since a site usually
/// touches many maps and map addresses are reused after GC.
#[derive(Clone, Debug, Serialize)]
pub struct MapSiteReport {
    pub pid: u32,
    pub site: Site,
    /// An operation kind (`read`, `write`, `delete`, `iterate`, `clear`;
    /// deep and budget tiers) or `grow` (always tier).
    pub kind: &'static str,
    /// Operations, or growths.
    pub count: u64,
    /// Distinct map addresses (an address reused after GC counts once).
    pub maps: usize,
    /// Operation time, ns, over every map of the site (operations only).
    pub ns_p50: Option<u64>,
    pub ns_p99: Option<u64>,
    /// Largest element count seen at a growth (`grow` only; null when
    /// unreadable).
    pub max_len_at_growth: Option<u64>,
}

/// One (process, kind, site) row being summed.
#[derive(Default)]
struct SiteAcc {
    lat: crate::latency::Latency,
    count: u64,
    maps: HashSet<u64>,
    max_len: Option<u64>,
}

/// Rows kept per report, most active sites first.
const MAX_SITES: usize = 200;

fn site_rows(acc: BTreeMap<(u32, &'static str, Site), SiteAcc>) -> Vec<MapSiteReport> {
    let mut rows: Vec<MapSiteReport> = acc
        .into_iter()
        .map(|((pid, kind, site), a)| {
            let grow = kind == "grow";
            MapSiteReport {
                pid,
                site,
                kind,
                count: a.count,
                maps: a.maps.len(),
                ns_p50: (!grow).then(|| a.lat.quantile(0.50)),
                ns_p99: (!grow).then(|| a.lat.quantile(0.99)),
                max_len_at_growth: a.max_len,
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.site.cmp(&b.site))
            .then(a.kind.cmp(b.kind))
    });
    rows.truncate(MAX_SITES);
    rows
}

/// A map problem: a fatal runtime error, or overlapping accesses.
#[derive(Clone, Debug, Serialize)]
pub struct MapFinding {
    /// `map_fatal` (a fatal error about a map), `runtime_fatal` (any other
    /// fatal runtime error), `concurrent_map_write`, `concurrent_map_read_write`
    /// or `concurrent_map_iteration_write`.
    pub kind: &'static str,
    pub pid: u32,
    /// The map's address (overlaps only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub map: Option<String>,
    /// The runtime's message (`map_fatal` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Crashing goroutine (`map_fatal`), or the operation that started second.
    pub goroutine: Option<u64>,
    pub site: Option<Site>,
    pub stack: Vec<Site>,
    /// The operation that started second (overlaps only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<OpSideReport>,
    /// The operation already in flight (overlaps), or the earlier of two
    /// unordered accesses (happens-before).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other: Option<OpSideReport>,
    /// How it was found: `runtime` (a fatal error), `overlap` (deep mode's
    /// in-flight check) or `happens_before` (no synchronisation the probes
    /// saw ordered the two accesses).
    pub detection: &'static str,
    /// Happens-before findings: whether the in-flight check also saw the
    /// two call sites overlap (otherwise they were only unordered).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlapped: Option<bool>,
    /// Happens-before findings: the synchronisation gap, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub explanation: Option<String>,
    pub count: u64,
    /// ns since tracing started.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
}

impl MapFinding {
    /// The runtime's fatal error `message` in goroutine `goroutine` of
    /// `pid`, at the first frame of `stack`, `at_ns` since tracing began.
    /// Only the map checks' messages mention maps; other fatal errors
    /// (deadlock, out of memory) are `runtime_fatal`.
    pub fn fatal(
        pid: u32,
        message: &str,
        goroutine: Option<u64>,
        stack: Vec<Site>,
        at_ns: u64,
    ) -> Self {
        MapFinding {
            kind: if message.contains("map") {
                "map_fatal"
            } else {
                "runtime_fatal"
            },
            pid,
            map: None,
            message: Some(message.to_owned()),
            goroutine,
            site: stack.first().cloned(),
            stack,
            op: None,
            other: None,
            detection: "runtime",
            overlapped: None,
            explanation: None,
            count: 1,
            first_seen_ns: at_ns,
            last_seen_ns: at_ns,
        }
    }
}

/// Records the kernel could not keep; never dropped silently.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MapsLost {
    pub fatal_events: u64,
    pub overlaps: u64,
    pub growth_events: u64,
    pub ops: u64,
    /// sync.Map calls not counted (`--maps deep`).
    pub sync_map_calls: u64,
    /// Happens-before events the kernel ring had no room for; each loss
    /// restarts the detector (`happens_before.restarts`).
    pub happens_before_events: u64,
    /// Size of the deep tier's operation table (one entry per process,
    /// operation kind, map, call site and stack).
    pub ops_table_entries: u32,
    /// When the operation table was first seen full, ns after tracing began
    /// (deep and budget modes, looked at every 250 ms); None if it never was.
    pub ops_table_full_after_ns: Option<u64>,
}

impl MapsLost {
    /// One line per kind of loss for the human report: what was lost, the
    /// share of what was seen where it is known, and what it means for the
    /// numbers shown. `ops_counted` is the operations the table did count.
    pub fn warnings(&self, ops_counted: u64) -> Vec<String> {
        let mut out = Vec::new();
        if self.ops > 0 {
            let seen = self.ops + ops_counted;
            let when = match self.ops_table_full_after_ns {
                Some(t) if t < 10_000_000_000 => format!(
                    " {:.0} ms after tracing began (later operations count only on rows made by then)",
                    t as f64 / 1e6
                ),
                Some(t) => format!(" {:.1} s after tracing began", t as f64 / 1e9),
                None => String::new(),
            };
            out.push(format!(
                "maps: {} of {} map operations seen ({:.1}%) were not counted: the operation \
                 table ({} entries: process, map, site, stack) was full{when}; operation counts \
                 below are lower bounds, and overlaps are still detected",
                self.ops,
                seen,
                100.0 * self.ops as f64 / seen as f64,
                self.ops_table_entries,
            ));
        }
        let tables = [
            (
                self.overlaps,
                "overlapping accesses (findings' counts are lower bounds)",
            ),
            (self.fatal_events, "fatal-error events (ring buffer full)"),
            (
                self.growth_events,
                "map growth events (growth counts are lower bounds)",
            ),
            (
                self.sync_map_calls,
                "sync.Map calls (call counts are lower bounds)",
            ),
            (
                self.happens_before_events,
                "happens-before events (the detector restarted after each gap)",
            ),
        ];
        for (n, what) in tables {
            if n > 0 {
                out.push(format!(
                    "maps: {n} {what} not recorded: a kernel table was full"
                ));
            }
        }
        out
    }
}

/// What the happens-before detector saw and what its bounds cost (deep mode).
#[derive(Clone, Debug, Default, Serialize)]
pub struct HappensBefore {
    /// Synchronisation probes placed, and inlined copies left without one.
    pub sync_probes: usize,
    pub unresolved_inlined: usize,
    pub stream: super::hb::stream::StreamStats,
    pub detector: super::hb::Stats,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct MapsReport {
    pub mode: &'static str,
    pub maps: Vec<MapReport>,
    /// The same use per call site.
    pub sites: Vec<MapSiteReport>,
    pub findings: Vec<MapFinding>,
    pub lost: MapsLost,
    /// Map operations counted (deep tier): each was two probe hits.
    pub op_hits: u64,
    /// sync.Map instances and their call mix (deep tier).
    pub sync_maps: Vec<super::syncmap::SyncMapReport>,
    /// The happens-before detector's counters; absent outside deep mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub happens_before: Option<HappensBefore>,
    /// What the budgeted tier probed and spent; absent outside budget mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub race_budget: Option<super::budget::BudgetReport>,
}

impl MapsReport {
    /// Keeps the rows and findings of `pid` only (one object may record
    /// several processes of the same binary).
    pub fn only_pid(mut self, pid: u32) -> Self {
        self.maps.retain(|m| m.pid == pid);
        self.sites.retain(|m| m.pid == pid);
        self.findings.retain(|f| f.pid == pid);
        self.sync_maps.retain(|m| m.pid == pid);
        self
    }
}

/// Symbolizes map records of one process.
struct Sym<'a> {
    sym: Symbolizer<'a>,
    stacks: Stacks<'a>,
}

impl Sym<'_> {
    /// Stack from the call site outward (map machinery skipped), at most 16 frames.
    fn frames(&self, caller_pc: u64, stack_id: i64) -> Vec<Site> {
        let stack = self.stacks.get(stack_id);
        let all = self.sym.sites(caller_pc, stack.as_deref());
        let first = all
            .iter()
            .position(|s| !is_map_machinery(&s.function))
            .unwrap_or(0);
        all.into_iter().skip(first).take(16).collect()
    }

    /// The whole stack from the call site outward, grouped by address (pprof).
    fn grouped(&self, caller_pc: u64, stack_id: i64) -> Vec<crate::symbols::PcFrame> {
        let stack = self.stacks.get(stack_id);
        let grouped = self.sym.pc_stack(caller_pc, stack.as_deref());
        let (_, first) = crate::symbols::flat_stack(&grouped, is_map_machinery);
        crate::symbols::trim_lines(grouped, first)
    }

    fn site(&self, caller_pc: u64, stack_id: i64) -> Option<Site> {
        self.frames(caller_pc, stack_id).into_iter().next()
    }
}

/// A PIE's load bias from the first stack whose frame 0 is a probed entry.
fn bias(
    bin: &GoBinary,
    probes: &MapProbes,
    stacks: &Stacks<'_>,
    recs: impl Iterator<Item = (u32, i64)>,
) -> u64 {
    if !bin.is_pie() {
        return 0;
    }
    for (cookie, stack_id) in recs {
        let Some(entry) = probes.entry_of(cookie) else {
            continue;
        };
        if let Some(f0) = stacks.get(stack_id).and_then(|s| s.first().copied()) {
            return bias_from_entry_frame(f0, entry);
        }
    }
    0
}

fn top(sites: BTreeMap<Site, u64>) -> Vec<SiteCount> {
    let mut v: Vec<SiteCount> = sites
        .into_iter()
        .map(|(site, count)| SiteCount { site, count })
        .collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then(a.site.cmp(&b.site)));
    v.truncate(TOP_SITES);
    v
}

/// One operation kind of one map: latency, counts per call site, stacks.
type OpAcc = (
    crate::latency::Latency,
    BTreeMap<Site, u64>,
    Vec<crate::symbols::StackCount>,
);

#[derive(Default)]
struct MapAcc {
    ops: BTreeMap<u32, OpAcc>,
    goroutines: HashMap<u32, HashSet<u64>>,
    growth_events: u64,
    last: Option<(u64, u64)>,
    max_count: Option<u64>,
    growth_sites: BTreeMap<Site, u64>,
}

pub fn build(
    tracer: &Tracer,
    bin: &GoBinary,
    probes: &MapProbes,
    fatals: &[Fatal],
    start_mono: u64,
    mode: MapsMode,
    hb: Option<&super::hb::HbStream>,
) -> Result<MapsReport> {
    let stacks = Stacks::new(tracer);
    let growth = read::growth(tracer)?;
    let ops = read::ops(tracer)?;
    let conflicts = read::conflicts(tracer)?;
    let gs = read::goroutines(tracer)?;
    let lost = read::lost(tracer)?;
    let b = bias(
        bin,
        probes,
        &stacks,
        growth
            .iter()
            .map(|(k, _)| (k.cookie, k.stack_id))
            .chain(ops.iter().map(|(k, _)| (k.kind, k.stack_id)))
            .chain(fatals.iter().map(|f| (f.cookie, f.stack_id))),
    );
    let sym = Sym {
        sym: Symbolizer { bin, bias: b },
        stacks,
    };
    let rel = |t: u64| t.saturating_sub(start_mono);

    let mut maps: BTreeMap<(u32, u64), MapAcc> = BTreeMap::new();
    let mut sites: BTreeMap<(u32, &'static str, Site), SiteAcc> = BTreeMap::new();
    for (k, s) in &growth {
        let acc = maps.entry((k.tgid, k.map)).or_default();
        acc.growth_events += s.events;
        if s.last_count != u64::MAX && acc.last.is_none_or(|(t, _)| s.last_ns >= t) {
            acc.last = Some((s.last_ns, s.last_count));
        }
        if s.last_count != u64::MAX {
            acc.max_count = Some(acc.max_count.unwrap_or(0).max(s.max_count));
        }
        let site = sym
            .site(k.caller_pc, k.stack_id)
            .unwrap_or_else(|| unknown(k.caller_pc));
        let by_site = sites.entry((k.tgid, "grow", site.clone())).or_default();
        by_site.count += s.events;
        by_site.maps.insert(k.map);
        if s.last_count != u64::MAX {
            by_site.max_len = Some(by_site.max_len.unwrap_or(0).max(s.max_count));
        }
        *acc.growth_sites.entry(site).or_default() += s.events;
    }
    let mut op_hits = 0;
    for (k, lat) in &ops {
        op_hits += lat.count;
        let acc = maps.entry((k.tgid, k.lock_addr)).or_default();
        let e = acc.ops.entry(k.kind & 0xff).or_default();
        e.0.merge(lat);
        let frames = sym.grouped(k.caller_pc, k.stack_id);
        let site = frames
            .first()
            .and_then(|f| f.lines.first().cloned())
            .unwrap_or_else(|| unknown(k.caller_pc));
        let by_site = sites
            .entry((k.tgid, op_name(k.kind & 0xff), site.clone()))
            .or_default();
        by_site.lat.merge(lat);
        by_site.count += lat.count;
        by_site.maps.insert(k.lock_addr);
        *e.1.entry(site).or_default() += lat.count;
        e.2.push(crate::symbols::StackCount {
            frames,
            count: lat.count,
            total_ns: lat.total_ns,
        });
    }
    for w in &gs {
        if let Some(acc) = maps.get_mut(&(w.tgid, w.lock_addr)) {
            acc.goroutines.entry(w.kind).or_default().insert(w.g);
        }
    }
    let mut rows: Vec<MapReport> = maps
        .into_iter()
        .map(|((pid, addr), acc)| {
            let all_gs: HashSet<u64> = acc.goroutines.values().flatten().copied().collect();
            MapReport {
                pid,
                address: format!("{addr:#x}"),
                ops: acc
                    .ops
                    .into_iter()
                    .map(|(kind, (lat, sites, stacks))| OpReport {
                        kind: op_name(kind),
                        count: lat.count,
                        ns_total: lat.total_ns,
                        ns_p50: lat.quantile(0.50),
                        ns_p99: lat.quantile(0.99),
                        ns_max: lat.max_ns,
                        goroutines: acc.goroutines.get(&kind).map_or(0, HashSet::len),
                        histogram: lat.buckets(),
                        top_sites: top(sites),
                        stacks,
                    })
                    .collect(),
                goroutines: all_gs.len(),
                growth_events: acc.growth_events,
                count_at_last_growth: acc.last.map(|(_, c)| c),
                max_count_at_growth: acc.max_count,
                growth_sites: top(acc.growth_sites),
            }
        })
        .collect();
    let activity = |r: &MapReport| r.ops.iter().map(|o| o.count).sum::<u64>() + r.growth_events;
    rows.sort_by(|a, b| {
        activity(b)
            .cmp(&activity(a))
            .then(a.address.cmp(&b.address))
    });
    rows.truncate(MAX_MAPS);

    let mut findings: Vec<MapFinding> = fatals
        .iter()
        .map(|f| {
            let stack = sym.frames(f.caller_pc, f.stack_id);
            MapFinding::fatal(f.tgid, &f.message, f.goid, stack, rel(f.ktime_ns))
        })
        .collect();

    // Dedupe overlaps by (map, kind, unordered call-site pair).
    let mut merged: BTreeMap<(u32, u64, &'static str, Site, Site), MapFinding> = BTreeMap::new();
    for (k, s) in &conflicts {
        let kind = conflict_kind(k.kind_a, k.kind_b);
        let side = |op: u32, pc: u64, st: i64, goid: u64| {
            let stack = sym.frames(pc, st);
            OpSideReport {
                op: op_name(op),
                goroutine: (goid != u64::MAX).then_some(goid),
                site: stack.first().cloned(),
                stack,
            }
        };
        let a = side(k.kind_a, k.pc_a, k.stack_a, s.goid_a);
        let bside = side(k.kind_b, k.pc_b, k.stack_b, s.goid_b);
        let sa = a.site.clone().unwrap_or_else(|| unknown(k.pc_a));
        let sb = bside.site.clone().unwrap_or_else(|| unknown(k.pc_b));
        let (lo, hi) = if sa <= sb { (sa, sb) } else { (sb, sa) };
        let f = merged
            .entry((k.tgid, k.map, kind, lo, hi))
            .or_insert_with(|| MapFinding {
                kind,
                pid: k.tgid,
                map: Some(format!("{:#x}", k.map)),
                message: None,
                goroutine: a.goroutine,
                site: a.site.clone(),
                stack: a.stack.clone(),
                op: Some(a.clone()),
                other: Some(bside.clone()),
                detection: "overlap",
                overlapped: Some(true),
                explanation: None,
                count: 0,
                first_seen_ns: rel(s.first_ns),
                last_seen_ns: rel(s.last_ns),
            });
        f.count += s.count;
        f.first_seen_ns = f.first_seen_ns.min(rel(s.first_ns));
        f.last_seen_ns = f.last_seen_ns.max(rel(s.last_ns));
    }
    let mut unordered = Vec::new();
    for (pid, f) in hb.map(|h| h.findings()).unwrap_or_default() {
        let side = |a: &super::hb::AccessInfo| {
            let stack = sym.frames(a.site, a.stack.map_or(-1, i64::from));
            OpSideReport {
                op: a.op,
                goroutine: Some(a.goid),
                site: stack.first().cloned(),
                stack,
            }
        };
        let later = side(&f.later);
        let earlier = side(&f.earlier);
        let sl = later.site.clone().unwrap_or_else(|| unknown(f.later.site));
        let se = earlier
            .site
            .clone()
            .unwrap_or_else(|| unknown(f.earlier.site));
        let (lo, hi) = if sl <= se { (sl, se) } else { (se, sl) };
        let overlapped = merged.contains_key(&(pid, f.map, f.kind, lo, hi));
        unordered.push(MapFinding {
            kind: f.kind,
            pid,
            map: Some(format!("{:#x}", f.map)),
            message: None,
            goroutine: later.goroutine,
            site: later.site.clone(),
            stack: later.stack.clone(),
            op: Some(later),
            other: Some(earlier),
            detection: "happens_before",
            overlapped: Some(overlapped),
            explanation: Some(f.explain()),
            count: f.count,
            first_seen_ns: rel(f.later.t_ns),
            last_seen_ns: rel(f.later.t_ns),
        });
    }
    let mut overlaps: Vec<MapFinding> = merged.into_values().collect();
    overlaps.sort_by_key(|f| std::cmp::Reverse(f.count));
    findings.extend(unordered);
    findings.extend(overlaps);

    Ok(MapsReport {
        mode: match mode {
            MapsMode::Off => "off",
            MapsMode::Always => "always",
            MapsMode::Budget => "budget",
            MapsMode::Deep => "deep",
        },
        maps: rows,
        sites: site_rows(sites),
        findings,
        lost: MapsLost {
            fatal_events: lost[LOST_FATAL as usize],
            overlaps: lost[LOST_CONFLICT as usize],
            growth_events: lost[LOST_GROWTH as usize],
            ops: lost[LOST_OPS as usize],
            sync_map_calls: lost[LOST_SYNC_MAP as usize],
            happens_before_events: lost[LOST_HB as usize],
            ops_table_entries: match tracer.ebpf.map(tracer_common::names::map::MAP_OPS) {
                Some(aya::maps::Map::PerCpuHashMap(m)) => m.info().map_or(0, |i| i.max_entries()),
                _ => 0,
            },
            ops_table_full_after_ns: None,
        },
        op_hits,
        sync_maps: super::syncmap::build(&super::syncmap::read_calls(tracer)?),
        happens_before: hb.map(|h| HappensBefore {
            sync_probes: h.probes.probes.len(),
            unresolved_inlined: h.probes.unresolved,
            stream: h.stats,
            detector: h.engine_stats(),
        }),
        race_budget: None,
    })
}

fn unknown(pc: u64) -> Site {
    Site {
        function: format!("?@{pc:#x}"),
        file: String::new(),
        line: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_are_stated_with_their_share() {
        assert!(MapsLost::default().warnings(10).is_empty());
        let lost = MapsLost {
            ops: 747_104,
            ops_table_entries: 8192,
            ops_table_full_after_ns: Some(300_000_000),
            overlaps: 3,
            ..MapsLost::default()
        };
        let w = lost.warnings(50_819);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(
            w[0].contains("747104 of 797923 map operations seen (93.6%)")
                && w[0].contains("8192 entries")
                && w[0].contains("300 ms after tracing began (later operations count only"),
            "{}",
            w[0]
        );
        assert!(w[1].starts_with("maps: 3 overlapping accesses"), "{}", w[1]);
        let later = MapsLost {
            ops_table_full_after_ns: Some(12_500_000_000),
            ..lost
        };
        assert!(
            later.warnings(0)[0].contains("(100.0%)")
                && later.warnings(0)[0].contains(" 12.5 s after")
        );
    }

    #[test]
    fn overlap_kinds() {
        assert_eq!(conflict_kind(OP_WRITE, OP_WRITE), "concurrent_map_write");
        assert_eq!(conflict_kind(OP_DELETE, OP_CLEAR), "concurrent_map_write");
        assert_eq!(
            conflict_kind(OP_READ, OP_WRITE),
            "concurrent_map_read_write"
        );
        assert_eq!(
            conflict_kind(OP_WRITE, OP_READ),
            "concurrent_map_read_write"
        );
        assert_eq!(
            conflict_kind(OP_ITERATE, OP_DELETE),
            "concurrent_map_iteration_write"
        );
        assert_eq!(
            conflict_kind(OP_WRITE, OP_ITERATE),
            "concurrent_map_iteration_write"
        );
    }

    #[test]
    fn machinery_includes_the_swiss_package() {
        assert!(is_map_machinery(
            "internal/runtime/maps.(*Map).putSlotSmall"
        ));
        assert!(is_map_machinery("runtime.mapassign_fast64"));
        assert!(!is_map_machinery("main.writer"));
    }

    #[test]
    fn mode_parses() {
        assert_eq!("deep".parse::<MapsMode>(), Ok(MapsMode::Deep));
        assert!("sometimes".parse::<MapsMode>().is_err());
    }
}
