//! `cargo xtask bench analysis`: Go binary analysis speed and memory.
//!
//! Runs `tracer-user/examples/gobin_bench` (release) on the Go toolchain's own
//! `go` binary, on a generated ~100 MB Go program, and on a stripped copy of
//! each, one fresh process per run, and prints a markdown table.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{
    setup::GO_VERSIONS,
    shell::{cache_dir, cargo, output, run, step, tracer_bin},
};

/// Generated packages and functions per package: about 100 MB unstripped
/// with Go 1.27 on amd64, built in 2–3 minutes on 2 cores.
const PACKAGES: usize = 85;
const FUNCS_PER_PACKAGE: usize = 1000;
/// Bump when the generated program changes, so the cached build is redone.
const GENERATOR_VERSION: u32 = 1;

pub(super) fn bench_analysis() -> Result<()> {
    step("building the Go binary analysis benchmark (release example gobin_bench)");
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "tracer-user",
        "--example",
        "gobin_bench",
    ]))?;
    let example = tracer_bin()
        .parent()
        .context("target dir")?
        .join("examples")
        .join("gobin_bench");

    let newest = GO_VERSIONS.last().context("no Go version")?;
    let wrapper = cache_dir().join("go").join(newest).join("bin/go");
    let go = real_go_binary(&wrapper)?;
    let bench_dir = cache_dir().join("bench");
    std::fs::create_dir_all(&bench_dir).with_context(|| format!("creating {bench_dir:?}"))?;

    let go_stripped = bench_dir.join(format!("go{newest}-toolchain-go-stripped"));
    if !go_stripped.exists() {
        step("making a stripped copy of the go command");
        let tmp = go_stripped.with_extension("tmp");
        run(Command::new("strip")
            .args(["--strip-all", "-o"])
            .arg(&tmp)
            .arg(&go))?;
        std::fs::rename(&tmp, &go_stripped)?;
    }
    let (big, big_stripped) = build_big_program(&go, &bench_dir, newest)?;

    let rows = [
        (format!("`go` command (Go {newest})"), go.clone()),
        ("`go` command, `strip --strip-all`".to_string(), go_stripped),
        (
            format!("generated, {PACKAGES} pkgs × {FUNCS_PER_PACKAGE} funcs"),
            big,
        ),
        ("generated, `-ldflags=-s -w`".to_string(), big_stripped),
    ];
    step("analysing each binary (3 fresh processes each; fastest time, largest RSS)");
    let mut table = String::new();
    for (i, (label, path)) in rows.iter().enumerate() {
        let mut cmd = Command::new(&example);
        cmd.arg(path).args(["--label", label, "--runs", "3"]);
        if i == 0 {
            cmd.arg("--header");
        }
        let out = output(&mut cmd).with_context(|| format!("{cmd:?} failed"))?;
        table.push_str(&out);
    }
    println!();
    print!("{table}");
    Ok(())
}

/// The toolchain's `go` ELF: setup installs Go as a Python package whose
/// `bin/go` is a wrapper script, so ask it for GOROOT.
fn real_go_binary(wrapper: &Path) -> Result<PathBuf> {
    let goroot = output(
        Command::new(wrapper)
            .args(["env", "GOROOT"])
            .env("GOTOOLCHAIN", "local"),
    )
    .with_context(|| format!("{} env GOROOT failed", wrapper.display()))?;
    let go = PathBuf::from(goroot.trim()).join("bin").join("go");
    let head = std::fs::read(&go)
        .with_context(|| format!("reading {}", go.display()))?
        .get(..4)
        .map(<[u8]>::to_vec);
    if head.as_deref() != Some(&b"\x7fELF"[..]) {
        bail!("{} is not an ELF file", go.display());
    }
    Ok(go)
}

/// Builds (once; cached by name) the generated program, plain and with
/// `-ldflags=-s -w`. Returns both paths.
fn build_big_program(go: &Path, bench_dir: &Path, version: &str) -> Result<(PathBuf, PathBuf)> {
    let name = format!("gobig-v{GENERATOR_VERSION}-{PACKAGES}x{FUNCS_PER_PACKAGE}-go{version}");
    let plain = bench_dir.join(&name);
    let stripped = bench_dir.join(format!("{name}-stripped"));
    if plain.exists() && stripped.exists() {
        return Ok((plain, stripped));
    }
    let src = bench_dir.join("gobig-src");
    step(&format!(
        "generating a Go program with {PACKAGES} packages × {FUNCS_PER_PACKAGE} functions in {}",
        src.display()
    ));
    generate(&src)?;
    for (out, ldflags) in [(&plain, None), (&stripped, Some("-s -w"))] {
        step(&format!(
            "building {} with Go {version} (a few minutes on 2 cores)",
            out.display()
        ));
        let tmp = out.with_extension("tmp");
        let mut cmd = Command::new(go);
        cmd.current_dir(&src)
            .env("GOTOOLCHAIN", "local")
            .env("GOPROXY", "off")
            .env("CGO_ENABLED", "0")
            .env("GOCACHE", cache_dir().join("gocache"))
            .arg("build");
        if let Some(f) = ldflags {
            cmd.arg(format!("-ldflags={f}"));
        }
        run(cmd.arg("-o").arg(&tmp).arg("."))?;
        std::fs::rename(&tmp, out)?;
    }
    Ok((plain, stripped))
}

/// Writes the program: `main` plus `PACKAGES` packages of
/// `FUNCS_PER_PACKAGE` functions each (maps, slices, fmt, sort, strings and
/// a small inlined helper, so code, pclntab, inline trees and DWARF all
/// grow), all reachable from `main` so the linker keeps them. `main` also
/// uses the sync and map runtime paths tracer probes.
fn generate(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("go.mod"), "module benchbig\n\ngo 1.22\n")?;

    let mut main = String::from("package main\n\nimport (\n\t\"fmt\"\n\t\"os\"\n\t\"sync\"\n");
    for k in 0..PACKAGES {
        writeln!(main, "\tp{k:04} \"benchbig/p{k:04}\"")?;
    }
    main.push_str(MAIN_BODY);
    for k in 0..PACKAGES {
        writeln!(main, "\ts += p{k:04}.Run(n)")?;
    }
    main.push_str("\tfmt.Println(s)\n}\n");
    std::fs::write(dir.join("main.go"), main)?;

    for k in 0..PACKAGES {
        let pkg = dir.join(format!("p{k:04}"));
        std::fs::create_dir_all(&pkg)?;
        let mut s = format!("package p{k:04}\n{PACKAGE_HEADER}");
        for i in 0..FUNCS_PER_PACKAGE {
            let c = k * FUNCS_PER_PACKAGE + i;
            write!(
                s,
                r#"
func F{i}(n int) int {{
	r := &rec{{id: n + {c}, name: fmt.Sprint("p{k}.F{i}", n), m: map[string]int{{}}}}
	for i := 0; i < n%{m7}+1; i++ {{
		r.add(i * {m97})
		r.m[r.name] += i
	}}
	sort.Ints(r.vals)
	if strings.HasPrefix(r.name, "q{i}") {{
		return len(r.vals) + {c}
	}}
	s := 0
	for _, v := range r.vals {{
		s = mix(s, v) + {m13}
	}}
	switch s % 5 {{
	case 0:
		s += {m11}
	case 1:
		s -= len(r.m)
	case 2:
		s ^= {m17}
	default:
		s = mix(s, {m23})
	}}
	return s
}}
"#,
                m7 = i % 7 + 2,
                m97 = c % 97 + 1,
                m13 = i % 13,
                m11 = c % 11,
                m17 = c % 17,
                m23 = c % 23,
            )?;
        }
        s.push_str("\nvar Funcs = []func(int) int{");
        for i in 0..FUNCS_PER_PACKAGE {
            if i > 0 {
                s.push_str(", ");
            }
            write!(s, "F{i}")?;
        }
        s.push_str(PACKAGE_FOOTER);
        std::fs::write(pkg.join("f.go"), s)?;
    }
    Ok(())
}

const PACKAGE_HEADER: &str = r#"
import (
	"fmt"
	"sort"
	"strings"
)

type rec struct {
	id   int
	name string
	vals []int
	m    map[string]int
}

func mix(a, b int) int { return a*31 ^ b }

func (r *rec) add(v int) { r.vals = append(r.vals, mix(v, r.id)) }
"#;

const PACKAGE_FOOTER: &str = "}

func Run(n int) int {
	s := 0
	for _, f := range Funcs {
		s += f(n)
	}
	return s
}
";

const MAIN_BODY: &str = r#")

var (
	mu   sync.Mutex
	rw   sync.RWMutex
	sm   sync.Map
	seen = map[string]int{}
)

func main() {
	n := len(os.Args)
	s := 0
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			mu.Lock()
			seen[fmt.Sprint(g)]++
			mu.Unlock()
			rw.RLock()
			s0 := seen["x"]
			rw.RUnlock()
			rw.Lock()
			delete(seen, fmt.Sprint(s0))
			rw.Unlock()
			sm.Store(g, n)
			sm.Load(g)
			sm.LoadOrStore(g+1, n)
			sm.Swap(g, n+1)
			sm.Range(func(k, v any) bool { return true })
		}()
	}
	wg.Wait()
	for k, v := range seen {
		s += len(k) + v
	}
	clear(seen)
"#;
