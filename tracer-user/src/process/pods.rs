//! Pod name, namespace and container name for the pod UIDs and container ids
//! that [`super::cgroup`] reads from `/proc/PID/cgroup`.
//!
//! cgroup names carry only ids; the names people search by live in the API
//! server. In a cluster the agent watches the pods of its own node (field
//! selector `spec.nodeName=<node>`, so memory and API load scale with one node,
//! not the cluster) and keeps a small map of what it needs: per pod UID the
//! name, namespace and the ids of its containers. Outside a cluster there is
//! no index and those labels are simply absent. Details: docs/kubernetes.md.
//!
//! The watcher retries with backoff forever and only logs: losing the API
//! server costs labels, never tracing.
//!
//! Over 600 lines with its tests: about half the file is the watch-protocol
//! and relist cases (adds, deletions, deletes during a relist), partly against
//! a fake API server.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
};

use super::Labels;
use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::{
    Api, Client, Config,
    config::KubeConfigOptions,
    runtime::{WatchStreamExt, watcher},
};

/// Pods kept at most. The kubelet runs 110 by default and rarely over 500;
/// this only bounds memory if the API server sends something unexpected.
const MAX_PODS: usize = 10_000;
/// Containers (regular, init and ephemeral) kept per pod.
const MAX_CONTAINERS: usize = 256;
/// Longest container id kept (containerd, CRI-O and Docker use 64 hex).
const MAX_ID: usize = 128;
/// The annotation a static pod's mirror pod carries: the config hash the
/// kubelet uses as the pod UID in cgroup names, which differs from the mirror
/// pod's API UID.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// What the API server says about a process's pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodMeta {
    pub name: String,
    pub namespace: String,
    /// The container's name in the pod spec; `None` while the kubelet has not
    /// yet reported the container's id (just after it starts) or when the
    /// process runs outside any of the pod's containers.
    pub container_name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct PodEntry {
    name: String,
    namespace: String,
    /// The static pod config hash, when this is a mirror pod.
    mirror_of: Option<String>,
    /// (bare container id, container name).
    containers: Vec<(String, String)>,
}

/// The pods of one node, keyed by UID, with indexes by static-pod hash and
/// container id. Fed by [`PodMap::apply`] with the watcher's events.
#[derive(Debug, Default)]
pub struct PodMap {
    node: String,
    pods: HashMap<String, PodEntry>,
    /// Static pod config hash -> mirror pod UID.
    mirrors: HashMap<String, String>,
    /// Bare container id -> pod UID.
    containers: HashMap<String, String>,
    /// Pods seen since the watcher's last `Init`: replaces `pods` at
    /// `InitDone`, so a relist drops pods deleted while the watch was down,
    /// and lookups see the previous complete list until then.
    relist: Option<HashMap<String, PodEntry>>,
    synced: bool,
    dropped: u64,
}

impl PodMap {
    /// An empty map that accepts pods bound to `node` only.
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_string(),
            ..Self::default()
        }
    }

    /// Folds one watcher event in.
    pub fn apply(&mut self, event: watcher::Event<Pod>) {
        match event {
            watcher::Event::Init => self.relist = Some(HashMap::new()),
            watcher::Event::InitApply(pod) => match self.entry(&pod) {
                Some((uid, entry)) => match &mut self.relist {
                    Some(buf) if buf.len() < MAX_PODS || buf.contains_key(&uid) => {
                        buf.insert(uid, entry);
                    }
                    Some(_) => self.dropped += 1,
                    None => self.upsert(uid, entry),
                },
                None => self.forget(&pod),
            },
            watcher::Event::InitDone => {
                if let Some(buf) = self.relist.take() {
                    self.pods = buf;
                    self.reindex();
                }
                self.synced = true;
            }
            watcher::Event::Apply(pod) => match self.entry(&pod) {
                Some((uid, entry)) => self.upsert(uid, entry),
                // Not (or no longer) one of ours.
                None => self.forget(&pod),
            },
            watcher::Event::Delete(pod) => self.forget(&pod),
        }
    }

    /// The pod of `pod_uid` (an API UID or a static pod's config hash, as
    /// cgroup names carry them) or, failing that, of `container_id`; with the
    /// name of the container whose id is `container_id`.
    pub fn lookup(&self, pod_uid: &str, container_id: Option<&str>) -> Option<PodMeta> {
        let container_id = container_id.map(str::to_ascii_lowercase);
        let uid = pod_uid.to_ascii_lowercase();
        let entry = self
            .pods
            .get(&uid)
            .or_else(|| self.mirrors.get(&uid).and_then(|u| self.pods.get(u)))
            .or_else(|| {
                let id = container_id.as_deref()?;
                self.pods.get(self.containers.get(id)?)
            })?;
        let container_name = container_id.and_then(|id| {
            entry
                .containers
                .iter()
                .find(|(cid, _)| *cid == id)
                .map(|(_, name)| name.clone())
        });
        Some(PodMeta {
            name: entry.name.clone(),
            namespace: entry.namespace.clone(),
            container_name,
        })
    }

    /// Pods known.
    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }

    /// Whether a complete list has been received at least once.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// The UID and entry of a pod of this node; `None` for other nodes' pods,
    /// unscheduled pods and pods without a UID.
    fn entry(&self, pod: &Pod) -> Option<(String, PodEntry)> {
        let node = pod.spec.as_ref()?.node_name.as_deref()?;
        if node != self.node {
            return None;
        }
        let meta = &pod.metadata;
        let uid = meta.uid.as_deref()?.to_ascii_lowercase();
        let mirror_of = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(MIRROR_ANNOTATION))
            .map(|h| h.to_ascii_lowercase())
            .filter(|h| *h != uid);
        let mut containers = Vec::new();
        if let Some(status) = &pod.status {
            let all = [
                &status.container_statuses,
                &status.init_container_statuses,
                &status.ephemeral_container_statuses,
            ];
            for s in all.into_iter().flatten().flatten() {
                if containers.len() >= MAX_CONTAINERS {
                    break;
                }
                if let Some(id) = bare_container_id(s) {
                    containers.push((id, s.name.clone()));
                }
            }
        }
        Some((
            uid,
            PodEntry {
                name: meta.name.clone().unwrap_or_default(),
                namespace: meta.namespace.clone().unwrap_or_default(),
                mirror_of,
                containers,
            },
        ))
    }

    fn upsert(&mut self, uid: String, entry: PodEntry) {
        if self.pods.len() >= MAX_PODS && !self.pods.contains_key(&uid) {
            self.dropped += 1;
            return;
        }
        self.unindex(&uid);
        self.index(&uid, &entry);
        self.pods.insert(uid, entry);
    }

    /// Removes a pod by the UID of `pod`, from the map and from a relist in
    /// progress (a Delete during the initial list must not resurrect it).
    fn forget(&mut self, pod: &Pod) {
        let Some(uid) = pod.metadata.uid.as_deref().map(str::to_ascii_lowercase) else {
            return;
        };
        if let Some(buf) = &mut self.relist {
            buf.remove(&uid);
        }
        self.unindex(&uid);
        self.pods.remove(&uid);
    }

    fn index(&mut self, uid: &str, entry: &PodEntry) {
        if let Some(hash) = &entry.mirror_of {
            self.mirrors.insert(hash.clone(), uid.to_string());
        }
        for (id, _) in &entry.containers {
            self.containers.insert(id.clone(), uid.to_string());
        }
    }

    fn unindex(&mut self, uid: &str) {
        let Some(old) = self.pods.get(uid) else {
            return;
        };
        if let Some(hash) = &old.mirror_of
            && self.mirrors.get(hash).is_some_and(|u| u == uid)
        {
            self.mirrors.remove(hash);
        }
        for (id, _) in &old.containers {
            if self.containers.get(id).is_some_and(|u| u == uid) {
                self.containers.remove(id);
            }
        }
    }

    fn reindex(&mut self) {
        self.mirrors.clear();
        self.containers.clear();
        let pods = std::mem::take(&mut self.pods);
        for (uid, entry) in &pods {
            self.index(uid, entry);
        }
        self.pods = pods;
    }
}

/// `containerd://<id>`, `cri-o://<id>`, `docker://<id>` -> `<id>`, lowercase
/// as cgroup names have it. `None` before the container has started.
fn bare_container_id(status: &ContainerStatus) -> Option<String> {
    let raw = status.container_id.as_deref()?;
    let id = raw.split_once("://").map_or(raw, |(_, id)| id);
    (!id.is_empty() && id.len() <= MAX_ID).then(|| id.to_ascii_lowercase())
}

/// A live view of this node's pods; clones share one map and one watcher,
/// which stops when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct PodIndex {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    map: Arc<RwLock<PodMap>>,
    watcher: Option<tokio::task::AbortHandle>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(task) = &self.watcher {
            task.abort();
        }
    }
}

impl PodIndex {
    /// An index fed by hand (tests, or a caller with its own watcher).
    pub fn from_map(map: PodMap) -> Self {
        Self {
            shared: Arc::new(Shared {
                map: Arc::new(RwLock::new(map)),
                watcher: None,
            }),
        }
    }

    /// See [`PodMap::lookup`]. A hash lookup under a read lock: cheap enough
    /// to call on every snapshot, which also picks up container names that the
    /// kubelet reports a moment after the process started.
    pub fn lookup(&self, pod_uid: &str, container_id: Option<&str>) -> Option<PodMeta> {
        self.read(|m| m.lookup(pod_uid, container_id))
    }

    /// Sets `pod_name`, `namespace` and `container_name` of `labels` from its
    /// `pod_uid` and `container_id` (each only when found). Returns `false`
    /// while a later call may still find more: the pod or the container's id
    /// not reported yet (the kubelet writes it just after the start).
    pub fn fill(&self, labels: &mut Labels) -> bool {
        if labels.pod_uid.is_none() && labels.container_id.is_none() {
            return true;
        }
        let found = self.lookup(
            labels.pod_uid.as_deref().unwrap_or_default(),
            labels.container_id.as_deref(),
        );
        if let Some(m) = found {
            labels.pod_name = Some(m.name);
            labels.namespace = Some(m.namespace);
            if m.container_name.is_some() {
                labels.container_name = m.container_name;
            }
        }
        labels.pod_name.is_some()
            && (labels.container_id.is_none() || labels.container_name.is_some())
    }

    /// Pods known.
    pub fn len(&self) -> usize {
        self.read(PodMap::len)
    }

    pub fn is_empty(&self) -> bool {
        self.read(PodMap::is_empty)
    }

    /// Whether the first complete list of the node's pods has arrived.
    pub fn is_synced(&self) -> bool {
        self.read(PodMap::is_synced)
    }

    fn read<T>(&self, f: impl FnOnce(&PodMap) -> T) -> T {
        // The writer only replaces whole values; a panic mid-write leaves a
        // usable map.
        f(&self
            .shared
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner))
    }
}

/// Starts watching the pods of `node` when running in a cluster
/// (`KUBERNETES_SERVICE_HOST` set: in-cluster service account) or with an
/// explicit kubeconfig (`KUBECONFIG` set). `Ok(None)` when neither is present:
/// not in a cluster, so there is nothing to look up. An error when a
/// configuration is present but unusable (no service account token mounted,
/// bad kubeconfig) or `node` is not a node name. Needs a Tokio runtime.
pub async fn start(node: &str) -> Result<Option<PodIndex>> {
    let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
    let kubeconfig = std::env::var_os("KUBECONFIG").is_some();
    let Some(config) = config(in_cluster, kubeconfig).await? else {
        return Ok(None);
    };
    let client = Client::try_from(config).context("building the Kubernetes client")?;
    start_with_client(client, node).map(Some)
}

async fn config(in_cluster: bool, kubeconfig: bool) -> Result<Option<Config>> {
    if in_cluster {
        let config = Config::incluster().context(
            "KUBERNETES_SERVICE_HOST is set but the in-cluster configuration is unusable \
             (is the service account token mounted?)",
        )?;
        Ok(Some(config))
    } else if kubeconfig {
        let config = Config::from_kubeconfig(&KubeConfigOptions::default())
            .await
            .context("loading the kubeconfig named by KUBECONFIG")?;
        Ok(Some(config))
    } else {
        Ok(None)
    }
}

/// Starts the watcher on an existing client (tests use a mock service).
pub fn start_with_client(client: Client, node: &str) -> Result<PodIndex> {
    check_node_name(node)?;
    let map = Arc::new(RwLock::new(PodMap::new(node)));
    let task = tokio::spawn(watch(client, node.to_string(), Arc::clone(&map)));
    Ok(PodIndex {
        shared: Arc::new(Shared {
            map,
            watcher: Some(task.abort_handle()),
        }),
    })
}

/// Node names are DNS subdomains; anything else would also change the
/// meaning of the field selector (`,` separates terms).
fn check_node_name(node: &str) -> Result<()> {
    if node.is_empty() {
        bail!("the node name is empty (set NODE_NAME from spec.nodeName)");
    }
    if node.len() > 253
        || !node
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        bail!("{node:?} is not a Kubernetes node name");
    }
    Ok(())
}

async fn watch(client: Client, node: String, map: Arc<RwLock<PodMap>>) {
    let api: Api<Pod> = Api::all(client);
    // Lists are served from the API server's watch cache (resourceVersion=0)
    // instead of etcd, which matters with one agent per node. The server
    // ignores resourceVersion=0 on a paginated list, so no page size: one
    // node's pods (kubelet maxPods, 110 by default) fit one response.
    let mut config = watcher::Config::default()
        .fields(&format!("spec.nodeName={node}"))
        .any_semantic();
    config.page_size = None;
    loop {
        let mut events = std::pin::pin!(watcher(api.clone(), config.clone()).default_backoff());
        let mut warned_full = false;
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    let mut m = map.write().unwrap_or_else(PoisonError::into_inner);
                    let first_sync = !m.synced && matches!(event, watcher::Event::InitDone);
                    m.apply(event);
                    if first_sync {
                        tracing::info!(node, pods = m.len(), "pod metadata synced");
                    }
                    if m.dropped > 0 && !warned_full {
                        warned_full = true;
                        tracing::warn!(
                            node,
                            "pod index full ({MAX_PODS} pods): names of further pods stay absent"
                        );
                    }
                }
                // The backoff (0.8 s doubling to 30 s) paces these.
                Err(e) => tracing::warn!(node, error = %e, "watching pods (retrying)"),
            }
        }
        // The default backoff never gives up, so this is not expected.
        tracing::warn!(node, "pod watch ended; restarting in 30 s");
        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use k8s_openapi::api::core::v1::{PodSpec, PodStatus};
    use kube::api::ObjectMeta;

    const NODE: &str = "node-a";
    const ID1: &str = "3e2d8f8f2d6a4b4f9d1c0b7a6e5f4d3c2b1a09f8e7d6c5b4a3928170615243ab";
    const ID2: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
    const ID3: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";

    fn status(name: &str, id: Option<&str>) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            container_id: id.map(Into::into),
            ..Default::default()
        }
    }

    fn pod(uid: &str, name: &str, node: Option<&str>, containers: &[(&str, &str)]) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                uid: Some(uid.into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(Into::into),
                ..Default::default()
            }),
            status: Some(PodStatus {
                container_statuses: Some(
                    containers
                        .iter()
                        .map(|(n, id)| status(n, Some(id)))
                        .collect(),
                ),
                ..Default::default()
            }),
        }
    }

    fn meta(name: &str, container: Option<&str>) -> Option<PodMeta> {
        Some(PodMeta {
            name: name.into(),
            namespace: "shop".into(),
            container_name: container.map(Into::into),
        })
    }

    const UID_A: &str = "5f0a1b2c-3d4e-4f60-8a9b-0c1d2e3f4a5b";
    const UID_B: &str = "6f0a1b2c-3d4e-4f60-8a9b-0c1d2e3f4a5b";

    #[test]
    fn add_modify_delete() {
        let mut m = PodMap::new(NODE);
        // Scheduled, container not started yet: pod known, container not.
        let mut p = pod(UID_A, "web-1", Some(NODE), &[]);
        p.status.as_mut().unwrap().container_statuses = Some(vec![status("app", None)]);
        m.apply(watcher::Event::Apply(p));
        assert_eq!(m.lookup(UID_A, Some(ID1)), meta("web-1", None));
        // The kubelet reports the id.
        let p = pod(
            UID_A,
            "web-1",
            Some(NODE),
            &[("app", &format!("containerd://{ID1}"))],
        );
        m.apply(watcher::Event::Apply(p.clone()));
        assert_eq!(m.lookup(UID_A, Some(ID1)), meta("web-1", Some("app")));
        assert_eq!(m.lookup(UID_A, None), meta("web-1", None));
        assert_eq!(m.lookup(UID_A, Some(ID2)), meta("web-1", None));
        // Restart: new container id; the old one no longer resolves by id.
        let p2 = pod(
            UID_A,
            "web-1",
            Some(NODE),
            &[("app", &format!("containerd://{ID2}"))],
        );
        m.apply(watcher::Event::Apply(p2));
        assert_eq!(m.lookup("", Some(ID2)), meta("web-1", Some("app")));
        assert_eq!(m.lookup("", Some(ID1)), None);
        m.apply(watcher::Event::Delete(p));
        assert_eq!(m.lookup(UID_A, Some(ID2)), None);
        assert_eq!(m.lookup("", Some(ID2)), None);
        assert!(m.is_empty());
    }

    #[test]
    fn container_ids_of_every_runtime_and_kind() {
        let mut m = PodMap::new(NODE);
        let mut p = pod(UID_A, "web-1", Some(NODE), &[]);
        let st = p.status.as_mut().unwrap();
        st.container_statuses = Some(vec![status("app", Some(&format!("cri-o://{ID1}")))]);
        st.init_container_statuses = Some(vec![status(
            "migrate",
            Some(&format!("containerd://{}", ID2.to_ascii_uppercase())),
        )]);
        st.ephemeral_container_statuses =
            Some(vec![status("debugger", Some(&format!("docker://{ID3}")))]);
        m.apply(watcher::Event::Apply(p));
        assert_eq!(m.lookup(UID_A, Some(ID1)), meta("web-1", Some("app")));
        assert_eq!(m.lookup(UID_A, Some(ID2)), meta("web-1", Some("migrate")));
        assert_eq!(m.lookup(UID_A, Some(ID3)), meta("web-1", Some("debugger")));
        // Upper-case input (uid and id) matches too.
        assert_eq!(
            m.lookup(&UID_A.to_ascii_uppercase(), Some(&ID3.to_ascii_uppercase())),
            meta("web-1", Some("debugger"))
        );
    }

    #[test]
    fn other_nodes_and_unscheduled_pods_are_ignored() {
        let mut m = PodMap::new(NODE);
        m.apply(watcher::Event::Apply(pod(
            UID_A,
            "a",
            Some("node-b"),
            &[("x", ID1)],
        )));
        m.apply(watcher::Event::Apply(pod(UID_B, "b", None, &[])));
        assert_eq!(m.lookup(UID_A, Some(ID1)), None);
        assert_eq!(m.lookup("", Some(ID1)), None);
        assert_eq!(m.lookup(UID_B, None), None);
        assert!(m.is_empty());
        // A pod of ours reported on another node is dropped, not kept stale.
        m.apply(watcher::Event::Apply(pod(
            UID_A,
            "a",
            Some(NODE),
            &[("x", ID1)],
        )));
        assert_eq!(m.len(), 1);
        m.apply(watcher::Event::Apply(pod(
            UID_A,
            "a",
            Some("node-b"),
            &[("x", ID1)],
        )));
        assert!(m.is_empty());
        assert_eq!(m.lookup("", Some(ID1)), None);
    }

    #[test]
    fn relist_replaces_the_map_at_init_done() {
        let mut m = PodMap::new(NODE);
        m.apply(watcher::Event::Apply(pod(
            UID_A,
            "a",
            Some(NODE),
            &[("x", ID1)],
        )));
        assert!(!m.is_synced());
        m.apply(watcher::Event::Init);
        m.apply(watcher::Event::InitApply(pod(
            UID_B,
            "b",
            Some(NODE),
            &[("y", ID2)],
        )));
        // Until the list is complete, lookups see the previous state.
        assert_eq!(m.lookup(UID_A, Some(ID1)), meta("a", Some("x")));
        assert_eq!(m.lookup(UID_B, None), None);
        m.apply(watcher::Event::InitDone);
        assert!(m.is_synced());
        // A was deleted while the watch was down: gone, with its container index.
        assert_eq!(m.lookup(UID_A, Some(ID1)), None);
        assert_eq!(m.lookup("", Some(ID1)), None);
        assert_eq!(m.lookup("", Some(ID2)), meta("b", Some("y")));
    }

    #[test]
    fn delete_during_relist_is_not_resurrected() {
        let mut m = PodMap::new(NODE);
        let a = pod(UID_A, "a", Some(NODE), &[]);
        m.apply(watcher::Event::Init);
        m.apply(watcher::Event::InitApply(a.clone()));
        m.apply(watcher::Event::Delete(a));
        m.apply(watcher::Event::InitDone);
        assert!(m.is_empty());
    }

    #[test]
    fn static_pod_found_by_config_hash() {
        let hash = "6e5b2e5b3f0b0d5f8f6c1d3f2c0c9a1b";
        let mut m = PodMap::new(NODE);
        let mut p = pod(UID_A, "etcd-node-a", Some(NODE), &[("etcd", ID1)]);
        p.metadata.annotations = Some([(MIRROR_ANNOTATION.to_string(), hash.to_string())].into());
        m.apply(watcher::Event::Apply(p.clone()));
        assert_eq!(m.lookup(hash, Some(ID1)), meta("etcd-node-a", Some("etcd")));
        m.apply(watcher::Event::Delete(p));
        assert_eq!(m.lookup(hash, None), None);
    }

    #[test]
    fn pods_beyond_the_cap_are_dropped() {
        let mut m = PodMap::new(NODE);
        for i in 0..MAX_PODS + 5 {
            let uid = format!("{i:08x}-0000-0000-0000-000000000000");
            m.apply(watcher::Event::Apply(pod(&uid, "p", Some(NODE), &[])));
        }
        assert_eq!(m.len(), MAX_PODS);
        assert_eq!(m.dropped, 5);
    }

    #[test]
    fn fill_sets_names_and_says_when_to_retry() {
        let mut m = PodMap::new(NODE);
        m.apply(watcher::Event::Apply(pod(
            UID_A,
            "web-1",
            Some(NODE),
            &[("app", ID1)],
        )));
        let index = PodIndex::from_map(m);
        let mut l = Labels {
            container_id: Some(ID1.into()),
            pod_uid: Some(UID_A.into()),
            ..Labels::default()
        };
        assert!(index.fill(&mut l));
        assert_eq!(
            (
                l.pod_name.as_deref(),
                l.namespace.as_deref(),
                l.container_name.as_deref()
            ),
            (Some("web-1"), Some("shop"), Some("app"))
        );
        // Container id not reported yet: names of the pod, retry later.
        let mut l = Labels {
            container_id: Some(ID2.into()),
            pod_uid: Some(UID_A.into()),
            ..Labels::default()
        };
        assert!(!index.fill(&mut l));
        assert_eq!(l.pod_name.as_deref(), Some("web-1"));
        assert_eq!(l.container_name, None);
        // Unknown pod: nothing set. No ids at all: nothing to wait for.
        let mut l = Labels {
            pod_uid: Some(UID_B.into()),
            ..Labels::default()
        };
        assert!(!index.fill(&mut l));
        assert_eq!(
            l,
            Labels {
                pod_uid: Some(UID_B.into()),
                ..Labels::default()
            }
        );
        assert!(index.fill(&mut Labels::default()));
    }

    #[test]
    fn node_names_are_checked() {
        assert!(check_node_name("ip-10-0-0-1.ec2.internal").is_ok());
        for bad in ["", "a,metadata.name=x", "Node", "a b", &"a".repeat(254)] {
            assert!(check_node_name(bad).is_err(), "{bad:?}");
        }
    }

    /// The watcher against a fake API server (kube's client over a tower-test
    /// mock service): the initial list, then watch events, must reach the index.
    #[tokio::test]
    async fn watcher_learns_from_list_and_watch() {
        use http::{Request, Response};
        use kube::client::Body;

        let (service, mut api) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let index = start_with_client(Client::new(service, "default"), NODE).unwrap();
        let pod_a = pod(
            UID_A,
            "web-1",
            Some(NODE),
            &[("app", &format!("containerd://{ID1}"))],
        );
        let pod_b = pod(
            UID_B,
            "web-2",
            Some(NODE),
            &[("app", &format!("cri-o://{ID2}"))],
        );
        let json = |v: serde_json::Value| Response::new(Body::from(v.to_string().into_bytes()));
        let with_rv = |p: &Pod, rv: &str| {
            let mut p = p.clone();
            p.metadata.resource_version = Some(rv.into());
            p
        };

        // 1. The list: all namespaces, this node only, from the cache.
        let (req, send) = api.next_request().await.expect("list request");
        let uri = req.uri().to_string();
        assert!(uri.starts_with("/api/v1/pods?"), "{uri}");
        assert!(
            uri.contains("fieldSelector=spec.nodeName%3Dnode-a"),
            "{uri}"
        );
        assert!(uri.contains("resourceVersion=0"), "{uri}");
        assert!(!uri.contains("watch=true"), "{uri}");
        send.send_response(json(serde_json::json!({
            "apiVersion": "v1", "kind": "PodList",
            "metadata": {"resourceVersion": "10"},
            "items": [with_rv(&pod_a, "9")],
        })));

        // 2. The watch from the list's version: pod B appears.
        let (req, send) = api.next_request().await.expect("watch request");
        let uri = req.uri().to_string();
        assert!(uri.contains("watch=true"), "{uri}");
        assert!(
            uri.contains("fieldSelector=spec.nodeName%3Dnode-a"),
            "{uri}"
        );
        assert!(uri.contains("resourceVersion=10"), "{uri}");
        assert_eq!(
            index.lookup(UID_A, Some(ID1)),
            meta("web-1", Some("app")),
            "from the list"
        );
        assert!(index.is_synced());
        assert_eq!(index.lookup(UID_B, Some(ID2)), None);
        let added = serde_json::json!({"type": "ADDED", "object": with_rv(&pod_b, "11")});
        send.send_response(Response::new(Body::from(format!("{added}\n").into_bytes())));

        // 3. That watch ends; the next resumes after B and deletes A.
        let (req, send) = api.next_request().await.expect("second watch");
        let uri = req.uri().to_string();
        assert!(
            uri.contains("watch=true") && uri.contains("resourceVersion=11"),
            "{uri}"
        );
        assert_eq!(index.lookup(UID_B, Some(ID2)), meta("web-2", Some("app")));
        let deleted = serde_json::json!({"type": "DELETED", "object": with_rv(&pod_a, "12")});
        send.send_response(Response::new(Body::from(
            format!("{deleted}\n").into_bytes(),
        )));

        // 4. The third watch starts only after the delete was applied.
        let (req, _hold) = api.next_request().await.expect("third watch");
        assert!(req.uri().to_string().contains("resourceVersion=12"));
        assert_eq!(index.lookup(UID_A, Some(ID1)), None);
        assert_eq!(index.lookup(UID_B, Some(ID2)), meta("web-2", Some("app")));
        assert_eq!(index.len(), 1);
    }

    /// The real (rustls, ring) client against an address where nothing
    /// listens: building it must not panic (one crypto provider), and the
    /// watcher must keep retrying, not end or crash.
    #[tokio::test]
    async fn unreachable_api_server_is_retried() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let config = Config::new(format!("https://127.0.0.1:{port}").parse().unwrap());
        let client = Client::try_from(config).expect("rustls client");
        let index = start_with_client(client, NODE).unwrap();
        // First retry after 0.8 s: this spans at least two failed lists.
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert!(!index.is_synced());
        assert!(index.is_empty());
        let task = index.shared.watcher.as_ref().unwrap();
        assert!(!task.is_finished(), "the watcher must outlive API errors");
        let task = task.clone();
        drop(index);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            task.is_finished(),
            "dropping the last clone stops the watcher"
        );
    }

    #[tokio::test]
    async fn no_cluster_means_no_index() {
        assert!(config(false, false).await.unwrap().is_none());
        // Claiming a cluster without the service account files (this machine
        // is not a pod) is an error that says what is missing.
        if !std::path::Path::new("/var/run/secrets/kubernetes.io/serviceaccount").exists() {
            let e = config(true, false).await.unwrap_err();
            assert!(format!("{e:#}").contains("service account"), "{e:#}");
        }
    }
}
