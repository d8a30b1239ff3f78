//! What users ask of the scheduler: create, cancel, resume and delete a run, each checked against
//! the run's state, with the state change and its event stored in one transaction.
use super::{CreatedRun, Scheduler, SchedulerError};
use crate::config::{parse_device, FieldError, Preset, RunConfig};
use crate::db::{self, runs::RunState, runs::RunSummary};
use crate::jobs::hub::state_data;
use crate::jobs::paths::{check_dataset, run_dir};
use crate::jobs::worker::JobKey;
use crate::train::device::device_name;
use anyhow::Context;
use std::time::Duration;

impl Scheduler {
    /// Validates a partial config (the JSON API's body, the form's fields), stores it as a queued
    /// run and wakes the dispatcher. Invalid input stores nothing and names every bad field.
    pub async fn create(&self, doc: &serde_json::Value) -> Result<CreatedRun, SchedulerError> {
        let config =
            RunConfig::from_partial_json(doc, Preset::Cifar).map_err(SchedulerError::Invalid)?;
        let mut errors = Vec::new();
        let device = match rank_devices_field(&config) {
            Ok(device) => device,
            Err(e) => {
                errors.push(e);
                String::new()
            }
        };
        if let Err(e) = check_dataset(&self.inner.data_dir, &config.dataset) {
            errors.push(e);
        }
        if !errors.is_empty() {
            return Err(SchedulerError::Invalid(errors));
        }
        let id = db::runs::insert(&self.inner.pool, &config, &device).await?;
        self.inner
            .hub
            .record(
                &self.inner.pool,
                id,
                "state",
                &state_data(RunState::Queued, None, 0),
            )
            .await?;
        let (run, config) = db::runs::get_with_config(&self.inner.pool, id)
            .await?
            .context("the new run disappeared")?;
        tracing::info!(run = id, name = %run.name, device = %run.device, "run queued");
        self.inner.wake.notify_one();
        Ok(CreatedRun { run, config })
    }

    /// Cancels a run: a queued (or interrupted) run never starts; a running one stops within a
    /// step, writing a full checkpoint, and ends 'cancelled'.
    pub async fn cancel(&self, id: i64) -> Result<RunSummary, SchedulerError> {
        // A queued run may start while we look: read again when the state moved under us.
        for _ in 0..3 {
            let Some(run) = db::runs::get(&self.inner.pool, id).await? else {
                return Err(SchedulerError::NotFound(id));
            };
            match run.state {
                RunState::Queued | RunState::Interrupted => {
                    if self
                        .change_state(id, &[run.state], RunState::Cancelled)
                        .await?
                    {
                        tracing::info!(run = id, "run cancelled before it trained");
                        return self.summary(id).await;
                    }
                }
                RunState::Running => {
                    match self.stop_flag(JobKey::Run(id)) {
                        Some(stop) => {
                            stop.cancel();
                            db::runs::request_cancel(&self.inner.pool, id).await?;
                            tracing::info!(run = id, "cancel requested");
                            return Ok(run);
                        }
                        // Just finished: its end is being stored.
                        None => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
                state => {
                    return Err(SchedulerError::Conflict(format!(
                        "run {id} is {state}: only queued, running or interrupted runs can be \
                         cancelled"
                    )))
                }
            }
        }
        Err(SchedulerError::Conflict(format!(
            "run {id} changed state while it was being cancelled; try again"
        )))
    }

    /// Queues an interrupted, cancelled or failed run again; it continues from its latest full
    /// checkpoint (or from the start when it has none).
    pub async fn resume(&self, id: i64) -> Result<RunSummary, SchedulerError> {
        let Some(run) = db::runs::get(&self.inner.pool, id).await? else {
            return Err(SchedulerError::NotFound(id));
        };
        if !run.state.can_resume() {
            let why = match run.state {
                RunState::Completed => "it already completed",
                RunState::Running => "it is running",
                _ => "it is already queued",
            };
            return Err(SchedulerError::Conflict(format!(
                "run {id} cannot be resumed: {why}"
            )));
        }
        if !self
            .change_state(
                id,
                &[RunState::Interrupted, RunState::Cancelled, RunState::Failed],
                RunState::Queued,
            )
            .await?
        {
            return Err(SchedulerError::Conflict(format!(
                "run {id} changed state meanwhile; try again"
            )));
        }
        tracing::info!(run = id, "run queued again");
        self.inner.wake.notify_one();
        self.summary(id).await
    }

    /// Deletes a run that is not running, with its rows, its evaluations and its files. A run
    /// with an evaluation running keeps its files until that ends.
    pub async fn delete(&self, id: i64) -> Result<(), SchedulerError> {
        let Some(run) = db::runs::get(&self.inner.pool, id).await? else {
            return Err(SchedulerError::NotFound(id));
        };
        let running = db::evals::running_of_run(&self.inner.pool, id).await?;
        if let Some(eval) = running.first() {
            return Err(SchedulerError::Conflict(format!(
                "run {id} has a running evaluation ({eval}): cancel it first, then delete the run"
            )));
        }
        if run.state == RunState::Running
            || !db::runs::delete_unless_running(&self.inner.pool, id).await?
        {
            return Err(SchedulerError::Conflict(format!(
                "run {id} is running: cancel it first, then delete it"
            )));
        }
        let dir = run_dir(&self.inner.data_dir, id);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(run = id, dir = %dir.display(), "cannot remove the run's files: {e}")
            }
        }
        tracing::info!(run = id, "run deleted");
        Ok(())
    }

    pub(super) async fn summary(&self, id: i64) -> Result<RunSummary, SchedulerError> {
        db::runs::get(&self.inner.pool, id)
            .await?
            .ok_or(SchedulerError::NotFound(id))
    }

    /// Moves a run between states with its `state` event, atomically.
    pub(super) async fn change_state(
        &self,
        id: i64,
        from: &[RunState],
        to: RunState,
    ) -> anyhow::Result<bool> {
        let inner = &self.inner;
        let _guard = inner.hub.lock().await;
        let mut tx = inner.pool.begin().await?;
        if !db::runs::transition(&mut tx, id, from, to).await? {
            return Ok(false);
        }
        let step = db::runs::step_of(&mut tx, id).await?;
        let event = db::events::insert(&mut tx, id, "state", &state_data(to, None, step)).await?;
        tx.commit().await?;
        inner.hub.broadcast([event]);
        Ok(true)
    }
}

/// The devices of a run's processes, resolved on this machine and spelled as runs store them
/// ("cpu", "cuda:0", "cuda:0,cuda:1", "cpu,cpu"), or the error naming the field.
pub(super) fn rank_devices_field(config: &RunConfig) -> Result<String, FieldError> {
    crate::config::devices::resolve_rank_devices(&config.device, config.devices)
        .map(|devices| crate::config::devices::rank_devices_name(&devices))
}

/// The device a request names, resolved on this machine ("cpu", "cuda:0"), or the error naming
/// the `device` field.
pub(super) fn device_field(requested: &str) -> Result<String, FieldError> {
    match parse_device(requested).map(|d| d.resolve()) {
        Some(Ok(device)) => Ok(device_name(device)),
        Some(Err(message)) => Err(FieldError::new("device", message)),
        None => Err(FieldError::new("device", "must be auto, cpu or cuda:N")),
    }
}
