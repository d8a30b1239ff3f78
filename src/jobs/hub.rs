//! Fan-out of recorded events to live SSE subscribers.
//!
//! Every event is first stored (so it has its id) and then broadcast. Writers hold `write_lock`
//! from their insert until the broadcast, so events are broadcast in id order: a subscriber that
//! skips ids it has already sent never skips one it has not.
use crate::db::events::EventRow;
use sqlx::SqlitePool;
use std::sync::Arc;
use tokio::sync::{broadcast, Mutex, MutexGuard};

/// Events a slow subscriber may fall behind by before it re-reads the gap from SQLite.
const CAPACITY: usize = 4096;

pub struct EventHub {
    tx: broadcast::Sender<Arc<EventRow>>,
    write_lock: Mutex<()>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}

impl EventHub {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        EventHub {
            tx,
            write_lock: Mutex::new(()),
        }
    }

    /// Live events from now on (subscribe before reading the backlog from SQLite).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventRow>> {
        self.tx.subscribe()
    }

    /// Number of live subscribers.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Held from the insert of events until they are broadcast.
    pub async fn lock(&self) -> MutexGuard<'_, ()> {
        self.write_lock.lock().await
    }

    /// Sends stored events to the subscribers (call with the lock held, after the commit).
    pub fn broadcast(&self, events: impl IntoIterator<Item = EventRow>) {
        for e in events {
            // No subscriber is not an error: the event is in SQLite for whoever connects later.
            let _ = self.tx.send(Arc::new(e));
        }
    }

    /// Stores one event for run `run_id` and broadcasts it (a state change made by the API).
    pub async fn record(
        &self,
        pool: &SqlitePool,
        run_id: i64,
        kind: &str,
        data: &serde_json::Value,
    ) -> anyhow::Result<()> {
        let _guard = self.lock().await;
        let mut conn = pool.acquire().await?;
        let row = crate::db::events::insert(&mut conn, run_id, kind, data).await?;
        self.broadcast([row]);
        Ok(())
    }
}

/// The `data` of a `state` event.
pub fn state_data(
    state: crate::db::runs::RunState,
    error: Option<&str>,
    step: i64,
) -> serde_json::Value {
    serde_json::json!({"state": state.as_str(), "error": error, "step": step})
}
