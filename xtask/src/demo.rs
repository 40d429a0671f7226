//! `cargo xtask demo`: build tracer and the bundled demo service, then trace it live.
//!
//! On a terminal it runs until Ctrl-C; otherwise (CI, pipes) the demo stops
//! itself after a few refreshes and the task exits 0.

use std::{io::IsTerminal, process::Command};

use anyhow::{Context, Result, bail};

use crate::{
    setup::GO_VERSIONS,
    shell::{build_tracer, cache_dir, repo_root, run, step, tracer_bin},
};

pub fn demo() -> Result<()> {
    build_tracer()?;
    let newest = GO_VERSIONS.last().context("no Go version configured")?;
    let go = cache_dir().join("go").join(newest).join("bin/go");
    let out = cache_dir().join("demo").join(format!("demo-go{newest}"));
    step(&format!("building the demo service with Go {newest}"));
    run(Command::new(&go)
        .current_dir(repo_root().join("tests/fixtures/demo"))
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", cache_dir().join("gocache"))
        .arg("build")
        .arg("-o")
        .arg(&out)
        .arg("."))?;

    let interactive = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    let duration = if interactive { "0" } else { "5s" };
    step(if interactive {
        "tracing the demo live (Ctrl-C to stop and print the report)"
    } else {
        "tracing the demo for 5s (not a terminal: a few refreshes, then the report)"
    });
    let status = Command::new(tracer_bin())
        .args(["run", "--live", "--interval", "1s", "--top", "10", "--"])
        .arg(&out)
        .args(["-duration", duration])
        .status()
        .context("starting tracer")?;
    // Interrupted by Ctrl-C on a terminal is how the live demo ends.
    if !(status.success() || interactive && status.code() == Some(130)) {
        bail!("demo failed: tracer exited with {status}");
    }
    Ok(())
}
