//! What the tests read from /proc: a process's memory and open files, the
//! kernel's own TCP counters (ground truth for retransmits), the cgroup v2
//! mount, and fresh kernel UUIDs for realistic pod and container ids.

use std::{fs, path::PathBuf};

use anyhow::{Context, Result};

/// A UUID from the kernel's generator: a fresh, realistic pod UID per call.
pub fn kernel_uuid() -> Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/random/uuid")
        .context("reading /proc/sys/kernel/random/uuid")?
        .trim()
        .to_owned())
}

/// A 64-hex container id made of two kernel UUIDs.
pub fn container_id() -> Result<String> {
    Ok(format!("{}{}", kernel_uuid()?, kernel_uuid()?).replace('-', ""))
}

/// Mount point of the cgroup v2 hierarchy: `/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones, None when none is mounted. Taken
/// from the mount table rather than assumed.
pub fn cgroup2_mount() -> Result<Option<PathBuf>> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    Ok(mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    }))
}

/// The kB value of `key` (e.g. `VmRSS`, `VmHWM`) in `/proc/<pid>/status`.
pub fn status_kb(pid: u32, key: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {key} in /proc/{pid}/status"))
}

/// Resident set size of `pid` in kB.
pub fn rss_kb(pid: u32) -> Result<u64> {
    status_kb(pid, "VmRSS")
}

/// Kernel memory of the BPF maps `pid` holds open, in bytes: the sum of
/// `memlock` over its map fds' `fdinfo` (what the kernel charges to the
/// holder's memory cgroup; for maps allocated per entry, what is in use).
/// A map held by several fds (a table shared by several objects) counts
/// once, by its `map_id`.
pub fn bpf_map_memlock(pid: u32) -> Result<u64> {
    let mut total = 0;
    let mut seen = std::collections::HashSet::new();
    for fd in fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd"))?
        .flatten()
    {
        let is_map =
            fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().contains("bpf-map"));
        if !is_map {
            continue;
        }
        let info = fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let id = info.lines().find_map(|l| l.strip_prefix("map_id:"));
        if let Some(id) = id
            && !seen.insert(id.trim().to_owned())
        {
            continue;
        }
        total += info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// Open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> Result<usize> {
    Ok(fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("reading /proc/{pid}/fd"))?
        .count())
}

/// The kernel's own count of retransmitted segments in this thread's network
/// namespace (`Tcp: RetransSegs` in /proc/net/snmp): the ground truth that
/// bounds the retransmits tracer may report (a loaded machine can retransmit
/// even on loopback, e.g. tail-loss probes).
pub fn retrans_segs() -> Result<u64> {
    retrans_segs_of(&fs::read_to_string("/proc/net/snmp").context("reading /proc/net/snmp")?)
}

/// `Tcp: RetransSegs` from the text of a `/proc/net/snmp` (the kernel's own
/// count of retransmitted segments, for the namespace that read it).
pub fn retrans_segs_of(snmp: &str) -> Result<u64> {
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (
        tcp.next().context("no Tcp: header")?,
        tcp.next().context("no Tcp: values")?,
    );
    let i = names
        .split_whitespace()
        .position(|n| n == "RetransSegs")
        .context("no RetransSegs")?;
    values
        .split_whitespace()
        .nth(i)
        .context("short Tcp: line")?
        .parse()
        .context("RetransSegs")
}
