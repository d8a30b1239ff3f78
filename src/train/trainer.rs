//! The training loop: data → two views → MoCo step → SGD → enqueue, with metrics read from the
//! device only every `metrics_every` steps, kNN monitoring, checkpoints and failure detection.
//!
//! The parts live beside it: the step and its statistics (`step`), the arithmetic (`device`),
//! the kNN monitor (`knn`), what a resume may change (`resume`), the failure watch (`failure`)
//! and checkpoint files (`checkpoint`).
use super::checkpoint::{self, TrainingState};
use super::device::{device_name, precision_label, reduced_precision};
use super::events::{LogLevel, Observer, RunOutcome, TrainEvent};
use super::failure::FailureWatch;
use super::knn::knn_monitor;
use super::optim::FlatOptimizer;
use super::resume::check_resumable;
use super::schedule::Schedule;
use super::stability::StabilityWatch;
use super::step::{read_metrics, train_step, Accumulator, StepParams};
use super::stop::{StopFlag, StopRequest};
use crate::config::{describe_errors, Choice, Framework, Mechanism, RunConfig};
use crate::data::{Augmenter, DatasetSplits, Loader, LoaderOptions};
use crate::dist::DataParallel;
use crate::moco::model::MocoModel;
use crate::torch_ext::ReducedPrecision;
use anyhow::{anyhow, bail, Context};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Kind};

/// Everything one training call needs.
pub struct TrainRequest {
    pub config: RunConfig,
    /// Relative dataset paths are resolved against this directory.
    pub data_dir: PathBuf,
    /// Checkpoints and the encoder export are written here.
    pub run_dir: PathBuf,
    pub device: Device,
    pub stop: StopFlag,
    /// A full checkpoint to continue from.
    pub resume_from: Option<PathBuf>,
    /// Resume even where the config changes the run's trajectory (schedule, loss, augmentation,
    /// seed…): the user asked for it explicitly. Settings that change the state's shape are
    /// refused all the same.
    pub allow_config_change: bool,
    /// This process is one rank of a data-parallel run over this group (None: one process).
    pub parallel: Option<Arc<DataParallel>>,
}

/// Runs (or resumes) a MoCo training run to completion, cancellation, interruption or failure.
pub fn run_training(req: &TrainRequest, observer: &mut dyn Observer) -> anyhow::Result<RunOutcome> {
    let mut run = Session::open(req, observer)?;
    run.warn_about_settings(observer);
    let cfg = &req.config;
    if run.state.step == 0 && cfg.knn_every > 0 && cfg.knn_baseline {
        // The untrained encoder, reported as epoch 0: what the trained ones are measured against.
        let top1 = run.evaluate()?;
        observer.on_event(run.evaluation_event(top1));
    }
    while run.state.epoch < cfg.epochs {
        if let Some(outcome) = run.train_epoch(observer)? {
            return Ok(outcome);
        }
        run.end_epoch(observer)?;
    }
    if run.is_leader() {
        let info = checkpoint::export_encoder_to_run_dir(&req.run_dir, &run.model, &run.state)?;
        observer.on_event(TrainEvent::CheckpointSaved(info));
    }
    Ok(RunOutcome::Completed {
        step: run.state.step,
        final_knn_top1: run.state.last_knn,
    })
}

/// A run in progress: its data, model, optimizer and where it stands.
struct Session<'a> {
    req: &'a TrainRequest,
    cfg: &'a RunConfig,
    splits: DatasetSplits,
    model: MocoModel,
    optimizer: FlatOptimizer,
    state: TrainingState,
    schedule: Schedule,
    augmenter: Augmenter,
    precision: Option<ReducedPrecision>,
    steps_per_epoch: i64,
    loader_threads: usize,
    watch: FailureWatch,
    stability: StabilityWatch,
}

impl<'a> Session<'a> {
    /// Opens the data, builds the model and optimizer (restoring them from the checkpoint to
    /// resume from) and reports the start.
    fn open(req: &'a TrainRequest, observer: &mut dyn Observer) -> anyhow::Result<Session<'a>> {
        let cfg = &req.config;
        cfg.validate()
            .map_err(|errors| anyhow!("invalid configuration:\n{}", describe_errors(&errors)))?;
        if let Some(parallel) = &req.parallel {
            crate::dist::check_config(cfg, parallel.world())
                .map_err(|errors| anyhow!("{}", describe_errors(&errors)))?;
        }
        let device = req.device;
        let splits = crate::data::open_splits(&cfg.dataset, &req.data_dir)
            .with_context(|| format!("cannot open the dataset {}", cfg.dataset.label()))?;
        let train_len = splits.train.len();
        let batch = cfg.batch_size as usize;
        let steps_per_epoch = (train_len / batch) as i64;
        if steps_per_epoch == 0 {
            bail!(
                "the dataset has {train_len} training images, fewer than one batch of {batch}: \
                 lower batch_size"
            );
        }
        if let Some(message) = cfg.memory_bank_error(train_len) {
            bail!("queue_size: {message}");
        }
        if device.is_cuda() {
            // Every step has the same shapes: let cuDNN pick the fastest algorithms once.
            tch::Cuda::cudnn_set_benchmark(true);
        }
        let precision = reduced_precision(cfg.precision, device)?;
        let (mean, std) = cfg.normalization.resolve((splits.mean, splits.std));
        let mut model = MocoModel::seeded(cfg, device, cfg.seed);
        model.attach_memory_bank(cfg, train_len as i64, cfg.seed);
        let mut optimizer = FlatOptimizer::for_run(&model.query.store, cfg);
        if precision == Some(ReducedPrecision::Fp16) {
            optimizer = optimizer.with_loss_scaling();
        }
        let mut state = TrainingState {
            epoch: 0,
            batch_in_epoch: 0,
            step: 0,
            queue_ptr: 0,
            best_knn: None,
            last_knn: None,
            mean,
            std,
            config: cfg.clone(),
        };
        if let Some(path) = &req.resume_from {
            // Across ranks only rank 0 reads the file and sends it: on several machines the
            // checkpoint need only be on rank 0's.
            let ckpt = match &req.parallel {
                Some(parallel) => {
                    let bytes = parallel
                        .leader_bytes(|| checkpoint::read_file(path))
                        .with_context(|| format!("cannot resume from {}", path.display()))?;
                    checkpoint::load_full_bytes(&bytes, path, device)?
                }
                None => checkpoint::load_full(path, device)?,
            };
            check_resumable(&ckpt.state.config, cfg, req.allow_config_change)?;
            ckpt.restore(&mut model)?;
            optimizer.load_state(&ckpt.tensors)?;
            state = TrainingState {
                config: cfg.clone(),
                ..ckpt.state
            };
            observer.on_event(TrainEvent::Log {
                level: LogLevel::Info,
                message: format!(
                    "resumed from {} at epoch {}, step {}",
                    path.file_name().unwrap_or_default().to_string_lossy(),
                    state.epoch,
                    state.step
                ),
            });
        }
        if let Some(parallel) = &req.parallel {
            // As DDP's constructor: every rank starts from rank 0's state (the seeded
            // initialisation already agrees; this makes it a guarantee).
            let mut tensors = vec![
                model.query.store.flat(),
                model.key.store.flat(),
                &model.queue.keys,
                &optimizer.buffer,
            ];
            tensors.extend(model.query.store.buffers.iter().map(|(_, t)| t));
            tensors.extend(model.key.store.buffers.iter().map(|(_, t)| t));
            parallel
                .broadcast_from_leader(&tensors)
                .context("cannot share rank 0's model with the other ranks")?;
            model
                .set_parallel(parallel.clone(), cfg.bucket_cap_mb)
                .context("cannot hook the gradient all-reduce")?;
            let buckets = model.gradient_reducer().map_or(0, |r| r.buckets());
            observer.on_event(TrainEvent::Log {
                level: LogLevel::Info,
                message: format!(
                    "gradients all-reduced over {} ranks in {buckets} bucket{} of up to {} MiB, \
                     started during backward",
                    parallel.world(),
                    if buckets == 1 { "" } else { "s" },
                    cfg.bucket_cap_mb
                ),
            });
        }
        // A resumed run keeps the normalisation it was trained with.
        let augmenter = Augmenter::for_run(cfg, state.mean, state.std);
        observer.on_event(TrainEvent::Started {
            device: device_name(device),
            start_step: state.step,
            start_epoch: state.epoch,
            steps_per_epoch,
            total_steps: steps_per_epoch * cfg.epochs,
            train_images: train_len,
            parameters: model.query.store.num_parameters(),
        });
        let loader_threads = crate::data::loader::resolve_threads(cfg.loader_threads);
        Ok(Session {
            req,
            cfg,
            splits,
            model,
            optimizer,
            state,
            schedule: Schedule::new(cfg, steps_per_epoch),
            augmenter,
            precision,
            steps_per_epoch,
            loader_threads,
            watch: FailureWatch::default(),
            stability: StabilityWatch::default(),
        })
    }

    /// The arithmetic in the log, and settings that will train badly or slowly as warnings.
    fn warn_about_settings(&self, observer: &mut dyn Observer) {
        let (cfg, device) = (self.cfg, self.req.device);
        observer.on_event(TrainEvent::Log {
            level: LogLevel::Info,
            message: format!(
                "computing in {}, {} activations",
                precision_label(self.precision),
                if cfg.memory_format.channels_last_on(device) {
                    "channels_last"
                } else {
                    "contiguous"
                }
            ),
        });
        if self.precision == Some(ReducedPrecision::Fp16) && !device.is_cuda() {
            observer.on_event(TrainEvent::Log {
                level: LogLevel::Warn,
                message: "precision fp16 on the CPU: most CPUs have no fp16 arithmetic, so it is \
                          emulated and many times slower than fp32; use fp32 or bf16 there"
                    .into(),
            });
        }
        let train_len = self.splits.train.len();
        if cfg.framework == Framework::V3 {
            observer.on_event(TrainEvent::Log {
                level: LogLevel::Info,
                message: format!(
                    "the v3 framework contrasts each view with the other view's {} keys of the \
                     batch: queue_size ({}) is not used",
                    cfg.batch_size, cfg.queue_size
                ),
            });
        } else if cfg.mechanism != Mechanism::Moco {
            let negatives = match cfg.mechanism {
                Mechanism::EndToEnd => format!(
                    "the other {} keys of the batch are the negatives, queue_size ({}) is not used",
                    cfg.batch_size - 1,
                    cfg.queue_size
                ),
                _ => format!(
                    "{} negatives are drawn from the bank of {train_len} features each step",
                    cfg.queue_size
                ),
            };
            observer.on_event(TrainEvent::Log {
                level: LogLevel::Info,
                message: format!(
                    "the {} mechanism has no momentum encoder, so momentum ({}) is not used; {negatives}",
                    cfg.mechanism, cfg.momentum
                ),
            });
        } else if cfg.queue_size as usize * 4 > train_len {
            observer.on_event(TrainEvent::Log {
                level: LogLevel::Warn,
                message: format!(
                    "queue_size {} is more than a quarter of the {train_len} training images: \
                     the queue soon holds earlier keys of the very images it is contrasting, as \
                     negatives, which stalls learning. Keep K well below the dataset size (the \
                     CIFAR preset uses 4096 keys for 50000 images).",
                    cfg.queue_size
                ),
            });
        }
    }

    /// Whether this process writes checkpoints and reports: the only process, or rank 0.
    fn is_leader(&self) -> bool {
        self.req.parallel.as_ref().is_none_or(|p| p.is_leader())
    }

    /// kNN top-1 of the current query encoder. With several ranks, rank 0 measures it and the
    /// others receive its figure (their encoders are the same).
    fn evaluate(&self) -> anyhow::Result<f64> {
        let top1 = if self.is_leader() {
            knn_monitor(
                &self.model,
                &self.splits,
                &self.augmenter,
                self.cfg,
                self.req.device,
                self.loader_threads,
                self.precision,
            )?
        } else {
            0.0
        };
        match &self.req.parallel {
            Some(parallel) => parallel.leader_value(top1),
            None => Ok(top1),
        }
    }

    fn evaluation_event(&self, knn_top1: f64) -> TrainEvent {
        TrainEvent::Evaluation {
            epoch: self.state.epoch,
            step: self.state.step,
            knn_top1,
            features: self.cfg.knn_features.name().into(),
        }
    }

    /// The rest of the current epoch, step by step. Some(outcome) when the run stopped (a
    /// cancel, an interrupt, or a failure the watch found).
    fn train_epoch(&mut self, observer: &mut dyn Observer) -> anyhow::Result<Option<RunOutcome>> {
        let (req, cfg, device) = (self.req, self.cfg, self.req.device);
        let mut loader = Loader::new(
            self.splits.train.clone(),
            LoaderOptions {
                batch_size: cfg.batch_size as usize,
                shuffle: true,
                drop_last: true,
                seed: cfg.seed,
                epoch: self.state.epoch as u64,
                start_batch: self.state.batch_in_epoch as usize,
                prefetch: cfg.prefetch,
                threads: self.loader_threads,
                device,
                shard: req
                    .parallel
                    .as_ref()
                    .map_or((0, 1), |p| (p.rank(), p.world())),
            },
        );
        let mut acc = new_interval(req);
        while self.state.batch_in_epoch < self.steps_per_epoch {
            let stop = match &req.parallel {
                // All ranks stop at the same step, whichever saw the request first.
                Some(parallel) => parallel.agree_on_stop(req.stop.get())?,
                None => req.stop.get(),
            };
            match stop {
                StopRequest::None => {}
                stop => {
                    drop(loader);
                    return self.stop(stop, observer).map(Some);
                }
            }
            let wait_start = Instant::now();
            let batch = loader
                .next()
                .context("the loader ended before the epoch did")?
                .context("cannot load a batch")?;
            acc.data_wait += wait_start.elapsed();

            let state = &mut self.state;
            let lr = self.schedule.lr(state.step);
            let m = self.schedule.momentum(state.step);
            let out = train_step(
                &mut self.model,
                &mut self.optimizer,
                &self.augmenter,
                &batch.images,
                &batch.indices,
                StepParams {
                    seed: cfg.seed,
                    step: state.step,
                    lr,
                    momentum: m,
                    precision: self.precision,
                },
            )?;
            acc.add_gradient(&self.model);
            {
                let _guard = tch::no_grad_guard();
                let terms = out.terms.len() as f64;
                acc.loss += out.loss.detach();
                for t in &out.terms {
                    acc.top1 += t.top1() / terms;
                    acc.pos += t.l_pos.mean(Kind::Float) / terms;
                    acc.neg += t.l_neg.mean(Kind::Float) / terms;
                    acc.neg_max = acc.neg_max.maximum(&t.l_neg.max());
                }
            }
            acc.steps += 1;
            acc.images += batch.labels.size()[0];
            state.step += 1;
            state.batch_in_epoch += 1;
            state.queue_ptr = self.model.queue.ptr;

            let epoch_end = state.batch_in_epoch == self.steps_per_epoch;
            if state.step % cfg.metrics_every == 0 || epoch_end {
                let record = read_metrics(&self.model, &self.optimizer, &mut acc, state, lr, m)?;
                let values = record.values.clone();
                observer.on_event(TrainEvent::Metrics(record));
                acc = new_interval(req);
                for warning in self.stability.check(&values, cfg, state.step) {
                    observer.on_event(TrainEvent::Log {
                        level: LogLevel::Warn,
                        message: warning,
                    });
                }
                if let Some(reason) = self.watch.check(&values, cfg, state.step) {
                    observer.on_event(TrainEvent::Log {
                        level: LogLevel::Error,
                        message: reason.clone(),
                    });
                    return Ok(Some(RunOutcome::Failed {
                        step: state.step,
                        reason,
                    }));
                }
            }
        }
        Ok(None)
    }

    /// After an epoch: the kNN monitor and the checkpoint, when they are due.
    fn end_epoch(&mut self, observer: &mut dyn Observer) -> anyhow::Result<()> {
        let cfg = self.cfg;
        self.state.epoch += 1;
        self.state.batch_in_epoch = 0;
        let last_epoch = self.state.epoch == cfg.epochs;
        if cfg.knn_every > 0 && (self.state.epoch % cfg.knn_every == 0 || last_epoch) {
            let top1 = self.evaluate()?;
            self.state.last_knn = Some(top1);
            self.state.best_knn = Some(self.state.best_knn.map_or(top1, |b| b.max(top1)));
            observer.on_event(self.evaluation_event(top1));
        }
        let periodic = cfg.checkpoint_every > 0 && self.state.epoch % cfg.checkpoint_every == 0;
        if periodic || last_epoch {
            self.save_full(observer)?;
        }
        Ok(())
    }

    fn save_full(&self, observer: &mut dyn Observer) -> anyhow::Result<()> {
        if !self.is_leader() {
            return Ok(());
        }
        let info = checkpoint::save_full(
            &checkpoint::full_checkpoint_path(&self.req.run_dir, &self.state),
            &self.model,
            &self.optimizer,
            &self.state,
        )?;
        observer.on_event(TrainEvent::CheckpointSaved(info));
        Ok(())
    }

    /// Saves a full checkpoint and reports how the run stopped.
    fn stop(&self, stop: StopRequest, observer: &mut dyn Observer) -> anyhow::Result<RunOutcome> {
        self.save_full(observer)?;
        Ok(match stop {
            StopRequest::Interrupt => RunOutcome::Interrupted {
                step: self.state.step,
            },
            _ => RunOutcome::Cancelled {
                step: self.state.step,
            },
        })
    }
}

/// A new metrics interval: its accumulator, with the time in collectives counted from now (the
/// waits before it, while rank 0 evaluated or the ranks joined, belong to no interval).
fn new_interval(req: &TrainRequest) -> Accumulator {
    if let Some(parallel) = &req.parallel {
        let _ = parallel.take_comm_time();
    }
    Accumulator::new(req.device)
}
