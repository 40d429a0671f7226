//! Uprobe links closed on a background thread.
//!
//! Closing a uprobe's perf event takes the kernel's global uprobe lock and an
//! RCU grace period: about 0.1 s here. A loop that must keep serving (the
//! agent's, or a budget controller's tick) hands its links to one closer
//! thread instead of waiting. One thread, so links close in the order they
//! were handed over: a call site's entry is always gone before its exit.

use std::sync::{OnceLock, mpsc};

use aya::programs::uprobe::UProbeLink;

static CLOSER: OnceLock<Option<mpsc::Sender<UProbeLink>>> = OnceLock::new();

fn closer() -> Option<&'static mpsc::Sender<UProbeLink>> {
    CLOSER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<UProbeLink>();
            std::thread::Builder::new()
                .name("tracer-link-closer".into())
                .spawn(move || {
                    for link in rx {
                        drop(link);
                    }
                })
                .map_err(|e| tracing::warn!("no link closer thread ({e}): links close inline"))
                .ok()
                .map(|_| tx)
        })
        .as_ref()
}

/// Closes `link` after every link handed over before it; inline when the
/// closer thread could not be started.
pub fn close_later(link: UProbeLink) {
    match closer() {
        Some(tx) => {
            if let Err(mpsc::SendError(link)) = tx.send(link) {
                drop(link);
            }
        }
        None => drop(link),
    }
}
