//! Turns the kernel's per-(lock, call site, stack) aggregates into report rows:
//! symbolized call sites, merged per lock and site, sorted by total wait.

use std::collections::{BTreeMap, HashMap, HashSet};

use tracer_common::{LockKey, WaiterKey};

use crate::{
    latency::Latency,
    symbols::{PcFrame, Site, StackCount, Symbolizer, flat_stack, trim_lines},
};

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
