//! Struct field offsets the eBPF side reads from a running Go process:
//! `runtime.g.goid`, the map header (classic `hmap` or Swiss `maps.Map`) and
//! `sync.Map`. DWARF is authoritative when present; stripped binaries fall
//! back to a table keyed by Go version, which the tests check against DWARF.

use std::borrow::Cow;

use gimli::{EndianSlice, LittleEndian};
use object::{Object, ObjectSection};
use serde::Serialize;

use super::{GoBinError, GoBinary, GoVersion};

/// Newest Go minor version the built-in table covers (checked against DWARF).
pub const TABLE_MAX: GoVersion = GoVersion::new(1, 27, u32::MAX);
/// Oldest Go version the built-in table covers (pclntab 1.18 layout).
pub const TABLE_MIN: GoVersion = GoVersion::new(1, 18, 0);

/// Largest DWARF section we decompress.
const MAX_DWARF_SECTION: u64 = 1 << 30;

/// Name of the Swiss-table map header type.
pub const SWISS_MAP_TYPE: &str = "internal/runtime/maps.Map";

/// Where an offset came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OffsetSource {
    Dwarf,
    Table,
}

/// A field offset in bytes from the start of its struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Offset {
    pub value: u64,
    pub source: OffsetSource,
}

/// Which map implementation the runtime uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MapImpl {
    /// `runtime.hmap` buckets (Go ≤ 1.23, or `GOEXPERIMENT=noswissmap`).
    Classic,
    /// `internal/runtime/maps.Map` Swiss tables (Go ≥ 1.24).
    Swiss,
}

/// Offsets of the fields tracer reads; `None` when unknown (see `missing`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StructOffsets {
    /// `runtime.g.goid`.
    pub g_goid: Option<Offset>,
    /// `runtime.g.atomicstatus` (uint32) and `.waitreason` (uint8): whether
    /// a goroutine is parked, and on what (stuck Mutex waits are checked
    /// against them, since no probe sees those waits end).
    pub g_atomicstatus: Option<Offset>,
    pub g_waitreason: Option<Offset>,
    /// `runtime.hmap.count` / `.flags` / `.B` / `.buckets` (classic maps).
    pub hmap_count: Option<Offset>,
    pub hmap_flags: Option<Offset>,
    pub hmap_b: Option<Offset>,
    pub hmap_buckets: Option<Offset>,
    /// Type name of the Swiss map header, when the binary uses Swiss maps.
    pub swiss_map_type: Option<String>,
    /// `internal/runtime/maps.Map.used` / `.dirPtr` / `.dirLen` / `.writing`.
    pub swiss_used: Option<Offset>,
    pub swiss_dir_ptr: Option<Offset>,
    pub swiss_dir_len: Option<Offset>,
    pub swiss_writing: Option<Offset>,
    /// `sync.Map.mu` / `.read` / `.dirty` / `.misses` (Go ≤ 1.23 layout).
    pub sync_map_mu: Option<Offset>,
    pub sync_map_read: Option<Offset>,
    pub sync_map_dirty: Option<Offset>,
    pub sync_map_misses: Option<Offset>,
    /// `runtime.schedt.totalMutexWaitTime` (atomic.Int64): the sampled
    /// sync.Mutex/RWMutex wait total behind `/sync/mutex/wait/total:seconds`.
    pub sched_mutex_wait: Option<Offset>,
    /// `runtime.schedt.totalRuntimeLockWaitTime` (Go 1.22+): the runtime's
    /// own lock waits, which that metric adds.
    pub sched_runtime_lock_wait: Option<Offset>,
    /// `runtime.m.alllink` and `.mLockProfile`, and
    /// `runtime.mLockProfile.waitTime` (Go 1.22+): runtime lock waits each
    /// thread has not yet added to the total.
    pub m_alllink: Option<Offset>,
    pub m_lock_profile: Option<Offset>,
    pub mlockprofile_wait: Option<Offset>,
    /// (field, reason) for each offset that is `None`.
    pub missing: Vec<(String, String)>,
}

/// All fields as (name, value) pairs, for reports and comparisons.
impl StructOffsets {
    pub fn fields(&self) -> Vec<(&'static str, Option<Offset>)> {
        vec![
            ("runtime.g.goid", self.g_goid),
            ("runtime.g.atomicstatus", self.g_atomicstatus),
            ("runtime.g.waitreason", self.g_waitreason),
            ("runtime.hmap.count", self.hmap_count),
            ("runtime.hmap.flags", self.hmap_flags),
            ("runtime.hmap.B", self.hmap_b),
            ("runtime.hmap.buckets", self.hmap_buckets),
            ("internal/runtime/maps.Map.used", self.swiss_used),
            ("internal/runtime/maps.Map.dirPtr", self.swiss_dir_ptr),
            ("internal/runtime/maps.Map.dirLen", self.swiss_dir_len),
            ("internal/runtime/maps.Map.writing", self.swiss_writing),
            ("sync.Map.mu", self.sync_map_mu),
            ("sync.Map.read", self.sync_map_read),
            ("sync.Map.dirty", self.sync_map_dirty),
            ("sync.Map.misses", self.sync_map_misses),
            ("runtime.schedt.totalMutexWaitTime", self.sched_mutex_wait),
            (
                "runtime.schedt.totalRuntimeLockWaitTime",
                self.sched_runtime_lock_wait,
            ),
            ("runtime.m.alllink", self.m_alllink),
            ("runtime.m.mLockProfile", self.m_lock_profile),
            ("runtime.mLockProfile.waitTime", self.mlockprofile_wait),
        ]
    }

    fn slot(&mut self, field: &str) -> Option<&mut Option<Offset>> {
        Some(match field {
            "runtime.g.goid" => &mut self.g_goid,
            "runtime.g.atomicstatus" => &mut self.g_atomicstatus,
            "runtime.g.waitreason" => &mut self.g_waitreason,
            "runtime.hmap.count" => &mut self.hmap_count,
            "runtime.hmap.flags" => &mut self.hmap_flags,
            "runtime.hmap.B" => &mut self.hmap_b,
            "runtime.hmap.buckets" => &mut self.hmap_buckets,
            "internal/runtime/maps.Map.used" => &mut self.swiss_used,
            "internal/runtime/maps.Map.dirPtr" => &mut self.swiss_dir_ptr,
            "internal/runtime/maps.Map.dirLen" => &mut self.swiss_dir_len,
            "internal/runtime/maps.Map.writing" => &mut self.swiss_writing,
            "sync.Map.mu" => &mut self.sync_map_mu,
            "sync.Map.read" => &mut self.sync_map_read,
            "sync.Map.dirty" => &mut self.sync_map_dirty,
            "sync.Map.misses" => &mut self.sync_map_misses,
            "runtime.schedt.totalMutexWaitTime" => &mut self.sched_mutex_wait,
            "runtime.schedt.totalRuntimeLockWaitTime" => &mut self.sched_runtime_lock_wait,
            "runtime.m.alllink" => &mut self.m_alllink,
            "runtime.m.mLockProfile" => &mut self.m_lock_profile,
            "runtime.mLockProfile.waitTime" => &mut self.mlockprofile_wait,
            _ => return None,
        })
    }
}

/// Map implementation implied by version and GOEXPERIMENT.
pub fn map_impl(v: GoVersion, experiments: &[String]) -> MapImpl {
    let has = |e: &str| experiments.iter().any(|x| x == e);
    if v.at_least(1, 24) && !has("noswissmap") || !v.at_least(1, 24) && has("swissmap") {
        MapImpl::Swiss
    } else {
        MapImpl::Classic
    }
}

/// Whether `sync.Map` is the classic mu/read/dirty/misses struct.
fn classic_sync_map(v: GoVersion, experiments: &[String]) -> bool {
    !v.at_least(1, 24) || experiments.iter().any(|x| x == "nosynchashtriemap")
}

/// The built-in table. Sources: DWARF of binaries built by Go 1.22, 1.25 and
/// 1.27 here (checked by tests/tests/gobin.rs), and the Go sources for the
/// other versions (goid 152 except 160 in 1.23–1.24; hmap unchanged since 1.0;
/// sync.Map.read became an 8-byte atomic.Pointer in 1.20).
pub fn table_offsets(v: GoVersion, experiments: &[String]) -> StructOffsets {
    let mut o = StructOffsets::default();
    let t = |value| {
        Some(Offset {
            value,
            source: OffsetSource::Table,
        })
    };
    if v < TABLE_MIN || v > TABLE_MAX {
        let why = if v < TABLE_MIN {
            format!(
                "Go {v} is older than the built-in offset table (1.18–1.27) and there is no DWARF"
            )
        } else {
            format!(
                "Go {v} is newer than the built-in offset table (1.18–1.27) and there is no DWARF"
            )
        };
        for (f, _) in o.fields() {
            o.missing.push((f.to_string(), why.clone()));
        }
        return o;
    }
    // Go 1.23 and 1.24 have 8 more bytes before these fields (checked
    // against DWARF for every version by the gobin tests).
    let g_shift = if v.at_least(1, 23) && !v.at_least(1, 25) {
        8
    } else {
        0
    };
    o.g_atomicstatus = t(144 + g_shift);
    o.g_goid = t(152 + g_shift);
    o.g_waitreason = t(176 + g_shift);
    match map_impl(v, experiments) {
        MapImpl::Classic => {
            o.hmap_count = t(0);
            o.hmap_flags = t(8);
            o.hmap_b = t(9);
            o.hmap_buckets = t(16);
        }
        MapImpl::Swiss if v.at_least(1, 24) => {
            o.swiss_map_type = Some(SWISS_MAP_TYPE.to_string());
            o.swiss_used = t(0);
            o.swiss_dir_ptr = t(16);
            o.swiss_dir_len = t(24);
            o.swiss_writing = t(34);
        }
        MapImpl::Swiss => {
            o.swiss_map_type = Some(SWISS_MAP_TYPE.to_string());
        }
    }
    if classic_sync_map(v, experiments) {
        let old_read = !v.at_least(1, 20); // atomic.Value (16 bytes) before 1.20
        o.sync_map_mu = t(0);
        o.sync_map_read = t(8);
        o.sync_map_dirty = t(if old_read { 24 } else { 16 });
        o.sync_map_misses = t(if old_read { 32 } else { 24 });
    }
    lock_totals_table(&mut o, v);
    fill_missing(&mut o, v, experiments, "not in the built-in table");
    o
}

/// The runtime's lock-wait totals and the thread list, as the DWARF of Go
/// 1.21–1.27 gives them (checked for every version by the gobin tests).
/// Not known for older Go.
fn lock_totals_table(o: &mut StructOffsets, v: GoVersion) {
    let t = |value| {
        Some(Offset {
            value,
            source: OffsetSource::Table,
        })
    };
    let minor = if v.major == 1 { v.minor } else { return };
    let (sched_mutex, sched_runtime, alllink, lock_profile) = match minor {
        21 => (1624, None, 336, None),
        22 | 23 => (1624, Some(6816), 328, Some(624)),
        24 => (1624, Some(6816), 352, Some(648)),
        25 => (1648, Some(6840), 344, Some(648)),
        26 | 27 => (1664, Some(6856), 352, Some(680)),
        _ => return,
    };
    o.sched_mutex_wait = t(sched_mutex);
    o.sched_runtime_lock_wait = sched_runtime.and_then(t);
    o.m_alllink = t(alllink);
    o.m_lock_profile = lock_profile.and_then(t);
    o.mlockprofile_wait = lock_profile.and(t(0));
}

/// Explains every `None` field.
fn fill_missing(o: &mut StructOffsets, v: GoVersion, experiments: &[String], default: &str) {
    let imp = map_impl(v, experiments);
    let classic_sync = classic_sync_map(v, experiments);
    let names: Vec<_> = o
        .fields()
        .into_iter()
        .filter(|(_, x)| x.is_none())
        .map(|(f, _)| f)
        .collect();
    for f in names {
        if o.missing.iter().any(|(m, _)| m == f) {
            continue;
        }
        let reason = if f.starts_with("runtime.hmap") && imp == MapImpl::Swiss {
            format!("Go {v} uses Swiss-table maps; classic hmap feature off")
        } else if f.starts_with("internal/runtime/maps") && imp == MapImpl::Classic {
            format!("Go {v} uses classic hmap maps; Swiss-map feature off")
        } else if f.starts_with("sync.Map") && !classic_sync {
            format!(
                "Go {v} backs sync.Map with internal/sync.HashTrieMap; sync.Map field probes off"
            )
        } else if (f.contains("RuntimeLockWait") || f.contains("mLockProfile"))
            && !v.at_least(1, 22)
        {
            format!("Go {v} has no runtime lock profile (it came in Go 1.22)")
        } else if f.starts_with("internal/runtime/maps") && !v.at_least(1, 24) {
            format!(
                "Swiss maps under GOEXPERIMENT=swissmap in Go {v} have no table entry; needs DWARF"
            )
        } else {
            default.to_string()
        };
        o.missing.push((f.to_string(), reason));
    }
}

/// DWARF first, then the table for whatever DWARF lacks.
pub(crate) fn resolve(bin: &GoBinary) -> StructOffsets {
    let v = bin.go_version();
    let exps = &bin.build_info().experiments;
    let table = if bin.version_exact() {
        table_offsets(v, exps)
    } else {
        // The table is keyed by release (g.goid moved in 1.23 and back in
        // 1.25): a lower bound cannot pick a row.
        let mut o = StructOffsets::default();
        let why = format!(
            "the exact Go version is unknown (only go{}.{}+ from the pclntab) and there is no DWARF",
            v.major, v.minor
        );
        for (f, _) in o.fields() {
            o.missing.push((f.to_string(), why.clone()));
        }
        o
    };
    let dwarf = match from_dwarf(bin.data()) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!("ignoring DWARF: {e}");
            None
        }
    };
    let Some(mut o) = dwarf else { return table };
    o.missing.clear();
    for (f, tv) in table.fields() {
        if let Some(slot) = o.slot(f)
            && slot.is_none()
        {
            *slot = tv;
        }
    }
    if o.swiss_map_type.is_none() {
        o.swiss_map_type = table.swiss_map_type.clone();
    }
    for (f, reason) in &table.missing {
        let still_none = o.fields().iter().any(|(n, x)| n == f && x.is_none());
        if still_none {
            o.missing.push((f.clone(), reason.clone()));
        }
    }
    fill_missing(
        &mut o,
        v,
        exps,
        "not in DWARF and not in the built-in table",
    );
    o
}

/// Offsets from `.debug_info` (plain or compressed). `Ok(None)` when the
/// binary has no DWARF.
pub(crate) fn from_dwarf(data: &[u8]) -> Result<Option<StructOffsets>, GoBinError> {
    let file = object::File::parse(data).map_err(|e| GoBinError::NotElf(e.to_string()))?;
    if file.section_by_name(".debug_info").is_none() {
        return Ok(None);
    }
    let load = |id: gimli::SectionId| -> Result<Cow<'_, [u8]>, GoBinError> {
        let Some(s) = file.section_by_name(id.name()) else {
            return Ok(Cow::Borrowed(&[][..]));
        };
        let err = |e: object::Error| GoBinError::Dwarf(format!("{}: {e}", id.name()));
        let cd = s.compressed_data().map_err(err)?;
        // The uncompressed size is a header field: cap it before allocating.
        let limit = (data.len() as u64)
            .saturating_mul(64)
            .min(MAX_DWARF_SECTION);
        if cd.uncompressed_size > limit {
            return Err(GoBinError::Dwarf(format!(
                "{}: claims {} uncompressed bytes",
                id.name(),
                cd.uncompressed_size
            )));
        }
        cd.decompress().map_err(err)
    };
    let sections = gimli::DwarfSections::load(load)?;
    let dwarf = sections.borrow(|s| EndianSlice::new(s, LittleEndian));
    let dw = |e: gimli::Error| GoBinError::Dwarf(e.to_string());

    const WANT: [(&str, &[(&str, &str)]); 7] = [
        (
            "runtime.g",
            &[
                ("goid", "runtime.g.goid"),
                ("atomicstatus", "runtime.g.atomicstatus"),
                ("waitreason", "runtime.g.waitreason"),
            ],
        ),
        (
            "runtime.hmap",
            &[
                ("count", "runtime.hmap.count"),
                ("flags", "runtime.hmap.flags"),
                ("B", "runtime.hmap.B"),
                ("buckets", "runtime.hmap.buckets"),
            ],
        ),
        (
            SWISS_MAP_TYPE,
            &[
                ("used", "internal/runtime/maps.Map.used"),
                ("dirPtr", "internal/runtime/maps.Map.dirPtr"),
                ("dirLen", "internal/runtime/maps.Map.dirLen"),
                ("writing", "internal/runtime/maps.Map.writing"),
            ],
        ),
        (
            "sync.Map",
            &[
                ("mu", "sync.Map.mu"),
                ("read", "sync.Map.read"),
                ("dirty", "sync.Map.dirty"),
                ("misses", "sync.Map.misses"),
            ],
        ),
        (
            "runtime.schedt",
            &[
                ("totalMutexWaitTime", "runtime.schedt.totalMutexWaitTime"),
                (
                    "totalRuntimeLockWaitTime",
                    "runtime.schedt.totalRuntimeLockWaitTime",
                ),
            ],
        ),
        (
            "runtime.m",
            &[
                ("alllink", "runtime.m.alllink"),
                ("mLockProfile", "runtime.m.mLockProfile"),
            ],
        ),
        (
            "runtime.mLockProfile",
            &[("waitTime", "runtime.mLockProfile.waitTime")],
        ),
    ];
    let mut out = StructOffsets::default();
    let mut seen = [false; WANT.len()];
    let mut units = dwarf.units();
    while let Some(header) = units.next().map_err(dw)? {
        let unit = dwarf.unit(header).map_err(dw)?;
        let mut entries = unit.entries();
        // (index into WANT, depth of the struct DIE) while inside a wanted struct.
        let mut inside: Option<(usize, isize)> = None;
        while let Some(e) = entries.next_dfs().map_err(dw)? {
            let depth = e.depth();
            if let Some((_, d)) = inside
                && depth <= d
            {
                inside = None;
            }
            let name = || -> Option<String> {
                let v = e.attr_value(gimli::DW_AT_name)?;
                let s = dwarf.attr_string(&unit, v).ok()?;
                Some(String::from_utf8_lossy(s.slice()).into_owned())
            };
            if e.tag() == gimli::DW_TAG_structure_type && inside.is_none() {
                if let Some(n) = name()
                    && let Some(i) = WANT.iter().position(|(t, _)| *t == n)
                    && !seen[i]
                {
                    seen[i] = true;
                    if i == 2 {
                        out.swiss_map_type = Some(n);
                    }
                    inside = Some((i, depth));
                }
            } else if let Some((i, d)) = inside
                && depth == d + 1
                && e.tag() == gimli::DW_TAG_member
                && let Some(n) = name()
                && let Some((_, key)) = WANT[i].1.iter().find(|(m, _)| *m == n)
                && let Some(loc) = e
                    .attr(gimli::DW_AT_data_member_location)
                    .and_then(|a| a.udata_value())
                && let Some(slot) = out.slot(key)
            {
                *slot = Some(Offset {
                    value: loc,
                    source: OffsetSource::Dwarf,
                });
            }
        }
        if seen.iter().all(|s| *s) {
            break;
        }
    }
    Ok(Some(out))
}

/// The `runtime.waitReason` values `waitReasonSyncMutexLock`,
/// `waitReasonSyncRWMutexRLock` and `waitReasonSyncRWMutexLock` (consecutive
/// in every version), as numbered in `runtime/runtime2.go` of Go 1.21–1.27:
/// Go 1.25 inserted a reason before them. `None` for other versions.
pub fn lock_wait_reasons(v: GoVersion) -> Option<std::ops::RangeInclusive<u8>> {
    if !v.at_least(1, 21) || v.at_least(1, 28) {
        return None;
    }
    Some(if v.at_least(1, 25) { 22..=24 } else { 21..=23 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> GoVersion {
        GoVersion::parse(s).unwrap()
    }

    #[test]
    fn table_rules() {
        let o = table_offsets(v("1.22.10"), &[]);
        assert_eq!(o.g_goid.map(|x| x.value), Some(152));
        assert_eq!(o.hmap_buckets.map(|x| x.value), Some(16));
        assert_eq!(o.swiss_used, None);
        assert_eq!(o.sync_map_misses.map(|x| x.value), Some(24));
        assert!(
            o.missing
                .iter()
                .any(|(f, r)| f.contains("maps.Map") && r.contains("classic"))
        );
        assert_eq!(o.g_atomicstatus.map(|x| x.value), Some(144));
        assert_eq!(o.g_waitreason.map(|x| x.value), Some(176));
        let o = table_offsets(v("1.23.9"), &[]);
        assert_eq!(o.g_goid.map(|x| x.value), Some(160));
        assert_eq!(o.g_atomicstatus.map(|x| x.value), Some(152));
        assert_eq!(o.g_waitreason.map(|x| x.value), Some(184));
        let o = table_offsets(v("1.25.5"), &[]);
        assert_eq!(o.g_goid.map(|x| x.value), Some(152));
        assert_eq!(o.swiss_writing.map(|x| x.value), Some(34));
        assert_eq!(o.swiss_map_type.as_deref(), Some(SWISS_MAP_TYPE));
        assert_eq!(o.hmap_count, None);
        assert_eq!(o.sync_map_mu, None);
        let o = table_offsets(v("1.24.1"), &["noswissmap".into()]);
        assert_eq!(o.hmap_flags.map(|x| x.value), Some(8));
        assert_eq!(o.swiss_used, None);
        let o = table_offsets(v("1.19.1"), &[]);
        assert_eq!(o.sync_map_dirty.map(|x| x.value), Some(24));
    }

    #[test]
    fn newer_than_table_is_explained() {
        let o = table_offsets(v("1.28.0"), &[]);
        assert!(o.fields().iter().all(|(_, x)| x.is_none()));
        assert_eq!(o.missing.len(), o.fields().len());
        assert!(
            o.missing
                .iter()
                .all(|(_, r)| r.contains("newer than the built-in"))
        );
    }

    #[test]
    fn every_none_has_a_reason() {
        for s in [
            "1.18.0", "1.20.3", "1.22.1", "1.23.4", "1.24.0", "1.26.1", "1.27.3",
        ] {
            let o = table_offsets(v(s), &[]);
            for (f, x) in o.fields() {
                assert_eq!(
                    x.is_none(),
                    o.missing.iter().any(|(m, _)| m == f),
                    "{s} {f}"
                );
            }
        }
    }

    #[test]
    fn lock_wait_reasons_follow_runtime2_go() {
        assert_eq!(lock_wait_reasons(v("go1.21.13")), Some(21..=23));
        assert_eq!(lock_wait_reasons(v("go1.24.11")), Some(21..=23));
        assert_eq!(lock_wait_reasons(v("go1.25.0")), Some(22..=24));
        assert_eq!(lock_wait_reasons(v("go1.27.3")), Some(22..=24));
        assert_eq!(lock_wait_reasons(v("go1.20.1")), None);
        assert_eq!(lock_wait_reasons(v("go1.28.0")), None);
    }
}
