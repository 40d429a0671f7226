//! Draws an [`App`] with ratatui. Reads state only; tested with ratatui's
//! `TestBackend`.
//!
//! Over 600 lines with its `TestBackend` tests (the code is about 520).

use std::time::Instant;

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row, Table, TableState, Tabs, Wrap},
};

use super::{
    app::App,
    model::{ConnState, FindingView, FlowView, LockView, MapView, SyncMapView},
    table::{Tab, TableRow, histogram_lines, numeric_columns, row_count, visible},
};
use crate::latency::fmt_ns;

/// Draws the whole screen.
pub fn draw(f: &mut Frame, app: &App, now: Instant) {
    let status_lines = app.agents.len().clamp(1, 4) as u16 + 1;
    let [tabs, body, status] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(status_lines),
    ])
    .areas(f.area());
    draw_tabs(f, app, tabs);
    if app.detail {
        let [table, detail] =
            Layout::vertical([Constraint::Percentage(35), Constraint::Percentage(65)]).areas(body);
        draw_table(f, app, table, now);
        draw_detail(f, app, detail);
    } else {
        draw_table(f, app, body, now);
    }
    draw_status(f, app, status);
    if app.help {
        draw_help(f, f.area());
    }
}

fn tab_title(app: &App, tab: Tab) -> String {
    let n = row_count(&app.view, tab, &app.filter);
    if tab == Tab::Findings && app.unseen_findings > 0 {
        format!("{} ({n}, {} new)", tab.title(), app.unseen_findings)
    } else {
        format!("{} ({n})", tab.title())
    }
}

fn draw_tabs(f: &mut Frame, app: &App, area: Rect) {
    let titles: Vec<Line> = Tab::ALL
        .iter()
        .map(|&t| {
            let style = if t == Tab::Findings && app.unseen_findings > 0 {
                Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
            } else {
                Style::new()
            };
            Line::styled(tab_title(app, t), style)
        })
        .collect();
    let tabs = Tabs::new(titles)
        .select(app.tab.index())
        .highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    f.render_widget(tabs, area);
}

/// Column widths: the widest of header and cells, capped, last column fills.
fn widths(headers: &[String], rows: &[Vec<String>]) -> Vec<Constraint> {
    let n = headers.len();
    (0..n)
        .map(|i| {
            let w = rows
                .iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .chain(std::iter::once(headers[i].chars().count()))
                .max()
                .unwrap_or(1)
                .min(48) as u16;
            if i + 1 == n {
                Constraint::Min(w)
            } else {
                Constraint::Length(w)
            }
        })
        .collect()
}

fn draw_table(f: &mut Frame, app: &App, area: Rect, now: Instant) {
    let sort = app.sort();
    let headers: Vec<String> = app
        .tab
        .columns()
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if i == sort.column {
                format!("{t}{}", if sort.descending { "▼" } else { "▲" })
            } else {
                t.to_string()
            }
        })
        .collect();
    // Fresh findings flash; everything else is plain.
    let (rows, fresh): (Vec<Vec<String>>, Vec<bool>) = match app.tab {
        Tab::Locks => plain(&visible(&app.view.locks, &app.filter, sort)),
        Tab::Maps => plain(&visible(&app.view.maps, &app.filter, sort)),
        Tab::SyncMaps => plain(&visible(&app.view.sync_maps, &app.filter, sort)),
        Tab::Net => plain(&visible(&app.view.flows, &app.filter, sort)),
        Tab::Findings => {
            let v = visible(&app.view.findings, &app.filter, sort);
            let fresh = v
                .iter()
                .map(|r| app.is_fresh(&r.node, r.seq, now))
                .collect();
            (super::table::cells(&v), fresh)
        }
    };
    let numeric = numeric_columns(app.tab);
    let widths = widths(&headers, &rows);
    let header = Row::new(
        headers
            .into_iter()
            .enumerate()
            .map(|(i, h)| align(h, numeric[i])),
    )
    .style(Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED));
    let empty = rows.is_empty();
    let body: Vec<Row> = rows
        .into_iter()
        .zip(fresh)
        .map(|(cells, fresh)| {
            let row = Row::new(
                cells
                    .into_iter()
                    .enumerate()
                    .map(|(i, c)| align(c, numeric[i])),
            );
            if fresh {
                row.style(Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD))
            } else if app.tab == Tab::Findings {
                row.style(Style::new().fg(Color::Red))
            } else {
                row
            }
        })
        .collect();
    let title = if empty {
        if app.filter.is_empty() {
            " no rows yet ".to_string()
        } else {
            format!(" no rows match filter: {} ", app.filter)
        }
    } else {
        String::new()
    };
    let table = Table::new(body, widths)
        .header(header)
        .column_spacing(2)
        .block(Block::new().borders(Borders::TOP).title(title))
        .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    let mut state =
        TableState::default().with_selected((!empty).then_some(app.selected[app.tab.index()]));
    f.render_stateful_widget(table, area, &mut state);
}

fn plain<R: TableRow>(rows: &[&R]) -> (Vec<Vec<String>>, Vec<bool>) {
    (super::table::cells(rows), vec![false; rows.len()])
}

fn align(s: String, right: bool) -> Cell<'static> {
    let line = Line::from(s);
    Cell::from(if right { line.right_aligned() } else { line })
}

/// The detail pane of the selected row.
fn draw_detail(f: &mut Frame, app: &App, area: Rect) {
    let sort = app.sort();
    let idx = app.selected[app.tab.index()];
    let bar_width = (area.width as usize).saturating_sub(40).clamp(5, 50);
    let (title, lines) = match app.tab {
        Tab::Locks => visible(&app.view.locks, &app.filter, sort)
            .get(idx)
            .map(|r| lock_detail(r, bar_width))
            .unwrap_or_default(),
        Tab::Maps => visible(&app.view.maps, &app.filter, sort)
            .get(idx)
            .map(|r| map_detail(r))
            .unwrap_or_default(),
        Tab::SyncMaps => visible(&app.view.sync_maps, &app.filter, sort)
            .get(idx)
            .map(|r| sync_map_detail(r, bar_width))
            .unwrap_or_default(),
        Tab::Net => visible(&app.view.flows, &app.filter, sort)
            .get(idx)
            .map(|r| flow_detail(r, bar_width))
            .unwrap_or_default(),
        Tab::Findings => visible(&app.view.findings, &app.filter, sort)
            .get(idx)
            .map(|r| finding_detail(r))
            .unwrap_or_default(),
    };
    let p = Paragraph::new(lines.into_iter().map(Line::from).collect::<Vec<_>>())
        .block(Block::bordered().title(format!(" {title} (Esc closes) ")))
        .wrap(Wrap { trim: false });
    f.render_widget(p, area);
}

/// Frames shown in a detail pane before "… N more".
const STACK_LINES: usize = 12;

fn stack_lines<T: ToString>(stack: &[T]) -> Vec<String> {
    let mut out: Vec<String> = stack
        .iter()
        .take(STACK_LINES)
        .map(ToString::to_string)
        .collect();
    if stack.len() > STACK_LINES {
        out.push(format!("… {} more frames", stack.len() - STACK_LINES));
    }
    out
}

fn section(out: &mut Vec<String>, title: &str, lines: impl IntoIterator<Item = String>) {
    out.push(String::new());
    out.push(format!("{title}:"));
    out.extend(lines.into_iter().map(|l| format!("  {l}")));
}

/// Title and lines of a lock's detail pane: numbers, wait histogram, stack.
pub fn lock_detail(r: &LockView, bar_width: usize) -> (String, Vec<String>) {
    let mut out = vec![format!(
        "{} {} pid {} ({}) on {}: {} contentions, {} goroutines, total {}, p50 {}, p99 {}, max {}",
        r.kind,
        r.lock(),
        r.pid,
        r.comm,
        r.node,
        r.contentions,
        r.goroutines,
        fmt_ns(r.wait_ns_total),
        fmt_ns(r.wait_ns_p50),
        fmt_ns(r.wait_ns_p99),
        fmt_ns(r.wait_ns_max)
    )];
    // The stack first: it says where, and stays on screen when the
    // histogram is long.
    section(&mut out, "Stack", stack_lines(&r.stack));
    section(
        &mut out,
        "Wait histogram",
        histogram_lines(&r.histogram, bar_width),
    );
    (format!("lock {}", r.lock()), out)
}

/// A map's detail: per-op numbers and call sites, growth sites.
pub fn map_detail(r: &MapView) -> (String, Vec<String>) {
    let mut out = vec![format!(
        "map {} pid {} ({}) on {}: {} ops, {} growths (last at {} entries)",
        r.address, r.pid, r.comm, r.node, r.total_ops, r.growth_events, r.count_at_last_growth
    )];
    for o in &r.ops {
        section(
            &mut out,
            &format!(
                "{} x{} ({} goroutines): p50 {}, p99 {}, max {}",
                o.kind,
                o.count,
                o.goroutines,
                fmt_ns(o.ns_p50),
                fmt_ns(o.ns_p99),
                fmt_ns(o.ns_max)
            ),
            o.top_sites.iter().map(ToString::to_string),
        );
    }
    if !r.growth_sites.is_empty() {
        section(
            &mut out,
            "Growth sites",
            r.growth_sites.iter().map(ToString::to_string),
        );
    }
    (format!("map {}", r.address), out)
}

/// A sync.Map's detail: calls per method as bars, advice.
pub fn sync_map_detail(r: &SyncMapView, bar_width: usize) -> (String, Vec<String>) {
    let mut out = vec![format!(
        "sync.Map {} pid {} ({}) on {}: {} calls, reads {}",
        r.address,
        r.pid,
        r.comm,
        r.node,
        r.total,
        r.read_share
            .map_or_else(|| "-".into(), |s| format!("{:.0}%", s * 100.0))
    )];
    let max = r.calls.values().copied().max().unwrap_or(0).max(1);
    section(
        &mut out,
        "Calls",
        r.calls.iter().map(|(m, &n)| {
            let bar = ((n as f64 / max as f64) * bar_width as f64).ceil() as usize;
            format!("{m:<16} {:<bar_width$} {n}", "█".repeat(bar.min(bar_width)))
        }),
    );
    section(
        &mut out,
        &format!("Advice ({})", r.advice_kind),
        [r.advice.clone()],
    );
    (format!("sync.Map {}", r.address), out)
}

/// A TCP flow's detail: counters and the RTT histogram.
pub fn flow_detail(r: &FlowView, bar_width: usize) -> (String, Vec<String>) {
    let out_lines = vec![
        format!(
            "{} {} {} -> {} pid {} ({}) on {}: {}{}",
            r.family,
            r.side,
            r.local,
            r.remote,
            r.pid,
            r.comm,
            r.node,
            r.state,
            if r.open { "" } else { " (closed)" }
        ),
        format!(
            "sent {} B, received {} B, lifetime {}, connect {}, {}srtt {}, retransmits {}, resets sent {} received {}",
            r.bytes_sent,
            r.bytes_received,
            fmt_ns(r.lifetime_ns),
            fmt_ns(r.connect_latency_ns),
            r.accept_wait_ns
                .map_or(String::new(), |w| format!("accept wait {}, ", fmt_ns(w))),
            fmt_ns(r.srtt_us.saturating_mul(1000)),
            r.retransmits,
            r.resets_sent,
            r.resets_received
        ),
    ];
    let mut out = out_lines;
    section(
        &mut out,
        "RTT histogram",
        histogram_lines(&r.rtt, bar_width),
    );
    (format!("flow {} -> {}", r.local, r.remote), out)
}

/// A finding's detail: both sides of a race, or the stack.
pub fn finding_detail(r: &FindingView) -> (String, Vec<String>) {
    let mut out = vec![format!(
        "#{} {} at {} pid {} ({}) on {}{}",
        r.seq,
        r.kind,
        r.address,
        r.pid,
        r.comm,
        r.node,
        if r.count > 1 {
            format!(", seen {} times", r.count)
        } else {
            String::new()
        }
    )];
    if !r.message.is_empty() {
        out.push(r.message.clone());
    }
    if r.age_ns > 0 {
        out.push(format!("waiting for {}", fmt_ns(r.age_ns)));
    }
    if r.dropped_before > 0 {
        out.push(format!(
            "{} findings dropped before this one",
            r.dropped_before
        ));
    }
    for (label, side) in [("This op", &r.op), ("Other op", &r.other)] {
        if let Some(s) = side {
            section(
                &mut out,
                &format!("{label}: {} by goroutine {}", s.op, s.goroutine),
                s.stack.iter().map(ToString::to_string),
            );
        }
    }
    if !r.stack.is_empty() {
        section(
            &mut out,
            &format!("Stack (goroutine {})", r.goroutine),
            r.stack.iter().map(ToString::to_string),
        );
    }
    (format!("finding #{}", r.seq), out)
}

/// One line per agent: connection and health; then the controls line.
fn draw_status(f: &mut Frame, app: &App, area: Rect) {
    let mut lines: Vec<Line> = app
        .view
        .agents
        .iter()
        .take(area.height.saturating_sub(1).max(1) as usize)
        .map(|a| {
            let (mark, color) = match a.connection {
                ConnState::Connected => ("●", Color::Green),
                ConnState::Connecting => ("○", Color::Yellow),
                ConnState::Retrying { .. } => ("✗", Color::Red),
            };
            let attached = a.hooks.iter().filter(|h| h.status == "attached").count();
            let health = format!(
                " procs {} ({} failed, {} missed)  lost {}  evicted {}  dropped {}  hooks {}/{}",
                a.health.processes_traced,
                a.health.processes_failed,
                a.health.processes_missed,
                a.health.events_lost,
                a.health.map_evictions,
                a.dropped,
                attached,
                a.hooks.len()
            );
            Line::from(vec![
                Span::styled(format!("{mark} "), Style::new().fg(color)),
                Span::styled(
                    format!("{} ({}) {}", a.node, a.addr, a.connection),
                    Style::new().fg(color),
                ),
                Span::raw(health),
            ])
        })
        .collect();
    let sort = app.sort();
    let col = app.tab.columns().get(sort.column).copied().unwrap_or("");
    let mut controls = vec![Span::raw(format!(
        "every {}  sort {col}{}  ",
        fmt_interval(app.interval_ms),
        if sort.descending { "▼" } else { "▲" }
    ))];
    if let Some(n) = &app.notice {
        controls.push(Span::styled(format!("{n}  "), Style::new().fg(Color::Cyan)));
    }
    if app.paused {
        controls.push(Span::styled(
            "PAUSED  ",
            Style::new().fg(Color::Black).bg(Color::Yellow),
        ));
    }
    match (&app.prompt, &app.prompt_error) {
        (Some(text), err) => {
            controls.push(Span::styled(
                format!("filter: {text}_"),
                Style::new().add_modifier(Modifier::BOLD),
            ));
            if let Some(e) = err {
                controls.push(Span::styled(format!("  {e}"), Style::new().fg(Color::Red)));
            }
        }
        (None, _) => {
            if !app.filter.is_empty() {
                controls.push(Span::raw(format!("filter: {}  ", app.filter)));
            }
            controls.push(Span::styled(
                "? help  / filter  s sort  r reverse  Enter detail  q quit",
                Style::new().fg(Color::DarkGray),
            ));
        }
    }
    lines.push(Line::from(controls));
    f.render_widget(Paragraph::new(lines), area);
}

/// `250ms`, `1s`, `2.5s`.
pub fn fmt_interval(ms: u32) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{:.1}s", f64::from(ms) / 1000.0)
    }
}

const HELP: &[&str] = &[
    "Tab / Shift-Tab, ←/→   next / previous tab (L M Y N F jump to one)",
    "↑/↓ j/k PgUp/PgDn g/G  move the selection",
    "Enter / Esc            open / close the detail pane (histogram, stack)",
    "s                      sort by the next column",
    "1..9, 0                sort by column N (again: reverse)",
    "r                      reverse the sort",
    "/                      filter: pid=N comm=NAME pod=NAME node=NAME or words",
    "                       (in the prompt: Enter applies, Esc cancels, Ctrl-U clears)",
    "c                      clear the filter",
    "D                      deep map tracing (30 s) for the selected row's process",
    "+ / -                  slower / faster refresh",
    "space or p             pause (findings still arrive)",
    "? / h                  this help (any key closes)",
    "q, Ctrl-C              quit",
];

fn draw_help(f: &mut Frame, area: Rect) {
    let w = 76.min(area.width);
    let h = (HELP.len() as u16 + 2).min(area.height);
    let rect = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    f.render_widget(Clear, rect);
    f.render_widget(
        Paragraph::new(HELP.iter().map(|l| Line::from(*l)).collect::<Vec<_>>())
            .block(Block::bordered().title(" tracer top: keys ")),
        rect,
    );
}

#[cfg(test)]
mod tests {
    use ratatui::{
        Terminal,
        backend::TestBackend,
        crossterm::event::{KeyCode, KeyEvent, KeyModifiers},
    };

    use super::*;
    use crate::top::{
        filter::Filter,
        model::{ConnState, fixtures::*},
        source::AgentEvent,
    };

    fn app() -> App {
        let mut app = App::new(&["10.0.0.1:7000".to_string()], Filter::default(), 1000, 100);
        let now = Instant::now();
        app.on_event(0, AgentEvent::State(ConnState::Connected), now);
        app.on_event(
            0,
            AgentEvent::Snapshot(Box::new(snapshot(
                "node-a",
                vec![
                    lock(111, "api", "main.cacheMu", 10, 9_000_000),
                    lock(222, "db", "main.poolMu", 50, 1_000_000),
                ],
            ))),
            now,
        );
        app
    }

    fn key(app: &mut App, c: KeyCode) {
        app.on_key(KeyEvent::new(c, KeyModifiers::NONE));
    }

    fn screen(app: &App) -> String {
        let mut term = Terminal::new(TestBackend::new(180, 40)).unwrap();
        term.draw(|f| draw(f, app, Instant::now())).unwrap();
        let buf = term.backend().buffer();
        let mut s = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                s.push_str(buf[(x, y)].symbol());
            }
            s.push('\n');
        }
        s
    }

    fn line_of(screen: &str, needle: &str) -> usize {
        screen
            .lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle:?} not on screen:\n{screen}"))
    }

    #[test]
    fn locks_tab_shows_titles_headers_rows_and_status() {
        let s = screen(&app());
        for t in [
            "Locks (2)",
            "Maps (1)",
            "sync.Map (1)",
            "Net (1)",
            "Findings (0)",
        ] {
            assert!(s.contains(t), "{t}:\n{s}");
        }
        for h in ["PID", "COMM", "LOCK", "CONT", "TOTAL▼", "P99", "CALL SITE"] {
            assert!(s.contains(h), "{h}:\n{s}");
        }
        assert!(s.contains("main.cacheMu") && s.contains("9.00ms"), "{s}");
        assert!(s.contains("main.lookup main.go:45"), "{s}");
        assert!(s.contains("node-a (10.0.0.1:7000) connected"), "{s}");
        assert!(
            s.contains("lost 3") && s.contains("procs 2") && s.contains("dropped 1"),
            "{s}"
        );
    }

    #[test]
    fn sorting_changes_row_order_on_screen() {
        let mut a = app();
        let s = screen(&a);
        assert!(line_of(&s, "main.cacheMu") < line_of(&s, "main.poolMu"));
        key(&mut a, KeyCode::Char('6')); // CONT
        let s = screen(&a);
        assert!(s.contains("CONT▼"), "{s}");
        assert!(
            line_of(&s, "main.poolMu") < line_of(&s, "main.cacheMu"),
            "{s}"
        );
    }

    #[test]
    fn filter_hides_rows_on_screen() {
        let mut a = app();
        key(&mut a, KeyCode::Char('/'));
        for c in "comm=db".chars() {
            key(&mut a, KeyCode::Char(c));
        }
        let s = screen(&a);
        assert!(s.contains("filter: comm=db_"), "prompt shown:\n{s}");
        key(&mut a, KeyCode::Enter);
        let s = screen(&a);
        assert!(
            s.contains("main.poolMu") && !s.contains("main.cacheMu"),
            "{s}"
        );
        assert!(
            s.contains("Locks (1)") && s.contains("filter: comm=db"),
            "{s}"
        );
    }

    #[test]
    fn detail_pane_shows_histogram_and_stack() {
        let mut a = app();
        key(&mut a, KeyCode::Enter);
        let s = screen(&a);
        assert!(s.contains("lock main.cacheMu (Esc closes)"), "{s}");
        assert!(s.contains("Wait histogram:") && s.contains("████"), "{s}");
        assert!(s.contains("main.handler main.go:80"), "stack:\n{s}");
        key(&mut a, KeyCode::Esc);
        assert!(!screen(&a).contains("Esc closes"));
    }

    #[test]
    fn other_tabs_render_their_rows() {
        let mut a = app();
        key(&mut a, KeyCode::Tab);
        let s = screen(&a);
        assert!(
            s.contains("GROWTHS")
                && s.contains("0xc000123")
                && s.contains("main.writer main.go:24"),
            "{s}"
        );
        key(&mut a, KeyCode::Tab);
        let s = screen(&a);
        assert!(
            s.contains("SYNC.MAP")
                && s.contains("0xc000999")
                && s.contains("90%")
                && s.contains("fits"),
            "{s}"
        );
        key(&mut a, KeyCode::Tab);
        let s = screen(&a);
        assert!(
            s.contains("REMOTE") && s.contains("10.0.0.7:5432") && s.contains("120.6KiB"),
            "{s}"
        );
        key(&mut a, KeyCode::Enter);
        let s = screen(&a);
        assert!(s.contains("RTT histogram:") && s.contains("128.0µs"), "{s}");
    }

    #[test]
    fn findings_tab_shows_a_new_finding_with_a_counter() {
        let mut a = app();
        a.on_event(
            0,
            AgentEvent::Finding(Box::new(race(7, 4242))),
            Instant::now(),
        );
        let s = screen(&a);
        assert!(s.contains("Findings (1, 1 new)"), "{s}");
        key(&mut a, KeyCode::Char('F'));
        let s = screen(&a);
        assert!(s.contains("Findings (1)") && !s.contains("new)"), "{s}");
        assert!(
            s.contains("concurrent_map_write") && s.contains("4242"),
            "{s}"
        );
        key(&mut a, KeyCode::Enter);
        let s = screen(&a);
        assert!(s.contains("This op: write by goroutine 7"), "{s}");
        assert!(s.contains("Other op: write by goroutine 8"), "{s}");
    }

    #[test]
    fn help_and_pause_are_shown() {
        let mut a = app();
        key(&mut a, KeyCode::Char(' '));
        key(&mut a, KeyCode::Char('?'));
        let s = screen(&a);
        assert!(
            s.contains("tracer top: keys") && s.contains("PAUSED"),
            "{s}"
        );
    }

    #[test]
    fn flow_detail_shows_the_accept_wait_only_when_measured() {
        let mut r = FlowView {
            side: "server".into(),
            connect_latency_ns: 0,
            ..Default::default()
        };
        let (_, lines) = flow_detail(&r, 20);
        assert!(
            !lines.iter().any(|l| l.contains("accept wait")),
            "{lines:?}"
        );
        r.accept_wait_ns = Some(1_500_000);
        let (_, lines) = flow_detail(&r, 20);
        let want = format!("accept wait {}", fmt_ns(1_500_000));
        assert!(lines.iter().any(|l| l.contains(&want)), "{lines:?}");
    }
}
