//! The one table of lock kinds: for each kind of wait (or wakeup) the probes
//! record, the Go functions it is measured on and how a recorded address is
//! turned into the lock's own. Adding a lock kind is one row in [`KINDS`]
//! (plus its `KIND_*` code in `tracer_common::lock` and the BPF side).

use tracer_common::lock::{
    KIND_MUTEX, KIND_MUTEX_UNLOCK, KIND_RW_LEGACY, KIND_RW_READ, KIND_RW_RUNLOCK, KIND_RW_WRITE,
};

use crate::{gobin::GoVersion, symbols::Site};

/// The lock a report row is about: its `kind` in the JSON report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockType {
    Mutex,
    RwMutexRead,
    RwMutexWrite,
    /// A record whose kind code is in no row of [`KINDS`].
    Unknown,
}

impl LockType {
    /// The name reports use.
    pub const fn as_str(self) -> &'static str {
        match self {
            LockType::Mutex => "mutex",
            LockType::RwMutexRead => "rwmutex_read",
            LockType::RwMutexWrite => "rwmutex_write",
            LockType::Unknown => "unknown",
        }
    }
}

/// How a kind's function is probed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probing {
    /// A wait: an entry probe and exit probes on every RET (its duration).
    Timed,
    /// An unlock slow path: an entry probe only (a count and a stack), and
    /// only with `--holders`.
    Holder,
}

/// One kind of lock wait or wakeup.
pub struct LockKind {
    /// Code the probes record (`tracer_common::lock::KIND_*`, the attach cookie).
    pub code: u32,
    /// Name of its probes in the report's `probes` list.
    pub feature: &'static str,
    /// Candidates, newest Go first; the first present is probed.
    pub functions: &'static [&'static str],
    /// What a program does that links them, for the "missing" message.
    pub unused: &'static str,
    pub probing: Probing,
    /// The lock its records are reported as.
    pub lock: LockType,
    /// Offset of the recorded address inside the lock (a semaphore field),
    /// subtracted to give the lock's address.
    pub field_offset: u64,
    /// Records entered through one of these functions are that lock's, at
    /// the recorded address minus the offset (the first match wins): an
    /// RWMutex writer's Lock goes through its inner Mutex, and on Go < 1.20
    /// both RWMutex sides wait on the Mutex's semaphore function.
    pub via: &'static [Via],
    /// The Go releases whose binaries this kind is probed in, as
    /// (major, minor): from `since`, and below `before`.
    pub since: Option<(u32, u32)>,
    pub before: Option<(u32, u32)>,
}

/// A caller frame that says which lock a record is about.
pub struct Via {
    pub function: &'static str,
    pub lock: LockType,
    pub field_offset: u64,
}

impl LockKind {
    /// Whether binaries of Go `v` are probed for this kind. A version that
    /// could not be read (0.0.0) counts as a current one.
    pub fn applies_to(&self, v: GoVersion) -> bool {
        if v == GoVersion::new(0, 0, 0) {
            return self.before.is_none();
        }
        self.since.is_none_or(|(ma, mi)| v.at_least(ma, mi))
            && self.before.is_none_or(|(ma, mi)| !v.at_least(ma, mi))
    }
}

/// An RWMutex writer's Lock and Unlock take its inner Mutex (the first field).
const VIA_RW_WRITER: &[Via] = &[Via {
    function: "sync.(*RWMutex).Lock",
    lock: LockType::RwMutexWrite,
    field_offset: 0,
}];
const VIA_RW_UNLOCK: &[Via] = &[Via {
    function: "sync.(*RWMutex).Unlock",
    lock: LockType::RwMutexWrite,
    field_offset: 0,
}];

/// The separate RWMutex semaphore functions arrived in Go 1.20.
const RW_SEMAPHORES_SINCE: (u32, u32) = (1, 20);

/// The Mutex slow path moved to `internal/sync` in Go 1.24; the RWMutex
/// semaphore waits are the runtime's linknamed entry points in every version
/// since 1.20 (before, the Mutex's). Only contended operations reach any of them.
const MUTEX_SLOW_PATHS: &[&str] = &["internal/sync.(*Mutex).lockSlow", "sync.(*Mutex).lockSlow"];

/// Offsets of the semaphores inside `sync.RWMutex` {w Mutex (8 bytes),
/// writerSem uint32, readerSem uint32, ...}: the same in every Go 1.17–1.27.
const RW_WRITER_SEM: u64 = 8;
const RW_READER_SEM: u64 = 12;

/// Go < 1.20: RLock and Lock call `runtime_SemacquireMutex` on these.
const VIA_RW_LEGACY: &[Via] = &[
    Via {
        function: "sync.(*RWMutex).RLock",
        lock: LockType::RwMutexRead,
        field_offset: RW_READER_SEM,
    },
    Via {
        function: "sync.(*RWMutex).Lock",
        lock: LockType::RwMutexWrite,
        field_offset: RW_WRITER_SEM,
    },
];

/// Every kind, waits first, in the order of the report's `probes` list.
/// Unlock slow paths are reached only when waiters must be woken, so their
/// callers are the code that held a contended lock (`--holders`).
pub const KINDS: [LockKind; 6] = [
    LockKind {
        code: KIND_MUTEX,
        feature: "mutex",
        functions: MUTEX_SLOW_PATHS,
        unused: "blocks on a sync.Mutex",
        probing: Probing::Timed,
        lock: LockType::Mutex,
        field_offset: 0,
        via: VIA_RW_WRITER,
        since: None,
        before: None,
    },
    LockKind {
        code: KIND_RW_READ,
        feature: "rwmutex_read",
        functions: &["sync.runtime_SemacquireRWMutexR"],
        unused: "makes RLock wait for a writer",
        probing: Probing::Timed,
        lock: LockType::RwMutexRead,
        field_offset: RW_READER_SEM,
        via: &[],
        since: Some(RW_SEMAPHORES_SINCE),
        before: None,
    },
    LockKind {
        code: KIND_RW_WRITE,
        feature: "rwmutex_write",
        functions: &["sync.runtime_SemacquireRWMutex"],
        unused: "makes Lock wait for readers",
        probing: Probing::Timed,
        lock: LockType::RwMutexWrite,
        field_offset: RW_WRITER_SEM,
        via: &[],
        since: Some(RW_SEMAPHORES_SINCE),
        before: None,
    },
    LockKind {
        code: KIND_RW_LEGACY,
        feature: "rwmutex",
        functions: &["sync.runtime_SemacquireMutex"],
        unused: "blocks on a sync.Mutex or RWMutex",
        probing: Probing::Timed,
        // Reached only through a `via` frame; anything else is not claimed.
        lock: LockType::Unknown,
        field_offset: 0,
        via: VIA_RW_LEGACY,
        since: None,
        before: Some(RW_SEMAPHORES_SINCE),
    },
    LockKind {
        code: KIND_MUTEX_UNLOCK,
        feature: "mutex_unlock",
        functions: &[
            "internal/sync.(*Mutex).unlockSlow",
            "sync.(*Mutex).unlockSlow",
        ],
        unused: "unlocks a sync.Mutex with waiters",
        probing: Probing::Holder,
        lock: LockType::Mutex,
        field_offset: 0,
        via: VIA_RW_UNLOCK,
        since: None,
        before: None,
    },
    LockKind {
        code: KIND_RW_RUNLOCK,
        feature: "rwmutex_runlock",
        functions: &["sync.(*RWMutex).rUnlockSlow"],
        unused: "has RUnlock wake a waiting writer",
        probing: Probing::Holder,
        lock: LockType::RwMutexWrite,
        field_offset: 0,
        via: &[],
        since: None,
        before: None,
    },
];

/// Report kind and lock address for a record of kind `code` at `addr`.
/// `machinery` are the frames between the probed function and the call site.
pub fn classify(code: u32, addr: u64, machinery: &[Site]) -> (&'static str, u64) {
    let Some(k) = KINDS.iter().find(|k| k.code == code) else {
        return (LockType::Unknown.as_str(), addr);
    };
    let through = k
        .via
        .iter()
        .find(|v| machinery.iter().any(|s| s.function == v.function));
    match through {
        Some(v) => (v.lock.as_str(), addr.wrapping_sub(v.field_offset)),
        None => (k.lock.as_str(), addr.wrapping_sub(k.field_offset)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_kinds_and_maps_semaphores_to_the_rwmutex() {
        let site = |f: &str| Site {
            function: f.into(),
            file: String::new(),
            line: 0,
        };
        assert_eq!(classify(KIND_MUTEX, 0x100, &[]), ("mutex", 0x100));
        assert_eq!(
            classify(KIND_MUTEX, 0x100, &[site("sync.(*RWMutex).Lock")]),
            ("rwmutex_write", 0x100)
        );
        assert_eq!(classify(KIND_RW_READ, 0x10c, &[]), ("rwmutex_read", 0x100));
        assert_eq!(
            classify(KIND_RW_WRITE, 0x108, &[]),
            ("rwmutex_write", 0x100)
        );
        assert_eq!(
            classify(KIND_RW_RUNLOCK, 0x100, &[]),
            ("rwmutex_write", 0x100)
        );
        assert_eq!(classify(KIND_MUTEX_UNLOCK, 0x100, &[]), ("mutex", 0x100));
        assert_eq!(
            classify(KIND_MUTEX_UNLOCK, 0x100, &[site("sync.(*RWMutex).Unlock")]),
            ("rwmutex_write", 0x100)
        );
        assert_eq!(classify(99, 0x100, &[]), ("unknown", 0x100));
        // Go < 1.20: the semaphore's side is told by the caller.
        assert_eq!(
            classify(KIND_RW_LEGACY, 0x10c, &[site("sync.(*RWMutex).RLock")]),
            ("rwmutex_read", 0x100)
        );
        assert_eq!(
            classify(
                KIND_RW_LEGACY,
                0x108,
                &[
                    site("sync.runtime_SemacquireMutex"),
                    site("sync.(*RWMutex).Lock")
                ]
            ),
            ("rwmutex_write", 0x100)
        );
        assert_eq!(classify(KIND_RW_LEGACY, 0x104, &[]), ("unknown", 0x104));
    }

    #[test]
    fn rwmutex_semaphores_are_probed_where_the_release_has_them() {
        let features = |v| {
            KINDS
                .iter()
                .filter(|k| k.probing == Probing::Timed && k.applies_to(v))
                .map(|k| k.feature)
                .collect::<Vec<_>>()
        };
        assert_eq!(features(GoVersion::new(1, 19, 8)), ["mutex", "rwmutex"]);
        for current in [GoVersion::new(1, 20, 0), GoVersion::new(0, 0, 0)] {
            assert_eq!(
                features(current),
                ["mutex", "rwmutex_read", "rwmutex_write"]
            );
        }
    }

    #[test]
    fn codes_are_unique_and_waits_come_first() {
        for (i, k) in KINDS.iter().enumerate() {
            assert!(
                KINDS[i + 1..]
                    .iter()
                    .all(|o| o.code != k.code && o.feature != k.feature)
            );
        }
        let first_holder = KINDS.iter().position(|k| k.probing == Probing::Holder);
        assert!(
            KINDS[first_holder.unwrap_or(KINDS.len())..]
                .iter()
                .all(|k| k.probing == Probing::Holder)
        );
    }
}
