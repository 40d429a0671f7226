//! The interactive terminal: raw mode and alternate screen (restored on exit
//! and, through ratatui's panic hook, on panic), a key reader thread, and the
//! event loop that feeds agent events and keys to [`App`].

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use ratatui::crossterm::event::{self, Event, KeyEventKind};
use tokio::sync::{mpsc, watch};

use super::{
    app::{Action, App, DEEP_MAPS},
    filter::Filter,
    source::{self, Addr, run_agent},
    ui,
};

/// Restores the terminal when dropped (normal exit and `?` errors alike).
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

enum Input {
    Key(event::KeyEvent),
    Redraw,
}

/// Reads terminal events on a thread (crossterm's reader blocks) until `stop`.
fn spawn_input(tx: mpsc::Sender<Input>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match event::poll(Duration::from_millis(100)) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(_) => return,
            }
            let input = match event::read() {
                Ok(Event::Key(k)) if k.kind != KeyEventKind::Release => Input::Key(k),
                Ok(Event::Resize(..)) => Input::Redraw,
                Ok(_) => continue,
                Err(_) => return,
            };
            if tx.blocking_send(input).is_err() {
                return;
            }
        }
    })
}

pub async fn run(addrs: Vec<Addr>, filter: Filter, interval_ms: u32, top: u32) -> Result<()> {
    let names: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let mut app = App::new(&names, filter, interval_ms, top);
    let (params_tx, params_rx) = watch::channel(app.watch_params());
    let (tx, mut rx) = mpsc::channel(1024);
    let tasks: Vec<_> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| tokio::spawn(run_agent(i, a.clone(), params_rx.clone(), tx.clone())))
        .collect();
    drop(tx);
    let (notice_tx, mut notice_rx) = mpsc::channel::<String>(8);

    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    let _restore = Restore;
    let stop = Arc::new(AtomicBool::new(false));
    let (ktx, mut krx) = mpsc::channel(64);
    let reader = spawn_input(ktx, stop.clone());
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let result: Result<()> = async {
        loop {
            terminal
                .draw(|f| ui::draw(f, &app, Instant::now()))
                .context("draw")?;
            tokio::select! {
                ev = rx.recv() => {
                    let Some(ev) = ev else { break };
                    app.on_event(ev.agent, ev.event, Instant::now());
                    // Apply whatever else is queued before the next draw.
                    while let Ok(ev) = rx.try_recv() {
                        app.on_event(ev.agent, ev.event, Instant::now());
                    }
                }
                input = krx.recv() => match input {
                    Some(Input::Key(k)) => match app.on_key(k) {
                        Action::Quit => break,
                        Action::Restream => {
                            params_tx.send_replace(app.watch_params());
                        }
                        Action::DeepMaps { agent, pid } => {
                            if let Some(addr) = addrs.get(agent).cloned() {
                                let ntx = notice_tx.clone();
                                tokio::spawn(async move {
                                    let msg = match source::start_deep_maps(&addr, pid, DEEP_MAPS).await {
                                        Ok(m) => m,
                                        Err(e) => format!("deep map tracing for pid {pid}: {e:#}"),
                                    };
                                    let _ = ntx.send(msg).await;
                                });
                            }
                        }
                        Action::None => {}
                    },
                    Some(Input::Redraw) => {}
                    None => break,
                },
                Some(msg) = notice_rx.recv() => app.notice = Some(msg),
                _ = tick.tick() => app.expire_flashes(Instant::now()),
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        Ok(())
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    let _ = reader.join();
    result
}
