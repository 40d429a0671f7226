//! Go map records: crash events (ring buffer), growth per map and call site,
//! and, in the opt-in deep tier, per-operation latency and unsafe overlaps.

/// Kind of map operation, carried in the low byte of the deep probes' attach cookie.
pub const OP_READ: u32 = 1;
pub const OP_WRITE: u32 = 2;
pub const OP_DELETE: u32 = 3;
pub const OP_ITERATE: u32 = 4;
pub const OP_CLEAR: u32 = 5;
/// Iteration step (`mapiternext`, `mapIterNext`): the argument is the iterator,
/// whose map pointer sits at [`ITER_MAP_OFFSET`]; counted as [`OP_ITERATE`].
pub const OP_ITERATE_NEXT: u32 = 6;

/// Cookie bit: the entry probe is on a CALL instruction in the caller
/// (`--maps-sites`), not on the callee's first instruction; the return
/// address is then the probed address plus [`CALL_INSN_LEN`].
pub const OP_AT_CALL_SITE: u32 = 0x80;
/// Probe indexes (the cookie's upper bits) whose entries `MAP_SITE_HITS`
/// counts: the budgeted tier probes at most this many call sites.
pub const SITE_SLOTS: u32 = 16384;

/// Length of the direct near CALL probed (`E8 rel32` on amd64).
pub const CALL_INSN_LEN: u64 = 5;

/// Offset of the map pointer in the iterator: `hiter.h` (classic) and
/// `maps.Iter.m` (Swiss) both follow `key`, `elem` and the type pointer, in
/// every Go 1.21–1.27.
pub const ITER_MAP_OFFSET: u64 = 24;

/// Whether an op kind changes the map (the side the runtime guards with its
/// `hashWriting` flag).
#[inline(always)]
pub const fn is_write(kind: u32) -> bool {
    matches!(kind, OP_WRITE | OP_DELETE | OP_CLEAR)
}

/// Which register holds the map at a growth probe (cookie low byte).
/// Classic `runtime.hashGrow(t, h)`: the hmap is argument 2.
pub const GROW_ARG1: u32 = 1;
/// Swiss `(*Map).growToSmall/growToTable(m, typ)`: the Map is the receiver.
pub const GROW_ARG0: u32 = 2;
/// Swiss `(*table).grow/split/rehash(t, typ, m, ...)`: the Map is argument 3.
pub const GROW_ARG2: u32 = 3;

/// Ring-buffer record kinds.
pub const EVENT_FATAL: u32 = 1;

/// Bytes of the fatal message kept; longer messages are cut.
pub const FATAL_MSG_LEN: usize = 128;

/// Counters in the `MAP_LOST` array.
/// Fatal events the ring buffer had no room for.
pub const LOST_FATAL: u32 = 0;
/// Overlaps not recorded because `MAP_CONFLICTS` was full.
pub const LOST_CONFLICT: u32 = 1;
/// Growth events not recorded because `MAP_GROWTH` was full.
pub const LOST_GROWTH: u32 = 2;
/// Operations not aggregated because `MAP_OPS` was full.
pub const LOST_OPS: u32 = 3;
/// sync.Map calls not counted because `SYNC_MAP_CALLS` was full.
pub const LOST_SYNC_MAP: u32 = 4;
/// Happens-before events the `HB_EVENTS` ring had no room for.
pub const LOST_HB: u32 = 5;
pub const LOST_SLOTS: u32 = 6;

/// sync.Map method probed (deep tier), in the low byte of the
/// `sync_map_call` attach cookie. `Store` and `Delete` are not functions of
/// their own in the binaries (they compile to calls of `Swap` and
/// `LoadAndDelete`), so they are counted with those.
pub const SM_LOAD: u32 = 1;
pub const SM_STORE_SWAP: u32 = 2;
pub const SM_LOAD_OR_STORE: u32 = 3;
pub const SM_DELETE_LOAD_AND_DELETE: u32 = 4;
pub const SM_COMPARE_AND_SWAP: u32 = 5;
pub const SM_COMPARE_AND_DELETE: u32 = 6;
pub const SM_RANGE: u32 = 7;
pub const SM_CLEAR: u32 = 8;
/// Classic sync.Map (Go ≤ 1.23) slow paths: a lookup that missed the
/// read-only part, and a copy of the read-only part into a new dirty map.
pub const SM_MISS_LOCKED: u32 = 9;
pub const SM_DIRTY_LOCKED: u32 = 10;
pub const SM_METHODS: u32 = 11;

/// Per traced process: what the probes need to know about its binary.
/// Presence in `MAP_CONFIG` is also the pid filter of every map probe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MapsConfig {
    /// `runtime.g.goid` offset, or `u64::MAX` when unknown.
    pub goid_off: u64,
    /// Element count offset in the map header (`hmap.count` or Swiss
    /// `Map.used`), or `u64::MAX` when unknown.
    pub count_off: u64,
    /// `FLAG_*` bits.
    pub flags: u64,
}

/// Set in [`MapsConfig::flags`] once every deep-tier probe is attached. Until
/// then `map_op_enter` records nothing: an entry probe that fires before its
/// function's RET probes exist would leave an operation "in flight" forever,
/// and a false overlap with it.
pub const FLAG_DEEP_ARMED: u64 = 1;

/// A fatal runtime error, sent through the ring buffer because the process
/// dies right after.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FatalEvent {
    pub kind: u32,
    pub tgid: u32,
    pub tid: u32,
    /// Attach cookie: index of the probed function in user space's list.
    pub func: u32,
    pub g: u64,
    /// Goroutine id, or `u64::MAX` when unknown.
    pub goid: u64,
    pub caller_pc: u64,
    pub stack_id: i64,
    pub ktime_ns: u64,
    /// Message length in the process (may exceed [`FATAL_MSG_LEN`]).
    pub msg_len: u64,
    pub msg: [u8; FATAL_MSG_LEN],
}

/// Growth aggregate key: one row per process, map, call site and stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GrowthKey {
    pub tgid: u32,
    /// Attach cookie: function index << 8 | `GROW_*`.
    pub cookie: u32,
    pub map: u64,
    pub caller_pc: u64,
    pub stack_id: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GrowthStats {
    pub events: u64,
    /// Element count read at the last growth (`u64::MAX` when unreadable).
    pub last_count: u64,
    pub last_ns: u64,
    /// Largest element count seen at a growth.
    pub max_count: u64,
}

/// One map of one process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MapKey {
    pub tgid: u32,
    pub _pad: u32,
    pub map: u64,
}

/// One side of an in-flight operation on a map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OpSide {
    /// `g` pointer; 0 when the slot is empty.
    pub g: u64,
    pub goid: u64,
    pub start_ns: u64,
    pub caller_pc: u64,
    pub stack_id: i64,
    pub kind: u32,
    pub _pad: u32,
}

/// Operations in flight on one map: the latest writer and the latest reader
/// (or iterator). Each slot is cleared by its own goroutine's exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MapActive {
    pub writer: OpSide,
    pub reader: OpSide,
    /// The latest writer and reader to start, kept after they return. An
    /// operation checks at its end whether one of them started while it was
    /// in flight: a later operation that took its slot would otherwise hide
    /// it (the one-reader, one-writer slot limit).
    pub last_writer: OpSide,
    pub last_reader: OpSide,
    /// The goroutine each of those already reported an overlap with when it
    /// started (0: none), so the check at the end does not count it twice.
    pub last_writer_saw: u64,
    pub last_reader_saw: u64,
}

/// One goroutine's operation from entry to return.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct OpInflight {
    pub start_ns: u64,
    pub map: u64,
    pub caller_pc: u64,
    pub stack_id: i64,
    /// Attach cookie of the entry probe.
    pub cookie: u32,
    pub _pad: u32,
}

/// Two overlapping operations on one map: `a` started while `b` was in flight.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConflictKey {
    pub tgid: u32,
    pub kind_a: u32,
    pub map: u64,
    pub pc_a: u64,
    pub pc_b: u64,
    pub stack_a: i64,
    pub stack_b: i64,
    pub kind_b: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConflictStats {
    pub count: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    /// Goroutine ids of the first occurrence (`u64::MAX` when unknown).
    pub goid_a: u64,
    pub goid_b: u64,
}

/// sync.Map call count key: one per process, map (the receiver) and method.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SyncMapKey {
    pub tgid: u32,
    /// `SM_*`.
    pub method: u32,
    pub map: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are repr(C), contain only integers, and have no implicit padding.
    unsafe impl aya::Pod for super::MapsConfig {}
    unsafe impl aya::Pod for super::FatalEvent {}
    unsafe impl aya::Pod for super::GrowthKey {}
    unsafe impl aya::Pod for super::GrowthStats {}
    unsafe impl aya::Pod for super::MapKey {}
    unsafe impl aya::Pod for super::MapActive {}
    unsafe impl aya::Pod for super::OpInflight {}
    unsafe impl aya::Pod for super::ConflictKey {}
    unsafe impl aya::Pod for super::ConflictStats {}
    unsafe impl aya::Pod for super::SyncMapKey {}
}

/// Happens-before stream (issue #19, docs/maps.md): set in
/// [`MapsConfig::flags`] once every synchronisation probe is attached. Until
/// then no event is sent: an access recorded while a lock probe was still
/// missing could look unordered when it was not.
pub const FLAG_HB_ARMED: u64 = 2;

/// `HB_EVENTS` record kinds.
/// A synchronisation operation: [`HbEvent::cookie`] is the probe's cookie
/// (`HB_ACT_*` and the probe's index), [`HbEvent::addr`] the object.
pub const EVENT_HB_SYNC: u32 = 2;
/// A map operation's entry: the cookie is the map probe's, `addr` the map.
pub const EVENT_HB_ACCESS: u32 = 3;
/// A `go` statement: `goid` is the parent, `addr` the child's goroutine id.
pub const EVENT_HB_GO: u32 = 4;

/// What a synchronisation probe means, in the low 4 bits of its cookie.
/// Publish what the goroutine knows on the object (Unlock, Done, Store).
pub const HB_ACT_RELEASE: u64 = 1;
/// May block until another goroutine releases the object; the goroutine
/// has acquired it by its next event (Lock, Wait, Load).
pub const HB_ACT_ACQUIRE: u64 = 2;
/// Both (channel operations, sync.Map calls, read-modify-write atomics).
pub const HB_ACT_BOTH: u64 = 3;
/// `runtime.selectgo`'s entry: every channel of its cases, both ways.
pub const HB_ACT_SELECT: u64 = 4;
/// `runtime.newproc1`'s entry: remembers the parent for the RET probes.
pub const HB_ACT_GO_ENTER: u64 = 5;
/// A RET of `runtime.newproc1`: the new goroutine is in the result register.
pub const HB_ACT_GO_EXIT: u64 = 6;
/// The goroutine may have synchronised with anything (a select with more
/// cases than the probe reads): it acquires every object at its next event.
pub const HB_ACT_ACQUIRE_ALL: u64 = 7;

/// Cookie of a synchronisation probe: the action (bits 0–3), the register
/// holding the object's address (bits 8–11, the arch's register number, see
/// `tracer-ebpf/src/hb.rs`), whether that register holds a pointer to load
/// first (bit 12: the object is then `*(reg + load_disp) + disp`), the
/// displacements (bits 16–31 and 32–47) and the probe's index in user
/// space's table (bits 48–63).
pub const fn hb_cookie(action: u64, reg: u8, disp: i16, load: Option<i16>, index: u16) -> u64 {
    let (deref, load_disp) = match load {
        Some(d) => (1u64 << 12, d),
        None => (0, 0),
    };
    action
        | (((reg & 0xf) as u64) << 8)
        | deref
        | (((disp as u16) as u64) << 16)
        | (((load_disp as u16) as u64) << 32)
        | ((index as u64) << 48)
}

pub const fn hb_action(cookie: u64) -> u64 {
    cookie & 0xf
}

pub const fn hb_reg(cookie: u64) -> u8 {
    ((cookie >> 8) & 0xf) as u8
}

/// Cookie of a probe whose object is a global: at the probe, the object is
/// the probed instruction's address (RIP) plus `rel` (bit 13 set; bits
/// 16–47 hold `rel`).
pub const fn hb_cookie_rip(action: u64, rel: i32, index: u16) -> u64 {
    action | HB_RIP | (((rel as u32) as u64) << 16) | ((index as u64) << 48)
}

const HB_RIP: u64 = 1 << 13;

pub const fn hb_rip(cookie: u64) -> bool {
    cookie & HB_RIP != 0
}

pub const fn hb_rip_rel(cookie: u64) -> i64 {
    ((cookie >> 16) as u32) as i32 as i64
}

pub const fn hb_deref(cookie: u64) -> bool {
    cookie & (1 << 12) != 0
}

pub const fn hb_disp(cookie: u64) -> i64 {
    ((cookie >> 16) as u16) as i16 as i64
}

pub const fn hb_load_disp(cookie: u64) -> i64 {
    ((cookie >> 32) as u16) as i16 as i64
}

pub const fn hb_index(cookie: u64) -> u16 {
    (cookie >> 48) as u16
}

/// Cases of a `select` whose channels the probe reads; beyond this the
/// goroutine acquires everything ([`HB_ACT_ACQUIRE_ALL`]).
pub const HB_SELECT_CASES: u64 = 8;
/// `runtime.scase`: `{c *hchan; elem unsafe.Pointer}`.
pub const HB_SCASE_SIZE: u64 = 16;

/// One event of the happens-before stream. A single ring buffer for every
/// CPU gives the events in one order consistent with what each goroutine
/// observed: a probe's record is reserved before its instruction runs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HbEvent {
    /// `EVENT_HB_*`.
    pub kind: u32,
    pub tgid: u32,
    pub cookie: u64,
    /// Goroutine id, or `u64::MAX` when unreadable.
    pub goid: u64,
    /// The sync object, the map, or the child goroutine's id.
    pub addr: u64,
    pub ktime_ns: u64,
    /// Call site (accesses).
    pub pc: u64,
    pub stack_id: i64,
    /// `HB_LOST` as the probe saw it: when it grows, events went missing
    /// before this one and user space restarts the detector.
    pub lost: u64,
}

/// Bytes of `HB_EVENTS` when the happens-before detector runs (the default
/// size is one page, so sessions without it pin no memory for it).
pub const HB_RING_BYTES: u32 = 16 << 20;
