//! Findings as SARIF 2.1.0 (OASIS Static Analysis Results Interchange
//! Format), for code-scanning UIs and CI gates. Each finding kind is a rule;
//! both sides of a map race are given: the operation that started second as
//! the result's location, the one in flight as a related location, and each
//! goroutine's stack as a thread flow and a SARIF stack.

use std::path::Path;

use serde_json::{Value, json};

use crate::latency::fmt_ns;
use crate::maps::MapFinding;
use crate::maps::report::OpSideReport;
use crate::report::{AnyFinding, Finding, Report};
use crate::symbols::{Site, at_site};

/// One rule per finding kind: (id, name, level, short text, help text).
const RULES: [(&str, &str, &str, &str, &str); 6] = [
    (
        "map_fatal",
        "MapFatalError",
        "error",
        "The Go runtime stopped the program with a fatal map error.",
        "The runtime detected unsynchronized map access (e.g. \"concurrent map writes\") and crashed the process. Guard the map with a sync.Mutex/RWMutex, or use sync.Map for append-only caches. `go test -race` reproduces the race with both stacks.",
    ),
    (
        "runtime_fatal",
        "RuntimeFatalError",
        "error",
        "The Go runtime stopped the program with a fatal error.",
        "A fatal runtime error (e.g. all goroutines are asleep, out of memory) ended the process; the stack is the goroutine that raised it.",
    ),
    (
        "concurrent_map_write",
        "ConcurrentMapWrite",
        "error",
        "Two goroutines wrote the same map at the same time.",
        "Overlapping writes to one Go map are a data race that the runtime may turn into a fatal \"concurrent map writes\". Serialize the writes with a mutex owned with the map.",
    ),
    (
        "concurrent_map_read_write",
        "ConcurrentMapReadWrite",
        "error",
        "A goroutine read a map while another wrote it.",
        "A read overlapping a write of one Go map is a data race (fatal \"concurrent map read and map write\" when the runtime catches it). Take a read lock for reads and a write lock for writes (sync.RWMutex).",
    ),
    (
        "concurrent_map_iteration_write",
        "ConcurrentMapIterationWrite",
        "error",
        "A goroutine iterated a map while another wrote it.",
        "Ranging over a Go map while another goroutine writes it is a data race (fatal \"concurrent map iteration and map write\"). Hold the lock for the whole range loop, or iterate over a copy.",
    ),
    (
        "stuck_lock_wait",
        "StuckLockWait",
        "warning",
        "A goroutine waited on a lock longer than the stuck threshold.",
        "A sync.Mutex/RWMutex wait lasted longer than --stuck-threshold: the holder keeps the lock across slow work, or a lock-order deadlock. Look at which code holds the lock (tracer --holders, the mutex profile) and shorten the critical section.",
    ),
];

/// A file path as a URI (`file:///...`); SARIF wants URIs, Go records absolute paths.
fn file_uri(path: &str) -> String {
    let mut out = String::from(if path.starts_with('/') { "file://" } else { "" });
    for c in path.chars() {
        match c {
            ' ' => out.push_str("%20"),
            '%' => out.push_str("%25"),
            '#' => out.push_str("%23"),
            '?' => out.push_str("%3F"),
            c => out.push(c),
        }
    }
    out
}

fn location(site: &Site, message: Option<String>) -> Value {
    let mut loc = json!({
        "logicalLocations": [{"fullyQualifiedName": site.function, "kind": "function"}],
    });
    if !site.file.is_empty() {
        let mut phys = json!({"artifactLocation": {"uri": file_uri(&site.file)}});
        if site.line > 0 {
            phys["region"] = json!({"startLine": site.line});
        }
        loc["physicalLocation"] = phys;
    }
    if let Some(m) = message {
        loc["message"] = json!({"text": m});
    }
    loc
}

fn stack(frames: &[Site], message: &str) -> Value {
    json!({
        "message": {"text": message},
        "frames": frames.iter().map(|s| json!({"location": location(s, None)})).collect::<Vec<_>>(),
    })
}

fn thread_flow(frames: &[Site], message: &str) -> Option<Value> {
    // A thread flow needs at least one location; outermost frame first.
    (!frames.is_empty()).then(|| {
        json!({
            "message": {"text": message},
            "locations": frames.iter().rev().map(|s| json!({"location": location(s, None)})).collect::<Vec<_>>(),
        })
    })
}

fn goroutine(g: Option<u64>) -> String {
    g.map_or("goroutine ?".into(), |g| format!("goroutine {g}"))
}

fn side_text(s: &OpSideReport) -> String {
    format!(
        "{} {}{}",
        s.op,
        goroutine(s.goroutine),
        at_site(s.site.as_ref())
    )
}

fn map_result(f: &MapFinding) -> Value {
    let message = match (&f.op, &f.other) {
        (Some(a), Some(b)) if f.explanation.is_some() => format!(
            "{} on map {}: {} and {}, unordered by any synchronisation ({}; {} time(s))",
            f.kind,
            f.map.as_deref().unwrap_or("?"),
            side_text(a),
            side_text(b),
            f.explanation.as_deref().unwrap_or(""),
            f.count
        ),
        (Some(a), Some(b)) => format!(
            "{} on map {}: {} overlapped {} ({} time(s))",
            f.kind,
            f.map.as_deref().unwrap_or("?"),
            side_text(a),
            side_text(b),
            f.count
        ),
        _ => format!(
            "{}: {} in {}{}",
            f.kind,
            f.message.as_deref().unwrap_or("fatal error"),
            goroutine(f.goroutine),
            at_site(f.site.as_ref())
        ),
    };
    let mut r = json!({
        "message": {"text": message},
        "properties": {"pid": f.pid, "count": f.count, "goroutine": f.goroutine, "map": f.map},
    });
    if let Some(s) = &f.site {
        r["locations"] = json!([location(s, None)]);
    }
    let mut stacks = vec![stack(&f.stack, &goroutine(f.goroutine))];
    let mut flows: Vec<Value> = thread_flow(&f.stack, &goroutine(f.goroutine))
        .into_iter()
        .collect();
    if let Some(o) = &f.other {
        let text = format!("the other side: {}", side_text(o));
        if let Some(s) = &o.site {
            let mut rel = location(s, Some(text.clone()));
            rel["id"] = json!(1);
            r["relatedLocations"] = json!([rel]);
        }
        stacks.push(stack(&o.stack, &text));
        flows.extend(thread_flow(&o.stack, &text));
    }
    r["stacks"] = json!(stacks);
    if !flows.is_empty() {
        r["codeFlows"] = json!([{"threadFlows": flows}]);
    }
    r
}

fn lock_result(f: &Finding) -> Value {
    let lock = f.lock.name.as_deref().unwrap_or(&f.lock.address);
    let message = format!(
        "{} {} on {} {} for {}{}",
        goroutine(f.goroutine),
        if f.ongoing {
            "was still waiting"
        } else {
            "waited"
        },
        f.lock.kind,
        lock,
        fmt_ns(f.age_ns),
        at_site(f.site.as_ref())
    );
    let mut r = json!({
        "message": {"text": message},
        "stacks": [stack(&f.stack, &goroutine(f.goroutine))],
        "properties": {"pid": f.pid, "goroutine": f.goroutine, "lock": lock, "age_ns": f.age_ns, "ongoing": f.ongoing},
    });
    if let Some(s) = &f.site {
        r["locations"] = json!([location(s, None)]);
    }
    if let Some(t) = thread_flow(&f.stack, &goroutine(f.goroutine)) {
        r["codeFlows"] = json!([{"threadFlows": [t]}]);
    }
    r
}

/// The base id of the source root that relative URIs are resolved against.
const SRCROOT: &str = "SRCROOT";

/// Makes every `file://` artifact URI under `root` relative to [`SRCROOT`],
/// which the run declares as `root`: code-scanning UIs (GitHub's among
/// them) match results to files by repository-relative path. Files outside
/// `root` (the Go toolchain's, a dependency's) keep their absolute URI.
fn relative_to(log: &mut Value, root: &Path) {
    let Some(root) = root.to_str() else { return };
    let mut base = file_uri(root);
    if !base.ends_with('/') {
        base.push('/');
    }
    if !base.starts_with("file:///") {
        return;
    }
    fn walk(v: &mut Value, base: &str) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Object(a)) = m.get_mut("artifactLocation") {
                    let rel = a
                        .get("uri")
                        .and_then(Value::as_str)
                        .and_then(|u| u.strip_prefix(base))
                        .filter(|r| !r.is_empty())
                        .map(str::to_owned);
                    if let Some(r) = rel {
                        a.insert("uri".into(), json!(r));
                        a.insert("uriBaseId".into(), json!(SRCROOT));
                    }
                }
                m.values_mut().for_each(|v| walk(v, base));
            }
            Value::Array(a) => a.iter_mut().for_each(|v| walk(v, base)),
            _ => {}
        }
    }
    if let Some(results) = log.pointer_mut("/runs/0/results") {
        walk(results, &base);
    }
    log["runs"][0]["originalUriBaseIds"] = json!({SRCROOT: {"uri": base}});
}

/// The SARIF log of `reports` (one run of tracer, possibly several
/// processes), with the source files under `root` as relative URIs.
pub fn sarif(reports: &[&Report], root: Option<&Path>) -> Value {
    let rules: Vec<Value> = RULES
        .iter()
        .map(|(id, name, level, short, help)| {
            json!({
                "id": id,
                "name": name,
                "shortDescription": {"text": short},
                "fullDescription": {"text": help},
                "help": {"text": help},
                "defaultConfiguration": {"level": level},
            })
        })
        .collect();
    let mut results = Vec::new();
    for f in reports.iter().flat_map(|r| &r.findings) {
        let (kind, mut r) = match f {
            AnyFinding::Map(m) => (m.kind, map_result(m)),
            AnyFinding::Lock(l) => (l.kind, lock_result(l)),
        };
        // Every kind has a rule; an unknown one still gets reported, as a warning.
        match RULES.iter().position(|(id, ..)| *id == kind) {
            Some(i) => {
                r["ruleIndex"] = json!(i);
                r["level"] = json!(RULES[i].2);
            }
            None => r["level"] = json!("warning"),
        }
        r["ruleId"] = json!(kind);
        results.push(r);
    }
    let mut log = json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "tracer",
                "version": env!("CARGO_PKG_VERSION"),
                "informationUri": "https://example.invalid/tracer",
                "rules": rules,
            }},
            "results": results,
        }],
    });
    if let Some(root) = root {
        relative_to(&mut log, root);
    }
    log
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::synthetic;

    #[test]
    fn a_race_has_both_sides_and_its_rule() {
        let side = |op: &'static str, f: &str, line, g| OpSideReport {
            op,
            goroutine: Some(g),
            site: Some(synthetic::site(f, "/src/my app/main.go", line)),
            stack: vec![
                synthetic::site(f, "/src/my app/main.go", line),
                synthetic::site("main.main", "/src/my app/main.go", 3),
            ],
        };
        let a = side("write", "main.writer", 10, 7);
        let mut r = synthetic::report(1, vec![], vec![], vec![]);
        r.findings.push(AnyFinding::Map(Box::new(MapFinding {
            kind: "concurrent_map_write",
            pid: 1,
            map: Some("0xc000010000".into()),
            message: None,
            goroutine: a.goroutine,
            site: a.site.clone(),
            stack: a.stack.clone(),
            op: Some(a),
            other: Some(side("write", "main.other", 20, 8)),
            detection: "overlap",
            overlapped: Some(true),
            explanation: None,
            count: 2,
            first_seen_ns: 0,
            last_seen_ns: 0,
        })));
        let v = sarif(&[&r], None);
        let res = &v["runs"][0]["results"][0];
        assert_eq!(res["ruleId"], "concurrent_map_write");
        let rule = &v["runs"][0]["tool"]["driver"]["rules"]
            [res["ruleIndex"].as_u64().expect("index") as usize];
        assert_eq!(rule["id"], "concurrent_map_write");
        let loc = &res["locations"][0]["physicalLocation"];
        assert_eq!(
            loc["artifactLocation"]["uri"],
            "file:///src/my%20app/main.go"
        );
        assert_eq!(loc["region"]["startLine"], 10);
        assert_eq!(
            res["relatedLocations"][0]["physicalLocation"]["region"]["startLine"],
            20
        );
        assert_eq!(
            res["codeFlows"][0]["threadFlows"].as_array().map(Vec::len),
            Some(2)
        );
        assert_eq!(res["stacks"].as_array().map(Vec::len), Some(2));

        // Under a source root: relative to SRCROOT, the toolchain's stay absolute.
        r.findings = vec![AnyFinding::Map(Box::new(synthetic::map_fatal(
            1,
            vec![
                synthetic::site("main.put", "/src/my app/cmd/main.go", 5),
                synthetic::site("main.main", "/usr/lib/go/src/runtime/proc.go", 283),
            ],
        )))];
        for root in ["/src/my app", "/src/my app/"] {
            let v = sarif(&[&r], Some(Path::new(root)));
            let run = &v["runs"][0];
            assert_eq!(
                run["originalUriBaseIds"]["SRCROOT"]["uri"],
                "file:///src/my%20app/"
            );
            let res = &run["results"][0];
            let art = &res["locations"][0]["physicalLocation"]["artifactLocation"];
            assert_eq!(art["uri"], "cmd/main.go");
            assert_eq!(art["uriBaseId"], "SRCROOT");
            let frames = &res["stacks"][0]["frames"];
            let uri = |i: usize| &frames[i]["location"]["physicalLocation"]["artifactLocation"];
            assert_eq!(uri(0)["uri"], "cmd/main.go");
            assert_eq!(uri(1)["uri"], "file:///usr/lib/go/src/runtime/proc.go");
            assert!(uri(1).get("uriBaseId").is_none());
        }
        // A root that is only a prefix of a directory name does not match.
        let v = sarif(&[&r], Some(Path::new("/src/my")));
        assert_eq!(
            v["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
            "file:///src/my%20app/cmd/main.go"
        );
    }
}
