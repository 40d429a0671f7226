//! Exports of a report for other tools: pprof profiles (`go tool pprof`,
//! Pyroscope, Parca) and SARIF (code-scanning UIs, CI gates).

pub mod pprof;
pub mod sarif;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::report::Report;
use crate::symbols::{PcFrame, StackCount};

/// Exit code of `tracer run`/`attach` with `--fail-on-findings` when the
/// program itself succeeded but something was found.
pub const FINDINGS_EXIT_CODE: i32 = 3;

/// What to write when tracing ends, besides the table and JSON report.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    /// Directory for `<pid>-<kind>.pb.gz` profiles.
    pub pprof: Option<PathBuf>,
    /// Path of the SARIF log.
    pub sarif: Option<PathBuf>,
    /// Source root SARIF paths are relative to (default: the current directory).
    pub sarif_root: Option<PathBuf>,
    /// Exit with [`FINDINGS_EXIT_CODE`] when there are findings.
    pub fail_on_findings: bool,
}

impl ExportOptions {
    /// Writes the profiles and the SARIF log that were asked for.
    pub fn write(&self, report: &Report) -> Result<()> {
        if let Some(dir) = &self.pprof {
            for p in write_profiles(dir, report)? {
                tracing::info!("wrote {}", p.display());
            }
        }
        if let Some(path) = &self.sarif {
            let root = match &self.sarif_root {
                Some(r) => Some(
                    std::path::absolute(r)
                        .with_context(|| format!("--sarif-root {}", r.display()))?,
                ),
                // No current directory (deleted): every path stays absolute.
                None => std::env::current_dir().ok(),
            };
            let json = serde_json::to_vec_pretty(&sarif::sarif(&[report], root.as_deref()))?;
            std::fs::write(path, json)
                .with_context(|| format!("writing SARIF to {}", path.display()))?;
        }
        Ok(())
    }

    /// The exit code given the program's own (0 for attach): a failing
    /// program keeps its code, so a crash is never hidden behind ours.
    pub fn exit_code(&self, program_code: i32, report: &Report) -> i32 {
        if program_code == 0 && self.fail_on_findings && !report.findings.is_empty() {
            FINDINGS_EXIT_CODE
        } else {
            program_code
        }
    }
}

/// A profile kind, named as in net/http/pprof where one exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Unlocker stacks of contended locks (needs `--holders`).
    Mutex,
    /// Waiter stacks and wait time.
    Block,
    /// Map operations (needs `--maps deep`).
    Maps,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Mutex, Kind::Block, Kind::Maps];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Mutex => "mutex",
            Kind::Block => "block",
            Kind::Maps => "maps",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// (type, unit) of each value, as Go's own profiles name them.
    pub fn sample_types(self) -> &'static [(&'static str, &'static str)] {
        match self {
            // Only wakeups are counted on the unlock side: no hold time is
            // measured, so no delay is claimed.
            Kind::Mutex => &[("contentions", "count")],
            Kind::Block => &[("contentions", "count"), ("delay", "nanoseconds")],
            Kind::Maps => &[("operations", "count"), ("time", "nanoseconds")],
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::Mutex => {
                "tracer mutex profile: stacks of the code that unlocked a contended sync.Mutex/RWMutex and had to wake a waiter; contentions = such unlocks (no delay: hold times are not measured)"
            }
            Kind::Block => {
                "tracer block profile: stacks of goroutines that waited on a contended sync.Mutex/RWMutex; contentions = waits, delay = time waited"
            }
            Kind::Maps => {
                "tracer maps profile: stacks of Go map operations (--maps deep); operations = calls, time = time inside the map call"
            }
        }
    }
}

/// A sample's identity: its stack and its (key, value) labels.
pub type SampleKey = (Vec<PcFrame>, Vec<(String, String)>);

/// Samples of one kind of one process: values per (stack, labels), summed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Samples {
    pub kind: Kind,
    pub pid: u32,
    pub rows: BTreeMap<SampleKey, Vec<u64>>,
    pub comments: Vec<String>,
}

fn attached(probes: &[crate::ebpf::ProbeStatus], feature: &str) -> bool {
    probes
        .iter()
        .any(|p| p.feature == feature && p.status == "attached")
}

impl Samples {
    /// The samples of `kind` in `report`, or why that kind is not recorded.
    pub fn of(report: &Report, kind: Kind) -> Result<Samples, String> {
        let mut s = Samples {
            kind,
            pid: report.target.pid,
            rows: BTreeMap::new(),
            comments: vec![kind.describe().to_owned()],
        };
        let mut add = |st: &StackCount, labels: Vec<(String, String)>, values: Vec<u64>| {
            let v = s
                .rows
                .entry((st.frames.clone(), labels))
                .or_insert_with(|| vec![0; values.len()]);
            for (a, b) in v.iter_mut().zip(values) {
                *a = a.saturating_add(b);
            }
        };
        let lock_labels = |name: &Option<String>, address: &str, kind: &str| {
            vec![
                (
                    "lock".to_owned(),
                    name.clone().unwrap_or(address.to_owned()),
                ),
                ("lock_kind".to_owned(), kind.to_owned()),
            ]
        };
        match kind {
            Kind::Block => {
                for l in &report.locks {
                    for st in &l.stacks {
                        add(
                            st,
                            lock_labels(&l.name, &l.address, l.kind),
                            vec![st.count, st.total_ns],
                        );
                    }
                }
            }
            Kind::Mutex => {
                if !attached(&report.probes, "mutex_unlock") {
                    return Err("the mutex profile holds unlocker stacks, recorded only with --holders (the block profile has the waiters)".into());
                }
                for h in &report.holders {
                    for st in &h.stacks {
                        add(st, lock_labels(&h.name, &h.address, h.kind), vec![st.count]);
                    }
                }
            }
            Kind::Maps => {
                if !attached(&report.map_probes, "map_ops") {
                    return Err("map operations are recorded only with --maps deep".into());
                }
                for m in &report.maps {
                    for op in &m.ops {
                        for st in &op.stacks {
                            let labels = vec![
                                ("map".to_owned(), m.address.clone()),
                                ("op".to_owned(), op.kind.to_owned()),
                            ];
                            add(st, labels, vec![st.count, st.total_ns]);
                        }
                    }
                }
            }
        }
        if let Some(p) = &report.lock_probe_pauses
            && kind != Kind::Maps
        {
            s.comments.push(format!(
                "lock probes were paused {} time(s) (--max-lock-rate): counts are lower bounds",
                p.pauses
            ));
        }
        Ok(s)
    }

    /// What happened after `before` (an earlier read of the same process):
    /// the kernel's aggregates only grow, so this is a per-stack difference;
    /// stacks with nothing new are left out.
    pub fn since(&self, before: &Samples) -> Samples {
        let rows = self
            .rows
            .iter()
            .filter_map(|(k, v)| {
                let d: Vec<u64> = match before.rows.get(k) {
                    Some(b) => v.iter().zip(b).map(|(a, b)| a.saturating_sub(*b)).collect(),
                    None => v.clone(),
                };
                d.iter().any(|&x| x > 0).then(|| (k.clone(), d))
            })
            .collect();
        Samples {
            rows,
            ..self.clone()
        }
    }

    /// Sum of each value over all samples.
    pub fn totals(&self) -> Vec<u64> {
        let mut t = vec![0u64; self.kind.sample_types().len()];
        for v in self.rows.values() {
            for (a, b) in t.iter_mut().zip(v) {
                *a = a.saturating_add(*b);
            }
        }
        t
    }

    pub fn to_profile(
        &self,
        image: Option<&crate::report::Image>,
        time_nanos: i64,
        duration_nanos: i64,
    ) -> pprof::Profile {
        let mut b = pprof::Builder::new(self.kind.sample_types(), image);
        for c in &self.comments {
            b.comment(c);
        }
        b.comment(&format!("pid {}", self.pid));
        for ((frames, labels), values) in &self.rows {
            let v: Vec<i64> = values
                .iter()
                .map(|&x| i64::try_from(x).unwrap_or(i64::MAX))
                .collect();
            b.sample(frames, &v, labels);
        }
        b.finish(time_nanos, duration_nanos)
    }
}

/// Nanoseconds since the Unix epoch, for a profile's `time_nanos`.
pub fn unix_now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// Writes `DIR/<pid>-<kind>.pb.gz` for every kind the report records and
/// returns the paths written.
pub fn write_profiles(dir: &Path, report: &Report) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let now = unix_now_ns();
    let span = i64::try_from(report.duration_ns).unwrap_or(i64::MAX);
    let mut written = Vec::new();
    for kind in Kind::ALL {
        let Ok(s) = Samples::of(report, kind) else {
            continue;
        };
        let p = s.to_profile(report.image.as_ref(), now.saturating_sub(span), span);
        let path = dir.join(format!("{}-{}.pb.gz", report.target.pid, kind.name()));
        std::fs::write(&path, pprof::encode_gz(&p)?)
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::synthetic;

    fn frame(f: &str, address: u64) -> PcFrame {
        PcFrame {
            address,
            lines: vec![synthetic::site(f, "/src/main.go", 1)],
        }
    }

    #[test]
    fn block_samples_sum_to_the_report_and_deltas_subtract() {
        let mut l = synthetic::lock("0x10", "mutex", synthetic::site("main.a", "m.go", 1), &[5]);
        l.stacks = vec![
            StackCount {
                frames: vec![frame("main.a", 1), frame("main.main", 2)],
                count: 3,
                total_ns: 30,
            },
            StackCount {
                frames: vec![frame("main.a", 1), frame("main.other", 3)],
                count: 2,
                total_ns: 70,
            },
        ];
        let r = synthetic::report(1, vec![l.clone()], vec![], vec![]);
        let s = Samples::of(&r, Kind::Block).expect("block");
        assert_eq!(s.totals(), [5, 100]);
        l.stacks[0].count = 10;
        l.stacks[0].total_ns = 35;
        let r2 = synthetic::report(1, vec![l], vec![], vec![]);
        let d = Samples::of(&r2, Kind::Block).expect("block").since(&s);
        assert_eq!(d.rows.len(), 1, "the unchanged stack is left out");
        assert_eq!(d.totals(), [7, 5]);
        // Without the holder and deep-map probes those kinds are refused.
        assert!(Samples::of(&r2, Kind::Mutex).is_err());
        assert!(Samples::of(&r2, Kind::Maps).is_err());
    }

    #[test]
    fn kinds_parse_by_name_only() {
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.name()), Some(k));
        }
        assert_eq!(Kind::parse("heap"), None);
        assert_eq!(Kind::parse(""), None);
    }
}
