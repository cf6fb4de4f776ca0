//! A change arriving from a secret backend: values are read before requests need them and
//! re-read before they expire, whatever snapshot is live (a reload's new sources are read at
//! the next tick). The values live in the runtime's cache, not in a snapshot.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::Shared;
use crate::snapshot::Runtime;

/// Secret values are read before requests need them, and re-read before they expire, so a
/// request rarely waits on a backend; a reload's new sources are read at once.
pub async fn refresh_secrets(
    shared: Arc<Shared>,
    runtime: Runtime,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let sources = shared.snapshot.load().pipeline.sources();
                runtime.cache.refresh(&sources).await;
            }
            _ = shutdown.changed() => return,
        }
    }
}
