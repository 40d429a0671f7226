//! `cargo xtask demo`: build tracer and the bundled demo service, then trace it live.
//!
//! On a terminal it runs until Ctrl-C; otherwise (CI, pipes) the demo stops
//! itself after a few refreshes and the task exits 0.

use std::{io::IsTerminal, process::Command};

use anyhow::{Context, Result, bail};

use crate::{
    go::{build_go, newest_go},
    shell::{build_tracer, cache_dir, step, tracer_bin},
};

pub fn demo() -> Result<()> {
    build_tracer()?;
    let (newest, go) = newest_go()?;
    let out = cache_dir().join("demo").join(format!("demo-go{newest}"));
    step(&format!("building the demo service with Go {newest}"));
    build_go(&go, "demo", &out, false)?;

    let interactive = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    // The demo service runs until killed; `tracer top` embeds an agent that
    // finds it (and every other Go process here) and shows it live.
    let mut service = Command::new(&out)
        .args(["-duration", "0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting the demo service")?;
    step(if interactive {
        "tracer top on the demo service (Tab/←/→ switch tabs, Enter details, ? help, q quits)"
    } else {
        "not a terminal: tracer top prints 3 rounds of tables, 2 s apart, then exits"
    });
    let mut top = Command::new(tracer_bin());
    top.arg("top");
    if !interactive {
        top.args(["--count", "3", "--interval", "2s"]);
    }
    let status = top.status().context("starting tracer top");
    let _ = service.kill();
    let _ = service.wait();
    let status = status?;
    if !status.success() {
        bail!("demo failed: tracer top exited with {status}");
    }
    Ok(())
}
