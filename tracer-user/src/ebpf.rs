//! The eBPF object and what every feature shares to use it: loading it,
//! where probes fire ([`Scope`]), the one attach path for uprobes, probe
//! status for the report, and purging a dead process from the kernel tables.
//!
//! Entry probes go on a function's first instruction and exit probes on each
//! of its RET instructions (found by decoding the function body); never a
//! uretprobe, which rewrites return addresses on goroutine stacks that the Go
//! runtime later copies, and crashes the program.

use std::{
    collections::BTreeSet,
    num::NonZeroU32,
    path::{Path, PathBuf},
};
use tracer_common::names;

use anyhow::{Context, Result, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, MapError, PerCpuHashMap, PerCpuValues},
    programs::{
        UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};
use serde::Serialize;

/// Token-sized kernel tables for an object that runs discovery and TCP
/// only (the agent's node-wide object); its lock and map tables
/// are used only to measure the probe costs (tracer's own pid, one entry).
/// `run` and `attach` measure them with an object of these sizes too.
pub(crate) const SHARED_TABLES: &[(&str, u32)] = &[
    (names::map::TARGETS, 1),
    (names::map::LOCK_WAITS, 1),
    (names::map::LOCK_STACKS, 1),
    (names::map::UNLOCK_WAKES, 1),
    (names::map::LOCK_WAITERS, 1),
    (names::map::LOCK_INFLIGHT, 1),
    (names::map::MAP_CONFIG, 1),
    (names::map::MAP_STACKS, 1),
    (names::map::MAP_GROWTH, 1),
    (names::map::MAP_OP_INFLIGHT, 1),
    (names::map::MAP_ACTIVE, 1),
    (names::map::MAP_OPS, 1),
    (names::map::MAP_OP_GS, 1),
    (names::map::MAP_CONFLICTS, 1),
    (names::map::SYNC_MAP_CALLS, 1),
    (names::map::MAP_SITE_HITS, 1),
    (names::map::MAP_EVENTS, 4096),
];

/// The eBPF object built by `build.rs`; empty when built with `AYA_BUILD_SKIP=1`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer"));

/// Programs verified as the object loads, so a kernel that refuses the lock
/// probes fails the load rather than the first attach. Other features load
/// theirs when they start, and so do the Mutex wake-up programs
/// (`locks/probes.rs`): verifying them costs ≈150 ms here, which a binary
/// whose Mutex points cannot be decoded should not pay before its first
/// process is traced.
const LOADED_WITH_OBJECT: [&str; 3] = [
    names::program::LOCK_ENTER,
    names::program::LOCK_EXIT,
    names::program::UNLOCK_SLOW,
];

/// The happens-before ring's size when deep mode runs (one page otherwise).
pub const HB_RING: (&str, u32) = (names::map::HB_EVENTS, tracer_common::maps::HB_RING_BYTES);

/// Whether one feature's probes are live, and if not, why.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeStatus {
    /// Feature, e.g. `mutex`.
    pub feature: String,
    /// Function probed, when one was found.
    pub function: Option<String>,
    /// `attached`, `missing` or `failed`.
    pub status: &'static str,
    /// Number of RET sites probed for exits.
    pub ret_sites: usize,
    pub reason: Option<String>,
    /// Wait kind the probes record (`tracer_common::lock::KIND_*`).
    #[serde(skip)]
    pub kind: u32,
}

/// Kernel-measured cost of one probe program.
#[derive(Clone, Debug, Serialize)]
pub struct ProgramStats {
    pub program: String,
    /// Times the program ran (probe hits that passed to BPF).
    pub run_count: u64,
    /// Total time spent in the program, ns (excludes the uprobe trap itself).
    pub run_time_ns: u64,
}

/// Turns on the kernel's BPF run-time statistics until the returned fd is dropped.
pub fn enable_bpf_stats() -> Result<std::os::fd::OwnedFd> {
    aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling BPF run-time statistics (BPF_ENABLE_STATS)")
}

/// The value of `key:` in a `/proc/<pid>/fdinfo/<fd>` text.
fn fdinfo_value(info: &str, key: &str) -> Option<u64> {
    info.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().parse().ok())?
    })
}

/// Keys of a hash table (plain or per-CPU) matching `dead`, for [`purge_hash`].
fn dead_keys<K: aya::Pod>(
    keys: impl Iterator<Item = Result<K, aya::maps::MapError>>,
    dead: impl Fn(&K) -> bool,
) -> Vec<K> {
    keys.filter_map(|k| k.ok()).filter(|k| dead(k)).collect()
}

/// Deletes the entries of a (LRU) hash table whose key matches `dead`.
pub(crate) fn purge_hash<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    dead: impl Fn(&K) -> bool,
) -> Result<()> {
    let mut m: HashMap<&mut MapData, K, V> = HashMap::try_from(map_mut(ebpf, name)?)?;
    for k in dead_keys(m.keys(), dead) {
        // Already gone (evicted, or removed by the kernel side) is fine.
        let _ = m.remove(&k);
    }
    Ok(())
}

/// [`purge_hash`] for per-CPU hash tables.
pub(crate) fn purge_per_cpu<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &str,
    dead: impl Fn(&K) -> bool,
) -> Result<()> {
    let mut m: PerCpuHashMap<&mut MapData, K, V> = PerCpuHashMap::try_from(map_mut(ebpf, name)?)?;
    for k in dead_keys(m.keys(), dead) {
        let _ = m.remove(&k);
    }
    Ok(())
}

/// The named kernel table, or an error naming it.
fn map_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| anyhow!("{name} map missing"))
}

/// Where probes on a binary fire: one process, or every process running it.
#[derive(Clone, Copy, Debug)]
pub enum Scope {
    Pid(u32),
    AllProcesses,
}

impl Scope {
    fn uprobe_scope(self) -> UProbeScope {
        match self {
            Scope::Pid(pid) => {
                NonZeroU32::new(pid).map_or(UProbeScope::AllProcesses, UProbeScope::OneProcess)
            }
            Scope::AllProcesses => UProbeScope::AllProcesses,
        }
    }
}

/// Loaded eBPF programs and maps.
pub struct Tracer {
    /// Crate-visible so feature modules (locks, maps, TCP) read their tables.
    pub(crate) ebpf: Ebpf,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// When the aggregate tables are shared with other objects (the
    /// agent's per-binary objects, `agent/shared_tables.rs`): the processes
    /// this object records. Rows of other processes belong to other
    /// objects, and are neither read nor purged here. None: every row is
    /// this object's.
    own_pids: Option<BTreeSet<u32>>,
}

impl Tracer {
    /// Loads the eBPF object into the kernel. Fails, rather than continuing with
    /// nothing traced, when the kernel refuses it.
    pub fn load() -> Result<Self> {
        Self::load_with(true)
    }

    /// Loads the object; without `tcp`, the TCP flow tables are created at a
    /// token size, so a session that does not trace TCP does not pin ~25 MB of
    /// kernel memory for them.
    pub fn load_with(tcp: bool) -> Result<Self> {
        Self::load_sized(tcp, &[])
    }

    /// [`Tracer::load_with`] for a session whose map mode is `maps`: deep
    /// mode gets a happens-before ring large enough for its event rate.
    pub fn load_for_maps(tcp: bool, maps: crate::maps::MapsMode) -> Result<Self> {
        if maps == crate::maps::MapsMode::Deep {
            Self::load_sized(tcp, &[HB_RING])
        } else {
            Self::load_sized(tcp, &[])
        }
    }

    /// Like [`Tracer::load_with`], with the named kernel tables created at the
    /// given sizes: the agent loads one object per traced process and one for
    /// discovery, and each must not pin tens of MB of kernel memory.
    pub fn load_sized(tcp: bool, sizes: &[(&str, u32)]) -> Result<Self> {
        Self::load_pinned(tcp, sizes, &[])
    }

    /// [`Tracer::load_sized`], with the tables named in `pins` shared: each
    /// is opened at its pin path, or created and pinned there by the first
    /// object. Such an object reads and purges only the rows of its own
    /// processes ([`Tracer::owns`]).
    pub fn load_pinned(
        tcp: bool,
        sizes: &[(&str, u32)],
        pins: &[(&'static str, PathBuf)],
    ) -> Result<Self> {
        if EBPF_OBJECT.is_empty() {
            bail!(
                "this tracer was built without its eBPF object (AYA_BUILD_SKIP was set); rebuild after `cargo xtask setup`"
            );
        }
        let mut loader = EbpfLoader::new();
        if !tcp {
            for map in [names::map::TCP_FLOWS, names::map::TCP_SOCKS] {
                loader.map_max_entries(map, 64);
            }
            // A ring buffer's size is in bytes, a power-of-two number of pages.
            loader.map_max_entries(names::map::TCP_CLOSED_RB, 4096);
        }
        for (map, size) in sizes {
            loader.map_max_entries(map, *size);
        }
        for (map, path) in pins {
            loader.map_pin_path(map, path.as_path());
        }
        let ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading tracer's eBPF object into the kernel")?;
        let mut tracer = Self {
            ebpf,
            logger: None,
            own_pids: (!pins.is_empty()).then(BTreeSet::new),
        };
        // Debug logs from the probes; absent when no program logs.
        tracer.logger = aya_log::EbpfLogger::init(&mut tracer.ebpf).ok();
        tracer.load_uprobes(&LOADED_WITH_OBJECT)?;
        Ok(tracer)
    }

    /// Verifies the named uprobe programs, so they can be attached; those
    /// already loaded are left as they are.
    pub(crate) fn load_uprobes(&mut self, names: &[&str]) -> Result<()> {
        for name in names {
            let prog: &mut UProbe = self
                .ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("eBPF object lacks program {name}"))?
                .try_into()?;
            if prog.fd().is_ok() {
                continue;
            }
            prog.load()
                .with_context(|| format!("verifying eBPF program {name}"))?;
        }
        Ok(())
    }

    /// A loaded uprobe program, by name.
    pub(crate) fn uprobe(&mut self, prog: &str) -> Result<&mut UProbe> {
        Ok(self
            .ebpf
            .program_mut(prog)
            .ok_or_else(|| anyhow!("{prog} missing"))?
            .try_into()?)
    }

    /// Attaches the loaded program `prog` at `file_offset` of the binary at
    /// `path`, passing `cookie` to the program. The one attach path of every
    /// uprobe; callers add what the probe was for to the error.
    pub(crate) fn attach_uprobe(
        &mut self,
        prog: &str,
        file_offset: u64,
        cookie: u64,
        path: &Path,
        scope: Scope,
    ) -> Result<UProbeLinkId> {
        Ok(self.uprobe(prog)?.attach(
            UProbeAttachPoint {
                location: UProbeAttachLocation::AbsoluteOffset(file_offset),
                cookie: Some(cookie),
            },
            path,
            scope.uprobe_scope(),
        )?)
    }

    /// Detaches a probe without waiting for the kernel: the link is closed on
    /// the closer thread ([`crate::link_closer`]), after those handed over
    /// before it. The probe may fire until then.
    pub(crate) fn detach_uprobe_later(&mut self, prog: &str, link: UProbeLinkId) -> Result<()> {
        let link = self
            .uprobe(prog)?
            .take_link(link)
            .with_context(|| format!("taking a link of {prog}"))?;
        crate::link_closer::close_later(link);
        Ok(())
    }

    /// Forwards debug logs written by the probes (aya-log) to `tracing`.
    pub fn flush_logs(&mut self) {
        if let Some(l) = self.logger.as_mut() {
            l.flush();
        }
    }

    /// Adds `pid` to the processes whose probe hits are recorded.
    pub fn add_target(&mut self, pid: u32) -> Result<()> {
        let mut targets: HashMap<_, u32, u8> =
            HashMap::try_from(map_mut(&mut self.ebpf, names::map::TARGETS)?)?;
        targets.insert(pid, 1, 0).context("adding target pid")?;
        if let Some(own) = self.own_pids.as_mut() {
            own.insert(pid);
        }
        Ok(())
    }

    /// Whether rows of process `tgid` are this object's: always, unless its
    /// tables are shared with other objects.
    pub(crate) fn owns(&self, tgid: u32) -> bool {
        self.own_pids.as_ref().is_none_or(|own| own.contains(&tgid))
    }

    /// Whether this object's aggregate tables are shared with other objects.
    pub(crate) fn shares_tables(&self) -> bool {
        self.own_pids.is_some()
    }

    /// The rows of the per-CPU hash table `name` that are this object's
    /// ([`Tracer::owns`], by the key's process), values per CPU. A row
    /// deleted while the table is read is skipped.
    pub(crate) fn per_cpu_rows<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &str,
        tgid: impl Fn(&K) -> u32,
    ) -> Result<Vec<(K, PerCpuValues<V>)>> {
        let map: PerCpuHashMap<&MapData, K, V> = PerCpuHashMap::try_from(
            self.ebpf
                .map(name)
                .ok_or_else(|| anyhow!("{name} map missing"))?,
        )?;
        let mut out = Vec::new();
        for key in map.keys() {
            let key = key.with_context(|| format!("reading {name}"))?;
            if !self.owns(tgid(&key)) {
                continue;
            }
            match map.get(&key, 0) {
                Ok(v) => out.push((key, v)),
                Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(e).with_context(|| format!("reading {name}")),
            }
        }
        Ok(out)
    }

    /// The hash table `name`, for reading.
    fn hash<K: aya::Pod, V: aya::Pod>(&self, name: &str) -> Result<HashMap<&MapData, K, V>> {
        Ok(HashMap::try_from(
            self.ebpf
                .map(name)
                .ok_or_else(|| anyhow!("{name} map missing"))?,
        )?)
    }

    /// The rows of the hash table `name` that are this object's; rows that
    /// vanish while it is read (a wait ends) are skipped.
    pub(crate) fn hash_rows<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &str,
        tgid: impl Fn(&K) -> u32,
    ) -> Result<Vec<(K, V)>> {
        Ok(self
            .hash::<K, V>(name)?
            .iter()
            .filter_map(|r| r.ok())
            .filter(|(k, _)| self.owns(tgid(k)))
            .collect())
    }

    /// The keys of the hash table `name` that are this object's.
    pub(crate) fn hash_keys<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &str,
        tgid: impl Fn(&K) -> u32,
    ) -> Result<Vec<K>> {
        Ok(self
            .hash::<K, V>(name)?
            .keys()
            .filter_map(|r| r.ok())
            .filter(|k| self.owns(tgid(k)))
            .collect())
    }

    /// Deletes this object's rows of the hash table `name` (all of them,
    /// unless the table is shared).
    pub(crate) fn purge_own<K: aya::Pod, V: aya::Pod>(
        &mut self,
        name: &str,
        tgid: impl Fn(&K) -> u32,
    ) -> Result<()> {
        let own = self.own_pids.clone();
        purge_hash::<K, V>(&mut self.ebpf, name, |k| {
            own.as_ref().is_none_or(|o| o.contains(&tgid(k)))
        })
    }

    /// The pids being recorded.
    pub fn targets(&self) -> Vec<u32> {
        if let Some(own) = &self.own_pids {
            return own.iter().copied().collect();
        }
        let Some(map) = self.ebpf.map(names::map::TARGETS) else {
            return Vec::new();
        };
        let Ok(targets) = HashMap::<_, u32, u8>::try_from(map) else {
            return Vec::new();
        };
        targets.keys().filter_map(|k| k.ok()).collect()
    }

    /// Stops recording `pid` (the other half of [`Tracer::add_target`]).
    pub fn remove_target(&mut self, pid: u32) -> Result<()> {
        if let Some(own) = self.own_pids.as_mut() {
            own.remove(&pid);
        }
        let mut targets: HashMap<_, u32, u8> =
            HashMap::try_from(map_mut(&mut self.ebpf, names::map::TARGETS)?)?;
        // Already gone (never added, or purged) is fine.
        let _ = targets.remove(&pid);
        Ok(())
    }

    /// Runs the kernel skipped, summed over the programs whose name starts
    /// with `prefix`. A tracing program does not run while another BPF
    /// program runs on the same CPU (a TCP tracepoint in a softirq that
    /// interrupts a probe, say); the kernel counts each skipped run in the
    /// program's `recursion_misses`, read here from its fdinfo (Linux 5.12+;
    /// 0 where the kernel does not report it).
    pub fn recursion_misses(&self, prefix: &str) -> u64 {
        use std::os::fd::{AsFd, AsRawFd};
        self.ebpf
            .programs()
            .filter(|(name, _)| name.starts_with(prefix))
            .filter_map(|(_, prog)| {
                let fd = prog.fd().ok()?.as_fd().as_raw_fd();
                let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
                fdinfo_value(&info, "recursion_misses")
            })
            .fold(0u64, u64::saturating_add)
    }

    /// Run counts and run time of each probe program; non-zero only while the
    /// kernel's BPF statistics are enabled (see [`enable_bpf_stats`]).
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        self.ebpf
            .programs()
            .filter_map(|(name, prog)| {
                let info = prog.info().ok()?;
                Some(ProgramStats {
                    program: name.to_owned(),
                    run_count: info.run_count(),
                    run_time_ns: info.run_time().as_nanos() as u64,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::fdinfo_value;

    #[test]
    fn fdinfo_values_are_found_by_key() {
        let info = "pos:\t0\nflags:\t02000002\nprog_type:\t5\nrun_cnt:\t12\nrecursion_misses:\t3\n";
        assert_eq!(fdinfo_value(info, "recursion_misses"), Some(3));
        assert_eq!(fdinfo_value(info, "run_cnt"), Some(12));
        assert_eq!(fdinfo_value(info, "verified_insns"), None);
        assert_eq!(
            fdinfo_value("recursion_misses:\tx\n", "recursion_misses"),
            None
        );
    }
}
