//! Names of global variables, so a lock that is a package-level `var mu sync.Mutex`
//! is reported as `main.mu` rather than an address. Needs `.symtab`: stripped
//! binaries keep no data symbols (pclntab covers functions only).

use object::{Object, ObjectSymbol, SymbolKind};

/// Data symbols (address, size, name), sorted by address.
pub struct DataSymbols {
    syms: Vec<(u64, u64, String)>,
}

/// Most symbols a binary may contribute; bounds memory for hostile input.
const MAX_SYMBOLS: usize = 4_000_000;

impl DataSymbols {
    /// Reads the data-object symbols of an ELF image; empty when there are none.
    pub fn parse(elf: &[u8]) -> Self {
        let mut syms = Vec::new();
        if let Ok(file) = object::File::parse(elf) {
            for s in file.symbols().take(MAX_SYMBOLS) {
                if s.kind() != SymbolKind::Data || s.size() == 0 {
                    continue;
                }
                if let Ok(name) = s.name() {
                    syms.push((s.address(), s.size(), name.to_owned()));
                }
            }
        }
        syms.sort_unstable_by_key(|s| s.0);
        Self { syms }
    }

    /// Link-time address of the variable `name`.
    pub fn address_of(&self, name: &str) -> Option<u64> {
        self.syms.iter().find(|s| s.2 == name).map(|s| s.0)
    }

    /// `name` or `name+0xoff` for the variable containing link-time address `addr`.
    pub fn name_of(&self, addr: u64) -> Option<String> {
        let i = self.syms.partition_point(|s| s.0 <= addr).checked_sub(1)?;
        let (start, size, name) = &self.syms[i];
        let off = addr - start;
        if off >= *size {
            return None;
        }
        Some(if off == 0 {
            name.clone()
        } else {
            format!("{name}+{off:#x}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_inside_and_outside() {
        let d = DataSymbols {
            syms: vec![
                (0x1000, 8, "main.mu".into()),
                (0x1010, 24, "main.rw".into()),
            ],
        };
        assert_eq!(d.name_of(0x1000).as_deref(), Some("main.mu"));
        assert_eq!(d.name_of(0x1008), None);
        assert_eq!(d.name_of(0x1014).as_deref(), Some("main.rw+0x4"));
        assert_eq!(d.name_of(0xfff), None);
        assert_eq!(d.name_of(0x2000), None);
    }

    #[test]
    fn garbage_is_empty() {
        assert!(DataSymbols::parse(b"not an elf").name_of(0).is_none());
        assert!(DataSymbols::parse(&[]).name_of(0).is_none());
    }
}
