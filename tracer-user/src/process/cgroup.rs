//! Which container and Kubernetes pod a process belongs to, read from
//! `/proc/PID/cgroup`, and its pid in each pid namespace from `/proc/PID/status`.
//!
//! The kubelet and the container runtimes encode the pod UID, the QoS class and
//! the container id in cgroup directory names, and those names are the only
//! node-local source that needs no API server. The text is written by the kernel
//! but the path components below the container's cgroup are chosen by the
//! (untrusted) workload when it creates sub-cgroups, so parsing is bounded and
//! never panics; anything unrecognised yields `None`, never a guess.
//!
//! Naming handled (v1 and v2, systemd and cgroupfs drivers):
//!
//! | runtime / driver | container component | pod component |
//! |---|---|---|
//! | containerd, systemd | `cri-containerd-<id>.scope` | `kubepods-burstable-pod<uid_with_underscores>.slice` |
//! | CRI-O, systemd | `crio-<id>.scope` | same |
//! | Docker, systemd | `docker-<id>.scope` | same (cri-dockerd) |
//! | Podman, systemd | `libpod-<id>.scope` | — |
//! | any CRI, cgroupfs | `<id>` (runtime unknown) or `crio-<id>` | `/kubepods/besteffort/pod<uid>/` |
//! | Docker, cgroupfs | `/docker/<id>` | — |

use std::{fs, io::Read};

/// Bytes of `/proc/PID/cgroup` or `/proc/PID/status` looked at; real files are a
/// few hundred bytes (a v1 host with every controller: under 2 KiB).
const MAX_TEXT: usize = 64 * 1024;
/// Lines of `/proc/PID/cgroup` looked at (one per hierarchy; v1 has about 13).
const MAX_LINES: usize = 64;
/// Path components looked at per line (real kubepods paths have under 10).
const MAX_COMPONENTS: usize = 64;
/// Longest `cgroup_path` kept; the kernel's own limit is PATH_MAX.
const MAX_PATH: usize = 4096;
/// Pid namespaces nest at most 32 deep (MAX_PID_NS_LEVEL).
const MAX_NS_LEVELS: usize = 33;

/// The container and pod a process runs in, as far as its cgroup names tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerRef {
    /// The runtime's container id: 64 lowercase hex characters.
    pub container_id: Option<String>,
    /// `containerd`, `cri-o`, `docker` or `podman`; `None` when the name does not
    /// say (the cgroupfs driver names a CRI container by its bare id).
    pub runtime: Option<&'static str>,
    /// Kubernetes pod UID with dashes (`8f1e…-…`), or the 32-hex config hash of a
    /// static pod.
    pub pod_uid: Option<String>,
    /// Kubernetes QoS class: `guaranteed`, `burstable` or `besteffort`.
    pub qos: Option<&'static str>,
    /// The cgroup path the above was read from (the v2 path when nothing matched).
    pub cgroup_path: String,
}

/// Reads `/proc/PID/cgroup` (bounded) and parses it.
pub fn for_pid(pid: u32) -> std::io::Result<ContainerRef> {
    Ok(parse(&read_bounded(&format!("/proc/{pid}/cgroup"))?))
}

/// Reads `/proc/PID/status` (bounded) and returns its `NSpid:` list.
pub fn ns_pids_for_pid(pid: u32) -> std::io::Result<Vec<u32>> {
    Ok(ns_pids(&read_bounded(&format!("/proc/{pid}/status"))?))
}

fn read_bounded(path: &str) -> std::io::Result<String> {
    let mut buf = Vec::new();
    fs::File::open(path)?
        .take(MAX_TEXT as u64)
        .read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Parses `/proc/PID/cgroup` text: `hierarchy-id:controllers:path` per line.
///
/// Every hierarchy is examined because hosts differ in which one carries the
/// kubepods path (v2 only, v1 only, or hybrid with both). The line with the
/// most information wins (container id over pod UID over nothing); ties go to
/// the v2 line (`0::`), then to the first line.
pub fn parse(text: &str) -> ContainerRef {
    let text = truncate(text, MAX_TEXT);
    let mut best: Option<(u8, bool, ContainerRef)> = None;
    let mut fallback: Option<(bool, &str)> = None;
    for line in text.lines().take(MAX_LINES) {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let v2 = id == "0" && controllers.is_empty();
        if fallback.is_none_or(|(fv2, _)| v2 && !fv2) {
            fallback = Some((v2, path));
        }
        let found = parse_path(path);
        let score = u8::from(found.container_id.is_some()) * 2 + u8::from(found.pod_uid.is_some());
        if score == 0 {
            continue;
        }
        let better = match &best {
            None => true,
            Some((s, bv2, _)) => score > *s || (score == *s && v2 && !*bv2),
        };
        if better {
            best = Some((score, v2, found));
        }
    }
    match best {
        Some((_, _, found)) => found,
        None => ContainerRef {
            cgroup_path: fallback
                .map(|(_, p)| truncate(p, MAX_PATH).to_string())
                .unwrap_or_default(),
            ..ContainerRef::default()
        },
    }
}

/// Parses one cgroup path. Names below a container's cgroup are chosen by the
/// workload (it may create sub-cgroups), so the first pod component wins and the
/// first container component after it: what the kubelet and the runtime created.
/// A container seen before the pod is dropped when the pod appears, because a
/// kind node is itself a Docker container holding the kubepods tree.
fn parse_path(path: &str) -> ContainerRef {
    let mut out = ContainerRef {
        cgroup_path: truncate(path, MAX_PATH).to_string(),
        ..ContainerRef::default()
    };
    let mut parent = "";
    // cgroupfs driver: `/kubepods[/burstable|/besteffort]/pod<uid>/<id>`; a pod
    // directly under `kubepods` is guaranteed.
    let mut in_kubepods = false;
    let mut cgroupfs_qos: Option<&'static str> = None;
    for comp in path
        .split('/')
        .filter(|c| !c.is_empty())
        .take(MAX_COMPONENTS)
    {
        let pod = if out.pod_uid.is_some() {
            None
        } else if let Some(found) = systemd_pod(comp) {
            Some(found)
        } else if comp == "kubepods" || comp == "kubepods.slice" {
            in_kubepods = true;
            cgroupfs_qos = Some("guaranteed");
            None
        } else if comp == ".." {
            // Read from inside a cgroup namespace (an agent pod): paths are
            // relative to the reader's own container cgroup and may start
            // below `kubepods`, so the QoS level is unknown unless named.
            in_kubepods = true;
            cgroupfs_qos = None;
            None
        } else if in_kubepods && (comp == "burstable" || comp == "besteffort") {
            cgroupfs_qos = Some(if comp == "burstable" {
                "burstable"
            } else {
                "besteffort"
            });
            None
        } else {
            comp.strip_prefix("pod")
                .filter(|_| in_kubepods)
                .and_then(pod_uid)
                .map(|uid| (uid, cgroupfs_qos))
        };
        if let Some((uid, qos)) = pod {
            out.pod_uid = Some(uid);
            out.qos = qos;
            out.container_id = None;
            out.runtime = None;
        } else if out.container_id.is_none()
            && let Some((id, runtime)) = container(comp, parent)
        {
            out.container_id = Some(id);
            out.runtime = runtime;
        }
        parent = comp;
    }
    out
}

/// systemd driver pod slice: `kubepods-pod<uid>.slice` (guaranteed),
/// `kubepods-burstable-pod<uid>.slice`, `kubepods-besteffort-pod<uid>.slice`,
/// optionally with a prefix (kind: `kubelet-kubepods-…`). systemd does not allow
/// `-` inside a unit name's last part, so the kubelet writes the UID with `_`.
fn systemd_pod(comp: &str) -> Option<(String, Option<&'static str>)> {
    let stem = comp.strip_suffix(".slice")?;
    let at = stem.find("kubepods")?;
    let rest = &stem[at + "kubepods".len()..];
    let (qos, uid) = if let Some(u) = rest.strip_prefix("-burstable-pod") {
        ("burstable", u)
    } else if let Some(u) = rest.strip_prefix("-besteffort-pod") {
        ("besteffort", u)
    } else if let Some(u) = rest.strip_prefix("-pod") {
        ("guaranteed", u)
    } else {
        return None;
    };
    Some((pod_uid(uid)?, Some(qos)))
}

/// A pod UID as the kubelet writes it: a UUID (with `-` or `_`) or, for static
/// pods, the 32-hex hash of the manifest. Returned with dashes, lowercase.
fn pod_uid(raw: &str) -> Option<String> {
    if raw.len() == 32 && raw.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(raw.to_ascii_lowercase());
    }
    if raw.len() != 36 {
        return None;
    }
    let ok = raw.bytes().enumerate().all(|(i, b)| match i {
        8 | 13 | 18 | 23 => b == b'-' || b == b'_',
        _ => b.is_ascii_hexdigit(),
    });
    ok.then(|| raw.replace('_', "-").to_ascii_lowercase())
}

/// A container component: `<prefix>-<id>[.scope]` or, under the cgroupfs
/// driver, the bare `<id>` (its runtime is only known under `/docker/`).
fn container(comp: &str, parent: &str) -> Option<(String, Option<&'static str>)> {
    let stem = comp.strip_suffix(".scope").unwrap_or(comp);
    for (prefix, runtime) in [
        ("cri-containerd-", "containerd"),
        ("crio-", "cri-o"),
        ("docker-", "docker"),
        ("libpod-", "podman"),
    ] {
        if let Some(id) = stem.strip_prefix(prefix) {
            return container_id(id).map(|id| (id, Some(runtime)));
        }
    }
    let runtime = (parent == "docker").then_some("docker");
    container_id(comp).map(|id| (id, runtime))
}

fn container_id(raw: &str) -> Option<String> {
    (raw.len() == 64 && raw.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| raw.to_ascii_lowercase())
}

/// `NSpid:` of `/proc/PID/status`: the pid in each pid namespace the process is
/// in, host (the reader's namespace) first, innermost last. Empty when the line
/// is missing (kernels before 4.1) or malformed.
pub fn ns_pids(status_text: &str) -> Vec<u32> {
    let text = truncate(status_text, MAX_TEXT);
    let Some(rest) = text.lines().find_map(|l| l.strip_prefix("NSpid:")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for field in rest.split_whitespace() {
        match field.parse::<u32>() {
            Ok(p) if out.len() < MAX_NS_LEVELS => out.push(p),
            _ => return Vec::new(),
        }
    }
    out
}

/// The longest prefix of `s` of at most `max` bytes that ends on a char boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3e2d8f8f2d6a4b4f9d1c0b7a6e5f4d3c2b1a09f8e7d6c5b4a3928170615243ab";
    const UID: &str = "5f0a1b2c-3d4e-4f60-8a9b-0c1d2e3f4a5b";
    const UID_US: &str = "5f0a1b2c_3d4e_4f60_8a9b_0c1d2e3f4a5b";

    fn check(
        text: &str,
        id: Option<&str>,
        runtime: Option<&str>,
        uid: Option<&str>,
        qos: Option<&str>,
    ) {
        let r = parse(text);
        assert_eq!(r.container_id.as_deref(), id, "{text}");
        assert_eq!(r.runtime, runtime, "{text}");
        assert_eq!(r.pod_uid.as_deref(), uid, "{text}");
        assert_eq!(r.qos, qos, "{text}");
    }

    #[test]
    fn containerd_systemd_v2() {
        let t = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/cri-containerd-{ID}.scope\n"
        );
        check(
            &t,
            Some(ID),
            Some("containerd"),
            Some(UID),
            Some("burstable"),
        );
        assert!(parse(&t).cgroup_path.ends_with(".scope"));
    }

    #[test]
    fn guaranteed_pod_has_no_qos_slice() {
        let t = format!("0::/kubepods.slice/kubepods-pod{UID_US}.slice/cri-containerd-{ID}.scope");
        check(
            &t,
            Some(ID),
            Some("containerd"),
            Some(UID),
            Some("guaranteed"),
        );
        let t = format!("0::/kubepods/pod{UID}/{ID}");
        check(&t, Some(ID), None, Some(UID), Some("guaranteed"));
    }

    #[test]
    fn crio_systemd_v2() {
        let t = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice/crio-{ID}.scope"
        );
        check(&t, Some(ID), Some("cri-o"), Some(UID), Some("besteffort"));
        // conmon runs next to the container in its own scope: not the container.
        let t = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice/crio-conmon-{ID}.scope"
        );
        check(&t, None, None, Some(UID), Some("besteffort"));
    }

    #[test]
    fn cgroupfs_v1_every_controller() {
        // containerd with the cgroupfs driver on a v1 host (trimmed real file).
        let p = format!("/kubepods/besteffort/pod{UID}/{ID}");
        let t = format!(
            "12:hugetlb:{p}\n11:memory:{p}\n10:cpu,cpuacct:{p}\n9:pids:{p}\n1:name=systemd:{p}\n0::/\n"
        );
        check(&t, Some(ID), None, Some(UID), Some("besteffort"));
        assert_eq!(parse(&t).cgroup_path, p);
    }

    #[test]
    fn crio_cgroupfs() {
        let t = format!("0::/kubepods/burstable/pod{UID}/crio-{ID}");
        check(&t, Some(ID), Some("cri-o"), Some(UID), Some("burstable"));
    }

    #[test]
    fn docker_plain() {
        check(
            &format!("0::/system.slice/docker-{ID}.scope"),
            Some(ID),
            Some("docker"),
            None,
            None,
        );
        let t = format!("13:name=systemd:/docker/{ID}\n4:memory:/docker/{ID}\n0::/\n");
        check(&t, Some(ID), Some("docker"), None, None);
    }

    #[test]
    fn docker_systemd_v1_hybrid() {
        let p = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice/docker-{ID}.scope"
        );
        let t = format!("11:devices:{p}\n4:memory:{p}\n1:name=systemd:{p}\n0::{p}\n");
        check(&t, Some(ID), Some("docker"), Some(UID), Some("burstable"));
    }

    #[test]
    fn kind_node_nested_in_docker_reports_inner_container() {
        let outer = "a".repeat(64);
        let t = format!(
            "0::/docker/{outer}/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_US}.slice/cri-containerd-{ID}.scope"
        );
        check(
            &t,
            Some(ID),
            Some("containerd"),
            Some(UID),
            Some("besteffort"),
        );
    }

    #[test]
    fn static_pod_hash_uid() {
        let h = "6e5b2e5b3f0b0d5f8f6c1d3f2c0c9a1b";
        let t = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{h}.slice/cri-containerd-{ID}.scope"
        );
        check(&t, Some(ID), Some("containerd"), Some(h), Some("burstable"));
    }

    #[test]
    fn pod_level_process_has_no_container() {
        // The pause process or a pod-level cgroup: pod known, container not.
        let t = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_US}.slice"
        );
        check(&t, None, None, Some(UID), Some("burstable"));
    }

    #[test]
    fn container_line_beats_v2_root_in_hybrid_mode() {
        // Hybrid host whose v2 hierarchy has nothing: the v1 line carries the ids.
        let t = format!("4:memory:/kubepods/pod{UID}/{ID}\n0::/\n");
        check(&t, Some(ID), None, Some(UID), Some("guaranteed"));
    }

    #[test]
    fn read_from_inside_a_cgroup_namespace() {
        // What an agent pod (private cgroup namespace) reads for another pod:
        // relative to its own container cgroup.
        let t = format!(
            "0::/../../../kubepods-besteffort.slice/kubepods-besteffort-pod{UID_US}.slice/cri-containerd-{ID}.scope"
        );
        check(
            &t,
            Some(ID),
            Some("containerd"),
            Some(UID),
            Some("besteffort"),
        );
        // cgroupfs: `kubepods` is above the namespace root, so QoS is only
        // known when its level is on the path.
        let t = format!("0::/../../besteffort/pod{UID}/{ID}");
        check(&t, Some(ID), None, Some(UID), Some("besteffort"));
        let t = format!("0::/../../pod{UID}/{ID}");
        check(&t, Some(ID), None, Some(UID), None);
        // Another container of the agent's own pod.
        check(
            &format!("0::/../crio-{ID}.scope"),
            Some(ID),
            Some("cri-o"),
            None,
            None,
        );
    }

    #[test]
    fn host_processes_and_podman() {
        let r = parse("0::/init.scope\n");
        assert_eq!(
            r,
            ContainerRef {
                cgroup_path: "/init.scope".into(),
                ..Default::default()
            }
        );
        let r = parse("1:name=systemd:/user.slice\n0::/user.slice/user-0.slice/session-1.scope\n");
        assert_eq!(r.cgroup_path, "/user.slice/user-0.slice/session-1.scope");
        assert_eq!(r.container_id, None);
        check(
            &format!("0::/machine.slice/libpod-{ID}.scope/container"),
            Some(ID),
            Some("podman"),
            None,
            None,
        );
    }

    #[test]
    fn near_misses_are_rejected() {
        for t in [
            format!("0::/docker-{}.scope", &ID[..63]),   // short id
            format!("0::/docker-{}g.scope", &ID[..63]),  // not hex
            format!("0::/kubepods/pod{}/x", &UID[..35]), // short uid
            format!("0::/kubepods/pod{}/x", UID.replace('-', "x")), // bad separators
            format!("0::/other/pod{UID}/x"),             // not under kubepods
            "garbage without colons".to_string(),
            String::new(),
        ] {
            let r = parse(&t);
            assert_eq!((r.container_id, r.pod_uid), (None, None), "{t}");
        }
    }

    #[test]
    fn workload_chosen_names_cannot_forge_an_outer_container() {
        // Sub-cgroups below the container are named by the workload: a forged
        // pod slice or container id down there must not replace the real ones.
        let other = "0123abcd-3d4e-4f60-8a9b-0c1d2e3f4a5b";
        let t = format!(
            "0::/kubepods/pod{UID}/{ID}/kubepods-pod{}.slice/docker-{}.scope",
            other.replace('-', "_"),
            "b".repeat(64)
        );
        check(&t, Some(ID), None, Some(UID), Some("guaranteed"));
        let t = format!("0::/kubepods/burstable/pod{UID}/crio-{ID}/kubepods/pod{other}");
        check(&t, Some(ID), Some("cri-o"), Some(UID), Some("burstable"));
    }

    #[test]
    fn ns_pids_of_real_status() {
        let status = "Name:\tsleep\nTgid:\t4242\nNgid:\t0\nPid:\t4242\nPPid:\t4200\nNSpid:\t4242\t17\t1\nNSsid:\t1\n";
        assert_eq!(ns_pids(status), vec![4242, 17, 1]);
        assert_eq!(ns_pids("NSpid:\t99\n"), vec![99]);
        assert_eq!(ns_pids("Name:\tx\n"), Vec::<u32>::new());
        assert_eq!(ns_pids("NSpid:\t1\tx\n"), Vec::<u32>::new());
        assert_eq!(ns_pids("NSpid:\t99999999999\n"), Vec::<u32>::new());
        let deep = format!("NSpid:{}", " 1".repeat(100));
        assert_eq!(ns_pids(&deep), Vec::<u32>::new());
    }

    #[test]
    fn own_process_reads() {
        let me = std::process::id();
        let r = for_pid(me).expect("own cgroup file");
        assert!(r.cgroup_path.starts_with('/'), "{r:?}");
        let pids = ns_pids_for_pid(me).expect("own status");
        assert_eq!(pids.first(), Some(&me), "{pids:?}");
        assert!(for_pid(u32::MAX - 1).is_err());
    }

    #[test]
    fn long_and_multibyte_input_is_bounded() {
        let long = format!("0::/{}\n", "é".repeat(MAX_TEXT));
        let r = parse(&long);
        assert!(r.cgroup_path.len() <= MAX_PATH);
        let many = format!("0::/{}{ID}", "kubepods/".repeat(10_000));
        let _ = parse(&many);
    }

    /// A fuzz pass that runs with the unit tests; `cargo +nightly fuzz run
    /// proc_text` (tracer-user/fuzz) runs the same parsers much longer.
    #[test]
    fn random_input_never_panics() {
        // xorshift64*: deterministic so a failure reproduces.
        let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            s.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        // Pieces of real lines make the random input reach the deep branches.
        let pieces = [
            "0::",
            "4:memory:",
            "/",
            "kubepods",
            ".slice",
            "-burstable",
            "-besteffort",
            "-pod",
            "pod",
            "cri-containerd-",
            "crio-",
            "docker-",
            ".scope",
            UID,
            UID_US,
            ID,
            "\n",
            ":",
            "NSpid:",
            "\t",
            "1",
            "é",
            "\u{0}",
        ];
        for _ in 0..20_000 {
            let mut t = String::new();
            for _ in 0..(next() % 24) {
                let r = next();
                if r % 3 == 0 {
                    let b = (r >> 8) as u8;
                    t.push_str(&String::from_utf8_lossy(&[b]));
                } else {
                    t.push_str(pieces[(r >> 8) as usize % pieces.len()]);
                }
            }
            let r = parse(&t);
            if let Some(id) = &r.container_id {
                assert_eq!(id.len(), 64, "{t:?}");
            }
            if let Some(uid) = &r.pod_uid {
                assert!(uid.len() == 36 || uid.len() == 32, "{t:?}");
                assert!(!uid.contains('_'), "{t:?}");
            }
            let _ = ns_pids(&t);
        }
    }
}
