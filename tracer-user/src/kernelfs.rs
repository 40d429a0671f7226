//! tracefs and bpffs: tracer mounts them when they are missing (a fresh node often
//! has neither), and otherwise fails with the command that would fix it.

use std::{ffi::CString, fs, path::Path};

use anyhow::{Context, Result, bail};

pub const TRACEFS: &str = "/sys/kernel/tracing";
pub const BPFFS: &str = "/sys/fs/bpf";

/// True when a filesystem of type `fstype` is mounted at `target`, per `/proc/self/mounts`.
pub fn is_mounted(mounts: &str, target: &str, fstype: &str) -> bool {
    mounts.lines().any(|l| {
        let mut f = l.split_ascii_whitespace();
        let (_src, dst, ty) = (f.next(), f.next(), f.next());
        dst == Some(target) && ty == Some(fstype)
    })
}

fn mount(fstype: &str, target: &str) -> Result<()> {
    let t = CString::new(target)?;
    let f = CString::new(fstype)?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(f.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mount -t {fstype} {fstype} {target}"));
    }
    Ok(())
}

/// Makes sure `fstype` is mounted at `target`, mounting it if needed.
pub fn ensure(fstype: &str, target: &str) -> Result<()> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    if is_mounted(&mounts, target, fstype) {
        return Ok(());
    }
    if !Path::new(target).is_dir() {
        bail!("{fstype} is not available: {target} does not exist (kernel built without it?)");
    }
    mount(fstype, target).with_context(|| {
        format!("{fstype} is not mounted at {target} and mounting it failed; mount it with `mount -t {fstype} {fstype} {target}`")
    })
}

/// tracefs is needed for uprobe/tracepoint events on kernels without the perf PMUs,
/// and for every tracepoint; mount it once up front.
pub fn ensure_tracefs() -> Result<()> {
    ensure("tracefs", TRACEFS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mounts() {
        let m = "tracefs /sys/kernel/tracing tracefs rw 0 0\nbpf /sys/fs/bpf bpf rw 0 0\n";
        assert!(is_mounted(m, TRACEFS, "tracefs"));
        assert!(is_mounted(m, BPFFS, "bpf"));
        assert!(!is_mounted(m, "/sys/kernel/debug", "debugfs"));
        assert!(!is_mounted("garbage", TRACEFS, "tracefs"));
    }
}
