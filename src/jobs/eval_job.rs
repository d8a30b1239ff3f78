//! An evaluation on a device thread: load the encoder, open the labelled set, run the probe or
//! the kNN, and report its start, epochs, progress and end to the recorder.
//!
//! An evaluation keeps no state between attempts (a probe is short next to the training it
//! measures): one that was interrupted or cancelled starts over when it is queued again.
use super::recorder::{EvalEnd, EvalEvent, RecorderMsg};
use crate::db::evals::{EvalEpoch, FinalScores};
use crate::eval::feature_cache::FeatureCache;
use crate::eval::linear::{ProbeEvent, ProbeObserver, Stopped};
use crate::eval::spec::EvalSpec;
use crate::eval::{open_labelled, FrozenEncoder};
use crate::jobs::paths::without_data_dir;
use crate::train::checkpoint::sha256_of_file;
use crate::train::stop::{StopFlag, StopRequest};
use anyhow::ensure;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tch::Device;
use tokio::sync::mpsc;

/// Where the fast protocol keeps features, under the data directory.
pub const FEATURES_DIR: &str = "features";

/// How often the progress (step, speed) is stored while a probe trains.
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// An evaluation handed to a device thread.
pub struct EvalJob {
    pub eval_id: i64,
    pub spec: EvalSpec,
    /// The encoder file (checked to lie inside the data directory).
    pub encoder: PathBuf,
    /// Its SHA-256 when the evaluation was queued.
    pub encoder_sha256: String,
    /// Relative dataset paths resolve against it.
    pub data_dir: PathBuf,
    pub device: Device,
    pub stop: StopFlag,
    pub tx: mpsc::Sender<RecorderMsg>,
}

/// Runs the evaluation and reports how it ended; a panic inside libtorch becomes a failure.
pub fn run(job: EvalJob) {
    let mut reporter = Reporter {
        eval_id: job.eval_id,
        tx: job.tx.clone(),
        stop: job.stop.clone(),
        first_step: None,
        last_progress: Instant::now(),
    };
    tracing::info!(eval = job.eval_id, device = ?job.device, "evaluation starts");
    let result = catch_unwind(AssertUnwindSafe(|| evaluate(&job, &mut reporter)));
    let stop = job.stop.get();
    // What users read names files relative to the data directory.
    let message = |e: anyhow::Error| without_data_dir(&format!("{e:#}"), &job.data_dir);
    let end = match result {
        Ok(Ok(scores)) => EvalEnd::Completed(scores),
        Ok(Err(e)) if e.downcast_ref::<Stopped>().is_some() => match stop {
            StopRequest::Interrupt => EvalEnd::Interrupted(None),
            _ => EvalEnd::Cancelled,
        },
        // A failure while the process shuts down leaves it restartable.
        Ok(Err(e)) if stop == StopRequest::Interrupt => EvalEnd::Interrupted(Some(message(e))),
        Ok(Err(e)) => EvalEnd::Failed(message(e)),
        Err(panic) => EvalEnd::Failed(format!(
            "the evaluation thread panicked: {}",
            super::worker::panic_message(panic.as_ref())
        )),
    };
    tracing::info!(eval = job.eval_id, end = ?end.state(), "evaluation ended");
    reporter.send(RecorderMsg::EvalFinished {
        eval_id: job.eval_id,
        end,
    });
}

fn evaluate(job: &EvalJob, reporter: &mut Reporter) -> anyhow::Result<FinalScores> {
    // The scores name the file by its hash: evaluate that file or nothing.
    let sha256 = sha256_of_file(&job.encoder)?;
    ensure!(
        sha256 == job.encoder_sha256,
        "{} changed since the evaluation was queued (its SHA-256 is now {sha256}, was {}); \
         queue a new evaluation of it",
        job.encoder.display(),
        job.encoder_sha256
    );
    let encoder = FrozenEncoder::load(&job.encoder, job.device)?;
    let splits = open_labelled(job.spec.dataset(), &job.data_dir)?;
    if let EvalSpec::Knn(_) = job.spec {
        // One pass, no epochs: its progress is the pass itself.
        reporter.send_event(EvalEvent::Started {
            epochs: 1,
            total_steps: 1,
        });
    }
    let cache = FeatureCache {
        dir: job.data_dir.join(FEATURES_DIR),
        encoder_sha256: sha256,
    };
    let scores = job
        .spec
        .run(&encoder, &splits, job.device, Some(&cache), reporter)?;
    Ok(FinalScores {
        top1: scores.top1,
        top5: scores.top5,
        best_top1: scores.best_top1,
        result: scores.result,
    })
}

/// The probe's observer: its start and epochs go to the recorder as they happen, its step at
/// most every `PROGRESS_EVERY`, and it asks the stop flag after every step.
struct Reporter {
    eval_id: i64,
    tx: mpsc::Sender<RecorderMsg>,
    stop: StopFlag,
    /// When and at which step the classifier's training began (for the speed, hence the ETA).
    first_step: Option<(Instant, i64)>,
    last_progress: Instant,
}

impl Reporter {
    /// Evaluations report a few messages per second at most, so waiting for room in the
    /// recorder's channel costs nothing; a closed channel means the process is exiting.
    fn send(&self, msg: RecorderMsg) {
        if self.tx.blocking_send(msg).is_err() {
            tracing::error!(
                eval = self.eval_id,
                "the recorder stopped before the evaluation's events were stored"
            );
        }
    }

    fn send_event(&self, event: EvalEvent) {
        self.send(RecorderMsg::Eval {
            eval_id: self.eval_id,
            event,
        });
    }
}

impl ProbeObserver for Reporter {
    fn on_event(&mut self, event: &ProbeEvent) {
        match event {
            ProbeEvent::Started {
                epochs,
                total_steps,
                ..
            } => self.send_event(EvalEvent::Started {
                epochs: *epochs,
                total_steps: *total_steps,
            }),
            ProbeEvent::Epoch {
                epoch,
                step,
                lr,
                loss,
                top1,
                top5,
            } => self.send_event(EvalEvent::Epoch(EvalEpoch {
                epoch: *epoch,
                step: *step,
                lr: *lr,
                loss: *loss,
                top1: *top1,
                top5: *top5,
            })),
            ProbeEvent::Features { .. } | ProbeEvent::Result(_) => {}
        }
    }

    fn on_step(&mut self, step: i64) {
        let now = Instant::now();
        let (start, start_step) = *self.first_step.get_or_insert((now, step - 1));
        if now.duration_since(self.last_progress) < PROGRESS_EVERY {
            return;
        }
        self.last_progress = now;
        let seconds = now.duration_since(start).as_secs_f64();
        let steps_per_sec = (seconds > 0.0).then(|| (step - start_step) as f64 / seconds);
        self.send_event(EvalEvent::Progress {
            step,
            steps_per_sec,
        });
    }

    fn should_stop(&mut self) -> bool {
        self.stop.is_set()
    }
}
