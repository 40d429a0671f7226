//! `cargo xtask vm-test`: the TCP kprobe and fentry paths, which this host's
//! kernel cannot run (no kprobes, fentry refused), tested for real inside
//! Debian's packaged Linux 6.1 under QEMU (software emulation: KVM guests hang
//! here, see the platform notes).
//!
//! The guest runs the very test binary of `tests/tests/tcp.rs`, test
//! `go_fixture_flows_match_ground_truth`, once per forced mechanism
//! (`TRACER_TCP_HOOKS=kprobe,tracepoint`, then `fentry,tracepoint`, with
//! `TRACER_TCP_EXPECT` making the test fail unless that mechanism served the
//! state, byte, RTT, reset, accept, connect and destroy hooks), plus `tracer inspect --kernel`, and
//! checks that the tracepoint-only order is refused there (6.1 lacks the
//! send/recv length tracepoints) instead of reporting zero bytes. Each run
//! prints a result marker on the serial console; this task parses them, prints
//! pass/fail per path and fails if any path failed or never reported.
//!
//! Everything it needs is installed idempotently and cached in
//! `~/.cache/tracer/vm`: qemu-system-x86, busybox-static and cpio through
//! apt-get, the kernel package through `apt-get download`.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};

use crate::shell::{cache_dir, cargo, output, repo_root, run, step};

/// Mechanisms forced in the guest, each its own run of the ground-truth test.
const PATHS: [&str; 2] = ["kprobe", "fentry"];
/// RTT modes (`TRACER_TCP_RTT`), each run on every path: `segments` uses
/// the path's `tcp_rcv_established` hook, `calls` its send/recv programs.
const RTT_MODES: [&str; 2] = ["calls", "segments"];

/// Every guest run: (name in the console markers, path, RTT mode).
fn runs() -> Vec<(String, &'static str, &'static str)> {
    PATHS
        .iter()
        .flat_map(|p| {
            RTT_MODES
                .iter()
                .map(move |r| (format!("{p} rtt={r}"), *p, *r))
        })
        .collect()
}
/// Kernel series tested: Debian 12's, before the 6.3 send/recv tracepoints.
const KERNEL_PREFIX: &str = "linux-image-6.1.0-";
/// The whole guest run, boot to power-off, must finish within this.
const GUEST_TIMEOUT: Duration = Duration::from_secs(900);
const TEST_NAME: &str = "go_fixture_flows_match_ground_truth";

fn vm_dir() -> PathBuf {
    cache_dir().join("vm")
}

/// Installs the Debian packages the guest image needs, if missing.
fn ensure_packages() -> Result<()> {
    let missing: Vec<&str> = [
        ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
        ("busybox-static", "/bin/busybox"),
        ("cpio", "/usr/bin/cpio"),
    ]
    .into_iter()
    .filter(|(_, bin)| !Path::new(bin).exists())
    .map(|(pkg, _)| pkg)
    .collect();
    if missing.is_empty() {
        step("vm-test: qemu-system-x86, busybox-static, cpio present");
        return Ok(());
    }
    step(&format!("vm-test: apt-get install {}", missing.join(" ")));
    let install = || {
        run(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing))
    };
    if install().is_err() {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        install()?;
    }
    // busybox (non-static) can shadow busybox-static's binary; check it is static.
    let file = output(Command::new("file").arg("-L").arg("/bin/busybox")).unwrap_or_default();
    ensure!(
        !file.contains("dynamically linked"),
        "/bin/busybox is dynamically linked; install busybox-static"
    );
    Ok(())
}

/// The newest cached, else the newest available, Debian 6.1 kernel image:
/// returns the path of its vmlinuz.
fn ensure_kernel() -> Result<PathBuf> {
    let root = vm_dir().join("kernel");
    let find = |root: &Path| -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = fs::read_dir(root.join("boot"))
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-6.1.0-"))
            })
            .collect();
        found.sort();
        found.pop()
    };
    if let Some(k) = find(&root) {
        step(&format!("vm-test: kernel {} (cached)", k.display()));
        return Ok(k);
    }
    let search = |()| {
        output(Command::new("apt-cache").args([
            "search",
            "--names-only",
            &format!("^{}[0-9]+-amd64$", KERNEL_PREFIX.replace('.', "\\.")),
        ]))
        .unwrap_or_default()
    };
    let mut list = search(());
    if list.trim().is_empty() {
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        list = search(());
    }
    let newest = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|p| {
            let n: u32 = p
                .strip_prefix(KERNEL_PREFIX)?
                .strip_suffix("-amd64")?
                .parse()
                .ok()?;
            Some((n, p.to_owned()))
        })
        .max()
        .map(|(_, p)| p)
        .context("apt-cache finds no linux-image-6.1.0-N-amd64 package")?;
    step(&format!("vm-test: apt-get download {newest}"));
    let dl = vm_dir().join("download");
    let _ = fs::remove_dir_all(&dl);
    fs::create_dir_all(&dl)?;
    run(Command::new("apt-get")
        .current_dir(&dl)
        .args(["download", &newest]))?;
    let deb = fs::read_dir(&dl)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    let tmp = vm_dir().join("kernel.tmp");
    let _ = fs::remove_dir_all(&tmp);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
    // Only the kernel image is needed: everything the test uses is built in.
    let _ = fs::remove_dir_all(tmp.join("lib"));
    let _ = fs::remove_dir_all(&root);
    fs::rename(&tmp, &root)?;
    let _ = fs::remove_dir_all(&dl);
    find(&root).context("the kernel package holds no boot/vmlinuz-6.1.0-*")
}

/// Builds the test binary of `tests/tests/tcp.rs` and `tracer`; returns both paths.
fn build_binaries() -> Result<(PathBuf, PathBuf)> {
    step("vm-test: building the tcp test binary and tracer");
    run(cargo().args(["build", "-p", "tracer-user", "--bin", "tracer"]))?;
    let out = cargo()
        .args(["test", "-p", "tracer-tests", "--test", "tcp", "--no-run"])
        .args(["--message-format", "json"])
        .stderr(Stdio::inherit())
        .output()
        .context("cargo test --no-run")?;
    ensure!(out.status.success(), "building the tcp test binary failed");
    let mut exe = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact"
            && v["target"]["name"] == "tcp"
            && let Some(p) = v["executable"].as_str()
        {
            exe = Some(PathBuf::from(p));
        }
    }
    let exe = exe.context("cargo reported no tcp test executable")?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    Ok((exe, target.join("debug").join("tracer")))
}

/// The Go fixture, static (CGO_ENABLED=0), built with the newest installed Go.
fn build_fixture() -> Result<PathBuf> {
    let mut gos: Vec<PathBuf> = fs::read_dir(cache_dir().join("go"))
        .context("no Go toolchains (run `cargo xtask setup`)")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin/go")))
        .filter(|p| p.is_file())
        .collect();
    gos.sort_by_key(|p| {
        p.ancestors()
            .nth(2)
            .and_then(|d| d.file_name())
            .and_then(|n| n.to_str())
            .map(|v| {
                v.split('.')
                    .map(|x| x.parse::<u32>().unwrap_or(0))
                    .collect::<Vec<_>>()
            })
    });
    let go = gos.pop().context("no Go toolchain installed")?;
    let out = vm_dir().join("tcpflows");
    step(&format!(
        "vm-test: building the Go fixture with {}",
        go.display()
    ));
    run(Command::new(&go)
        .current_dir(repo_root().join("tests/fixtures/tcpflows"))
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod")
        .env("GOPROXY", "off")
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", cache_dir().join("gocache"))
        .env("GOPATH", cache_dir().join("gopath"))
        .args(["build", "-o"])
        .arg(&out)
        .arg("."))?;
    Ok(out)
}

/// Shared libraries `bin` loads, from `ldd`.
fn libs_of(bin: &Path) -> Result<Vec<PathBuf>> {
    let out =
        output(Command::new("ldd").arg(bin)).with_context(|| format!("ldd {}", bin.display()))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with('/')))
        .map(PathBuf::from)
        .collect())
}

/// Copies `from` to `root/to`, creating directories; binaries lose their
/// debug info so the initramfs stays small.
fn install(root: &Path, from: &Path, to: &str, strip: bool) -> Result<()> {
    let dst = root.join(to.trim_start_matches('/'));
    if let Some(d) = dst.parent() {
        fs::create_dir_all(d)?;
    }
    if strip {
        run(Command::new("objcopy")
            .arg("--strip-debug")
            .arg(from)
            .arg(&dst))?;
    } else {
        fs::copy(from, &dst).with_context(|| format!("copying {}", from.display()))?;
    }
    Ok(())
}

fn init_script() -> String {
    let mut s = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/bin HOME=/root\n\
         mkdir -p /proc /sys /tmp /root\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t tracefs tracefs /sys/kernel/tracing\n\
         mount -t debugfs debugfs /sys/kernel/debug\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         mount -t tmpfs tmpfs /tmp\n\
         ip link set lo up\n\
         echo \"=== VMTEST KERNEL $(uname -r)\"\n\
         /bin/tracer inspect --kernel\n",
    );
    for (name, p, rtt) in runs() {
        s.push_str(&format!(
            "echo '=== VMTEST BEGIN {name}'\n\
             TRACER_TCP_HOOKS={p},tracepoint TRACER_TCP_EXPECT={p} TRACER_TCP_RTT={rtt} \
             TRACER_TCP_FIXTURE=/bin/tcpflows \
             RUST_BACKTRACE=0 /bin/tcp-tests --exact {TEST_NAME} --test-threads 1 --nocapture\n\
             echo \"=== VMTEST END {name} rc=$?\"\n"
        ));
    }
    // The tracepoint path cannot count bytes before Linux 6.3: it must say so
    // and refuse, rather than report zero bytes.
    s.push_str(
        "echo '=== VMTEST BEGIN tracepoint'\n\
         /bin/tracer inspect --kernel --tcp-hooks tracepoint\n\
         echo \"=== VMTEST END tracepoint rc=$?\"\n",
    );
    s.push_str("echo '=== VMTEST DONE'\npoweroff -f\n");
    s
}

/// Builds the initramfs (newc cpio, gzip) and returns its path.
fn build_initramfs(test: &Path, tracer: &Path, fixture: &Path) -> Result<PathBuf> {
    step("vm-test: building the initramfs");
    let root = vm_dir().join("root");
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(&root)?;
    install(&root, Path::new("/bin/busybox"), "/bin/busybox", false)?;
    install(&root, test, "/bin/tcp-tests", true)?;
    install(&root, tracer, "/bin/tracer", true)?;
    install(&root, fixture, "/bin/tcpflows", false)?;
    for bin in [test, tracer] {
        for lib in libs_of(bin)? {
            install(&root, &lib, &lib.to_string_lossy(), false)?;
        }
    }
    for d in ["proc", "sys", "tmp", "root", "dev"] {
        fs::create_dir_all(root.join(d))?;
    }
    let init = root.join("init");
    fs::write(&init, init_script())?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&init, fs::Permissions::from_mode(0o755))?;
    let out = vm_dir().join("initrd.gz");
    run(Command::new("sh").current_dir(&root).arg("-c").arg(format!(
        "find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        out.display()
    )))?;
    Ok(out)
}

/// Outcome of one forced path in the guest.
#[derive(Debug, PartialEq, Eq)]
pub struct PathResult {
    pub path: String,
    pub passed: bool,
    /// The test's own summary line, when it printed one.
    pub summary: Option<String>,
}

/// The guest section between `=== VMTEST BEGIN name` and the next END.
fn section<'a>(console: &'a str, name: &str) -> &'a str {
    console
        .split_once(&format!("=== VMTEST BEGIN {name}\n"))
        .map(|(_, rest)| rest.split("=== VMTEST END").next().unwrap_or(""))
        .unwrap_or("")
}

/// The tracepoint-only plan on 6.1: refused, naming the missing send/recv
/// tracepoints (they appeared in 6.3).
fn tracepoint_refusal(console: &str) -> PathResult {
    let s = section(console, "tracepoint");
    let ok = s.contains("TCP tracing would be refused here")
        && s.contains("sock:sock_send_length")
        && s.lines()
            .any(|l| l.starts_with("TCP send") && l.ends_with("-> NONE"));
    PathResult {
        path: "tracepoint".into(),
        passed: ok,
        summary: ok.then(|| {
            "refused as expected: no sock:sock_send_length/sock_recv_length before Linux 6.3".into()
        }),
    }
}

/// Reads the guest console: one result per path in [`PATHS`], then the
/// tracepoint refusal check; a path with no END marker (crash, hang, kernel
/// panic) counts as failed.
pub fn parse_console(console: &str) -> Vec<PathResult> {
    let mut out: Vec<PathResult> = runs()
        .into_iter()
        .map(|(p, _, _)| {
            let end = format!("=== VMTEST END {p} rc=");
            let section = section(console, &p);
            let rc = console
                .lines()
                .find_map(|l| l.trim().strip_prefix(&end))
                .and_then(|rc| rc.trim().parse::<i32>().ok());
            let summary = section
                .lines()
                .find(|l| l.starts_with("go fixture:"))
                .map(|l| l.trim().to_owned());
            PathResult {
                path: p,
                passed: rc == Some(0) && section.contains("test result: ok. 1 passed"),
                summary,
            }
        })
        .collect();
    out.push(tracepoint_refusal(console));
    out
}

fn boot(kernel: &Path, initrd: &Path) -> Result<String> {
    step(&format!(
        "vm-test: booting {} under qemu (TCG)",
        kernel.display()
    ));
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "1"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            "console=ttyS0 rdinit=/init quiet loglevel=3 panic=-1",
            "-nographic",
            "-no-reboot",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let pid = child.id();
    // Watchdog: a hung guest is killed, and its missing markers fail the run.
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if rx.recv_timeout(GUEST_TIMEOUT).is_err() {
            eprintln!("vm-test: guest still running after {GUEST_TIMEOUT:?}; killing qemu");
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    });
    let mut console = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap_or_default();
        println!("  | {line}");
        console.push_str(&line);
        console.push('\n');
    }
    let _ = child.wait();
    let _ = tx.send(());
    let _ = watchdog.join();
    Ok(console)
}

pub fn vm_test() -> Result<()> {
    let t0 = Instant::now();
    fs::create_dir_all(vm_dir())?;
    ensure_packages()?;
    let kernel = ensure_kernel()?;
    let (test, tracer) = build_binaries()?;
    let fixture = build_fixture()?;
    let initrd = build_initramfs(&test, &tracer, &fixture)?;
    let t_boot = Instant::now();
    let console = boot(&kernel, &initrd)?;
    let results = parse_console(&console);
    println!(
        "vm-test: guest {:.1}s, total {:.1}s",
        t_boot.elapsed().as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    for r in &results {
        println!(
            "vm-test: {} path: {}{}",
            r.path,
            if r.passed { "PASS" } else { "FAIL" },
            r.summary
                .as_deref()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        );
    }
    let failed: Vec<&str> = results
        .iter()
        .filter(|r| !r.passed)
        .map(|r| r.path.as_str())
        .collect();
    if !failed.is_empty() {
        // The whole console scrolled past above; repeat what each failed path
        // printed last, so a log cut to its end still shows why.
        for path in &failed {
            let lines: Vec<&str> = section(&console, path).lines().collect();
            println!("vm-test: last lines of the failed {path} path:");
            for l in &lines[lines.len().saturating_sub(40)..] {
                println!("  | {l}");
            }
        }
        bail!("vm-test failed for: {}", failed.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_markers_decide_pass_and_fail() {
        let ok = "=== VMTEST BEGIN kprobe rtt=calls\ngo fixture: 17 flows\ntest result: ok. 1 passed; 0 failed\n=== VMTEST END kprobe rtt=calls rc=0\n\
                  === VMTEST BEGIN kprobe rtt=segments\ntest result: FAILED. 0 passed; 1 failed\n=== VMTEST END kprobe rtt=segments rc=101\n";
        let r = parse_console(ok);
        assert!(r[0].passed && r[0].summary.as_deref() == Some("go fixture: 17 flows"));
        assert!(!r[1].passed);
        assert!(!r[2].passed && !r[3].passed, "no fentry sections");
        assert!(!r[4].passed, "no tracepoint section");
        let tp = "=== VMTEST BEGIN tracepoint\nTCP send            -> NONE\n    tracepoint sock:sock_send_length missing\n\
                  TCP tracing would be refused here:\n=== VMTEST END tracepoint rc=0\n";
        assert!(parse_console(tp)[4].passed);
        // A guest that died before reporting fails every path.
        assert!(parse_console("Kernel panic").iter().all(|r| !r.passed));
    }
}
