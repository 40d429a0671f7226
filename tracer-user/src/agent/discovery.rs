//! Finding Go processes: a `/proc` scan at start, then exec and exit events
//! from the kernel (`sched:sched_process_exec`/`exit`), so a new process is
//! seen within milliseconds of its exec.
//!
//! Binaries are classified once per (device, inode): a node runs the same few
//! binaries in thousands of processes, and parsing one can take 100 ms.

use std::{
    collections::{HashMap, VecDeque},
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::{Context, Result, anyhow};
use aya::{
    maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use tracer_common::{
    discovery::{EVENT_EXEC, EVENT_EXIT, ProcEvent},
    maps::MapsConfig,
};

use crate::{
    ebpf::Tracer,
    gobin::GoBinary,
    process::{Labels, labels_of, procfs},
};

/// A process lifecycle event as decoded from the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Exec { pid: u32, ktime_ns: u64 },
    Exit { pid: u32 },
}

/// Decodes one ring-buffer record; None for a record of another size or kind.
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < size_of::<ProcEvent>() {
        return None;
    }
    // SAFETY: length checked; ProcEvent is plain integers, any bits are valid.
    let ev: ProcEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    match ev.kind {
        EVENT_EXEC => Some(Event::Exec {
            pid: ev.tgid,
            ktime_ns: ev.ktime_ns,
        }),
        EVENT_EXIT => Some(Event::Exit { pid: ev.tgid }),
        _ => None,
    }
}

/// The exec/exit tracepoints and their ring buffer.
pub struct ProcEvents {
    ring: RingBuf<MapData>,
}

impl ProcEvents {
    /// Loads and attaches the two tracepoint programs in `tracer`.
    pub fn attach(tracer: &mut Tracer) -> Result<Self> {
        for (prog, name) in [
            ("proc_exec", "sched_process_exec"),
            ("proc_exit", "sched_process_exit"),
        ] {
            let p: &mut TracePoint = tracer
                .ebpf
                .program_mut(prog)
                .ok_or_else(|| anyhow!("eBPF object lacks program {prog}"))?
                .try_into()?;
            p.load()
                .with_context(|| format!("verifying eBPF program {prog}"))?;
            p.attach("sched", name)
                .with_context(|| format!("attaching tracepoint sched:{name}"))?;
        }
        let map = tracer
            .ebpf
            .take_map(tracer_common::names::map::PROC_EVENTS)
            .ok_or_else(|| anyhow!("PROC_EVENTS ring buffer missing"))?;
        let ring = RingBuf::try_from(map).context("opening the PROC_EVENTS ring buffer")?;
        Ok(Self { ring })
    }

    /// Reads events on a thread of its own until `stop`: a new process of a
    /// binary whose probes are live (in `index`) and that `select` accepts
    /// is added to the kernel's filter tables right there, within a
    /// millisecond of its exec, whatever the agent loop is busy with. Every
    /// event then goes to the loop through `tx` for the bookkeeping.
    pub fn spawn(
        mut self,
        index: FastIndex,
        pods: Option<crate::process::pods::PodIndex>,
        select: Box<dyn Fn(&Seen) -> bool + Send>,
        tx: tokio::sync::mpsc::Sender<Found>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("tracer-discovery".into())
            .spawn(move || {
                let fd = self.ring.as_raw_fd();
                while !stop.load(Ordering::Relaxed) {
                    let mut pfd = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd; the fd lives as long as the ring.
                    unsafe { libc::poll(&mut pfd, 1, 200) };
                    while let Some(item) = self.ring.next() {
                        let Some(ev) = decode(&item) else { continue };
                        let found = match ev {
                            Event::Exec { pid, ktime_ns } => Found::Exec(Box::new(Seen::observe(
                                pid,
                                ktime_ns,
                                true,
                                &index,
                                pods.as_ref(),
                                &select,
                            ))),
                            Event::Exit { pid } => Found::Exit { pid },
                        };
                        // Blocks when the loop is far behind: the ring then
                        // fills and the kernel counts what it drops.
                        if tx.blocking_send(found).is_err() {
                            return;
                        }
                    }
                }
            })
    }
}

/// Binaries whose probes are live, by (device, inode): their filter tables.
pub type FastIndex = Arc<Mutex<HashMap<(u64, u64), FastTargets>>>;

/// The filter tables of one binary's object, opened a second time so the
/// discovery thread can add a process without the agent loop.
pub struct FastTargets {
    targets: BpfHashMap<MapData, u32, u8>,
    maps: Option<(BpfHashMap<MapData, u32, MapsConfig>, MapsConfig)>,
}

impl FastTargets {
    /// Opens the tables by id (see `Session::filter_tables`).
    pub fn open(targets: u32, maps: Option<(u32, MapsConfig)>) -> Result<Self> {
        let open = |id: u32| -> Result<Map> { Ok(Map::HashMap(MapData::from_id(id)?)) };
        Ok(Self {
            targets: BpfHashMap::try_from(open(targets)?)?,
            maps: match maps {
                Some((id, cfg)) => Some((BpfHashMap::try_from(open(id)?)?, cfg)),
                None => None,
            },
        })
    }

    fn add(&mut self, pid: u32) -> Result<()> {
        if let Some((m, cfg)) = self.maps.as_mut() {
            m.insert(pid, *cfg, 0)?;
        }
        self.targets.insert(pid, 1, 0)?;
        Ok(())
    }
}

/// What the discovery thread tells the agent loop.
pub enum Found {
    Exec(Box<Seen>),
    Exit { pid: u32 },
}

/// A process as seen when it was found: it may be gone by the time the
/// agent loop, or its binary's analysis, gets to it.
pub struct Seen {
    pub pid: u32,
    /// CLOCK_MONOTONIC of the exec, or of the discovery by a scan.
    pub seen_ns: u64,
    pub exec: bool,
    pub comm: String,
    pub exe: String,
    pub labels: Labels,
    pub ns_pid: u32,
    /// The binary, opened while the process lived, and its (device, inode).
    pub binary: Option<(std::fs::File, (u64, u64))>,
    /// The binary could not be opened for lack of permission (the agent
    /// lacks CAP_SYS_PTRACE and the process runs as another user), as
    /// opposed to a process that was simply gone.
    pub denied: bool,
    /// Already added to its binary's filter tables by the discovery thread.
    pub fast: bool,
}

impl Seen {
    /// Reads what identifies `pid` now, and adds it to its binary's filter
    /// tables when that binary is in `index` and `select` accepts it.
    pub fn observe(
        pid: u32,
        seen_ns: u64,
        exec: bool,
        index: &FastIndex,
        pods: Option<&crate::process::pods::PodIndex>,
        select: &dyn Fn(&Seen) -> bool,
    ) -> Self {
        let opened = open_exe(pid);
        let denied = matches!(&opened, Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied);
        let binary = opened.ok();
        let exe = procfs::exe_display(pid);
        let comm = procfs::comm(pid).unwrap_or_else(|| {
            exe.rsplit('/')
                .next()
                .unwrap_or("")
                .chars()
                .take(15)
                .collect()
        });
        let (mut labels, ns_pid) = labels_of(pid);
        if let Some(p) = pods {
            p.fill(&mut labels);
        }
        let mut seen = Self {
            pid,
            seen_ns,
            exec,
            comm,
            exe,
            labels,
            ns_pid,
            binary,
            denied,
            fast: false,
        };
        if let Some((_, devino)) = &seen.binary
            && select(&seen)
        {
            let mut idx = index.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = idx.get_mut(devino) {
                seen.fast = t.add(pid).is_ok();
            }
        }
        seen
    }
}

/// How long the discovery thread waits on the ring between stop checks.
pub const POLL: Duration = Duration::from_millis(200);

/// Events lost because the ring buffer was full (summed over CPUs).
pub fn lost(tracer: &Tracer) -> u64 {
    let Some(map) = tracer.ebpf.map(tracer_common::names::map::PROC_LOST) else {
        return 0;
    };
    let Ok(arr) = PerCpuArray::<_, u64>::try_from(map) else {
        return 0;
    };
    arr.get(&0, 0).map(|v| v.iter().sum()).unwrap_or(0)
}

/// Every pid in `/proc` (processes, not threads).
pub fn scan_proc() -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// What a binary is to the agent.
#[derive(Clone)]
pub enum Kind {
    /// A Go binary, with an open fd on it: probes are attached through
    /// `/proc/self/fd/N`, which works after the process that exec'd it has
    /// exited and after the file was deleted or replaced on disk.
    /// The path is the one its first process showed, for display.
    Go(Arc<GoBinary>, Arc<std::fs::File>, Arc<str>),
    /// Not Go, or not analysable; with why, for the Go case's error.
    Other(Arc<str>),
}

/// Opens the binary `pid` runs through `/proc/PID/exe` (which works for
/// binaries in other mount namespaces and deleted files), with its
/// (device, inode).
pub fn open_exe(pid: u32) -> std::io::Result<(std::fs::File, (u64, u64))> {
    let file = std::fs::File::open(procfs::exe_link(pid))?;
    let meta = file.metadata()?;
    Ok((file, binary_key(&meta)))
}

/// The identity of a binary's contents: (device, inode), with the file's
/// change time and size folded into the first. A binary rewritten in place
/// keeps its inode; its old analysis (and probe offsets) must not be used
/// for the new code, where a breakpoint could land inside an instruction.
pub fn binary_key(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (meta.dev(), meta.ctime(), meta.ctime_nsec(), meta.size()).hash(&mut h);
    (h.finish(), meta.ino())
}

/// Path that opens the binary held by `file`, from this process.
pub fn fd_path(file: &std::fs::File) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Classifications by (device, inode), with a bound: evicts the oldest
/// entries first, so thousands of distinct short-lived binaries cannot
/// exhaust memory.
pub struct BinaryCache {
    entries: HashMap<(u64, u64), Kind>,
    order: VecDeque<(u64, u64)>,
    capacity: usize,
    /// Binaries parsed (cache misses), for tests and health.
    pub parsed: u64,
}

impl BinaryCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            parsed: 0,
        }
    }

    /// What is known of the binary with this (device, inode).
    pub fn get(&self, key: (u64, u64)) -> Option<Kind> {
        self.entries.get(&key).cloned()
    }

    /// Remembers a classification, forgetting the oldest beyond capacity.
    pub fn insert(&mut self, key: (u64, u64), kind: Kind) {
        self.parsed += 1;
        if let Some(e) = self.entries.get_mut(&key) {
            *e = kind;
            return;
        }
        if self.order.len() == self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.entries.remove(&old);
        }
        self.order.push_back(key);
        self.entries.insert(key, kind);
    }

    /// Parses an open binary: the slow part (up to ~0.1 s for a large one).
    /// Reads through the open fd: the process may have exited, and the file
    /// been replaced, since it was opened.
    pub fn analyse(file: std::fs::File, display: Arc<str>) -> Kind {
        match GoBinary::open(&fd_path(&file)) {
            Ok(mut b) => {
                // The agent holds a binary for as long as it runs.
                b.release_dwarf();
                Kind::Go(Arc::new(b), Arc::new(file), display)
            }
            Err(e) => Kind::Other(format!("{:#}", anyhow::Error::new(e)).into()),
        }
    }

    /// Forgets a binary, e.g. once no process runs it: its parse (which
    /// holds the file's sections but DWARF in memory) is freed; a later process of it is
    /// analysed again.
    pub fn remove(&mut self, key: (u64, u64)) {
        if self.entries.remove(&key).is_some() {
            self.order.retain(|k| *k != key);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_events_and_rejects_short_or_unknown() {
        let ev = ProcEvent {
            kind: EVENT_EXEC,
            tgid: 42,
            ktime_ns: 7,
        };
        // SAFETY: viewing a repr(C) integer struct as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of::<ProcEvent>())
        };
        assert_eq!(
            decode(bytes),
            Some(Event::Exec {
                pid: 42,
                ktime_ns: 7
            })
        );
        assert_eq!(decode(&bytes[..8]), None);
        let mut other = bytes.to_vec();
        other[0] = 9;
        assert_eq!(decode(&other), None);
    }

    #[test]
    fn cache_is_bounded_and_classifies_self_as_not_go() {
        let mut c = BinaryCache::new(1);
        let (file, key) = open_exe(std::process::id()).expect("own /proc entry");
        let k = BinaryCache::analyse(file, "self".into());
        assert!(
            matches!(k, Kind::Other(_)),
            "the test binary is Rust, not Go"
        );
        c.insert(key, k);
        assert!(c.get(key).is_some());
        c.insert((key.0, key.1 + 1), Kind::Other("x".into()));
        assert_eq!(c.len(), 1, "capacity 1: the oldest entry went");
        assert!(c.get(key).is_none());
    }
}
