//! Which processes to look at: the one matcher behind the agent's
//! `--pid/--comm/--exe/--container/--pod/--namespace` flags and the gRPC
//! requests' `Filter` (validated in `api::filter`).

use super::Labels;

/// Which processes match; empty lists match everything, lists are ANDed,
/// entries within a list ORed.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    pub pids: Vec<u32>,
    pub comms: Vec<String>,
    /// Substrings of the executable path.
    pub exes: Vec<String>,
    /// Container ids or prefixes of them.
    pub containers: Vec<String>,
    /// Pod names or UIDs.
    pub pods: Vec<String>,
    pub namespaces: Vec<String>,
}

impl Selector {
    pub fn matches(&self, pid: u32, comm: &str, exe: &str, labels: &Labels) -> bool {
        let any = |list: &[String], f: &dyn Fn(&str) -> bool| {
            list.is_empty() || list.iter().any(|s| f(s))
        };
        (self.pids.is_empty() || self.pids.contains(&pid))
            && any(&self.comms, &|c| c == comm)
            && any(&self.exes, &|e| exe.contains(e))
            && any(&self.containers, &|c| {
                labels
                    .container_id
                    .as_deref()
                    .is_some_and(|id| id.starts_with(c))
            })
            && any(&self.pods, &|p| {
                labels.pod_name.as_deref() == Some(p) || labels.pod_uid.as_deref() == Some(p)
            })
            && any(&self.namespaces, &|n| {
                labels.namespace.as_deref() == Some(n)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_ands_lists_and_ors_within() {
        let labels = Labels {
            container_id: Some("abcdef0123456789".into()),
            pod_name: Some("web-1".into()),
            namespace: Some("prod".into()),
            ..Labels::default()
        };
        let all = Selector::default();
        assert!(all.matches(1, "svc", "/bin/svc", &labels));
        let s = Selector {
            comms: vec!["svc".into(), "other".into()],
            containers: vec!["abcdef012345".into()],
            ..Selector::default()
        };
        assert!(s.matches(1, "svc", "/bin/svc", &labels));
        assert!(!s.matches(1, "nope", "/bin/svc", &labels));
        let ns = Selector {
            namespaces: vec!["dev".into()],
            ..Selector::default()
        };
        assert!(!ns.matches(1, "svc", "/bin/svc", &labels));
        assert!(!ns.matches(1, "svc", "/bin/svc", &Labels::default()));
    }
}
