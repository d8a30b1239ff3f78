//! What users ask of the scheduler for a sweep: create it (every member checked, then all
//! stored as queued runs at once), cancel, resume and delete it. Each member is an ordinary run,
//! so the dispatcher needs nothing new: members queue in grid order like any runs.
use super::actions::rank_devices_field;
use super::{Scheduler, SchedulerError};
use crate::config::FieldError;
use crate::config::{Preset, RunConfig};
use crate::db::{self, runs::RunState, sweeps::SweepSummary};
use crate::jobs::hub::state_data;
use crate::jobs::paths::check_dataset;
use crate::sweep::{Expanded, SweepSpec};

impl Scheduler {
    /// Expands `spec`, checks every member (its config, device and dataset) and stores the sweep
    /// with all its members queued. An invalid member stores nothing and is named with its field.
    pub async fn create_sweep(&self, spec: &SweepSpec) -> Result<SweepSummary, SchedulerError> {
        let expanded = self.expand_sweep(spec).await?;
        // The devices are the base's (a sweep cannot vary them); a member may vary its dataset's
        // path, so each member's dataset is checked.
        let first = &expanded.members[0].config;
        let device = rank_devices_field(first).map_err(|e| SchedulerError::Invalid(vec![e]))?;
        let errors: Vec<FieldError> = expanded
            .members
            .iter()
            .filter_map(|m| {
                check_dataset(&self.inner.data_dir, &m.config.dataset)
                    .err()
                    .map(|e| {
                        FieldError::new(
                            &format!("members[{}].{}", m.position, e.field),
                            format!("{}: {}", m.label(), e.message),
                        )
                    })
            })
            .collect();
        if !errors.is_empty() {
            return Err(SchedulerError::Invalid(errors));
        }
        let (id, run_ids) = db::sweeps::insert(&self.inner.pool, spec, &expanded, &device).await?;
        for run_id in run_ids {
            self.inner
                .hub
                .record(
                    &self.inner.pool,
                    run_id,
                    "state",
                    &state_data(RunState::Queued, None, 0),
                )
                .await?;
        }
        tracing::info!(sweep = id, members = expanded.members.len(), "sweep queued");
        self.inner.wake.notify_one();
        self.sweep_summary(id).await
    }

    /// `spec`'s members for this data directory (a recipe caps K by the dataset's size), every
    /// member's config checked; nothing is stored.
    pub async fn expand_sweep(&self, spec: &SweepSpec) -> Result<Expanded, SchedulerError> {
        let base = RunConfig::from_partial_json(&spec.base, Preset::Cifar).ok();
        let train_images = match base {
            Some(cfg) => training_images(&self.inner.data_dir, cfg).await,
            None => None,
        };
        spec.expand(train_images).map_err(SchedulerError::Invalid)
    }

    /// Cancels every member still to finish: queued and interrupted ones never start, a running
    /// one stops within a step. Completed and failed members keep their results.
    pub async fn cancel_sweep(&self, id: i64) -> Result<SweepSummary, SchedulerError> {
        for run in self.sweep_runs(id).await? {
            if matches!(
                run.1,
                RunState::Queued | RunState::Running | RunState::Interrupted
            ) {
                match self.cancel(run.0).await {
                    Ok(_) | Err(SchedulerError::Conflict(_)) | Err(SchedulerError::NotFound(_)) => {
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        tracing::info!(sweep = id, "sweep cancelled");
        self.sweep_summary(id).await
    }

    /// Queues the cancelled and interrupted members again, each from its latest checkpoint.
    /// Failed members stay failed: in a sweep a failure is a result.
    pub async fn resume_sweep(&self, id: i64) -> Result<SweepSummary, SchedulerError> {
        let runs = self.sweep_runs(id).await?;
        let waiting: Vec<i64> = runs
            .iter()
            .filter(|(_, s)| matches!(s, RunState::Cancelled | RunState::Interrupted))
            .map(|(run, _)| *run)
            .collect();
        if waiting.is_empty() {
            return Err(SchedulerError::Conflict(format!(
                "sweep {id} has no cancelled or interrupted member to resume"
            )));
        }
        for run in waiting {
            match self.resume(run).await {
                Ok(_) | Err(SchedulerError::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
        }
        tracing::info!(sweep = id, "sweep queued again");
        self.sweep_summary(id).await
    }

    /// Deletes the sweep and its member runs with their files; refused while a member runs.
    pub async fn delete_sweep(&self, id: i64) -> Result<(), SchedulerError> {
        let runs = self.sweep_runs(id).await?;
        if let Some((run, _)) = runs.iter().find(|(_, s)| *s == RunState::Running) {
            return Err(SchedulerError::Conflict(format!(
                "sweep {id} has a running member (run {run}): cancel the sweep first"
            )));
        }
        for (run, _) in runs {
            match self.delete(run).await {
                Ok(()) | Err(SchedulerError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        db::sweeps::delete(&self.inner.pool, id).await?;
        tracing::info!(sweep = id, "sweep deleted");
        Ok(())
    }

    async fn sweep_summary(&self, id: i64) -> Result<SweepSummary, SchedulerError> {
        db::sweeps::get(&self.inner.pool, id)
            .await?
            .map(|(summary, _, _)| summary)
            .ok_or(SchedulerError::NoSweep(id))
    }

    /// The members' run ids and states, in grid order.
    async fn sweep_runs(&self, id: i64) -> Result<Vec<(i64, RunState)>, SchedulerError> {
        let (_, members, _) = db::sweeps::get(&self.inner.pool, id)
            .await?
            .ok_or(SchedulerError::NoSweep(id))?;
        Ok(members.iter().map(|m| (m.run.id, m.run.state)).collect())
    }
}

/// `sweep::training_images` off the async threads, for a dataset inside the data directory.
async fn training_images(data_dir: &std::path::Path, cfg: RunConfig) -> Option<usize> {
    check_dataset(data_dir, &cfg.dataset).ok()?;
    let dir = data_dir.to_path_buf();
    tokio::task::spawn_blocking(move || crate::sweep::training_images(&cfg, &dir))
        .await
        .ok()
        .flatten()
}
