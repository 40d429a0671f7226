//! The detector against hand-written traces of the patterns real races
//! follow, and against a brute-force happens-before oracle on random traces.

use std::collections::{BTreeSet, HashMap};

use tracer_common::maps::{OP_ITERATE, OP_READ, OP_WRITE, is_write};

use super::Engine;
use crate::maps::hb::{Access, Event, Goid, Limits, Op, SyncKind, SyncObj};

const MU: SyncObj = SyncObj {
    addr: 0x100,
    kind: SyncKind::Mutex,
};
const CH: SyncObj = SyncObj {
    addr: 0x300,
    kind: SyncKind::Chan,
};
const WG: SyncObj = SyncObj {
    addr: 0x400,
    kind: SyncKind::WaitGroup,
};
const M: u64 = 0xc000_1000;

/// Builds a trace; each event is 1 µs after the previous one.
#[derive(Default)]
struct Trace {
    evs: Vec<Event>,
}

impl Trace {
    fn push(&mut self, g: Goid, op: Op) -> &mut Self {
        let t_ns = 1_000 * (self.evs.len() as u64 + 1);
        self.evs.push(Event { g, t_ns, op });
        self
    }
    fn go(&mut self, parent: Goid, child: Goid) -> &mut Self {
        self.push(parent, Op::Go { child })
    }
    fn rel(&mut self, g: Goid, o: SyncObj) -> &mut Self {
        self.push(g, Op::Release(o))
    }
    fn acq(&mut self, g: Goid, o: SyncObj) -> &mut Self {
        self.push(g, Op::Acquire(o))
    }
    fn wait(&mut self, g: Goid, o: SyncObj) -> &mut Self {
        self.push(g, Op::AcquireOnResume(o))
    }
    fn op(&mut self, g: Goid, map: u64, op: u32, site: u64) -> &mut Self {
        self.push(
            g,
            Op::Access(Access {
                map,
                op,
                site,
                stack: None,
                end_ns: None,
            }),
        )
    }
    fn rd(&mut self, g: Goid, site: u64) -> &mut Self {
        self.op(g, M, OP_READ, site)
    }
    fn wr(&mut self, g: Goid, site: u64) -> &mut Self {
        self.op(g, M, OP_WRITE, site)
    }
    fn run(&self, limits: Limits) -> Engine {
        let mut e = Engine::new(limits);
        for ev in &self.evs {
            e.process(ev);
        }
        e
    }
    fn kinds(&self) -> Vec<&'static str> {
        let mut k: Vec<_> = self
            .run(Limits::default())
            .findings()
            .iter()
            .map(|f| f.kind)
            .collect();
        k.sort();
        k
    }
}

#[test]
fn accesses_microseconds_apart_without_synchronisation_race() {
    let mut t = Trace::default();
    t.go(1, 2).go(1, 3).wr(2, 0xa).rd(3, 0xb);
    let e = t.run(Limits::default());
    let f = e.findings();
    assert_eq!(f.len(), 1, "{f:#?}");
    let f = &f[0];
    assert_eq!(f.kind, "concurrent_map_read_write");
    assert_eq!(
        (f.earlier.goid, f.earlier.op, f.earlier.site),
        (2, "write", 0xa)
    );
    assert_eq!((f.later.goid, f.later.op, f.later.site), (3, "read", 0xb));
    assert_eq!((f.gap_ns, f.overlapped, f.known_tick), (1_000, None, 0));
    let why = f.explain();
    assert!(
        why.contains("1.0 µs apart, ordered by luck only")
            && why.contains("goroutine 3 never synchronised with goroutine 2"),
        "{why}"
    );
    assert_eq!(e.stats().races, 1);
}

#[test]
fn a_mutex_orders_accesses_even_when_the_second_locker_blocks_first() {
    let mut t = Trace::default();
    t.go(1, 2).go(1, 3);
    t.wait(2, MU).wr(2, 0xa);
    // Goroutine 3 enters Lock while 2 holds it: it acquires when it resumes.
    t.wait(3, MU).rel(2, MU).rd(3, 0xb).rel(3, MU);
    assert_eq!(t.kinds(), Vec::<&str>::new());
}

#[test]
fn acquiring_at_the_entry_probe_would_miss_the_release_it_waits_for() {
    // The same program with the acquire applied when Lock is entered: the
    // holder's Unlock has not happened yet, so the read looks unordered.
    // This is why blocking operations use AcquireOnResume.
    let mut t = Trace::default();
    t.go(1, 2).go(1, 3);
    t.wait(2, MU).wr(2, 0xa);
    t.acq(3, MU).rel(2, MU).rd(3, 0xb).rel(3, MU);
    assert_eq!(t.kinds(), vec!["concurrent_map_read_write"]);
}

#[test]
fn a_go_statement_orders_the_parent_before_the_child_only() {
    let mut ok = Trace::default();
    ok.wr(1, 0xa).go(1, 2).rd(2, 0xb);
    assert_eq!(ok.kinds(), Vec::<&str>::new());
    let mut racy = Trace::default();
    racy.go(1, 2).wr(1, 0xa).rd(2, 0xb);
    assert_eq!(racy.kinds(), vec!["concurrent_map_read_write"]);
}

#[test]
fn a_channel_send_orders_the_sender_before_the_receiver() {
    let mut t = Trace::default();
    t.go(1, 2).go(1, 3);
    // The receiver blocks before the send, as a worker waiting for jobs.
    t.wait(3, CH).wr(2, 0xa).rel(2, CH).rd(3, 0xb);
    assert_eq!(t.kinds(), Vec::<&str>::new());
    // Without the receive, the same accesses race.
    let mut racy = Trace::default();
    racy.go(1, 2).go(1, 3).wr(2, 0xa).rel(2, CH).rd(3, 0xb);
    assert_eq!(racy.kinds(), vec!["concurrent_map_read_write"]);
}

#[test]
fn a_goroutine_started_after_wait_races_with_the_waiter() {
    let mut t = Trace::default();
    t.go(1, 2).wait(1, WG).wr(2, 0xa).rel(2, WG);
    t.rd(1, 0xb); // after Wait: ordered
    t.go(1, 3).wr(3, 0xc); // a late worker, nobody waits for it
    t.rd(1, 0xd);
    let e = t.run(Limits::default());
    let f = e.findings();
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!((f[0].earlier.site, f[0].later.site), (0xc, 0xd));
}

#[test]
fn reads_and_one_goroutine_alone_never_race() {
    let mut t = Trace::default();
    t.go(1, 2).go(1, 3).rd(2, 0xa).rd(3, 0xb).rd(2, 0xa);
    t.wr(1, 0xc).rd(1, 0xd).wr(1, 0xc);
    // Goroutine 1's writes do race with the children's reads.
    assert_eq!(
        t.kinds(),
        vec!["concurrent_map_read_write", "concurrent_map_read_write"]
    );
    let mut solo = Trace::default();
    solo.wr(1, 0xa)
        .rd(1, 0xb)
        .wr(1, 0xa)
        .op(1, M, OP_ITERATE, 0xc);
    assert_eq!(solo.kinds(), Vec::<&str>::new());
}

#[test]
fn kinds_follow_the_operations() {
    let mut t = Trace::default();
    t.go(1, 2).go(1, 3).op(2, M, OP_ITERATE, 0xa).wr(3, 0xb);
    t.op(2, M + 8, OP_WRITE, 0xc).op(3, M + 8, OP_WRITE, 0xd);
    assert_eq!(
        t.kinds(),
        vec!["concurrent_map_iteration_write", "concurrent_map_write"]
    );
}

#[test]
fn repeats_of_one_pair_of_sites_are_counted_in_one_finding() {
    let mut t = Trace::default();
    t.go(1, 2).go(1, 3);
    for _ in 0..10 {
        t.wr(2, 0xa).rd(3, 0xb);
    }
    let f = t.run(Limits::default()).findings();
    assert_eq!(f.len(), 1);
    // Each read races with the write before it and each later write with the
    // read before it: same pair of sites either way.
    assert_eq!(f[0].count, 19);
}

#[test]
fn the_explanation_names_the_lock_only_one_side_held() {
    let mut t = Trace::default();
    t.go(1, 2).go(1, 3);
    t.wait(2, MU).wr(2, 0xa).rel(2, MU);
    t.rd(3, 0xb);
    let f = t.run(Limits::default()).findings();
    let why = f[0].explain();
    assert!(
        why.contains("goroutine 2 held mutex 0x100, goroutine 3 held none"),
        "{why}"
    );
}

#[test]
fn overlap_is_reported_when_the_earlier_return_was_seen() {
    let mut t = Trace::default();
    t.go(1, 2).go(1, 3);
    t.push(
        2,
        Op::Access(Access {
            map: M,
            op: OP_WRITE,
            site: 0xa,
            stack: Some(7),
            end_ns: Some(1_000_000),
        }),
    );
    t.rd(3, 0xb);
    let f = t.run(Limits::default()).findings();
    assert_eq!(f[0].overlapped, Some(true));
    assert_eq!(f[0].earlier.stack, Some(7));
    assert!(f[0].explain().contains("they overlapped in time"));
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const SYNCS: [SyncObj; 3] = [
    MU,
    SyncObj {
        addr: 0x200,
        kind: SyncKind::RwMutex,
    },
    CH,
];

/// A random trace of at most 70 events over 5 goroutines, 3 sync objects
/// and 3 maps; sites are unique per map, so findings never merge across maps.
fn random_trace(rng: &mut Rng) -> Vec<Event> {
    let mut t = Trace::default();
    let mut live: Vec<Goid> = vec![1];
    let n = 10 + rng.below(60);
    for _ in 0..n {
        let g = live[rng.below(live.len() as u64) as usize];
        let obj = SYNCS[rng.below(3) as usize];
        match rng.below(20) {
            0..2 if live.len() < 5 => {
                let child = live.len() as u64 + 1;
                live.push(child);
                t.go(g, child);
            }
            0..7 => {
                t.rel(g, obj);
            }
            7..10 => {
                t.acq(g, obj);
            }
            10..14 => {
                t.wait(g, obj);
            }
            _ => {
                let map = M + 8 * rng.below(3);
                let op = [OP_READ, OP_READ, OP_WRITE, OP_ITERATE][rng.below(4) as usize];
                t.op(g, map, op, (map << 8) | rng.below(4));
            }
        }
    }
    t.evs
}

/// Maps with at least one pair of conflicting accesses that the trace's
/// synchronisation leaves unordered, by transitive closure over program
/// order, go statements, and release → acquire edges (a blocked acquire
/// takes effect at the goroutine's next event).
fn oracle_racy_maps(evs: &[Event]) -> BTreeSet<u64> {
    assert!(evs.len() <= 128);
    let mut reach = vec![0u128; evs.len()];
    let mut last: HashMap<Goid, usize> = HashMap::new();
    let mut spawned: HashMap<Goid, usize> = HashMap::new();
    let mut pending: HashMap<Goid, Vec<u64>> = HashMap::new();
    let mut releases: Vec<(usize, u64)> = Vec::new();
    for (j, e) in evs.iter().enumerate() {
        let mut preds: Vec<usize> = Vec::new();
        match last.get(&e.g) {
            Some(&i) => preds.push(i),
            None => preds.extend(spawned.get(&e.g)),
        }
        let acquire = |addr: u64, preds: &mut Vec<usize>| {
            preds.extend(releases.iter().filter(|r| r.1 == addr).map(|r| r.0));
        };
        for addr in pending.remove(&e.g).unwrap_or_default() {
            acquire(addr, &mut preds);
        }
        match e.op {
            Op::Go { child } => {
                spawned.insert(child, j);
            }
            Op::Acquire(o) => acquire(o.addr, &mut preds),
            Op::AcquireOnResume(o) => pending.entry(e.g).or_default().push(o.addr),
            // The random traces have none (the oracle models objects).
            Op::Release(_) | Op::Access(_) | Op::AcquireAllOnResume => {}
        }
        if let Op::Release(o) = e.op {
            releases.push((j, o.addr));
        }
        reach[j] = preds
            .iter()
            .fold(0, |acc, &p| acc | reach[p] | (1u128 << p));
        last.insert(e.g, j);
    }
    let mut racy = BTreeSet::new();
    for (j, b) in evs.iter().enumerate() {
        let Op::Access(bb) = b.op else { continue };
        for (i, a) in evs[..j].iter().enumerate() {
            let Op::Access(aa) = a.op else { continue };
            if aa.map == bb.map
                && a.g != b.g
                && (is_write(aa.op) || is_write(bb.op))
                && reach[j] & (1u128 << i) == 0
            {
                racy.insert(aa.map);
            }
        }
    }
    racy
}

fn engine_racy_maps(evs: &[Event], limits: Limits) -> BTreeSet<u64> {
    let mut e = Engine::new(limits);
    for ev in evs {
        e.process(ev);
    }
    e.findings().iter().map(|f| f.map).collect()
}

#[test]
fn random_traces_agree_with_the_happens_before_oracle() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut racy_traces = 0;
    for i in 0..3000 {
        let evs = random_trace(&mut rng);
        let want = oracle_racy_maps(&evs);
        let got = engine_racy_maps(&evs, Limits::default());
        assert_eq!(got, want, "trace {i}: {evs:#?}");
        racy_traces += usize::from(!want.is_empty());
    }
    // Both outcomes are well represented, so agreement means something.
    assert!(
        (500..2500).contains(&racy_traces),
        "{racy_traces} racy of 3000"
    );
}

#[test]
fn tiny_bounds_lose_races_but_never_invent_one() {
    let tiny = Limits {
        goroutines: 2,
        sync_objects: 1,
        maps: 1,
        readers_per_map: 1,
        findings: 1024,
    };
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut lost = 0;
    for i in 0..3000 {
        let evs = random_trace(&mut rng);
        let want = oracle_racy_maps(&evs);
        let got = engine_racy_maps(&evs, tiny);
        assert!(
            got.is_subset(&want),
            "trace {i}: got {got:?}, want {want:?}"
        );
        lost += want.len() - got.len();
    }
    assert!(lost > 0, "the bounds never bit: the test tests nothing");
}

#[test]
fn a_lock_disciplined_program_stays_clean_under_evictions_and_bounded() {
    // 200 goroutines take one lock in turn around map accesses; between
    // entering Lock and running, others churn through unrelated objects, so
    // goroutines, the lock and maps get evicted while waiters are blocked.
    let limits = Limits {
        goroutines: 8,
        sync_objects: 4,
        maps: 2,
        readers_per_map: 2,
        findings: 16,
    };
    let mut rng = Rng(7);
    let mut t = Trace::default();
    for child in 2..202 {
        t.go(1, child);
    }
    let mut holder: Option<Goid> = None;
    for _ in 0..4000 {
        let g = 2 + rng.below(200);
        if let Some(h) = holder.take() {
            t.rel(h, MU);
        }
        t.wait(g, MU);
        for k in 0..rng.below(6) {
            let other = 2 + rng.below(200);
            let noise = SyncObj {
                addr: 0x1_0000 + rng.below(50) * 8,
                kind: SyncKind::Chan,
            };
            t.rel(other, noise).op(other, 0xd000 + 8 * k, OP_WRITE, 0xe);
        }
        for _ in 0..1 + rng.below(3) {
            let map = M + 8 * rng.below(3);
            t.op(g, map, [OP_READ, OP_WRITE][rng.below(2) as usize], map);
        }
        holder = Some(g);
    }
    let e = t.run(limits);
    let shared: Vec<_> = e
        .findings()
        .into_iter()
        .filter(|f| (M..M + 24).contains(&f.map))
        .collect();
    assert!(shared.is_empty(), "{shared:#?}");
    let s = e.stats();
    assert!(
        s.goroutines_evicted > 0 && s.sync_objects_evicted > 0 && s.maps_evicted > 0,
        "{s:?}"
    );
    let (g, o, m) = e.tracked();
    assert!(g <= 8 && o <= 4 && m <= 2, "{:?}", e.tracked());
}
