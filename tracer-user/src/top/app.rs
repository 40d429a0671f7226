//! The interactive state of `tracer top` and how keys and agent events change
//! it. No terminal here: [`App::on_key`] and [`App::on_event`] are pure state
//! transitions, so they are unit-tested directly and the renderer only reads.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::{
    filter::Filter,
    model::{AgentSlot, ConnState, MergedSnapshot, merge},
    source::{AgentEvent, WatchParams},
    table::{SortState, Tab, row_count, server_sort, tab_keys},
};

/// Refresh intervals `+`/`-` step through.
pub const INTERVALS_MS: [u32; 8] = [250, 500, 1000, 2000, 3000, 5000, 10_000, 30_000];

/// How long a new finding stays highlighted.
pub const FLASH: Duration = Duration::from_secs(5);

/// What the event loop should do after a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
    /// The Watch parameters changed: restart the streams.
    Restream,
    /// Ask agent `agent` to turn on the deep map tier for `pid`.
    DeepMaps {
        agent: usize,
        pid: u32,
    },
}

/// How long `D` turns the deep map tier on for.
pub const DEEP_MAPS: Duration = Duration::from_secs(30);

pub struct App {
    pub agents: Vec<AgentSlot>,
    pub tab: Tab,
    pub sorts: [SortState; 5],
    pub filter: Filter,
    /// The filter prompt's text while `/` is open.
    pub prompt: Option<String>,
    /// Why the last filter did not parse.
    pub prompt_error: Option<String>,
    /// Selected row per tab (index into the visible rows) and its key, so
    /// the selection stays on the same row when a refresh reorders them.
    pub selected: [usize; 5],
    pub selected_keys: [Option<String>; 5],
    pub detail: bool,
    pub help: bool,
    pub paused: bool,
    pub interval_ms: u32,
    pub top_n: u32,
    /// Merged view of what is shown; rebuilt on every change.
    pub view: MergedSnapshot,
    /// Findings that arrived while the Findings tab was not shown.
    pub unseen_findings: usize,
    /// Arrival time of each finding, keyed by (node as shown, seq), to flash it.
    pub arrivals: HashMap<(String, u64), Instant>,
    /// A one-line message for the status line (result of `D`, ...).
    pub notice: Option<String>,
}

impl App {
    pub fn new(addrs: &[String], filter: Filter, interval_ms: u32, top_n: u32) -> Self {
        let mut app = Self {
            agents: addrs.iter().map(AgentSlot::new).collect(),
            tab: Tab::Locks,
            sorts: Tab::ALL.map(Tab::default_sort),
            filter,
            prompt: None,
            prompt_error: None,
            selected: [0; 5],
            selected_keys: Default::default(),
            detail: false,
            help: false,
            paused: false,
            interval_ms,
            top_n,
            view: MergedSnapshot::default(),
            unseen_findings: 0,
            arrivals: HashMap::new(),
            notice: None,
        };
        app.rebuild();
        app
    }

    pub fn sort(&self) -> SortState {
        self.sorts[self.tab.index()]
    }

    /// What the agents should stream, given the current tab, sort and filter.
    pub fn watch_params(&self) -> WatchParams {
        WatchParams {
            filter: self.filter.to_api(),
            interval_ms: self.interval_ms,
            top_n: self.top_n,
            sort: server_sort(self.tab, self.sort()),
        }
    }

    fn rebuild(&mut self) {
        self.view = merge(&self.agents);
        self.clamp_selection();
    }

    /// Re-finds each tab's selected row by key after rows or order changed.
    fn clamp_selection(&mut self) {
        for tab in Tab::ALL {
            let i = tab.index();
            let keys = tab_keys(&self.view, tab, &self.filter, self.sorts[i]);
            let found = self.selected_keys[i]
                .as_ref()
                .and_then(|k| keys.iter().position(|x| x == k));
            let sel = found
                .unwrap_or(self.selected[i])
                .min(keys.len().saturating_sub(1));
            self.selected[i] = sel;
            self.selected_keys[i] = keys.get(sel).cloned();
        }
    }

    /// Selects row `index` of the current tab (clamped).
    fn select(&mut self, index: usize) {
        let i = self.tab.index();
        let keys = tab_keys(&self.view, self.tab, &self.filter, self.sorts[i]);
        let sel = index.min(keys.len().saturating_sub(1));
        self.selected[i] = sel;
        self.selected_keys[i] = keys.get(sel).cloned();
    }

    /// Applies one event from agent `idx`.
    pub fn on_event(&mut self, idx: usize, event: AgentEvent, now: Instant) {
        let Some(slot) = self.agents.get_mut(idx) else {
            return;
        };
        match event {
            AgentEvent::State(s) => slot.connection = s,
            AgentEvent::Info(info) => slot.info = Some(*info),
            AgentEvent::Snapshot(s) => {
                if !self.paused {
                    slot.shown = Some((*s).clone());
                }
                slot.latest = Some(*s);
            }
            AgentEvent::Finding(f) => {
                if slot.add_finding(&f) {
                    let node = slot
                        .findings
                        .iter()
                        .rfind(|x| x.seq == f.seq)
                        .map(|x| x.node.clone())
                        .unwrap_or_default();
                    self.arrivals.insert((node, f.seq), now);
                    if self.tab != Tab::Findings {
                        self.unseen_findings += 1;
                    }
                }
            }
        }
        self.rebuild();
    }

    /// Whether finding `seq` of `node` arrived within [`FLASH`].
    pub fn is_fresh(&self, node: &str, seq: u64, now: Instant) -> bool {
        self.arrivals
            .get(&(node.to_string(), seq))
            .is_some_and(|t| now.saturating_duration_since(*t) < FLASH)
    }

    /// Forgets flash times older than [`FLASH`].
    pub fn expire_flashes(&mut self, now: Instant) {
        self.arrivals
            .retain(|_, t| now.saturating_duration_since(*t) < FLASH);
    }

    fn set_tab(&mut self, tab: Tab) -> Action {
        let before = self.watch_params();
        self.tab = tab;
        self.detail = false;
        if tab == Tab::Findings {
            self.unseen_findings = 0;
        }
        self.restream_if_changed(before)
    }

    fn restream_if_changed(&self, before: WatchParams) -> Action {
        if self.watch_params() == before {
            Action::None
        } else {
            Action::Restream
        }
    }

    fn set_sort_column(&mut self, column: usize) -> Action {
        let before = self.watch_params();
        let ncols = self.tab.columns().len();
        if column >= ncols {
            return Action::None;
        }
        let s = &mut self.sorts[self.tab.index()];
        if s.column == column {
            s.descending = !s.descending;
        } else {
            s.column = column;
            s.descending = true;
        }
        self.clamp_selection();
        self.restream_if_changed(before)
    }

    fn move_selection(&mut self, by: isize) {
        let cur = self.selected[self.tab.index()];
        self.select(cur.saturating_add_signed(by));
    }

    fn step_interval(&mut self, up: bool) -> Action {
        let cur = self.interval_ms;
        let next = if up {
            INTERVALS_MS.iter().copied().find(|&v| v > cur)
        } else {
            INTERVALS_MS.iter().rev().copied().find(|&v| v < cur)
        };
        match next {
            Some(n) => {
                self.interval_ms = n;
                Action::Restream
            }
            None => Action::None,
        }
    }

    /// Handles one key press.
    pub fn on_key(&mut self, key: KeyEvent) -> Action {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c')) {
            return Action::Quit;
        }
        if let Some(text) = self.prompt.as_mut() {
            match key.code {
                KeyCode::Esc => {
                    self.prompt = None;
                    self.prompt_error = None;
                }
                KeyCode::Enter => match Filter::parse(text) {
                    Ok(f) => {
                        let before = self.watch_params();
                        self.filter = f;
                        self.prompt = None;
                        self.prompt_error = None;
                        self.clamp_selection();
                        return self.restream_if_changed(before);
                    }
                    Err(e) => self.prompt_error = Some(e),
                },
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char('u') if ctrl => text.clear(),
                KeyCode::Char(c) if text.len() < 256 => text.push(c),
                _ => {}
            }
            return Action::None;
        }
        if self.help {
            self.help = false;
            return if key.code == KeyCode::Char('q') {
                Action::Quit
            } else {
                Action::None
            };
        }
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Esc => self.detail = false,
            KeyCode::Char('?') | KeyCode::Char('h') => self.help = true,
            KeyCode::Tab | KeyCode::Right => return self.set_tab(self.tab.next()),
            KeyCode::BackTab | KeyCode::Left => return self.set_tab(self.tab.prev()),
            KeyCode::Char('L') => return self.set_tab(Tab::Locks),
            KeyCode::Char('M') => return self.set_tab(Tab::Maps),
            KeyCode::Char('Y') => return self.set_tab(Tab::SyncMaps),
            KeyCode::Char('N') => return self.set_tab(Tab::Net),
            KeyCode::Char('F') => return self.set_tab(Tab::Findings),
            KeyCode::Char('s') => {
                let n = self.tab.columns().len();
                let c = (self.sort().column + 1) % n;
                return self.set_sort_column(c);
            }
            KeyCode::Char('r') => {
                self.sorts[self.tab.index()].descending ^= true;
                self.clamp_selection();
            }
            KeyCode::Char(c @ '1'..='9') => {
                return self.set_sort_column(c as usize - '1' as usize);
            }
            KeyCode::Char('0') => return self.set_sort_column(9),
            KeyCode::Char('/') => {
                self.prompt = Some(self.filter.to_string());
                self.prompt_error = None;
            }
            KeyCode::Char('c') => {
                let before = self.watch_params();
                self.filter = Filter::default();
                self.clamp_selection();
                return self.restream_if_changed(before);
            }
            KeyCode::Char(' ') | KeyCode::Char('p') => {
                self.paused = !self.paused;
                if !self.paused {
                    for a in &mut self.agents {
                        a.shown = a.latest.clone();
                    }
                    self.rebuild();
                }
            }
            KeyCode::Char('+') | KeyCode::Char('=') => return self.step_interval(true),
            KeyCode::Char('-') => return self.step_interval(false),
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::PageDown => self.move_selection(10),
            KeyCode::PageUp => self.move_selection(-10),
            KeyCode::Home | KeyCode::Char('g') => self.select(0),
            KeyCode::End | KeyCode::Char('G') => self.move_selection(isize::MAX / 2),
            KeyCode::Enter => {
                self.detail = row_count(&self.view, self.tab, &self.filter) > 0;
            }
            KeyCode::Char('D') => return self.deep_maps_for_selection(),
            _ => {}
        }
        Action::None
    }

    /// The agent a row came from: by node name, or the only agent.
    fn agent_of(&self, node: &str) -> Option<usize> {
        if self.agents.len() == 1 {
            return Some(0);
        }
        self.agents.iter().position(|a| a.node() == node)
    }

    /// `D`: deep map tracing for the selected row's process.
    fn deep_maps_for_selection(&mut self) -> Action {
        let i = self.tab.index();
        let Some(key) = self.selected_keys[i].clone() else {
            return Action::None;
        };
        // Keys start with "<node> <pid> ".
        let mut parts = key.split(' ');
        let (node, pid) = match (
            parts.next(),
            parts.next().and_then(|p| p.parse::<u32>().ok()),
        ) {
            (Some(n), Some(p)) if self.tab != Tab::Findings => (n.to_string(), p),
            _ => {
                let Some(f) =
                    super::table::visible(&self.view.findings, &self.filter, self.sorts[i])
                        .get(self.selected[i])
                        .map(|f| (f.node.clone(), f.pid))
                else {
                    return Action::None;
                };
                f
            }
        };
        match self.agent_of(&node) {
            Some(agent) => {
                self.notice = Some(format!("deep map tracing: asking {node} for pid {pid}..."));
                Action::DeepMaps { agent, pid }
            }
            None => {
                self.notice = Some(format!("no agent for node {node}"));
                Action::None
            }
        }
    }

    /// Whether at least one agent is connected.
    pub fn any_connected(&self) -> bool {
        self.agents
            .iter()
            .any(|a| a.connection == ConnState::Connected)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::{
        model::fixtures::*,
        table::{Tab, tab_cells},
    };
    use tracer_api::v1::SortKey;

    fn key(c: KeyCode) -> KeyEvent {
        KeyEvent::new(c, KeyModifiers::NONE)
    }

    pub(crate) fn app_with_rows() -> App {
        let mut app = App::new(&["a:1".to_string()], Filter::default(), 1000, 100);
        let now = Instant::now();
        app.on_event(0, AgentEvent::State(ConnState::Connected), now);
        app.on_event(
            0,
            AgentEvent::Snapshot(Box::new(snapshot(
                "n1",
                vec![
                    lock(100, "api", "main.mu", 10, 9_000_000),
                    lock(200, "db", "", 50, 1_000_000),
                ],
            ))),
            now,
        );
        app
    }

    fn first_pid(app: &App) -> String {
        let rows = tab_cells(&app.view, app.tab, &app.filter, app.sort());
        rows[0][1].clone()
    }

    #[test]
    fn sort_keys_change_order_and_server_sort() {
        let mut app = app_with_rows();
        assert_eq!(first_pid(&app), "100", "default: total wait, descending");
        // '6' = 6th column (CONT): sorted by contentions, server asked to match.
        assert_eq!(app.on_key(key(KeyCode::Char('6'))), Action::Restream);
        assert_eq!(first_pid(&app), "200");
        assert_eq!(app.watch_params().sort, SortKey::Count);
        assert_eq!(app.on_key(key(KeyCode::Char('r'))), Action::None);
        assert_eq!(first_pid(&app), "100");
        // 's' cycles to the next column.
        let c = app.sort().column;
        app.on_key(key(KeyCode::Char('s')));
        assert_eq!(app.sort().column, c + 1);
    }

    #[test]
    fn filter_prompt_applies_on_enter_and_reports_errors() {
        let mut app = app_with_rows();
        app.on_key(key(KeyCode::Char('/')));
        for c in "pid=200".chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
        assert_eq!(app.on_key(key(KeyCode::Enter)), Action::Restream);
        assert_eq!(app.prompt, None);
        assert_eq!(app.watch_params().filter.pids, vec![200]);
        let rows = tab_cells(&app.view, Tab::Locks, &app.filter, app.sort());
        assert_eq!(rows.len(), 1);
        app.on_key(key(KeyCode::Char('/')));
        assert_eq!(
            app.prompt.as_deref(),
            Some("pid=200"),
            "prompt starts from the filter"
        );
        app.on_key(KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL));
        assert_eq!(app.prompt.as_deref(), Some(""), "Ctrl-U clears it");
        for c in "pid=x".chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
        app.on_key(key(KeyCode::Enter));
        assert!(
            app.prompt_error.is_some(),
            "bad filter keeps the prompt open"
        );
        app.on_key(key(KeyCode::Esc));
        assert_eq!(app.filter.pids, vec![200], "Esc keeps the old filter");
    }

    #[test]
    fn pause_freezes_snapshots_but_not_findings() {
        let mut app = app_with_rows();
        app.on_key(key(KeyCode::Char(' ')));
        assert!(app.paused);
        let now = Instant::now();
        app.on_event(
            0,
            AgentEvent::Snapshot(Box::new(snapshot("n1", vec![]))),
            now,
        );
        assert_eq!(app.view.locks.len(), 2, "frozen");
        app.on_event(0, AgentEvent::Finding(Box::new(race(1, 9))), now);
        assert_eq!(app.view.findings.len(), 1);
        assert_eq!(app.unseen_findings, 1);
        assert!(app.is_fresh("n1", 1, now));
        assert!(!app.is_fresh("n1", 1, now + FLASH));
        app.on_key(key(KeyCode::Char('p')));
        assert_eq!(app.view.locks.len(), 0, "resumed: newest shown");
        app.on_key(key(KeyCode::Char('F')));
        assert_eq!(app.unseen_findings, 0, "seen once the tab is open");
    }

    #[test]
    fn interval_steps_and_quit_keys() {
        let mut app = app_with_rows();
        assert_eq!(app.on_key(key(KeyCode::Char('+'))), Action::Restream);
        assert_eq!(app.interval_ms, 2000);
        app.on_key(key(KeyCode::Char('-')));
        app.on_key(key(KeyCode::Char('-')));
        assert_eq!(app.interval_ms, 500);
        for _ in 0..10 {
            app.on_key(key(KeyCode::Char('-')));
        }
        assert_eq!(app.interval_ms, 250);
        assert_eq!(app.on_key(key(KeyCode::Char('-'))), Action::None);
        assert_eq!(app.on_key(key(KeyCode::Char('q'))), Action::Quit);
        assert_eq!(
            app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Action::Quit
        );
    }

    #[test]
    fn deep_maps_key_targets_the_selected_rows_process() {
        let mut app = app_with_rows();
        app.on_key(key(KeyCode::Down));
        assert_eq!(
            app.on_key(key(KeyCode::Char('D'))),
            Action::DeepMaps { agent: 0, pid: 200 }
        );
        assert!(app.notice.as_deref().unwrap().contains("pid 200"));
        app.on_event(
            0,
            AgentEvent::Finding(Box::new(race(3, 4242))),
            Instant::now(),
        );
        app.on_key(key(KeyCode::Char('F')));
        assert_eq!(
            app.on_key(key(KeyCode::Char('D'))),
            Action::DeepMaps {
                agent: 0,
                pid: 4242
            }
        );
    }

    #[test]
    fn selection_follows_its_row_when_a_refresh_reorders() {
        let mut app = app_with_rows();
        assert_eq!(first_pid(&app), "100");
        app.on_key(key(KeyCode::Down)); // pid 200, second by total wait
        assert_eq!(app.selected[0], 1);
        // pid 200 now waited longest: it moves to the top, the selection with it.
        app.on_event(
            0,
            AgentEvent::Snapshot(Box::new(snapshot(
                "n1",
                vec![
                    lock(100, "api", "main.mu", 10, 9_000_000),
                    lock(200, "db", "", 50, 20_000_000),
                ],
            ))),
            Instant::now(),
        );
        assert_eq!(first_pid(&app), "200");
        assert_eq!(app.selected[0], 0);
        // Reversing the sort keeps it too.
        app.on_key(key(KeyCode::Char('r')));
        assert_eq!(app.selected[0], 1);
    }

    #[test]
    fn selection_is_clamped_and_detail_opens_on_rows_only() {
        let mut app = app_with_rows();
        app.on_key(key(KeyCode::End));
        assert_eq!(app.selected[0], 1);
        app.on_key(key(KeyCode::Down));
        assert_eq!(app.selected[0], 1);
        app.on_key(key(KeyCode::Enter));
        assert!(app.detail);
        app.on_key(key(KeyCode::Esc));
        assert!(!app.detail);
        app.on_key(key(KeyCode::Char('Y')));
        app.on_key(key(KeyCode::Char('/')));
        for c in "pid=1".chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
        app.on_key(key(KeyCode::Enter));
        app.on_key(key(KeyCode::Enter));
        assert!(!app.detail, "nothing to show");
    }
}
