//! Keeps tracing from hurting the traced program. A contended wait costs two
//! uprobe traps (≈40 µs on a VM, a few µs on bare metal); a program that waits
//! tens of thousands of times a second would lose a large share of its CPU to
//! them. The guard watches the wait rate and tells the session to detach the
//! lock probes for a cool-down when it passes a limit, then to re-attach them.
//! While paused, counts are lower bounds, and the report says so.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

/// What the session should do after an observation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Keep,
    Pause,
    Resume,
}

/// Rate limiter over probe hits.
#[derive(Debug)]
pub struct RateGuard {
    max_per_sec: u64,
    cooldown: Duration,
    /// (time, cumulative hits) over the last second.
    window: VecDeque<(Instant, u64)>,
    paused_since: Option<Instant>,
    pauses: u32,
    paused_total: Duration,
}

/// Span over which the rate is measured.
const WINDOW: Duration = Duration::from_secs(1);

impl RateGuard {
    /// `max_per_sec` of 0 disables the guard.
    pub fn new(max_per_sec: u64, cooldown: Duration) -> Self {
        Self {
            max_per_sec,
            cooldown,
            window: VecDeque::new(),
            paused_since: None,
            pauses: 0,
            paused_total: Duration::ZERO,
        }
    }

    /// Feeds the cumulative hit count seen at `now`.
    pub fn observe(&mut self, now: Instant, hits: u64) -> Action {
        if let Some(since) = self.paused_since {
            if now.saturating_duration_since(since) >= self.cooldown {
                self.paused_total += now.saturating_duration_since(since);
                self.paused_since = None;
                self.window.clear();
                self.window.push_back((now, hits));
                return Action::Resume;
            }
            return Action::Keep;
        }
        self.window.push_back((now, hits));
        while self.window.len() > 2
            && self
                .window
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > WINDOW)
        {
            self.window.pop_front();
        }
        if self.max_per_sec == 0 {
            return Action::Keep;
        }
        let (Some(&(t0, h0)), Some(&(t1, h1))) = (self.window.front(), self.window.back()) else {
            return Action::Keep;
        };
        let dt = t1.saturating_duration_since(t0);
        if dt < WINDOW / 2 {
            return Action::Keep;
        }
        let rate = h1.saturating_sub(h0) as f64 / dt.as_secs_f64();
        if rate > self.max_per_sec as f64 {
            self.paused_since = Some(now);
            self.pauses += 1;
            return Action::Pause;
        }
        Action::Keep
    }

    /// Number of pauses and total paused time so far (including a pause in progress).
    pub fn paused(&self, now: Instant) -> (u32, Duration) {
        let current = self
            .paused_since
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        (self.pauses, self.paused_total + current)
    }

    pub fn limit(&self) -> u64 {
        self.max_per_sec
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_above_limit_and_resumes_after_cooldown() {
        let t = Instant::now();
        let ms = |n: u64| t + Duration::from_millis(n);
        let mut g = RateGuard::new(1000, Duration::from_secs(5));
        // 500 hits/s: fine.
        assert_eq!(g.observe(ms(0), 0), Action::Keep);
        assert_eq!(g.observe(ms(500), 250), Action::Keep);
        assert_eq!(g.observe(ms(1000), 500), Action::Keep);
        // Jump to 5000 hits/s: judged over the last second (250 → 1500 in 0.75 s).
        assert_eq!(g.observe(ms(1250), 1500), Action::Pause);
        assert_eq!(g.observe(ms(3000), 1500), Action::Keep);
        assert_eq!(g.paused(ms(3000)), (1, Duration::from_millis(1750)));
        assert_eq!(g.observe(ms(6000), 1500), Action::Keep);
        assert_eq!(g.observe(ms(6500), 1500), Action::Resume);
        assert_eq!(g.paused(ms(7000)), (1, Duration::from_millis(5250)));
        // Quiet after resuming.
        assert_eq!(g.observe(ms(7000), 1600), Action::Keep);
        assert_eq!(g.observe(ms(7500), 1700), Action::Keep);
    }

    #[test]
    fn disabled_never_pauses_and_short_bursts_wait_for_half_a_window() {
        let t = Instant::now();
        let mut off = RateGuard::new(0, Duration::from_secs(1));
        assert_eq!(off.observe(t, 0), Action::Keep);
        assert_eq!(
            off.observe(t + Duration::from_secs(1), 1_000_000),
            Action::Keep
        );
        let mut g = RateGuard::new(10, Duration::from_secs(1));
        assert_eq!(g.observe(t, 0), Action::Keep);
        // 1000 hits in 100 ms: not yet judged.
        assert_eq!(
            g.observe(t + Duration::from_millis(100), 1000),
            Action::Keep
        );
        assert_eq!(
            g.observe(t + Duration::from_millis(600), 1000),
            Action::Pause
        );
    }
}
