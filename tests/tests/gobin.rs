//! `tracer_user::gobin` against real Go binaries: every installed toolchain ×
//! every build variant, checked against the Go toolchain's own tools
//! (`go tool nm`, `objdump`, `addr2line`), the runtime's own symbolization,
//! and the binaries' DWARF.
//!
//! Longer than ~600 lines: one binary-analysis feature checked against each
//! of Go's own tools, one test per tool, sharing the builds of every Go ×
//! variant; splitting would add a test binary (build time) for no new seam.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use tracer_tests::{
    GoToolchain, Variant, build_fixture, cache_dir, classic_and_swiss, go_toolchains,
};
use tracer_user::gobin::{
    Arch, GoBinary, GoVersion, OffsetSource, SymbolizerCache, VersionSource, inspect,
    probe_targets, table_offsets,
};

const FIXTURE: &str = "gobin";

struct Built {
    tc: GoToolchain,
    variant: Variant,
    path: PathBuf,
    /// The Plain build of the same toolchain (ground truth for Stripped).
    plain: PathBuf,
}

impl Built {
    fn label(&self) -> String {
        format!("go{} {:?}", self.tc.version, self.variant)
    }
    /// Binary to run Go's tools on: Stripped has no symbols, so use Plain,
    /// whose code and addresses are identical.
    fn truth(&self) -> &Path {
        if self.variant == Variant::Stripped {
            &self.plain
        } else {
            &self.path
        }
    }
}

fn all_builds() -> Result<Vec<Built>> {
    let mut out = Vec::new();
    for tc in go_toolchains()? {
        let plain = build_fixture(&tc, FIXTURE, Variant::Plain)?;
        for variant in Variant::ALL {
            let path = build_fixture(&tc, FIXTURE, variant)?;
            out.push(Built {
                tc: tc.clone(),
                variant,
                path,
                plain: plain.clone(),
            });
        }
    }
    ensure!(out.len() >= Variant::ALL.len(), "no builds");
    Ok(out)
}

fn go_tool(tc: &GoToolchain, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut cmd = Command::new(&tc.go);
    cmd.arg("tool")
        .args(args)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .env("GOCACHE", cache_dir().join("gocache"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("go tool {args:?}"))?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(input.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "go tool {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// `go tool nm -size -sort address`: text symbols name -> (addr, size).
/// Names that occur twice (C statics in cgo builds) are dropped.
fn nm_functions(tc: &GoToolchain, bin: &Path) -> Result<HashMap<String, (u64, u64)>> {
    let text = go_tool(
        tc,
        &[
            "nm",
            "-size",
            "-sort",
            "address",
            bin.to_str().context("path")?,
        ],
        None,
    )?;
    let mut out: HashMap<String, (u64, u64)> = HashMap::new();
    let mut dups = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(a), Some(s), Some(k)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        let (Ok(addr), Ok(size)) = (u64::from_str_radix(a, 16), s.parse::<u64>()) else {
            continue;
        };
        if k != "T" && k != "t" {
            continue;
        }
        // The name is the rest of the line after the kind (it may contain spaces).
        let rest = line.trim_start();
        let rest = rest[a.len()..].trim_start();
        let rest = rest[s.len()..].trim_start();
        let name = rest[k.len()..].trim();
        if out.insert(name.to_string(), (addr, size)).is_some() {
            dups.push(name.to_string());
        }
    }
    for d in dups {
        out.remove(&d);
    }
    ensure!(
        out.len() > 1000,
        "go tool nm gave only {} functions",
        out.len()
    );
    Ok(out)
}

/// Bytes at `vaddr` read through the ELF *section* headers (independent of
/// the PT_LOAD mapping that `vaddr_to_file_offset` uses).
fn section_bytes(data: &[u8], vaddr: u64, len: usize) -> Option<&[u8]> {
    let rd64 = |o: usize| Some(u64::from_le_bytes(data.get(o..o + 8)?.try_into().ok()?));
    let rd32 = |o: usize| Some(u32::from_le_bytes(data.get(o..o + 4)?.try_into().ok()?));
    let rd16 = |o: usize| Some(u16::from_le_bytes(data.get(o..o + 2)?.try_into().ok()?));
    let shoff = rd64(0x28)? as usize;
    let shentsize = rd16(0x3a)? as usize;
    let shnum = rd16(0x3c)? as usize;
    for i in 0..shnum {
        let sh = shoff + i * shentsize;
        let ty = rd32(sh + 4)?;
        let addr = rd64(sh + 0x10)?;
        let off = rd64(sh + 0x18)?;
        let size = rd64(sh + 0x20)?;
        if ty != 8 /* NOBITS */ && addr != 0 && vaddr >= addr && vaddr + len as u64 <= addr + size {
            let start = (off + (vaddr - addr)) as usize;
            return data.get(start..start + len);
        }
    }
    None
}

/// Functions every build of the fixture has, for the given version.
fn key_functions(v: GoVersion) -> Vec<&'static str> {
    let mut f = vec![
        "main.main",
        "main.mapWork",
        "main.lockWork",
        "main.syncMapWork",
        "main.inlOuter",
        "main.Sum[go.shape.int]",
        "runtime.mapassign",
        "runtime.semacquire1",
        "runtime.throw",
    ];
    if v >= GoVersion::new(1, 24, 0) {
        f.extend([
            "internal/sync.(*Mutex).lockSlow",
            "internal/sync.(*Mutex).unlockSlow",
            "internal/runtime/maps.(*table).grow",
        ]);
    } else {
        f.extend([
            "sync.(*Mutex).lockSlow",
            "sync.(*Mutex).unlockSlow",
            "runtime.hashGrow",
        ]);
    }
    f
}

fn open(b: &Built) -> Result<GoBinary> {
    GoBinary::open(&b.path).with_context(|| b.label())
}

#[test]
fn build_info_and_binary_kind() -> Result<()> {
    for b in all_builds()? {
        let bin = open(&b)?;
        let l = b.label();
        let bi = bin.build_info();
        assert_eq!(bi.go_version, format!("go{}", b.tc.version), "{l}");
        assert_eq!(
            bin.go_version(),
            GoVersion::parse(&b.tc.version).context("version")?,
            "{l}"
        );
        assert_eq!(bi.path.as_deref(), Some("example.com/gobin"), "{l}");
        assert_eq!(bi.main_module.as_deref(), Some("example.com/gobin"), "{l}");
        assert!(bi.main_version.is_some(), "{l}");
        let arm = b.variant == Variant::Arm64;
        assert_eq!(
            bin.arch(),
            if arm { Arch::Arm64 } else { Arch::Amd64 },
            "{l}"
        );
        assert_eq!(
            bi.setting("GOARCH"),
            Some(if arm { "arm64" } else { "amd64" }),
            "{l}"
        );
        assert_eq!(bin.is_stripped(), b.variant == Variant::Stripped, "{l}");
        assert_eq!(bin.is_pie(), b.variant == Variant::Pie, "{l}");
        assert_eq!(bin.is_cgo(), b.variant == Variant::Cgo, "{l}");
        assert_eq!(
            bi.setting("-buildmode"),
            Some(if b.variant == Variant::Pie {
                "pie"
            } else {
                "exe"
            }),
            "{l}"
        );
        assert_eq!(
            bi.setting("CGO_ENABLED"),
            Some(if b.variant == Variant::Cgo { "1" } else { "0" }),
            "{l}"
        );
        match b.variant {
            Variant::Stripped => assert_eq!(bi.setting("-ldflags"), Some("-s -w"), "{l}"),
            Variant::Cgo => {
                assert_eq!(bi.setting("-ldflags"), Some("-linkmode=external"), "{l}")
            }
            _ => assert_eq!(bi.setting("-ldflags"), None, "{l}"),
        }
    }
    Ok(())
}

#[test]
fn functions_match_go_tool_nm() -> Result<()> {
    let mut nm_cache: HashMap<PathBuf, HashMap<String, (u64, u64)>> = HashMap::new();
    for b in all_builds()? {
        let l = b.label();
        let bin = open(&b)?;
        let truth_path = b.truth().to_path_buf();
        if !nm_cache.contains_key(&truth_path) {
            let nm = nm_functions(&b.tc, &truth_path)?;
            nm_cache.insert(truth_path.clone(), nm);
        }
        let nm = &nm_cache[&truth_path];

        // 1. The public lookup, for every Go function nm knows.
        let mut checked = 0;
        for (name, &(addr, size)) in nm {
            if size == 0 {
                continue;
            }
            let Some(f) = bin.function(name) else {
                // Stripped builds only know pclntab functions; nm also
                // lists C/asm helpers without pclntab entries.
                assert_eq!(b.variant, Variant::Stripped, "{l}: {name} not found");
                continue;
            };
            assert_eq!(f.entry, addr, "{l}: {name}");
            // Stripped: sizes come from pclntab, where linker markers
            // (go:textfipsstart) have no PC tables to measure.
            if b.variant != Variant::Stripped || !name.starts_with("go:") {
                assert_eq!(f.size, size, "{l}: {name}");
            }
            checked += 1;
        }
        assert!(checked > 1000, "{l}: only {checked} functions compared");

        // 2. The pclntab alone (what a stripped binary gives), for every
        //    variant: entries and sizes must equal the linker's symbols.
        let pfuncs = bin.pclntab_functions();
        let mut matched = 0;
        for f in &pfuncs {
            // The linker's .symtab calls assembly (ABI0) bodies NAME.abi0.
            let truth = nm
                .get(&f.name)
                .or_else(|| nm.get(&format!("{}.abi0", f.name)));
            if let Some(&(addr, size)) = truth {
                assert_eq!(f.entry, addr, "{l}: pclntab entry of {}", f.name);
                // Linker markers (go:textfipsstart) have no PC tables, so
                // only the distance to the next function is known.
                if !f.name.starts_with("go:") {
                    assert_eq!(f.size, size, "{l}: pclntab size of {}", f.name);
                }
                matched += 1;
            }
        }
        assert!(
            matched > 1000 && matched * 1000 >= pfuncs.len() * 998,
            "{l}: only {matched}/{} pclntab functions matched nm",
            pfuncs.len()
        );

        // 3. Key functions: present, same as plain build when stripped,
        //    prefix lookup finds generic instantiations.
        for name in key_functions(bin.go_version()) {
            let f = bin
                .function(name)
                .with_context(|| format!("{l}: {name} missing"))?;
            assert_eq!(Some(&(f.entry, f.size)), nm.get(name), "{l}: {name}");
        }
        let generic = bin.functions_with_prefix("main.Sum[");
        let names: Vec<_> = generic.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            vec!["main.Sum[go.shape.float64]", "main.Sum[go.shape.int]"],
            "{l}"
        );

        // 4. File offsets: bytes at the file offset equal the bytes at the
        //    vaddr found through the section headers.
        let data = std::fs::read(&b.path)?;
        let mut offsets_checked = 0;
        for f in pfuncs.iter().step_by(7).chain(
            key_functions(bin.go_version())
                .iter()
                .filter_map(|n| pfuncs.iter().find(|f| f.name == *n)),
        ) {
            let len = f.size.clamp(1, 64) as usize;
            let off = bin.vaddr_to_file_offset(f.entry).context("unmapped")?;
            assert_eq!(off, f.file_offset, "{l}: {}", f.name);
            let at_off = &data[off as usize..off as usize + len];
            let at_vaddr = section_bytes(&data, f.entry, len)
                .with_context(|| format!("{l}: {} not in a section", f.name))?;
            assert_eq!(at_off, at_vaddr, "{l}: {}", f.name);
            offsets_checked += 1;
        }
        assert!(offsets_checked > 100, "{l}");
        if b.variant == Variant::Pie || b.variant == Variant::Cgo {
            // Offsets differ from vaddrs here, so the mapping is exercised.
            let f = bin.function("main.main").context("main.main")?;
            assert_ne!(f.entry, f.file_offset, "{l}");
        }
    }
    Ok(())
}

/// RET addresses of the functions matching `^name$` in `go tool objdump`.
fn objdump_rets(tc: &GoToolchain, bin: &Path, name: &str) -> Result<Vec<u64>> {
    let mut re = String::from("^");
    for c in name.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            re.push('\\');
        }
        re.push(c);
    }
    re.push('$');
    let out = go_tool(
        tc,
        &["objdump", "-s", &re, bin.to_str().context("path")?],
        None,
    )?;
    ensure!(out.contains("TEXT "), "objdump found no {name}");
    let mut rets = Vec::new();
    for line in out.lines() {
        let cols: Vec<&str> = line
            .split('\t')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        // file:line, 0xaddr, hex bytes, instruction
        if cols.len() >= 4
            && (cols[3] == "RET" || cols[3].starts_with("RET "))
            && let Some(a) = cols[1].strip_prefix("0x")
        {
            rets.push(u64::from_str_radix(a, 16)?);
        }
    }
    Ok(rets)
}

#[test]
fn ret_sites_match_go_tool_objdump() -> Result<()> {
    for b in all_builds()? {
        let l = b.label();
        let bin = open(&b)?;
        let v = bin.go_version();
        let slow = if v >= GoVersion::new(1, 24, 0) {
            "internal/sync.(*Mutex)."
        } else {
            "sync.(*Mutex)."
        };
        let names = [
            format!("{slow}lockSlow"),
            format!("{slow}unlockSlow"),
            "runtime.mapassign".to_string(),
            "main.mapWork".to_string(),
            "runtime.semacquire1".to_string(),
        ];
        let mut total = 0;
        for name in &names {
            let f = bin.function(name).with_context(|| format!("{l}: {name}"))?;
            let ours: Vec<u64> = bin
                .return_offsets(&f)?
                .into_iter()
                .map(|o| f.entry + o)
                .collect();
            let theirs = objdump_rets(&b.tc, b.truth(), name)?;
            assert!(!theirs.is_empty(), "{l}: objdump shows no RET in {name}");
            assert_eq!(ours, theirs, "{l}: RET sites of {name}");
            total += ours.len();
        }
        assert!(total >= names.len(), "{l}");
    }
    Ok(())
}

#[test]
fn symbolize_matches_go_tool_addr2line() -> Result<()> {
    for b in all_builds()? {
        let l = b.label();
        let bin = open(&b)?;
        // PCs: entry, middle, RET sites and last byte of a spread of functions.
        let funcs = bin.pclntab_functions();
        let mut pcs = Vec::new();
        for f in funcs.iter().step_by(11).chain(
            key_functions(bin.go_version())
                .iter()
                .filter_map(|n| funcs.iter().find(|f| f.name == *n)),
        ) {
            pcs.push(f.entry);
            pcs.push(f.entry + f.size / 2);
            pcs.push(f.entry + f.size.saturating_sub(1));
            for r in bin.return_offsets(f).unwrap_or_default() {
                pcs.push(f.entry + r);
            }
        }
        let input: String = pcs.iter().map(|pc| format!("{pc:#x}\n")).collect();
        let out = go_tool(
            &b.tc,
            &["addr2line", b.truth().to_str().context("path")?],
            Some(&input),
        )?;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), pcs.len() * 2, "{l}: addr2line output");
        let mut inlined_seen = 0;
        let mut compared = 0;
        for (i, &pc) in pcs.iter().enumerate() {
            let func = lines[2 * i];
            let fileline = lines[2 * i + 1];
            let frames = bin.symbolize(pc);
            assert!(!frames.is_empty(), "{l}: no frames for {pc:#x}");
            if fileline == ":-1" || fileline == "?:0" {
                // No line table (linker-made markers such as go:textfipsstart):
                // we report "?" and line 0.
                assert_eq!((frames[0].file.as_str(), frames[0].line), ("?", 0), "{l}");
                assert_eq!(
                    frames.last().map(|f| f.function.as_str()),
                    Some(func),
                    "{l}"
                );
                continue;
            }
            compared += 1;
            let outer = frames.last().context("frames")?;
            let inner = &frames[0];
            assert_eq!(outer.function, func, "{l}: function at {pc:#x}");
            assert!(!outer.inlined, "{l}");
            assert_eq!(
                format!("{}:{}", inner.file, inner.line),
                fileline,
                "{l}: file:line at {pc:#x} ({frames:?})"
            );
            if frames.len() > 1 {
                inlined_seen += 1;
                assert!(frames[..frames.len() - 1].iter().all(|f| f.inlined), "{l}");
            }
        }
        assert!(compared > 500, "{l}: only {compared} PCs compared");
        assert!(
            inlined_seen > 0,
            "{l}: no inlined frames among {} PCs",
            pcs.len()
        );
        assert!(bin.symbolize(0).is_empty(), "{l}");
        assert!(bin.symbolize(u64::MAX).is_empty(), "{l}");
    }
    Ok(())
}

#[test]
fn inline_frames_match_runtime_callers_frames() -> Result<()> {
    let mut compared = 0;
    for b in all_builds()? {
        if b.variant == Variant::Arm64 {
            continue; // cannot run here
        }
        let l = b.label();
        let bin = open(&b)?;
        let out = Command::new(&b.path).arg("frames").output()?;
        ensure!(out.status.success(), "{l}: fixture failed");
        let text = String::from_utf8(out.stdout)?;
        let mut outer_rt = None;
        let mut pc_rt = None;
        let mut want = Vec::new();
        for line in text.lines() {
            if let Some(x) = line.strip_prefix("outer 0x") {
                outer_rt = Some(u64::from_str_radix(x, 16)?);
            } else if let Some(x) = line.strip_prefix("pc 0x") {
                pc_rt = Some(u64::from_str_radix(x, 16)?);
            } else if let Some(x) = line.strip_prefix("frame ") {
                let p: Vec<&str> = x.split('\t').collect();
                want.push((p[0].to_string(), p[1].to_string(), p[2].parse::<u32>()?));
            }
        }
        let outer = bin.function("main.inlOuter").context("main.inlOuter")?;
        // Undo the PIE load bias (zero for fixed-address builds).
        let bias = outer_rt.context("outer")?.wrapping_sub(outer.entry);
        if b.variant != Variant::Pie {
            assert_eq!(bias, 0, "{l}");
        }
        let pc = pc_rt.context("pc")?.wrapping_sub(bias) - 1;
        let got: Vec<(String, String, u32)> = bin
            .symbolize(pc)
            .into_iter()
            .map(|f| (f.function, f.file, f.line))
            .collect();
        assert_eq!(want.len(), 3, "{l}: runtime frames {want:?}");
        assert_eq!(got, want, "{l}: frames at {pc:#x}");
        let frames = bin.symbolize(pc);
        assert_eq!(
            frames.iter().map(|f| f.inlined).collect::<Vec<_>>(),
            vec![true, true, false],
            "{l}"
        );
        compared += 1;
    }
    assert!(compared > 0);
    Ok(())
}

#[test]
fn struct_offsets_dwarf_equal_table() -> Result<()> {
    let mut compared = 0;
    for b in all_builds()? {
        let l = b.label();
        let bin = open(&b)?;
        let table = table_offsets(bin.go_version(), &bin.build_info().experiments);
        let resolved = bin.offsets();
        if b.variant == Variant::Stripped {
            assert!(bin.dwarf_offsets()?.is_none(), "{l}: stripped has DWARF?");
            for (f, o) in resolved.fields() {
                assert_eq!(
                    o,
                    table.fields().iter().find(|x| x.0 == f).and_then(|x| x.1),
                    "{l} {f}"
                );
                if let Some(o) = o {
                    assert_eq!(o.source, OffsetSource::Table, "{l} {f}");
                }
            }
            continue;
        }
        let dwarf = bin
            .dwarf_offsets()?
            .with_context(|| format!("{l}: no DWARF"))?;
        assert!(dwarf.g_goid.is_some(), "{l}: goid not in DWARF");
        let mut some = 0;
        for ((f, d), (_, t)) in dwarf.fields().into_iter().zip(table.fields()) {
            assert_eq!(
                d.map(|o| o.value),
                t.map(|o| o.value),
                "{l}: {f}: DWARF vs built-in table"
            );
            if let Some(d) = d {
                assert_eq!(d.source, OffsetSource::Dwarf);
                some += 1;
            }
        }
        // goid + the 4 map fields at least (+ sync.Map on ≤ 1.23).
        assert!(some >= 5, "{l}: only {some} offsets in DWARF");
        assert_eq!(dwarf.swiss_map_type, table.swiss_map_type, "{l}");
        for (_, o) in resolved.fields() {
            if let Some(o) = o {
                assert_eq!(o.source, OffsetSource::Dwarf, "{l}");
            }
        }
        // Every missing field says why.
        for (f, o) in resolved.fields() {
            assert_eq!(
                o.is_none(),
                resolved.missing.iter().any(|(m, _)| m == f),
                "{l}: {f}"
            );
        }
        compared += 1;
    }
    assert!(compared > 0);
    Ok(())
}

#[test]
fn probe_targets_all_found() -> Result<()> {
    for b in all_builds()? {
        let l = b.label();
        let bin = open(&b)?;
        let targets = probe_targets(&bin);
        assert!(targets.len() > 20, "{l}");
        for t in &targets {
            if t.optional {
                continue;
            }
            assert!(t.found, "{l}: target {} missing", t.name);
            assert!(t.ret_count.unwrap_or(0) >= 1, "{l}: {} has no RET", t.name);
            let f = bin.function(&t.name).context("found but no function")?;
            assert_eq!(Some(f.entry), t.entry, "{l}");
            assert_eq!(Some(f.file_offset), t.file_offset, "{l}");
        }
        let slow = targets
            .iter()
            .filter(|t| t.name.ends_with("(*Mutex).lockSlow") && t.found)
            .count();
        assert_eq!(slow, 1, "{l}");
        let report = inspect(&bin);
        let json = serde_json::to_value(&report)?;
        assert_eq!(json["go_version"], format!("go{}", b.tc.version), "{l}");
        assert!(
            json["targets"]
                .as_array()
                .is_some_and(|a| a.len() == targets.len())
        );
        let text = report.to_string();
        assert!(
            text.contains("lockSlow") && text.contains("runtime.g.goid"),
            "{l}"
        );
    }
    Ok(())
}

#[test]
fn non_go_elf_has_no_build_info() {
    let err = GoBinary::open(Path::new("/bin/true")).unwrap_err();
    assert!(err.to_string().contains("no Go build info"), "{err}");
}

#[test]
fn symbolizer_cache_shares_by_inode() -> Result<()> {
    let tc = go_toolchains()?.pop().context("toolchain")?;
    let path = build_fixture(&tc, FIXTURE, Variant::Plain)?;
    let link = std::env::temp_dir().join(format!("gobin-link-{}", std::process::id()));
    let _ = std::fs::remove_file(&link);
    std::fs::hard_link(&path, &link)?;
    let cache = SymbolizerCache::new();
    let a = cache.get(&path)?;
    let b = cache.get(&link)?;
    std::fs::remove_file(&link)?;
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(cache.len(), 1);
    let f = a.function("main.main").context("main.main")?;
    assert_eq!(a.symbolize(f.entry)[0].function, "main.main");
    assert!(cache.get(Path::new("/nonexistent/binary")).is_err());
    Ok(())
}

/// `strip --strip-all` copy (drops .symtab and DWARF, keeps .gopclntab).
fn strip_all(src: &Path) -> Result<Vec<u8>> {
    let dst = std::env::temp_dir().join(format!(
        "gobin-strip-{}-{}",
        std::process::id(),
        src.file_name().context("name")?.to_string_lossy()
    ));
    let st = Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&dst)
        .arg(src)
        .status()?;
    ensure!(st.success(), "strip failed");
    let data = std::fs::read(&dst)?;
    std::fs::remove_file(&dst)?;
    Ok(data)
}

/// The same bytes with the section header table removed from the ELF header,
/// as in files that were never given one: everything must come from segments.
fn without_section_headers(mut data: Vec<u8>) -> Vec<u8> {
    data[0x28..0x30].fill(0); // e_shoff
    data[0x3c..0x40].fill(0); // e_shnum, e_shstrndx
    data
}

#[test]
fn stripped_and_headerless_cgo_and_pie_match_unstripped() -> Result<()> {
    let mut checked = 0;
    for tc in go_toolchains()? {
        let cgo = build_fixture(&tc, FIXTURE, Variant::Cgo)?;
        let pie = build_fixture(&tc, FIXTURE, Variant::Pie)?;
        let cgo_pie = build_fixture(&tc, FIXTURE, Variant::CgoPie)?;
        for base in [cgo, pie, cgo_pie] {
            let nm = nm_functions(&tc, &base)?;
            let orig = GoBinary::open(&base)?;
            let stripped = strip_all(&base)?;
            let variants = [
                ("strip", stripped.clone()),
                ("no-shdr", without_section_headers(std::fs::read(&base)?)),
                ("strip+no-shdr", without_section_headers(stripped)),
            ];
            for (kind, data) in variants {
                let l = format!("go{} {} {kind}", tc.version, base.display());
                let bin = GoBinary::parse(data).with_context(|| l.clone())?;
                assert_eq!(
                    bin.build_info().go_version,
                    format!("go{}", tc.version),
                    "{l}"
                );
                assert!(bin.is_stripped(), "{l}");
                let (text, src) = bin.text_start().context("text start")?;
                let (otext, _) = orig.text_start().context("text start")?;
                assert_eq!(text, otext, "{l}: text start from {src}");
                let pf = bin.pclntab_functions();
                let mut matched = 0;
                for f in &pf {
                    let truth = nm
                        .get(&f.name)
                        .or_else(|| nm.get(&format!("{}.abi0", f.name)));
                    if let Some(&(addr, size)) = truth {
                        assert_eq!(f.entry, addr, "{l}: {}", f.name);
                        if !f.name.starts_with("go:") {
                            assert_eq!(f.size, size, "{l}: {}", f.name);
                        }
                        matched += 1;
                    }
                }
                assert!(
                    matched > 1000 && matched * 1000 >= pf.len() * 998,
                    "{l}: {matched}"
                );
                for name in key_functions(bin.go_version()) {
                    let f = bin.function(name).with_context(|| format!("{l}: {name}"))?;
                    let o = orig.function(name).context("orig")?;
                    assert_eq!(f, o, "{l}");
                    assert_eq!(
                        bin.return_offsets(&f)?,
                        orig.return_offsets(&o)?,
                        "{l}: {name}"
                    );
                    for pc in [f.entry, f.entry + f.size / 2, f.entry + f.size - 1] {
                        assert_eq!(bin.symbolize(pc), orig.symbolize(pc), "{l}: {pc:#x}");
                    }
                }
                // Inline frames need moduledata.gofunc, found by validation here.
                let outer = bin.function("main.inlOuter").context("inlOuter")?;
                let deepest = (outer.entry..outer.entry + outer.size)
                    .map(|pc| bin.symbolize(pc).len())
                    .max()
                    .unwrap_or(0);
                assert!(deepest >= 3, "{l}: no inline frames in main.inlOuter");
                checked += 1;
            }
        }
    }
    assert!(checked >= 9);
    Ok(())
}

/// Every occurrence of `needle` in `data` overwritten with `with` (same length).
fn overwrite_all(data: &mut [u8], needle: &[u8], with: &[u8]) -> usize {
    assert_eq!(needle.len(), with.len());
    let mut n = 0;
    let mut i = 0;
    while i + needle.len() <= data.len() {
        if data[i..].starts_with(needle) {
            data[i..i + needle.len()].copy_from_slice(with);
            n += 1;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    n
}

/// Binaries without `.go.buildinfo` (as esbuild's npm release ships): with
/// the build info magic destroyed, `go version` itself gives up, and the
/// version must come from `runtime.buildVersion`; with the version string
/// destroyed too, only a pclntab lower bound is left, offsets tables are off
/// (no exact release to pick a row), and everything else still works.
#[test]
fn version_without_build_info() -> Result<()> {
    let mut go_version_checked = 0;
    // Oldest, newest classic-map and newest Go, kinds whose data layout
    // differs (symbols, none, relocated PIE, arm64): parsing three copies of
    // every build takes minutes on 2 cores.
    let all = go_toolchains()?;
    let mut tcs: Vec<String> = classic_and_swiss()?
        .into_iter()
        .map(|t| t.version)
        .collect();
    tcs.extend(all.first().map(|t| t.version.clone()));
    let builds = all_builds()?
        .into_iter()
        .filter(|b| tcs.contains(&b.tc.version) && b.variant != Variant::Cgo);
    for b in builds {
        let l = b.label();
        let orig = open(&b)?;
        let mut data = std::fs::read(&b.path)?;
        let n = overwrite_all(&mut data, b"\xff Go buildinf:", &[0; 14]);
        ensure!(n >= 1, "{l}: no build info magic to remove");
        if b.variant == Variant::Plain {
            // Ground truth: Go's own tool no longer finds a version either.
            let tmp = std::env::temp_dir().join(format!("gobin-nobi-{}", std::process::id()));
            std::fs::write(&tmp, &data)?;
            let out = Command::new(&b.tc.go)
                .arg("version")
                .arg(&tmp)
                .env("GOTOOLCHAIN", "local")
                .output()?;
            std::fs::remove_file(&tmp)?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            ensure!(
                !text.contains(&format!(": go{}", b.tc.version)),
                "{l}: go version still reads the patched file: {text}"
            );
            go_version_checked += 1;
        }
        let bin =
            GoBinary::parse(data.clone()).with_context(|| format!("{l} without buildinfo"))?;
        assert_eq!(
            bin.version_source(),
            VersionSource::RuntimeBuildVersion,
            "{l}"
        );
        assert!(bin.version_exact(), "{l}");
        assert_eq!(
            bin.build_info().go_version,
            format!("go{}", b.tc.version),
            "{l}"
        );
        assert_eq!(bin.go_version(), orig.go_version(), "{l}");
        assert_eq!(bin.function_count(), orig.function_count(), "{l}");
        assert_eq!(bin.map_impl(), orig.map_impl(), "{l}");
        assert_eq!(bin.offsets().fields(), orig.offsets().fields(), "{l}");

        let real = format!("go{}", b.tc.version);
        let n = overwrite_all(&mut data, real.as_bytes(), &vec![b'x'; real.len()]);
        ensure!(n >= 1, "{l}: version string not in the file");
        let bin = GoBinary::parse(data).with_context(|| format!("{l} without any version"))?;
        assert_eq!(bin.version_source(), VersionSource::PclntabMagic, "{l}");
        assert!(!bin.version_exact(), "{l}");
        let v = bin.go_version();
        let truth = orig.go_version();
        assert!(v <= truth, "{l}: lower bound {v} above the real {truth}");
        let floor = if truth.at_least(1, 24) {
            (1, 24)
        } else if truth.at_least(1, 20) {
            (1, 20)
        } else {
            (1, 18)
        };
        assert_eq!((v.major, v.minor), floor, "{l}");
        assert_eq!(
            bin.build_info().go_version,
            format!("go{}.{}+ (exact version unknown)", floor.0, floor.1),
            "{l}"
        );
        assert_eq!(bin.function_count(), orig.function_count(), "{l}");
        let report = serde_json::to_value(inspect(&bin))?;
        assert_eq!(report["go_version_source"], "pclntab_magic", "{l}");
        for (field, value) in bin.offsets().fields() {
            let dwarf = value.is_some_and(|o| o.source == OffsetSource::Dwarf);
            ensure!(
                value.is_none() || dwarf,
                "{l}: {field} from the table without an exact version"
            );
            if value.is_none() && b.variant == Variant::Stripped {
                let reason = bin
                    .missing_offsets()
                    .into_iter()
                    .find(|(f, _)| f == field)
                    .map(|(_, r)| r)
                    .unwrap_or_default();
                ensure!(
                    reason.contains("exact Go version is unknown"),
                    "{l}: {field}: {reason}"
                );
            }
        }
    }
    ensure!(go_version_checked >= 2, "too few toolchains");
    Ok(())
}

/// The Mutex wait points decoded by tracer, checked against Go's own
/// disassembler: the sleep point is the call into the runtime semaphore, the
/// wake point follows the starvation-bit branch, the hand-off point is the
/// release with `handoff` = true. Every Go version and binary kind.
#[test]
fn mutex_wait_points_match_gos_disassembly() -> Result<()> {
    let mut checked = 0;
    for b in all_builds()? {
        let l = b.label();
        let bin = open(&b)?;
        if bin.arch() == Arch::Arm64 {
            let err = bin.mutex_points().err().context("arm64 decoded?")?;
            ensure!(err.contains("amd64"), "{l}: {err}");
            continue;
        }
        let (lock, unlock, points) = bin
            .mutex_points()
            .map_err(|e| anyhow::anyhow!("{l}: {e}"))?;
        let dump = |f: &tracer_user::gobin::Function| -> Result<Vec<(u64, String)>> {
            let text = go_tool(
                &b.tc,
                &[
                    "objdump",
                    "-s",
                    &format!("^{}$", regex_escape(&f.name)),
                    b.truth().to_str().context("path")?,
                ],
                None,
            )?;
            // "  file.go:12  0x46cd78  e8...  CALL sync.runtime_SemacquireMutex(SB)"
            Ok(text
                .lines()
                .filter_map(|line| {
                    let mut cols = line.split('\t').map(str::trim).filter(|c| !c.is_empty());
                    let _fileline = cols.next()?;
                    let addr = u64::from_str_radix(cols.next()?.strip_prefix("0x")?, 16).ok()?;
                    let _bytes = cols.next()?;
                    Some((addr, cols.next()?.to_string()))
                })
                .collect())
        };
        let at = |insns: &[(u64, String)], addr: u64| -> Result<usize> {
            insns
                .iter()
                .position(|(a, _)| *a == addr)
                .with_context(|| format!("{l}: no instruction at {addr:#x}"))
        };
        let lock_insns = dump(&lock)?;
        let sleep = &lock_insns[at(&lock_insns, lock.entry + points.sleep)?].1;
        ensure!(
            sleep.starts_with("CALL ") && sleep.contains("runtime_SemacquireMutex"),
            "{l}: sleep point is {sleep:?}"
        );
        let wake = at(&lock_insns, lock.entry + points.wake)?;
        let branch = &lock_insns[wake - 1].1;
        let test = &lock_insns[wake - 2].1;
        ensure!(
            (branch.starts_with("JB ") && test.starts_with("BTL $0x2,"))
                || (branch.starts_with("JNE ") && test.starts_with("TESTL $0x4,")),
            "{l}: wake point follows {test:?} / {branch:?}"
        );
        let unlock_insns = dump(&unlock)?;
        let h = at(&unlock_insns, unlock.entry + points.handoff)?;
        let call = &unlock_insns[h].1;
        ensure!(
            call.starts_with("CALL ") && call.contains("runtime_Semrelease"),
            "{l}: hand-off point is {call:?}"
        );
        ensure!(
            unlock_insns[h.saturating_sub(4)..h]
                .iter()
                .any(|(_, i)| i == "MOVL $0x1, BX"),
            "{l}: hand-off call without handoff = true: {:?}",
            &unlock_insns[h.saturating_sub(4)..=h]
        );
        checked += 1;
    }
    ensure!(checked >= 7, "only {checked} amd64 builds checked");
    Ok(())
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}
