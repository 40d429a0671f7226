//! The container and Kubernetes labels of a process: read from its cgroup
//! path on the node ([`labels_of`]), completed by the pod index
//! ([`super::pods`]) when the agent runs in a cluster.

use serde::Serialize;

/// Container and Kubernetes labels of a process; each absent when unknown.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Labels {
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
    pub pod_name: Option<String>,
    pub namespace: Option<String>,
    pub container_name: Option<String>,
}

/// Container labels and the innermost-namespace pid of `pid`, from its
/// cgroup path and `NSpid`. Pod name, namespace and container name need the
/// Kubernetes API and stay absent here.
pub fn labels_of(pid: u32) -> (Labels, u32) {
    let labels = super::cgroup::for_pid(pid)
        .map(|c| Labels {
            container_id: c.container_id,
            pod_uid: c.pod_uid,
            ..Labels::default()
        })
        .unwrap_or_default();
    let ns_pid = super::cgroup::ns_pids_for_pid(pid)
        .ok()
        .and_then(|v| v.last().copied())
        .unwrap_or(pid);
    (labels, ns_pid)
}
