//! PC -> function/file/line from `.gopclntab`, expanding inlined calls with
//! the inline tree, so it works on stripped binaries too; plus a cache of
//! parsed binaries keyed by (device, inode) for symbolizing many processes.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use super::pclntab::{FUNCDATA_INL_TREE, PCDATA_INL_TREE_INDEX, decode_inlined_call};
use super::{Frame, GoBinError, GoBinary};

/// Deepest inline nesting we follow (guards against cyclic corrupt trees).
const MAX_INLINE_DEPTH: usize = 64;

/// Most PCs the per-binary PC -> frames cache holds. Stacks repeat (the same
/// call sites wait on the same locks), so a few thousand entries catch nearly
/// every lookup; the bound keeps the cache at a few MB (about 250 bytes per
/// entry) whatever PCs come in.
pub(crate) const PC_CACHE_ENTRIES: usize = 16 * 1024;

/// Bounded PC -> frames cache. When full it is emptied: no per-entry
/// bookkeeping on the hit path, and a working set that fits never misses.
#[derive(Default)]
pub(crate) struct PcCache {
    map: Mutex<HashMap<u64, Arc<[Frame]>>>,
}

impl PcCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<[Frame]>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of cached PCs.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// [`symbolize_uncached`] through the binary's PC cache.
pub(crate) fn symbolize(bin: &GoBinary, pc: u64) -> Vec<Frame> {
    let hit = bin.pc_cache.lock().get(&pc).cloned();
    if let Some(frames) = hit {
        return frames.to_vec();
    }
    let frames: Arc<[Frame]> = symbolize_uncached(bin, pc).into();
    let out = frames.to_vec();
    let mut map = bin.pc_cache.lock();
    if map.len() >= PC_CACHE_ENTRIES {
        *map = HashMap::new();
    }
    map.insert(pc, frames);
    out
}

pub(crate) fn symbolize_uncached(bin: &GoBinary, pc: u64) -> Vec<Frame> {
    let Some(t) = bin.pcln.as_ref() else {
        return Vec::new();
    };
    let tab = t.bytes(&bin.data);
    let Some(idx) = t.find(tab, pc) else {
        return Vec::new();
    };
    let Some(f) = t.func(tab, idx) else {
        return Vec::new();
    };
    let Some(outer_name) = t.name(tab, &f) else {
        return Vec::new();
    };
    let file_line = |pc: u64| -> (String, u32) {
        let file = t
            .pcvalue(tab, f.pcfile, f.entry, pc)
            .and_then(|n| t.file_name(tab, &f, n))
            .unwrap_or_else(|| "?".to_string());
        let line = t
            .pcvalue(tab, f.pcln, f.entry, pc)
            .and_then(|l| u32::try_from(l).ok())
            .unwrap_or(0);
        (file, line)
    };

    let mut frames = Vec::new();
    let inl = match (
        t.funcdata(tab, &f, FUNCDATA_INL_TREE),
        t.pcdata(tab, &f, PCDATA_INL_TREE_INDEX),
        t.gofunc,
    ) {
        (Some(fd), Some(pd), Some(gofunc)) => gofunc.checked_add(u64::from(fd)).map(|b| (b, pd)),
        _ => None,
    };
    let mut cur = pc;
    if let Some((tree, pd)) = inl {
        let esize = t.layout.inlined_call_len();
        while frames.len() < MAX_INLINE_DEPTH {
            let Some(ix) = t.pcvalue(tab, pd, f.entry, cur) else {
                break;
            };
            let Ok(ix) = u64::try_from(ix) else { break };
            let Some(call) = ix
                .checked_mul(esize as u64)
                .and_then(|o| tree.checked_add(o))
                .and_then(|a| bin.elf.read(&bin.data, a, esize))
                .and_then(|b| decode_inlined_call(t.layout, b))
            else {
                break;
            };
            let (file, line) = file_line(cur);
            frames.push(Frame {
                function: t.name_at(tab, call.name_off).unwrap_or_else(|| "?".into()),
                file,
                line,
                inlined: true,
            });
            let Ok(parent) = u64::try_from(call.parent_pc) else {
                break;
            };
            if parent >= f.span {
                break;
            }
            cur = f.entry.wrapping_add(parent);
        }
    }
    let (file, line) = file_line(cur);
    frames.push(Frame {
        function: outer_name,
        file,
        line,
        inlined: false,
    });
    frames
}

/// Parsed binaries keyed by (device, inode), so each executable is parsed
/// once no matter how many processes or paths refer to it.
#[derive(Debug, Default)]
pub struct SymbolizerCache {
    map: Mutex<HashMap<(u64, u64), Arc<GoBinary>>>,
}

impl SymbolizerCache {
    pub fn new() -> SymbolizerCache {
        SymbolizerCache::default()
    }

    /// The binary at `path` (e.g. `/proc/PID/exe`), parsed on first use.
    pub fn get(&self, path: &Path) -> Result<Arc<GoBinary>, GoBinError> {
        let meta = std::fs::metadata(path).map_err(|source| GoBinError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let key = (meta.dev(), meta.ino());
        if let Some(b) = self.lock().get(&key) {
            return Ok(b.clone());
        }
        // Parse without holding the lock; a racing parse just wins or loses.
        let bin = Arc::new(GoBinary::open(path)?);
        Ok(self.lock().entry(key).or_insert(bin).clone())
    }

    /// Number of cached binaries.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(u64, u64), Arc<GoBinary>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}
