//! Non-interactive output: the same tabs as plain text tables (one section
//! per tab) or as one JSON [`MergedSnapshot`] per line.

use std::fmt::Write as _;

use super::{
    filter::Filter,
    model::{ConnState, MergedSnapshot},
    table::{Tab, numeric_columns, tab_cells},
};

/// Every tab as a section, rows filtered, sorted by each tab's default and
/// limited to `top` per section.
pub fn tables(view: &MergedSnapshot, filter: &Filter, top: usize) -> String {
    let mut out = String::new();
    for a in &view.agents {
        let _ = writeln!(
            out,
            "AGENT {} ({}) {}: procs {} ({} failed, {} missed), events lost {}, evicted {}, dropped {}",
            a.node,
            a.addr,
            a.connection,
            a.health.processes_traced,
            a.health.processes_failed,
            a.health.processes_missed,
            a.health.events_lost,
            a.health.map_evictions,
            a.dropped
        );
    }
    for tab in Tab::ALL {
        let rows = tab_cells(view, tab, filter, tab.default_sort());
        let _ = writeln!(out, "\n== {} ({} rows) ==", tab.title(), rows.len());
        let shown: Vec<Vec<String>> = rows.into_iter().take(top).collect();
        let headers: Vec<String> = tab.columns().iter().map(ToString::to_string).collect();
        out.push_str(&text_table(&headers, &shown, &numeric_columns(tab)));
    }
    out
}

/// Aligned columns separated by two spaces; numbers right-aligned.
pub fn text_table(headers: &[String], rows: &[Vec<String>], numeric: &[bool]) -> String {
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .chain(std::iter::once(headers[i].chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in std::iter::once(headers).chain(rows.iter().map(Vec::as_slice)) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let w = widths[i];
            let pad = w.saturating_sub(cell.chars().count());
            if i > 0 {
                line.push_str("  ");
            }
            if numeric.get(i).copied().unwrap_or(false) {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if i + 1 < row.len() {
                    line.push_str(&" ".repeat(pad));
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The JSON of one round: the merged snapshot, filtered like the tables.
pub fn json(view: &MergedSnapshot, filter: &Filter) -> serde_json::Result<String> {
    serde_json::to_string(&filtered(view, filter))
}

fn filtered(view: &MergedSnapshot, f: &Filter) -> MergedSnapshot {
    use super::table::TableRow;
    fn keep<R: TableRow + Clone>(rows: &[R], f: &Filter) -> Vec<R> {
        rows.iter()
            .filter(|r| f.matches(&r.labels()))
            .cloned()
            .collect()
    }
    MergedSnapshot {
        agents: view.agents.clone(),
        locks: keep(&view.locks, f),
        maps: keep(&view.maps, f),
        sync_maps: keep(&view.sync_maps, f),
        flows: keep(&view.flows, f),
        findings: keep(&view.findings, f),
    }
}

/// Whether every agent either delivered or failed: the error to exit with
/// when none connected.
pub fn none_connected(view: &MergedSnapshot) -> Option<String> {
    let all_failed = view
        .agents
        .iter()
        .all(|a| a.connection != ConnState::Connected && a.snapshot_seq == 0);
    all_failed.then(|| {
        view.agents
            .iter()
            .map(|a| format!("{}: {}", a.addr, a.connection))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::model::{AgentSlot, fixtures::*, merge};

    fn view() -> MergedSnapshot {
        let mut a = AgentSlot::new("a:1");
        a.connection = ConnState::Connected;
        a.shown = Some(snapshot(
            "n1",
            vec![
                lock(100, "api", "main.mu", 10, 9_000_000),
                lock(200, "db", "main.pool", 50, 1_000_000),
            ],
        ));
        a.add_finding(&race(4, 100));
        merge(&[a])
    }

    #[test]
    fn tables_have_every_section_sorted_and_filtered() {
        let v = view();
        let t = tables(&v, &Filter::default(), 20);
        for s in [
            "== Locks (2 rows) ==",
            "== Maps (1 rows) ==",
            "== sync.Map (1 rows) ==",
            "== Net (1 rows) ==",
            "== Findings (1 rows) ==",
        ] {
            assert!(t.contains(s), "{s}:\n{t}");
        }
        assert!(
            t.find("main.mu").unwrap() < t.find("main.pool").unwrap(),
            "{t}"
        );
        assert!(t.contains("AGENT n1 (a:1) connected"), "{t}");
        let f = Filter::parse("pid=200").unwrap();
        let t = tables(&v, &f, 20);
        assert!(
            t.contains("== Locks (1 rows) ==") && !t.contains("main.mu "),
            "{t}"
        );
        let t = tables(&v, &Filter::default(), 1);
        assert!(!t.contains("main.pool"), "top limits rows:\n{t}");
    }

    #[test]
    fn json_is_the_merged_snapshot() {
        let v = view();
        let j: serde_json::Value =
            serde_json::from_str(&json(&v, &Filter::parse("comm=db").unwrap()).unwrap()).unwrap();
        assert_eq!(j["locks"].as_array().unwrap().len(), 1);
        assert_eq!(j["locks"][0]["pid"], 200);
        assert_eq!(j["locks"][0]["node"], "n1");
        assert_eq!(j["agents"][0]["connection"]["state"], "connected");
        assert_eq!(
            j["findings"].as_array().unwrap().len(),
            0,
            "finding is pid 100"
        );
        assert_eq!(none_connected(&v), None);
        assert!(
            none_connected(&merge(&[AgentSlot::new("b:2")]))
                .unwrap()
                .contains("b:2")
        );
    }

    #[test]
    fn text_table_aligns_numbers_right() {
        let t = text_table(
            &["NAME".into(), "N".into()],
            &[
                vec!["a".into(), "1".into()],
                vec!["bbbbbb".into(), "100".into()],
            ],
            &[false, true],
        );
        assert_eq!(t, "NAME      N\na         1\nbbbbbb  100\n");
    }
}
