//! The one table of lock kinds: for each kind of wait (or wakeup) the probes
//! record, the Go functions it is measured on and how a recorded address is
//! turned into the lock's own. Adding a lock kind is one row in [`KINDS`]
//! (plus its `KIND_*` code in `tracer_common::lock` and the BPF side).

use tracer_common::lock::{
    KIND_MUTEX, KIND_MUTEX_UNLOCK, KIND_RW_READ, KIND_RW_RUNLOCK, KIND_RW_WRITE,
};

use crate::symbols::Site;

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
    /// A record entered from this function is an RWMutex writer's (its Lock
    /// and Unlock go through the inner Mutex), reported as `rwmutex_write`.
    pub writer_via: Option<&'static str>,
}

/// The Mutex slow path moved to `internal/sync` in Go 1.24; the RWMutex
/// semaphore waits are the runtime's linknamed entry points in every version
/// since 1.20. Only contended operations reach any of them.
const MUTEX_SLOW_PATHS: &[&str] = &["internal/sync.(*Mutex).lockSlow", "sync.(*Mutex).lockSlow"];

/// Offsets of the semaphores inside `sync.RWMutex` {w Mutex (8 bytes),
/// writerSem uint32, readerSem uint32, ...}: the same in every Go 1.18–1.27.
const RW_WRITER_SEM: u64 = 8;
const RW_READER_SEM: u64 = 12;

/// Every kind, waits first, in the order of the report's `probes` list.
/// Unlock slow paths are reached only when waiters must be woken, so their
/// callers are the code that held a contended lock (`--holders`).
pub const KINDS: [LockKind; 5] = [
    LockKind {
        code: KIND_MUTEX,
        feature: "mutex",
        functions: MUTEX_SLOW_PATHS,
        unused: "blocks on a sync.Mutex",
        probing: Probing::Timed,
        lock: LockType::Mutex,
        field_offset: 0,
        writer_via: Some("sync.(*RWMutex).Lock"),
    },
    LockKind {
        code: KIND_RW_READ,
        feature: "rwmutex_read",
        functions: &["sync.runtime_SemacquireRWMutexR"],
        unused: "makes RLock wait for a writer",
        probing: Probing::Timed,
        lock: LockType::RwMutexRead,
        field_offset: RW_READER_SEM,
        writer_via: None,
    },
    LockKind {
        code: KIND_RW_WRITE,
        feature: "rwmutex_write",
        functions: &["sync.runtime_SemacquireRWMutex"],
        unused: "makes Lock wait for readers",
        probing: Probing::Timed,
        lock: LockType::RwMutexWrite,
        field_offset: RW_WRITER_SEM,
        writer_via: None,
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
        writer_via: Some("sync.(*RWMutex).Unlock"),
    },
    LockKind {
        code: KIND_RW_RUNLOCK,
        feature: "rwmutex_runlock",
        functions: &["sync.(*RWMutex).rUnlockSlow"],
        unused: "has RUnlock wake a waiting writer",
        probing: Probing::Holder,
        lock: LockType::RwMutexWrite,
        field_offset: 0,
        writer_via: None,
    },
];

/// Report kind and lock address for a record of kind `code` at `addr`.
/// `machinery` are the frames between the probed function and the call site.
pub fn classify(code: u32, addr: u64, machinery: &[Site]) -> (&'static str, u64) {
    let Some(k) = KINDS.iter().find(|k| k.code == code) else {
        return (LockType::Unknown.as_str(), addr);
    };
    let via = |f: &str| machinery.iter().any(|s| s.function == f);
    if k.writer_via.is_some_and(via) {
        return (LockType::RwMutexWrite.as_str(), addr);
    }
    (k.lock.as_str(), addr.wrapping_sub(k.field_offset))
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
