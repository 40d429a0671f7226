//! Where the happens-before probes go for `sync.Mutex` and `sync.RWMutex`,
//! and how each probe finds the lock: the inlined fast paths' atomic
//! instructions (their memory operand), plus the entries of the methods for
//! calls the compiler did not inline.

use iced_x86::Register;

use super::SyncKind;
use crate::gobin::{GoBinary, InlinedSite};

/// `sync.RWMutex.readerCount`'s offset (after `w Mutex`, `writerSem` and
/// `readerSem`; the same in Go 1.21–1.27): RLock and RUnlock add to it, so
/// their operand minus this is the RWMutex, the object Lock and Unlock name.
const RW_READER_COUNT: i64 = 16;

/// What the probed instruction means for the goroutine executing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncAction {
    /// Unlock, RUnlock: publish before the releasing store.
    Release,
    /// Lock, RLock: the goroutine may block; it holds the lock when it next
    /// does anything, whether the CAS succeeds or the slow path parks it.
    AcquireOnResume,
}

/// One probe: an instruction, and the object's address as a register plus
/// a displacement at that instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncProbe {
    pub vaddr: u64,
    pub kind: SyncKind,
    pub action: SyncAction,
    pub reg: Register,
    pub disp: i64,
    /// The Go method (`sync.(*Mutex).Lock`).
    pub method: &'static str,
    pub caller: String,
}

/// The probe set, and the inlined copies whose atomic was not found (so
/// their lock operations would be invisible: reported, never ignored).
#[derive(Debug, Default)]
pub struct SyncProbes {
    pub probes: Vec<SyncProbe>,
    pub unresolved: Vec<InlinedSite>,
}

/// (method, kind, action, displacement from the atomic's operand to the object).
const METHODS: [(&str, SyncKind, SyncAction, i64); 6] = [
    (
        "sync.(*Mutex).Lock",
        SyncKind::Mutex,
        SyncAction::AcquireOnResume,
        0,
    ),
    (
        "sync.(*Mutex).Unlock",
        SyncKind::Mutex,
        SyncAction::Release,
        0,
    ),
    (
        "sync.(*RWMutex).RLock",
        SyncKind::RwMutex,
        SyncAction::AcquireOnResume,
        -RW_READER_COUNT,
    ),
    (
        "sync.(*RWMutex).RUnlock",
        SyncKind::RwMutex,
        SyncAction::Release,
        -RW_READER_COUNT,
    ),
    (
        "sync.(*RWMutex).Lock",
        SyncKind::RwMutex,
        SyncAction::AcquireOnResume,
        0,
    ),
    (
        "sync.(*RWMutex).Unlock",
        SyncKind::RwMutex,
        SyncAction::Release,
        0,
    ),
];

pub fn sync_probes(bin: &GoBinary) -> SyncProbes {
    let mut out = SyncProbes::default();
    let inlined = bin.inlined_sites(|n| METHODS.iter().any(|m| m.0 == n));
    for site in inlined {
        let Some(&(method, kind, action, adjust)) = METHODS.iter().find(|m| m.0 == site.callee)
        else {
            continue;
        };
        match bin.atomic_insn(&site) {
            Some(insn) if insn.index.is_none() && insn.base.is_some() => {
                out.probes.push(SyncProbe {
                    vaddr: insn.vaddr,
                    kind,
                    action,
                    reg: insn.base.unwrap_or(Register::None),
                    disp: insn.displacement.wrapping_add(adjust),
                    method,
                    caller: site.caller.clone(),
                });
            }
            _ => out.unresolved.push(site),
        }
    }
    // Calls that were not inlined (through an interface such as
    // sync.Locker, a deferred Unlock before Go 1.22, RWMutex.Lock): the
    // receiver is the first argument, RAX in the register ABI.
    for &(method, kind, action, _) in &METHODS {
        if let Some(f) = bin.function(method) {
            out.probes.push(SyncProbe {
                vaddr: f.entry,
                kind,
                action,
                reg: Register::RAX,
                disp: 0,
                method,
                caller: method.to_owned(),
            });
        }
    }
    out
}
