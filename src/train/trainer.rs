//! The training loop: data → two views → MoCo step → SGD → enqueue, with metrics read from the
//! device only every `metrics_every` steps, kNN monitoring, checkpoints and failure detection.
use super::checkpoint::{self, EncoderMetadata, TrainingState};
use super::events::{metric, LogLevel, MetricRecord, Observer, RunOutcome, TrainEvent};
use super::knn::weighted_knn_top1;
use super::optim::FlatSgd;
use super::schedule::Schedule;
use super::stop::{StopFlag, StopRequest};
use crate::config::{describe_errors, KnnFeatures, Precision, RunConfig};
use crate::data::{Augmenter, Dataset, DatasetSplits, Loader, LoaderOptions};
use crate::moco::model::{scalar_zero, MocoModel};
use crate::torch_ext::{self, AutocastGuard, ReducedPrecision};
use anyhow::{anyhow, bail, Context};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

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
}

/// Loss and logit statistics summed on the device between two metric reads.
struct Accumulator {
    loss: Tensor,
    top1: Tensor,
    pos: Tensor,
    neg: Tensor,
    neg_max: Tensor,
    steps: i64,
    images: i64,
    data_wait: Duration,
    since: Instant,
}

impl Accumulator {
    fn new(device: Device) -> Self {
        Accumulator {
            loss: scalar_zero(device),
            top1: scalar_zero(device),
            pos: scalar_zero(device),
            neg: scalar_zero(device),
            neg_max: scalar_zero(device) - f64::INFINITY,
            steps: 0,
            images: 0,
            data_wait: Duration::ZERO,
            since: Instant::now(),
        }
    }
}

/// Runs (or resumes) a MoCo training run to completion, cancellation, interruption or failure.
pub fn run_training(req: &TrainRequest, observer: &mut dyn Observer) -> anyhow::Result<RunOutcome> {
    let cfg = &req.config;
    cfg.validate()
        .map_err(|errors| anyhow!("invalid configuration:\n{}", describe_errors(&errors)))?;
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
    let total_steps = steps_per_epoch * cfg.epochs;

    if device.is_cuda() {
        // Every step has the same shapes: let cuDNN pick the fastest algorithms once.
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let precision = reduced_precision(cfg.precision, device)?;
    let (mean, std) = cfg.normalization.resolve((splits.mean, splits.std));
    let mut model = MocoModel::seeded(cfg, device, cfg.seed);
    let mut optimizer = FlatSgd::new(
        &model.query.store,
        cfg.sgd_momentum,
        cfg.weight_decay,
        cfg.wd_exclude_bn_bias,
    );
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
        let ckpt = checkpoint::load_full(path, device)?;
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

    let schedule = Schedule::new(cfg, steps_per_epoch);
    // A resumed run keeps the normalisation it was trained with.
    let augmenter = Augmenter::new(cfg.augmentation, cfg.image_size, state.mean, state.std);
    observer.on_event(TrainEvent::Started {
        device: device_name(device),
        start_step: state.step,
        start_epoch: state.epoch,
        steps_per_epoch,
        total_steps,
        train_images: train_len,
        parameters: model.query.store.num_parameters(),
    });
    observer.on_event(TrainEvent::Log {
        level: LogLevel::Info,
        message: format!(
            "computing in {}, {} activations",
            precision_label(precision),
            if cfg.memory_format.channels_last_on(device) {
                "channels_last"
            } else {
                "contiguous"
            }
        ),
    });

    if precision == Some(ReducedPrecision::Fp16) && !device.is_cuda() {
        observer.on_event(TrainEvent::Log {
            level: LogLevel::Warn,
            message: "precision fp16 on the CPU: most CPUs have no fp16 arithmetic, so it is \
                      emulated and many times slower than fp32; use fp32 or bf16 there"
                .into(),
        });
    }
    if cfg.queue_size as usize * 4 > train_len {
        observer.on_event(TrainEvent::Log {
            level: LogLevel::Warn,
            message: format!(
                "queue_size {} is more than a quarter of the {train_len} training images: the \
                 queue soon holds earlier keys of the very images it is contrasting, as \
                 negatives, which stalls learning. Keep K well below the dataset size (the CIFAR \
                 preset uses 4096 keys for 50000 images).",
                cfg.queue_size
            ),
        });
    }
    let threads = if cfg.loader_threads == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        cfg.loader_threads
    };
    let evaluate = |model: &MocoModel| {
        knn_monitor(model, &splits, &augmenter, cfg, device, threads, precision)
    };
    if state.step == 0 && cfg.knn_every > 0 && cfg.knn_baseline {
        // The untrained encoder, reported as epoch 0: what the trained ones are measured against.
        let top1 = evaluate(&model)?;
        observer.on_event(evaluation_event(cfg, &state, top1));
    }
    let mut acc = Accumulator::new(device);
    let mut watch = FailureWatch::default();
    while state.epoch < cfg.epochs {
        let loader = Loader::new(
            splits.train.clone(),
            LoaderOptions {
                batch_size: batch,
                shuffle: true,
                drop_last: true,
                seed: cfg.seed,
                epoch: state.epoch as u64,
                start_batch: state.batch_in_epoch as usize,
                prefetch: cfg.prefetch,
                threads,
                device,
            },
        );
        let mut loader = loader;
        while state.batch_in_epoch < steps_per_epoch {
            match req.stop.get() {
                StopRequest::None => {}
                stop => {
                    drop(loader);
                    return stop_run(req, &model, &optimizer, &state, stop, observer);
                }
            }
            let wait_start = Instant::now();
            let batch = loader
                .next()
                .context("the loader ended before the epoch did")?
                .context("cannot load a batch")?;
            acc.data_wait += wait_start.elapsed();

            let lr = schedule.lr(state.step);
            let m = schedule.momentum(state.step);
            let out = train_step(
                &mut model,
                &mut optimizer,
                &augmenter,
                &batch.images,
                StepParams {
                    seed: cfg.seed,
                    step: state.step,
                    lr,
                    momentum: m,
                    precision,
                },
            )?;

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
            state.queue_ptr = model.queue.ptr;

            let epoch_end = state.batch_in_epoch == steps_per_epoch;
            if state.step % cfg.metrics_every == 0 || epoch_end {
                let record = read_metrics(&model, &optimizer, &mut acc, &state, lr, m);
                let values = record.values.clone();
                observer.on_event(TrainEvent::Metrics(record));
                acc = Accumulator::new(device);
                if let Some(reason) = watch.check(&values, cfg, state.step) {
                    observer.on_event(TrainEvent::Log {
                        level: LogLevel::Error,
                        message: reason.clone(),
                    });
                    return Ok(RunOutcome::Failed {
                        step: state.step,
                        reason,
                    });
                }
            }
        }
        drop(loader);
        state.epoch += 1;
        state.batch_in_epoch = 0;
        let last_epoch = state.epoch == cfg.epochs;

        if cfg.knn_every > 0 && (state.epoch % cfg.knn_every == 0 || last_epoch) {
            let top1 = evaluate(&model)?;
            state.last_knn = Some(top1);
            state.best_knn = Some(state.best_knn.map_or(top1, |b| b.max(top1)));
            observer.on_event(evaluation_event(cfg, &state, top1));
        }
        let periodic = cfg.checkpoint_every > 0 && state.epoch % cfg.checkpoint_every == 0;
        if periodic || last_epoch {
            let info = checkpoint::save_full(
                &full_checkpoint_path(&req.run_dir, &state),
                &model,
                &optimizer,
                &state,
            )?;
            observer.on_event(TrainEvent::CheckpointSaved(info));
        }
    }
    let info = export_encoder(&req.run_dir, &model, &state)?;
    observer.on_event(TrainEvent::CheckpointSaved(info));
    Ok(RunOutcome::Completed {
        step: state.step,
        final_knn_top1: state.last_knn,
    })
}

/// What one training step needs besides the model, the optimizer and the batch.
pub struct StepParams {
    pub seed: u64,
    /// The global step about to be taken (0-based): it picks the step's random stream.
    pub step: i64,
    pub lr: f64,
    pub momentum: f64,
    pub precision: Option<ReducedPrecision>,
}

/// One MoCo training step on a batch of uint8 images: the two views, the forward passes and the
/// momentum update (under the run's autocast), backward, the optimizer step, and the new keys
/// enqueued. Returns the step's output for the metrics.
pub fn train_step(
    model: &mut MocoModel,
    optimizer: &mut FlatSgd,
    augmenter: &Augmenter,
    images: &Tensor,
    params: StepParams,
) -> anyhow::Result<crate::moco::model::StepOutput> {
    let mut rng = crate::rng::stream(params.seed, crate::rng::Purpose::Step, params.step as u64);
    let (x1, x2) = augmenter.two_views(images, &mut rng);
    let out = {
        let _autocast = autocast(images.device(), params.precision)?;
        model.forward_step(&x1, &x2, params.momentum, &mut rng)
    };
    model.query.store.zero_grad();
    optimizer.backward(&out.loss);
    optimizer.step(&model.query.store, params.lr);
    model.queue.enqueue(&out.keys, params.step + 1);
    Ok(out)
}

fn evaluation_event(cfg: &RunConfig, state: &TrainingState, knn_top1: f64) -> TrainEvent {
    TrainEvent::Evaluation {
        epoch: state.epoch,
        step: state.step,
        knn_top1,
        features: match cfg.knn_features {
            KnnFeatures::Backbone => "backbone".into(),
            KnnFeatures::Head => "head".into(),
        },
    }
}

/// Saves a full checkpoint (and the encoder so far) and reports how the run stopped.
fn stop_run(
    req: &TrainRequest,
    model: &MocoModel,
    optimizer: &FlatSgd,
    state: &TrainingState,
    stop: StopRequest,
    observer: &mut dyn Observer,
) -> anyhow::Result<RunOutcome> {
    let info = checkpoint::save_full(
        &full_checkpoint_path(&req.run_dir, state),
        model,
        optimizer,
        state,
    )?;
    observer.on_event(TrainEvent::CheckpointSaved(info));
    Ok(match stop {
        StopRequest::Interrupt => RunOutcome::Interrupted { step: state.step },
        _ => RunOutcome::Cancelled { step: state.step },
    })
}

fn full_checkpoint_path(run_dir: &Path, state: &TrainingState) -> PathBuf {
    run_dir.join(format!(
        "checkpoint-epoch{:04}-step{:08}.ckpt.safetensors",
        state.epoch, state.step
    ))
}

/// Writes `encoder-epochNNNN.safetensors` for the query backbone in `run_dir`.
pub fn export_encoder(
    run_dir: &Path,
    model: &MocoModel,
    state: &TrainingState,
) -> anyhow::Result<super::events::CheckpointInfo> {
    checkpoint::export_encoder(
        &run_dir.join(format!("encoder-epoch{:04}.safetensors", state.epoch)),
        model,
        &encoder_metadata(state),
    )
}

fn encoder_metadata(state: &TrainingState) -> EncoderMetadata {
    let cfg = &state.config;
    EncoderMetadata {
        arch: cfg.arch.name().into(),
        stem: match cfg.stem {
            crate::config::Stem::Imagenet => "imagenet".into(),
            crate::config::Stem::Cifar => "cifar".into(),
        },
        width: cfg.width,
        feature_dim: cfg.feature_dim(),
        dim: cfg.dim,
        image_size: cfg.image_size,
        mean: state.mean,
        std: state.std,
        preset: cfg.preset.name().into(),
        epoch: state.epoch,
        step: state.step,
    }
}

/// Settings that give the saved state its shape and meaning: a resume with any other value is
/// refused.
const STATE_SHAPE_FIELDS: &[&str] = &[
    "arch",
    "stem",
    "width",
    "head",
    "dim",
    "queue_size",
    "batch_size",
    "symmetric",
    "dataset",
];

/// Settings that change where the run goes from the saved state: a resume with another value
/// would not continue the run that was started, so it is refused unless the user asks for it.
const TRAJECTORY_FIELDS: &[&str] = &[
    "epochs",
    "base_lr",
    "lr_base_batch",
    "lr_schedule",
    "lr_update",
    "lr_first_epoch",
    "lr_milestones",
    "lr_gamma",
    "warmup_epochs",
    "sgd_momentum",
    "weight_decay",
    "wd_exclude_bn_bias",
    "temperature",
    "momentum",
    "momentum_schedule",
    "shuffle_bn_splits",
    "image_size",
    "augmentation",
    "normalization",
    "seed",
];

/// A resume must continue the same model and queue, and, unless `allow_change`, the same
/// trajectory. Device, precision, monitoring and checkpoint settings may always change.
fn check_resumable(saved: &RunConfig, now: &RunConfig, allow_change: bool) -> anyhow::Result<()> {
    let saved_json = serde_json::to_value(saved)?;
    let now_json = serde_json::to_value(now)?;
    let changed = |fields: &[&'static str]| -> Vec<String> {
        fields
            .iter()
            .filter(|f| saved_json.get(**f) != now_json.get(**f))
            .map(|f| format!("{f} ({} → {})", saved_json[*f], now_json[*f]))
            .collect()
    };
    let mut shape = changed(STATE_SHAPE_FIELDS);
    if saved.head_hidden_dim() != now.head_hidden_dim() {
        shape.push(format!(
            "head_hidden ({} → {})",
            saved.head_hidden_dim(),
            now.head_hidden_dim()
        ));
    }
    if !shape.is_empty() {
        bail!(
            "cannot resume: the checkpoint's model, queue or data differ from this config: {}. \
             Resume with the config it was saved with",
            shape.join(", ")
        );
    }
    let trajectory = changed(TRAJECTORY_FIELDS);
    if !trajectory.is_empty() && !allow_change {
        bail!(
            "cannot resume: this config changes the run's trajectory: {}. Resume with the \
             config the checkpoint was saved with, or pass --allow-config-change to continue \
             with the new values",
            trajectory.join(", ")
        );
    }
    Ok(())
}

/// What autocast computes in for `precision` on `device` (None = plain fp32).
pub fn reduced_precision(
    precision: Precision,
    device: Device,
) -> anyhow::Result<Option<ReducedPrecision>> {
    let bf16_native = torch_ext::cuda_bf16_supported(device);
    Ok(match precision {
        Precision::Fp32 => None,
        Precision::Auto if !device.is_cuda() => None,
        Precision::Auto if bf16_native => Some(ReducedPrecision::Bf16),
        Precision::Auto | Precision::Fp16 => Some(ReducedPrecision::Fp16),
        Precision::Bf16 if device.is_cuda() && !bf16_native => bail!(
            "precision: {} does not compute in bf16 natively (compute capability below 8.0); \
             use fp16 or auto",
            device_name(device)
        ),
        Precision::Bf16 => Some(ReducedPrecision::Bf16),
    })
}

/// How the log, `doctor` and the bench name a resolved precision.
pub fn precision_label(precision: Option<ReducedPrecision>) -> &'static str {
    match precision {
        None => "fp32",
        Some(ReducedPrecision::Bf16) => "bf16 autocast",
        Some(ReducedPrecision::Fp16) => "fp16 autocast with loss scaling",
    }
}

/// An autocast region for the forward passes, or nothing in fp32.
fn autocast(
    device: Device,
    precision: Option<ReducedPrecision>,
) -> anyhow::Result<Option<AutocastGuard>> {
    precision.map(|p| AutocastGuard::new(device, p)).transpose()
}

/// "cpu" or "cuda:N": how runs, logs and estimates name a device.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        other => format!("{other:?}"),
    }
}

/// Reads the accumulated statistics and the queue state in one transfer from the device.
fn read_metrics(
    model: &MocoModel,
    optimizer: &FlatSgd,
    acc: &mut Accumulator,
    state: &TrainingState,
    lr: f64,
    m: f64,
) -> MetricRecord {
    let q = model.queue.stats(state.step);
    let steps = acc.steps.max(1) as f64;
    let mut device_values = vec![
        &acc.loss / steps,
        &acc.top1 / steps,
        &acc.pos / steps,
        &acc.neg / steps,
        acc.neg_max.shallow_clone(),
        q.fill,
        q.age_mean,
        q.age_max,
        q.similarity,
        model.drift(),
    ];
    if let Some(scaler) = &optimizer.scaler {
        device_values.push(scaler.scale.shallow_clone());
    }
    let device_values: Vec<Tensor> = device_values
        .iter()
        .map(|t| t.to_kind(Kind::Double))
        .collect();
    let stacked = Tensor::stack(&device_values, 0).to_device(Device::Cpu);
    let v: Vec<f64> = Vec::try_from(&stacked).unwrap_or_default();
    let elapsed = acc.since.elapsed().as_secs_f64().max(1e-9);
    let mut values = BTreeMap::new();
    let names = [
        metric::LOSS,
        metric::TOP1,
        metric::POS_LOGIT,
        metric::NEG_LOGIT,
        metric::NEG_LOGIT_MAX,
        metric::QUEUE_FILL,
        metric::KEY_AGE_MEAN,
        metric::KEY_AGE_MAX,
        metric::QUEUE_SIMILARITY,
        metric::DRIFT,
        metric::LOSS_SCALE,
    ];
    for (name, value) in names.iter().zip(v) {
        values.insert(name.to_string(), value);
    }
    values.insert(metric::LR.into(), lr);
    values.insert(metric::MOMENTUM.into(), m);
    values.insert(metric::QUEUE_PTR.into(), model.queue.ptr as f64);
    values.insert(metric::IMAGES_PER_SEC.into(), acc.images as f64 / elapsed);
    if let Some(memory) = torch_ext::device_memory(model.queue.keys.device()) {
        const MIB: f64 = 1024.0 * 1024.0;
        values.insert(
            metric::DEVICE_MEMORY_MB.into(),
            memory.reserved as f64 / MIB,
        );
        values.insert(
            metric::DEVICE_MEMORY_PEAK_MB.into(),
            memory.peak_allocated as f64 / MIB,
        );
    }
    values.insert(
        metric::DATA_WAIT_MS.into(),
        acc.data_wait.as_secs_f64() * 1000.0 / steps,
    );
    MetricRecord {
        step: state.step,
        epoch: state.epoch,
        values,
    }
}

/// Mean positive minus mean negative logit below which positives no longer stand out.
const COLLAPSED_LOGIT_GAP: f64 = 0.02;

/// Watches the metric records for a run that cannot recover.
#[derive(Default)]
struct FailureWatch {
    /// Consecutive records that looked collapsed.
    collapsed_reads: u32,
}

impl FailureWatch {
    /// Why the run must stop as failed, if it must: a non-finite loss, or a collapsed
    /// representation: the queue, once full of real keys, holds nearly identical vectors and the
    /// positive key no longer stands out from the negatives, in two records in a row.
    fn check(
        &mut self,
        values: &BTreeMap<String, f64>,
        cfg: &RunConfig,
        step: i64,
    ) -> Option<String> {
        let get = |name: &str| values.get(name).copied().unwrap_or(f64::NAN);
        let loss = get(metric::LOSS);
        if !loss.is_finite() {
            return Some(format!(
                "training diverged: the loss became {loss} at step {step}. Lower base_lr (now {}), \
                 or check the data",
                cfg.base_lr
            ));
        }
        let similarity = get(metric::QUEUE_SIMILARITY);
        let gap = get(metric::POS_LOGIT) - get(metric::NEG_LOGIT);
        let collapsed = get(metric::QUEUE_FILL) >= 1.0
            && similarity > cfg.collapse_threshold
            && gap < COLLAPSED_LOGIT_GAP;
        self.collapsed_reads = if collapsed {
            self.collapsed_reads + 1
        } else {
            0
        };
        if self.collapsed_reads < 2 {
            return None;
        }
        let hint = if cfg.momentum < 0.5 {
            format!(
                " With momentum m = {} the key encoder follows the query encoder at once, the keys \
                 in the queue stop being consistent and training cannot converge; MoCo needs m \
                 close to 1 (0.99–0.999).",
                cfg.momentum
            )
        } else {
            " Try a lower base_lr or a higher momentum.".to_string()
        };
        Some(format!(
            "the representation collapsed: at step {step} the keys in the queue have a mean \
             similarity of {similarity:.3} (threshold {}) and the positive key scores only \
             {gap:.3} above the negatives, so every image maps to nearly the same vector.{hint}",
            cfg.collapse_threshold
        ))
    }
}

/// Computes the kNN monitor's features with the run's encoder, transform and arithmetic.
struct FeatureExtractor<'a> {
    model: &'a MocoModel,
    augmenter: &'a Augmenter,
    from_head: bool,
    device: Device,
    threads: usize,
    /// The encoder runs under the training's autocast; the kNN itself stays fp32.
    precision: Option<ReducedPrecision>,
}

impl FeatureExtractor<'_> {
    /// Features of a whole split under the eval transform, with their labels (unlabeled images
    /// dropped), at most `limit` images (0 = all).
    fn split(&self, dataset: &Arc<dyn Dataset>, limit: usize) -> anyhow::Result<(Tensor, Tensor)> {
        let loader = Loader::new(
            dataset.clone(),
            LoaderOptions {
                batch_size: 256,
                shuffle: false,
                drop_last: false,
                seed: 0,
                epoch: 0,
                start_batch: 0,
                prefetch: 2,
                threads: self.threads,
                device: self.device,
            },
        );
        let mut features = Vec::new();
        let mut labels = Vec::new();
        let mut seen = 0;
        for batch in loader {
            let batch = batch?;
            let x = self.augmenter.eval_view(&batch.images);
            let f = {
                let _autocast = autocast(self.device, self.precision)?;
                self.model.features(&x, self.from_head)
            };
            features.push(f.to_kind(Kind::Float));
            labels.push(batch.labels);
            seen += batch.indices.len();
            if limit > 0 && seen >= limit {
                break;
            }
        }
        if features.is_empty() {
            bail!("the split has no images");
        }
        let mut features = Tensor::cat(&features, 0);
        let mut labels = Tensor::cat(&labels, 0);
        if limit > 0 && (labels.size()[0] as usize) > limit {
            features = features.narrow(0, 0, limit as i64);
            labels = labels.narrow(0, 0, limit as i64);
        }
        let keep = labels.ge(0).nonzero().squeeze_dim(1);
        Ok((
            features.index_select(0, &keep),
            labels.index_select(0, &keep),
        ))
    }
}

/// Weighted kNN top-1 of the query encoder: bank = training split, queries = held-out split.
fn knn_monitor(
    model: &MocoModel,
    splits: &DatasetSplits,
    augmenter: &Augmenter,
    cfg: &RunConfig,
    device: Device,
    threads: usize,
    precision: Option<ReducedPrecision>,
) -> anyhow::Result<f64> {
    let extractor = FeatureExtractor {
        model,
        augmenter,
        from_head: cfg.knn_features == KnnFeatures::Head,
        device,
        threads,
        precision,
    };
    let (bank, bank_labels) = extractor.split(&splits.train, cfg.knn_bank_limit)?;
    let (queries, query_labels) = extractor.split(&splits.test, 0)?;
    let classes = splits.train.class_names().len().max(1) as i64;
    Ok(weighted_knn_top1(
        &bank,
        &bank_labels,
        &queries,
        &query_labels,
        classes,
        cfg.knn_k,
        cfg.knn_t,
    ))
}

/// Turns a full checkpoint into an encoder export at `out` (`moco-server export`).
pub fn export_from_checkpoint(
    checkpoint_path: &Path,
    out: &Path,
) -> anyhow::Result<super::events::CheckpointInfo> {
    let ckpt = checkpoint::load_full(checkpoint_path, Device::Cpu)?;
    let mut model = MocoModel::new(&ckpt.state.config, Device::Cpu);
    ckpt.restore(&mut model)?;
    checkpoint::export_encoder(out, &model, &encoder_metadata(&ckpt.state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    fn record(similarity: f64, pos: f64, neg: f64, fill: f64) -> BTreeMap<String, f64> {
        [
            (metric::LOSS, 5.0),
            (metric::QUEUE_SIMILARITY, similarity),
            (metric::POS_LOGIT, pos),
            (metric::NEG_LOGIT, neg),
            (metric::QUEUE_FILL, fill),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    #[test]
    fn two_collapsed_records_in_a_row_fail_the_run_with_the_momentum_named() {
        let cfg = RunConfig {
            momentum: 0.0,
            ..RunConfig::preset(Preset::Demo)
        };
        let collapsed = record(0.97, 0.50, 0.49, 1.0);
        let mut watch = FailureWatch::default();
        assert_eq!(watch.check(&collapsed, &cfg, 10), None);
        // A healthy record in between starts the count again.
        assert_eq!(watch.check(&record(0.70, 0.6, 0.3, 1.0), &cfg, 20), None);
        assert_eq!(watch.check(&collapsed, &cfg, 30), None);
        let reason = watch.check(&collapsed, &cfg, 40).expect("collapsed twice");
        assert!(reason.contains("at step 40"), "{reason}");
        assert!(reason.contains("m = 0"), "{reason}");
        // A queue not yet full of real keys is not judged; a high momentum gets another hint.
        let mut watch = FailureWatch::default();
        let filling = record(0.97, 0.50, 0.49, 0.5);
        assert_eq!(watch.check(&filling, &cfg, 10), None);
        assert_eq!(watch.check(&filling, &cfg, 20), None);
        let steady = RunConfig::preset(Preset::Demo);
        let mut watch = FailureWatch::default();
        watch.check(&collapsed, &steady, 10);
        let reason = watch.check(&collapsed, &steady, 20).unwrap();
        assert!(reason.contains("higher momentum"), "{reason}");
    }

    #[test]
    fn a_non_finite_loss_fails_at_once() {
        let cfg = RunConfig::preset(Preset::Demo);
        let mut values = record(0.5, 0.6, 0.3, 1.0);
        values.insert(metric::LOSS.into(), f64::NAN);
        let reason = FailureWatch::default().check(&values, &cfg, 7).unwrap();
        assert!(
            reason.contains("diverged") && reason.contains("step 7"),
            "{reason}"
        );
    }
}
