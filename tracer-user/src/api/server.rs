//! The `tracer.v1.Tracer` service over a [`Hub`].
//!
//! Every stream runs in its own task and talks to tonic through a small
//! bounded channel. Watch never waits on a client: a snapshot that does not
//! fit is dropped and counted, so a stuck client costs one task and a few
//! buffered messages, never the agent's or other clients' progress. Findings
//! are pulled from the hub's history at the client's pace, so a slow reader
//! only loses what ages out of that history (reported in `dropped_before`).
//!
//! Stream slots are bounded node-wide, per client address, and with a
//! reserve that only the root-only Unix socket may use, so that TCP clients
//! cannot lock `tracer top` out.

use std::{collections::HashMap, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};
use tracer_api::v1::{self as pb, tracer_server::Tracer};

use super::{
    convert::{self, Owner},
    filter::{self, ProcFilter, WatchParams},
    limits::{self, Slot, Slots},
};
use crate::agent::hub::{Command, Hub, NodeSnapshot, ProcState, Refused};

/// Snapshots buffered per Watch stream before new ones are dropped: one,
/// built while the previous one is on the wire. Each costs as much memory
/// as a snapshot (megabytes on a busy node), so a stuck client must not
/// hold a queue of them (docs/grpc.md).
pub const WATCH_BUFFER: usize = 1;
/// Findings buffered per Findings stream.
pub const FINDINGS_BUFFER: usize = 64;
/// Findings read from the history per batch.
const FINDINGS_BATCH: usize = 256;
/// Open Watch + Findings streams, all clients together.
pub const MAX_STREAMS: usize = 512;
/// Of those, kept for the Unix socket (root: `tracer top` on the node).
pub const UNIX_RESERVE: usize = 32;
/// Open streams from one TCP client address.
pub const MAX_STREAMS_PER_PEER: usize = 64;
/// Deep map traces running at once on the node, unless `--max-deep-traces`.
pub const DEFAULT_MAX_DEEP_TRACES: usize = 2;
/// How long StartDeepMapTrace waits for the agent loop to take the command,
/// and then to answer it.
const COMMAND_SEND_TIMEOUT: Duration = Duration::from_secs(2);
const COMMAND_REPLY_TIMEOUT: Duration = Duration::from_secs(15);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Held by a stream's task: its node-wide slot and, for TCP clients, its
/// slot among TCP streams; given back when the task ends.
struct StreamSlot {
    _all: Slot,
    _tcp: Option<Slot>,
}

pub struct TracerService {
    hub: Hub,
    /// Every stream (Unix socket and TCP).
    streams: Arc<Slots>,
    /// TCP streams: fewer than `streams` by the Unix reserve, per peer too.
    tcp_streams: Arc<Slots>,
    max_deep_traces: usize,
    /// Becomes true when the server shuts down: open streams then end, so a
    /// graceful shutdown does not wait for clients to hang up.
    stop: watch::Receiver<bool>,
    /// Keeps `stop` open for a service made without a shutdown signal.
    _never: Option<watch::Sender<bool>>,
}

impl TracerService {
    pub fn new(hub: Hub) -> Self {
        let (tx, rx) = watch::channel(false);
        let mut s = Self::with_stop(hub, rx);
        s._never = Some(tx);
        s
    }

    /// A service whose streams end when `stop` turns true.
    pub fn with_stop(hub: Hub, stop: watch::Receiver<bool>) -> Self {
        Self {
            hub,
            streams: Slots::new(MAX_STREAMS, MAX_STREAMS),
            tcp_streams: Slots::new(MAX_STREAMS - UNIX_RESERVE, MAX_STREAMS_PER_PEER),
            max_deep_traces: DEFAULT_MAX_DEEP_TRACES,
            stop,
            _never: None,
        }
    }

    /// At most `n` deep map traces at once on the node.
    pub fn max_deep_traces(mut self, n: usize) -> Self {
        self.max_deep_traces = n;
        self
    }

    /// A stream slot for a client at `peer` (None: the Unix socket).
    fn slot(&self, peer: Option<SocketAddr>) -> Result<StreamSlot, Status> {
        let busy = |what: &str, s: &Slots| {
            Status::resource_exhausted(format!(
                "{} streams already open {what} (limit {}, {} per client address)",
                s.open(),
                s.max(),
                s.per_peer()
            ))
        };
        let tcp = match peer {
            Some(a) => Some(
                self.tcp_streams
                    .admit(Some(a.ip().into()))
                    .ok_or_else(|| busy("over TCP", &self.tcp_streams))?,
            ),
            None => None,
        };
        let all = self
            .streams
            .admit(None)
            .ok_or_else(|| busy("on this agent", &self.streams))?;
        Ok(StreamSlot {
            _all: all,
            _tcp: tcp,
        })
    }
}

pub use crate::clock::unix_now_ns;

/// Totals a stream last sent, by row key: the baseline of the next deltas.
#[derive(Default)]
pub struct Baseline {
    taken_unix_ns: u64,
    locks: HashMap<String, (u64, u64)>,
    maps: HashMap<String, (u64, u64)>,
    sync_maps: HashMap<String, u64>,
    flows: HashMap<String, (u64, u64)>,
}

/// `now - before`, where a smaller `now` means the counter restarted (a new
/// process reused the key) and everything in it is new.
fn delta(now: u64, before: Option<u64>) -> u64 {
    match before {
        Some(b) if now >= b => now - b,
        _ => now,
    }
}

/// A row before conversion: where it comes from, what it sorts by, and its
/// deltas. Only the top N are converted into messages (stacks, histograms),
/// so a process with thousands of rows costs each stream little.
struct Cand<'a, T> {
    owner: usize,
    row: &'a T,
    rank: (u64, u64),
    tie: (u32, &'a str, u64),
    delta: (u64, u64),
}

/// Sorts largest rank first (ties by `tie`) and keeps `n`.
fn top<T>(rows: &mut Vec<Cand<'_, T>>, n: usize) {
    rows.sort_by(|a, b| b.rank.cmp(&a.rank).then_with(|| a.tie.cmp(&b.tie)));
    rows.truncate(n);
}

/// One Watch message from `snap`: filtered, with deltas against `prev` (none
/// for the first message of a stream), sorted and cut to the top N per
/// section. Also returns the baseline for the next message.
pub fn build_snapshot(
    snap: &NodeSnapshot,
    p: &WatchParams,
    prev: Option<&Baseline>,
) -> (pb::Snapshot, Baseline) {
    use pb::SortKey as S;
    let node = snap.node.as_str();
    let procs = convert::process_index(snap);
    let sort = p.sort;
    let mut next = Baseline {
        taken_unix_ns: snap.taken_unix_ns,
        ..Default::default()
    };
    let d = |now: u64, before: Option<u64>| prev.map_or(0, |_| delta(now, before));
    let mut owners: Vec<Owner> = Vec::new();
    let (mut locks, mut maps, mut sync_maps, mut flows) = (vec![], vec![], vec![], vec![]);
    for report in &snap.reports {
        let owner = Owner::of(report, &procs);
        if !p.filter.matches(owner.pid, &owner.comm, &owner.labels) {
            continue;
        }
        let o = owners.len();
        let pid = owner.pid;
        owners.push(owner);
        for l in &report.locks {
            let key = convert::lock_key(pid, l);
            let before = prev.and_then(|b| b.locks.get(&key));
            let delta = (
                d(l.contentions, before.map(|b| b.0)),
                d(l.wait_ns_total, before.map(|b| b.1)),
            );
            next.locks.insert(key, (l.contentions, l.wait_ns_total));
            let rank = match sort {
                S::Unspecified | S::TotalTime => (l.wait_ns_total, l.contentions),
                S::Count => (l.contentions, l.wait_ns_total),
                S::Max => (l.wait_ns_max, l.wait_ns_total),
                S::Delta => (delta.1, delta.0),
            };
            locks.push(Cand {
                owner: o,
                row: l,
                rank,
                tie: (pid, l.address.as_str(), u64::from(l.site.line)),
                delta,
            });
        }
        for m in &report.maps {
            let key = convert::map_key(pid, &m.address);
            let ops = convert::map_ops(m);
            let before = prev.and_then(|b| b.maps.get(&key));
            let delta = (
                d(ops, before.map(|b| b.0)),
                d(m.growth_events, before.map(|b| b.1)),
            );
            next.maps.insert(key, (ops, m.growth_events));
            let ns: u64 = m.ops.iter().map(|o| o.ns_total).sum();
            let count = ops + m.growth_events;
            let rank = match sort {
                S::Unspecified | S::TotalTime => (ns, count),
                S::Count => (count, ns),
                S::Max => (m.ops.iter().map(|o| o.ns_max).max().unwrap_or(0), count),
                S::Delta => (delta.0 + delta.1, count),
            };
            maps.push(Cand {
                owner: o,
                row: m,
                rank,
                tie: (pid, m.address.as_str(), 0),
                delta,
            });
        }
        for sm in &report.sync_maps {
            let key = convert::map_key(pid, &sm.address);
            let before = prev.and_then(|b| b.sync_maps.get(&key)).copied();
            let delta = (d(sm.total, before), 0);
            next.sync_maps.insert(key, sm.total);
            let rank = match sort {
                S::Delta => (delta.0, sm.total),
                _ => (sm.total, delta.0),
            };
            sync_maps.push(Cand {
                owner: o,
                row: sm,
                rank,
                tie: (pid, sm.address.as_str(), 0),
                delta,
            });
        }
        for f in report.tcp.iter().flat_map(|t| &t.flows) {
            let key = convert::flow_key(f);
            let before = prev.and_then(|b| b.flows.get(&key));
            let delta = (
                d(f.bytes_sent, before.map(|b| b.0)),
                d(f.bytes_received, before.map(|b| b.1)),
            );
            next.flows.insert(key, (f.bytes_sent, f.bytes_received));
            let bytes = f.bytes_sent.saturating_add(f.bytes_received);
            let srtt = f.srtt_us.unwrap_or(0);
            let rank = match sort {
                S::Unspecified | S::TotalTime | S::Count => (bytes, srtt),
                S::Max => (srtt, bytes),
                S::Delta => (delta.0.saturating_add(delta.1), bytes),
            };
            flows.push(Cand {
                owner: o,
                row: f,
                rank,
                tie: (
                    pid,
                    "",
                    (u64::from(f.local_port) << 16) | u64::from(f.remote_port),
                ),
                delta,
            });
        }
    }
    let n = p.top_n;
    top(&mut locks, n);
    top(&mut maps, n);
    top(&mut sync_maps, n);
    top(&mut flows, n);
    let processes = snap
        .processes
        .iter()
        .filter(|pi| p.filter.matches(pi.pid, &pi.comm, &pi.labels))
        .map(|pi| convert::process(pi, node))
        .collect();
    let msg = pb::Snapshot {
        seq: 0,
        taken_unix_ns: snap.taken_unix_ns,
        interval_ns: prev.map_or(0, |b| snap.taken_unix_ns.saturating_sub(b.taken_unix_ns)),
        node: node.to_string(),
        locks: locks
            .iter()
            .map(|c| pb::LockRow {
                delta_contentions: c.delta.0,
                delta_wait_ns: c.delta.1,
                ..convert::lock_row(&owners[c.owner], c.row, node)
            })
            .collect(),
        maps: maps
            .iter()
            .map(|c| pb::MapRow {
                delta_ops: c.delta.0,
                delta_growth_events: c.delta.1,
                ..convert::map_row(&owners[c.owner], c.row, node)
            })
            .collect(),
        sync_maps: sync_maps
            .iter()
            .map(|c| pb::SyncMapRow {
                delta_total: c.delta.0,
                ..convert::sync_map_row(&owners[c.owner], c.row, node)
            })
            .collect(),
        flows: flows
            .iter()
            .map(|c| pb::FlowRow {
                delta_bytes_sent: c.delta.0,
                delta_bytes_received: c.delta.1,
                ..convert::flow_row(&owners[c.owner], c.row, node)
            })
            .collect(),
        processes,
        health: Some(convert::health(&snap.health)),
        dropped: 0,
    };
    (msg, next)
}

/// One Watch stream's loop: tick, build, offer; a full channel drops the
/// snapshot (its seq is skipped) and the next delivered one says how many.
async fn watch_loop(
    hub: Hub,
    p: WatchParams,
    tx: mpsc::Sender<Result<pb::Snapshot, Status>>,
    mut stop: watch::Receiver<bool>,
    _slot: StreamSlot,
) {
    let mut ticker = tokio::time::interval(p.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut baseline: Option<Baseline> = None;
    let (mut seq, mut dropped) = (0u64, 0u64);
    loop {
        tokio::select! {
            _ = tx.closed() => return,
            _ = stop.wait_for(|s| *s) => return,
            _ = ticker.tick() => {}
        }
        let snap = hub.snapshot();
        // An agent that has not refreshed yet has nothing to say.
        if snap.generation == 0 {
            continue;
        }
        seq += 1;
        // A full buffer means this snapshot would be dropped: skip the work
        // of building it, so stuck clients cost no CPU either.
        if tx.capacity() == 0 {
            dropped += 1;
            limits::count_dropped_message();
            continue;
        }
        let (mut msg, next) = build_snapshot(&snap, &p, baseline.as_ref());
        msg.seq = seq;
        msg.dropped = dropped;
        match tx.try_send(Ok(msg)) {
            Ok(()) => {
                dropped = 0;
                baseline = Some(next);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                dropped += 1;
                limits::count_dropped_message();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => return,
        }
    }
}

/// One Findings stream's loop: replay the history after `after`, then
/// follow new findings; a jump in sequence numbers that the filter did not
/// cause (history aged out under a slow reader) goes to `dropped_before`.
async fn findings_loop(
    hub: Hub,
    filter: ProcFilter,
    mut after: u64,
    tx: mpsc::Sender<Result<pb::FindingEvent, Status>>,
    mut stop: watch::Receiver<bool>,
    _slot: StreamSlot,
) {
    let log = hub.findings.clone();
    let mut newest = log.subscribe();
    // A resume point beyond anything published is from an earlier agent run.
    if after > *newest.borrow() {
        after = 0;
    }
    let mut dropped = 0u64;
    let node = hub.info().node;
    loop {
        newest.borrow_and_update();
        let batch = log.since(after, FINDINGS_BATCH);
        let full = batch.len() == FINDINGS_BATCH;
        for rec in batch {
            if after > 0 && rec.seq > after + 1 {
                dropped += rec.seq - after - 1;
            }
            after = rec.seq;
            if !filter.matches(rec.pid, &rec.comm, &rec.labels) {
                continue;
            }
            let mut ev = convert::finding(&rec, &node);
            ev.dropped_before = dropped;
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                r = tx.send(Ok(ev)) => if r.is_err() { return },
            }
            dropped = 0;
        }
        if full {
            continue;
        }
        tokio::select! {
            _ = tx.closed() => return,
            _ = stop.wait_for(|s| *s) => return,
            r = newest.changed() => if r.is_err() { return },
        }
    }
}

#[tonic::async_trait]
impl Tracer for TracerService {
    async fn info(
        &self,
        _request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        let snap = self.hub.snapshot();
        Ok(Response::new(convert::info(&self.hub.info(), &snap)))
    }

    async fn list_processes(
        &self,
        request: Request<pb::ListProcessesRequest>,
    ) -> Result<Response<pb::ListProcessesResponse>, Status> {
        let filter = ProcFilter::parse(request.get_ref().filter.as_ref())?;
        let snap = self.hub.snapshot();
        let processes = snap
            .processes
            .iter()
            .filter(|p| filter.matches(p.pid, &p.comm, &p.labels))
            .map(|p| convert::process(p, &snap.node))
            .collect();
        Ok(Response::new(pb::ListProcessesResponse { processes }))
    }

    type WatchStream = BoxStream<pb::Snapshot>;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let p = filter::watch(request.get_ref())?;
        let slot = self.slot(request.remote_addr())?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(watch_loop(self.hub.clone(), p, tx, self.stop.clone(), slot));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type FindingsStream = BoxStream<pb::FindingEvent>;

    async fn findings(
        &self,
        request: Request<pb::FindingsRequest>,
    ) -> Result<Response<Self::FindingsStream>, Status> {
        let r = request.get_ref();
        let filter = ProcFilter::parse(r.filter.as_ref())?;
        let slot = self.slot(request.remote_addr())?;
        let (tx, rx) = mpsc::channel(FINDINGS_BUFFER);
        tokio::spawn(findings_loop(
            self.hub.clone(),
            filter,
            r.after_seq,
            tx,
            self.stop.clone(),
            slot,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn start_deep_map_trace(
        &self,
        request: Request<pb::StartDeepMapTraceRequest>,
    ) -> Result<Response<pb::StartDeepMapTraceResponse>, Status> {
        let d = filter::deep(request.get_ref())?;
        {
            let snap = self.hub.snapshot();
            let proc = snap.processes.iter().find(|p| p.pid == d.pid);
            match proc.map(|p| p.state) {
                None => {
                    return Err(Status::not_found(format!(
                        "pid: {} is not a Go process traced by this agent (see ListProcesses)",
                        d.pid
                    )));
                }
                Some(ProcState::Traced) => {}
                Some(s) => {
                    return Err(Status::failed_precondition(format!(
                        "pid: {} is {}, not traced",
                        d.pid,
                        convert::state_name(s)
                    )));
                }
            }
        }
        let (reply, answer) = oneshot::channel();
        let cmd = Command::DeepMaps {
            pid: d.pid,
            duration: d.duration,
            sites: d.sites,
            max_running: self.max_deep_traces,
            reply,
        };
        let started = unix_now_ns();
        let probes = self.ask(cmd, answer).await?;
        let ends = started.saturating_add(u64::try_from(d.duration.as_nanos()).unwrap_or(u64::MAX));
        Ok(Response::new(pb::StartDeepMapTraceResponse {
            ends_unix_ns: ends,
            probes: probes.iter().map(convert::probe).collect(),
        }))
    }

    async fn stop_deep_map_trace(
        &self,
        request: Request<pb::StopDeepMapTraceRequest>,
    ) -> Result<Response<pb::StopDeepMapTraceResponse>, Status> {
        let pid = request.get_ref().pid;
        if pid == 0 {
            return Err(Status::invalid_argument(
                "pid: required (0 is not a process)",
            ));
        }
        let (reply, answer) = oneshot::channel();
        self.ask(Command::StopDeepMaps { pid, reply }, answer)
            .await?;
        Ok(Response::new(pb::StopDeepMapTraceResponse {}))
    }
}

impl TracerService {
    /// Sends `cmd` to the agent loop and waits for its answer, both bounded.
    async fn ask<T>(
        &self,
        cmd: Command,
        answer: oneshot::Receiver<Result<T, Refused>>,
    ) -> Result<T, Status> {
        self.hub
            .commands
            .send_timeout(cmd, COMMAND_SEND_TIMEOUT)
            .await
            .map_err(|e| match e {
                mpsc::error::SendTimeoutError::Timeout(_) => {
                    Status::unavailable("the agent loop is busy; try again")
                }
                mpsc::error::SendTimeoutError::Closed(_) => {
                    Status::unavailable("the agent loop has stopped")
                }
            })?;
        match tokio::time::timeout(COMMAND_REPLY_TIMEOUT, answer).await {
            Err(_) => Err(Status::deadline_exceeded(
                "the agent loop did not answer within 15 s",
            )),
            Ok(Err(_)) => Err(Status::unavailable("the agent loop dropped the request")),
            Ok(Ok(Err(Refused::Limit(why)))) => Err(Status::resource_exhausted(why)),
            Ok(Ok(Err(Refused::NotFound(why)))) => Err(Status::not_found(why)),
            Ok(Ok(Err(Refused::Failed(why)))) => Err(Status::failed_precondition(why)),
            Ok(Ok(Ok(v))) => Ok(v),
        }
    }
}
