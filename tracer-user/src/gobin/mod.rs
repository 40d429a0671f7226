//! Analysis of Go binaries that tracer did not build: build info, function
//! symbols (also in stripped binaries), RET sites for exit probes, struct
//! offsets, and PC symbolization. All parsing treats the file as untrusted:
//! bounds-checked reads, no panics, no allocation sized by header fields.
//!
//! Over 600 lines with its unit tests (the code is about 600): the
//! `GoBinary` accessors are the analysis' one public face; each part behind
//! them lives in its own submodule.

mod buildinfo;
mod buildversion;
mod elf;
mod inlined;
mod inspect;
mod load;
mod moduledata;
mod mutex_points;
mod offsets;
mod pclntab;
mod reader;
mod returns;
mod symbolize;
mod symbols;
mod targets;
mod version;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::Serialize;

pub use buildinfo::BuildInfo;
pub use buildversion::VersionSource;
pub use inlined::{AtomicInsn, InlinedSite};
pub use inspect::{InspectReport, OffsetReport, inspect};
pub use mutex_points::MutexPoints;
pub use offsets::{MapImpl, Offset, OffsetSource, StructOffsets, lock_wait_reasons, table_offsets};
pub use returns::{return_offsets_amd64, return_offsets_arm64};
pub use symbolize::SymbolizerCache;
pub use targets::{Category, Match, ProbeTarget, TargetStatus, probe_targets, target_specs};
pub use version::GoVersion;

use elf::ElfInfo;
use pclntab::Pclntab;

/// Errors from analysing a Go binary.
#[derive(Debug, thiserror::Error)]
pub enum GoBinError {
    // The OS error is the source: anyhow's `{:#}` prints it once.
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not an ELF file: {0}")]
    NotElf(String),
    #[error("not a regular file: {0}")]
    NotRegular(String),
    #[error("{what} of {size} bytes is larger than the {limit} bytes tracer analyses")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("unsupported architecture: {0} (only amd64 and arm64 are supported)")]
    UnsupportedArch(String),
    #[error(
        "no Go build info (no .go.buildinfo section or \"\\xff Go buildinf:\" magic) and no usable .gopclntab; not a Go binary?"
    )]
    NoBuildInfo,
    #[error("malformed Go build info: {0}")]
    BadBuildInfo(String),
    #[error("no Go pclntab found")]
    NoPclntab,
    #[error("malformed Go pclntab: {0}")]
    BadPclntab(String),
    #[error("unsupported pclntab magic {0:#x} (Go 1.18 to 1.27 are supported)")]
    UnsupportedPclntab(u32),
    #[error("address {0:#x} is not backed by the file")]
    Unmapped(u64),
    #[error("malformed DWARF: {0}")]
    Dwarf(String),
}

/// CPU architecture of the binary (from ELF `e_machine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arch::Amd64 => "amd64",
            Arch::Arm64 => "arm64",
        })
    }
}

/// A function in the binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Function {
    pub name: String,
    /// Link-time virtual address of the first instruction.
    pub entry: u64,
    /// Code size in bytes (without alignment padding).
    pub size: u64,
    /// File offset of `entry`: what uprobes attach to.
    pub file_offset: u64,
}

/// One frame of a symbolized PC; inlined frames have `inlined = true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Frame {
    pub function: String,
    pub file: String,
    pub line: u32,
    pub inlined: bool,
}

/// Where the function list came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SymbolSource {
    /// `.symtab` (gaps filled from `.gopclntab`).
    Symtab,
    /// `.gopclntab` only (stripped binary).
    Pclntab,
}

/// A parsed Go ELF binary. Owns its bytes; `Send + Sync`, share via `Arc`.
pub struct GoBinary {
    data: Vec<u8>,
    elf: ElfInfo,
    build_info: BuildInfo,
    version: GoVersion,
    version_source: VersionSource,
    pcln: Option<Pclntab>,
    pcln_error: Option<String>,
    /// Sorted by name, names unique.
    funcs: Vec<Function>,
    symbol_source: SymbolSource,
    offsets: OnceLock<StructOffsets>,
    pc_cache: symbolize::PcCache,
    /// [`GoBinary::release_dwarf`] ran: the DWARF bytes are zeros.
    dwarf_released: bool,
}

impl GoBinary {
    /// Reads and parses the file at `path`.
    pub fn open(path: &Path) -> Result<GoBinary, GoBinError> {
        GoBinary::parse(load::read_image(path)?)
    }

    /// Parses an in-memory ELF image.
    pub fn parse(data: Vec<u8>) -> Result<GoBinary, GoBinError> {
        let mut elf = ElfInfo::parse(&data)?;
        let build_info = match find_build_info(&data, &elf) {
            Ok(b) => Some(b),
            Err(GoBinError::NoBuildInfo) => None,
            Err(e) => return Err(e),
        };
        let (pcln, pcln_error) = match pclntab::locate(&data, &elf) {
            Ok(mut t) => {
                resolve_text_and_gofunc(&data, &elf, &mut t);
                (Some(t), None)
            }
            Err(e) => {
                tracing::warn!("Go pclntab unavailable: {e}");
                (None, Some(e.to_string()))
            }
        };
        let syms = std::mem::take(&mut elf.funcs);
        let (funcs, symbol_source) = symbols::build_index(&data, &elf, syms, pcln.as_ref());
        if funcs.is_empty() {
            return Err(match (pcln_error, &build_info) {
                (_, None) => GoBinError::NoBuildInfo,
                (Some(e), Some(_)) => {
                    GoBinError::BadPclntab(format!("no function symbols and {e}"))
                }
                (None, Some(_)) => GoBinError::NoPclntab,
            });
        }
        let (build_info, version, version_source) = match build_info {
            Some(b) => {
                let v = GoVersion::parse(&b.go_version).unwrap_or(GoVersion::new(0, 0, 0));
                (b, v, VersionSource::Buildinfo)
            }
            // Without build info only a real pclntab makes this a Go binary.
            None => {
                let Some(t) = pcln.as_ref() else {
                    return Err(GoBinError::NoBuildInfo);
                };
                version_without_build_info(&data, &elf, t, &funcs)
            }
        };
        Ok(GoBinary {
            data,
            elf,
            build_info,
            version,
            version_source,
            pcln,
            pcln_error,
            funcs,
            symbol_source,
            offsets: OnceLock::new(),
            pc_cache: symbolize::PcCache::default(),
            dwarf_released: false,
        })
    }

    pub fn build_info(&self) -> &BuildInfo {
        &self.build_info
    }

    /// Go version from the build info or `runtime.buildVersion` (0.0.0 if
    /// unparsable); only a lower bound when [`version_exact`](Self::version_exact)
    /// is false.
    pub fn go_version(&self) -> GoVersion {
        self.version
    }

    /// Where the Go version came from.
    pub fn version_source(&self) -> VersionSource {
        self.version_source
    }

    /// Whether [`go_version`](Self::go_version) is the exact release (false
    /// when only the pclntab layout bounds it).
    pub fn version_exact(&self) -> bool {
        self.version_source != VersionSource::PclntabMagic
    }

    pub fn arch(&self) -> Arch {
        self.elf.arch
    }

    /// No `.symtab` section (e.g. `-ldflags=-s`).
    pub fn is_stripped(&self) -> bool {
        !self.elf.has_symtab
    }

    /// ELF type ET_DYN.
    pub fn is_pie(&self) -> bool {
        self.elf.is_dyn
    }

    /// Built with `CGO_ENABLED=1`, or linked by an external linker.
    pub fn is_cgo(&self) -> bool {
        self.build_info.setting("CGO_ENABLED") == Some("1")
            || self.build_info.setting("-linkmode") == Some("external")
            || self
                .build_info
                .setting("-ldflags")
                .is_some_and(|f| f.contains("linkmode=external") || f.contains("linkmode external"))
            || self.elf.section(".init").is_some()
    }

    /// Whether the map runtime is Swiss tables (Go ≥ 1.24 by default, unless
    /// built with `GOEXPERIMENT=noswissmap`, which Go 1.24 and 1.25 accept).
    ///
    /// The growth functions decide when exactly one implementation's is
    /// linked (the runtime itself uses maps, so one always is): they are what
    /// the probes go on, and they stay right even when the build info's
    /// experiment list is missing or altered. Otherwise version and
    /// GOEXPERIMENT decide.
    pub fn map_impl(&self) -> MapImpl {
        let classic = self.function("runtime.hashGrow").is_some();
        let swiss = self
            .function("internal/runtime/maps.(*Map).growToTable")
            .is_some();
        match (classic, swiss) {
            (true, false) => MapImpl::Classic,
            (false, true) => MapImpl::Swiss,
            _ => offsets::map_impl(self.version, &self.build_info.experiments),
        }
    }

    /// Where function symbols came from.
    pub fn symbol_source(&self) -> SymbolSource {
        self.symbol_source
    }

    /// Function with exactly this name.
    pub fn function(&self, name: &str) -> Option<Function> {
        self.funcs
            .binary_search_by(|f| f.name.as_str().cmp(name))
            .ok()
            .and_then(|i| self.funcs.get(i))
            .cloned()
    }

    /// All functions whose name starts with `prefix`, sorted by name.
    pub fn functions_with_prefix(&self, prefix: &str) -> Vec<Function> {
        let start = self.funcs.partition_point(|f| f.name.as_str() < prefix);
        self.funcs
            .get(start..)
            .unwrap_or_default()
            .iter()
            .take_while(|f| f.name.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Functions as recorded in `.gopclntab` alone (ignoring `.symtab`), in
    /// address order: what a stripped build of the same code would give.
    pub fn pclntab_functions(&self) -> Vec<Function> {
        symbols::pclntab_functions(&self.data, &self.elf, self.pcln.as_ref())
    }

    /// Every inlined copy of the functions `want` accepts (by name), from the
    /// pclntab inline tree; works on stripped binaries.
    pub fn inlined_sites(&self, want: impl Fn(&str) -> bool) -> Vec<InlinedSite> {
        inlined::inlined_sites(self, want)
    }

    /// The locked instruction an inlined copy performs, with its memory
    /// operand (amd64).
    pub fn atomic_insn(&self, site: &InlinedSite) -> Option<AtomicInsn> {
        inlined::atomic_insn(self, site)
    }

    /// Every XCHG with a memory operand in `f` (amd64 atomic stores).
    pub fn xchg_insns(&self, f: &Function) -> Vec<AtomicInsn> {
        inlined::xchg_insns(self, f)
    }

    /// The plain load an inlined copy performs first (an atomic load on
    /// amd64 is a MOV), with its memory operand.
    pub fn load_insn(&self, site: &InlinedSite) -> Option<AtomicInsn> {
        inlined::load_insn(self, site)
    }

    /// Number of functions known.
    pub fn function_count(&self) -> usize {
        self.funcs.len()
    }

    /// Link-time address of the segment at file offset 0: where the kernel
    /// maps the start of the file, so a PIE's load bias is its mapping's
    /// start minus this (Go's internal linker puts PIEs at 0x400000, not 0).
    pub fn image_base(&self) -> u64 {
        self.elf
            .segments
            .iter()
            .filter(|s| s.offset == 0)
            .map(|s| s.vaddr)
            .min()
            .unwrap_or(0)
    }

    /// The code of `f`.
    fn code(&self, f: &Function) -> Result<&[u8], GoBinError> {
        let len = usize::try_from(f.size).map_err(|_| GoBinError::Unmapped(f.entry))?;
        self.elf
            .read(&self.data, f.entry, len)
            .ok_or(GoBinError::Unmapped(f.entry))
    }

    /// The Mutex slow paths and where their waits can be timed off the
    /// lock (see `mutex_points`); the error says why not (arm64, or code
    /// of a shape tracer does not know).
    pub fn mutex_points(&self) -> Result<(Function, Function, MutexPoints), String> {
        let find = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| self.function(n))
                .ok_or_else(|| format!("{} not in the binary", names.join(" / ")))
        };
        if self.elf.arch != Arch::Amd64 {
            return Err("the wake-up points are decoded on amd64 only".into());
        }
        let lock = find(&["internal/sync.(*Mutex).lockSlow", "sync.(*Mutex).lockSlow"])?;
        let unlock = find(&[
            "internal/sync.(*Mutex).unlockSlow",
            "sync.(*Mutex).unlockSlow",
        ])?;
        let acquire = find(&[
            "internal/sync.runtime_SemacquireMutex",
            "sync.runtime_SemacquireMutex",
        ])?;
        let release = find(&[
            "internal/sync.runtime_Semrelease",
            "sync.runtime_Semrelease",
        ])?;
        let code = |f: &Function| self.code(f).map_err(|e| format!("{}: {e}", f.name));
        let (sleep, wake) =
            mutex_points::lock_slow_points_amd64(code(&lock)?, lock.entry, acquire.entry)?;
        let handoff =
            mutex_points::unlock_slow_handoff_amd64(code(&unlock)?, unlock.entry, release.entry)?;
        Ok((
            lock,
            unlock,
            MutexPoints {
                sleep,
                wake,
                handoff,
            },
        ))
    }

    /// RET instruction sites of `f`, as offsets from `f.entry`.
    pub fn return_offsets(&self, f: &Function) -> Result<Vec<u64>, GoBinError> {
        let len = usize::try_from(f.size).map_err(|_| GoBinError::Unmapped(f.entry))?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let code = self
            .elf
            .read(&self.data, f.entry, len)
            .ok_or(GoBinError::Unmapped(f.entry))?;
        Ok(match self.elf.arch {
            Arch::Amd64 => returns::return_offsets_amd64(code, f.entry),
            Arch::Arm64 => returns::return_offsets_arm64(code),
        })
    }

    /// Frames for `pc` (link-time address), innermost first, inlined frames
    /// included; empty if `pc` is in no known Go function. Results are kept
    /// in a bounded per-binary cache (at most
    /// [`PC_CACHE_ENTRIES`](Self::PC_CACHE_ENTRIES) PCs).
    pub fn symbolize(&self, pc: u64) -> Vec<Frame> {
        symbolize::symbolize(self, pc)
    }

    /// Most PCs [`symbolize`](Self::symbolize) caches per binary.
    pub const PC_CACHE_ENTRIES: usize = symbolize::PC_CACHE_ENTRIES;

    /// Number of PCs currently in the symbolization cache.
    pub fn cached_pcs(&self) -> usize {
        self.pc_cache.len()
    }

    /// Struct field offsets (DWARF when present, else the built-in table).
    pub fn offsets(&self) -> &StructOffsets {
        self.offsets.get_or_init(|| offsets::resolve(self))
    }

    /// Offsets that could not be determined, with the reason.
    pub fn missing_offsets(&self) -> Vec<(String, String)> {
        self.offsets().missing.clone()
    }

    /// Offsets read from DWARF only (`None` without `.debug_info`).
    pub fn dwarf_offsets(&self) -> Result<Option<StructOffsets>, GoBinError> {
        if self.dwarf_released {
            return Err(GoBinError::Dwarf(
                "released after the offsets were read (release_dwarf)".into(),
            ));
        }
        offsets::from_dwarf(&self.data)
    }

    /// Reads the struct offsets, then gives the DWARF sections' memory back:
    /// nothing else reads them, and they are a third of a typical binary
    /// that the agent otherwise holds for as long as the binary runs.
    pub fn release_dwarf(&mut self) {
        self.offsets();
        for (start, len) in load::dwarf_ranges(&self.data) {
            load::release(&mut self.data, start, len);
        }
        self.dwarf_released = true;
    }

    /// File offset of a link-time virtual address (via its PT_LOAD segment).
    pub fn vaddr_to_file_offset(&self, vaddr: u64) -> Option<u64> {
        self.elf.vaddr_to_offset(vaddr)
    }

    /// `len` bytes of the file mapped at `vaddr`.
    pub fn read_vaddr(&self, vaddr: u64, len: usize) -> Option<&[u8]> {
        self.elf.read(&self.data, vaddr, len)
    }

    /// Start of the Go text that pclntab entry offsets are relative to, and
    /// where it was found.
    pub fn text_start(&self) -> Option<(u64, &'static str)> {
        self.pcln
            .as_ref()
            .map(|p| (p.text_start, p.text_start_source))
    }

    /// Why the pclntab could not be used, if it could not.
    pub fn pclntab_error(&self) -> Option<&str> {
        self.pcln_error.as_deref()
    }

    /// The first executable PT_LOAD segment: link-time address, file size
    /// and file offset (the mapping pprof profiles name).
    pub fn exec_segment(&self) -> Option<(u64, u64, u64)> {
        self.elf
            .segments
            .iter()
            .find(|s| s.exec)
            .map(|s| (s.vaddr, s.filesz, s.offset))
    }

    /// The raw file.
    pub fn data(&self) -> &[u8] {
        &self.data
    }
}

/// Summary only: the file bytes and function table are too big to print.
impl std::fmt::Debug for GoBinary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoBinary")
            .field("go_version", &self.build_info.go_version)
            .field("arch", &self.elf.arch)
            .field("len", &self.data.len())
            .field("functions", &self.funcs.len())
            .field("symbol_source", &self.symbol_source)
            .finish_non_exhaustive()
    }
}

/// Build info from `.go.buildinfo`, or by scanning data segments (and then
/// the whole file) for the magic at 16-byte alignment.
fn find_build_info(data: &[u8], elf: &ElfInfo) -> Result<BuildInfo, GoBinError> {
    let read = |vaddr: u64, len: usize| elf.read(data, vaddr, len).map(<[u8]>::to_vec);
    if let Some(s) = elf.section(".go.buildinfo")
        && let Some((off, size)) = s.file
        && let Some(blob) = usize::try_from(off)
            .ok()
            .and_then(|o| reader::slice(data, o, usize::try_from(size).ok()?))
    {
        return buildinfo::parse_blob(blob, &read);
    }
    let scan = |start: usize, bytes: &[u8]| -> Option<Result<BuildInfo, GoBinError>> {
        let mut i = (16 - start % 16) % 16;
        while i + buildinfo::MAGIC.len() <= bytes.len() {
            if bytes[i..].starts_with(buildinfo::MAGIC) {
                return Some(buildinfo::parse_blob(&bytes[i..], &read));
            }
            i += 16;
        }
        None
    };
    for seg in elf.segments.iter().filter(|s| s.writable) {
        let (Ok(off), Ok(len)) = (usize::try_from(seg.offset), usize::try_from(seg.filesz)) else {
            continue;
        };
        if let Some(bytes) = reader::slice(data, off, len)
            && let Some(r) = scan(off, bytes)
        {
            return r;
        }
    }
    if elf.segments.is_empty()
        && let Some(r) = scan(0, data)
    {
        return r;
    }
    Err(GoBinError::NoBuildInfo)
}

/// Version of a Go binary without build info: `runtime.buildVersion` if it
/// can be found, else a lower bound from the pclntab layout, shown as e.g.
/// `go1.20+ (exact version unknown)`.
fn version_without_build_info(
    data: &[u8],
    elf: &ElfInfo,
    t: &Pclntab,
    funcs: &[Function],
) -> (BuildInfo, GoVersion, VersionSource) {
    if let Some(s) = buildversion::find(data, elf) {
        let bi = buildinfo::from_strings(&s, &[]);
        let v = GoVersion::parse(&bi.go_version).unwrap_or(GoVersion::new(0, 0, 0));
        return (bi, v, VersionSource::RuntimeBuildVersion);
    }
    let has = |n: &str| funcs.binary_search_by(|f| f.name.as_str().cmp(n)).is_ok();
    let v = buildversion::lower_bound(t.layout == pclntab::Layout::Go120, &has);
    let bi = BuildInfo {
        go_version: format!("go{}.{}+ (exact version unknown)", v.major, v.minor),
        ..BuildInfo::default()
    };
    (bi, v, VersionSource::PclntabMagic)
}

/// Fills in `text_start` (needed from Go 1.26 on, and for relocated PIEs)
/// and `gofunc` (for inline trees).
fn resolve_text_and_gofunc(data: &[u8], elf: &ElfInfo, t: &mut Pclntab) {
    let md = moduledata::find(data, elf, t);
    let header = elf
        .read_ptr(data, t.vaddr.wrapping_add(24))
        .filter(|&v| v != 0)
        .or(Some(t.header_text_start).filter(|&v| v != 0));
    if let Some(v) = header {
        t.text_start = v;
        t.text_start_source = "pcHeader.textStart";
    } else if let Some(s) = elf.markers.get("runtime.text") {
        t.text_start = s.addr;
        t.text_start_source = "runtime.text symbol";
    } else if let Some(v) = md.and_then(|m| moduledata::text(data, elf, m)) {
        t.text_start = v;
        t.text_start_source = "runtime.firstmoduledata.text";
    } else if let Some(s) = elf.section(".text") {
        t.text_start = s.addr;
        t.text_start_source = ".text section (guess)";
    } else if let Some(s) = elf.segments.iter().find(|s| s.exec) {
        t.text_start = s.vaddr;
        t.text_start_source = "executable segment (guess)";
    }
    let sym = ["go:func.*", "go.func.*"]
        .iter()
        .find_map(|n| elf.markers.get(*n))
        .map(|s| s.addr);
    t.gofunc = sym.or_else(|| md.and_then(|m| moduledata::gofunc(data, elf, t, m)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_sync() {
        fn assert<T: Send + Sync>() {}
        assert::<GoBinary>();
    }

    #[test]
    fn rejects_non_elf_and_garbage() {
        assert!(matches!(
            GoBinary::parse(Vec::new()),
            Err(GoBinError::NotElf(_))
        ));
        assert!(matches!(
            GoBinary::parse(b"#!/bin/sh\necho hi\n".to_vec()),
            Err(GoBinError::NotElf(_))
        ));
        let mut e = b"\x7fELF\x02\x01\x01".to_vec();
        e.resize(64, 0);
        assert!(GoBinary::parse(e.clone()).is_err());
        for n in 0..64 {
            let _ = GoBinary::parse(e[..n].to_vec());
        }
    }

    #[test]
    fn host_binary_is_not_go() {
        for p in ["/bin/true", "/bin/ls"] {
            let Ok(data) = std::fs::read(p) else { continue };
            let err = GoBinary::parse(data).unwrap_err();
            assert!(err.to_string().contains("no Go build info"), "{err}");
        }
    }

    #[test]
    fn truncated_host_binary_never_panics() {
        let Ok(data) = std::fs::read("/bin/true") else {
            return;
        };
        for n in (0..data.len()).step_by(97) {
            let _ = GoBinary::parse(data[..n].to_vec());
        }
    }
}
