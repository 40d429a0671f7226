//! Kernel tables shared by every binary's eBPF object in the agent.
//!
//! Each traced binary gets an object of its own (its probes, rings and
//! per-binary counters), but the aggregate tables are keyed by pid already,
//! so one copy serves every binary: a node with fifty Go binaries pays for
//! the preallocated per-CPU tables once instead of fifty times (≈20 MiB of
//! kernel memory per binary before, scaling with the CPU count).
//!
//! The objects share a table by pinning it in a bpffs instance of the
//! agent's own: a mount made with `fsmount` and never attached anywhere, so
//! nothing is visible in `/sys/fs/bpf` and nothing outlives the agent (the
//! instance, and the pins in it, go when its last fd closes, crash
//! included). The loader reaches it through `/proc/self/fd/N`. Where the
//! mount is refused (no CAP_SYS_ADMIN, an LSM that forbids mounts), every
//! object keeps tables of its own, as before, and the agent says so.

use std::{
    os::fd::{AsRawFd, OwnedFd},
    path::PathBuf,
    sync::Mutex,
};

use crate::ebpf::Tracer;
use anyhow::{Context, Result};
use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, fsconfig_create, fsmount, fsopen};
use tracer_common::{
    WaitStats,
    maps::{ConflictStats, GrowthStats},
    names::map,
};

/// Tables every per-binary object shares. All are keyed by the process
/// (`tgid` or pid first), which is what makes sharing them correct: each
/// session reads and purges only its own processes' rows. Not shared:
/// the stack tables (a stack id means nothing without the binary; purging
/// them per binary needs a sweep not built yet), the rings (one consumer
/// per binary), the rate guard's counter and the per-binary site counters
/// (indexed by the binary's probe cookies).
const SHARED: &[&str] = &[
    map::TARGETS,
    map::MAP_CONFIG,
    map::LOCK_INFLIGHT,
    map::LOCK_WAITS,
    map::LOCK_WAITERS,
    map::UNLOCK_WAKES,
    map::LOCK_HANDOFFS,
    map::MAP_GROWTH,
    map::MAP_OP_INFLIGHT,
    map::MAP_ACTIVE,
    map::MAP_OPS,
    map::MAP_OP_GS,
    map::MAP_CONFLICTS,
    map::SYNC_MAP_CALLS,
];

/// Node-wide sizes of the shared tables that are not per-CPU.
const FLAT_SIZES: &[(&str, u32)] = &[
    (map::TARGETS, 16384),
    (map::MAP_CONFIG, 16384),
    (map::LOCK_INFLIGHT, 16384),
    (map::LOCK_WAITERS, 32768),
    (map::LOCK_HANDOFFS, 8192),
    (map::MAP_OP_INFLIGHT, 8192),
    (map::MAP_ACTIVE, 32768),
    (map::MAP_OP_GS, 32768),
];

/// A per-CPU shared table: its name, value size, the kernel memory it may
/// take (bytes, all CPUs together) and the most rows it gets.
struct PerCpu {
    name: &'static str,
    value: usize,
    budget: usize,
    max_rows: u32,
}

const PER_CPU: &[PerCpu] = &[
    PerCpu {
        name: map::LOCK_WAITS,
        value: size_of::<WaitStats>(),
        budget: 12 << 20,
        max_rows: 8192,
    },
    PerCpu {
        name: map::MAP_OPS,
        value: size_of::<WaitStats>(),
        budget: 6 << 20,
        max_rows: 4096,
    },
    PerCpu {
        name: map::UNLOCK_WAKES,
        value: size_of::<u64>(),
        budget: 1 << 20,
        max_rows: 8192,
    },
    PerCpu {
        name: map::MAP_GROWTH,
        value: size_of::<GrowthStats>(),
        budget: 1 << 20,
        max_rows: 8192,
    },
    PerCpu {
        name: map::MAP_CONFLICTS,
        value: size_of::<ConflictStats>(),
        budget: 1 << 20,
        max_rows: 4096,
    },
    PerCpu {
        name: map::SYNC_MAP_CALLS,
        value: size_of::<u64>(),
        budget: 1 << 20,
        max_rows: 4096,
    },
];

/// Fewest rows a per-CPU shared table gets, whatever the CPU count: below
/// this a busy node loses rows, so a many-CPU node goes over the budget.
const MIN_PER_CPU_ROWS: u32 = 512;

/// Rows of a per-CPU table of `value`-byte values within `budget` bytes on
/// `cpus` CPUs (the kernel keeps one value per possible CPU, 8-byte
/// aligned), between [`MIN_PER_CPU_ROWS`] and `max_rows`.
fn per_cpu_rows(value: usize, budget: usize, max_rows: u32, cpus: usize) -> u32 {
    let per_row = value.next_multiple_of(8).max(8) * cpus.max(1);
    let rows = u32::try_from(budget / per_row).unwrap_or(u32::MAX);
    rows.clamp(MIN_PER_CPU_ROWS, max_rows.max(MIN_PER_CPU_ROWS))
}

/// The agent's private bpffs instance holding the shared tables.
pub(crate) struct SharedTables {
    /// The detached mount; its pins live as long as this fd.
    mount: OwnedFd,
    sizes: Vec<(&'static str, u32)>,
    /// Whether an object has loaded (so every table is pinned). Until then
    /// loads take turns: two first loads at once would both create a table
    /// and the second pin would fail with EEXIST.
    made: Mutex<bool>,
}

impl SharedTables {
    /// Makes the private bpffs instance. Fails where mounting is not allowed.
    pub(crate) fn new() -> Result<Self> {
        let fs = fsopen("bpf", FsOpenFlags::FSOPEN_CLOEXEC)
            .context("fsopen(\"bpf\") for the agent's shared eBPF tables")?;
        fsconfig_create(&fs).context("creating a bpffs instance (fsconfig)")?;
        let mount = fsmount(
            &fs,
            FsMountFlags::FSMOUNT_CLOEXEC,
            MountAttrFlags::MOUNT_ATTR_NOEXEC
                | MountAttrFlags::MOUNT_ATTR_NOSUID
                | MountAttrFlags::MOUNT_ATTR_NODEV,
        )
        .context("mounting the agent's bpffs instance (fsmount)")?;
        let cpus = aya::util::nr_cpus().unwrap_or(1);
        let mut sizes: Vec<(&'static str, u32)> = FLAT_SIZES.to_vec();
        sizes.extend(
            PER_CPU
                .iter()
                .map(|t| (t.name, per_cpu_rows(t.value, t.budget, t.max_rows, cpus))),
        );
        Ok(Self {
            mount,
            sizes,
            made: Mutex::new(false),
        })
    }

    /// Loads a binary's object with `own` table sizes for its private
    /// tables and the shared ones taken from (or, first, put in) the
    /// instance.
    pub(crate) fn load(&self, own: &[(&'static str, u32)]) -> Result<Tracer> {
        let mut sizes = own.to_vec();
        sizes.extend_from_slice(&self.sizes);
        let pins = self.pins();
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        if *made {
            drop(made);
            return Tracer::load_pinned(false, &sizes, &pins);
        }
        let tracer = Tracer::load_pinned(false, &sizes, &pins)?;
        *made = true;
        Ok(tracer)
    }

    /// Pin paths of the shared tables, for [`Tracer::load_pinned`]:
    /// the first object to load creates and pins each table, the later ones
    /// open the pinned one.
    fn pins(&self) -> Vec<(&'static str, PathBuf)> {
        let dir = PathBuf::from(format!("/proc/self/fd/{}", self.mount.as_raw_fd()));
        SHARED.iter().map(|name| (*name, dir.join(name))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_tables_shrink_with_cpus_within_bounds() {
        let v = size_of::<WaitStats>();
        let two = per_cpu_rows(v, 12 << 20, 8192, 2);
        let sixty_four = per_cpu_rows(v, 12 << 20, 8192, 64);
        assert!(two > sixty_four, "{two} vs {sixty_four}");
        assert!(two as usize * v.next_multiple_of(8) * 2 <= 12 << 20);
        assert_eq!(per_cpu_rows(v, 12 << 20, 8192, 4096), MIN_PER_CPU_ROWS);
        assert_eq!(per_cpu_rows(8, 1 << 30, 4096, 1), 4096);
        assert_eq!(per_cpu_rows(0, 1 << 20, 4096, 0), 4096);
    }

    #[test]
    fn every_shared_table_has_a_node_size() {
        let sized: Vec<&str> = FLAT_SIZES
            .iter()
            .map(|(n, _)| *n)
            .chain(PER_CPU.iter().map(|t| t.name))
            .collect();
        for name in SHARED {
            assert!(sized.contains(name), "{name} has no node-wide size");
        }
        assert_eq!(sized.len(), SHARED.len());
    }
}
