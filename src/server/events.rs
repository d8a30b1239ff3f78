//! GET /api/runs/{id}/events: a run's events as server-sent events.
//!
//! Each event carries its events-table id. A client that reconnects with `Last-Event-ID` (or
//! `?last_event_id=`) first gets the gap from SQLite, then live events, with no loss and no
//! duplicates: the stream subscribes to the live broadcast *before* reading the backlog, and then
//! skips live events it already sent from the backlog. Falling behind the broadcast is handled the
//! same way (read the gap from SQLite again). Streams end when the server shuts down.
use super::error::{RunId, WebError};
use super::AppState;
use crate::db;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use serde::Deserialize;
use sqlx::SqlitePool;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

/// Rows read from SQLite per query while catching up.
const BACKLOG_PAGE: i64 = 1000;
/// How often a comment line keeps idle connections (and proxies) alive.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How long a client waits before reconnecting after the stream ends.
const RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    last_event_id: Option<String>,
}

pub async fn stream(
    State(state): State<AppState>,
    RunId(run_id): RunId,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, WebError> {
    if !db::runs::exists(&state.db, run_id).await? {
        return Err(WebError::not_found(format!("there is no run {run_id}")));
    }
    let raw_last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or(q.last_event_id);
    let last_id = match raw_last.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            WebError::bad_request(
                "Last-Event-ID",
                "must be an event id (a non-negative integer)",
            )
        })?,
    };
    // Subscribe before the backlog is read: nothing committed in between can be missed.
    let live = state.hub.subscribe();
    let (tx, rx) = mpsc::channel::<Event>(256);
    tokio::spawn(pump(
        state.db.clone(),
        run_id,
        last_id,
        live,
        tx,
        state.shutdown_signal(),
    ));
    let stream = ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)))
}

fn to_sse(row: &db::events::EventRow) -> Event {
    Event::default()
        .id(row.id.to_string())
        .event(&row.kind)
        .data(&row.data)
}

/// Sends the backlog after `*last`, then live events, until the client leaves or the server stops.
async fn pump(
    pool: SqlitePool,
    run_id: i64,
    mut last: i64,
    mut live: broadcast::Receiver<std::sync::Arc<db::events::EventRow>>,
    tx: mpsc::Sender<Event>,
    mut shutdown: watch::Receiver<bool>,
) {
    if *shutdown.borrow() {
        return;
    }
    let first = Event::default().retry(RETRY).comment("connected");
    if tx.send(first).await.is_err() {
        return;
    }
    if !catch_up(&pool, run_id, &mut last, &tx).await {
        return;
    }
    loop {
        tokio::select! {
            _ = stopped(&mut shutdown) => return,
            _ = tx.closed() => return,
            received = live.recv() => match received {
                Ok(row) => {
                    if row.run_id != run_id || row.id <= last {
                        continue;
                    }
                    last = row.id;
                    if tx.send(to_sse(&row)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    if !catch_up(&pool, run_id, &mut last, &tx).await {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Sends every stored event after `*last`; false when the client is gone or SQLite failed.
async fn catch_up(
    pool: &SqlitePool,
    run_id: i64,
    last: &mut i64,
    tx: &mpsc::Sender<Event>,
) -> bool {
    loop {
        let rows = match db::events::after(pool, run_id, *last, BACKLOG_PAGE).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(run = run_id, "cannot read events for a stream: {e:#}");
                return false;
            }
        };
        for row in &rows {
            if tx.send(to_sse(row)).await.is_err() {
                return false;
            }
            *last = row.id;
        }
        if (rows.len() as i64) < BACKLOG_PAGE {
            return true;
        }
    }
}

/// Resolves once the server begins to shut down.
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}
