//! Where the agent publishes what it sees, for every front end at once: the
//! gRPC server, the Prometheus endpoint and `tracer top`'s embedded agent all
//! read from one [`Hub`], so they show the same numbers.
//!
//! Snapshots are replaced whole (readers take an `Arc`, never a lock held
//! across I/O); findings go into a bounded history with agent-wide sequence
//! numbers, so a client that fell behind or reconnects can resume.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    ebpf::ProbeStatus,
    report::{AnyFinding, Report},
};

/// A process's labels travel in every snapshot.
pub use crate::process::Labels;

/// Where a process stands with the agent.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProcState {
    Traced,
    /// Probes could not be placed; `reason` says why.
    Failed,
    /// Exited; kept for one refresh so its last numbers and findings are seen.
    Exited,
    /// Still running when the agent stopped and detached its probes: the
    /// numbers are final for the agent, not for the process.
    Detached,
}

/// One Go process known to the agent.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessInfo {
    /// Host pid (the agent's pid namespace).
    pub pid: u32,
    /// Pid in the process's innermost pid namespace.
    pub ns_pid: u32,
    pub comm: String,
    pub exe: String,
    pub go_version: String,
    pub labels: Labels,
    pub state: ProcState,
    pub reason: Option<String>,
    pub probes: Vec<ProbeStatus>,
    /// From exec (or from discovery, for processes found by the /proc scan)
    /// to probes live.
    pub attach_latency_ns: u64,
    pub traced_since_unix_ns: u64,
}

/// The agent's own health.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Health {
    pub processes_traced: u32,
    pub processes_failed: u32,
    /// Go processes that exited before their probes were live (a program
    /// shorter than the first attach of its binary, ~0.1 s).
    pub processes_missed: u64,
    /// Selected processes whose executable the agent may not open (it lacks
    /// CAP_SYS_PTRACE and they run as another user).
    pub processes_unreadable: u64,
    /// Events the kernel side could not deliver or keep.
    pub events_lost: u64,
    /// Entries evicted from bounded kernel tables.
    pub map_evictions: u64,
    /// Probe program runs and kernel run time (non-zero with BPF stats on).
    pub probe_hits: u64,
    pub bpf_run_time_ns: u64,
    pub rss_bytes: u64,
}

/// One hook and the mechanism chosen for it.
#[derive(Clone, Debug, Serialize)]
pub struct HookInfo {
    pub feature: String,
    pub mechanism: String,
    pub status: String,
    pub reason: Option<String>,
}

/// Facts about the agent that change rarely.
#[derive(Clone, Debug, Serialize)]
pub struct AgentInfo {
    pub version: String,
    pub node: String,
    pub kernel: String,
    pub btf: bool,
    pub started_unix_ns: u64,
    pub hooks: Vec<HookInfo>,
}

/// Everything the agent knows at one instant: totals since each process was
/// first traced. Deltas are computed by each consumer against the previous
/// snapshot it saw, so every client can pick its own interval.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeSnapshot {
    /// Increases by one per refresh of the agent.
    pub generation: u64,
    pub taken_unix_ns: u64,
    pub node: String,
    pub processes: Vec<ProcessInfo>,
    /// One report per traced (or just exited) process, same order as
    /// `processes` is not guaranteed: match by `report.target.pid`.
    pub reports: Vec<Report>,
    pub health: Health,
    /// Go versions of every process traced so far.
    pub go_versions: Vec<String>,
}

/// A finding as published: stamped with an agent-wide sequence number.
#[derive(Clone, Debug, Serialize)]
pub struct FindingRecord {
    pub seq: u64,
    pub at_unix_ns: u64,
    pub pid: u32,
    pub comm: String,
    pub labels: Labels,
    pub finding: AnyFinding,
}

/// Bounded history of findings plus a wake-up for streams waiting on new ones.
pub struct FindingsLog {
    history: Mutex<VecDeque<Arc<FindingRecord>>>,
    capacity: usize,
    next_seq: Mutex<u64>,
    /// Carries the newest sequence number; streams wait on it.
    newest: watch::Sender<u64>,
}

impl FindingsLog {
    pub fn new(capacity: usize) -> Self {
        Self {
            history: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity: capacity.max(1),
            next_seq: Mutex::new(1),
            newest: watch::channel(0).0,
        }
    }

    /// Stamps and stores a finding; the oldest one is forgotten when full.
    pub fn publish(
        &self,
        pid: u32,
        comm: String,
        labels: Labels,
        at_unix_ns: u64,
        finding: AnyFinding,
    ) -> u64 {
        let mut next = self.next_seq.lock().unwrap_or_else(|p| p.into_inner());
        let seq = *next;
        *next += 1;
        let rec = Arc::new(FindingRecord {
            seq,
            at_unix_ns,
            pid,
            comm,
            labels,
            finding,
        });
        {
            let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
            if h.len() == self.capacity {
                h.pop_front();
            }
            h.push_back(rec);
        }
        drop(next);
        self.newest.send_replace(seq);
        seq
    }

    /// Findings with `seq > after`, oldest first, at most `limit`.
    pub fn since(&self, after: u64, limit: usize) -> Vec<Arc<FindingRecord>> {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.iter()
            .filter(|r| r.seq > after)
            .take(limit)
            .cloned()
            .collect()
    }

    /// Oldest sequence number still held (0 when empty).
    pub fn oldest_seq(&self) -> u64 {
        let h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        h.front().map_or(0, |r| r.seq)
    }

    /// A receiver that changes whenever a finding is published.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.newest.subscribe()
    }
}

/// Requests a front end can make of the agent loop.
pub enum Command {
    /// Turn on the deep map tier for `pid` for `duration`, probing only map
    /// calls from `sites` packages when not empty, unless `max_running` deep
    /// traces already run on the node. Replies with the probe statuses, or
    /// why it could not start (unknown pid, already running, the limit).
    DeepMaps {
        pid: u32,
        duration: Duration,
        sites: Vec<String>,
        max_running: usize,
        reply: oneshot::Sender<Result<Vec<ProbeStatus>, Refused>>,
    },
    /// End `pid`'s deep map trace now; its results so far stay.
    StopDeepMaps {
        pid: u32,
        reply: oneshot::Sender<Result<(), Refused>>,
    },
}

/// Why the agent loop did not do what a [`Command`] asked; front ends map
/// each to their own error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// A node-wide limit is reached.
    Limit(String),
    /// Nothing to act on (no such process, no trace running).
    NotFound(String),
    /// Not possible in the current state.
    Failed(String),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Limit(m) | Refused::NotFound(m) | Refused::Failed(m) => f.write_str(m),
        }
    }
}

/// What front ends hold: read-only views plus a command channel.
#[derive(Clone)]
pub struct Hub {
    pub info: Arc<Mutex<AgentInfo>>,
    pub snapshots: watch::Receiver<Arc<NodeSnapshot>>,
    pub findings: Arc<FindingsLog>,
    pub commands: mpsc::Sender<Command>,
    /// How often the agent refreshes its snapshot; Watch intervals below this
    /// repeat the same totals.
    pub refresh: Duration,
}

impl Hub {
    /// The newest snapshot.
    pub fn snapshot(&self) -> Arc<NodeSnapshot> {
        self.snapshots.borrow().clone()
    }

    pub fn info(&self) -> AgentInfo {
        self.info.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The agent loop's side of a [`Hub`].
pub struct HubWriter {
    pub info: Arc<Mutex<AgentInfo>>,
    pub snapshots: watch::Sender<Arc<NodeSnapshot>>,
    pub findings: Arc<FindingsLog>,
    pub commands: mpsc::Receiver<Command>,
}

/// A connected hub and writer pair.
pub fn channel(info: AgentInfo, refresh: Duration, findings_capacity: usize) -> (Hub, HubWriter) {
    let info = Arc::new(Mutex::new(info));
    let (snap_tx, snap_rx) = watch::channel(Arc::new(NodeSnapshot::default()));
    let findings = Arc::new(FindingsLog::new(findings_capacity));
    let (cmd_tx, cmd_rx) = mpsc::channel(16);
    (
        Hub {
            info: info.clone(),
            snapshots: snap_rx,
            findings: findings.clone(),
            commands: cmd_tx,
            refresh,
        },
        HubWriter {
            info,
            snapshots: snap_tx,
            findings,
            commands: cmd_rx,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock_finding(pid: u32) -> AnyFinding {
        AnyFinding::Lock(crate::report::Finding {
            kind: "stuck_lock_wait",
            pid,
            goroutine: None,
            lock: crate::report::LockRef {
                address: "0x1".into(),
                kind: "mutex",
                name: None,
            },
            age_ns: 1,
            ongoing: true,
            site: None,
            stack: vec![],
        })
    }

    #[test]
    fn findings_are_sequenced_and_bounded() {
        let log = FindingsLog::new(3);
        for pid in 1..=5 {
            log.publish(pid, "x".into(), Labels::default(), 0, lock_finding(pid));
        }
        let all = log.since(0, 100);
        let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5], "oldest dropped, order kept");
        assert_eq!(log.oldest_seq(), 3);
        assert_eq!(log.since(4, 100).len(), 1);
        assert_eq!(*log.subscribe().borrow(), 5);
    }
}
