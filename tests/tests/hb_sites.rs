//! The inlined sync fast paths the happens-before detector (issue #19) must
//! probe, found in the pclntab inline tree, checked against the compiler's
//! own inlining report (`go build -gcflags=-m`) on every installed Go, plain
//! and stripped, with the atomic instruction each copy performs decoded.

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use tracer_tests::{
    GoToolchain, Variant, build_fixture, cache_dir, fixtures_src_dir, go_toolchains,
};
use tracer_user::gobin::GoBinary;

const FUNCS: [(&str, &str); 4] = [
    ("sync.(*Mutex).Lock", "cmpxchg"),
    ("sync.(*Mutex).Unlock", "xadd"),
    ("sync.(*RWMutex).RLock", "xadd"),
    ("sync.(*RWMutex).RUnlock", "xadd"),
];

/// (function, line) of every `inlining call to F` the compiler printed for
/// main.go.
fn compiler_report(tc: &GoToolchain) -> Result<BTreeSet<(String, u32)>> {
    let out = Command::new(&tc.go)
        .current_dir(fixtures_src_dir().join("hbsync"))
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GOCACHE", cache_dir().join("gocache"))
        .env("GOPATH", cache_dir().join("gopath"))
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "0")
        .args(["build", "-gcflags=-m", "-o", "/dev/null", "."])
        .output()
        .context("go build -gcflags=-m")?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut set = BTreeSet::new();
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        let Some((pos, rest)) = line.split_once(": inlining call to ") else {
            continue;
        };
        let Some((func, _)) = FUNCS.iter().find(|(f, _)| *f == rest.trim()) else {
            continue;
        };
        let mut p = pos.trim_start_matches("./").split(':');
        if p.next() != Some("main.go") {
            continue;
        }
        let line: u32 = p.next().context("no line")?.parse()?;
        set.insert(((*func).to_owned(), line));
    }
    Ok(set)
}

#[test]
fn every_inlined_lock_fast_path_is_found_with_its_atomic_operand() -> Result<()> {
    for tc in go_toolchains()? {
        let want = compiler_report(&tc)?;
        // Lock and RLock are inlined everywhere; a deferred Unlock is a
        // plain call before Go 1.22 (probed at Unlock's entry instead).
        let inlined = |f: &str| want.iter().filter(|w| w.0 == f).count();
        ensure!(
            inlined(FUNCS[0].0) >= 3 && inlined(FUNCS[2].0) >= 1,
            "go {}: the fixture no longer inlines Lock and RLock: {want:?}",
            tc.version
        );
        for variant in [Variant::Plain, Variant::Stripped] {
            let path = build_fixture(&tc, "hbsync", variant)?;
            let bin = GoBinary::open(&path)?;
            let sites = bin.inlined_sites(|n| FUNCS.iter().any(|(f, _)| *f == n));
            let got: BTreeSet<(String, u32)> = sites
                .iter()
                .filter(|s| s.file.ends_with("/hbsync/main.go"))
                .map(|s| (s.callee.clone(), s.line))
                .collect();
            ensure!(
                got == want,
                "go {} {variant:?}: inline tree {got:?}, compiler {want:?}",
                tc.version
            );
            for s in sites.iter().filter(|s| s.file.ends_with("/hbsync/main.go")) {
                let insn = bin.atomic_insn(s).with_context(|| {
                    format!("go {} {variant:?}: no atomic in {s:?}", tc.version)
                })?;
                let (_, mnemonic) = FUNCS
                    .iter()
                    .find(|(f, _)| *f == s.callee)
                    .context("callee")?;
                ensure!(
                    insn.mnemonic == *mnemonic && insn.base.is_some() && insn.index.is_none(),
                    "go {} {variant:?}: {} at main.go:{} in {}: {insn:?}",
                    tc.version,
                    s.callee,
                    s.line,
                    s.caller
                );
                ensure!(
                    (s.caller_code.0..s.caller_code.1).contains(&insn.vaddr),
                    "{insn:?} outside {s:?}"
                );
            }
            eprintln!(
                "go {} {variant:?}: {} inlined lock sites, {} source positions, all matching -gcflags=-m",
                tc.version,
                sites.len(),
                got.len()
            );
        }
    }
    Ok(())
}
