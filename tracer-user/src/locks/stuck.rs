//! Stuck waiters: lock waits that began and have not ended. The kernel keeps
//! every wait in progress in `LOCK_INFLIGHT`; user space scans it and reports
//! each wait older than a threshold, with its goroutine, lock and stack.
//! Typical causes: a deadlock, or a lock held across a slow call.

use std::collections::{BTreeMap, HashMap};

use tracer_common::{Inflight, InflightKey};

use crate::process::memory;

/// One wait seen in progress for longer than the threshold.
#[derive(Clone, Debug)]
pub struct StuckWait {
    pub key: InflightKey,
    pub rec: Inflight,
    /// Longest age observed, ns.
    pub age_ns: u64,
    /// Still waiting at the last scan.
    pub ongoing: bool,
    pub goid: Option<u64>,
}

/// Stuck waits kept per process. A deadlock that strands a new goroutine
/// every few milliseconds would otherwise grow the table, the findings and
/// the log without end; past this, the oldest ended waits make room, and
/// with none ended new ones are only counted.
pub const MAX_STUCK_PER_PROCESS: usize = 256;

/// Stuck waits of one session, keyed by (pid, goroutine, wait start).
#[derive(Default)]
pub struct StuckWaits {
    waits: BTreeMap<(u32, u64, u64), StuckWait>,
    /// Waits kept, per pid.
    kept: HashMap<u32, usize>,
    /// Waits past the threshold that were not kept or were evicted, per pid.
    dropped: HashMap<u32, u64>,
}

/// Reads `N` bytes at `g + offset` in `pid`'s memory.
fn read_g<const N: usize>(pid: u32, g: u64, offset: u64) -> Option<[u8; N]> {
    if g & (1 << 63) != 0 {
        return None; // not a g pointer: the thread-id fallback key
    }
    memory::read_array::<N>(pid, g.checked_add(offset)?)
}

/// Reads the goroutine id at `g + goid_offset` in `pid`'s memory.
pub fn read_goid(pid: u32, g: u64, goid_offset: u64) -> Option<u64> {
    read_g::<8>(pid, g, goid_offset).map(u64::from_ne_bytes)
}

/// `_Gwaiting` in `runtime.g.atomicstatus`, and the `_Gscan` bit the
/// garbage collector sets on top of a status while it scans the stack.
const G_WAITING: u32 = 4;
const G_SCAN: u32 = 0x1000;

/// Where a goroutine's run state is read, to tell a wait in progress from
/// one that ended out of the probes' sight (a hand-off).
#[derive(Clone, Debug)]
pub struct ParkCheck {
    pub status_offset: u64,
    pub reason_offset: u64,
    /// The `waitReason` values of a goroutine parked in a lock slow path.
    pub lock_reasons: std::ops::RangeInclusive<u8>,
}

impl ParkCheck {
    /// Whether goroutine `g` of `pid` is parked on a lock. `None` when its
    /// state cannot be read (the process is gone, or `g` is no pointer).
    pub fn parked_on_lock(&self, pid: u32, g: u64) -> Option<bool> {
        let status = u32::from_ne_bytes(read_g::<4>(pid, g, self.status_offset)?);
        let [reason] = read_g::<1>(pid, g, self.reason_offset)?;
        Some(status & !G_SCAN == G_WAITING && self.lock_reasons.contains(&reason))
    }
}

impl StuckWaits {
    /// Folds one scan of the in-flight map in. `goid` reads a goroutine id.
    pub fn update(
        &mut self,
        inflight: &[(InflightKey, Inflight)],
        now_ns: u64,
        threshold_ns: u64,
        goid: impl Fn(&InflightKey) -> Option<u64>,
    ) {
        for w in self.waits.values_mut() {
            w.ongoing = false;
        }
        for (k, rec) in inflight {
            let age = now_ns.saturating_sub(rec.start_ns);
            let id = (k.tgid, k.g, rec.start_ns);
            if let Some(w) = self.waits.get_mut(&id) {
                w.age_ns = w.age_ns.max(age);
                w.ongoing = true;
            } else if age >= threshold_ns {
                if !self.make_room(k.tgid) {
                    *self.dropped.entry(k.tgid).or_default() += 1;
                    continue;
                }
                *self.kept.entry(k.tgid).or_default() += 1;
                self.waits.insert(
                    id,
                    StuckWait {
                        key: *k,
                        rec: *rec,
                        age_ns: age,
                        ongoing: true,
                        goid: goid(k),
                    },
                );
            }
        }
    }

    /// Whether `pid` may keep one more wait, evicting its oldest ended one
    /// (counted as dropped) when it is at the limit.
    fn make_room(&mut self, pid: u32) -> bool {
        if self.kept.get(&pid).copied().unwrap_or(0) < MAX_STUCK_PER_PROCESS {
            return true;
        }
        let oldest = self
            .waits
            .iter()
            .filter(|((tgid, _, _), w)| *tgid == pid && !w.ongoing)
            .min_by_key(|((_, _, start), _)| *start)
            .map(|(id, _)| *id);
        let Some(id) = oldest else {
            return false;
        };
        self.waits.remove(&id);
        if let Some(n) = self.kept.get_mut(&pid) {
            *n -= 1;
        }
        *self.dropped.entry(pid).or_default() += 1;
        true
    }

    /// Stuck waits of `pid` not in [`StuckWaits::iter`]: past the per-process
    /// limit, or evicted to make room.
    pub fn dropped(&self, pid: u32) -> u64 {
        self.dropped.get(&pid).copied().unwrap_or(0)
    }

    /// Final pass once the process has exited: a wait is ongoing only if it was
    /// still in progress at exit; ages stay as last observed, since the dead
    /// process's stale entries would otherwise keep ageing.
    pub fn settle(&mut self, inflight: &[(InflightKey, Inflight)]) {
        for ((tgid, g, start), w) in self.waits.iter_mut() {
            w.ongoing = inflight
                .iter()
                .any(|(k, r)| k.tgid == *tgid && k.g == *g && r.start_ns == *start);
        }
    }

    /// Drops the waits of a process that is gone.
    pub fn forget(&mut self, pid: u32) {
        self.waits.retain(|(tgid, _, _), _| *tgid != pid);
        self.kept.remove(&pid);
        self.dropped.remove(&pid);
    }

    pub fn iter(&self) -> impl Iterator<Item = &StuckWait> {
        self.waits.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait(g: u64, start: u64) -> (InflightKey, Inflight) {
        (
            InflightKey {
                tgid: 7,
                _pad: 0,
                g,
            },
            Inflight {
                start_ns: start,
                lock_addr: 0x10,
                caller_pc: 0,
                stack_id: -1,
                kind: 1,
                ..Default::default()
            },
        )
    }

    #[test]
    fn reports_only_waits_past_threshold_and_tracks_their_end() {
        let mut s = StuckWaits::default();
        let scan = [wait(1, 0), wait(2, 900)];
        s.update(&scan, 1_000, 500, |_| Some(42));
        let v: Vec<_> = s.iter().collect();
        assert_eq!(v.len(), 1);
        assert_eq!(
            (v[0].key.g, v[0].age_ns, v[0].ongoing, v[0].goid),
            (1, 1_000, true, Some(42))
        );
        // Next scan: g=1 still waiting and older, g=2 now past threshold too.
        s.update(&scan, 2_000, 500, |_| None);
        assert_eq!(s.iter().count(), 2);
        assert_eq!(s.iter().next().map(|w| w.age_ns), Some(2_000));
        // Both ended.
        s.update(&[], 3_000, 500, |_| None);
        assert!(s.iter().all(|w| !w.ongoing));
        assert_eq!(s.iter().next().map(|w| w.age_ns), Some(2_000));
    }

    #[test]
    fn a_flood_of_stuck_goroutines_is_bounded_and_counted() {
        let mut s = StuckWaits::default();
        let n = MAX_STUCK_PER_PROCESS as u64;
        // n + 10 goroutines all still stuck: n kept, 10 counted.
        let flood: Vec<_> = (0..n + 10).map(|g| wait(g, 0)).collect();
        s.update(&flood, 1_000, 500, |_| None);
        assert_eq!(s.iter().count(), MAX_STUCK_PER_PROCESS);
        assert_eq!(s.dropped(7), 10);
        // They end; 5 new ones get stuck: the oldest ended waits make room.
        let next: Vec<_> = (1000..1005).map(|g| wait(g, 100)).collect();
        s.update(&next, 2_000, 500, |_| None);
        assert_eq!(s.iter().count(), MAX_STUCK_PER_PROCESS);
        assert_eq!(s.dropped(7), 15);
        assert_eq!(s.iter().filter(|w| w.ongoing).count(), 5);
        assert_eq!(s.dropped(8), 0);
        s.forget(7);
        assert_eq!((s.iter().count(), s.dropped(7)), (0, 0));
    }

    #[test]
    fn park_check_reads_status_and_reason() {
        // A fake g: status at 0, reason at 8.
        let mut fake = [0u8; 16];
        let check = ParkCheck {
            status_offset: 0,
            reason_offset: 8,
            lock_reasons: 21..=23,
        };
        let pid = std::process::id();
        let at = |f: &[u8; 16]| f.as_ptr() as u64;
        for (status, reason, parked) in [
            (G_WAITING, 21, true),
            (G_WAITING | G_SCAN, 23, true),
            (G_WAITING, 24, false), // waiting, but not on a lock
            (2, 21, false),         // running
        ] {
            fake[..4].copy_from_slice(&status.to_ne_bytes());
            fake[8] = reason;
            assert_eq!(
                check.parked_on_lock(pid, at(std::hint::black_box(&fake))),
                Some(parked)
            );
        }
        assert_eq!(check.parked_on_lock(pid, 1 << 63 | 3), None);
    }

    #[test]
    fn goid_read_is_safe_on_bad_addresses() {
        assert_eq!(read_goid(std::process::id(), 1 << 63 | 5, 152), None);
        assert_eq!(read_goid(std::process::id(), 0, 0), None);
        assert_eq!(read_goid(std::process::id(), u64::MAX - 4, 152), None);
        let x: u64 = 0xdead_beef;
        let addr = &x as *const u64 as u64;
        assert_eq!(
            read_goid(std::process::id(), addr - 8, 8),
            Some(0xdead_beef)
        );
    }
}
