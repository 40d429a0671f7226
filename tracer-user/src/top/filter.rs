//! The `/` filter of `tracer top`: `pid=123 comm=api pod=web-1 node=n1`, or
//! bare words. Keys are ANDed, values of one key ORed, like the API's
//! `Filter`; `pid`, `comm` and `pod` are also sent to the agents so they cut
//! rows before the top-N limit, the rest (`node`, bare words) is client-side.

use tracer_api::v1 as api;

/// A parsed filter; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub pids: Vec<u32>,
    /// Exact process names.
    pub comms: Vec<String>,
    /// Pod names (exact), as the API matches them.
    pub pods: Vec<String>,
    pub nodes: Vec<String>,
    /// Bare words: a substring of the comm, pod or node.
    pub words: Vec<String>,
}

/// What a row exposes to the filter.
pub struct Labels<'a> {
    pub pid: u32,
    pub comm: &'a str,
    pub pod: &'a str,
    pub node: &'a str,
}

/// Longest filter expression accepted (it is typed by a human).
const MAX_LEN: usize = 1024;

impl Filter {
    /// Parses `key=value` terms and bare words separated by spaces or commas.
    /// A bare number is a pid.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.len() > MAX_LEN {
            return Err(format!("filter longer than {MAX_LEN} characters"));
        }
        let mut f = Filter::default();
        for term in s.split([' ', ',']).filter(|t| !t.is_empty()) {
            match term.split_once('=') {
                Some((key, value)) if !value.is_empty() => match key {
                    "pid" => f.pids.push(
                        value
                            .parse()
                            .map_err(|_| format!("pid={value}: not a process id"))?,
                    ),
                    "comm" => f.comms.push(value.to_string()),
                    "pod" => f.pods.push(value.to_string()),
                    "node" => f.nodes.push(value.to_string()),
                    _ => return Err(format!("unknown filter key {key:?} (pid, comm, pod, node)")),
                },
                Some((key, _)) => return Err(format!("{key}= needs a value")),
                None => match term.parse::<u32>() {
                    Ok(pid) => f.pids.push(pid),
                    Err(_) => f.words.push(term.to_string()),
                },
            }
        }
        Ok(f)
    }

    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    /// The part the agents understand.
    pub fn to_api(&self) -> api::Filter {
        api::Filter {
            pids: self.pids.clone(),
            comms: self.comms.clone(),
            pods: self.pods.clone(),
            ..Default::default()
        }
    }

    pub fn matches(&self, l: &Labels<'_>) -> bool {
        (self.pids.is_empty() || self.pids.contains(&l.pid))
            && (self.comms.is_empty() || self.comms.iter().any(|c| c == l.comm))
            && (self.pods.is_empty() || self.pods.iter().any(|p| p == l.pod))
            && (self.nodes.is_empty() || self.nodes.iter().any(|n| n == l.node))
            && self.words.iter().all(|w| {
                l.comm.contains(w.as_str())
                    || l.pod.contains(w.as_str())
                    || l.node.contains(w.as_str())
            })
    }
}

impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut terms: Vec<String> = Vec::new();
        terms.extend(self.pids.iter().map(|p| format!("pid={p}")));
        terms.extend(self.comms.iter().map(|c| format!("comm={c}")));
        terms.extend(self.pods.iter().map(|p| format!("pod={p}")));
        terms.extend(self.nodes.iter().map(|n| format!("node={n}")));
        terms.extend(self.words.iter().cloned());
        write!(f, "{}", terms.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels<'a>(pid: u32, comm: &'a str, pod: &'a str) -> Labels<'a> {
        Labels {
            pid,
            comm,
            pod,
            node: "n1",
        }
    }

    #[test]
    fn keys_and_words_parse_and_round_trip() {
        let f = Filter::parse("pid=12, comm=api 34 pod=web-1 node=n1 cache").unwrap();
        assert_eq!(f.pids, vec![12, 34]);
        assert_eq!(f.comms, vec!["api"]);
        assert_eq!(f.pods, vec!["web-1"]);
        assert_eq!(f.nodes, vec!["n1"]);
        assert_eq!(f.words, vec!["cache"]);
        assert_eq!(Filter::parse(&f.to_string()).unwrap(), f);
        let api = f.to_api();
        assert_eq!(
            (api.pids, api.comms, api.pods),
            (
                vec![12, 34],
                vec!["api".to_string()],
                vec!["web-1".to_string()]
            )
        );
    }

    #[test]
    fn bad_terms_are_rejected() {
        assert!(Filter::parse("pid=abc").is_err());
        assert!(Filter::parse("user=root").is_err());
        assert!(Filter::parse("comm=").is_err());
        assert!(Filter::parse(&"x".repeat(2000)).is_err());
        assert!(Filter::parse("  ").unwrap().is_empty());
    }

    #[test]
    fn keys_are_anded_and_values_ored() {
        let f = Filter::parse("pid=1 pid=2 comm=api").unwrap();
        assert!(f.matches(&labels(1, "api", "")));
        assert!(f.matches(&labels(2, "api", "")));
        assert!(!f.matches(&labels(3, "api", "")));
        assert!(!f.matches(&labels(1, "db", "")));
        let w = Filter::parse("web").unwrap();
        assert!(w.matches(&labels(9, "x", "web-1")));
        assert!(!w.matches(&labels(9, "x", "db-1")));
    }
}
