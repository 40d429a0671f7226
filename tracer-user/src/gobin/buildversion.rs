//! The Go version of binaries without `.go.buildinfo` (esbuild's npm
//! release, binaries post-processed by other tools): the linker also stores
//! the version in the string variable `runtime.buildVersion`, whose header
//! `{ptr, len}` sits in a writable data segment and points at read-only bytes
//! such as `go1.26.5`. When both are gone, the pclntab magic still bounds the
//! version, which is all that can honestly be said.

use serde::Serialize;

use super::elf::ElfInfo;
use super::version::GoVersion;

/// Where the Go version shown for a binary came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionSource {
    /// `.go.buildinfo` (what `go version` reads): exact.
    Buildinfo,
    /// The `runtime.buildVersion` string: exact.
    RuntimeBuildVersion,
    /// Only the pclntab layout: a lower bound, the exact release is unknown.
    PclntabMagic,
}

impl VersionSource {
    pub fn describe(self) -> &'static str {
        match self {
            VersionSource::Buildinfo => ".go.buildinfo",
            VersionSource::RuntimeBuildVersion => "runtime.buildVersion; no .go.buildinfo",
            VersionSource::PclntabMagic => {
                "pclntab magic only (no .go.buildinfo, no runtime.buildVersion): exact version unknown"
            }
        }
    }
}

/// Longest version string accepted (`go1.26rc1 X:nosynchashtriemap,...`).
const MAX_LEN: u64 = 256;
/// Most data bytes scanned for the string header (real data segments of
/// very large Go programs are tens of MiB).
const MAX_SCAN: u64 = 256 << 20;

/// A plausible `runtime.buildVersion` value: `go1.N[.P][rcN|betaN][ X:...]`
/// or `devel go1.N-...`, printable ASCII only.
fn plausible(s: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(s).ok()?;
    if !s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return None;
    }
    let head = s.strip_prefix("devel ").unwrap_or(s);
    let word = head.split(' ').next()?;
    let rest = word.strip_prefix("go1.")?;
    if !rest.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let ok_tail = rest
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    (ok_tail && GoVersion::parse(s).is_some()).then_some(s)
}

/// The string `runtime.buildVersion` points to: through its symbol when
/// `.symtab` has it, else by scanning writable segments for a string header
/// whose target is a plausible version string in a read-only segment. The
/// scan must find exactly one distinct value; two different ones are
/// ambiguous and give `None`.
pub(crate) fn find(data: &[u8], elf: &ElfInfo) -> Option<String> {
    let read_string = |hdr: u64| -> Option<String> {
        let ptr = elf.read_ptr(data, hdr)?;
        let len = elf.read_ptr(data, hdr.checked_add(8)?)?;
        if !(4..=MAX_LEN).contains(&len) || elf.is_writable(ptr) {
            return None;
        }
        let bytes = elf.read(data, ptr, usize::try_from(len).ok()?)?;
        plausible(bytes).map(str::to_string)
    };
    if let Some(sym) = elf.markers.get("runtime.buildVersion") {
        return read_string(sym.addr);
    }
    let mut found: Option<String> = None;
    let mut budget = MAX_SCAN;
    for seg in elf.segments.iter().filter(|s| s.writable) {
        let len = seg.filesz.min(budget);
        budget -= len;
        let end = seg.vaddr.saturating_add(len);
        let mut a = seg.vaddr.next_multiple_of(8);
        while a.checked_add(16).is_some_and(|e| e <= end) {
            if let Some(v) = read_string(a) {
                match &found {
                    Some(f) if *f != v => return None,
                    Some(_) => {}
                    None => found = Some(v),
                }
            }
            a += 8;
        }
    }
    found
}

/// Lower bound on the Go release implied by the pclntab layout and by
/// functions only some releases have.
pub(crate) fn lower_bound(magic_120: bool, has: &dyn Fn(&str) -> bool) -> GoVersion {
    let mut v = if magic_120 {
        GoVersion::new(1, 20, 0)
    } else {
        GoVersion::new(1, 18, 0)
    };
    // Go 1.24 moved the mutex slow paths to internal/sync and maps to
    // internal/runtime/maps; either one present proves 1.24+.
    if has("internal/sync.(*Mutex).lockSlow") || has("internal/runtime/maps.(*Map).growToTable") {
        v = v.max(GoVersion::new(1, 24, 0));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plausible_versions() {
        for ok in [
            "go1.26.5",
            "go1.19.8",
            "go1.22",
            "go1.26rc1",
            "go1.24.1 X:noswissmap",
            "devel go1.27-abc123 Tue Dec 1",
        ] {
            assert_eq!(plausible(ok.as_bytes()), Some(ok), "{ok}");
        }
        for bad in [
            "go1.",
            "go1.x",
            "go2.0",
            "gopher",
            "go1.2\n",
            "go1.22\u{0}",
            "go1.22/abc",
            "",
        ] {
            assert_eq!(plausible(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn lower_bounds() {
        let none = |_: &str| false;
        let swiss = |n: &str| n == "internal/runtime/maps.(*Map).growToTable";
        assert_eq!(lower_bound(true, &none), GoVersion::new(1, 20, 0));
        assert_eq!(lower_bound(false, &none), GoVersion::new(1, 18, 0));
        assert_eq!(lower_bound(true, &swiss), GoVersion::new(1, 24, 0));
    }
}
