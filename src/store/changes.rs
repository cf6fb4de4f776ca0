//! How an instance hears that the store changed. On PostgreSQL: `LISTEN` on [`CHANNEL`],
//! which every committed change `NOTIFY`s. On SQLite (one node, but `portcullis apply` may
//! write from another process): the store revision, polled. Either way a lost connection
//! is reported, retried with backoff, and reported again when it is back — the listener
//! then reloads everything, since changes made meanwhile were never announced to it. The
//! notification connection is also checked every [`HEARTBEAT`]: one that died silently
//! reports nothing.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::{Backend, CHANNEL, Store};

/// What the feed tells its listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// Something changed: reload.
    Changed,
    /// The database cannot be reached (why, without credentials); keep the last snapshot.
    Lost(String),
    /// The feed is (re)connected: reload, since changes may have been missed.
    Connected,
}

/// How often SQLite's revision is read.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often the notification connection must answer a query, how long it has to, and how
/// long it may take to open. A
/// connection that died silently (a NAT or a load balancer dropped the idle flow, a
/// failover moved the address) delivers no notification and no error: unchecked, the
/// instance would hear of changes only at each resync while reporting the store up.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Starts the feed for `store`; it stops when `shutdown` turns true or the receiver is
/// dropped.
pub fn start(store: Store, shutdown: watch::Receiver<bool>) -> mpsc::Receiver<Signal> {
    let (tx, rx) = mpsc::channel(16);
    match store.backend() {
        Backend::Postgres => tokio::spawn(listen(store, tx, shutdown)),
        Backend::Sqlite => tokio::spawn(poll(store, tx, shutdown)),
    };
    rx
}

/// Exponential backoff between reconnection attempts.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Backoff {
        Backoff(BACKOFF_START)
    }

    fn next(&mut self) -> Duration {
        let wait = self.0;
        self.0 = (self.0 * 2).min(BACKOFF_MAX);
        wait
    }
}

async fn listen(store: Store, tx: mpsc::Sender<Signal>, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Backoff::new();
    let mut lost = false;
    loop {
        let connected = async {
            let mut listener = sqlx::postgres::PgListener::connect(&store.url).await?;
            // Lost connections are handled here, by starting over.
            listener.eager_reconnect(false);
            listener.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        // A connection whose packets are dropped never completes its handshake and
        // reports nothing: bounded like the heartbeat, whatever state the feed is in.
        let connected = async {
            match tokio::time::timeout(HEARTBEAT, connected).await {
                Ok(outcome) => outcome.map_err(|e| describe(&e)),
                Err(_) => Err(format!(
                    "the notification connection did not open within {HEARTBEAT:?}"
                )),
            }
        };
        let outcome = tokio::select! {
            outcome = connected => outcome,
            _ = shutdown.changed() => return,
        };
        let mut listener = match outcome {
            Ok(listener) => listener,
            Err(why) => {
                if !lost && tx.send(Signal::Lost(why)).await.is_err() {
                    return;
                }
                lost = true;
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next()) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        };
        backoff = Backoff::new();
        if tx.send(Signal::Connected).await.is_err() {
            return;
        }
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // `try_recv` is cancel-safe: a heartbeat between two notifications loses none.
            let signal = tokio::select! {
                next = listener.try_recv() => match next {
                    Ok(Some(_)) => Signal::Changed,
                    Ok(None) => Signal::Lost("the notification connection closed".to_owned()),
                    Err(e) => Signal::Lost(describe(&e)),
                },
                _ = heartbeat.tick() => match answers(&mut listener).await {
                    Ok(()) => continue,
                    Err(why) => Signal::Lost(why),
                },
                _ = shutdown.changed() => return,
            };
            let is_lost = matches!(signal, Signal::Lost(_));
            if tx.send(signal).await.is_err() {
                return;
            }
            if is_lost {
                lost = true;
                break;
            }
        }
    }
}

async fn poll(store: Store, tx: mpsc::Sender<Signal>, mut shutdown: watch::Receiver<bool>) {
    let mut seen: Option<i64> = None;
    let mut lost = false;
    let mut backoff = Backoff::new();
    loop {
        let wait = match store.revision().await {
            Ok(revision) => {
                let signal = match seen {
                    _ if lost => Some(Signal::Connected),
                    None => Some(Signal::Connected),
                    Some(previous) if previous != revision => Some(Signal::Changed),
                    Some(_) => None,
                };
                seen = Some(revision);
                lost = false;
                backoff = Backoff::new();
                if let Some(signal) = signal
                    && tx.send(signal).await.is_err()
                {
                    return;
                }
                POLL_INTERVAL
            }
            Err(e) => {
                if !lost && tx.send(Signal::Lost(e.to_string())).await.is_err() {
                    return;
                }
                lost = true;
                backoff.next()
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Whether the notification connection answers a query within [`HEARTBEAT`].
async fn answers(listener: &mut sqlx::postgres::PgListener) -> Result<(), String> {
    let query = sqlx::query("SELECT 1").execute(listener);
    match tokio::time::timeout(HEARTBEAT, query).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err(format!(
            "the notification connection did not answer within {HEARTBEAT:?}"
        )),
    }
}

/// A database error for a log line: sqlx's messages name the host, never the password.
fn describe(error: &sqlx::Error) -> String {
    error.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut backoff = Backoff::new();
        let waits: Vec<u128> = (0..8).map(|_| backoff.next().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
    }
}
