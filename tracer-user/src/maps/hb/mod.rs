//! Happens-before map race detection (issue #19): the detector core.
//!
//! Deep mode's kernel side finds accesses that overlap in time. Real races
//! rarely do: two goroutines touch a map microseconds apart, ordered by luck
//! only. Go's `-race` finds those by happens-before, and so does this module:
//! it replays an ordered stream of synchronisation events and map accesses
//! (from uprobes; see docs/maps.md) through per-goroutine vector clocks with
//! FastTrack's per-map epochs, and reports two accesses, one a write, that no
//! synchronisation the program performed ordered.
//!
//! Soundness rules, so a report is never a guess:
//! - Where the model is unsure it over-synchronises (merge on every release,
//!   acquire everything a blocked goroutine could have received): that can
//!   only hide races, never invent them.
//! - A goroutine that blocks (Lock, channel receive, Wait) acquires when it
//!   next does anything ([`Op::AcquireOnResume`]), not at the probe on entry,
//!   because the release it waits for has not happened yet then.
//! - Memory is bounded: evicting a goroutine or a map forgets its accesses
//!   (fewer reports), evicting a sync object folds its clock into a floor that
//!   every acquire of an unknown object joins (no false report).

mod clock;
mod engine;
mod finding;
pub mod probes;
mod shadow;
pub(crate) mod sites;
pub mod stream;

pub use clock::{Epoch, Goid, Tick, VectorClock};
pub use engine::Engine;
pub use finding::{AccessInfo, HbFinding};
pub use probes::HbProbes;
pub use sites::{
    SyncAction, SyncProbe, SyncProbes, USER_SYNC, is_user_code, sync_probes, user_sync_probes,
};
pub use stream::HbStream;

/// What a synchronisation object is; it decides whether acquiring it means
/// holding a lock (for the lock sets findings show).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncKind {
    Mutex,
    RwMutex,
    Chan,
    WaitGroup,
    Once,
    Cond,
    SyncMap,
    Atomic,
    /// A function the user listed with `--sync-funcs`.
    UserFunc,
    /// `go` statements (the object is the new goroutine).
    Goroutine,
}

impl SyncKind {
    pub fn is_lock(self) -> bool {
        matches!(self, SyncKind::Mutex | SyncKind::RwMutex)
    }

    pub fn name(self) -> &'static str {
        match self {
            SyncKind::Mutex => "mutex",
            SyncKind::RwMutex => "rwmutex",
            SyncKind::Chan => "channel",
            SyncKind::WaitGroup => "waitgroup",
            SyncKind::Once => "once",
            SyncKind::Cond => "cond",
            SyncKind::SyncMap => "sync.Map",
            SyncKind::Atomic => "atomic",
            SyncKind::UserFunc => "sync function",
            SyncKind::Goroutine => "go statement",
        }
    }
}

/// A synchronisation object: its address in the traced process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SyncObj {
    pub addr: u64,
    pub kind: SyncKind,
}

/// One map access as the probes saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    /// The map header's address.
    pub map: u64,
    /// `tracer_common::maps::OP_*`.
    pub op: u32,
    /// The call site: the return address into user code.
    pub site: u64,
    /// Kernel stack id of the user stack, if one was taken.
    pub stack: Option<u32>,
    /// When the operation returned, if an exit probe saw it: lets a finding
    /// say whether the two accesses overlapped or were only unordered.
    pub end_ns: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A `go` statement: `child` starts knowing what the parent knew.
    Go {
        child: Goid,
    },
    /// The goroutine publishes what it knows on the object (Unlock, send,
    /// close, WaitGroup.Done, the end of Once's function, ...).
    Release(SyncObj),
    /// The goroutine has synchronised on the object: the event was taken
    /// after the operation completed.
    Acquire(SyncObj),
    /// The goroutine is entering an operation that may block until another
    /// releases the object; it acquires at its next event.
    AcquireOnResume(SyncObj),
    /// The goroutine may have synchronised with any object (a select with
    /// more cases than the probe reads): it acquires all at its next event.
    AcquireAllOnResume,
    Access(Access),
}

/// One event of one goroutine, in the order the events happened in the
/// process (a single BPF ring buffer gives that order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub g: Goid,
    /// CLOCK_MONOTONIC of the probe hit.
    pub t_ns: u64,
    pub op: Op,
}

/// Memory bounds of one process's detector state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub goroutines: usize,
    pub sync_objects: usize,
    pub maps: usize,
    /// Goroutines whose last read of one map is remembered.
    pub readers_per_map: usize,
    /// Distinct findings (by kind and both sites); later ones are counted.
    pub findings: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            goroutines: 4096,
            sync_objects: 16384,
            maps: 16384,
            readers_per_map: 64,
            findings: 1024,
        }
    }
}

/// What the detector did and what its bounds cost, for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    pub events: u64,
    pub accesses: u64,
    pub races: u64,
    pub goroutines_evicted: u64,
    pub sync_objects_evicted: u64,
    pub maps_evicted: u64,
    /// Remembered accesses dropped by evictions or the reader bound: races
    /// with them can no longer be reported.
    pub accesses_forgotten: u64,
    pub findings_dropped: u64,
}
