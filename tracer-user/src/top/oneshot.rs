//! Non-interactive `tracer top`: waits `--interval`, takes one snapshot per
//! agent per round, prints the merged tables (or JSON) `--count` times.

use std::time::Duration;

use anyhow::{Result, bail};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tracer_api::v1::SortKey;

use super::{
    filter::Filter,
    model::{AgentSlot, MergedSnapshot, merge},
    plain,
    source::{Addr, AgentEvent, WatchParams, run_agent},
};

/// How long past the interval a round waits for slow or unreachable agents.
const GRACE: Duration = Duration::from_secs(10);

pub async fn run(
    addrs: Vec<Addr>,
    filter: &Filter,
    interval_ms: u32,
    top: u32,
    rounds: u32,
    json: bool,
) -> Result<()> {
    collect(
        addrs,
        filter,
        interval_ms,
        top,
        rounds,
        GRACE,
        |round, view| {
            let sep = if round > 1 && !json { "\n" } else { "" };
            let body = if json {
                format!("{}\n", plain::json(view, filter)?)
            } else {
                plain::tables(view, filter, top as usize)
            };
            crate::commands::print_out(&format!("{sep}{body}"))
        },
    )
    .await
}

/// Takes `rounds` merged snapshots, one per interval, and hands each to
/// `emit`; a round waits at most `interval + grace` for every agent.
pub async fn collect(
    addrs: Vec<Addr>,
    filter: &Filter,
    interval_ms: u32,
    top: u32,
    rounds: u32,
    grace: Duration,
    mut emit: impl FnMut(u32, &MergedSnapshot) -> Result<()>,
) -> Result<()> {
    let interval = Duration::from_millis(u64::from(interval_ms));
    let (_params_tx, params_rx) = watch::channel(WatchParams {
        filter: filter.to_api(),
        interval_ms,
        top_n: top,
        sort: SortKey::TotalTime,
    });
    let (tx, mut rx) = mpsc::channel(256);
    let tasks: Vec<_> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| tokio::spawn(run_agent(i, a.clone(), params_rx.clone(), tx.clone())))
        .collect();
    drop(tx);
    let mut slots: Vec<AgentSlot> = addrs
        .iter()
        .map(|a| AgentSlot::new(a.to_string()))
        .collect();
    let start = Instant::now();
    let mut taken = vec![0u32; slots.len()];
    let mut last = vec![start; slots.len()];
    // A snapshot counts once a full interval passed since the previous one
    // (or since start), so the first round covers `--interval` of activity.
    let min_gap = interval.mul_f64(0.9);
    let result = async {
        for round in 1..=rounds {
            let deadline = Instant::now() + interval + grace;
            while taken.iter().any(|&t| t < round) {
                let ev = match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(ev)) => ev,
                    Ok(None) | Err(_) => break,
                };
                let i = ev.agent;
                let Some(slot) = slots.get_mut(i) else {
                    continue;
                };
                match ev.event {
                    AgentEvent::State(s) => slot.connection = s,
                    AgentEvent::Info(info) => slot.info = Some(*info),
                    AgentEvent::Finding(f) => {
                        slot.add_finding(&f);
                    }
                    AgentEvent::Snapshot(s) => {
                        let now = Instant::now();
                        if taken[i] < round && now.duration_since(last[i]) >= min_gap {
                            slot.shown = Some(*s);
                            taken[i] += 1;
                            last[i] = now;
                        }
                    }
                }
            }
            let view = merge(&slots);
            if let Some(why) = plain::none_connected(&view) {
                bail!("no agent answered: {why}");
            }
            emit(round, &view)?;
        }
        Ok(())
    }
    .await;
    for t in tasks {
        t.abort();
    }
    result
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::top::{
        mock::{Script, serve, tempdir},
        model::fixtures::{lock, race, snapshot},
    };

    #[tokio::test]
    async fn rounds_merge_two_agents_after_the_interval() {
        let dir = tempdir("oneshot");
        let mut paths = vec![];
        for (i, node) in ["node-a", "node-b"].iter().enumerate() {
            let sub = dir.join(node);
            std::fs::create_dir_all(&sub).unwrap();
            let script = Script {
                node: node.to_string(),
                snapshot: snapshot("", vec![lock(100 + i as u32, "svc", "main.mu", 5, 1000)]),
                findings: vec![race(1, 100)],
                ..Script::default()
            };
            paths.push(serve(&sub, Arc::new(Mutex::new(script))));
        }
        let addrs = paths.into_iter().map(Addr::Unix).collect();
        let mut views = vec![];
        let t0 = Instant::now();
        collect(addrs, &Filter::default(), 200, 20, 2, GRACE, |round, v| {
            views.push((round, t0.elapsed(), v.clone()));
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(views.len(), 2);
        let (_, at, v) = &views[0];
        assert!(
            *at >= Duration::from_millis(180),
            "first round waits an interval: {at:?}"
        );
        let mut nodes: Vec<&str> = v.locks.iter().map(|l| l.node.as_str()).collect();
        nodes.sort();
        assert_eq!(nodes, ["node-a", "node-b"]);
        assert_eq!(v.agents.len(), 2);
        assert!(
            v.agents
                .iter()
                .all(|a| a.version == "mock" && a.hooks.len() == 1)
        );
        let (_, _, v2) = &views[1];
        assert!(
            v2.agents
                .iter()
                .zip(&v.agents)
                .all(|(b, a)| b.snapshot_seq > a.snapshot_seq),
            "second round has newer snapshots"
        );
        assert_eq!(v2.findings.len(), 2, "one finding per agent");
    }

    #[tokio::test]
    async fn no_reachable_agent_is_an_error() {
        let dir = tempdir("oneshot-none");
        let err = collect(
            vec![Addr::Unix(dir.join("nobody.sock"))],
            &Filter::default(),
            100,
            20,
            1,
            Duration::from_millis(500),
            |_, _| Ok(()),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("no agent answered"), "{err}");
    }
}
