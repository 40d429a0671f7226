//! The Kubernetes manifests in `deploy/`: valid against the real API schemas
//! (PyPI `kubernetes-validate`, installed by `cargo xtask setup`, offline), and
//! least privilege as documented in deploy/README.md.
//!
//! Longer than ~600 lines: one manifest per test, each checked field by
//! field against deploy/README.md; they share the YAML loading and the
//! validator venv.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use tracer_tests::{
    Variant, build_fixture, cache_dir, classic_and_swiss, privileged_test, serial, tracer_bin,
};

/// Must equal `KUBERNETES_VALIDATE_VERSION` in xtask/src/setup.rs (checked below).
const VALIDATOR_VERSION: &str = "1.37.0";
/// Oldest Kubernetes the manifests support (`appArmorProfile` is GA in 1.30),
/// and the newest the validator knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];
/// Capabilities the agent adds after dropping ALL; each is justified in the
/// DaemonSet's comments and deploy/README.md, and
/// `manifest_capabilities_trace_another_users_process` checks on this kernel
/// that they suffice and which are needed.
const ADDED_CAPS: [&str; 4] = ["BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn venv() -> PathBuf {
    cache_dir()
        .join("kubernetes-validate")
        .join(VALIDATOR_VERSION)
        .join("bin")
}

/// The manifests `kubectl apply -f deploy/` applies (sorted), not the optional ones.
fn manifests() -> Result<Vec<PathBuf>> {
    let mut out: Vec<PathBuf> = fs::read_dir(deploy_dir())
        .context("reading deploy/")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    out.sort();
    ensure!(!out.is_empty(), "no manifests in deploy/");
    Ok(out)
}

/// Runs the validator in strict mode (unknown fields are errors).
fn validate(files: &[PathBuf], k8s: &str) -> Result<(bool, String)> {
    let bin = venv().join("kubernetes-validate");
    let out = Command::new(&bin)
        .args(["--strict", "--kubernetes-version", k8s])
        .args(files)
        .output()
        .with_context(|| format!("running {} (run `cargo xtask setup`)", bin.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

/// Every YAML document of `path`, as JSON, through the venv's PyYAML.
fn load(path: &Path) -> Result<Vec<Value>> {
    let out = Command::new(venv().join("python"))
        .args([
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)",
        ])
        .arg(path)
        .output()
        .context("running the validator venv's python")?;
    ensure!(
        out.status.success(),
        "parsing {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn all_docs() -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for m in manifests()? {
        docs.extend(load(&m)?);
    }
    Ok(docs)
}

fn one<'a>(docs: &'a [Value], kind: &str) -> Result<&'a Value> {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    match found.as_slice() {
        [d] => Ok(d),
        _ => bail!("expected one {kind}, found {}", found.len()),
    }
}

fn strings(v: &Value) -> BTreeSet<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Every value stored under `key` anywhere in `v`.
fn find_key<'a>(v: &'a Value, key: &str, out: &mut Vec<&'a Value>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == key {
                    out.push(x);
                }
                find_key(x, key, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| find_key(x, key, out)),
        _ => {}
    }
}

#[test]
fn validator_pin_matches_setup() {
    let setup = include_str!("../../xtask/src/setup.rs");
    assert!(
        setup.contains(&format!(
            "KUBERNETES_VALIDATE_VERSION: &str = \"{VALIDATOR_VERSION}\""
        )),
        "xtask/src/setup.rs installs another kubernetes-validate than {VALIDATOR_VERSION}"
    );
}

#[test]
fn manifests_pass_strict_schema_validation() -> Result<()> {
    let files = manifests()?;
    let docs = all_docs()?;
    for k8s in KUBERNETES_VERSIONS {
        let (ok, text) = validate(&files, k8s)?;
        assert!(ok, "kubernetes {k8s}:\n{text}");
        // A kind without a schema only warns; every core manifest must have one.
        assert!(!text.contains("Couldn't find schema"), "{text}");
        let passed = text.matches(" passed for resource ").count();
        assert_eq!(
            passed,
            docs.len(),
            "kubernetes {k8s}: not every document validated:\n{text}"
        );
    }
    Ok(())
}

#[test]
fn validator_rejects_broken_manifests() -> Result<()> {
    let ds = fs::read_to_string(deploy_dir().join("daemonset.yaml"))?;
    let dir = std::env::temp_dir().join(format!("tracer-deploy-test-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    // A wrong type, and (strict mode) a misspelt field the API server would drop.
    let cases = [
        (
            "wrong-type.yaml",
            "readOnly: true",
            "readOnly: \"yes\"",
            "is not of type",
        ),
        (
            "unknown-field.yaml",
            "hostPID: true",
            "hostPid: true",
            "'hostPid' was unexpected",
        ),
    ];
    for (name, from, to, expect) in cases {
        assert!(ds.contains(from), "daemonset.yaml no longer has {from:?}");
        let path = dir.join(name);
        fs::write(&path, ds.replacen(from, to, 1))?;
        let (ok, text) = validate(std::slice::from_ref(&path), KUBERNETES_VERSIONS[0])?;
        assert!(!ok, "{name} was accepted:\n{text}");
        assert!(text.contains(expect), "{name}: {text}");
    }
    let _ = fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn daemonset_is_least_privilege() -> Result<()> {
    let docs = all_docs()?;
    let mut privileged = Vec::new();
    for d in &docs {
        find_key(d, "privileged", &mut privileged);
    }
    assert!(
        privileged.iter().all(|v| **v == Value::Bool(false)),
        "privileged: {privileged:?}"
    );

    let ds = one(&docs, "DaemonSet")?;
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], true);
    assert_ne!(pod["hostNetwork"], true);
    assert_ne!(pod["hostIPC"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(
        pod["securityContext"]["appArmorProfile"]["type"],
        "RuntimeDefault"
    );
    let tolerations = pod["tolerations"].as_array().context("tolerations")?;
    assert!(
        tolerations.iter().any(|t| t["operator"] == "Exists"
            && t.get("key").is_none()
            && t.get("effect").is_none()),
        "no catch-all toleration: {tolerations:?}"
    );

    let containers = pod["containers"].as_array().context("containers")?;
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert_eq!(
        strings(&sc["capabilities"]["drop"]),
        BTreeSet::from(["ALL"])
    );
    assert_eq!(
        strings(&sc["capabilities"]["add"]),
        BTreeSet::from(ADDED_CAPS)
    );
    // The API rejects `false` with CAP_SYS_ADMIN, but only when spelt with the
    // prefix; do not hide behind the spelling: false exactly when possible.
    let added = strings(&sc["capabilities"]["add"]);
    assert!(added.iter().all(|c| !c.starts_with("CAP_")), "{added:?}");
    assert_eq!(
        sc["allowPrivilegeEscalation"],
        added.contains("SYS_ADMIN"),
        "allowPrivilegeEscalation must be false unless SYS_ADMIN is added"
    );
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert!(pod.get("initContainers").is_none());

    // Host paths: exactly the required ones, each mounted read-only.
    let volumes = pod["volumes"].as_array().context("volumes")?;
    let mounts = c["volumeMounts"].as_array().context("volumeMounts")?;
    let mut host_paths = BTreeSet::new();
    for v in volumes.iter().filter(|v| v.get("hostPath").is_some()) {
        let path = v["hostPath"]["path"].as_str().context("hostPath.path")?;
        host_paths.insert(path);
        let m = mounts
            .iter()
            .find(|m| m["name"] == v["name"])
            .with_context(|| format!("hostPath {path} is not mounted"))?;
        assert_eq!(m["readOnly"], true, "{path} is mounted writable");
    }
    assert_eq!(
        host_paths,
        BTreeSet::from(["/sys/fs/cgroup", "/sys/kernel/btf", "/sys/kernel/tracing"])
    );
    let tracefs = mounts
        .iter()
        .find(|m| m["mountPath"] == "/sys/kernel/tracing")
        .context("tracefs must be at the path tracer reads (kernelfs::TRACEFS)")?;
    assert_eq!(tracefs["readOnly"], true);

    // Explicit non-loopback binds, node name from the downward API.
    let args: Vec<&str> = c["args"]
        .as_array()
        .context("args")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args.first(), Some(&"agent"));
    // gRPC beyond loopback: the agent refuses it without a token or mTLS.
    for (flag, addr) in [
        ("--grpc-listen", "0.0.0.0:7070"),
        ("--grpc-token-file", "/etc/tracer/grpc-token/token"),
        ("--metrics-listen", "0.0.0.0:9464"),
    ] {
        let at = args
            .iter()
            .position(|a| *a == flag)
            .with_context(|| format!("no {flag}"))?;
        assert_eq!(args.get(at + 1), Some(&addr), "{args:?}");
    }
    ensure!(
        !args.contains(&"--grpc-insecure"),
        "the DaemonSet must not serve gRPC without authentication"
    );
    let token = mounts
        .iter()
        .find(|m| m["mountPath"] == "/etc/tracer/grpc-token")
        .context("the token file's directory is not mounted")?;
    assert_eq!(token["readOnly"], true);
    let secret = volumes
        .iter()
        .find(|v| v["name"] == token["name"])
        .context("token volume")?;
    assert_eq!(secret["secret"]["secretName"], "tracer-grpc-token");
    assert_eq!(secret["secret"]["items"][0]["path"], "token");
    let env = c["env"].as_array().context("env")?;
    let node = env
        .iter()
        .find(|e| e["name"] == "NODE_NAME")
        .context("NODE_NAME")?;
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");

    let port = |name: &str| -> Option<i64> {
        c["ports"].as_array()?.iter().find(|p| p["name"] == name)?["containerPort"].as_i64()
    };
    assert_eq!(port("grpc"), Some(7070));
    assert_eq!(port("metrics"), Some(9464));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "metrics");

    assert_eq!(c["resources"]["limits"]["memory"], "128Mi");
    assert_eq!(c["resources"]["requests"]["cpu"], "200m");
    assert!(c["resources"]["requests"]["memory"].is_string());

    // The Pod Security admission must allow what the pod needs.
    let ns = one(&docs, "Namespace")?;
    assert_eq!(ds["metadata"]["namespace"], ns["metadata"]["name"]);
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    Ok(())
}

#[test]
fn rbac_reads_pods_only() -> Result<()> {
    let docs = all_docs()?;
    let roles: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" || d["kind"] == "Role")
        .collect();
    assert_eq!(roles.len(), 1, "one role expected");
    let rules = roles[0]["rules"].as_array().context("rules")?;
    assert!(!rules.is_empty());
    for r in rules {
        assert_eq!(strings(&r["apiGroups"]), BTreeSet::from([""]), "{r}");
        assert_eq!(strings(&r["resources"]), BTreeSet::from(["pods"]), "{r}");
        assert_eq!(
            strings(&r["verbs"]),
            BTreeSet::from(["get", "list", "watch"]),
            "{r}"
        );
        assert!(r.get("nonResourceURLs").is_none(), "{r}");
    }

    // The binding grants that role to the DaemonSet's service account, only.
    let ds = one(&docs, "DaemonSet")?;
    let sa = one(&docs, "ServiceAccount")?;
    let b = one(&docs, "ClusterRoleBinding")?;
    assert_eq!(b["roleRef"]["name"], roles[0]["metadata"]["name"]);
    assert_eq!(
        ds["spec"]["template"]["spec"]["serviceAccountName"],
        sa["metadata"]["name"]
    );
    let subjects = b["subjects"].as_array().context("subjects")?;
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0]["kind"], "ServiceAccount");
    assert_eq!(subjects[0]["name"], sa["metadata"]["name"]);
    assert_eq!(subjects[0]["namespace"], sa["metadata"]["namespace"]);
    Ok(())
}

/// Label selectors are only checked by the API server against live objects,
/// so a typo would deploy fine and route nothing: check them here.
#[test]
fn service_and_servicemonitor_select_the_agents() -> Result<()> {
    let docs = all_docs()?;
    let ds = one(&docs, "DaemonSet")?;
    let svc = one(&docs, "Service")?;
    let pod_labels = ds["spec"]["template"]["metadata"]["labels"]
        .as_object()
        .context("pod labels")?;
    let matches = |selector: &Value| {
        selector
            .as_object()
            .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| pod_labels.get(k) == Some(v)))
    };
    assert!(
        matches(&svc["spec"]["selector"]),
        "Service selects no agent pod"
    );
    assert!(matches(&ds["spec"]["selector"]["matchLabels"]));
    assert_eq!(
        svc["spec"]["clusterIP"], "None",
        "headless: one address per agent"
    );
    assert_eq!(
        svc["metadata"]["annotations"]["prometheus.io/scrape"],
        "true"
    );
    assert_eq!(svc["metadata"]["annotations"]["prometheus.io/port"], "9464");
    let container_ports: BTreeSet<&str> = ds["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .context("ports")?
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    let svc_ports = svc["spec"]["ports"].as_array().context("service ports")?;
    let mut by_port = BTreeSet::new();
    for p in svc_ports {
        let target = p["targetPort"].as_str().context("named targetPort")?;
        assert!(
            container_ports.contains(target),
            "targetPort {target} not on the container"
        );
        by_port.insert((p["port"].as_i64().unwrap_or(0), target));
    }
    assert_eq!(by_port, BTreeSet::from([(7070, "grpc"), (9464, "metrics")]));

    // The ServiceMonitor is a CRD the validator has no schema for: check it by hand.
    let sm_docs = load(&deploy_dir().join("optional/servicemonitor.yaml"))?;
    let sm = one(&sm_docs, "ServiceMonitor")?;
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    let svc_labels = svc["metadata"]["labels"]
        .as_object()
        .context("service labels")?;
    let sel = sm["spec"]["selector"]["matchLabels"]
        .as_object()
        .context("selector")?;
    assert!(!sel.is_empty() && sel.iter().all(|(k, v)| svc_labels.get(k) == Some(v)));
    assert!(
        strings(&sm["spec"]["namespaceSelector"]["matchNames"]).contains(
            svc["metadata"]["namespace"]
                .as_str()
                .context("service namespace")?
        )
    );
    let endpoints = sm["spec"]["endpoints"].as_array().context("endpoints")?;
    assert!(
        endpoints
            .iter()
            .all(|e| e["port"] == "metrics" && e["path"] == "/metrics")
    );
    // The traced process's pod/namespace labels must survive the scrape
    // (the dashboard and alert rules filter on them).
    assert!(endpoints.iter().all(|e| e["honorLabels"] == true));
    Ok(())
}

/// The PrometheusRule is a CRD the validator has no schema for: its shape is
/// checked by hand against the Operator's API (monitoring.coreos.com/v1), and
/// its groups must equal the plain rules file's, which promtool checks
/// (tests/tests/observability.rs).
#[test]
fn prometheusrule_matches_the_rules_file() -> Result<()> {
    let docs = load(&deploy_dir().join("optional/prometheusrule.yaml"))?;
    let pr = one(&docs, "PrometheusRule")?;
    assert_eq!(pr["apiVersion"], "monitoring.coreos.com/v1");
    let ns = all_docs()?;
    let svc = one(&ns, "Service")?;
    assert_eq!(pr["metadata"]["namespace"], svc["metadata"]["namespace"]);
    assert!(
        pr["metadata"]["name"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
    );
    let spec = pr["spec"].as_object().context("spec")?;
    assert_eq!(
        spec.keys().collect::<Vec<_>>(),
        ["groups"],
        "PrometheusRule spec holds groups only"
    );
    let plain = load(&deploy_dir().join("prometheus/tracer-rules.yaml"))?;
    let [plain] = plain.as_slice() else {
        bail!("the rules file holds one document");
    };
    assert_eq!(
        pr["spec"]["groups"], plain["groups"],
        "deploy/optional/prometheusrule.yaml and deploy/prometheus/tracer-rules.yaml differ"
    );
    let rule_keys: BTreeSet<&str> = ["alert", "expr", "for", "labels", "annotations"].into();
    let duration = |d: &str| {
        !d.is_empty()
            && d.trim_end_matches(['s', 'm', 'h', 'd', 'w', 'y'])
                .chars()
                .all(|c| c.is_ascii_digit())
    };
    for g in pr["spec"]["groups"].as_array().context("groups")? {
        assert!(g["name"].as_str().is_some_and(|n| !n.is_empty()));
        for r in g["rules"].as_array().context("rules")? {
            let o = r.as_object().context("rule")?;
            assert!(o.keys().all(|k| rule_keys.contains(k.as_str())), "{r}");
            assert!(
                r["alert"].as_str().is_some() && r["expr"].as_str().is_some(),
                "{r}"
            );
            if let Some(f) = r.get("for") {
                assert!(f.as_str().is_some_and(duration), "for: {f}");
            }
            assert!(
                ["critical", "warning", "info"]
                    .contains(&r["labels"]["severity"].as_str().unwrap_or("")),
                "{r}"
            );
            for (_, v) in r["annotations"].as_object().into_iter().flatten() {
                assert!(v.is_string(), "{r}");
            }
        }
    }
    Ok(())
}

#[test]
fn dockerfile_builds_with_xtask_and_ships_only_tracer() -> Result<()> {
    let df = fs::read_to_string(deploy_dir().join("Dockerfile"))?;
    let stages: Vec<&str> = df.split("\nFROM ").skip(1).collect();
    assert!(stages.len() >= 2, "multi-stage build expected");
    assert!(df.contains("cargo xtask setup") && df.contains("cargo xtask build"));
    let last = stages.last().context("final stage")?;
    let copies: Vec<&str> = last
        .lines()
        .filter(|l| l.trim_start().starts_with("COPY"))
        .collect();
    assert_eq!(
        copies.len(),
        1,
        "final stage copies more than the binary: {copies:?}"
    );
    assert!(
        copies[0].ends_with("/usr/local/bin/tracer"),
        "{}",
        copies[0]
    );
    assert!(
        !last.contains("\nRUN "),
        "final stage runs commands: no extra files"
    );
    let entry = last
        .lines()
        .find(|l| l.starts_with("ENTRYPOINT"))
        .context("ENTRYPOINT")?;
    assert!(entry.contains("/usr/local/bin/tracer"));
    Ok(())
}

/// The agent's capabilities, as the DaemonSet grants them.
fn daemonset_caps() -> Result<(Vec<String>, bool)> {
    let docs = all_docs()?;
    let sc =
        &one(&docs, "DaemonSet")?["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    let caps = strings(&sc["capabilities"]["add"])
        .into_iter()
        .map(str::to_string)
        .collect();
    let no_new_privs = sc["allowPrivilegeEscalation"] == false;
    Ok((caps, no_new_privs))
}

/// `tracer attach` confined like the agent container: every capability outside
/// `caps` gone from the bounding, permitted and effective sets (uid 0 keeps
/// only the bounding set across exec), and no_new_privs when the pod sets it.
fn attach_with_caps(
    caps: &[String],
    no_new_privs: bool,
    pid: u32,
) -> Result<(bool, String, Option<Value>)> {
    let report = std::env::temp_dir().join(format!(
        "tracer-deploy-caps-{}-{}.json",
        std::process::id(),
        caps.join("-")
    ));
    let _ = fs::remove_file(&report);
    let bounding: String = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{}", c.to_ascii_lowercase())))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd = Command::new("setpriv");
    if no_new_privs {
        cmd.arg("--no-new-privs");
    }
    let out = cmd
        .arg(format!("--bounding-set={bounding}"))
        .args(["--inh-caps=-all", "--"])
        .arg(tracer_bin()?)
        .args([
            "attach",
            "--pid",
            &pid.to_string(),
            "--duration",
            "2s",
            "--json-report",
        ])
        .arg(&report)
        .output()
        .context("running setpriv (util-linux)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let json = fs::read(&report)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let _ = fs::remove_file(&report);
    Ok((out.status.success(), text, json))
}

/// Ground truth for the security section: with exactly the DaemonSet's
/// capabilities, tracer traces a contended Go program owned by another user
/// (as in another container); without CAP_SYS_PTRACE it cannot even open the
/// binary, and without CAP_SYS_ADMIN a patched kernel refuses the uprobes.
#[test]
fn manifest_capabilities_trace_another_users_process() -> Result<()> {
    privileged_test!();
    let _serial = serial();
    let (caps, no_new_privs) = daemonset_caps()?;
    let tc = classic_and_swiss()?.pop().context("toolchain")?;
    let fixture = build_fixture(&tc, "contention", Variant::Plain)?;
    // The cache under /root is not reachable for uid 65534: run a copy.
    let dir = std::env::temp_dir().join(format!("tracer-deploy-fixture-{}", std::process::id()));
    fs::create_dir_all(&dir)?;
    let bin = dir.join("contention");
    fs::copy(&fixture, &bin)?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
    }
    let mut child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&bin)
        .args(["-g", "4", "-m", "1000000", "-hold", "1ms"])
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let pid = child.id();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let result = (|| -> Result<()> {
        let owner = fs::read_to_string(format!("/proc/{pid}/status"))?;
        ensure!(
            owner.lines().any(|l| l.starts_with("Uid:\t65534")),
            "fixture does not run as 65534: {owner}"
        );

        let (ok, text, report) = attach_with_caps(&caps, no_new_privs, pid)?;
        ensure!(ok, "with {caps:?}: {text}");
        let report = report.context("no report")?;
        let locks = report["locks"].as_array().cloned().unwrap_or_default();
        let contentions: u64 = locks.iter().filter_map(|l| l["contentions"].as_u64()).sum();
        ensure!(
            contentions > 0,
            "with {caps:?}: no contention traced: {text}"
        );
        ensure!(locks[0]["site"]["function"] == "main.holdLock", "{text}");

        let without =
            |cap: &str| -> Vec<String> { caps.iter().filter(|c| *c != cap).cloned().collect() };
        let (ok, text, _) = attach_with_caps(&without("SYS_PTRACE"), no_new_privs, pid)?;
        ensure!(
            !ok,
            "traced without SYS_PTRACE: the capability is not needed?\n{text}"
        );
        ensure!(
            text.contains(&format!("/proc/{pid}/exe")) && text.contains("Permission denied"),
            "without SYS_PTRACE: {text}"
        );

        // SYS_ADMIN subsumes BPF and PERFMON; whether uprobes need it depends on
        // the kernel having the CVE-2025-38466 fix.
        let (ok, text, _) = attach_with_caps(&without("SYS_ADMIN"), true, pid)?;
        if ok {
            eprintln!(
                "note: this kernel creates uprobes with CAP_PERFMON; SYS_ADMIN is only needed on patched kernels"
            );
        } else {
            ensure!(
                text.contains("perf_event_open") && text.contains("Permission denied"),
                "without SYS_ADMIN, failed for another reason than the uprobe check: {text}"
            );
        }
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    let _ = fs::remove_dir_all(&dir);
    result
}
