//! The Go fixture programs: finding the toolchains that `cargo xtask setup`
//! installed, building `tests/fixtures/<name>` with them, and reading what a
//! fixture says about itself (marker lines in its source, its `done k=v`
//! result line).
//!
//! Builds are cached outside the repository (`~/.cache/tracer/fixtures`), keyed
//! by Go version, variant and the fixture's source hash, so re-running the
//! tests does not rebuild anything.

use std::{
    collections::hash_map::DefaultHasher,
    fs,
    hash::{Hash, Hasher},
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

use anyhow::{Context, Result, bail};

/// One Go toolchain installed under the cache directory.
#[derive(Debug, Clone)]
pub struct GoToolchain {
    /// Version as installed, e.g. `1.25.5`.
    pub version: String,
    /// Path of the `go` command.
    pub go: PathBuf,
}

impl GoToolchain {
    /// (major, minor) of the version, e.g. (1, 25).
    pub fn minor(&self) -> (u32, u32) {
        let mut it = self
            .version
            .split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0));
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    }

    /// True for Go versions whose runtime uses Swiss-table maps by default (1.24+).
    pub fn swiss_maps(&self) -> bool {
        self.minor() >= (1, 24)
    }

    /// Whether `GOEXPERIMENT=noswissmap` ([`Variant::NoSwiss`]) builds with this
    /// Go: only 1.24 and 1.25 (tried here: 1.21–1.23 and 1.26+ fail with
    /// "unknown GOEXPERIMENT swissmap"; 1.26 removed the classic maps).
    pub fn supports_noswissmap(&self) -> bool {
        ((1, 24)..=(1, 25)).contains(&self.minor())
    }
}

/// How a fixture binary is built; each is a kind of binary users run in production.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// `go build`: symbols and DWARF present, static, not PIE.
    Plain,
    /// `-ldflags="-s -w"`: no .symtab, no DWARF; only .gopclntab remains.
    Stripped,
    /// `-buildmode=pie`.
    Pie,
    /// `CGO_ENABLED=1 -ldflags=-linkmode=external`: linked by the system linker.
    Cgo,
    /// `GOARCH=arm64`, for analysis only (it cannot run here).
    Arm64,
    /// Cgo and `-buildmode=pie`, externally linked: the layout where older Go
    /// puts the pclntab inside `.data.rel.ro`; not in [`Variant::ALL`].
    CgoPie,
    /// `GOEXPERIMENT=noswissmap`: Go 1.24/1.25 with the classic `hmap` maps
    /// (see [`GoToolchain::supports_noswissmap`]); not in [`Variant::ALL`].
    NoSwiss,
    /// `-race` (with cgo, which it needs): the reference detector; not in
    /// [`Variant::ALL`].
    Race,
}

impl Variant {
    pub const ALL: [Variant; 5] = [
        Variant::Plain,
        Variant::Stripped,
        Variant::Pie,
        Variant::Cgo,
        Variant::Arm64,
    ];

    fn suffix(self) -> &'static str {
        match self {
            Variant::Plain => "plain",
            Variant::Stripped => "stripped",
            Variant::Pie => "pie",
            Variant::Cgo => "cgo",
            Variant::Arm64 => "arm64",
            Variant::CgoPie => "cgopie",
            Variant::NoSwiss => "noswiss",
            Variant::Race => "race",
        }
    }
}

/// Root of tracer's cache: `$TRACER_CACHE_DIR`, else `~/.cache/tracer`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TRACER_CACHE_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache").join("tracer")
}

/// The repository's `tests/fixtures` directory.
pub fn fixtures_src_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// All Go toolchains installed by `cargo xtask setup`, oldest first.
///
/// Fails (it does not return an empty list) when none is installed, so that a test
/// can never pass by testing nothing.
pub fn go_toolchains() -> Result<Vec<GoToolchain>> {
    let dir = cache_dir().join("go");
    let mut out = Vec::new();
    let entries = fs::read_dir(&dir).with_context(|| {
        format!(
            "no Go toolchains in {} (run `cargo xtask setup`)",
            dir.display()
        )
    })?;
    for e in entries {
        let e = e?;
        let go = e.path().join("bin").join("go");
        if go.is_file() {
            out.push(GoToolchain {
                version: e.file_name().to_string_lossy().into_owned(),
                go,
            });
        }
    }
    out.sort_by_key(|t| {
        t.version
            .split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0))
            .collect::<Vec<_>>()
    });
    if out.is_empty() {
        bail!(
            "no Go toolchains in {} (run `cargo xtask setup`)",
            dir.display()
        );
    }
    Ok(out)
}

/// The newest installed toolchain with classic maps (≤ 1.23) and the newest with
/// Swiss maps (≥ 1.24): the pair every behaviour test runs against.
pub fn classic_and_swiss() -> Result<Vec<GoToolchain>> {
    let all = go_toolchains()?;
    let classic = all.iter().rfind(|t| !t.swiss_maps()).cloned();
    let swiss = all.iter().rfind(|t| t.swiss_maps()).cloned();
    match (classic, swiss) {
        (Some(c), Some(s)) => Ok(vec![c, s]),
        _ => bail!(
            "need one Go ≤ 1.23 and one Go ≥ 1.24 installed, have {:?} (run `cargo xtask setup`)",
            all.iter().map(|t| &t.version).collect::<Vec<_>>()
        ),
    }
}

/// Debian's Go 1.19 (`golang-1.19-go`, installed by `cargo xtask setup`): the
/// one Go below 1.21 that a registry has. Kept out of [`go_toolchains`], whose
/// fixtures may use newer language and library features; tests add it where
/// their fixture builds with it. Fails when it is missing, so a test cannot
/// pass by testing nothing.
pub fn debian_go() -> Result<GoToolchain> {
    let go = PathBuf::from("/usr/lib/go-1.19/bin/go");
    let out = Command::new(&go)
        .arg("version")
        .output()
        .with_context(|| format!("no {} (run `cargo xtask setup`)", go.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "go version go1.19.8 linux/amd64"
    let version = text
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.strip_prefix("go"))
        .with_context(|| format!("unexpected `go version` output: {text}"))?
        .to_owned();
    Ok(GoToolchain { version, go })
}

/// The newest installed Go toolchain.
pub fn newest_go() -> Result<GoToolchain> {
    go_toolchains()?
        .pop()
        .context("no Go toolchain installed (run `cargo xtask setup`)")
}

/// `tests/fixtures/<name>` built plain with the newest Go: for tests whose
/// subject is not the Go version.
/// `n` executable copies of `fixture` in `dir`, named `{prefix}{i:02}`:
/// distinct files (inodes), so distinct binaries to the agent.
pub fn distinct_copies(fixture: &Path, dir: &Path, prefix: &str, n: usize) -> Result<Vec<PathBuf>> {
    use std::os::unix::fs::PermissionsExt;
    (0..n)
        .map(|i| {
            let p = dir.join(format!("{prefix}{i:02}"));
            fs::copy(fixture, &p).with_context(|| format!("copying to {}", p.display()))?;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
            Ok(p)
        })
        .collect()
}

pub fn build_newest(name: &str) -> Result<PathBuf> {
    build_fixture(&newest_go()?, name, Variant::Plain)
}

/// The newest installed toolchain that builds [`Variant::NoSwiss`] (Go 1.24
/// or 1.25 with the classic maps). Fails when none is installed, so a test
/// cannot pass by testing nothing.
pub fn newest_noswissmap() -> Result<GoToolchain> {
    let all = go_toolchains()?;
    all.iter()
        .rfind(|t| t.supports_noswissmap())
        .cloned()
        .with_context(|| {
            format!(
                "need a Go 1.24 or 1.25 for GOEXPERIMENT=noswissmap, have {:?} (run `cargo xtask setup`)",
                all.iter().map(|t| &t.version).collect::<Vec<_>>()
            )
        })
}

static BUILD_LOCK: Mutex<()> = Mutex::new(());

fn source_hash(dir: &Path) -> Result<u64> {
    let mut h = DefaultHasher::new();
    let mut files: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("fixture {} not found", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "go" || x == "mod"))
        .collect();
    files.sort();
    for f in files {
        f.file_name().hash(&mut h);
        fs::read(&f)?.hash(&mut h);
    }
    Ok(h.finish())
}

/// Builds `tests/fixtures/<name>` with `tc` as `variant` and returns the binary's path.
/// Cached: a second call with the same sources returns at once.
pub fn build_fixture(tc: &GoToolchain, name: &str, variant: Variant) -> Result<PathBuf> {
    build_go_dir(tc, &fixtures_src_dir().join(name), name, variant)
}

/// Builds the Go `main` package in `src` (plain `.go` files, no dependencies).
pub fn build_go_dir(tc: &GoToolchain, src: &Path, name: &str, variant: Variant) -> Result<PathBuf> {
    let hash = source_hash(src)?;
    let out_dir = cache_dir().join("fixtures").join(&tc.version);
    let out = out_dir.join(format!("{name}-{}-{hash:016x}", variant.suffix()));
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if out.is_file() {
        return Ok(out);
    }
    fs::create_dir_all(&out_dir)?;
    // The cache is shared by every test process on the machine (BUILD_LOCK
    // only serializes this one): each builds into a name of its own, and the
    // rename replaces atomically, so two concurrent builds both succeed.
    let tmp = out.with_extension(format!("tmp-{}", std::process::id()));
    let mut cmd = Command::new(&tc.go);
    cmd.current_dir(src)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GO111MODULE", "on")
        .env("GOCACHE", cache_dir().join("gocache"))
        .env("GOPATH", cache_dir().join("gopath"))
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "0")
        .arg("build")
        .arg("-o")
        .arg(&tmp);
    match variant {
        Variant::Plain => {}
        Variant::Stripped => {
            cmd.arg("-ldflags=-s -w");
        }
        Variant::Pie => {
            cmd.arg("-buildmode=pie");
        }
        Variant::Cgo => {
            cmd.env("CGO_ENABLED", "1")
                .arg("-ldflags=-linkmode=external");
        }
        Variant::Arm64 => {
            cmd.env("GOARCH", "arm64");
        }
        Variant::CgoPie => {
            cmd.env("CGO_ENABLED", "1")
                .args(["-buildmode=pie", "-ldflags=-linkmode=external"]);
        }
        Variant::NoSwiss => {
            cmd.env("GOEXPERIMENT", "noswissmap");
        }
        Variant::Race => {
            cmd.env("CGO_ENABLED", "1").arg("-race");
        }
    }
    cmd.arg(".");
    let output = cmd
        .output()
        .with_context(|| format!("running {}", tc.go.display()))?;
    if !output.status.success() {
        bail!(
            "go {} build of {} ({:?}) failed:\n{}",
            tc.version,
            src.display(),
            variant,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    fs::rename(&tmp, &out)
        .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
    Ok(out)
}

/// 1-based line of the first line in `tests/fixtures/<fixture>/main.go` containing `marker`.
pub fn marker_line(fixture: &str, marker: &str) -> Result<u32> {
    let src = fs::read_to_string(fixtures_src_dir().join(fixture).join("main.go"))?;
    src.lines()
        .position(|l| l.contains(marker))
        .map(|i| i as u32 + 1)
        .with_context(|| format!("marker {marker} not in {fixture}"))
}

/// Parses `key=value` from a fixture's result line (the last line starting `done `).
pub fn fixture_value<T: std::str::FromStr>(stdout: &str, key: &str) -> Result<T> {
    let line = stdout
        .lines()
        .rfind(|l| l.starts_with("done "))
        .with_context(|| format!("fixture printed no result line:\n{stdout}"))?;
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .with_context(|| format!("no {key}= in {line}"))?
        .parse()
        .map_err(|_| anyhow::anyhow!("bad {key}= value in {line}"))
}
