//! Turns the kernel's per-(lock, call site, stack) wait aggregates into
//! report rows: symbolized call sites, merged per lock and site, sorted by
//! total wait.

use std::collections::{BTreeMap, HashMap, HashSet};

use tracer_common::{LockKey, WaiterKey};

use super::kinds::classify;
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

/// Symbolizes one recorded lock event (wait, unlock or wait in flight).
pub fn locate(
    sym: &Symbolizer<'_>,
    kind: u32,
    lock_addr: u64,
    caller_pc: u64,
    stack: Option<&[u64]>,
) -> Located {
    let grouped = sym.pc_stack(caller_pc, stack);
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

/// Merges records into rows per (process, lock, kind, call site), in key
/// order: `new` makes a row from a located record, `add` folds each record
/// (with its stack grouped by address) into its row.
pub(super) fn merge_by_site<V, R>(
    records: &[(LockKey, V)],
    sym: &Symbolizer<'_>,
    stack_of: impl Fn(i64) -> Option<Vec<u64>>,
    new: impl Fn(&LockKey, Located) -> R,
    mut add: impl FnMut(&mut R, &LockKey, &V, Vec<PcFrame>),
) -> Vec<R> {
    let mut merged: BTreeMap<(u32, u64, &'static str, Site), R> = BTreeMap::new();
    for (k, v) in records {
        let mut loc = locate(
            sym,
            k.kind,
            k.lock_addr,
            k.caller_pc,
            stack_of(k.stack_id).as_deref(),
        );
        let grouped = std::mem::take(&mut loc.frames);
        let row = merged
            .entry((k.tgid, loc.address, loc.kind, loc.site.clone()))
            .or_insert_with(|| new(k, loc));
        add(row, k, v, grouped);
    }
    merged.into_values().collect()
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
    let mut rows = merge_by_site(
        waits,
        sym,
        stack_of,
        |k, loc| LockRow {
            pid: k.tgid,
            address: loc.address,
            kind: loc.kind,
            name: None,
            site: loc.site,
            stack: loc.stack,
            latency: Latency::default(),
            goroutines: HashSet::new(),
            stacks: Vec::new(),
        },
        |row, k, lat, grouped| {
            row.latency.merge(lat);
            row.stacks.push(StackCount {
                frames: grouped,
                count: lat.count,
                total_ns: lat.total_ns,
            });
            if let Some(gs) = waiters.get(&(k.tgid, k.kind, k.lock_addr, k.caller_pc)) {
                row.goroutines.extend(gs);
            }
        },
    );
    rows.sort_by(|a, b| {
        b.latency
            .total_ns
            .cmp(&a.latency.total_ns)
            .then(a.address.cmp(&b.address))
    });
    rows
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
}
