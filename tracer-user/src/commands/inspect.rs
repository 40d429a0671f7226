//! `tracer inspect BINARY | --pid PID`: what tracer sees in a Go binary.
//! `tracer inspect --kernel`: what the running kernel offers TCP tracing.

use std::path::Path;

use anyhow::{Context, Result};

use crate::{gobin::GoBinary, process::procfs};

pub fn inspect(binary: Option<&Path>, pid: Option<u32>, json: bool) -> Result<()> {
    let (bin, name) = match (binary, pid) {
        (Some(p), _) => (
            GoBinary::open(p).with_context(|| p.display().to_string())?,
            p.display().to_string(),
        ),
        (None, Some(pid)) => {
            procfs::check_pid(pid)?;
            let link = procfs::exe_link(pid);
            (
                GoBinary::open(&link).with_context(|| format!("pid {pid}"))?,
                procfs::exe_display(pid),
            )
        }
        (None, None) => anyhow::bail!("give a BINARY or --pid PID"),
    };
    let report = crate::gobin::inspect(&bin);
    if json {
        super::print_out(&format!("{}\n", serde_json::to_string_pretty(&report)?))
    } else {
        super::print_out(&format!("{name}\n{report}"))
    }
}

/// Loads the eBPF object and tries the TCP hooks in the configured order,
/// exactly as `run`/`attach` would, then reports the outcome of each.
pub fn inspect_kernel(json: bool, tcp: &crate::tcp::TcpOptions) -> Result<()> {
    let mut tracer = crate::ebpf::Tracer::load_with(true)?;
    let report = crate::tcp::inspect_kernel(&mut tracer, tcp)?;
    if json {
        super::print_out(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        super::print_out(&report.to_string())?;
    }
    Ok(())
}
