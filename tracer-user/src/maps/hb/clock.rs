//! Vector clocks over goroutine ids, sparse because a process has many
//! goroutines but each one synchronises, directly or transitively, with few.

/// A goroutine id within one process (never reused by the Go runtime).
pub type Goid = u64;

/// A goroutine's logical time: it advances at each release the goroutine
/// performs, so two accesses of one goroutine between the same pair of
/// releases share a tick.
pub type Tick = u32;

/// One access's time: goroutine `g` at its tick `tick` (FastTrack's epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Epoch {
    pub g: Goid,
    pub tick: Tick,
}

impl Epoch {
    /// Whether this access happened before everything a goroutine with clock
    /// `vc` does from now on.
    pub fn ordered_before(self, vc: &VectorClock) -> bool {
        self.tick <= vc.get(self.g)
    }
}

/// For each goroutine, the last tick of it that the owner has synchronised
/// with. Absent entries are 0. Kept sorted by goroutine id, so lookups are
/// binary searches and joins are linear merges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VectorClock {
    entries: Vec<(Goid, Tick)>,
}

impl VectorClock {
    pub fn get(&self, g: Goid) -> Tick {
        self.entries
            .binary_search_by_key(&g, |e| e.0)
            .map_or(0, |i| self.entries[i].1)
    }

    pub fn set(&mut self, g: Goid, tick: Tick) {
        match self.entries.binary_search_by_key(&g, |e| e.0) {
            Ok(i) => self.entries[i].1 = tick,
            Err(i) => self.entries.insert(i, (g, tick)),
        }
    }

    /// Advances `g`'s own entry: called after `g` released, so its later
    /// accesses are not covered by what it published.
    pub fn tick(&mut self, g: Goid) {
        let t = self.get(g).saturating_add(1);
        self.set(g, t);
    }

    /// Pointwise maximum: afterwards the owner knows everything `other` knew.
    pub fn join(&mut self, other: &VectorClock) {
        if other.entries.is_empty() {
            return;
        }
        if self.entries.is_empty() {
            self.entries.clone_from(&other.entries);
            return;
        }
        let mut out = Vec::with_capacity(self.entries.len().max(other.entries.len()));
        let (mut a, mut b) = (
            self.entries.iter().peekable(),
            other.entries.iter().peekable(),
        );
        loop {
            match (a.peek(), b.peek()) {
                (Some(&&x), Some(&&y)) => {
                    if x.0 < y.0 {
                        out.push(x);
                        a.next();
                    } else if y.0 < x.0 {
                        out.push(y);
                        b.next();
                    } else {
                        out.push((x.0, x.1.max(y.1)));
                        a.next();
                        b.next();
                    }
                }
                (Some(&&x), None) => {
                    out.push(x);
                    a.next();
                }
                (None, Some(&&y)) => {
                    out.push(y);
                    b.next();
                }
                (None, None) => break,
            }
        }
        self.entries = out;
    }

    /// Drops the entries of goroutines `keep` rejects (evicted ones).
    pub fn retain(&mut self, mut keep: impl FnMut(Goid) -> bool) {
        self.entries.retain(|e| keep(e.0));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vc(entries: &[(Goid, Tick)]) -> VectorClock {
        let mut v = VectorClock::default();
        for &(g, t) in entries {
            v.set(g, t);
        }
        v
    }

    #[test]
    fn join_is_the_pointwise_maximum() {
        let mut a = vc(&[(1, 3), (4, 1), (9, 2)]);
        a.join(&vc(&[(2, 5), (4, 7), (9, 1), (12, 1)]));
        assert_eq!(a, vc(&[(1, 3), (2, 5), (4, 7), (9, 2), (12, 1)]));
        let mut e = VectorClock::default();
        e.join(&a);
        assert_eq!(e, a);
        a.join(&VectorClock::default());
        assert_eq!(e, a);
    }

    #[test]
    fn epochs_are_ordered_by_the_observer_clock() {
        let v = vc(&[(7, 3)]);
        assert!(Epoch { g: 7, tick: 3 }.ordered_before(&v));
        assert!(!Epoch { g: 7, tick: 4 }.ordered_before(&v));
        assert!(!Epoch { g: 8, tick: 1 }.ordered_before(&v));
    }

    #[test]
    fn tick_and_retain() {
        let mut v = vc(&[(1, 1), (2, 2)]);
        v.tick(2);
        v.tick(3);
        assert_eq!((v.get(2), v.get(3)), (3, 1));
        v.retain(|g| g != 2);
        assert_eq!(v, vc(&[(1, 1), (3, 1)]));
    }
}
