//! Checks, before anything is loaded, that this process may use BPF and uprobes,
//! so that a missing capability is named instead of surfacing as a bare EPERM.

use std::fs;

use anyhow::{Result, bail};

const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capability set of this process, from `/proc/self/status`.
fn effective_caps() -> Result<u64> {
    let status = fs::read_to_string("/proc/self/status")?;
    parse_cap_eff(&status).ok_or_else(|| anyhow::anyhow!("no CapEff line in /proc/self/status"))
}

/// Parses the `CapEff:` hex mask of a `/proc/PID/status` text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// Names of the capabilities tracer needs that `caps` lacks. CAP_SYS_ADMIN
/// stands in for both on kernels that predate CAP_BPF/CAP_PERFMON.
pub fn missing_caps(caps: u64) -> Vec<&'static str> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) {
        return vec![];
    }
    let mut missing = vec![];
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    missing
}

/// Fails with the names of the missing capabilities.
pub fn check() -> Result<()> {
    let caps = effective_caps()?;
    let missing = missing_caps(caps);
    if !missing.is_empty() {
        bail!(
            "tracer needs {} to load eBPF programs and attach uprobes (run as root, or grant them with `setcap cap_bpf,cap_perfmon+ep`)",
            missing.join(" and ")
        );
    }
    if caps & (1u64 << CAP_SYS_ADMIN) == 0 {
        // Linux 6.16 (and the stable kernels that took the fix for
        // CVE-2025-38466) require CAP_SYS_ADMIN for uprobes again.
        tracing::warn!(
            "running without CAP_SYS_ADMIN: kernels since 6.16 (and 5.10.240, 5.15.189, 6.1.146, 6.6.99, 6.12.39, 6.15.7) refuse uprobes without it (perf_event_open: Permission denied)"
        );
    }
    Ok(())
}

/// For the agent, which opens the binaries of every user's processes:
/// without CAP_SYS_PTRACE the kernel lets it open `/proc/PID/exe` only for
/// processes of its own user that hold no capability it lacks, so the rest
/// would go untraced in silence.
pub fn warn_without_ptrace() {
    if let Ok(caps) = effective_caps()
        && caps & (1u64 << CAP_SYS_PTRACE) == 0
    {
        tracing::warn!(
            "running without CAP_SYS_PTRACE: processes of other users, or with capabilities the agent lacks, cannot be traced (their executables cannot be opened); they are counted as processes_unreadable"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_everything() {
        assert!(missing_caps(0x000001ffffffffff).is_empty());
    }

    #[test]
    fn names_each_missing_capability() {
        assert_eq!(missing_caps(0), vec!["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(missing_caps(1 << CAP_BPF), vec!["CAP_PERFMON"]);
        assert_eq!(missing_caps(1 << CAP_PERFMON), vec!["CAP_BPF"]);
        assert!(missing_caps((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
    }

    #[test]
    fn parses_status() {
        let s = "Name:\tx\nCapPrm:\t0\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(s), Some(0x1ffffffffff));
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
        assert_eq!(parse_cap_eff(""), None);
    }
}
