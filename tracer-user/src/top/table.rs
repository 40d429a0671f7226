//! Columns of each tab and the pure functions behind the tables: which rows
//! pass the filter, in which order, and how each cell reads. The TUI and the
//! plain `--once` tables both go through here.
//!
//! Over 600 lines with its unit tests (the code is about 510).

use std::cmp::Ordering;

use tracer_api::v1::SortKey;

use super::{
    filter::{Filter, Labels},
    model::{FindingView, FlowView, LockView, MapView, MergedSnapshot, SyncMapView},
};
use crate::latency::fmt_ns;

/// The tabs, in display order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tab {
    Locks,
    Maps,
    SyncMaps,
    Net,
    Findings,
}

impl Tab {
    pub const ALL: [Tab; 5] = [
        Tab::Locks,
        Tab::Maps,
        Tab::SyncMaps,
        Tab::Net,
        Tab::Findings,
    ];

    pub fn title(self) -> &'static str {
        match self {
            Tab::Locks => "Locks",
            Tab::Maps => "Maps",
            Tab::SyncMaps => "sync.Map",
            Tab::Net => "Net",
            Tab::Findings => "Findings",
        }
    }

    pub fn index(self) -> usize {
        Tab::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }

    pub fn next(self) -> Tab {
        Tab::ALL[(self.index() + 1) % Tab::ALL.len()]
    }

    pub fn prev(self) -> Tab {
        Tab::ALL[(self.index() + Tab::ALL.len() - 1) % Tab::ALL.len()]
    }

    pub fn columns(self) -> Vec<&'static str> {
        fn titles<R>(c: &[Column<R>]) -> Vec<&'static str> {
            c.iter().map(|c| c.title).collect()
        }
        match self {
            Tab::Locks => titles(LOCK_COLUMNS),
            Tab::Maps => titles(MAP_COLUMNS),
            Tab::SyncMaps => titles(SYNC_MAP_COLUMNS),
            Tab::Net => titles(FLOW_COLUMNS),
            Tab::Findings => titles(FINDING_COLUMNS),
        }
    }

    /// The column a tab is sorted by until the user picks another.
    pub fn default_sort(self) -> SortState {
        let title = match self {
            Tab::Locks => "TOTAL",
            Tab::Maps => "OPS",
            Tab::SyncMaps => "CALLS",
            Tab::Net => "SENT",
            Tab::Findings => "SEQ",
        };
        let column = self.columns().iter().position(|c| *c == title).unwrap_or(0);
        SortState {
            column,
            descending: true,
        }
    }
}

/// A sortable cell value.
#[derive(Clone, Debug, PartialEq)]
pub enum SortValue {
    Num(u64),
    Float(f64),
    Text(String),
}

impl SortValue {
    fn cmp(&self, other: &SortValue) -> Ordering {
        match (self, other) {
            (SortValue::Num(a), SortValue::Num(b)) => a.cmp(b),
            (SortValue::Float(a), SortValue::Float(b)) => a.total_cmp(b),
            (SortValue::Text(a), SortValue::Text(b)) => a.cmp(b),
            // Mixed kinds never happen within one column; keep a total order anyway.
            (SortValue::Num(_), _) => Ordering::Less,
            (_, SortValue::Num(_)) => Ordering::Greater,
            (SortValue::Float(_), _) => Ordering::Less,
            (_, SortValue::Float(_)) => Ordering::Greater,
        }
    }
}

/// One column: its header, how its cell reads, how it sorts, and which
/// server-side sort (if any) keeps the right rows within the top N.
pub struct Column<R> {
    pub title: &'static str,
    pub cell: fn(&R) -> String,
    pub key: fn(&R) -> SortValue,
    pub server: Option<SortKey>,
    /// Right-aligned (numbers).
    pub numeric: bool,
}

/// Which column a tab is sorted by, and in which direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SortState {
    pub column: usize,
    pub descending: bool,
}

/// Rows a tab can show.
pub trait TableRow: 'static {
    fn columns() -> &'static [Column<Self>]
    where
        Self: Sized;
    fn labels(&self) -> Labels<'_>;
    /// Identifies the row across snapshots, so the selection follows it
    /// when the order changes.
    fn key(&self) -> String;
}

/// The rows that pass `filter`, ordered by `sort` (ties keep input order).
pub fn visible<'a, R: TableRow>(rows: &'a [R], filter: &Filter, sort: SortState) -> Vec<&'a R> {
    let mut out: Vec<&R> = rows
        .iter()
        .filter(|r| filter.matches(&r.labels()))
        .collect();
    if let Some(col) = R::columns().get(sort.column) {
        out.sort_by(|a, b| {
            let o = (col.key)(a).cmp(&(col.key)(b));
            if sort.descending { o.reverse() } else { o }
        });
    }
    out
}

/// The cells of `rows`, one `Vec<String>` per row.
pub fn cells<R: TableRow>(rows: &[&R]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|r| R::columns().iter().map(|c| (c.cell)(r)).collect())
        .collect()
}

/// Rows of the tab as strings, filtered and sorted: what the table shows.
pub fn tab_cells(
    view: &MergedSnapshot,
    tab: Tab,
    filter: &Filter,
    sort: SortState,
) -> Vec<Vec<String>> {
    match tab {
        Tab::Locks => cells(&visible(&view.locks, filter, sort)),
        Tab::Maps => cells(&visible(&view.maps, filter, sort)),
        Tab::SyncMaps => cells(&visible(&view.sync_maps, filter, sort)),
        Tab::Net => cells(&visible(&view.flows, filter, sort)),
        Tab::Findings => cells(&visible(&view.findings, filter, sort)),
    }
}

/// Which columns are right-aligned.
pub fn numeric_columns(tab: Tab) -> Vec<bool> {
    fn n<R>(c: &[Column<R>]) -> Vec<bool> {
        c.iter().map(|c| c.numeric).collect()
    }
    match tab {
        Tab::Locks => n(LOCK_COLUMNS),
        Tab::Maps => n(MAP_COLUMNS),
        Tab::SyncMaps => n(SYNC_MAP_COLUMNS),
        Tab::Net => n(FLOW_COLUMNS),
        Tab::Findings => n(FINDING_COLUMNS),
    }
}

/// The server-side sort that matches the tab's sort column, so the agent's
/// top-N cut keeps the rows the user is looking at.
pub fn server_sort(tab: Tab, sort: SortState) -> SortKey {
    fn s<R>(c: &[Column<R>], i: usize) -> Option<SortKey> {
        c.get(i).and_then(|c| c.server)
    }
    let k = match tab {
        Tab::Locks => s(LOCK_COLUMNS, sort.column),
        Tab::Maps => s(MAP_COLUMNS, sort.column),
        Tab::SyncMaps => s(SYNC_MAP_COLUMNS, sort.column),
        Tab::Net => s(FLOW_COLUMNS, sort.column),
        Tab::Findings => None,
    };
    k.unwrap_or(SortKey::TotalTime)
}

/// Number of rows in a tab after filtering.
pub fn row_count(view: &MergedSnapshot, tab: Tab, filter: &Filter) -> usize {
    fn n<R: TableRow>(rows: &[R], f: &Filter) -> usize {
        rows.iter().filter(|r| f.matches(&r.labels())).count()
    }
    match tab {
        Tab::Locks => n(&view.locks, filter),
        Tab::Maps => n(&view.maps, filter),
        Tab::SyncMaps => n(&view.sync_maps, filter),
        Tab::Net => n(&view.flows, filter),
        Tab::Findings => n(&view.findings, filter),
    }
}

/// `1.2 KiB`-style sizes for byte counters.
pub fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

/// A delta cell: `+12`, or empty when nothing changed.
fn delta(v: u64) -> String {
    if v == 0 {
        String::new()
    } else {
        format!("+{v}")
    }
}

macro_rules! num {
    ($title:expr, $f:expr, $server:expr) => {
        Column {
            title: $title,
            cell: |r| ($f)(r).to_string(),
            key: |r| SortValue::Num(($f)(r)),
            server: $server,
            numeric: true,
        }
    };
    ($title:expr, $f:expr, $fmt:expr, $server:expr) => {
        Column {
            title: $title,
            cell: |r| ($fmt)(($f)(r)),
            key: |r| SortValue::Num(($f)(r)),
            server: $server,
            numeric: true,
        }
    };
}

macro_rules! text {
    ($title:expr, $f:expr) => {
        Column {
            title: $title,
            cell: |r| ($f)(r).to_string(),
            key: |r| SortValue::Text(($f)(r).to_string()),
            server: None,
            numeric: false,
        }
    };
}

fn site_or_dash(s: Option<&super::model::SiteView>) -> String {
    s.map_or_else(|| "-".to_string(), ToString::to_string)
}

pub static LOCK_COLUMNS: &[Column<LockView>] = &[
    text!("NODE", |r: &LockView| r.node.clone()),
    num!("PID", |r: &LockView| u64::from(r.pid), None),
    text!("COMM", |r: &LockView| r.comm.clone()),
    text!("LOCK", |r: &LockView| r.lock().to_string()),
    text!("KIND", |r: &LockView| r.kind.clone()),
    num!("CONT", |r: &LockView| r.contentions, Some(SortKey::Count)),
    num!(
        "ΔCONT",
        |r: &LockView| r.delta_contentions,
        delta,
        Some(SortKey::Delta)
    ),
    num!(
        "TOTAL",
        |r: &LockView| r.wait_ns_total,
        fmt_ns,
        Some(SortKey::TotalTime)
    ),
    num!(
        "ΔWAIT",
        |r: &LockView| r.delta_wait_ns,
        |v| if v == 0 { String::new() } else { fmt_ns(v) },
        Some(SortKey::Delta)
    ),
    num!("P50", |r: &LockView| r.wait_ns_p50, fmt_ns, None),
    num!("P99", |r: &LockView| r.wait_ns_p99, fmt_ns, None),
    num!(
        "MAX",
        |r: &LockView| r.wait_ns_max,
        fmt_ns,
        Some(SortKey::Max)
    ),
    text!("CALL SITE", |r: &LockView| site_or_dash(r.site.as_ref())),
];

pub static MAP_COLUMNS: &[Column<MapView>] = &[
    text!("NODE", |r: &MapView| r.node.clone()),
    num!("PID", |r: &MapView| u64::from(r.pid), None),
    text!("COMM", |r: &MapView| r.comm.clone()),
    text!("MAP", |r: &MapView| r.address.clone()),
    num!("OPS", |r: &MapView| r.total_ops, Some(SortKey::Count)),
    num!(
        "ΔOPS",
        |r: &MapView| r.delta_ops,
        delta,
        Some(SortKey::Delta)
    ),
    num!("GROWTHS", |r: &MapView| r.growth_events, None),
    num!("ΔGROW", |r: &MapView| r.delta_growth_events, delta, None),
    num!("ENTRIES@GROW", |r: &MapView| r.count_at_last_growth, None),
    text!("SITE", |r: &MapView| site_or_dash(
        r.ops
            .iter()
            .max_by_key(|o| o.count)
            .and_then(|o| o.top_sites.first())
            .or(r.growth_sites.first())
    )),
];

pub static SYNC_MAP_COLUMNS: &[Column<SyncMapView>] = &[
    text!("NODE", |r: &SyncMapView| r.node.clone()),
    num!("PID", |r: &SyncMapView| u64::from(r.pid), None),
    text!("COMM", |r: &SyncMapView| r.comm.clone()),
    text!("SYNC.MAP", |r: &SyncMapView| r.address.clone()),
    num!("CALLS", |r: &SyncMapView| r.total, Some(SortKey::Count)),
    num!(
        "ΔCALLS",
        |r: &SyncMapView| r.delta_total,
        delta,
        Some(SortKey::Delta)
    ),
    Column {
        title: "READS",
        cell: |r: &SyncMapView| {
            r.read_share
                .map_or_else(|| "-".into(), |s| format!("{:.0}%", s * 100.0))
        },
        key: |r: &SyncMapView| SortValue::Float(r.read_share.unwrap_or(-1.0)),
        server: None,
        numeric: true,
    },
    text!("ADVICE", |r: &SyncMapView| r.advice_kind.clone()),
];

pub static FLOW_COLUMNS: &[Column<FlowView>] = &[
    text!("NODE", |r: &FlowView| r.node.clone()),
    num!("PID", |r: &FlowView| u64::from(r.pid), None),
    text!("COMM", |r: &FlowView| r.comm.clone()),
    text!("SIDE", |r: &FlowView| r.side.clone()),
    text!("LOCAL", |r: &FlowView| r.local.clone()),
    text!("REMOTE", |r: &FlowView| r.remote.clone()),
    text!("STATE", |r: &FlowView| r.state.clone()),
    num!(
        "SENT",
        |r: &FlowView| r.bytes_sent,
        fmt_bytes,
        Some(SortKey::TotalTime)
    ),
    num!("RECV", |r: &FlowView| r.bytes_received, fmt_bytes, None),
    num!(
        "ΔSENT",
        |r: &FlowView| r.delta_bytes_sent,
        |v| if v == 0 { String::new() } else { fmt_bytes(v) },
        Some(SortKey::Delta)
    ),
    num!(
        "ΔRECV",
        |r: &FlowView| r.delta_bytes_received,
        |v| if v == 0 { String::new() } else { fmt_bytes(v) },
        None
    ),
    num!(
        "SRTT",
        |r: &FlowView| r.srtt_us.saturating_mul(1000),
        fmt_ns,
        None
    ),
    // 0: not measured (the flow was open before tracing started, or accepted).
    num!(
        "CONNECT",
        |r: &FlowView| r.connect_latency_ns,
        |v| if v == 0 { "-".to_string() } else { fmt_ns(v) },
        None
    ),
    num!("RETRANS", |r: &FlowView| r.retransmits, None),
    num!(
        "RESETS",
        |r: &FlowView| r.resets_sent.saturating_add(r.resets_received),
        None
    ),
];

pub static FINDING_COLUMNS: &[Column<FindingView>] = &[
    num!("SEQ", |r: &FindingView| r.seq, None),
    text!("NODE", |r: &FindingView| r.node.clone()),
    num!("PID", |r: &FindingView| u64::from(r.pid), None),
    text!("COMM", |r: &FindingView| r.comm.clone()),
    text!("KIND", |r: &FindingView| r.kind.clone()),
    text!("ADDRESS", |r: &FindingView| r.address.clone()),
    num!("COUNT", |r: &FindingView| r.count, None),
    text!("WHERE", |r: &FindingView| site_or_dash(r.site())),
    text!("MESSAGE", |r: &FindingView| r.message.clone()),
];

macro_rules! table_row {
    ($t:ty, $cols:ident, |$r:ident| $key:expr) => {
        impl TableRow for $t {
            fn columns() -> &'static [Column<Self>] {
                $cols
            }
            fn labels(&self) -> Labels<'_> {
                Labels {
                    pid: self.pid,
                    comm: &self.comm,
                    pod: &self.pod,
                    node: &self.node,
                }
            }
            fn key(&self) -> String {
                let $r = self;
                $key
            }
        }
    };
}

table_row!(LockView, LOCK_COLUMNS, |r| format!(
    "{} {} {} {} {}",
    r.node,
    r.pid,
    r.address,
    r.kind,
    site_or_dash(r.site.as_ref())
));
table_row!(MapView, MAP_COLUMNS, |r| format!(
    "{} {} {}",
    r.node, r.pid, r.address
));
table_row!(SyncMapView, SYNC_MAP_COLUMNS, |r| format!(
    "{} {} {}",
    r.node, r.pid, r.address
));
table_row!(FlowView, FLOW_COLUMNS, |r| format!(
    "{} {} {} {}",
    r.node, r.pid, r.local, r.remote
));
table_row!(FindingView, FINDING_COLUMNS, |r| format!(
    "{} {}",
    r.node, r.seq
));

/// Keys of the tab's visible rows, in display order.
pub fn tab_keys(view: &MergedSnapshot, tab: Tab, filter: &Filter, sort: SortState) -> Vec<String> {
    fn k<R: TableRow>(rows: &[R], f: &Filter, s: SortState) -> Vec<String> {
        visible(rows, f, s).iter().map(|r| r.key()).collect()
    }
    match tab {
        Tab::Locks => k(&view.locks, filter, sort),
        Tab::Maps => k(&view.maps, filter, sort),
        Tab::SyncMaps => k(&view.sync_maps, filter, sort),
        Tab::Net => k(&view.flows, filter, sort),
        Tab::Findings => k(&view.findings, filter, sort),
    }
}

/// Histogram bars for the detail pane: one line per non-empty bucket,
/// `lo..hi  ████  count`, bars scaled to the largest bucket. Bounds are
/// nanoseconds (RTT buckets hold microseconds × 1000, which is the same).
pub fn histogram_lines(buckets: &[super::model::BucketView], width: usize) -> Vec<String> {
    let max = buckets.iter().map(|b| b.count).max().unwrap_or(0);
    if max == 0 {
        return vec!["(no samples)".to_string()];
    }
    buckets
        .iter()
        .filter(|b| b.count > 0)
        .map(|b| {
            let bar = ((b.count as f64 / max as f64) * width as f64).ceil() as usize;
            format!(
                "{:>9} .. {:<9} {:<width$} {}",
                fmt_ns(b.lo_ns),
                fmt_ns(b.hi_ns),
                "█".repeat(bar.clamp(1, width.max(1))),
                b.count
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::model::{AgentSlot, BucketView, fixtures::*, merge};

    fn view() -> MergedSnapshot {
        let mut a = AgentSlot::new("a:1");
        a.shown = Some(snapshot(
            "n1",
            vec![
                lock(100, "api", "main.mu", 10, 9_000_000),
                lock(200, "db", "", 50, 1_000_000),
                lock(300, "api", "main.cache", 30, 5_000_000),
            ],
        ));
        merge(&[a])
    }

    fn col(tab: Tab, title: &str) -> usize {
        tab.columns().iter().position(|c| *c == title).unwrap()
    }

    fn pids(rows: &[&LockView]) -> Vec<u32> {
        rows.iter().map(|r| r.pid).collect()
    }

    #[test]
    fn sorting_by_a_column_orders_rows_both_ways() {
        let v = view();
        let f = Filter::default();
        let by_total = SortState {
            column: col(Tab::Locks, "TOTAL"),
            descending: true,
        };
        assert_eq!(pids(&visible(&v.locks, &f, by_total)), vec![100, 300, 200]);
        let by_cont = SortState {
            column: col(Tab::Locks, "CONT"),
            descending: true,
        };
        assert_eq!(pids(&visible(&v.locks, &f, by_cont)), vec![200, 300, 100]);
        let asc = SortState {
            descending: false,
            ..by_cont
        };
        assert_eq!(pids(&visible(&v.locks, &f, asc)), vec![100, 300, 200]);
        let by_lock = SortState {
            column: col(Tab::Locks, "LOCK"),
            descending: false,
        };
        // "0xa0c8" < "main.cache" < "main.mu"
        assert_eq!(pids(&visible(&v.locks, &f, by_lock)), vec![200, 300, 100]);
    }

    #[test]
    fn filter_hides_rows() {
        let v = view();
        let s = Tab::Locks.default_sort();
        let f = Filter::parse("comm=api").unwrap();
        assert_eq!(pids(&visible(&v.locks, &f, s)), vec![100, 300]);
        let f = Filter::parse("pid=200").unwrap();
        assert_eq!(pids(&visible(&v.locks, &f, s)), vec![200]);
        assert_eq!(row_count(&v, Tab::Locks, &f), 1);
    }

    #[test]
    fn cells_format_numbers_and_deltas() {
        let v = view();
        let rows = tab_cells(
            &v,
            Tab::Locks,
            &Filter::default(),
            Tab::Locks.default_sort(),
        );
        let total = col(Tab::Locks, "TOTAL");
        let dcont = col(Tab::Locks, "ΔCONT");
        assert_eq!(rows[0][total], "9.00ms");
        assert_eq!(rows[0][dcont], "+5");
        assert_eq!(
            rows[0][col(Tab::Locks, "CALL SITE")],
            "main.lookup main.go:45"
        );
        assert_eq!(fmt_bytes(1536), "1.5KiB");
        assert_eq!(fmt_bytes(12), "12B");
    }

    #[test]
    fn server_sort_follows_the_sort_column() {
        let s = SortState {
            column: col(Tab::Locks, "MAX"),
            descending: true,
        };
        assert_eq!(server_sort(Tab::Locks, s), SortKey::Max);
        let s = SortState {
            column: col(Tab::Locks, "PID"),
            descending: true,
        };
        assert_eq!(server_sort(Tab::Locks, s), SortKey::TotalTime);
    }

    #[test]
    fn histogram_bars_scale_to_the_largest_bucket() {
        let b = [
            BucketView {
                lo_ns: 1_000,
                hi_ns: 2_000,
                count: 10,
            },
            BucketView {
                lo_ns: 2_000,
                hi_ns: 4_000,
                count: 0,
            },
            BucketView {
                lo_ns: 4_000,
                hi_ns: 8_000,
                count: 40,
            },
        ];
        let lines = histogram_lines(&b, 20);
        assert_eq!(lines.len(), 2, "empty buckets skipped");
        assert_eq!(lines[0].matches('█').count(), 5);
        assert_eq!(lines[1].matches('█').count(), 20);
        assert!(lines[1].ends_with(" 40"));
        assert_eq!(histogram_lines(&[], 20), vec!["(no samples)"]);
    }
}
