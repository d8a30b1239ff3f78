//! Running the runs: the scheduler (queue → device threads), the training threads and their
//! observer, the recorder that stores what the engine reports, and the live event fan-out.
//!
//! Handlers (the JSON API and the HTML forms alike) act on runs through the functions below, so
//! both get the same validation and the same state machine.
pub mod hub;
pub mod paths;
pub mod recorder;
pub mod scheduler;
pub mod worker;

pub use scheduler::{CreatedRun, Refused, Scheduler, SchedulerOptions};

use crate::config::FieldError;
use crate::db::runs::RunSummary;
use crate::server::AppState;

/// Validates a partial config (JSON body or form fields), stores it as a queued run and lets the
/// scheduler start it. `Ok(Err(errors))`: invalid input, nothing stored, every bad field named.
pub async fn create_run(
    state: &AppState,
    doc: serde_json::Value,
) -> anyhow::Result<Result<CreatedRun, Vec<FieldError>>> {
    state.scheduler.create(&doc).await
}

/// Cancels a queued, running or interrupted run (a running one stops within a step).
pub async fn cancel_run(state: &AppState, id: i64) -> anyhow::Result<Result<RunSummary, Refused>> {
    state.scheduler.cancel(id).await
}

/// Queues an interrupted, cancelled or failed run again, continuing from its latest full
/// checkpoint.
pub async fn resume_run(state: &AppState, id: i64) -> anyhow::Result<Result<RunSummary, Refused>> {
    state.scheduler.resume(id).await
}

/// Deletes a run that is not running, with its files.
pub async fn delete_run(state: &AppState, id: i64) -> anyhow::Result<Result<(), Refused>> {
    state.scheduler.delete(id).await
}
