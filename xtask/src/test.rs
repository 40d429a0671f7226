//! `cargo xtask test`: formatting and lints, unit tests, then the integration
//! tests, which build the Go fixtures with every installed toolchain and run the
//! privileged eBPF tests (they fail, never skip, when eBPF cannot load), then
//! `vm-test` (the TCP kprobe/fentry paths on a second kernel).

use std::process::Command;

use anyhow::Result;

use crate::shell::{cargo, path_with_bpf_linker, repo_root, run, step};

pub fn test(extra: &[String]) -> Result<()> {
    step("cargo fmt --check");
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    step("cargo clippy -D warnings (host crates)");
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "tracer-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // tracer-ebpf only builds for the BPF target, so it is linted there, with nightly.
    step("cargo clippy -D warnings (tracer-ebpf, bpfel-unknown-none)");
    run(Command::new("rustup")
        .current_dir(repo_root().join("tracer-ebpf"))
        .env("PATH", path_with_bpf_linker())
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .args(["run", "nightly", "cargo", "clippy", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .args(["--", "-D", "warnings"]))?;
    step("building tracer for the integration tests");
    run(cargo().args(["build", "-p", "tracer-user", "--bin", "tracer"]))?;
    step("cargo test (unit + integration)");
    let mut cmd = cargo();
    // --no-fail-fast: every test binary runs, so one failure does not hide
    // the state of the rest, and the totals line counts every test.
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        "tracer-ebpf",
        "--no-fail-fast",
    ])
    .args(extra);
    summarize(&mut cmd)?;
    // The TCP kprobe/fentry paths cannot run on this host's kernel; they run
    // in a Debian 6.1 guest (~1 min with the kernel cached). Skipped only when
    // a test name filter was given, so a filtered run stays quick.
    if extra.iter().all(|a| a.starts_with('-')) {
        step("cargo xtask vm-test (TCP kprobe + fentry paths on Linux 6.1 under QEMU)");
        crate::vm_test::vm_test()?;
    }
    Ok(())
}

/// Runs `cargo test`, echoing its output, and closes with one line totalling
/// every test binary's result, so the last line speaks for the whole run.
fn summarize(cmd: &mut Command) -> Result<()> {
    use std::io::{BufRead, BufReader};
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            if let Some(rest) = line.strip_prefix("test result: ") {
                let num = |key: &str| {
                    rest.split(';')
                        .find_map(|p| p.trim().strip_suffix(key).map(str::trim))
                        .and_then(|n| n.rsplit(' ').next())
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                passed += num("passed");
                failed += num("failed");
                ignored += num("ignored");
            }
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() {
        anyhow::bail!("cargo test failed: {status}");
    }
    if passed == 0 {
        anyhow::bail!("no test ran");
    }
    Ok(())
}

/// `cargo xtask soak`: the soak test of `tests/tests/soak.rs` at full length.
pub fn soak() -> Result<()> {
    step("building tracer for the soak test");
    run(cargo().args(["build", "-p", "tracer-user", "--bin", "tracer"]))?;
    let secs = std::env::var("TRACER_SOAK_SECS").unwrap_or_else(|_| "600".into());
    step(&format!("agent soak for {secs} s"));
    run(cargo()
        .args([
            "test",
            "-p",
            "tracer-tests",
            "--test",
            "soak",
            "--",
            "--nocapture",
        ])
        .env("TRACER_SOAK_SECS", secs))
}
