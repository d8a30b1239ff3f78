//! Training threads: one std::thread per run slot of a device (tch tensors are Send but not Sync,
//! so a run lives on one thread from start to end), and the observer that carries the engine's
//! events to the recorder without ever blocking the training loop.
use super::recorder::{Finished, RecorderMsg};
use crate::train::events::{LogLevel, Observer, RunOutcome, TrainEvent};
use crate::train::stop::StopRequest;
use crate::train::{run_training, TrainRequest};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::thread::JoinHandle;
use tokio::sync::mpsc::{self, error::TrySendError};

/// Events kept on the training thread while the recorder's channel is full. Past this, the oldest
/// metric records are dropped (state, evaluation, checkpoint and log events never are).
const MAX_PENDING: usize = 50_000;

/// The server's observer: pushes into the recorder's bounded channel with `try_send` and keeps
/// what does not fit in a local buffer, retried on the next event.
pub struct ChannelObserver {
    run_id: i64,
    tx: mpsc::Sender<RecorderMsg>,
    pending: VecDeque<RecorderMsg>,
    dropped_metrics: u64,
}

impl ChannelObserver {
    pub fn new(run_id: i64, tx: mpsc::Sender<RecorderMsg>) -> Self {
        ChannelObserver {
            run_id,
            tx,
            pending: VecDeque::new(),
            dropped_metrics: 0,
        }
    }

    /// Moves buffered events into the channel while it has room.
    fn flush_nonblocking(&mut self) {
        while let Some(msg) = self.pending.pop_front() {
            match self.tx.try_send(msg) {
                Ok(()) => {}
                Err(TrySendError::Full(msg)) => {
                    self.pending.push_front(msg);
                    return;
                }
                Err(TrySendError::Closed(_)) => {
                    // The recorder is gone (the process is exiting): nothing can store them.
                    self.pending.clear();
                    return;
                }
            }
        }
    }

    fn drop_oldest_metrics(&mut self) {
        if let Some(pos) = self.pending.iter().position(|m| {
            matches!(
                m,
                RecorderMsg::Train {
                    event: TrainEvent::Metrics(_),
                    ..
                }
            )
        }) {
            self.pending.remove(pos);
            self.dropped_metrics += 1;
        }
    }

    /// After training: hands over everything left, waiting for room (the run is over, nothing is
    /// slowed down), then the run's end.
    pub fn finish(mut self, finished: Finished) {
        if self.dropped_metrics > 0 {
            self.pending.push_back(RecorderMsg::Train {
                run_id: self.run_id,
                event: TrainEvent::Log {
                    level: LogLevel::Warn,
                    message: format!(
                        "{} metric records were dropped because the database could not keep up",
                        self.dropped_metrics
                    ),
                },
            });
        }
        self.pending.push_back(RecorderMsg::Finished {
            run_id: self.run_id,
            finished,
        });
        for msg in self.pending.drain(..) {
            if self.tx.blocking_send(msg).is_err() {
                tracing::error!(
                    run = self.run_id,
                    "the recorder stopped before the end of the run was stored"
                );
                return;
            }
        }
    }
}

impl Observer for ChannelObserver {
    fn on_event(&mut self, event: TrainEvent) {
        self.pending.push_back(RecorderMsg::Train {
            run_id: self.run_id,
            event,
        });
        self.flush_nonblocking();
        if self.pending.len() > MAX_PENDING {
            self.drop_oldest_metrics();
        }
    }
}

/// A run handed to a training thread.
pub struct TrainJob {
    pub run_id: i64,
    pub request: TrainRequest,
    pub observer: ChannelObserver,
}

/// What a device's threads work on: a run's training or an evaluation. Both take a slot of the
/// device, so evaluations queue behind training as another run would.
pub enum Job {
    // Boxed: a job is handed over once, and the variants differ much in size.
    Train(Box<TrainJob>),
    Eval(Box<super::eval_job::EvalJob>),
}

/// Which job a slot or a finished notice is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobKey {
    Run(i64),
    Eval(i64),
}

/// The training threads of one device, all taking jobs from one channel.
pub struct DeviceWorkers {
    tx: Option<crossbeam_channel::Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
}

impl DeviceWorkers {
    /// Starts `slots` threads for `device` (its name, e.g. "cpu" or "cuda:0").
    pub fn start(device: &str, slots: usize) -> std::io::Result<DeviceWorkers> {
        let (tx, rx) = crossbeam_channel::unbounded::<Job>();
        let mut threads = Vec::with_capacity(slots);
        for slot in 0..slots.max(1) {
            let rx = rx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("train-{device}-{slot}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        match job {
                            Job::Train(job) => run_job(*job),
                            Job::Eval(job) => super::eval_job::run(*job),
                        }
                    }
                })?;
            threads.push(handle);
        }
        Ok(DeviceWorkers {
            tx: Some(tx),
            threads,
        })
    }

    /// Hands a job to a free thread (the scheduler only dispatches when one is free); false when
    /// the threads are closing.
    pub fn submit(&self, job: Job) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(job).is_ok())
    }

    /// Lets the threads end after their current job; returns them for joining.
    pub fn close(mut self) -> Vec<JoinHandle<()>> {
        self.tx.take();
        std::mem::take(&mut self.threads)
    }
}

/// Trains one run and reports how it ended. A panic inside libtorch becomes a failed run.
fn run_job(job: TrainJob) {
    let TrainJob {
        run_id,
        request,
        mut observer,
    } = job;
    tracing::info!(run = run_id, device = ?request.device, "training starts");
    let result = catch_unwind(AssertUnwindSafe(|| run_training(&request, &mut observer)));
    let finished = match result {
        Ok(Ok(outcome)) => Finished::Outcome(outcome),
        Ok(Err(e)) => Finished::Error(format!("{e:#}")),
        Err(panic) => Finished::Error(format!(
            "the training thread panicked: {}",
            panic_message(panic.as_ref())
        )),
    };
    // A run stopped by a shutdown stays resumable even when the stop surfaced as an error.
    let finished = match (finished, request.stop.get()) {
        (Finished::Error(message), StopRequest::Interrupt) => {
            Finished::InterruptedWithError(message)
        }
        (f, _) => f,
    };
    match &finished {
        Finished::Outcome(RunOutcome::Completed { step, .. }) => {
            tracing::info!(run = run_id, step, "training completed")
        }
        Finished::Outcome(other) => {
            tracing::info!(run = run_id, outcome = ?other, "training ended")
        }
        Finished::Error(e) | Finished::InterruptedWithError(e) => {
            tracing::warn!(run = run_id, error = %e, "training stopped with an error")
        }
    }
    observer.finish(finished);
}

/// The message a panic carried (a &str or a String).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::events::MetricRecord;

    fn metrics(step: i64) -> TrainEvent {
        TrainEvent::Metrics(MetricRecord {
            step,
            epoch: 0,
            values: [("loss".to_string(), step as f64)].into_iter().collect(),
        })
    }

    fn step_of(msg: &RecorderMsg) -> Option<i64> {
        match msg {
            RecorderMsg::Train {
                event: TrainEvent::Metrics(m),
                ..
            } => Some(m.step),
            _ => None,
        }
    }

    /// Reads everything the observer hands over, on another thread, once it is started.
    fn drain(mut rx: mpsc::Receiver<RecorderMsg>) -> std::thread::JoinHandle<Vec<RecorderMsg>> {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            while let Some(m) = rx.blocking_recv() {
                out.push(m);
            }
            out
        })
    }

    #[test]
    fn a_full_channel_never_blocks_training_and_loses_nothing() {
        let (tx, rx) = mpsc::channel(4);
        let mut observer = ChannelObserver::new(7, tx);
        // Nobody reads yet: a blocking observer would hang here.
        for step in 1..=100 {
            observer.on_event(metrics(step));
        }
        assert_eq!(observer.pending.len(), 96);
        let reader = drain(rx);
        observer.finish(Finished::Outcome(RunOutcome::Completed {
            step: 100,
            final_knn_top1: None,
        }));
        let got = reader.join().unwrap();
        assert_eq!(got.len(), 101);
        let steps: Vec<i64> = got.iter().filter_map(step_of).collect();
        assert_eq!(steps, (1..=100).collect::<Vec<_>>());
        assert!(matches!(
            got.last(),
            Some(RecorderMsg::Finished { run_id: 7, .. })
        ));
    }

    #[test]
    fn past_the_buffer_limit_only_the_oldest_metrics_are_dropped() {
        let (tx, rx) = mpsc::channel(1);
        let mut observer = ChannelObserver::new(1, tx);
        observer.on_event(metrics(0));
        observer.on_event(TrainEvent::Log {
            level: LogLevel::Info,
            message: "kept".into(),
        });
        let extra = 10;
        for step in 1..=(MAX_PENDING as i64 + extra) {
            observer.on_event(metrics(step));
        }
        assert_eq!(observer.pending.len(), MAX_PENDING);
        assert!(observer.dropped_metrics > 0);
        let dropped = observer.dropped_metrics;
        let reader = drain(rx);
        observer.finish(Finished::Error("boom".into()));
        let got = reader.join().unwrap();
        assert!(got.iter().any(|m| matches!(
            m,
            RecorderMsg::Train { event: TrainEvent::Log { message, .. }, .. } if message == "kept"
        )));
        let warning = format!("{dropped} metric records were dropped");
        assert!(got.iter().any(|m| matches!(
            m,
            RecorderMsg::Train { event: TrainEvent::Log { message, .. }, .. } if message.starts_with(&warning)
        )));
        // The newest records are all there.
        let steps: Vec<i64> = got.iter().filter_map(step_of).collect();
        assert_eq!(*steps.last().unwrap(), MAX_PENDING as i64 + extra);
        assert!(matches!(got.last(), Some(RecorderMsg::Finished { .. })));
    }
}
