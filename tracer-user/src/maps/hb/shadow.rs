//! Per-map shadow state (FastTrack): the last write's epoch and, per
//! goroutine, its last read since that write. That is all a happens-before
//! check of the next access needs: a write is compared with both, a read with
//! the write only.

use tracer_common::maps::is_write;

use super::{
    Access, Goid,
    clock::{Epoch, VectorClock},
};

/// Locks a goroutine held, as remembered with an access (for explanations).
pub const MAX_HELD: usize = 4;

/// One remembered access.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub epoch: Epoch,
    pub t_ns: u64,
    pub access: Access,
    /// Addresses of the mutexes the goroutine held, at most [`MAX_HELD`].
    pub held: Vec<u64>,
}

#[derive(Debug, Default)]
pub struct MapShadow {
    pub write: Option<Record>,
    pub reads: Vec<Record>,
    /// The engine's event sequence number at the last access (for LRU).
    pub last_seen: u64,
}

/// The outcome of one access against a map's shadow state.
#[derive(Debug, Default)]
pub struct Checked {
    /// Earlier accesses the new one races with.
    pub races: Vec<Record>,
    /// Reads dropped by the per-map reader bound.
    pub forgotten: u64,
}

impl MapShadow {
    /// Checks `cur` (by `cur.epoch.g`, whose clock is `vc`) against the
    /// remembered accesses, then remembers it.
    pub fn access(&mut self, cur: Record, vc: &VectorClock, max_readers: usize) -> Checked {
        let g = cur.epoch.g;
        let unordered = |r: &Record| r.epoch.g != g && !r.epoch.ordered_before(vc);
        let mut out = Checked::default();
        if let Some(w) = self.write.as_ref().filter(|w| unordered(w)) {
            out.races.push(w.clone());
        }
        if is_write(cur.access.op) {
            out.races
                .extend(self.reads.iter().filter(|r| unordered(r)).cloned());
            // Every read is now either ordered before this write or reported.
            self.reads.clear();
            self.write = Some(cur);
        } else {
            match self.reads.iter_mut().find(|r| r.epoch.g == g) {
                Some(r) => *r = cur,
                None => {
                    if self.reads.len() >= max_readers.max(1) {
                        // The oldest read goes: races with it are missed, counted.
                        self.reads.remove(0);
                        out.forgotten += 1;
                    }
                    self.reads.push(cur);
                }
            }
        }
        out
    }

    /// Forgets the accesses of evicted goroutines; returns how many.
    pub fn forget(&mut self, evicted: impl Fn(Goid) -> bool) -> u64 {
        let mut n = 0;
        if self.write.as_ref().is_some_and(|w| evicted(w.epoch.g)) {
            self.write = None;
            n += 1;
        }
        let before = self.reads.len();
        self.reads.retain(|r| !evicted(r.epoch.g));
        n + (before - self.reads.len()) as u64
    }

    /// Accesses remembered.
    pub fn len(&self) -> u64 {
        u64::from(self.write.is_some()) + self.reads.len() as u64
    }
}
