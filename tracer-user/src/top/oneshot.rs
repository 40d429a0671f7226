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
    model::{AgentSlot, merge},
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
            let deadline = Instant::now() + interval + GRACE;
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
            if json {
                println!("{}", plain::json(&view, filter)?);
            } else {
                if round > 1 {
                    println!();
                }
                print!("{}", plain::tables(&view, filter, top as usize));
            }
        }
        Ok(())
    }
    .await;
    for t in tasks {
        t.abort();
    }
    result
}
