//! `cargo xtask test`: formatting and lints, unit tests, then the integration
//! tests, which build the Go fixtures with every installed toolchain and run the
//! privileged eBPF tests (they fail, never skip, when eBPF cannot load).

use anyhow::Result;

use crate::shell::{cargo, run, step};

pub fn test(extra: &[String]) -> Result<()> {
    step("cargo fmt --check");
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    step("cargo clippy -D warnings");
    run(cargo().args(["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    step("building tracer for the integration tests");
    run(cargo().args(["build", "-p", "tracer-user", "--bin", "tracer"]))?;
    step("cargo test (unit + integration)");
    run(cargo().args(["test", "--workspace"]).args(extra))
}
