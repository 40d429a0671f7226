//! Where the happens-before probes go, and how each finds its object:
//! - the inlined fast paths of `sync.Mutex`/`RWMutex`, `Once.Do` and the
//!   typed atomics, at their own atomic (or plain load) instruction, whose
//!   memory operand names the object;
//! - method entries, for calls the compiler did not inline (the receiver is
//!   the first argument);
//! - the runtime's channel, select, goroutine-creation and Cond functions.

use iced_x86::Register;

use super::SyncKind;
use crate::gobin::{AtomicInsn, GoBinary, InlinedSite};

/// `sync.RWMutex.readerCount`'s offset (after `w Mutex`, `writerSem` and
/// `readerSem`; the same in Go 1.21–1.27): RLock and RUnlock add to it, so
/// their operand minus this is the RWMutex, the object Lock and Unlock name.
const RW_READER_COUNT: i64 = 16;

/// What the probed instruction means for the goroutine executing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncAction {
    /// Unlock, RUnlock, WaitGroup.Add, close, Store: publish before the
    /// releasing instruction runs.
    Release,
    /// Lock, RLock, Wait, Load: the goroutine may block (or read a value
    /// published after the probe fired); it has acquired the object when it
    /// next does anything.
    AcquireOnResume,
    /// Channel operations, read-modify-write atomics: both. Over-
    /// synchronising (a send also acquires) can only hide races.
    Both,
    /// `runtime.selectgo`: every case's channel, both ways.
    Select,
    /// `runtime.newproc1`'s entry (the parent) and its RETs (the child).
    GoEnter,
    GoExit,
}

/// How a probe finds its object's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Locate {
    /// At the atomic read-modify-write of an inlined copy.
    Atomic,
    /// At the first plain load of an inlined copy (amd64 atomic loads).
    Load,
    /// The copy calls a function whose entry is probed (`ENTRIES`):
    /// nothing to place at the copy itself.
    Call,
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
    /// When set, the object is at `*(reg + .0) + disp` (a pointer the
    /// probed instruction loads from a stack slot). `reg` RIP means a
    /// global: the object is at the probed instruction's address + `disp`.
    pub deref: Option<i64>,
    /// The Go function whose semantics the probe stands for.
    pub method: &'static str,
    pub caller: String,
}

/// The probe set, and the inlined copies whose instruction was not found
/// (so their synchronisation would be invisible: reported, never ignored).
#[derive(Debug, Default)]
pub struct SyncProbes {
    pub probes: Vec<SyncProbe>,
    /// Functions that need probes on each of their RETs (`newproc1`).
    pub ret_probes: Vec<SyncProbe>,
    pub unresolved: Vec<InlinedSite>,
}

/// Inlined methods: name (`[*]` for any type argument), kind, action, how
/// to find the instruction, displacement from its operand to the object.
struct Inlined {
    name: &'static str,
    kind: SyncKind,
    action: SyncAction,
    locate: Locate,
    adjust: i64,
}

const fn inl(
    name: &'static str,
    kind: SyncKind,
    action: SyncAction,
    locate: Locate,
    adjust: i64,
) -> Inlined {
    Inlined {
        name,
        kind,
        action,
        locate,
        adjust,
    }
}

use Locate::{Atomic, Call, Load};
use SyncAction::{AcquireOnResume as Acq, Both, Release as Rel};
use SyncKind::{Atomic as At, Mutex as Mu, Once as On, RwMutex as Rw};

const INLINED: [Inlined; 24] = [
    inl("sync.(*Mutex).Lock", Mu, Acq, Atomic, 0),
    inl("sync.(*Mutex).Unlock", Mu, Rel, Atomic, 0),
    inl("sync.(*RWMutex).RLock", Rw, Acq, Atomic, -RW_READER_COUNT),
    inl("sync.(*RWMutex).RUnlock", Rw, Rel, Atomic, -RW_READER_COUNT),
    inl("sync.(*Once).Do", On, Acq, Load, 0),
    inl("sync/atomic.(*Pointer[*]).Load", At, Acq, Load, 0),
    // Pointer stores need the GC's write barrier: calls of StorePointer and
    // friends, probed at their entries.
    inl("sync/atomic.(*Pointer[*]).Store", At, Rel, Call, 0),
    inl("sync/atomic.(*Pointer[*]).Swap", At, Both, Call, 0),
    inl(
        "sync/atomic.(*Pointer[*]).CompareAndSwap",
        At,
        Both,
        Call,
        0,
    ),
    inl("sync/atomic.(*Value).Load", At, Acq, Load, 0),
    inl("sync/atomic.(*Bool).Load", At, Acq, Load, 0),
    inl("sync/atomic.(*Bool).Store", At, Rel, Atomic, 0),
    inl("sync/atomic.(*Int32).Load", At, Acq, Load, 0),
    inl("sync/atomic.(*Int32).Store", At, Rel, Atomic, 0),
    inl("sync/atomic.(*Int32).Add", At, Both, Atomic, 0),
    inl("sync/atomic.(*Int64).Load", At, Acq, Load, 0),
    inl("sync/atomic.(*Int64).Store", At, Rel, Atomic, 0),
    inl("sync/atomic.(*Int64).Add", At, Both, Atomic, 0),
    inl("sync/atomic.(*Uint32).Load", At, Acq, Load, 0),
    inl("sync/atomic.(*Uint32).Store", At, Rel, Atomic, 0),
    inl("sync/atomic.(*Uint64).Load", At, Acq, Load, 0),
    inl("sync/atomic.(*Uint64).Store", At, Rel, Atomic, 0),
    inl("sync/atomic.(*Uint64).Add", At, Both, Atomic, 0),
    inl("sync/atomic.(*Int64).CompareAndSwap", At, Both, Atomic, 0),
];

/// Function entries: (name, kind, action, argument holding the object).
/// Calls the compiler did not inline (through an interface such as
/// sync.Locker, a deferred Unlock before Go 1.22, RWMutex.Lock), the
/// WaitGroup, and the runtime's channel and Cond functions.
const ENTRIES: [(&str, SyncKind, SyncAction); 22] = [
    ("sync.(*Mutex).Lock", Mu, Acq),
    ("sync.(*Mutex).Unlock", Mu, Rel),
    ("sync.(*RWMutex).RLock", Rw, Acq),
    ("sync.(*RWMutex).RUnlock", Rw, Rel),
    ("sync.(*RWMutex).Lock", Rw, Acq),
    ("sync.(*RWMutex).Unlock", Rw, Rel),
    ("sync.(*Once).Do", On, Acq),
    ("sync.(*WaitGroup).Add", SyncKind::WaitGroup, Rel),
    ("sync.(*WaitGroup).Wait", SyncKind::WaitGroup, Acq),
    ("sync/atomic.(*Value).Store", At, Rel),
    ("sync/atomic.(*Value).Swap", At, Both),
    ("sync/atomic.(*Value).CompareAndSwap", At, Both),
    ("sync/atomic.StorePointer", At, Rel),
    ("sync/atomic.SwapPointer", At, Both),
    ("sync/atomic.CompareAndSwapPointer", At, Both),
    ("runtime.chansend", SyncKind::Chan, Both),
    ("runtime.chanrecv", SyncKind::Chan, Both),
    ("runtime.closechan", SyncKind::Chan, Rel),
    // sync.Cond's notify list (linknamed into the runtime).
    ("sync.runtime_notifyListNotifyAll", SyncKind::Cond, Rel),
    ("sync.runtime_notifyListNotifyOne", SyncKind::Cond, Rel),
    ("sync.runtime_notifyListWait", SyncKind::Cond, Acq),
    ("runtime.notifyListWait", SyncKind::Cond, Acq),
];

/// `runtime.selectgo` and `runtime.newproc1`.
pub const SELECTGO: &str = "runtime.selectgo";
pub const NEWPROC1: &str = "runtime.newproc1";
const ONCE_DO_SLOW: &str = "sync.(*Once).doSlow";

/// Code the user wrote: `main` or a package path whose first element has a
/// dot (a module path); the standard library's have none.
pub fn is_user_code(function: &str) -> bool {
    // Type arguments may contain paths of their own: look before them.
    let name = function.split('[').next().unwrap_or(function);
    let slash = name.rfind('/').map_or(0, |i| i + 1);
    let dot = name[slash..].find('.').map_or(name.len(), |i| slash + i);
    let pkg = &name[..dot];
    pkg == "main"
        || pkg
            .split('/')
            .next()
            .is_some_and(|first| first.contains('.'))
}

/// Whether `name` matches a table entry (`[*]` matches any type argument).
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once("[*]") {
        None => pattern == name,
        Some((head, tail)) => {
            name.len() > head.len() + tail.len()
                && name.starts_with(head)
                && name.ends_with(tail)
                && name[head.len()..].starts_with('[')
        }
    }
}

/// Where to probe `insn` for `action`: before it when the kernel allows a
/// probe there; for an acquire also just after it (the goroutine acquires
/// at its next event anyway), when the atomic keeps its operand registers.
/// A release must be seen before its store, or an acquirer's next event
/// could come first.
fn probe_vaddr(insn: &AtomicInsn, action: SyncAction) -> Option<(u64, Option<(Register, i64)>)> {
    if insn.index.is_some() {
        return None;
    }
    match insn.probe_before {
        Some(v) => Some((v, insn.base_loaded_from)),
        None => (action == SyncAction::AcquireOnResume && insn.keeps_operand)
            .then_some((insn.next_vaddr, None)),
    }
}

fn register_of(insn: &AtomicInsn) -> Option<Register> {
    insn.base.filter(|_| insn.index.is_none())
}

/// Every probe the detector needs in `bin`.
pub fn sync_probes(bin: &GoBinary) -> SyncProbes {
    let mut out = SyncProbes::default();
    let mut inlined: Vec<(usize, InlinedSite)> = bin
        .inlined_sites(|n| INLINED.iter().any(|m| matches(m.name, n)))
        .into_iter()
        .filter_map(|s| Some((INLINED.iter().position(|m| matches(m.name, &s.callee))?, s)))
        .collect();
    // Table order first, so an outer method claims a shared instruction.
    inlined.sort_by_key(|(i, _)| *i);
    for (i, site) in inlined {
        let m = &INLINED[i];
        // Only copies in user code: the standard library uses these
        // everywhere for its own state, and every probe costs a trap.
        if !is_user_code(&site.caller) {
            continue;
        }
        let insn = match m.locate {
            Atomic => bin.atomic_insn(&site),
            Load => bin.load_insn(&site),
            Call => continue,
        };
        let placed = insn.as_ref().and_then(|i| {
            let (vaddr, loaded) = probe_vaddr(i, m.action)?;
            if let Some(target) = i.base_static {
                // A global: the object is RIP-relative at the probe.
                let rel = target
                    .wrapping_add(i.displacement as u64)
                    .wrapping_sub(vaddr) as i64;
                return Some((vaddr, Register::RIP, rel, None));
            }
            let reg = match loaded {
                Some((r, _)) => r,
                None => register_of(i)?,
            };
            Some((vaddr, reg, i.displacement, loaded.map(|(_, d)| d)))
        });
        match placed {
            Some((vaddr, reg, disp, deref)) => {
                // Nested copies (RLock's Int32.Add) share an instruction:
                // the outer method, earlier in the table, names it.
                if out.probes.iter().any(|p| p.vaddr == vaddr) {
                    continue;
                }
                out.probes.push(SyncProbe {
                    vaddr,
                    kind: m.kind,
                    action: m.action,
                    reg,
                    disp: disp.wrapping_add(m.adjust),
                    deref,
                    method: m.name,
                    caller: site.caller.clone(),
                })
            }
            None => out.unresolved.push(site),
        }
    }
    let entry = |method: &'static str, kind, action| SyncProbe {
        vaddr: 0,
        kind,
        action,
        reg: Register::RAX,
        disp: 0,
        deref: None,
        method,
        caller: method.to_owned(),
    };
    for &(method, kind, action) in &ENTRIES {
        if let Some(f) = bin.function(method) {
            out.probes.push(SyncProbe {
                vaddr: f.entry,
                ..entry(method, kind, action)
            });
        }
    }
    // Once.doSlow's deferred `done` store (in doSlow or its defer
    // wrapper): the release Do's fast path acquires. It comes before
    // doSlow's Unlock, which a fast path never synchronises with.
    for f in bin.functions_with_prefix(ONCE_DO_SLOW) {
        for x in bin.xchg_insns(&f) {
            if let Some(reg) = register_of(&x) {
                out.probes.push(SyncProbe {
                    vaddr: x.vaddr,
                    reg,
                    disp: x.displacement,
                    caller: f.name.clone(),
                    ..entry(ONCE_DO_SLOW, SyncKind::Once, SyncAction::Release)
                });
            }
        }
    }
    if let Some(f) = bin.function(SELECTGO) {
        out.probes.push(SyncProbe {
            vaddr: f.entry,
            ..entry(SELECTGO, SyncKind::Chan, SyncAction::Select)
        });
    }
    if let Some(f) = bin.function(NEWPROC1) {
        out.probes.push(SyncProbe {
            vaddr: f.entry,
            ..entry(NEWPROC1, SyncKind::Goroutine, SyncAction::GoEnter)
        });
        out.ret_probes
            .push(entry(NEWPROC1, SyncKind::Goroutine, SyncAction::GoExit));
    }
    out
}

/// What the probes of `--sync-funcs` stand for (their `method`).
pub const USER_SYNC: &str = "--sync-funcs";

/// Probes for the functions the user declared as synchronisation
/// (`--sync-funcs`): each one's entry and the start of each code range of
/// its inlined copies (a copy entered other than at a range start is not
/// seen). They all name one object, the first probe's address, so a call
/// of any of them orders after every earlier call of any: a custom
/// lock()/unlock() pair works, and unrelated functions over-synchronise,
/// which can hide races but never invents one.
pub fn user_sync_probes(bin: &GoBinary, names: &[String]) -> Result<Vec<SyncProbe>, String> {
    let mut spots: Vec<(u64, String)> = Vec::new();
    // One walk of the inline tree for all the names.
    let inlined = bin.inlined_sites(|n| names.iter().any(|m| m == n));
    for name in names {
        let entry = bin.function(name).map(|f| (f.entry, f.name));
        let copies = inlined.iter().filter(|s| &s.callee == name);
        let starts =
            copies.flat_map(|s| s.ranges.iter().map(|&(start, _)| (start, s.caller.clone())));
        let before = spots.len();
        spots.extend(entry.into_iter().chain(starts));
        if spots.len() == before {
            return Err(not_found(bin, name));
        }
    }
    spots.sort_by_key(|(v, _)| *v);
    spots.dedup_by_key(|(v, _)| *v);
    let Some(&(anchor, _)) = spots.first() else {
        return Ok(Vec::new());
    };
    Ok(spots
        .into_iter()
        .map(|(vaddr, caller)| SyncProbe {
            vaddr,
            kind: SyncKind::UserFunc,
            action: SyncAction::Both,
            reg: Register::RIP,
            disp: anchor.wrapping_sub(vaddr) as i64,
            deref: None,
            method: USER_SYNC,
            caller,
        })
        .collect())
}

/// Why `name` is not in `bin`, with the functions it may have meant.
fn not_found(bin: &GoBinary, name: &str) -> String {
    let suffix = format!(".{name}");
    let near: Vec<String> = bin
        .pclntab_functions()
        .into_iter()
        .map(|f| f.name)
        .filter(|n| n.ends_with(&suffix))
        .take(3)
        .collect();
    let hint = if near.is_empty() {
        " (full names, as a Go stack trace prints them: `main.(*ring).publish`)".to_string()
    } else {
        format!(" (did you mean {}?)", near.join(", "))
    };
    format!("--sync-funcs: no function or inlined copy named `{name}` in this binary{hint}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_code_is_main_or_a_module_path() {
        assert!(is_user_code("main.(*cache).get"));
        assert!(is_user_code("main.okOnce.func1"));
        assert!(is_user_code("github.com/x/y.(*T).M"));
        assert!(is_user_code("example.com/app/internal/db.Open"));
        assert!(!is_user_code("sync.(*Once).doSlow"));
        assert!(!is_user_code("net/http.(*Server).Serve"));
        assert!(!is_user_code("internal/sync.(*HashTrieMap[...]).Load"));
        assert!(!is_user_code("runtime.main"));
    }

    #[test]
    fn generic_patterns_match_any_type_argument() {
        let p = "sync/atomic.(*Pointer[*]).Load";
        assert!(matches(
            p,
            "sync/atomic.(*Pointer[go.shape.map[int]int]).Load"
        ));
        assert!(!matches(p, "sync/atomic.(*Pointer[go.shape.int]).Store"));
        assert!(!matches(p, "sync/atomic.(*Pointer).Load"));
        assert!(matches("sync.(*Mutex).Lock", "sync.(*Mutex).Lock"));
    }
}
