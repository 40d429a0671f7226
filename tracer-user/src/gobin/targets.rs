//! The runtime functions tracer probes, with the Go versions and map
//! implementations in which each exists, and their status in a given binary.

use serde::Serialize;

use super::{GoBinary, MapImpl};

/// What a probe target is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// `Mutex.lockSlow` / `unlockSlow`: only contended locks get here.
    MutexSlowPath,
    /// RWMutex waits and the non-inlined RWMutex methods.
    RwMutex,
    /// `runtime.semacquire1`, where every sync wait ends up.
    Semaphore,
    MapAccess,
    MapAssign,
    MapDelete,
    MapIter,
    MapClear,
    MapGrowth,
    /// Where "concurrent map writes" and friends stop the process.
    Fatal,
    SyncMap,
}

/// How a target name is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Match {
    Exact,
    /// Name prefix: fast-path variants and generic instantiations.
    Prefix,
}

/// One probe target and the rules for when it exists.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeTarget {
    pub name: &'static str,
    pub category: Category,
    pub matching: Match,
    /// First and last (major, minor) Go version with this function.
    pub min: Option<(u32, u32)>,
    pub max: Option<(u32, u32)>,
    /// Only with this map implementation.
    pub maps: Option<MapImpl>,
    /// Only with the classic (`true`) or HashTrieMap-backed (`false`) sync.Map.
    pub classic_sync_map: Option<bool>,
    /// May legitimately be absent (inlined, or unused by the program).
    pub optional: bool,
}

const fn t(name: &'static str, category: Category) -> ProbeTarget {
    ProbeTarget {
        name,
        category,
        matching: Match::Exact,
        min: None,
        max: None,
        maps: None,
        classic_sync_map: None,
        optional: false,
    }
}

impl ProbeTarget {
    const fn prefix(mut self) -> Self {
        self.matching = Match::Prefix;
        self
    }
    const fn min(mut self, minor: u32) -> Self {
        self.min = Some((1, minor));
        self
    }
    const fn max(mut self, minor: u32) -> Self {
        self.max = Some((1, minor));
        self
    }
    const fn classic(mut self) -> Self {
        self.maps = Some(MapImpl::Classic);
        self
    }
    const fn swiss(mut self) -> Self {
        self.maps = Some(MapImpl::Swiss);
        self
    }
    const fn sync_classic(mut self, v: bool) -> Self {
        self.classic_sync_map = Some(v);
        self
    }
    const fn optional(mut self) -> Self {
        self.optional = true;
        self
    }

    /// Whether this target should exist in `bin`.
    pub fn applies_to(&self, bin: &GoBinary) -> bool {
        let v = bin.go_version();
        let vm = (v.major, v.minor);
        let exps = &bin.build_info().experiments;
        let classic_sync = !v.at_least(1, 24) || exps.iter().any(|e| e == "nosynchashtriemap");
        self.min.is_none_or(|m| vm >= m)
            && self.max.is_none_or(|m| vm <= m)
            && self.maps.is_none_or(|m| bin.map_impl() == m)
            && self.classic_sync_map.is_none_or(|c| c == classic_sync)
    }
}

/// Every target tracer knows, in all versions.
pub fn target_specs() -> Vec<ProbeTarget> {
    use Category::*;
    vec![
        t("sync.(*Mutex).lockSlow", MutexSlowPath).max(23),
        t("sync.(*Mutex).unlockSlow", MutexSlowPath).max(23),
        t("internal/sync.(*Mutex).lockSlow", MutexSlowPath).min(24),
        t("internal/sync.(*Mutex).unlockSlow", MutexSlowPath).min(24),
        t("sync.runtime_SemacquireRWMutexR", RwMutex).min(20),
        t("sync.runtime_SemacquireRWMutex", RwMutex).min(20),
        t("sync.(*RWMutex).Lock", RwMutex),
        t("sync.(*RWMutex).RLock", RwMutex).optional(),
        t("sync.(*RWMutex).rUnlockSlow", RwMutex),
        t("runtime.semacquire1", Semaphore),
        t("runtime.mapaccess1", MapAccess).prefix(),
        t("runtime.mapaccess2", MapAccess).prefix(),
        t("runtime.mapaccessK", MapAccess).classic().optional(),
        t("runtime.mapassign", MapAssign).prefix(),
        t("runtime.mapdelete", MapDelete).prefix(),
        t("runtime.mapiterinit", MapIter).classic(),
        t("runtime.mapiternext", MapIter).classic(),
        t("runtime.mapIterStart", MapIter).swiss(),
        t("runtime.mapIterNext", MapIter).swiss().optional(),
        t("runtime.mapclear", MapClear).optional(),
        t("runtime.hashGrow", MapGrowth).classic(),
        t("runtime.growWork", MapGrowth).classic(),
        t("internal/runtime/maps.(*Map).growToSmall", MapGrowth).swiss(),
        t("internal/runtime/maps.(*Map).growToTable", MapGrowth).swiss(),
        t("internal/runtime/maps.(*table).grow", MapGrowth).swiss(),
        t("internal/runtime/maps.(*table).split", MapGrowth).swiss(),
        t("internal/runtime/maps.(*table).rehash", MapGrowth).swiss(),
        t("runtime.fatal", Fatal).min(19),
        t("runtime.throw", Fatal),
        t("internal/runtime/maps.fatal", Fatal).swiss().min(24),
        t("sync.(*Map).Load", SyncMap).sync_classic(true),
        t("sync.(*Map).LoadOrStore", SyncMap).sync_classic(true),
        t("sync.(*Map).Swap", SyncMap).sync_classic(true).min(20),
        t("sync.(*Map).Range", SyncMap).sync_classic(true),
        t("sync.(*Map).missLocked", SyncMap).sync_classic(true),
        t("sync.(*Map).dirtyLocked", SyncMap).sync_classic(true),
        t("internal/sync.(*HashTrieMap[", SyncMap)
            .prefix()
            .sync_classic(false),
    ]
}

/// Status of one target in one binary (one row per matched function for
/// prefix targets).
#[derive(Debug, Clone, Serialize)]
pub struct TargetStatus {
    /// Matched function name (the pattern when missing).
    pub name: String,
    pub pattern: &'static str,
    pub category: Category,
    pub matching: Match,
    pub optional: bool,
    pub found: bool,
    pub entry: Option<u64>,
    pub size: Option<u64>,
    pub file_offset: Option<u64>,
    /// Number of RET sites (exit probes).
    pub ret_count: Option<usize>,
    /// Why RET sites could not be found.
    pub error: Option<String>,
}

/// Status of every target that applies to `bin`'s Go version and runtime.
pub fn probe_targets(bin: &GoBinary) -> Vec<TargetStatus> {
    let mut out = Vec::new();
    for spec in target_specs().into_iter().filter(|s| s.applies_to(bin)) {
        let funcs = match spec.matching {
            Match::Exact => bin.function(spec.name).into_iter().collect(),
            Match::Prefix => bin.functions_with_prefix(spec.name),
        };
        if funcs.is_empty() {
            out.push(TargetStatus {
                name: spec.name.to_string(),
                pattern: spec.name,
                category: spec.category,
                matching: spec.matching,
                optional: spec.optional,
                found: false,
                entry: None,
                size: None,
                file_offset: None,
                ret_count: None,
                error: None,
            });
        }
        for f in funcs {
            let rets = bin.return_offsets(&f);
            out.push(TargetStatus {
                name: f.name.clone(),
                pattern: spec.name,
                category: spec.category,
                matching: spec.matching,
                optional: spec.optional,
                found: true,
                entry: Some(f.entry),
                size: Some(f.size),
                file_offset: Some(f.file_offset),
                ret_count: rets.as_ref().ok().map(Vec::len),
                error: rets.err().map(|e| e.to_string()),
            });
        }
    }
    out
}
