//! `tracer_user::process::cgroup` against real kernel objects: real cgroups named the way
//! the kubelet and containerd name them, a real process moved into them, and
//! the kernel's own `/proc/PID/cgroup` and `/proc/PID/status` read back.
//!
//! Needs root. The trees are created under a test-specific top directory
//! (`tracer-test-<pid>`), so a real kubelet's `kubepods` tree on the same host
//! is never touched; the parser finds the kubepods names below any prefix (as
//! on kind nodes).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use tracer_tests::{
    privileged_test,
    procfs::{cgroup2_mount, container_id, kernel_uuid},
    serial,
};
use tracer_user::process::cgroup;

fn mount(args: &[&str], target: &Path) -> Result<()> {
    let out = Command::new("mount").args(args).arg(target).output()?;
    ensure!(
        out.status.success(),
        "mount {args:?} {}: {}",
        target.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A process in a new pid namespace (so its NSpid has two levels), moved into
/// a cgroup tree built level by level; everything is undone on drop, deepest
/// first.
struct Placed {
    unshare: Child,
    /// The namespaced process (pid 1 of its namespace), as the host sees it.
    pid: u32,
    dirs: Vec<PathBuf>,
    unmount: Option<PathBuf>,
}

impl Placed {
    fn new(root: &Path, levels: &[String], unmount: Option<PathBuf>) -> Result<Self> {
        let unshare = Command::new("unshare")
            .args(["--pid", "--fork", "sleep", "30"])
            .spawn()
            .context("starting `unshare --pid --fork sleep 30`")?;
        let mut placed = Placed {
            pid: 0,
            unshare,
            dirs: Vec::new(),
            unmount,
        };
        let dir = placed.mkdirs(root, levels)?;
        placed.pid = child_of(placed.unshare.id())?;
        fs::write(dir.join("cgroup.procs"), placed.pid.to_string())
            .with_context(|| format!("moving pid {} into {}", placed.pid, dir.display()))?;
        Ok(placed)
    }
}

impl Placed {
    /// Creates `root/levels...` one level at a time (levels that exist are
    /// shared with an earlier tree) and returns the deepest directory.
    fn mkdirs(&mut self, root: &Path, levels: &[String]) -> Result<PathBuf> {
        let mut dir = root.to_path_buf();
        for level in levels {
            dir.push(level);
            if !dir.is_dir() {
                fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
                self.dirs.push(dir.clone());
            }
        }
        Ok(dir)
    }

    /// `/proc/PID/cgroup` of the placed process as read by a process that sits
    /// in the cgroup `root/levels...` and in a cgroup namespace rooted there:
    /// the view of an agent running in a pod (Kubernetes gives every container
    /// a private cgroup namespace on cgroup v2).
    fn read_from_namespace(&mut self, root: &Path, levels: &[String]) -> Result<String> {
        let reader_cgroup = self.mkdirs(root, levels)?;
        let out = Command::new("sh")
            .args([
                "-c",
                "echo $$ > \"$1/cgroup.procs\" && exec unshare --cgroup cat \"/proc/$2/cgroup\"",
                "sh",
            ])
            .arg(&reader_cgroup)
            .arg(self.pid.to_string())
            .output()?;
        ensure!(
            out.status.success(),
            "reading from a cgroup namespace: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        // Killing unshare's child (pid 1 of its namespace) ends the namespace;
        // unshare then exits and is reaped here.
        if self.pid != 0 {
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        for dir in self.dirs.iter().rev() {
            // The killed process leaves its cgroup asynchronously; retry briefly.
            let deadline = Instant::now() + Duration::from_secs(5);
            while let Err(e) = fs::remove_dir(dir) {
                if Instant::now() > deadline {
                    eprintln!("cleanup: rmdir {}: {e}", dir.display());
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some(m) = &self.unmount {
            let _ = Command::new("umount").arg(m).status();
            let _ = fs::remove_dir(m);
        }
    }
}

/// The single child of `pid` (unshare's forked process), waiting for the fork.
fn child_of(pid: u32) -> Result<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        if let Some(c) = text.split_whitespace().next() {
            return c.parse().with_context(|| format!("{path}: {text:?}"));
        }
        if Instant::now() > deadline {
            bail!("unshare (pid {pid}) did not fork");
        }
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn cgroup_v2_systemd_driver_containerd() -> Result<()> {
    privileged_test!();
    let _guard = serial();
    // Unified hosts mount v2 at /sys/fs/cgroup, hybrid ones at
    // /sys/fs/cgroup/unified; a host with v1 only gets a private v2 mount of the
    // same (single, kernel-wide) v2 hierarchy.
    let (root, unmount) = match cgroup2_mount()? {
        Some(m) => (m, None),
        None => {
            let m = std::env::temp_dir().join(format!("tracer-cg2-{}", std::process::id()));
            fs::create_dir_all(&m)?;
            mount(&["-t", "cgroup2", "none"], &m)?;
            (m.clone(), Some(m))
        }
    };
    eprintln!("cgroup v2 hierarchy at {}", root.display());
    let uid = kernel_uuid()?;
    let id = container_id()?;
    let pod_slice = format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_"));
    let levels = vec![
        format!("tracer-test-{}.slice", std::process::id()),
        "kubepods.slice".to_string(),
        "kubepods-burstable.slice".to_string(),
        pod_slice.clone(),
        format!("cri-containerd-{id}.scope"),
    ];
    let mut placed = Placed::new(&root, &levels, unmount)?;

    // Ground truth: the kernel's own file names the cgroup we built.
    let raw = fs::read_to_string(format!("/proc/{}/cgroup", placed.pid))?;
    let v2_line = raw
        .lines()
        .find(|l| l.starts_with("0::"))
        .context("no v2 line")?;
    assert!(v2_line.ends_with(&levels.join("/")), "{raw}");

    let r = cgroup::for_pid(placed.pid)?;
    assert_eq!(r.pod_uid.as_deref(), Some(uid.as_str()), "{raw}");
    assert_eq!(r.container_id.as_deref(), Some(id.as_str()), "{raw}");
    assert_eq!(r.runtime, Some("containerd"));
    assert_eq!(r.qos, Some("burstable"));
    assert_eq!(r.cgroup_path, v2_line.trim_start_matches("0::"));

    // Host pid first, then 1: pid 1 of the namespace unshare created.
    assert_eq!(cgroup::ns_pids_for_pid(placed.pid)?, vec![placed.pid, 1]);

    // The test process itself sits in no pod.
    let me = cgroup::for_pid(std::process::id())?;
    assert_eq!((me.pod_uid, me.container_id), (None, None));

    // As an agent in a guaranteed pod sees it: the path climbs out of its own
    // container cgroup with `..` and never names kubepods.slice.
    let agent = [
        levels[0].clone(),
        levels[1].clone(),
        format!("kubepods-pod{}.slice", kernel_uuid()?.replace('-', "_")),
        format!("cri-containerd-{}.scope", container_id()?),
    ];
    let seen = placed.read_from_namespace(&root, &agent)?;
    assert!(
        seen.contains("0::/../../kubepods-burstable.slice/"),
        "{seen}"
    );
    let r = cgroup::parse(&seen);
    assert_eq!(r.pod_uid.as_deref(), Some(uid.as_str()), "{seen}");
    assert_eq!(r.container_id.as_deref(), Some(id.as_str()), "{seen}");
    assert_eq!(r.qos, Some("burstable"));
    Ok(())
}

/// cgroupfs driver (`/kubepods/besteffort/pod<uid>/<id>`) on a v1 hierarchy.
/// A named hierarchy without controllers can be mounted on any kernel, v2-only
/// hosts included, and shows up as its own line in /proc/PID/cgroup next to the
/// `0::` line, as on a hybrid host.
#[test]
fn cgroup_v1_cgroupfs_driver() -> Result<()> {
    privileged_test!();
    let _guard = serial();
    let name = format!("tracertest{}", std::process::id());
    let m = std::env::temp_dir().join(format!("tracer-cg1-{}", std::process::id()));
    fs::create_dir_all(&m)?;
    mount(
        &["-t", "cgroup", "-o", &format!("none,name={name}"), "cgroup"],
        &m,
    )
    .context("mounting a named cgroup v1 hierarchy")?;
    let uid = kernel_uuid()?;
    let id = container_id()?;
    let levels = vec![
        format!("tracer-test-{}", std::process::id()),
        "kubepods".to_string(),
        "besteffort".to_string(),
        format!("pod{uid}"),
        id.clone(),
    ];
    let mut placed = Placed::new(&m, &levels, Some(m.clone()))?;

    let raw = fs::read_to_string(format!("/proc/{}/cgroup", placed.pid))?;
    let line = raw
        .lines()
        .find(|l| l.contains(&format!(":name={name}:")))
        .with_context(|| format!("no line for the named hierarchy:\n{raw}"))?;
    let path = line.rsplit(':').next().unwrap_or_default();
    assert_eq!(path, format!("/{}", levels.join("/")), "{raw}");

    let r = cgroup::for_pid(placed.pid)?;
    assert_eq!(r.pod_uid.as_deref(), Some(uid.as_str()), "{raw}");
    assert_eq!(r.container_id.as_deref(), Some(id.as_str()), "{raw}");
    // The cgroupfs driver does not name the runtime.
    assert_eq!(r.runtime, None);
    assert_eq!(r.qos, Some("besteffort"));
    assert_eq!(r.cgroup_path, path);

    // From inside a burstable pod's cgroup namespace `kubepods` is above the
    // root: the pod and container are still found, and so is the QoS level,
    // because the path climbs back down through it.
    let agent = [
        levels[0].clone(),
        levels[1].clone(),
        "burstable".to_string(),
        format!("pod{}", kernel_uuid()?),
        container_id()?,
    ];
    let seen = placed.read_from_namespace(&m, &agent)?;
    let expect = format!(":/../../../besteffort/pod{uid}/{id}");
    assert!(seen.contains(&expect), "{seen}");
    let r = cgroup::parse(&seen);
    assert_eq!(r.pod_uid.as_deref(), Some(uid.as_str()), "{seen}");
    assert_eq!(r.container_id.as_deref(), Some(id.as_str()), "{seen}");
    assert_eq!(r.qos, Some("besteffort"));
    Ok(())
}
