//! Network namespaces for the TCP tests: two namespaces joined by a veth
//! pair (deleted however the test ends), packet loss provoked on one end,
//! and moving a thread into a namespace. Addresses are 10.N.0.1/2 inside
//! namespaces the test made itself; nothing leaves the machine.

use std::{os::fd::AsRawFd, process::Command};

use anyhow::{Context, Result, bail};

use crate::procfs::retrans_segs_of;

/// Runs `cmd ARGS`, failing with its stderr; returns stdout.
pub fn run_checked(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Two namespaces joined by a veth pair, deleted however the test ends.
pub struct VethPair {
    /// Namespace of the 10.N.0.1 end.
    pub a: &'static str,
    /// Namespace of the 10.N.0.2 end.
    pub b: &'static str,
    dev_b: &'static str,
    /// The address of the `b` end, 10.N.0.2.
    pub addr_b: String,
}

impl VethPair {
    /// Namespaces `a` (10.N.0.1 on `dev_a`) and `b` (10.N.0.2 on `dev_b`),
    /// N = `subnet`, both with loopback up; leftovers of an earlier run are
    /// deleted first.
    pub fn create(
        a: &'static str,
        b: &'static str,
        dev_a: &'static str,
        dev_b: &'static str,
        subnet: u8,
    ) -> Result<Self> {
        for ns in [a, b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            run_checked("ip", &["netns", "add", ns])?;
        }
        let pair = VethPair {
            a,
            b,
            dev_b,
            addr_b: format!("10.{subnet}.0.2"),
        };
        run_checked(
            "ip",
            &[
                "link", "add", dev_a, "netns", a, "type", "veth", "peer", "name", dev_b, "netns", b,
            ],
        )?;
        let (ca, cb) = (format!("10.{subnet}.0.1/24"), format!("10.{subnet}.0.2/24"));
        run_checked("ip", &["-n", a, "addr", "add", &ca, "dev", dev_a])?;
        run_checked("ip", &["-n", b, "addr", "add", &cb, "dev", dev_b])?;
        for (ns, dev) in [(a, dev_a), (b, dev_b)] {
            run_checked("ip", &["-n", ns, "link", "set", dev, "up"])?;
            run_checked("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }

    /// Drops about 30% of what namespace `b` receives on its veth (this kernel
    /// has no netem, nor gact/police actions): a classic-BPF classifier on
    /// the `clsact` ingress hook matches when `ld rand` is ≥ 0.7·2³², and the
    /// match is redirected to a veth that is down, which drops it. Dropping at
    /// the receiver matters: a drop in the sender's own egress path is
    /// reported to TCP, which sends the segment again as new data, not as a
    /// retransmit.
    pub fn start_loss(&self) -> Result<()> {
        let _ = Command::new("ip")
            .args(["-n", self.b, "link", "add", "trdrop0", "type", "veth"])
            .args(["peer", "name", "trdrop1"])
            .output();
        run_checked(
            "tc",
            &["-n", self.b, "qdisc", "add", "dev", self.dev_b, "clsact"],
        )?;
        // ld [SKF_AD_OFF + SKF_AD_RANDOM]; jge #0.7*2^32; ret -1 (match); ret 0.
        let prog = "4,32 0 0 4294963256,53 0 1 3006477107,6 0 0 4294967295,6 0 0 0";
        run_checked(
            "tc",
            &[
                "-n", self.b, "filter", "add", "dev", self.dev_b, "ingress", "bpf", "bytecode",
                prog, "action", "mirred", "egress", "redirect", "dev", "trdrop0",
            ],
        )
        .map(|_| ())
    }

    pub fn stop_loss(&self) -> Result<()> {
        run_checked(
            "tc",
            &["-n", self.b, "qdisc", "del", "dev", self.dev_b, "clsact"],
        )
        .map(|_| ())
    }

    /// `ss -tin` in namespace `a` for the connection from local port `port`.
    pub fn ss_info(&self, port: u16) -> Result<String> {
        let filter = format!("sport = :{port}");
        run_checked("ip", &["netns", "exec", self.a, "ss", "-tinH", &filter])
    }

    /// `Tcp: RetransSegs` of namespace `a` (/proc/net follows the reader's netns).
    pub fn retrans_segs(&self) -> Result<u64> {
        let snmp = run_checked("ip", &["netns", "exec", self.a, "cat", "/proc/net/snmp"])?;
        retrans_segs_of(&snmp)
    }
}

impl Drop for VethPair {
    fn drop(&mut self) {
        for ns in [self.a, self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Moves the calling thread into network namespace `ns`.
pub fn enter_netns(ns: &str) -> Result<()> {
    let f = std::fs::File::open(format!("/run/netns/{ns}")).context("opening netns")?;
    const CLONE_NEWNET: i32 = 0x4000_0000;
    unsafe extern "C" {
        fn setns(fd: i32, nstype: i32) -> i32;
    }
    // SAFETY: valid fd of a network namespace; affects only this thread.
    if unsafe { setns(f.as_raw_fd(), CLONE_NEWNET) } != 0 {
        bail!("setns {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}
