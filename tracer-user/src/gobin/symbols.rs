//! The function index: `.symtab` when present (exact sizes from the linker),
//! `.gopclntab` otherwise and for anything the symbol table lacks.

use super::elf::{ElfInfo, Symbol};
use super::pclntab::{FUNC_FLAG_ASM, Pclntab};
use super::{Function, SymbolSource};

/// Builds the function index, sorted by name with unique names. `.symtab`
/// function symbols (`syms`, in file order) win; the first one of a name
/// that is file-backed is kept, and a zero size is taken from the pclntab
/// entry of the same name and address. Pclntab functions fill in the rest
/// (the first one of each name, in table order). Functions whose entry is
/// not file-backed are skipped: they cannot be probed or disassembled.
///
/// Sorted vectors instead of maps: names are moved, never copied, which
/// matters for the peak memory of binaries with 100k functions.
pub(crate) fn build_index(
    data: &[u8],
    elf: &ElfInfo,
    syms: Vec<Symbol>,
    pcln: Option<&Pclntab>,
) -> (Vec<Function>, SymbolSource) {
    let source = if syms.is_empty() {
        SymbolSource::Pclntab
    } else {
        SymbolSource::Symtab
    };
    let mut from_pcln = pclntab_functions(data, elf, pcln);
    // Stable sort + dedup keeps the first of each name.
    from_pcln.sort_by(|a, b| a.name.cmp(&b.name));
    from_pcln.dedup_by(|later, earlier| later.name == earlier.name);

    let mut from_sym: Vec<Function> = syms
        .into_iter()
        .filter_map(|s| {
            let file_offset = elf.vaddr_to_offset(s.addr)?;
            Some(Function {
                name: s.name,
                entry: s.addr,
                size: s.size,
                file_offset,
            })
        })
        .collect();
    from_sym.sort_by(|a, b| a.name.cmp(&b.name));
    from_sym.dedup_by(|later, earlier| later.name == earlier.name);

    // Merge the two sorted lists; on equal names `.symtab` wins.
    let mut out = Vec::with_capacity(from_sym.len().max(from_pcln.len()));
    let mut p = from_pcln.into_iter().peekable();
    for mut f in from_sym {
        while let Some(q) = p.next_if(|q| q.name < f.name) {
            out.push(q);
        }
        if let Some(q) = p.next_if(|q| q.name == f.name)
            && f.size == 0
            && q.entry == f.entry
        {
            f.size = q.size;
        }
        out.push(f);
    }
    out.extend(p);
    out.shrink_to_fit();
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
    for i in 0..t.nfunc {
        let Some(f) = t.func(tab, i) else { continue };
        let Some(name) = t.name(tab, &f) else {
            continue;
        };
        let Some(file_offset) = elf.vaddr_to_offset(f.entry) else {
            continue;
        };
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
    // Names that occur exactly twice: indices sorted by (name, table order).
    let mut order: Vec<usize> = (0..out.len()).collect();
    order.sort_by(|&a, &b| out[a].0.name.cmp(&out[b].0.name));
    let mut pairs = Vec::new();
    for run in order.chunk_by(|&a, &b| out[a].0.name == out[b].0.name) {
        if let [a, b] = *run {
            pairs.push((a, b));
        }
    }
    drop(order);
    for (a, b) in pairs {
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
