//! The Go toolchains setup installs, and building the Go programs in
//! `tests/fixtures` with them (benchmarks and the demo).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{
    setup::GO_VERSIONS,
    shell::{cache_dir, repo_root, run},
};

/// The newest Go toolchain setup installs: its version and its `go`.
pub(crate) fn newest_go() -> Result<(&'static str, PathBuf)> {
    let newest = GO_VERSIONS.last().context("no Go version")?;
    Ok((newest, cache_dir().join("go").join(newest).join("bin/go")))
}

/// Builds the Go program in `tests/fixtures/<fixture>` to `out`, with `-race`
/// (and cgo, which the race detector needs) when `race` is set.
pub(crate) fn build_go(go: &Path, fixture: &str, out: &Path, race: bool) -> Result<()> {
    let mut cmd = Command::new(go);
    cmd.current_dir(repo_root().join("tests/fixtures").join(fixture))
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", if race { "1" } else { "0" })
        .env("GOCACHE", cache_dir().join("gocache"))
        .arg("build");
    if race {
        cmd.arg("-race");
    }
    run(cmd.arg("-o").arg(out).arg("."))
}
