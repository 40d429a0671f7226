//! The detector: replays one process's ordered events through vector clocks
//! and the per-map shadow state, within fixed memory bounds.

use std::collections::{HashMap, HashSet};

use super::{
    Access, Event, Goid, HbFinding, Limits, Op, Stats, SyncObj,
    clock::{Epoch, VectorClock},
    shadow::{MAX_HELD, MapShadow, Record},
};

/// Objects a goroutine may be blocked on at once (a select's cases); beyond
/// it the goroutine acquires everything released so far when it resumes.
const MAX_PENDING: usize = 64;
/// Locks remembered as held by one goroutine (for explanations only).
const MAX_HELD_TRACKED: usize = 16;

struct GState {
    vc: VectorClock,
    /// Objects to acquire at the goroutine's next event.
    pending: Vec<u64>,
    /// Acquire every object at the next event: set when `pending` overflowed
    /// or when the goroutine's past may have been evicted.
    resync_all: bool,
    held: Vec<u64>,
    last_seen: u64,
}

struct SState {
    vc: VectorClock,
    last_seen: u64,
}

/// The happens-before detector of one process.
pub struct Engine {
    limits: Limits,
    gs: HashMap<Goid, GState>,
    syncs: HashMap<u64, SState>,
    maps: HashMap<u64, MapShadow>,
    /// What evicted goroutines knew: a goroutine that reappears unknown after
    /// an eviction starts from it (it may be one of them).
    floor_g: VectorClock,
    /// What evicted sync objects held: joined by every acquire once one was
    /// evicted, since the object acquired may be one of them.
    floor_s: VectorClock,
    goroutine_evicted: bool,
    sync_evicted: bool,
    /// The stream began while the program ran: a goroutine first seen
    /// without its `go` event may have been blocked on anything, so it
    /// acquires every object at its first event.
    late_start: bool,
    seq: u64,
    /// Keyed by kind and the unordered pair of sites.
    findings: HashMap<(&'static str, u64, u64), HbFinding>,
    stats: Stats,
}

impl Engine {
    pub fn new(limits: Limits) -> Self {
        Engine {
            limits,
            gs: HashMap::new(),
            syncs: HashMap::new(),
            maps: HashMap::new(),
            floor_g: VectorClock::default(),
            floor_s: VectorClock::default(),
            goroutine_evicted: false,
            sync_evicted: false,
            late_start: false,
            seq: 0,
            findings: HashMap::new(),
            stats: Stats::default(),
        }
    }

    /// A detector for a stream that starts in a running program (or
    /// restarts after lost events): see `late_start`.
    pub fn started_late(limits: Limits) -> Self {
        Engine {
            late_start: true,
            ..Engine::new(limits)
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Goroutines, sync objects and maps currently tracked.
    pub fn tracked(&self) -> (usize, usize, usize) {
        (self.gs.len(), self.syncs.len(), self.maps.len())
    }

    /// Findings, most frequent first.
    pub fn findings(&self) -> Vec<HbFinding> {
        let mut v: Vec<HbFinding> = self.findings.values().cloned().collect();
        v.sort_by(|a, b| b.count.cmp(&a.count).then(a.later.t_ns.cmp(&b.later.t_ns)));
        v
    }

    pub fn process(&mut self, ev: &Event) {
        self.seq += 1;
        self.stats.events += 1;
        let g = ev.g;
        self.ensure_goroutine(g);
        self.resume(g);
        match ev.op {
            Op::Go { child } => self.go(g, child),
            Op::Release(obj) => self.release(g, obj),
            Op::Acquire(obj) => self.acquire(g, obj.addr, obj.kind.is_lock()),
            Op::AcquireOnResume(obj) => {
                if let Some(st) = self.gs.get_mut(&g) {
                    if st.pending.len() < MAX_PENDING {
                        st.pending.push(obj.addr);
                        if obj.kind.is_lock() && st.held.len() < MAX_HELD_TRACKED {
                            st.held.push(obj.addr);
                        }
                    } else {
                        st.resync_all = true;
                    }
                }
            }
            Op::AcquireAllOnResume => {
                if let Some(st) = self.gs.get_mut(&g) {
                    st.resync_all = true;
                }
            }
            Op::Access(a) => self.access(g, ev.t_ns, a),
        }
        self.enforce_limits(g);
    }

    fn ensure_goroutine(&mut self, g: Goid) {
        if self.gs.contains_key(&g) {
            return;
        }
        let mut vc = if self.goroutine_evicted {
            self.floor_g.clone()
        } else {
            VectorClock::default()
        };
        vc.tick(g);
        self.gs.insert(
            g,
            GState {
                vc,
                pending: Vec::new(),
                resync_all: self.goroutine_evicted || self.late_start,
                held: Vec::new(),
                last_seen: self.seq,
            },
        );
    }

    /// Applies the acquires `g` was blocked on: it is running again, so what
    /// it waited for has been released by now.
    fn resume(&mut self, g: Goid) {
        let Some(st) = self.gs.get_mut(&g) else {
            return;
        };
        st.last_seen = self.seq;
        let pending = std::mem::take(&mut st.pending);
        let all = std::mem::replace(&mut st.resync_all, false);
        for addr in pending {
            self.acquire(g, addr, false);
        }
        if all && let Some(st) = self.gs.get_mut(&g) {
            for s in self.syncs.values() {
                st.vc.join(&s.vc);
            }
            st.vc.join(&self.floor_s);
            st.vc.join(&self.floor_g);
        }
    }

    fn go(&mut self, parent: Goid, child: Goid) {
        let Some(p) = self.gs.get_mut(&parent) else {
            return;
        };
        let pvc = p.vc.clone();
        p.vc.tick(parent);
        let seq = self.seq;
        let c = self.gs.entry(child).or_insert_with(|| GState {
            vc: VectorClock::default(),
            pending: Vec::new(),
            resync_all: false,
            held: Vec::new(),
            last_seen: seq,
        });
        c.vc.join(&pvc);
        if c.vc.get(child) == 0 {
            c.vc.tick(child);
        }
        c.last_seen = seq;
    }

    fn release(&mut self, g: Goid, obj: SyncObj) {
        let seq = self.seq;
        let Some(st) = self.gs.get_mut(&g) else {
            return;
        };
        let s = self.syncs.entry(obj.addr).or_insert_with(|| SState {
            vc: VectorClock::default(),
            last_seen: seq,
        });
        // Merge, never store: over-synchronising can only hide races.
        s.vc.join(&st.vc);
        s.last_seen = seq;
        st.vc.tick(g);
        if obj.kind.is_lock()
            && let Some(i) = st.held.iter().rposition(|&l| l == obj.addr)
        {
            st.held.remove(i);
        }
    }

    fn acquire(&mut self, g: Goid, addr: u64, lock: bool) {
        let seq = self.seq;
        let Some(st) = self.gs.get_mut(&g) else {
            return;
        };
        if let Some(s) = self.syncs.get_mut(&addr) {
            st.vc.join(&s.vc);
            s.last_seen = seq;
        }
        if self.sync_evicted {
            st.vc.join(&self.floor_s);
        }
        if lock && st.held.len() < MAX_HELD_TRACKED {
            st.held.push(addr);
        }
    }

    fn access(&mut self, g: Goid, t_ns: u64, a: Access) {
        self.stats.accesses += 1;
        let Some(st) = self.gs.get(&g) else {
            return;
        };
        let cur = Record {
            epoch: Epoch {
                g,
                tick: st.vc.get(g),
            },
            t_ns,
            access: a,
            held: st.held.iter().take(MAX_HELD).copied().collect(),
        };
        let shadow = self.maps.entry(a.map).or_default();
        shadow.last_seen = self.seq;
        let checked = shadow.access(cur.clone(), &st.vc, self.limits.readers_per_map);
        self.stats.accesses_forgotten += checked.forgotten;
        for earlier in checked.races {
            self.stats.races += 1;
            let f = HbFinding::new(&earlier, &cur, st.vc.get(earlier.epoch.g));
            let (lo, hi) = if earlier.access.site <= a.site {
                (earlier.access.site, a.site)
            } else {
                (a.site, earlier.access.site)
            };
            let key = (f.kind, lo, hi);
            if let Some(old) = self.findings.get_mut(&key) {
                old.count += 1;
            } else if self.findings.len() < self.limits.findings {
                self.findings.insert(key, f);
            } else {
                self.stats.findings_dropped += 1;
            }
        }
    }

    fn enforce_limits(&mut self, current: Goid) {
        if self.gs.len() > self.limits.goroutines {
            self.evict_goroutines(current);
        }
        if self.syncs.len() > self.limits.sync_objects {
            let victims = oldest(
                self.syncs.iter().map(|(&a, s)| (s.last_seen, a)),
                self.syncs.len(),
                self.limits.sync_objects,
            );
            for a in victims {
                if let Some(s) = self.syncs.remove(&a) {
                    self.floor_s.join(&s.vc);
                    self.stats.sync_objects_evicted += 1;
                }
            }
            self.sync_evicted = true;
        }
        if self.maps.len() > self.limits.maps {
            let victims = oldest(
                self.maps.iter().map(|(&a, m)| (m.last_seen, a)),
                self.maps.len(),
                self.limits.maps,
            );
            for a in victims {
                if let Some(m) = self.maps.remove(&a) {
                    self.stats.accesses_forgotten += m.len();
                    self.stats.maps_evicted += 1;
                }
            }
        }
    }

    /// Evicts the least recently active goroutines, and with them every
    /// access they made and every clock entry about them, so nothing can
    /// compare against a goroutine the detector no longer knows.
    fn evict_goroutines(&mut self, current: Goid) {
        let victims: HashSet<Goid> = oldest(
            self.gs
                .iter()
                .filter(|(g, _)| **g != current)
                .map(|(&g, s)| (s.last_seen, g)),
            self.gs.len(),
            self.limits.goroutines,
        )
        .into_iter()
        .collect();
        for g in &victims {
            if let Some(st) = self.gs.remove(g) {
                self.floor_g.join(&st.vc);
                self.stats.goroutines_evicted += 1;
            }
        }
        let gone = |g: Goid| victims.contains(&g);
        for m in self.maps.values_mut() {
            self.stats.accesses_forgotten += m.forget(gone);
        }
        for st in self.gs.values_mut() {
            st.vc.retain(|g| !gone(g));
        }
        for s in self.syncs.values_mut() {
            s.vc.retain(|g| !gone(g));
        }
        self.floor_g.retain(|g| !gone(g));
        self.floor_s.retain(|g| !gone(g));
        self.goroutine_evicted = true;
    }
}

/// The keys of the least recently seen entries: enough to go back under
/// `limit`, plus an eighth of it, so evictions (and their sweeps) are rare.
fn oldest<K: Ord + Copy>(
    items: impl Iterator<Item = (u64, K)>,
    len: usize,
    limit: usize,
) -> Vec<K> {
    let n = len.saturating_sub(limit) + (limit / 8).max(1);
    let mut v: Vec<(u64, K)> = items.collect();
    if n < v.len() {
        v.select_nth_unstable(n);
        v.truncate(n);
    }
    v.into_iter().map(|(_, k)| k).collect()
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
