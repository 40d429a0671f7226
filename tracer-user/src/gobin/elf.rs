//! The parts of the ELF file the Go analysis needs, copied out of `object` so
//! that `GoBinary` owns plain data (no borrow of the file bytes).

use std::collections::HashMap;

use object::elf;
use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{Object, ObjectSection, ObjectSymbol, RelocationFlags, SymbolKind};

use super::{Arch, GoBinError};

/// Upper bound on the symbols we copy, so a forged `.symtab` cannot make us
/// allocate without limit (real Go binaries have well under a million).
const MAX_SYMBOLS: usize = 4_000_000;

#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub vaddr: u64,
    pub offset: u64,
    pub filesz: u64,
    pub writable: bool,
    pub exec: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Section {
    pub name: String,
    pub addr: u64,
    /// File range; `None` for SHT_NOBITS.
    pub file: Option<(u64, u64)>,
}

#[derive(Debug, Clone)]
pub(crate) struct Symbol {
    pub name: String,
    pub addr: u64,
    pub size: u64,
}

/// Owned summary of the ELF file.
#[derive(Debug, Clone)]
pub(crate) struct ElfInfo {
    pub arch: Arch,
    pub is_dyn: bool,
    pub segments: Vec<Segment>,
    pub sections: Vec<Section>,
    pub has_symtab: bool,
    /// Function symbols from `.symtab`, in file order (`GoBinary::parse`
    /// moves them into its index; empty afterwards).
    pub funcs: Vec<Symbol>,
    /// A few well-known data/marker symbols (runtime.pclntab, go:func.*, ...).
    pub markers: HashMap<String, Symbol>,
    /// R_*_RELATIVE relocations: place -> addend. Externally linked PIEs may
    /// leave pointer words zero in the file and keep the value only here.
    pub relative: HashMap<u64, u64>,
}

const MARKERS: &[&str] = &[
    "runtime.pclntab",
    "runtime.epclntab",
    "runtime.firstmoduledata",
    "runtime.text",
    "runtime.etext",
    "runtime.buildVersion",
    "go:func.*",
    "go.func.*",
];

impl ElfInfo {
    pub fn parse(data: &[u8]) -> Result<ElfInfo, GoBinError> {
        if data.get(..4) != Some(&b"\x7fELF"[..]) {
            return Err(GoBinError::NotElf("missing ELF magic".into()));
        }
        match data.get(4) {
            Some(2) => {}
            Some(1) => return Err(GoBinError::UnsupportedArch("32-bit ELF".into())),
            _ => return Err(GoBinError::NotElf("bad ELF class".into())),
        }
        if data.get(5) != Some(&1) {
            return Err(GoBinError::UnsupportedArch("big-endian ELF".into()));
        }
        let file = ElfFile64::<object::Endianness>::parse(data)
            .map_err(|e| GoBinError::NotElf(e.to_string()))?;
        let endian = file.endian();
        let hdr = file.elf_header();
        let machine = hdr.e_machine(endian);
        let arch = match machine {
            elf::EM_X86_64 => Arch::Amd64,
            elf::EM_AARCH64 => Arch::Arm64,
            m => return Err(GoBinError::UnsupportedArch(format!("ELF e_machine {m}"))),
        };
        let is_dyn = hdr.e_type(endian) == elf::ET_DYN;

        let segments = file
            .elf_program_headers()
            .iter()
            .filter(|p| p.p_type(endian) == elf::PT_LOAD)
            .map(|p| Segment {
                vaddr: p.p_vaddr(endian),
                offset: p.p_offset(endian),
                filesz: p.p_filesz(endian),
                writable: p.p_flags(endian) & elf::PF_W != 0,
                exec: p.p_flags(endian) & elf::PF_X != 0,
            })
            .collect();

        let mut sections = Vec::new();
        for s in file.sections() {
            let name = s.name().unwrap_or("").to_string();
            sections.push(Section {
                name,
                addr: s.address(),
                file: s.file_range(),
            });
        }

        let has_symtab = file.section_by_name(".symtab").is_some();
        let mut funcs = Vec::new();
        let mut markers = HashMap::new();
        for sym in file.symbols().take(MAX_SYMBOLS) {
            let Ok(name) = sym.name() else { continue };
            if name.is_empty() || sym.is_undefined() {
                continue;
            }
            let s = Symbol {
                name: name.to_string(),
                addr: sym.address(),
                size: sym.size(),
            };
            if MARKERS.contains(&name) {
                markers.entry(s.name.clone()).or_insert_with(|| s.clone());
            }
            if sym.kind() == SymbolKind::Text && s.addr != 0 {
                funcs.push(s);
            }
        }

        let mut relative = HashMap::new();
        if let Some(relocs) = file.dynamic_relocations() {
            for (place, r) in relocs.take(MAX_SYMBOLS) {
                if let RelocationFlags::Elf { r_type } = r.flags() {
                    let rel = match arch {
                        Arch::Amd64 => r_type == elf::R_X86_64_RELATIVE,
                        Arch::Arm64 => r_type == elf::R_AARCH64_RELATIVE,
                    };
                    if rel {
                        relative.insert(place, r.addend() as u64);
                    }
                }
            }
        }

        Ok(ElfInfo {
            arch,
            is_dyn,
            segments,
            sections,
            has_symtab,
            funcs,
            markers,
            relative,
        })
    }

    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// File offset of a link-time virtual address: the PT_LOAD segment whose
    /// file-backed part contains it (sections as a fallback when there are no
    /// program headers).
    pub fn vaddr_to_offset(&self, vaddr: u64) -> Option<u64> {
        if !self.segments.is_empty() {
            return self
                .segments
                .iter()
                .find(|s| vaddr >= s.vaddr && vaddr - s.vaddr < s.filesz)
                .and_then(|s| s.offset.checked_add(vaddr - s.vaddr));
        }
        self.sections.iter().find_map(|s| {
            let (off, size) = s.file?;
            (s.addr != 0 && vaddr >= s.addr && vaddr - s.addr < size)
                .then(|| off.checked_add(vaddr - s.addr))
                .flatten()
        })
    }

    /// `len` file-backed bytes at `vaddr`, all inside one mapping.
    pub fn read<'d>(&self, data: &'d [u8], vaddr: u64, len: usize) -> Option<&'d [u8]> {
        let off = self.vaddr_to_offset(vaddr)?;
        let last = vaddr.checked_add(len.checked_sub(1)? as u64)?;
        let last_off = self.vaddr_to_offset(last)?;
        if last_off.checked_sub(off)? != len as u64 - 1 {
            return None;
        }
        super::reader::slice(data, usize::try_from(off).ok()?, len)
    }

    /// A 64-bit pointer stored at `vaddr`, honouring RELATIVE relocations.
    pub fn read_ptr(&self, data: &[u8], vaddr: u64) -> Option<u64> {
        if let Some(&v) = self.relative.get(&vaddr) {
            return Some(v);
        }
        super::reader::u64_le(self.read(data, vaddr, 8)?, 0)
    }

    /// Whether `vaddr` lies in a writable segment (or in none at all).
    pub fn is_writable(&self, vaddr: u64) -> bool {
        self.segments.is_empty()
            || self
                .segments
                .iter()
                .any(|s| s.writable && vaddr >= s.vaddr && vaddr - s.vaddr < s.filesz)
    }

    /// Whether `vaddr` lies in an executable segment.
    pub fn is_exec(&self, vaddr: u64) -> bool {
        self.segments
            .iter()
            .any(|s| s.exec && vaddr >= s.vaddr && vaddr - s.vaddr < s.filesz)
    }
}
