//! Evaluation jobs: create (everything checked before anything is stored), start on a device
//! thread, cancel, restart and delete, with the runs' state machine.
use super::{Scheduler, SchedulerError};
use crate::config::{from_json_value, Choice, DatasetConfig, EvalMethod, FieldError, Protocol};
use crate::db::{self, checkpoints::CheckpointRow, evals::EvalSummary, runs::RunState};
use crate::eval::spec::EvalSpec;
use crate::eval::{open_labelled, FrozenEncoder};
use crate::jobs::eval_job::EvalJob;
use crate::jobs::paths::{check_dataset, registered_file, resolve_inside, without_data_dir};
use crate::jobs::worker::{Job, JobKey};
use crate::train::checkpoint::sha256_of_file;
use crate::train::stop::StopFlag;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// What a client asks for: which encoder, evaluated how, on which data.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvalRequest {
    /// linear (a classifier on the frozen features) or knn.
    #[serde(default = "linear")]
    pub method: EvalMethod,
    /// The linear probe's protocol, which brings its settings: moco (main_lincls.py), v3
    /// (MoCo v3's) or fast (on features computed once).
    #[serde(default = "moco")]
    pub protocol: Protocol,
    /// Evaluate a checkpoint of this run (the run's dataset is the default dataset).
    pub run_id: Option<i64>,
    /// Which of the run's checkpoints; default: the newest (the encoder export when a full
    /// checkpoint was written at the same step).
    pub checkpoint_id: Option<i64>,
    /// Or an encoder file in the data directory (relative path): a full checkpoint, an encoder
    /// export, or torchvision-keyed ResNet weights. Needs `settings.dataset`.
    pub encoder: Option<String>,
    /// auto (a GPU when there is one), cpu or cuda:N.
    #[serde(default = "auto")]
    pub device: String,
    /// The method's settings to change (`epochs`, `batch_size`, … and `dataset`, an object).
    #[serde(default)]
    #[schemars(with = "serde_json::Map<String, Value>")]
    pub settings: serde_json::Map<String, Value>,
}

fn linear() -> EvalMethod {
    EvalMethod::Linear
}

fn moco() -> Protocol {
    Protocol::Moco
}

fn auto() -> String {
    "auto".into()
}

/// Where the encoder of an evaluation comes from.
#[derive(Debug, Clone)]
pub enum EvalSource {
    Checkpoint {
        run_id: i64,
        checkpoint: CheckpointRow,
    },
    File {
        rel: String,
    },
}

/// A stored, queued evaluation with its settings.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedEval {
    pub eval: EvalSummary,
    pub settings: Value,
}

/// Collects field errors; the request is refused when any was found.
fn refused(errors: Vec<FieldError>) -> SchedulerError {
    SchedulerError::Invalid(errors)
}

impl Scheduler {
    /// Validates an evaluation request — the source, the settings, the device, the encoder file
    /// (loaded, so weights that do not fit are refused now), the dataset (opened, so one without
    /// labels is refused now) — stores it queued and wakes the dispatcher. Nothing is stored when
    /// anything is wrong; every error names its field.
    pub async fn create_eval(&self, doc: &Value) -> Result<CreatedEval, SchedulerError> {
        let request: EvalRequest = from_json_value(doc.clone()).map_err(refused)?;
        let data_dir = self.inner.data_dir.clone();
        let (source, base_dataset) = self.eval_source(&request).await?;
        let overrides = settings_overrides(&request.settings);
        let dataset = match (base_dataset, request.settings.contains_key("dataset")) {
            (Some(dataset), _) => dataset,
            (None, true) => DatasetConfig::synthetic(),
            (None, false) => {
                return Err(refused(vec![FieldError::new(
                    "settings.dataset",
                    "is required when evaluating an encoder file: the labelled set to probe on",
                )]))
            }
        };
        let spec = EvalSpec::with_overrides(request.method, request.protocol, dataset, &overrides)
            .map_err(refused)?;
        let mut errors = Vec::new();
        let device = match super::actions::device_field(&request.device) {
            Ok(device) => device,
            Err(e) => {
                errors.push(e);
                String::new()
            }
        };
        if let Err(e) = check_dataset(&data_dir, spec.dataset()) {
            errors.push(FieldError::new(&format!("settings.{}", e.field), e.message));
        }
        if !errors.is_empty() {
            return Err(refused(errors));
        }

        // The encoder and the dataset are read now, on a blocking thread.
        let (encoder_field, rel) = match &source {
            EvalSource::Checkpoint { checkpoint, .. } => ("checkpoint_id", checkpoint.path.clone()),
            EvalSource::File { rel } => ("encoder", rel.clone()),
        };
        let path = resolve_inside(&data_dir, &rel)
            .ok()
            .filter(|p| p.is_file())
            .ok_or_else(|| {
                refused(vec![FieldError::new(
                    encoder_field,
                    format!("{rel}: no such file in the data directory"),
                )])
            })?;
        let known_sha = match &source {
            EvalSource::Checkpoint { checkpoint, .. } => Some(checkpoint.sha256.clone()),
            EvalSource::File { .. } => None,
        };
        let checked = {
            let (path, data_dir, dataset) =
                (path.clone(), data_dir.clone(), spec.dataset().clone());
            tokio::task::spawn_blocking(move || check_inputs(&path, &data_dir, &dataset, known_sha))
                .await
                .context("the check of the evaluation's inputs failed")?
        };
        let (info, sha256) = checked.map_err(|(field, e)| {
            let field = if field == "encoder" {
                encoder_field
            } else {
                field
            };
            refused(vec![FieldError::new(
                field,
                without_data_dir(&format!("{e:#}"), &data_dir),
            )])
        })?;

        let (run_id, checkpoint_id) = match &source {
            EvalSource::Checkpoint { run_id, checkpoint } => (Some(*run_id), Some(checkpoint.id)),
            EvalSource::File { .. } => (None, None),
        };
        let id = db::evals::insert(
            &self.inner.pool,
            &db::evals::NewEval {
                method: spec.method(),
                protocol: spec.protocol(),
                run_id,
                checkpoint_id,
                encoder: rel,
                encoder_sha256: sha256,
                encoder_arch: info.arch.name().to_string(),
                encoder_epoch: info.epoch,
                dataset: spec.dataset().label(),
                config: spec.to_json(),
                epochs: spec.epochs(),
                device,
            },
        )
        .await?;
        let eval = self.eval_summary(id).await?;
        tracing::info!(eval = id, label = %eval.label, encoder = %eval.encoder, "evaluation queued");
        self.inner.wake.notify_one();
        Ok(CreatedEval {
            eval,
            settings: spec.to_json(),
        })
    }

    /// The request's encoder source, checked, and the dataset it defaults to (a run's own).
    async fn eval_source(
        &self,
        request: &EvalRequest,
    ) -> Result<(EvalSource, Option<DatasetConfig>), SchedulerError> {
        let pool = &self.inner.pool;
        match (request.run_id, &request.encoder) {
            (Some(_), Some(_)) => Err(refused(vec![FieldError::new(
                "encoder",
                "give either run_id (a run's checkpoint) or encoder (a file), not both",
            )])),
            (None, None) => Err(refused(vec![FieldError::new(
                "run_id",
                "give run_id (and optionally checkpoint_id) or encoder (a file in the data \
                 directory)",
            )])),
            (None, Some(rel)) => {
                if request.checkpoint_id.is_some() {
                    return Err(refused(vec![FieldError::new(
                        "checkpoint_id",
                        "belongs with run_id, not with an encoder file",
                    )]));
                }
                let path = resolve_inside(&self.inner.data_dir, rel)
                    .map_err(|m| refused(vec![FieldError::new("encoder", m)]))?;
                if !path.is_file() {
                    return Err(refused(vec![FieldError::new(
                        "encoder",
                        format!("{rel:?} is not a file"),
                    )]));
                }
                let rel = crate::jobs::paths::relative_to(&self.inner.data_dir, &path)
                    .unwrap_or_else(|| rel.clone());
                Ok((EvalSource::File { rel }, None))
            }
            (Some(run_id), None) => {
                let Some((_, config)) = db::runs::get_with_config(pool, run_id).await? else {
                    return Err(refused(vec![FieldError::new(
                        "run_id",
                        format!("there is no run {run_id}"),
                    )]));
                };
                let checkpoint = match request.checkpoint_id {
                    Some(ckpt) => {
                        db::checkpoints::get(pool, run_id, ckpt)
                            .await?
                            .ok_or_else(|| {
                                refused(vec![FieldError::new(
                                    "checkpoint_id",
                                    format!("run {run_id} has no checkpoint {ckpt}"),
                                )])
                            })?
                    }
                    None => newest_for_evaluation(db::checkpoints::list(pool, run_id).await?)
                        .ok_or_else(|| {
                            refused(vec![FieldError::new(
                                "run_id",
                                format!("run {run_id} has no checkpoint to evaluate yet"),
                            )])
                        })?,
                };
                // Evaluations need labels: never STL-10's unlabeled split.
                let dataset = DatasetConfig {
                    use_unlabeled: false,
                    ..config.dataset
                };
                Ok((EvalSource::Checkpoint { run_id, checkpoint }, Some(dataset)))
            }
        }
    }

    /// Starts a queued evaluation on a thread of `device_name`.
    pub(super) async fn start_eval(&self, id: i64, device_name: &str) -> anyhow::Result<()> {
        let inner = &self.inner;
        let Some(row) = db::evals::get(&inner.pool, id).await? else {
            return Ok(());
        };
        let spec = EvalSpec::from_stored(row.method(), &row.config)?;
        let encoder = registered_file(&inner.data_dir, &row.encoder).with_context(|| {
            format!(
                "the encoder file {} is no longer in the data directory",
                row.encoder
            )
        })?;
        let device = crate::config::parse_device(device_name)
            .with_context(|| format!("unknown device {device_name:?}"))?
            .resolve()
            .map_err(anyhow::Error::msg)?;
        let stop = StopFlag::new();
        let key = JobKey::Eval(id);
        if !self.reserve(key, device_name, &stop) {
            return Ok(());
        }
        let marked = async {
            let mut conn = inner.pool.acquire().await?;
            db::evals::mark_running(&mut conn, id).await
        }
        .await;
        match marked {
            Ok(true) => {}
            Ok(false) => {
                self.release(key);
                return Ok(());
            }
            Err(e) => {
                self.release(key);
                return Err(e);
            }
        }
        let Some(tx) = self.recorder() else {
            return self.requeue_eval(id).await;
        };
        let job = Job::Eval(Box::new(EvalJob {
            eval_id: id,
            spec,
            encoder,
            encoder_sha256: row.encoder_sha256.clone(),
            data_dir: inner.data_dir.clone(),
            device,
            stop,
            tx,
        }));
        if !self.submit(device_name, job)? {
            return self.requeue_eval(id).await;
        }
        tracing::info!(eval = id, device = device_name, "evaluation started");
        Ok(())
    }

    /// Marked running but never reached a thread (the server began to shut down).
    async fn requeue_eval(&self, id: i64) -> anyhow::Result<()> {
        self.release(JobKey::Eval(id));
        self.change_eval_state(id, &[RunState::Running], RunState::Queued, None)
            .await?;
        Ok(())
    }

    /// A queued evaluation that cannot start (its file or dataset is gone) fails with the reason.
    pub(super) async fn fail_queued_eval(&self, id: i64, message: &str) -> anyhow::Result<()> {
        self.release(JobKey::Eval(id));
        let message = without_data_dir(message, &self.inner.data_dir);
        self.change_eval_state(
            id,
            &[RunState::Queued, RunState::Running],
            RunState::Failed,
            Some(&message),
        )
        .await?;
        Ok(())
    }

    /// Cancels an evaluation: a queued or interrupted one never runs; a running one stops
    /// within a step and ends 'cancelled'.
    pub async fn cancel_eval(&self, id: i64) -> Result<EvalSummary, SchedulerError> {
        for _ in 0..3 {
            let eval = self.eval_summary(id).await?;
            match eval.state {
                RunState::Queued | RunState::Interrupted => {
                    if self
                        .change_eval_state(id, &[eval.state], RunState::Cancelled, None)
                        .await?
                    {
                        tracing::info!(eval = id, "evaluation cancelled before it ran");
                        return self.eval_summary(id).await;
                    }
                }
                RunState::Running => match self.stop_flag(JobKey::Eval(id)) {
                    Some(stop) => {
                        stop.cancel();
                        tracing::info!(eval = id, "cancel requested");
                        return Ok(eval);
                    }
                    // Just finished: its end is being stored.
                    None => tokio::time::sleep(Duration::from_millis(50)).await,
                },
                state => {
                    return Err(SchedulerError::Conflict(format!(
                        "evaluation {id} is {state}: only queued, running or interrupted \
                         evaluations can be cancelled"
                    )))
                }
            }
        }
        Err(SchedulerError::Conflict(format!(
            "evaluation {id} changed state while it was being cancelled; try again"
        )))
    }

    /// Queues an interrupted, cancelled or failed evaluation again; it starts over.
    pub async fn restart_eval(&self, id: i64) -> Result<EvalSummary, SchedulerError> {
        let eval = self.eval_summary(id).await?;
        if !eval.state.can_resume() {
            let why = match eval.state {
                RunState::Completed => "it already completed",
                RunState::Running => "it is running",
                _ => "it is already queued",
            };
            return Err(SchedulerError::Conflict(format!(
                "evaluation {id} cannot be restarted: {why}"
            )));
        }
        if !self
            .change_eval_state(
                id,
                &[RunState::Interrupted, RunState::Cancelled, RunState::Failed],
                RunState::Queued,
                None,
            )
            .await?
        {
            return Err(SchedulerError::Conflict(format!(
                "evaluation {id} changed state meanwhile; try again"
            )));
        }
        tracing::info!(eval = id, "evaluation queued again");
        self.inner.wake.notify_one();
        self.eval_summary(id).await
    }

    /// Deletes an evaluation that is not running.
    pub async fn delete_eval(&self, id: i64) -> Result<(), SchedulerError> {
        let eval = self.eval_summary(id).await?;
        if eval.state == RunState::Running
            || !db::evals::delete_unless_running(&self.inner.pool, id).await?
        {
            return Err(SchedulerError::Conflict(format!(
                "evaluation {id} is running: cancel it first, then delete it"
            )));
        }
        tracing::info!(eval = id, "evaluation deleted");
        Ok(())
    }

    pub async fn eval_summary(&self, id: i64) -> Result<EvalSummary, SchedulerError> {
        db::evals::get(&self.inner.pool, id)
            .await?
            .map(|row| row.summary())
            .ok_or(SchedulerError::NoEval(id))
    }

    async fn change_eval_state(
        &self,
        id: i64,
        from: &[RunState],
        to: RunState,
        error: Option<&str>,
    ) -> anyhow::Result<bool> {
        let mut conn = self.inner.pool.acquire().await?;
        db::evals::transition(&mut conn, id, from, to, error).await
    }
}

/// The request's `settings` as `field` / `dataset.field` overrides.
fn settings_overrides(settings: &serde_json::Map<String, Value>) -> Vec<(String, Value)> {
    let mut flat = Vec::new();
    for (k, v) in settings {
        match (k.as_str(), v) {
            ("dataset", Value::Object(ds)) => flat.extend(
                ds.iter()
                    .map(|(dk, dv)| (format!("dataset.{dk}"), dv.clone())),
            ),
            _ => flat.push((k.clone(), v.clone())),
        }
    }
    flat
}

/// A run's checkpoint an evaluation takes by default: the newest, and of two at the same step the
/// encoder export (the smaller file, holding the same backbone).
fn newest_for_evaluation(mut checkpoints: Vec<CheckpointRow>) -> Option<CheckpointRow> {
    checkpoints.sort_by_key(|c| (c.step, c.kind == "encoder", c.id));
    checkpoints.pop()
}

/// Loads the encoder (on the host) and opens the dataset, as the job will; returns what is known
/// of the encoder and its SHA-256 (computed unless known). Errors come with the request field
/// they are about.
fn check_inputs(
    path: &std::path::Path,
    data_dir: &std::path::Path,
    dataset: &DatasetConfig,
    known_sha256: Option<String>,
) -> Result<(crate::eval::EncoderInfo, String), (&'static str, anyhow::Error)> {
    let encoder = FrozenEncoder::load(path, tch::Device::Cpu).map_err(|e| ("encoder", e))?;
    open_labelled(dataset, data_dir).map_err(|e| ("settings.dataset", e))?;
    let sha256 = match known_sha256 {
        Some(sha) => sha,
        None => sha256_of_file(path).map_err(|e| ("encoder", e))?,
    };
    Ok((encoder.info, sha256))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ckpt(id: i64, kind: &str, step: i64) -> CheckpointRow {
        CheckpointRow {
            id,
            run_id: 1,
            kind: kind.into(),
            path: format!("runs/1/{id}"),
            epoch: step / 10,
            step,
            size_bytes: 1,
            sha256: String::new(),
            created_at: String::new(),
        }
    }

    #[test]
    fn the_default_checkpoint_is_the_newest_and_the_export_at_a_tie() {
        let list = vec![
            ckpt(1, "full", 10),
            ckpt(2, "encoder", 10),
            ckpt(3, "full", 20),
        ];
        assert_eq!(newest_for_evaluation(list).unwrap().id, 3);
        let list = vec![
            ckpt(4, "full", 20),
            ckpt(5, "encoder", 20),
            ckpt(1, "full", 10),
        ];
        assert_eq!(newest_for_evaluation(list).unwrap().id, 5);
        assert!(newest_for_evaluation(Vec::new()).is_none());
    }

    #[test]
    fn settings_flatten_into_overrides() {
        let settings = serde_json::json!({"epochs": 3, "dataset": {"synthetic_train": 100}});
        let flat = settings_overrides(settings.as_object().unwrap());
        assert_eq!(
            flat,
            vec![
                ("epochs".to_string(), Value::from(3)),
                ("dataset.synthetic_train".to_string(), Value::from(100)),
            ]
        );
    }
}
