//! The function index: `.symtab` when present (exact sizes from the linker),
//! `.gopclntab` otherwise and for anything the symbol table lacks.

use std::collections::{BTreeMap, HashMap};

use super::elf::ElfInfo;
use super::pclntab::{FUNC_FLAG_ASM, Pclntab};
use super::{Function, SymbolSource};

/// Builds name -> function. Functions whose entry is not file-backed are
/// skipped: they cannot be probed or disassembled.
pub(crate) fn build_index(
    data: &[u8],
    elf: &ElfInfo,
    pcln: Option<&Pclntab>,
) -> (BTreeMap<String, Function>, SymbolSource) {
    let mut out = BTreeMap::new();
    let mut pcln_funcs = BTreeMap::new();
    for f in pclntab_functions(data, elf, pcln) {
        pcln_funcs.entry(f.name.clone()).or_insert(f);
    }
    let source = if elf.funcs.is_empty() {
        SymbolSource::Pclntab
    } else {
        SymbolSource::Symtab
    };
    for s in &elf.funcs {
        if out.contains_key(&s.name) {
            continue;
        }
        let Some(file_offset) = elf.vaddr_to_offset(s.addr) else {
            continue;
        };
        let mut size = s.size;
        if size == 0
            && let Some(p) = pcln_funcs.get(&s.name)
            && p.entry == s.addr
        {
            size = p.size;
        }
        out.insert(
            s.name.clone(),
            Function {
                name: s.name.clone(),
                entry: s.addr,
                size,
                file_offset,
            },
        );
    }
    for (name, f) in pcln_funcs {
        out.entry(name).or_insert(f);
    }
    (out, source)
}

/// Every function in the pclntab whose entry is file-backed, in table order.
///
/// A function with both an ABI0 and an ABIInternal body appears twice under
/// one name; like the linker's `.symtab`, the ABI0 one is renamed `NAME.abi0`
/// so lookups agree between stripped and unstripped builds. The ABI0 body is
/// the assembly one, else the generated wrapper (nonzero funcID), else the
/// later one (wrappers are laid out after the package's code).
pub(crate) fn pclntab_functions(
    data: &[u8],
    elf: &ElfInfo,
    pcln: Option<&Pclntab>,
) -> Vec<Function> {
    let mut out: Vec<(Function, u8, u8)> = Vec::new();
    let Some(t) = pcln else { return Vec::new() };
    let tab = t.bytes(data);
    let mut by_name: HashMap<String, Vec<usize>> = HashMap::new();
    for i in 0..t.nfunc {
        let Some(f) = t.func(tab, i) else { continue };
        let Some(name) = t.name(tab, &f) else {
            continue;
        };
        let Some(file_offset) = elf.vaddr_to_offset(f.entry) else {
            continue;
        };
        by_name.entry(name.clone()).or_default().push(out.len());
        out.push((
            Function {
                name,
                entry: f.entry,
                size: t.func_size(tab, &f),
                file_offset,
            },
            f.func_id,
            f.flag,
        ));
    }
    for idxs in by_name.values().filter(|v| v.len() == 2) {
        let (a, b) = (idxs[0], idxs[1]);
        let asm = |i: usize| out[i].2 & FUNC_FLAG_ASM != 0;
        let wrapper = |i: usize| out[i].1 != 0;
        let abi0 = if asm(a) != asm(b) {
            if asm(a) { a } else { b }
        } else if wrapper(a) != wrapper(b) {
            if wrapper(a) { a } else { b }
        } else if out[a].0.entry > out[b].0.entry {
            a
        } else {
            b
        };
        out[abi0].0.name.push_str(".abi0");
    }
    out.into_iter().map(|(f, _, _)| f).collect()
}
