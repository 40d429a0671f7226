//! Turns the kernel's per-(lock, call site, stack) aggregates into report rows:
//! symbolized call sites, merged per lock and site, sorted by total wait.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use tracer_common::{LockKey, WaiterKey};

use crate::{gobin::GoBinary, latency::Latency};

/// A source location.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Site {
    pub function: String,
    pub file: String,
    pub line: u32,
}

impl Site {
    fn unknown(pc: u64) -> Self {
        Site {
            function: format!("?@{pc:#x}"),
            file: String::new(),
            line: 0,
        }
    }
}

/// `" at SITE"`, or nothing without a site: the tail of finding messages.
pub fn at_site(site: Option<&Site>) -> String {
    site.map_or(String::new(), |s| format!(" at {s}"))
}

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.file.is_empty() {
            write!(f, "{}", self.function)
        } else {
            let file = self.file.rsplit('/').next().unwrap_or(&self.file);
            write!(f, "{} {}:{}", self.function, file, self.line)
        }
    }
}

/// One return address of a stack with its source lines, innermost (inlined)
/// first: a pprof Location with one Line per inlined frame.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PcFrame {
    /// Runtime address inside the CALL (return address - 1).
    pub address: u64,
    pub lines: Vec<Site>,
}

/// One distinct stack and what was counted on it (kept for profiles; the
/// JSON report shows rows merged per call site instead).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StackCount {
    /// Innermost first, starting at the call site (machinery trimmed).
    pub frames: Vec<PcFrame>,
    pub count: u64,
    /// Summed duration, ns (0 where nothing is timed, e.g. unlock wakeups).
    pub total_ns: u64,
}

/// Drops the first `skip` lines of a grouped stack (the lock or map
/// machinery), keeping the rest grouped by address.
pub fn trim_lines(frames: Vec<PcFrame>, mut skip: usize) -> Vec<PcFrame> {
    let mut out = Vec::with_capacity(frames.len());
    for mut f in frames {
        if skip >= f.lines.len() {
            skip -= f.lines.len();
            continue;
        }
        f.lines.drain(..skip);
        skip = 0;
        out.push(f);
    }
    out
}

/// Contention on one lock from one call site.
#[derive(Clone, Debug)]
pub struct LockRow {
    pub pid: u32,
    pub address: u64,
    pub kind: &'static str,
    /// The lock's variable name when it is a global (`main.mu`), from the symbol table.
    pub name: Option<String>,
    pub site: Site,
    /// The waiter's stack, innermost first, starting at the call site's frame.
    pub stack: Vec<Site>,
    pub latency: Latency,
    /// Distinct goroutines (by `g` pointer) that waited here.
    pub goroutines: HashSet<u64>,
    /// The waits per distinct full stack (for pprof).
    pub stacks: Vec<StackCount>,
}

/// Frames inside these packages are the lock's own machinery, not the call site.
fn is_lock_machinery(function: &str) -> bool {
    const PREFIXES: [&str; 4] = ["sync.", "internal/sync.", "runtime.", "sync/atomic."];
    PREFIXES.iter().any(|p| function.starts_with(p))
}

/// How to map runtime addresses of one process back to link-time addresses.
pub struct Symbolizer<'a> {
    pub bin: &'a GoBinary,
    /// Load bias: runtime address minus link-time address (non-zero for PIE).
    pub bias: u64,
}

impl Symbolizer<'_> {
    /// Frames (innermost first, inlined ones included) for a return address.
    fn frames_for_return(&self, ret_pc: u64) -> PcFrame {
        // A return address points after the CALL; step back into it.
        let pc = ret_pc.wrapping_sub(self.bias).wrapping_sub(1);
        let frames = self.bin.symbolize(pc);
        let lines = if frames.is_empty() {
            vec![Site::unknown(ret_pc)]
        } else {
            frames
                .into_iter()
                .map(|f| Site {
                    function: f.function,
                    file: f.file,
                    line: f.line,
                })
                .collect()
        };
        PcFrame {
            address: ret_pc.wrapping_sub(1),
            lines,
        }
    }

    /// The recorded stack grouped by address: the slow path's return address,
    /// then the unwound frames past the caller (frame 0 of `stack` is the
    /// probed function itself).
    pub fn pc_stack(&self, caller_pc: u64, stack: Option<&[u64]>) -> Vec<PcFrame> {
        let mut pcs = Vec::with_capacity(16);
        if caller_pc != 0 {
            pcs.push(caller_pc);
        }
        if let Some(s) = stack {
            pcs.extend(s.iter().skip(1).copied().filter(|&p| p != 0));
        }
        pcs.into_iter()
            .map(|pc| self.frames_for_return(pc))
            .collect()
    }

    /// The waiter's stack: all frames and the index of the first one outside
    /// the lock's own machinery (the call site).
    pub fn wait_stack(&self, caller_pc: u64, stack: Option<&[u64]>) -> (Vec<Site>, usize) {
        let (all, first_user) = flat_stack(&self.pc_stack(caller_pc, stack), is_lock_machinery);
        (all, first_user)
    }
}

/// Flattens a grouped stack; also returns the index of the first line not
/// in `machinery` (0 when every line is).
pub fn flat_stack(frames: &[PcFrame], machinery: fn(&str) -> bool) -> (Vec<Site>, usize) {
    let all: Vec<Site> = frames.iter().flat_map(|f| f.lines.clone()).collect();
    let first_user = all
        .iter()
        .position(|s| !machinery(&s.function))
        .unwrap_or(0);
    (all, first_user)
}

/// A lock event placed in the program: report kind, lock address, the stack
/// from the call site outward, and the call site itself.
pub struct Located {
    pub kind: &'static str,
    pub address: u64,
    pub stack: Vec<Site>,
    pub site: Site,
    /// The whole stack from the call site outward, grouped by address.
    pub frames: Vec<PcFrame>,
}

impl Symbolizer<'_> {
    /// Symbolizes one recorded lock event (wait, unlock or wait in flight).
    pub fn locate(
        &self,
        kind: u32,
        lock_addr: u64,
        caller_pc: u64,
        stack: Option<&[u64]>,
    ) -> Located {
        let grouped = self.pc_stack(caller_pc, stack);
        let (all, first_user) = flat_stack(&grouped, is_lock_machinery);
        let (kind, address) = classify(kind, lock_addr, &all[..first_user]);
        let stack: Vec<Site> = all.into_iter().skip(first_user).take(16).collect();
        let site = stack
            .first()
            .cloned()
            .unwrap_or_else(|| Site::unknown(caller_pc));
        Located {
            kind,
            address,
            stack,
            site,
            frames: trim_lines(grouped, first_user),
        }
    }
}

/// The load bias of a PIE, from one stack whose frame 0 is the probed function's
/// entry. Biases are page-aligned, which absorbs an IP reported one byte past the
/// breakpoint.
pub fn bias_from_entry_frame(frame0: u64, entry_vaddr: u64) -> u64 {
    frame0.wrapping_sub(entry_vaddr) & !0xfff
}

/// Distinct goroutines per (process, kind, lock, caller PC), from the kernel's
/// waiter records.
pub fn waiters_by_site(waiters: &[WaiterKey]) -> HashMap<(u32, u32, u64, u64), HashSet<u64>> {
    let mut m: HashMap<_, HashSet<u64>> = HashMap::new();
    for w in waiters {
        m.entry((w.tgid, w.kind, w.lock_addr, w.caller_pc))
            .or_default()
            .insert(w.g);
    }
    m
}

/// Builds rows from raw aggregates; `stack_of` looks a stack id up.
pub fn build_rows(
    waits: &[(LockKey, Latency)],
    waiters: &HashMap<(u32, u32, u64, u64), HashSet<u64>>,
    sym: &Symbolizer<'_>,
    stack_of: impl Fn(i64) -> Option<Vec<u64>>,
) -> Vec<LockRow> {
    let mut merged: BTreeMap<(u32, u64, &'static str, Site), LockRow> = BTreeMap::new();
    for (k, lat) in waits {
        let Located {
            kind,
            address,
            stack: frames,
            site,
            frames: grouped,
        } = sym.locate(
            k.kind,
            k.lock_addr,
            k.caller_pc,
            stack_of(k.stack_id).as_deref(),
        );
        let row = merged
            .entry((k.tgid, address, kind, site.clone()))
            .or_insert_with(|| LockRow {
                pid: k.tgid,
                address,
                kind,
                name: None,
                site,
                stack: frames,
                latency: Latency::default(),
                goroutines: HashSet::new(),
                stacks: Vec::new(),
            });
        row.latency.merge(lat);
        row.stacks.push(StackCount {
            frames: grouped,
            count: lat.count,
            total_ns: lat.total_ns,
        });
        if let Some(gs) = waiters.get(&(k.tgid, k.kind, k.lock_addr, k.caller_pc)) {
            row.goroutines.extend(gs);
        }
    }
    let mut rows: Vec<LockRow> = merged.into_values().collect();
    rows.sort_by(|a, b| {
        b.latency
            .total_ns
            .cmp(&a.latency.total_ns)
            .then(a.address.cmp(&b.address))
    });
    rows
}

/// Offsets of the semaphores inside `sync.RWMutex` {w Mutex (8 bytes),
/// writerSem uint32, readerSem uint32, ...}: the same in every Go 1.18–1.27.
const RW_WRITER_SEM: u64 = 8;
const RW_READER_SEM: u64 = 12;

/// Report kind and lock address for a wait. `machinery` are the frames between
/// the probed function and the call site: a Mutex slow path entered from
/// `RWMutex.Lock` is a writer waiting for another writer.
pub fn classify(kind: u32, addr: u64, machinery: &[Site]) -> (&'static str, u64) {
    use tracer_common::lock::{
        KIND_MUTEX, KIND_MUTEX_UNLOCK, KIND_RW_READ, KIND_RW_RUNLOCK, KIND_RW_WRITE,
    };
    let via = |f: &str| machinery.iter().any(|s| s.function == f);
    match kind {
        KIND_MUTEX if via("sync.(*RWMutex).Lock") => ("rwmutex_write", addr),
        KIND_MUTEX_UNLOCK if via("sync.(*RWMutex).Unlock") => ("rwmutex_write", addr),
        KIND_MUTEX | KIND_MUTEX_UNLOCK => ("mutex", addr),
        KIND_RW_READ => ("rwmutex_read", addr.wrapping_sub(RW_READER_SEM)),
        KIND_RW_WRITE => ("rwmutex_write", addr.wrapping_sub(RW_WRITER_SEM)),
        KIND_RW_RUNLOCK => ("rwmutex_write", addr),
        _ => ("unknown", addr),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machinery_is_skipped() {
        assert!(is_lock_machinery("sync.(*Mutex).Lock"));
        assert!(is_lock_machinery("internal/sync.(*Mutex).lockSlow"));
        assert!(is_lock_machinery("runtime.semacquire1"));
        assert!(!is_lock_machinery("main.holdLock"));
        assert!(!is_lock_machinery("syncthing.Foo"));
    }

    #[test]
    fn classifies_kinds_and_maps_semaphores_to_the_rwmutex() {
        use tracer_common::lock::*;
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
    }

    #[test]
    fn trimming_skips_lines_across_and_within_addresses() {
        let site = |f: &str| Site {
            function: f.into(),
            file: String::new(),
            line: 0,
        };
        let frames = vec![
            PcFrame {
                address: 1,
                lines: vec![site("runtime.semacquire1")],
            },
            PcFrame {
                address: 2,
                lines: vec![site("sync.(*Mutex).Lock"), site("main.inc")],
            },
            PcFrame {
                address: 3,
                lines: vec![site("main.main")],
            },
        ];
        let (flat, first) = flat_stack(&frames, is_lock_machinery);
        assert_eq!(flat.len(), 4);
        assert_eq!(first, 2);
        let t = trim_lines(frames, first);
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].address, 2);
        assert_eq!(t[0].lines, vec![site("main.inc")]);
        assert_eq!(t[1].lines, vec![site("main.main")]);
    }

    #[test]
    fn bias_is_page_aligned() {
        assert_eq!(
            bias_from_entry_frame(0x5555_5500_1234, 0x1234),
            0x5555_5500_0000
        );
        assert_eq!(bias_from_entry_frame(0x47_1234, 0x47_1234), 0);
        assert_eq!(bias_from_entry_frame(0x47_1235, 0x47_1234), 0);
    }
}

/// Code that held a contended lock: unlocks that had to wake waiters, per lock
/// and unlocker call site (what Go's mutex profile attributes delay to).
#[derive(Clone, Debug)]
pub struct HolderRow {
    pub pid: u32,
    pub address: u64,
    pub kind: &'static str,
    pub name: Option<String>,
    pub site: Site,
    pub stack: Vec<Site>,
    pub wakeups: u64,
    /// Wakeups per distinct full stack (for pprof; `total_ns` is 0).
    pub stacks: Vec<StackCount>,
}

/// Builds holder rows from the kernel's unlock counts, most wakeups first.
pub fn build_holders(
    wakes: &[(LockKey, u64)],
    sym: &Symbolizer<'_>,
    stack_of: impl Fn(i64) -> Option<Vec<u64>>,
) -> Vec<HolderRow> {
    let mut merged: BTreeMap<(u32, u64, &'static str, Site), HolderRow> = BTreeMap::new();
    for (k, n) in wakes {
        let Located {
            kind,
            address,
            stack: frames,
            site,
            frames: grouped,
        } = sym.locate(
            k.kind,
            k.lock_addr,
            k.caller_pc,
            stack_of(k.stack_id).as_deref(),
        );
        let row = merged
            .entry((k.tgid, address, kind, site.clone()))
            .or_insert_with(|| HolderRow {
                pid: k.tgid,
                address,
                kind,
                name: None,
                site,
                stack: frames,
                wakeups: 0,
                stacks: Vec::new(),
            });
        row.wakeups += n;
        row.stacks.push(StackCount {
            frames: grouped,
            count: *n,
            total_ns: 0,
        });
    }
    let mut rows: Vec<HolderRow> = merged.into_values().collect();
    rows.sort_by(|a, b| b.wakeups.cmp(&a.wakeups).then(a.address.cmp(&b.address)));
    rows
}
