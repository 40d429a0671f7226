//! `runtime.firstmoduledata`: needed where the pclntab header is not enough.
//! Go 1.26 dropped `pcHeader.textStart`, so the text start (base of every
//! function entry offset) comes from `moduledata.text`; and `moduledata.gofunc`
//! is the base of FUNCDATA offsets (inline trees) in stripped binaries.

use super::elf::ElfInfo;
use super::pclntab::{FUNCDATA_INL_TREE, PCDATA_INL_TREE_INDEX, Pclntab, decode_inlined_call};
use super::reader::slice;

/// `moduledata.text` offset: after pcHeader, six slices, findfunctab, minpc, maxpc.
const TEXT_OFFSET: u64 = 8 + 6 * 24 + 3 * 8;
/// Known `moduledata.gofunc` offsets: 1.20–1.25, 1.27, 1.18–1.19.
const GOFUNC_OFFSETS: [u64; 3] = [320, 344, 304];

/// Address of the moduledata whose `pcHeader` points at this pclntab.
pub(crate) fn find(data: &[u8], elf: &ElfInfo, tab: &Pclntab) -> Option<u64> {
    let check = |md: u64| {
        elf.read_ptr(data, md) == Some(tab.vaddr)
            && elf.read_ptr(data, md.wrapping_add(8))
                == tab.vaddr.checked_add(tab.funcname_offset())
    };
    if let Some(s) = elf.markers.get("runtime.firstmoduledata")
        && check(s.addr)
    {
        return Some(s.addr);
    }
    let mut relocated: Vec<u64> = elf
        .relative
        .iter()
        .filter(|(_, v)| **v == tab.vaddr)
        .map(|(k, _)| *k)
        .collect();
    relocated.sort_unstable();
    if let Some(md) = relocated.into_iter().find(|&md| check(md)) {
        return Some(md);
    }
    let needle = tab.vaddr.to_le_bytes();
    for seg in elf.segments.iter().filter(|s| s.writable) {
        let (Ok(off), Ok(len)) = (usize::try_from(seg.offset), usize::try_from(seg.filesz)) else {
            continue;
        };
        let Some(bytes) = slice(data, off, len) else {
            continue;
        };
        // Segment file offsets and vaddrs agree modulo the page size, so
        // 8-byte alignment in the file is alignment in memory.
        let mut i = (8 - (seg.vaddr % 8) as usize) % 8;
        while i + 16 <= bytes.len() {
            if bytes[i..i + 8] == needle {
                let md = seg.vaddr.wrapping_add(i as u64);
                if check(md) {
                    return Some(md);
                }
            }
            i += 8;
        }
    }
    None
}

/// `moduledata.text`, if it points into executable code.
pub(crate) fn text(data: &[u8], elf: &ElfInfo, md: u64) -> Option<u64> {
    elf.read_ptr(data, md.wrapping_add(TEXT_OFFSET))
        .filter(|&t| elf.is_exec(t))
}

/// `moduledata.gofunc`: tries the known offsets, then nearby words, keeping
/// the first candidate under which inline-tree entries decode sensibly.
pub(crate) fn gofunc(data: &[u8], elf: &ElfInfo, tab: &Pclntab, md: u64) -> Option<u64> {
    let mut offsets: Vec<u64> = GOFUNC_OFFSETS.to_vec();
    offsets.extend(
        (288..=480)
            .step_by(8)
            .filter(|o| !GOFUNC_OFFSETS.contains(o)),
    );
    offsets
        .into_iter()
        .filter_map(|o| elf.read_ptr(data, md.wrapping_add(o)))
        .find(|&cand| cand != 0 && validate_gofunc(data, elf, tab, cand))
}

/// Whether inline trees read relative to `gofunc` look like real ones: for
/// up to 16 functions with an inline tree, every entry referenced by the
/// function's PCDATA must decode with a valid name and an in-function parent PC.
pub(crate) fn validate_gofunc(data: &[u8], elf: &ElfInfo, tab: &Pclntab, gofunc: u64) -> bool {
    let t = tab.bytes(data);
    let esize = tab.layout.inlined_call_len();
    let mut checked = 0;
    for i in 0..tab.nfunc {
        if checked >= 16 {
            break;
        }
        let Some(f) = tab.func(t, i) else { continue };
        let (Some(fd), Some(pd)) = (
            tab.funcdata(t, &f, FUNCDATA_INL_TREE),
            tab.pcdata(t, &f, PCDATA_INL_TREE_INDEX),
        ) else {
            continue;
        };
        let Some((_, max_ix)) = tab.pcvalue_extent(t, pd, f.entry) else {
            continue;
        };
        if max_ix < 0 {
            continue;
        }
        let n = (max_ix as usize + 1).min(64);
        let Some(base) = gofunc.checked_add(u64::from(fd)) else {
            return false;
        };
        let Some(bytes) = elf.read(data, base, n * esize) else {
            return false;
        };
        for k in 0..n {
            let Some(call) = decode_inlined_call(tab.layout, &bytes[k * esize..]) else {
                return false;
            };
            let parent_ok = call.parent_pc >= 0 && (call.parent_pc as u64) < f.span;
            if !parent_ok || !tab.is_name_start(t, call.name_off) || call.func_id > 64 {
                return false;
            }
        }
        checked += 1;
    }
    checked > 0
}
