//! Running commands with their output shown, and the paths every task shares.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// Prints a step heading, so a long setup says what it is doing.
pub fn step(msg: &str) {
    eprintln!("==> {msg}");
}

/// Runs `cmd`, failing with its command line when it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout, or None if it cannot start or fails.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The repository root (xtask lives one level below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| ".".into())
}

/// tracer's cache, outside the repository: `$TRACER_CACHE_DIR` or `~/.cache/tracer`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TRACER_CACHE_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache").join("tracer")
}

/// `cargo` as invoked by the user (respects `$CARGO`).
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(repo_root());
    c
}

/// Builds the release `tracer` binary and returns its path.
pub fn build_tracer() -> Result<()> {
    step(
        "building tracer (release; build.rs compiles the eBPF programs with nightly + bpf-linker)",
    );
    run(cargo().args(["build", "--release", "-p", "tracer-user", "--bin", "tracer"]))
}

/// Path of the release `tracer` binary.
pub fn tracer_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    target.join("release").join("tracer")
}

/// `$PATH` with the bpf-linker that setup installs in front.
pub fn path_with_bpf_linker() -> std::ffi::OsString {
    let mut paths = vec![cache_dir().join("bpf-linker/bin")];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(paths).unwrap_or_default()
}
