//! `--holders`: code that held a contended lock, from the unlocks that had to
//! wake waiters, per lock and unlocker call site (what Go's mutex profile
//! attributes delay to).

use tracer_common::LockKey;

use super::rows::merge_by_site;
use crate::symbols::{Site, StackCount, Symbolizer};

/// Unlocks of one lock from one call site that woke waiters.
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
    let mut rows = merge_by_site(
        wakes,
        sym,
        stack_of,
        |k, loc| HolderRow {
            pid: k.tgid,
            address: loc.address,
            kind: loc.kind,
            name: None,
            site: loc.site,
            stack: loc.stack,
            wakeups: 0,
            stacks: Vec::new(),
        },
        |row, _, n, grouped| {
            row.wakeups += n;
            row.stacks.push(StackCount {
                frames: grouped,
                count: *n,
                total_ns: 0,
            });
        },
    );
    rows.sort_by(|a, b| b.wakeups.cmp(&a.wakeups).then(a.address.cmp(&b.address)));
    rows
}
