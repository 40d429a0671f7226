//! `.gopclntab`, Go's own function table: names, entry PCs, and the PC-value
//! tables behind file:line, stack-pointer deltas and the inline tree. It
//! survives `-ldflags="-s -w"`, so it is the source of truth for stripped
//! binaries. Layouts of Go 1.18–1.27 (magic 0xfffffff0 and 0xfffffff1).
//!
//! Over 600 lines with its unit tests (the code is about 470).

use super::GoBinError;
use super::elf::ElfInfo;
use super::reader::{cstr, i32_le, slice, u8_at, u32_le, u64_le, uvarint};

const MAGIC_118: u32 = 0xffff_fff0;
const MAGIC_120: u32 = 0xffff_fff1;
const HEADER_LEN: usize = 72;
/// Longest function or file name we read.
const MAX_NAME: usize = 64 * 1024;

/// `abi.FuncFlagAsm`: the function is written in assembly (ABI0).
pub(crate) const FUNC_FLAG_ASM: u8 = 1 << 2;

/// `PCDATA_InlTreeIndex` and `FUNCDATA_InlTree` from `internal/abi`.
pub(crate) const PCDATA_INL_TREE_INDEX: u32 = 2;
pub(crate) const FUNCDATA_INL_TREE: u32 = 3;

/// Record layouts: 1.18–1.19 (no `startLine`, 20-byte inlinedCall) and 1.20+.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    Go118,
    Go120,
}

impl Layout {
    fn func_fixed_len(self) -> usize {
        match self {
            Layout::Go118 => 40,
            Layout::Go120 => 44,
        }
    }

    pub fn inlined_call_len(self) -> usize {
        match self {
            Layout::Go118 => 20,
            Layout::Go120 => 16,
        }
    }
}

/// Byte range relative to the start of the table.
#[derive(Debug, Clone, Copy)]
struct Range {
    start: usize,
    end: usize,
}

/// Parsed header plus where the table lives; methods take the table bytes.
#[derive(Debug, Clone)]
pub(crate) struct Pclntab {
    pub file_off: usize,
    pub len: usize,
    pub vaddr: u64,
    pub layout: Layout,
    pub min_lc: u64,
    pub nfunc: usize,
    /// Header `textStart` (0 from Go 1.26 on).
    pub header_text_start: u64,
    /// Start of the module's text, which `functab` entry offsets are relative to.
    pub text_start: u64,
    /// Where `text_start` came from, for `inspect`.
    pub text_start_source: &'static str,
    /// `moduledata.gofunc`: base of FUNCDATA offsets (inline trees).
    pub gofunc: Option<u64>,
    funcname: Range,
    cu: Range,
    filetab: Range,
    pctab: Range,
    pcln: Range,
}

/// One `_func` record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FuncRec {
    pub entry: u64,
    /// Distance to the next function's entry (includes padding).
    pub span: u64,
    pub name_off: u32,
    pub pcsp: u32,
    pub pcfile: u32,
    pub pcln: u32,
    pub npcdata: u32,
    pub cu_offset: u32,
    pub nfuncdata: u8,
    /// `abi.FuncID` (0 = normal; wrappers and special runtime functions are not).
    pub func_id: u8,
    /// `abi.FuncFlag` bits; `FUNC_FLAG_ASM` marks assembly bodies.
    pub flag: u8,
    /// Record offset inside the table.
    off: usize,
}

impl Pclntab {
    /// Parses and validates the header of a table at file offset `file_off`
    /// (`len` bytes available, mapped at `vaddr`).
    pub fn parse_header(
        data: &[u8],
        file_off: usize,
        len: usize,
        vaddr: u64,
    ) -> Result<Pclntab, GoBinError> {
        let bad = |m: &str| GoBinError::BadPclntab(m.to_string());
        let tab = slice(data, file_off, len).ok_or_else(|| bad("outside the file"))?;
        let magic = u32_le(tab, 0).ok_or_else(|| bad("truncated header"))?;
        let layout = match magic {
            MAGIC_118 => Layout::Go118,
            MAGIC_120 => Layout::Go120,
            0xffff_fffa | 0xffff_fffb => return Err(GoBinError::UnsupportedPclntab(magic)),
            _ => return Err(bad("bad magic")),
        };
        let h = slice(tab, 0, HEADER_LEN).ok_or_else(|| bad("truncated header"))?;
        if h[4] != 0 || h[5] != 0 {
            return Err(bad("nonzero header padding"));
        }
        let min_lc = u64::from(h[6]);
        if !matches!(min_lc, 1 | 2 | 4) {
            return Err(bad("bad instruction size quantum"));
        }
        if h[7] != 8 {
            return Err(bad("only 64-bit pointers are supported"));
        }
        let rd = |o| u64_le(h, o).unwrap_or(u64::MAX);
        let nfunc = rd(8);
        let header_text_start = rd(24);
        let offs = [rd(32), rd(40), rd(48), rd(56), rd(64), len as u64];
        if offs[0] < HEADER_LEN as u64 || offs.windows(2).any(|w| w[0] > w[1]) {
            return Err(bad("section offsets out of order or out of bounds"));
        }
        let r = |i: usize| Range {
            start: offs[i] as usize,
            end: offs[i + 1] as usize,
        };
        let pcln = r(4);
        let ftab_len = nfunc
            .checked_add(1)
            .and_then(|n| n.checked_mul(8))
            .ok_or_else(|| bad("nfunc overflows"))?;
        if ftab_len > (pcln.end - pcln.start) as u64 {
            return Err(bad("function table larger than the pcln section"));
        }
        Ok(Pclntab {
            file_off,
            len,
            vaddr,
            layout,
            min_lc,
            nfunc: nfunc as usize,
            header_text_start,
            text_start: header_text_start,
            text_start_source: "pcHeader.textStart",
            gofunc: None,
            funcname: r(0),
            cu: r(1),
            filetab: r(2),
            pctab: r(3),
            pcln,
        })
    }

    /// Offset of the funcname table from the header (moduledata check).
    pub fn funcname_offset(&self) -> u64 {
        self.funcname.start as u64
    }

    /// The table's bytes (validated at construction; empty if `data` changed).
    pub fn bytes<'d>(&self, data: &'d [u8]) -> &'d [u8] {
        slice(data, self.file_off, self.len).unwrap_or(&[])
    }

    fn region<'d>(&self, tab: &'d [u8], r: Range) -> &'d [u8] {
        tab.get(r.start..r.end).unwrap_or(&[])
    }

    /// `functab[i]`: (entry offset from text start, record offset).
    fn ftab(&self, tab: &[u8], i: usize) -> Option<(u32, u32)> {
        let p = self.region(tab, self.pcln);
        let o = i.checked_mul(8)?;
        Some((u32_le(p, o)?, u32_le(p, o + 4)?))
    }

    /// The `i`th function record.
    pub fn func(&self, tab: &[u8], i: usize) -> Option<FuncRec> {
        if i >= self.nfunc {
            return None;
        }
        let (entryoff, funcoff) = self.ftab(tab, i)?;
        let (next, _) = self.ftab(tab, i + 1)?;
        let p = self.region(tab, self.pcln);
        let off = funcoff as usize;
        let fixed = slice(p, off, self.layout.func_fixed_len())?;
        let r = |o| u32_le(fixed, o).unwrap_or(0);
        let (func_id, flag, nfuncdata) = match self.layout {
            Layout::Go118 => (fixed[36], fixed[37], fixed[39]),
            Layout::Go120 => (fixed[40], fixed[41], fixed[43]),
        };
        Some(FuncRec {
            entry: self.text_start.checked_add(u64::from(entryoff))?,
            span: u64::from(next.checked_sub(entryoff)?),
            name_off: r(4),
            pcsp: r(16),
            pcfile: r(20),
            pcln: r(24),
            npcdata: r(28),
            cu_offset: r(32),
            nfuncdata,
            func_id,
            flag,
            off,
        })
    }

    pub fn name(&self, tab: &[u8], f: &FuncRec) -> Option<String> {
        self.name_at(tab, f.name_off)
    }

    /// A name from the funcname table.
    pub fn name_at(&self, tab: &[u8], name_off: u32) -> Option<String> {
        let n = cstr(self.region(tab, self.funcname), name_off as usize, MAX_NAME)?;
        Some(String::from_utf8_lossy(n).into_owned())
    }

    /// Whether `name_off` is a valid start of a name (used to validate guesses).
    pub fn is_name_start(&self, tab: &[u8], name_off: u32) -> bool {
        let r = self.region(tab, self.funcname);
        let o = name_off as usize;
        o < r.len() && (o == 0 || r[o - 1] == 0) && r[o] != 0
    }

    /// Entry `i` of PCDATA tables (0 = absent).
    pub fn pcdata(&self, tab: &[u8], f: &FuncRec, i: u32) -> Option<u32> {
        if i >= f.npcdata {
            return None;
        }
        let p = self.region(tab, self.pcln);
        let o = f.off + self.layout.func_fixed_len() + 4 * i as usize;
        u32_le(p, o).filter(|&v| v != 0)
    }

    /// Entry `i` of FUNCDATA offsets (relative to gofunc; `u32::MAX` = absent).
    pub fn funcdata(&self, tab: &[u8], f: &FuncRec, i: u32) -> Option<u32> {
        if i >= u32::from(f.nfuncdata) {
            return None;
        }
        let p = self.region(tab, self.pcln);
        let o = f.off
            + self.layout.func_fixed_len()
            + 4 * (f.npcdata as usize).min(1 << 20)
            + 4 * i as usize;
        u32_le(p, o).filter(|&v| v != u32::MAX)
    }

    /// Walks the PC-value table at `off`, calling `visit(pc_end, value)` for
    /// each run [previous pc_end, pc_end) until it returns false.
    pub(crate) fn walk(
        &self,
        tab: &[u8],
        off: u32,
        entry: u64,
        mut visit: impl FnMut(u64, i32) -> bool,
    ) {
        let t = self.region(tab, self.pctab);
        let mut pos = off as usize;
        let mut val: i32 = -1;
        let mut pc = entry;
        let mut first = true;
        while pos < t.len() {
            let Some(uv) = uvarint(t, &mut pos) else {
                return;
            };
            if uv == 0 && !first {
                return;
            }
            let uv = uv as u32;
            let delta = (-((uv & 1) as i32)) ^ ((uv >> 1) as i32);
            val = val.wrapping_add(delta);
            let Some(pcd) = uvarint(t, &mut pos) else {
                return;
            };
            pc = pc.saturating_add(pcd.saturating_mul(self.min_lc));
            first = false;
            if !visit(pc, val) {
                return;
            }
        }
    }

    /// Value of the table at `off` for `pc`, as the runtime's `pcvalue`.
    pub fn pcvalue(&self, tab: &[u8], off: u32, entry: u64, pc: u64) -> Option<i32> {
        if off == 0 {
            return None;
        }
        let mut out = None;
        self.walk(tab, off, entry, |end, v| {
            if pc < end {
                out = Some(v);
                false
            } else {
                true
            }
        });
        out
    }

    /// End PC covered by the table (function end without padding) and the
    /// largest value seen.
    pub fn pcvalue_extent(&self, tab: &[u8], off: u32, entry: u64) -> Option<(u64, i32)> {
        if off == 0 {
            return None;
        }
        let mut out = None;
        self.walk(tab, off, entry, |end, v| {
            let max = out.map_or(v, |(_, m): (u64, i32)| m.max(v));
            out = Some((end, max));
            true
        });
        out
    }

    /// Size of the function's code: the extent of its pcsp table, capped by
    /// the distance to the next function.
    pub fn func_size(&self, tab: &[u8], f: &FuncRec) -> u64 {
        match self.pcvalue_extent(tab, f.pcsp, f.entry) {
            Some((end, _)) if end > f.entry && end - f.entry <= f.span => end - f.entry,
            _ => f.span,
        }
    }

    /// File name for a pcfile value, via the compilation unit's cutab slice.
    pub fn file_name(&self, tab: &[u8], f: &FuncRec, fileno: i32) -> Option<String> {
        let fileno = u32::try_from(fileno).ok()?;
        let idx = f.cu_offset.checked_add(fileno)? as usize;
        let off = u32_le(self.region(tab, self.cu), idx.checked_mul(4)?)?;
        if off == u32::MAX {
            return None;
        }
        let n = cstr(self.region(tab, self.filetab), off as usize, MAX_NAME)?;
        Some(String::from_utf8_lossy(n).into_owned())
    }

    /// Index of the function containing `pc`, like the runtime's `findfunc`.
    pub fn find(&self, tab: &[u8], pc: u64) -> Option<usize> {
        let rel = u32::try_from(pc.checked_sub(self.text_start)?).ok()?;
        let (end, _) = self.ftab(tab, self.nfunc)?;
        if rel >= end || self.nfunc == 0 {
            return None;
        }
        // First index whose entry is > rel, minus one.
        let mut lo = 0usize;
        let mut hi = self.nfunc;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (e, _) = self.ftab(tab, mid)?;
            if e <= rel {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1)
    }
}

/// One decoded `inlinedCall` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct InlinedCall {
    pub func_id: u8,
    pub name_off: u32,
    pub parent_pc: i32,
}

/// Decodes an inline-tree entry in the given layout.
pub(crate) fn decode_inlined_call(layout: Layout, b: &[u8]) -> Option<InlinedCall> {
    match layout {
        Layout::Go120 => {
            // {funcID u8, _ [3]byte, nameOff int32, parentPc int32, startLine int32}
            if slice(b, 1, 3)? != [0, 0, 0] {
                return None;
            }
            Some(InlinedCall {
                func_id: u8_at(b, 0)?,
                name_off: u32_le(b, 4)?,
                parent_pc: i32_le(b, 8)?,
            })
        }
        Layout::Go118 => {
            // {parent int16, funcID u8, _ byte, file int32, line int32, func_ int32, parentPc int32}
            if u8_at(b, 3)? != 0 {
                return None;
            }
            Some(InlinedCall {
                func_id: u8_at(b, 2)?,
                name_off: u32_le(b, 12)?,
                parent_pc: i32_le(b, 16)?,
            })
        }
    }
}

/// Finds the pclntab: the `.gopclntab` section, the `runtime.pclntab`
/// symbol, or a scan of read-only segments for a valid header.
pub(crate) fn locate(data: &[u8], elf: &ElfInfo) -> Result<Pclntab, GoBinError> {
    let mut first_err = None;
    if let Some(s) = elf.section(".gopclntab")
        && let Some((off, size)) = s.file
    {
        match Pclntab::parse_header(data, off as usize, size as usize, s.addr) {
            Ok(t) => return Ok(t),
            Err(e) => first_err = Some(e),
        }
    }
    if let Some(start) = elf.markers.get("runtime.pclntab") {
        let end = elf.markers.get("runtime.epclntab").map(|s| s.addr);
        if let Some(off) = elf.vaddr_to_offset(start.addr) {
            let len = match end {
                Some(e) if e > start.addr => e - start.addr,
                _ => segment_rest(elf, start.addr).unwrap_or(0),
            };
            match Pclntab::parse_header(data, off as usize, len as usize, start.addr) {
                Ok(t) => return Ok(t),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
    }
    // Scan non-executable segments (externally linked PIEs may bury the
    // table in .data.rel.ro; stripped files may lack section headers).
    for seg in elf.segments.iter().filter(|s| !s.exec) {
        let (Ok(start), Ok(len)) = (usize::try_from(seg.offset), usize::try_from(seg.filesz))
        else {
            continue;
        };
        let Some(bytes) = slice(data, start, len) else {
            continue;
        };
        let mut i = 0;
        while i + HEADER_LEN <= bytes.len() {
            let m = u32_le(bytes, i).unwrap_or(0);
            if (m == MAGIC_120 || m == MAGIC_118)
                && let Ok(t) = Pclntab::parse_header(
                    data,
                    start + i,
                    len - i,
                    seg.vaddr.wrapping_add(i as u64),
                )
                && t.nfunc > 0
                && t.func(t.bytes(data), 0)
                    .is_some_and(|f| t.name(t.bytes(data), &f).is_some())
            {
                return Ok(t);
            }
            i += 4;
        }
    }
    Err(first_err.unwrap_or(GoBinError::NoPclntab))
}

fn segment_rest(elf: &ElfInfo, vaddr: u64) -> Option<u64> {
    elf.segments
        .iter()
        .find(|s| vaddr >= s.vaddr && vaddr - s.vaddr < s.filesz)
        .map(|s| s.filesz - (vaddr - s.vaddr))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a minimal 1.20-layout table with the given functions
    /// (name, entry offset) and a last end offset.
    pub(crate) fn synth(funcs: &[(&str, u32)], end: u32, text: u64) -> Vec<u8> {
        synth_layout(funcs, end, text, Layout::Go120)
    }

    /// As [`synth`], in the given record layout.
    pub(crate) fn synth_layout(
        funcs: &[(&str, u32)],
        end: u32,
        text: u64,
        layout: Layout,
    ) -> Vec<u8> {
        let mut names = Vec::new();
        let mut name_offs = Vec::new();
        for (n, _) in funcs {
            name_offs.push(names.len() as u32);
            names.extend_from_slice(n.as_bytes());
            names.push(0);
        }
        // cutab: one CU with one file at filetab offset 0.
        let cutab = 0u32.to_le_bytes().to_vec();
        let filetab = b"main.go\0".to_vec();
        // pctab: byte 0 unused; at 1: value table "line 10 for 4 bytes, line 12 for 4".
        let pctab = vec![0u8, 22, 4, 4, 4, 0];
        let funcname_off = HEADER_LEN;
        let cu_off = funcname_off + names.len();
        let file_off = cu_off + cutab.len();
        let pctab_off = file_off + filetab.len();
        let pcln_off = pctab_off + pctab.len();
        let mut pcln = Vec::new();
        let ftab_len = (funcs.len() + 1) * 8;
        let mut recs = Vec::new();
        for (i, (_, e)) in funcs.iter().enumerate() {
            let rec_off = (ftab_len + recs.len()) as u32;
            pcln.extend_from_slice(&e.to_le_bytes());
            pcln.extend_from_slice(&rec_off.to_le_bytes());
            let mut r = vec![0u8; layout.func_fixed_len()];
            r[0..4].copy_from_slice(&e.to_le_bytes());
            r[4..8].copy_from_slice(&name_offs[i].to_le_bytes());
            r[16..20].copy_from_slice(&1u32.to_le_bytes()); // pcsp
            r[20..24].copy_from_slice(&0u32.to_le_bytes()); // pcfile: none
            r[24..28].copy_from_slice(&1u32.to_le_bytes()); // pcln
            recs.extend_from_slice(&r);
        }
        pcln.extend_from_slice(&end.to_le_bytes());
        pcln.extend_from_slice(&0u32.to_le_bytes());
        pcln.extend_from_slice(&recs);
        let mut t = Vec::new();
        let magic = match layout {
            Layout::Go118 => MAGIC_118,
            Layout::Go120 => MAGIC_120,
        };
        t.extend_from_slice(&magic.to_le_bytes());
        t.extend_from_slice(&[0, 0, 1, 8]);
        for v in [
            funcs.len() as u64,
            1,
            text,
            funcname_off as u64,
            cu_off as u64,
            file_off as u64,
            pctab_off as u64,
            pcln_off as u64,
        ] {
            t.extend_from_slice(&v.to_le_bytes());
        }
        t.extend_from_slice(&names);
        t.extend_from_slice(&cutab);
        t.extend_from_slice(&filetab);
        t.extend_from_slice(&pctab);
        t.extend_from_slice(&pcln);
        t
    }

    #[test]
    fn synthetic_table() {
        let t = synth(&[("main.a", 0), ("main.b", 0x20)], 0x40, 0x401000);
        let p = Pclntab::parse_header(&t, 0, t.len(), 0x500000).unwrap();
        assert_eq!(p.layout, Layout::Go120);
        assert_eq!(p.nfunc, 2);
        let tab = p.bytes(&t);
        let f = p.func(tab, 1).unwrap();
        assert_eq!(f.entry, 0x401020);
        assert_eq!(f.span, 0x20);
        assert_eq!(p.name(tab, &f).as_deref(), Some("main.b"));
        // pcln: value -1+11=10 over [entry, entry+4), then 12 until +8.
        assert_eq!(p.pcvalue(tab, f.pcln, f.entry, f.entry), Some(10));
        assert_eq!(p.pcvalue(tab, f.pcln, f.entry, f.entry + 5), Some(12));
        assert_eq!(p.pcvalue(tab, f.pcln, f.entry, f.entry + 8), None);
        assert_eq!(p.func_size(tab, &f), 8);
        assert_eq!(p.find(tab, 0x401000), Some(0));
        assert_eq!(p.find(tab, 0x40101f), Some(0));
        assert_eq!(p.find(tab, 0x401020), Some(1));
        assert_eq!(p.find(tab, 0x401040), None);
        assert_eq!(p.find(tab, 0x400fff), None);
        assert_eq!(p.file_name(tab, &f, 0).as_deref(), Some("main.go"));
        assert_eq!(p.file_name(tab, &f, 1), None);
        assert_eq!(p.file_name(tab, &f, -1), None);
    }

    #[test]
    fn go118_layout() {
        let t = synth_layout(
            &[("main.a", 0), ("main.b", 0x20)],
            0x40,
            0x401000,
            Layout::Go118,
        );
        let p = Pclntab::parse_header(&t, 0, t.len(), 0).unwrap();
        assert_eq!(p.layout, Layout::Go118);
        let tab = p.bytes(&t);
        let f = p.func(tab, 1).unwrap();
        assert_eq!(p.name(tab, &f).as_deref(), Some("main.b"));
        assert_eq!(p.pcvalue(tab, f.pcln, f.entry, f.entry + 4), Some(12));
        assert_eq!(p.func_size(tab, &f), 8);
        assert_eq!(p.find(tab, 0x401021), Some(1));
    }

    #[test]
    fn truncated_and_corrupt_tables_do_not_panic() {
        let t = synth(&[("main.a", 0), ("main.b", 0x20)], 0x40, 0x401000);
        for n in 0..t.len() {
            if let Ok(p) = Pclntab::parse_header(&t[..n], 0, n, 0) {
                let tab = p.bytes(&t[..n]);
                for i in 0..3 {
                    if let Some(f) = p.func(tab, i) {
                        let _ = p.name(tab, &f);
                        let _ = p.func_size(tab, &f);
                        let _ = p.pcvalue(tab, f.pcln, f.entry, f.entry + 3);
                    }
                }
                let _ = p.find(tab, 0x401010);
            }
        }
        // Flip every byte in turn.
        for i in 0..t.len() {
            let mut c = t.clone();
            c[i] ^= 0xa5;
            if let Ok(p) = Pclntab::parse_header(&c, 0, c.len(), 0) {
                let tab = p.bytes(&c);
                for j in 0..3 {
                    if let Some(f) = p.func(tab, j) {
                        let _ = p.name(tab, &f);
                        let _ = p.func_size(tab, &f);
                        let _ = p.file_name(tab, &f, 0);
                        let _ = p.pcdata(tab, &f, 2);
                        let _ = p.funcdata(tab, &f, 3);
                    }
                }
                let _ = p.find(tab, 0x401030);
            }
        }
    }

    #[test]
    fn rejects_bad_headers() {
        let t = synth(&[("main.a", 0)], 0x10, 0);
        let mut c = t.clone();
        c[0] = 0xfa; // Go 1.16 magic 0xfffffffa
        assert!(matches!(
            Pclntab::parse_header(&c, 0, c.len(), 0),
            Err(GoBinError::UnsupportedPclntab(_))
        ));
        let mut c = t.clone();
        c[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // nfunc
        assert!(Pclntab::parse_header(&c, 0, c.len(), 0).is_err());
        let mut c = t.clone();
        c[32..40].copy_from_slice(&(1u64 << 40).to_le_bytes()); // funcname offset
        assert!(Pclntab::parse_header(&c, 0, c.len(), 0).is_err());
        assert!(Pclntab::parse_header(&t, 0, t.len() + 1, 0).is_err());
        assert!(Pclntab::parse_header(&t, usize::MAX, 10, 0).is_err());
    }

    #[test]
    fn inlined_call_layouts() {
        let mut b = vec![0u8; 16];
        b[0] = 5;
        b[4..8].copy_from_slice(&7u32.to_le_bytes());
        b[8..12].copy_from_slice(&0x30i32.to_le_bytes());
        assert_eq!(
            decode_inlined_call(Layout::Go120, &b),
            Some(InlinedCall {
                func_id: 5,
                name_off: 7,
                parent_pc: 0x30
            })
        );
        b[2] = 1;
        assert_eq!(decode_inlined_call(Layout::Go120, &b), None);
        assert_eq!(decode_inlined_call(Layout::Go120, &b[..10]), None);
        let mut c = vec![0u8; 20];
        c[2] = 3;
        c[12..16].copy_from_slice(&9u32.to_le_bytes());
        c[16..20].copy_from_slice(&4i32.to_le_bytes());
        assert_eq!(
            decode_inlined_call(Layout::Go118, &c),
            Some(InlinedCall {
                func_id: 3,
                name_off: 9,
                parent_pc: 4
            })
        );
    }
}
