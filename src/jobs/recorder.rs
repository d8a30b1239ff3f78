//! The recorder: one tokio task that turns the engine's events into SQLite rows and SSE events.
//!
//! Messages are taken in batches (whatever is waiting, up to `MAX_BATCH`) and written in one
//! transaction: metric values, evaluations, checkpoint rows, event rows and the runs row's progress
//! columns. After the commit the events are broadcast. A failed write is logged and retried; it
//! never ends the task.
use super::hub::{state_data, EventHub};
use super::paths;
use super::worker::JobKey;
use crate::db::{self, events::EventRow, runs::RunState};
use crate::train::events::{RunOutcome, TrainEvent};
use serde_json::json;
use sqlx::{SqliteConnection, SqlitePool};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Capacity of the channel from the training threads (they never wait on it).
pub const CHANNEL_CAPACITY: usize = 4096;
/// Messages written per transaction at most.
const MAX_BATCH: usize = 1024;
/// Tries of a whole batch before it is written message by message.
const BATCH_TRIES: u32 = 5;

/// How a training call ended, as the worker thread saw it.
#[derive(Debug, Clone)]
pub enum Finished {
    Outcome(RunOutcome),
    /// `run_training` returned an error or panicked.
    Error(String),
    /// An error while the process was shutting down: the run stays resumable.
    InterruptedWithError(String),
}

#[derive(Debug)]
pub enum RecorderMsg {
    Train {
        run_id: i64,
        event: TrainEvent,
    },
    /// The run's thread is free again; comes after every event of the run.
    Finished {
        run_id: i64,
        finished: Finished,
    },
    Eval {
        eval_id: i64,
        event: EvalEvent,
    },
    /// The evaluation's thread is free again; comes after its other messages.
    EvalFinished {
        eval_id: i64,
        end: EvalEnd,
    },
}

/// What an evaluation reports while it runs.
#[derive(Debug, Clone)]
pub enum EvalEvent {
    /// The encoder and the dataset are open: the shape of the work.
    Started {
        epochs: i64,
        total_steps: i64,
    },
    Progress {
        step: i64,
        steps_per_sec: Option<f64>,
    },
    Epoch(db::evals::EvalEpoch),
}

/// How an evaluation ended.
#[derive(Debug, Clone)]
pub enum EvalEnd {
    Completed(db::evals::FinalScores),
    Failed(String),
    Cancelled,
    /// Stopped by a shutdown (with the error it surfaced as, if any): it can be queued again.
    Interrupted(Option<String>),
}

impl EvalEnd {
    pub fn state(&self) -> RunState {
        match self {
            EvalEnd::Completed(_) => RunState::Completed,
            EvalEnd::Failed(_) => RunState::Failed,
            EvalEnd::Cancelled => RunState::Cancelled,
            EvalEnd::Interrupted(_) => RunState::Interrupted,
        }
    }
}

/// Told when a job's end has been stored (the scheduler frees its slot).
pub type FinishedTx = mpsc::UnboundedSender<JobKey>;

pub struct Recorder {
    pub pool: SqlitePool,
    pub data_dir: PathBuf,
    pub hub: Arc<EventHub>,
    pub finished: FinishedTx,
}

/// What a written batch produced.
#[derive(Default)]
struct Written {
    events: Vec<EventRow>,
    finished: Vec<JobKey>,
}

impl Recorder {
    /// Runs until every sender is dropped and the channel is drained.
    pub async fn run(self, mut rx: mpsc::Receiver<RecorderMsg>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            self.write(&batch).await;
            batch.clear();
        }
        tracing::debug!("recorder stopped");
    }

    async fn write(&self, batch: &[RecorderMsg]) {
        let guard = self.hub.lock().await;
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=BATCH_TRIES {
            match self.write_in_transaction(batch).await {
                Ok(written) => {
                    self.hub.broadcast(written.events);
                    drop(guard);
                    self.report_finished(written.finished);
                    return;
                }
                Err(e) => {
                    tracing::warn!(
                        attempt,
                        messages = batch.len(),
                        "cannot store recorded events, retrying: {e:#}"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        // One bad message must not hold back the others: write them one at a time.
        let mut finished = Vec::new();
        for msg in batch {
            let mut delay = Duration::from_millis(100);
            loop {
                match self.write_in_transaction(std::slice::from_ref(msg)).await {
                    Ok(written) => {
                        self.hub.broadcast(written.events);
                        finished.extend(written.finished);
                        break;
                    }
                    Err(e) if is_permanent(&e) => {
                        tracing::error!("dropping a recorded event that cannot be stored: {e:#}");
                        match msg {
                            RecorderMsg::Finished { run_id, .. } => {
                                finished.push(JobKey::Run(*run_id))
                            }
                            RecorderMsg::EvalFinished { eval_id, .. } => {
                                finished.push(JobKey::Eval(*eval_id))
                            }
                            _ => {}
                        }
                        break;
                    }
                    Err(e) => {
                        tracing::error!("cannot store a recorded event, retrying: {e:#}");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
        drop(guard);
        self.report_finished(finished);
    }

    fn report_finished(&self, ids: Vec<JobKey>) {
        for id in ids {
            let _ = self.finished.send(id);
        }
    }

    async fn write_in_transaction(&self, batch: &[RecorderMsg]) -> anyhow::Result<Written> {
        let mut tx = self.pool.begin().await?;
        let mut written = Written::default();
        // Progress columns are written once per run per batch, from its newest record.
        let mut progress: BTreeMap<i64, db::runs::Progress> = BTreeMap::new();
        for msg in batch {
            match msg {
                RecorderMsg::Train { run_id, event } => {
                    self.write_event(&mut tx, *run_id, event, &mut progress, &mut written)
                        .await?
                }
                RecorderMsg::Finished { run_id, finished } => {
                    if let Some(p) = progress.remove(run_id) {
                        db::runs::set_progress(&mut tx, *run_id, &p).await?;
                    }
                    self.write_finished(&mut tx, *run_id, finished, &mut written)
                        .await?;
                    written.finished.push(JobKey::Run(*run_id));
                }
                RecorderMsg::Eval { eval_id, event } => {
                    write_eval_event(&mut tx, *eval_id, event).await?
                }
                RecorderMsg::EvalFinished { eval_id, end } => {
                    write_eval_end(&mut tx, *eval_id, end).await?;
                    written.finished.push(JobKey::Eval(*eval_id));
                }
            }
        }
        for (run_id, p) in &progress {
            db::runs::set_progress(&mut tx, *run_id, p).await?;
        }
        tx.commit().await?;
        Ok(written)
    }

    async fn write_event(
        &self,
        conn: &mut SqliteConnection,
        run_id: i64,
        event: &TrainEvent,
        progress: &mut BTreeMap<i64, db::runs::Progress>,
        written: &mut Written,
    ) -> anyhow::Result<()> {
        match event {
            TrainEvent::Started {
                device,
                start_step,
                start_epoch,
                steps_per_epoch,
                total_steps,
                train_images,
                parameters,
            } => {
                db::runs::set_started(
                    conn,
                    run_id,
                    *steps_per_epoch,
                    *total_steps,
                    *start_step,
                    *start_epoch,
                )
                .await?;
                let resumed = if *start_step > 0 {
                    format!(", resuming at step {start_step}")
                } else {
                    String::new()
                };
                let message = format!(
                    "training on {device}: {train_images} images, {steps_per_epoch} steps per \
                     epoch, {total_steps} steps in all, {parameters} parameters{resumed}"
                );
                written.events.push(
                    db::events::insert(
                        conn,
                        run_id,
                        "log",
                        &json!({"level": "info", "message": message}),
                    )
                    .await?,
                );
                let mut data = state_data(RunState::Running, None, *start_step);
                data["total_steps"] = json!(total_steps);
                written
                    .events
                    .push(db::events::insert(conn, run_id, "state", &data).await?);
            }
            TrainEvent::Metrics(record) => {
                db::metrics::insert(conn, run_id, record).await?;
                let data =
                    json!({"step": record.step, "epoch": record.epoch, "values": record.values});
                written
                    .events
                    .push(db::events::insert(conn, run_id, "metrics", &data).await?);
                let entry = progress.entry(run_id).or_default();
                entry.step = record.step;
                entry.epoch = record.epoch + 1;
                let value = |name: &str| record.values.get(name).copied().filter(|v| v.is_finite());
                if let Some(loss) = value(crate::train::events::metric::LOSS) {
                    entry.last_loss = Some(loss);
                }
                if let Some(ips) = value(crate::train::events::metric::IMAGES_PER_SEC) {
                    entry.images_per_sec = Some(ips);
                }
            }
            TrainEvent::Evaluation {
                epoch,
                step,
                knn_top1,
                features,
            } => {
                db::evaluations::insert(conn, run_id, *epoch, *step, *knn_top1, features).await?;
                // Epoch 0 is the untrained baseline: the run's best and last kNN are of training.
                if *epoch > 0 {
                    db::runs::set_knn(conn, run_id, *knn_top1).await?;
                }
                let data = json!({"epoch": epoch, "step": step, "knn_top1": knn_top1, "features": features});
                written
                    .events
                    .push(db::events::insert(conn, run_id, "evaluation", &data).await?);
            }
            TrainEvent::CheckpointSaved(info) => {
                let Some(rel) = paths::relative_to(&self.data_dir, &info.path) else {
                    // Never register a file the server would refuse to serve.
                    tracing::error!(
                        run = run_id,
                        path = %info.path.display(),
                        "a checkpoint outside the data directory was not registered"
                    );
                    return Ok(());
                };
                let row = db::checkpoints::insert(
                    conn,
                    run_id,
                    info.kind.name(),
                    &rel,
                    info.epoch,
                    info.step,
                    info.size_bytes as i64,
                    &info.sha256,
                )
                .await?;
                let data = json!({
                    "id": row.id,
                    "kind": row.kind,
                    "epoch": row.epoch,
                    "step": row.step,
                    "size_bytes": row.size_bytes,
                    "sha256": row.sha256,
                    "download_url": row.download_url(),
                });
                written
                    .events
                    .push(db::events::insert(conn, run_id, "checkpoint", &data).await?);
            }
            TrainEvent::Log { level, message } => {
                let data = json!({"level": level, "message": message});
                written
                    .events
                    .push(db::events::insert(conn, run_id, "log", &data).await?);
            }
        }
        Ok(())
    }

    async fn write_finished(
        &self,
        conn: &mut SqliteConnection,
        run_id: i64,
        finished: &Finished,
        written: &mut Written,
    ) -> anyhow::Result<()> {
        let (state, error, step) = match finished {
            Finished::Outcome(RunOutcome::Completed { step, .. }) => {
                (RunState::Completed, None, Some(*step))
            }
            Finished::Outcome(RunOutcome::Cancelled { step }) => {
                (RunState::Cancelled, None, Some(*step))
            }
            Finished::Outcome(RunOutcome::Interrupted { step }) => {
                (RunState::Interrupted, None, Some(*step))
            }
            Finished::Outcome(RunOutcome::Failed { step, reason }) => {
                (RunState::Failed, Some(reason.clone()), Some(*step))
            }
            Finished::Error(message) => (RunState::Failed, Some(message.clone()), None),
            Finished::InterruptedWithError(message) => {
                (RunState::Interrupted, Some(message.clone()), None)
            }
        };
        db::runs::finish(conn, run_id, state, error.as_deref(), step).await?;
        let stored_step = db::runs::step_of(conn, run_id).await?;
        let data = state_data(state, error.as_deref(), stored_step);
        written
            .events
            .push(db::events::insert(conn, run_id, "state", &data).await?);
        Ok(())
    }
}

async fn write_eval_event(
    conn: &mut SqliteConnection,
    eval_id: i64,
    event: &EvalEvent,
) -> anyhow::Result<()> {
    match event {
        EvalEvent::Started {
            epochs,
            total_steps,
        } => db::evals::set_started(conn, eval_id, *epochs, *total_steps).await,
        EvalEvent::Progress {
            step,
            steps_per_sec,
        } => db::evals::set_progress(conn, eval_id, *step, *steps_per_sec).await,
        EvalEvent::Epoch(epoch) => db::evals::insert_epoch(conn, eval_id, epoch).await,
    }
}

async fn write_eval_end(
    conn: &mut SqliteConnection,
    eval_id: i64,
    end: &EvalEnd,
) -> anyhow::Result<()> {
    let (error, scores) = match end {
        EvalEnd::Completed(scores) => (None, Some(scores)),
        EvalEnd::Failed(message) => (Some(message.as_str()), None),
        EvalEnd::Cancelled => (None, None),
        EvalEnd::Interrupted(message) => (message.as_deref(), None),
    };
    db::evals::finish(conn, eval_id, end.state(), error, scores).await
}

/// A constraint violation (the run's row is gone) will fail on every retry.
fn is_permanent(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<sqlx::Error>(),
            Some(sqlx::Error::Database(db)) if db.kind() != sqlx::error::ErrorKind::Other
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Preset, RunConfig};
    use crate::train::events::{LogLevel, MetricRecord};

    fn metrics(step: i64, loss: f64) -> TrainEvent {
        TrainEvent::Metrics(MetricRecord {
            step,
            epoch: (step - 1) / 2,
            values: [
                ("loss".to_string(), loss),
                ("images_per_sec".to_string(), 100.0),
            ]
            .into_iter()
            .collect(),
        })
    }

    #[tokio::test]
    async fn a_batch_with_an_unstorable_event_still_stores_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().canonicalize().unwrap();
        let pool = db::open(&data_dir.join("t.sqlite")).await.unwrap();
        let id = db::runs::insert(&pool, &RunConfig::preset(Preset::Cifar), "cpu")
            .await
            .unwrap();
        let hub = Arc::new(EventHub::new());
        let mut live = hub.subscribe();
        let (finished_tx, mut finished_rx) = mpsc::unbounded_channel();
        let recorder = Recorder {
            pool: pool.clone(),
            data_dir,
            hub,
            finished: finished_tx,
        };
        let (tx, rx) = mpsc::channel(64);
        // Queued before the task starts, so they form one batch.
        for msg in [
            RecorderMsg::Train {
                run_id: id,
                event: metrics(1, 5.0),
            },
            // Run 999 does not exist: its rows violate the foreign key.
            RecorderMsg::Train {
                run_id: 999,
                event: metrics(1, 1.0),
            },
            RecorderMsg::Train {
                run_id: id,
                event: metrics(2, 4.0),
            },
            RecorderMsg::Train {
                run_id: id,
                event: TrainEvent::Log {
                    level: LogLevel::Warn,
                    message: "hello".into(),
                },
            },
            RecorderMsg::Finished {
                run_id: id,
                finished: Finished::Outcome(RunOutcome::Failed {
                    step: 2,
                    reason: "the loss became NaN".into(),
                }),
            },
        ] {
            tx.send(msg).await.unwrap();
        }
        drop(tx);
        recorder.run(rx).await;

        assert_eq!(finished_rx.recv().await, Some(JobKey::Run(id)));
        let series = db::metrics::series(&pool, id, &["loss".into()], 0, 100)
            .await
            .unwrap();
        assert_eq!(series["loss"], vec![(1, 5.0), (2, 4.0)]);
        let run = db::runs::get(&pool, id).await.unwrap().unwrap();
        assert_eq!(run.state, RunState::Failed);
        assert_eq!(run.error.as_deref(), Some("the loss became NaN"));
        assert_eq!(run.step, 2);
        assert_eq!(run.epoch, 1);
        assert_eq!(run.last_loss, Some(4.0));
        assert_eq!(run.images_per_sec, Some(100.0));
        let events = db::events::after(&pool, id, 0, 100).await.unwrap();
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, vec!["metrics", "metrics", "log", "state"]);
        // Broadcast in id order, after being stored.
        let mut broadcast = Vec::new();
        while let Ok(e) = live.try_recv() {
            broadcast.push(e.id);
        }
        assert_eq!(broadcast, events.iter().map(|e| e.id).collect::<Vec<_>>());
    }
}
