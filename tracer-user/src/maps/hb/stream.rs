//! The happens-before stream's consumer: drains `HB_EVENTS`, turns each
//! record into detector events, and runs one [`Engine`] per process.

use std::collections::HashMap;

use aya::maps::{MapData, RingBuf};
use tracer_common::maps::{
    EVENT_HB_ACCESS, EVENT_HB_GO, EVENT_HB_SYNC, HB_ACT_ACQUIRE, HB_ACT_ACQUIRE_ALL, HB_ACT_BOTH,
    HB_ACT_RELEASE, HbEvent, OP_ITERATE, OP_ITERATE_NEXT, hb_action, hb_index,
};

use super::{Access, Engine, Event, HbFinding, HbProbes, Limits, Op, Stats, SyncObj};

/// Counts of what the consumer did, for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct StreamStats {
    pub events: u64,
    /// Times the detectors restarted because the kernel lost events (or an
    /// event named no goroutine): accesses before a restart are never
    /// compared with accesses after it.
    pub restarts: u64,
    /// Records that were not a known event (wrong size or kind).
    pub malformed: u64,
    /// Map accesses made by standard-library code, left out: its maps sit
    /// behind the library's own locks, whose inlined fast paths are not
    /// probed, and Go's own `-race` runs keep it race-free.
    pub library_accesses: u64,
}

/// Which code is the user's: link-time ranges of its functions, and each
/// process's load bias (PIE).
pub struct UserCode {
    ranges: Vec<(u64, u64)>,
    pie: bool,
    /// `GoBinary::image_base`: subtracted from the mapping's start.
    base: u64,
    bias: HashMap<u32, u64>,
}

impl UserCode {
    pub fn new(bin: &crate::gobin::GoBinary) -> Self {
        let mut ranges: Vec<(u64, u64)> = bin
            .functions_with_prefix("")
            .into_iter()
            .filter(|f| super::is_user_code(&f.name))
            .map(|f| (f.entry, f.entry.saturating_add(f.size.max(1))))
            .collect();
        ranges.sort_unstable();
        UserCode {
            ranges,
            pie: bin.is_pie(),
            base: bin.image_base(),
            bias: HashMap::new(),
        }
    }

    /// Whether the return address `pc` (a runtime address in `pid`) is in
    /// user code. Unknown (a PIE whose mapping cannot be read): yes, so
    /// nothing is hidden.
    fn contains(&mut self, pid: u32, pc: u64) -> bool {
        let bias = if self.pie {
            match *self.bias.entry(pid).or_insert_with(|| {
                crate::process::procfs::exe_mapping_start(pid)
                    .map_or(u64::MAX, |start| start.wrapping_sub(self.base))
            }) {
                u64::MAX => return true,
                b => b,
            }
        } else {
            0
        };
        let pc = pc.wrapping_sub(bias).wrapping_sub(1);
        let i = self.ranges.partition_point(|r| r.0 <= pc);
        i > 0 && self.ranges.get(i - 1).is_some_and(|r| pc < r.1)
    }
}

/// One session's stream and detectors.
pub struct HbStream {
    ring: RingBuf<MapData>,
    pub probes: HbProbes,
    user: UserCode,
    engines: HashMap<u32, Engine>,
    /// Findings of detectors that were restarted, kept for the report.
    earlier: Vec<(u32, HbFinding)>,
    /// Engine counters of restarted detectors, summed.
    earlier_stats: Stats,
    lost_seen: u64,
    limits: Limits,
    pub stats: StreamStats,
}

/// Decodes one ring-buffer record; None when it is not an `HbEvent`.
pub fn decode(item: &[u8]) -> Option<HbEvent> {
    if item.len() < std::mem::size_of::<HbEvent>() {
        return None;
    }
    // SAFETY: the length is checked and HbEvent is plain old data; the read
    // does not assume alignment.
    Some(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<HbEvent>()) })
}

/// The detector events one record stands for (two for a release and
/// acquire); empty for records the detector has no use for.
pub fn events(ev: &HbEvent, probes: &HbProbes) -> Vec<Event> {
    let at = |op| Event {
        g: ev.goid,
        t_ns: ev.ktime_ns,
        op,
    };
    match ev.kind {
        EVENT_HB_GO => vec![at(Op::Go { child: ev.addr })],
        EVENT_HB_ACCESS => {
            let mut op = (ev.cookie & 0x7f) as u32;
            if op == OP_ITERATE_NEXT {
                op = OP_ITERATE;
            }
            vec![at(Op::Access(Access {
                map: ev.addr,
                op,
                site: ev.pc,
                stack: u32::try_from(ev.stack_id).ok(),
                end_ns: None,
            }))]
        }
        EVENT_HB_SYNC => {
            let obj = SyncObj {
                addr: ev.addr,
                kind: probes.kind_of(hb_index(ev.cookie)),
            };
            match hb_action(ev.cookie) {
                HB_ACT_RELEASE => vec![at(Op::Release(obj))],
                HB_ACT_ACQUIRE => vec![at(Op::AcquireOnResume(obj))],
                HB_ACT_BOTH => vec![at(Op::Release(obj)), at(Op::AcquireOnResume(obj))],
                HB_ACT_ACQUIRE_ALL => vec![at(Op::AcquireAllOnResume)],
                _ => Vec::new(),
            }
        }
        _ => Vec::new(),
    }
}

impl HbStream {
    pub fn new(ring: RingBuf<MapData>, probes: HbProbes, user: UserCode) -> Self {
        HbStream {
            ring,
            probes,
            user,
            engines: HashMap::new(),
            earlier: Vec::new(),
            earlier_stats: Stats::default(),
            lost_seen: 0,
            limits: Limits::default(),
            stats: StreamStats::default(),
        }
    }

    /// Drops every detector's state (keeping its findings): events went
    /// missing, so no access before this point may be compared with one after.
    fn restart(&mut self) {
        self.stats.restarts += 1;
        for (pid, e) in self.engines.drain() {
            self.earlier
                .extend(e.findings().into_iter().map(|f| (pid, f)));
            add_stats(&mut self.earlier_stats, &e.stats());
        }
    }

    /// Feeds everything in the ring to the detectors.
    pub fn poll(&mut self) {
        loop {
            let ev = {
                let Some(item) = self.ring.next() else {
                    break;
                };
                decode(&item)
            };
            let Some(ev) = ev else {
                self.stats.malformed += 1;
                continue;
            };
            self.stats.events += 1;
            if ev.lost != self.lost_seen {
                self.lost_seen = ev.lost;
                self.restart();
            }
            if ev.kind == EVENT_HB_ACCESS && !self.user.contains(ev.tgid, ev.pc) {
                // Also keeps a goroutine inside sync.Map.Load (which reads
                // its own maps before it may block) from "resuming" there.
                self.stats.library_accesses += 1;
                continue;
            }
            if ev.goid == u64::MAX {
                // A release of an unknown goroutine may order anything.
                self.restart();
                continue;
            }
            let limits = self.limits;
            let engine = self
                .engines
                .entry(ev.tgid)
                .or_insert_with(|| Engine::started_late(limits));
            for e in events(&ev, &self.probes) {
                tracing::trace!("happens-before event of pid {}: {e:?}", ev.tgid);
                engine.process(&e);
            }
        }
    }

    /// Forgets a process that exited.
    pub fn forget_pid(&mut self, pid: u32) {
        self.engines.remove(&pid);
        self.earlier.retain(|(p, _)| *p != pid);
    }

    /// Every finding so far, with its process, most frequent first.
    pub fn findings(&self) -> Vec<(u32, HbFinding)> {
        let mut v = self.earlier.clone();
        for (pid, e) in &self.engines {
            v.extend(e.findings().into_iter().map(|f| (*pid, f)));
        }
        v.sort_by_key(|f| std::cmp::Reverse(f.1.count));
        v
    }

    /// The detectors' counters, summed over processes and restarts.
    pub fn engine_stats(&self) -> Stats {
        let mut s = self.earlier_stats;
        for e in self.engines.values() {
            add_stats(&mut s, &e.stats());
        }
        s
    }
}

fn add_stats(a: &mut Stats, b: &Stats) {
    a.events += b.events;
    a.accesses += b.accesses;
    a.races += b.races;
    a.goroutines_evicted += b.goroutines_evicted;
    a.sync_objects_evicted += b.sync_objects_evicted;
    a.maps_evicted += b.maps_evicted;
    a.accesses_forgotten += b.accesses_forgotten;
    a.findings_dropped += b.findings_dropped;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::maps::hb_cookie;

    fn ev(kind: u32, cookie: u64, goid: u64, addr: u64) -> HbEvent {
        HbEvent {
            kind,
            tgid: 1,
            cookie,
            goid,
            addr,
            ktime_ns: 10,
            pc: 0x1000,
            stack_id: 3,
            lost: 0,
        }
    }

    #[test]
    fn records_decode_into_detector_events() {
        let p = HbProbes::default();
        let go = events(&ev(EVENT_HB_GO, 0, 1, 7), &p);
        assert_eq!(go[0].op, Op::Go { child: 7 });
        let acc = events(
            &ev(
                EVENT_HB_ACCESS,
                (3 << 8) | u64::from(OP_ITERATE_NEXT),
                1,
                0xa0,
            ),
            &p,
        );
        let Op::Access(a) = acc[0].op else {
            panic!("{acc:?}")
        };
        assert_eq!(
            (a.map, a.op, a.site, a.stack),
            (0xa0, OP_ITERATE, 0x1000, Some(3))
        );
        let both = events(
            &ev(
                EVENT_HB_SYNC,
                hb_cookie(HB_ACT_BOTH, 0, 0, None, 0),
                2,
                0x50,
            ),
            &p,
        );
        assert!(matches!(both[0].op, Op::Release(o) if o.addr == 0x50));
        assert!(matches!(both[1].op, Op::AcquireOnResume(o) if o.addr == 0x50));
        assert!(events(&ev(99, 0, 1, 0), &p).is_empty());
    }

    #[test]
    fn short_records_are_refused() {
        assert!(decode(&[0u8; 8]).is_none());
        let e = ev(EVENT_HB_GO, 0, 1, 2);
        // SAFETY: viewing a plain struct as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const e).cast::<u8>(), std::mem::size_of::<HbEvent>())
        };
        assert_eq!(decode(bytes).map(|d| d.addr), Some(2));
    }
}
