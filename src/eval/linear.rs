//! The linear probe: a new fully connected layer on the frozen backbone's pooled features, trained
//! with SGD and scored top-1 / top-5 on the held-out split, as MoCo's `main_lincls.py` does.
//!
//! What the official script does, and this follows: every backbone parameter frozen and the model
//! in eval mode throughout, so BatchNorm normalises with its running statistics and never updates
//! them (checked at the end against a copy, as its `sanity_check` does); `fc` on the raw avgpool
//! output (not normalised), weight N(0, 0.01²), bias 0; cross-entropy; SGD over fc alone with the
//! lr set once per epoch; the training split reshuffled every epoch, its last smaller batch kept.
//! The protocols (`config::probe`) differ in the optimiser's settings and in what the classifier
//! sees: moco and v3 pass a random resized crop + flip of every training image through the
//! backbone at every step; fast passes the un-augmented images through once, keeps their features
//! on the device and trains on those.
//!
//! Held-out images always go through the evaluation transform (`Augmenter::eval_view`: the
//! official Resize(256) + CenterCrop(224) scaled to the crop size; images already at the crop
//! size are used as they are).
use super::feature_cache::{FeatureCache, FeatureKey};
use super::{EncoderInfo, FrozenEncoder};
use crate::config::{describe_errors, LrUpdate, ProbeConfig, Protocol};
use crate::data::augment::ViewSpec;
use crate::data::loader::{epoch_order, resolve_threads};
use crate::data::{DatasetSplits, Loader, LoaderOptions};
use crate::moco::model::with_torch_seed;
use crate::moco::params::ParamStore;
use crate::rng::{stream, Purpose};
use crate::train::device::{device_name, precision_label, reduced_precision};
use crate::train::knn::FeatureExtractor;
use crate::train::optim::FlatOptimizer;
use crate::train::schedule::{LrPlan, Schedule};
use anyhow::{anyhow, bail};
use serde::Serialize;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// `fc`, the classifier the probe trains. Its two tensors live in one flat buffer, so the run's
/// optimiser (`FlatOptimizer`, torch.optim.SGD's update) steps it.
pub struct LinearClassifier {
    pub store: ParamStore,
    pub weight: Tensor,
    pub bias: Tensor,
}

impl LinearClassifier {
    /// main_lincls.py's initialisation: weight N(0, init_std²), drawn from `seed` on the host so
    /// every device starts alike, and bias 0.
    pub fn new(features: i64, classes: i64, init_std: f64, seed: u64, device: Device) -> Self {
        let host = (Kind::Float, Device::Cpu);
        let mut store = ParamStore::new(device);
        let init = with_torch_seed(seed, || Tensor::randn([classes, features], host) * init_std);
        let weight = store.param("fc.weight".into(), init, false);
        let bias = store.param("fc.bias".into(), Tensor::zeros([classes], host), true);
        store.flatten();
        store.attach_flat_grad();
        LinearClassifier {
            store,
            weight,
            bias,
        }
    }

    pub fn logits(&self, features: &Tensor) -> Tensor {
        features.linear(&self.weight, Some(&self.bias))
    }

    /// One SGD step on a batch: mean cross-entropy, backward into fc alone, the update. Returns
    /// the batch's loss, detached, on the device.
    fn step(
        &mut self,
        sgd: &mut FlatOptimizer,
        features: &Tensor,
        labels: &Tensor,
        lr: f64,
    ) -> Tensor {
        let loss = self.logits(features).cross_entropy_for_logits(labels);
        self.store.zero_grad();
        loss.backward();
        sgd.step(&self.store, lr);
        loss.detach()
    }

    /// Top-1 and top-5 accuracy in percent of `features` against `labels` (top-k over every
    /// class when there are fewer than 5).
    pub fn score(&self, features: &Tensor, labels: &Tensor) -> (f64, f64) {
        let _guard = tch::no_grad_guard();
        let n = features.size()[0];
        if n == 0 {
            return (0.0, 0.0);
        }
        let k = self.bias.size()[0].min(5);
        let mut correct = Tensor::zeros([2], (Kind::Int64, features.device()));
        let chunk = 4096;
        let mut start = 0;
        while start < n {
            let len = chunk.min(n - start);
            let (_, predicted) = self
                .logits(&features.narrow(0, start, len))
                .topk(k, 1, true, true);
            let hits = predicted.eq_tensor(&labels.narrow(0, start, len).unsqueeze(1));
            correct += Tensor::stack(
                &[hits.narrow(1, 0, 1).sum(Kind::Int64), hits.sum(Kind::Int64)],
                0,
            );
            start += len;
        }
        let correct = Vec::<i64>::try_from(&correct).unwrap_or_else(|_| vec![0, 0]);
        let percent = |c: i64| 100.0 * c as f64 / n as f64;
        (percent(correct[0]), percent(correct[1]))
    }
}

/// What a probe reports as it goes; `--json` prints each as one line.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProbeEvent {
    Started {
        protocol: Protocol,
        device: String,
        precision: String,
        encoder: EncoderInfo,
        dataset: String,
        train_images: usize,
        test_images: usize,
        classes: i64,
        feature_dim: i64,
        image_size: i64,
        epochs: i64,
        steps_per_epoch: i64,
        total_steps: i64,
    },
    /// The fast protocol's features of both splits are on the device.
    Features {
        train_images: usize,
        test_images: usize,
        seconds: f64,
        /// Read from the feature cache rather than computed.
        cached: bool,
    },
    /// One epoch trained: its mean training loss, and the held-out accuracy when it was scored.
    Epoch {
        epoch: i64,
        step: i64,
        lr: f64,
        loss: f64,
        top1: Option<f64>,
        top5: Option<f64>,
    },
    Result(ProbeResult),
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    pub protocol: Protocol,
    /// Held-out top-1 / top-5 in percent after the last epoch.
    pub top1: f64,
    pub top5: f64,
    /// The best top-1 over the scored epochs (main_lincls.py's best_acc1).
    pub best_top1: f64,
    pub epochs: i64,
    /// The dataset's spec, e.g. "synthetic" or "cifar10:cifar-10-batches-bin".
    pub dataset: String,
    pub train_images: usize,
    pub test_images: usize,
    pub classes: i64,
    pub encoder: String,
    pub encoder_epoch: i64,
    /// The learning rate at the top of the schedule and the batch size it was used with.
    pub lr: f64,
    pub batch_size: i64,
    pub final_loss: f64,
    pub device: String,
    pub precision: String,
    /// The backbone's parameters and BatchNorm statistics were found unchanged at the end.
    pub backbone_unchanged: bool,
    pub seconds: f64,
}

/// Receives a probe's events; `on_step` after every optimiser step, for a progress bar.
pub trait ProbeObserver {
    fn on_event(&mut self, event: &ProbeEvent);
    fn on_step(&mut self, _step: i64) {}
    /// Asked after every step (and after the fast protocol's features): true ends the probe
    /// with [`Stopped`].
    fn should_stop(&mut self) -> bool {
        false
    }
}

/// The probe ended early because its observer asked it to (a cancel, or a server shutting down).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the evaluation was stopped before it finished")]
pub struct Stopped;

/// Everything one probe needs.
pub struct ProbeRequest<'a> {
    pub encoder: &'a FrozenEncoder,
    pub splits: &'a DatasetSplits,
    pub config: &'a ProbeConfig,
    pub device: Device,
    /// Where the fast protocol keeps its features between probes; None: computed every time.
    pub feature_cache: Option<&'a FeatureCache>,
}

/// Trains and scores a linear classifier on `req.encoder`'s frozen features by the protocol of
/// `req.config`, then checks the backbone is exactly as it was loaded.
pub fn run_probe(
    req: &ProbeRequest,
    observer: &mut dyn ProbeObserver,
) -> anyhow::Result<ProbeResult> {
    let (cfg, encoder, splits, device) = (req.config, req.encoder, req.splits, req.device);
    cfg.validate()
        .map_err(|errors| anyhow!("invalid probe settings:\n{}", describe_errors(&errors)))?;
    let start = Instant::now();
    let precision = reduced_precision(cfg.precision, device)?;
    let crop = ViewSpec::crop_and_flip(cfg.crop_min_scale);
    let augmenter = encoder.augmenter(cfg.image_size, crop.clone());
    let extractor = FeatureExtractor {
        backbone: &encoder.backbone,
        head: None,
        unit_length: false,
        augmenter: &augmenter,
        device,
        threads: resolve_threads(cfg.loader_threads),
        precision,
    };
    let classes = splits.train.class_names().len() as i64;
    let (train_images, test_images) = (splits.train.len(), splits.test.len());
    let steps_per_epoch =
        Loader::batches_per_epoch(train_images, cfg.batch_size as usize, false) as i64;
    observer.on_event(&ProbeEvent::Started {
        protocol: cfg.protocol,
        device: device_name(device),
        precision: precision_label(precision).into(),
        encoder: encoder.info.clone(),
        dataset: cfg.dataset.label(),
        train_images,
        test_images,
        classes,
        feature_dim: encoder.feature_dim(),
        image_size: augmenter.out_size(),
        epochs: cfg.epochs,
        steps_per_epoch,
        total_steps: steps_per_epoch * cfg.epochs,
    });
    let snapshot = encoder.snapshot();
    let inputs = match cfg.protocol {
        Protocol::Fast => {
            let t = Instant::now();
            let key = FeatureKey {
                dataset: &cfg.dataset,
                train_images,
                test_images,
                image_size: augmenter.out_size(),
                precision: precision_label(precision),
            };
            let cached = req.feature_cache.and_then(|c| c.load(&key, device));
            let was_cached = cached.is_some();
            let (train, test) = match cached {
                Some(features) => features,
                None => {
                    let features = (
                        extractor.split(&splits.train, 0)?,
                        extractor.split(&splits.test, 0)?,
                    );
                    if let Some(cache) = req.feature_cache {
                        // A cache that cannot be written costs the next probe time, not this one.
                        if let Err(e) = cache.store(&key, &features) {
                            tracing::warn!("cannot keep the features for later probes: {e:#}");
                        }
                    }
                    features
                }
            };
            observer.on_event(&ProbeEvent::Features {
                train_images: train.0.size()[0] as usize,
                test_images: test.0.size()[0] as usize,
                seconds: t.elapsed().as_secs_f64(),
                cached: was_cached,
            });
            if observer.should_stop() {
                return Err(Stopped.into());
            }
            Inputs::Features { train, test }
        }
        Protocol::Moco | Protocol::V3 => Inputs::Images {
            extractor: &extractor,
            splits,
            crop,
        },
    };
    let mut classifier = LinearClassifier::new(
        encoder.feature_dim(),
        classes,
        cfg.init_std,
        cfg.seed,
        device,
    );
    let scores = fit(&mut classifier, &inputs, cfg, observer)?;
    snapshot.verify(encoder)?;
    let result = ProbeResult {
        protocol: cfg.protocol,
        top1: scores.top1,
        top5: scores.top5,
        best_top1: scores.best_top1,
        epochs: cfg.epochs,
        dataset: cfg.dataset.label(),
        train_images,
        test_images,
        classes,
        encoder: encoder.info.path.display().to_string(),
        encoder_epoch: encoder.info.epoch,
        lr: cfg.effective_lr(),
        batch_size: cfg.batch_size,
        final_loss: scores.final_loss,
        device: device_name(device),
        precision: precision_label(precision).into(),
        backbone_unchanged: true,
        seconds: start.elapsed().as_secs_f64(),
    };
    observer.on_event(&ProbeEvent::Result(result.clone()));
    Ok(result)
}

/// Trains `classifier` on cached features [N, D] with int64 labels [N] and scores it on the
/// held-out pair: the fast protocol's loop, open to tests that check its arithmetic.
pub fn fit_on_features(
    classifier: &mut LinearClassifier,
    train: (Tensor, Tensor),
    test: (Tensor, Tensor),
    cfg: &ProbeConfig,
    observer: &mut dyn ProbeObserver,
) -> anyhow::Result<Scores> {
    fit(classifier, &Inputs::Features { train, test }, cfg, observer)
}

/// Where a probe ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    pub top1: f64,
    pub top5: f64,
    pub best_top1: f64,
    pub final_loss: f64,
}

/// What the classifier trains and is scored on.
enum Inputs<'a> {
    /// Features and labels of both splits, on the device (fast).
    Features {
        train: (Tensor, Tensor),
        test: (Tensor, Tensor),
    },
    /// The images, through the frozen backbone at every step (moco, v3).
    Images {
        extractor: &'a FeatureExtractor<'a>,
        splits: &'a DatasetSplits,
        crop: ViewSpec,
    },
}

/// An epoch's summed loss (on the device, read once at its end) and its images.
struct EpochSums {
    loss: Tensor,
    images: i64,
}

/// Where the probe stands inside the epoch loop.
struct EpochContext<'a> {
    cfg: &'a ProbeConfig,
    epoch: i64,
    lr: f64,
    step: i64,
}

impl Inputs<'_> {
    fn train_len(&self) -> usize {
        match self {
            Inputs::Features { train, .. } => train.0.size()[0] as usize,
            Inputs::Images { splits, .. } => splits.train.len(),
        }
    }

    /// One epoch of SGD steps; returns the mean loss over its images.
    fn train_epoch(
        &self,
        classifier: &mut LinearClassifier,
        sgd: &mut FlatOptimizer,
        at: &mut EpochContext,
        observer: &mut dyn ProbeObserver,
    ) -> anyhow::Result<f64> {
        let cfg = at.cfg;
        let batch = cfg.batch_size as usize;
        let device = classifier.weight.device();
        let mut sums = EpochSums {
            loss: Tensor::zeros([], (Kind::Float, device)),
            images: 0,
        };
        let mut step = |at: &mut EpochContext, f: &Tensor, y: &Tensor| {
            let n = y.size()[0];
            sums.loss += classifier.step(sgd, f, y, at.lr) * n as f64;
            sums.images += n;
            at.step += 1;
            observer.on_step(at.step);
            observer.should_stop()
        };
        match self {
            Inputs::Features {
                train: (features, labels),
                ..
            } => {
                let n = features.size()[0] as usize;
                let order: Vec<i64> = epoch_order(n, true, cfg.seed, at.epoch as u64)
                    .into_iter()
                    .map(|i| i as i64)
                    .collect();
                let order = Tensor::from_slice(&order).to_device(device);
                for start in (0..n).step_by(batch) {
                    let len = batch.min(n - start) as i64;
                    let idx = order.narrow(0, start as i64, len);
                    let (f, y) = (features.index_select(0, &idx), labels.index_select(0, &idx));
                    if step(at, &f, &y) {
                        return Err(Stopped.into());
                    }
                }
            }
            Inputs::Images {
                extractor,
                splits,
                crop,
            } => {
                let loader = Loader::new(
                    splits.train.clone(),
                    LoaderOptions {
                        batch_size: batch,
                        shuffle: true,
                        drop_last: false,
                        seed: cfg.seed,
                        epoch: at.epoch as u64,
                        start_batch: 0,
                        prefetch: 4,
                        threads: extractor.threads,
                        device: extractor.device,
                        shard: (0, 1),
                    },
                );
                for batch in loader {
                    let batch = batch?;
                    // Each step's crops come from a stream of their own, reproducible from the
                    // seed and the step.
                    let mut rng = stream(cfg.seed, Purpose::Probe, at.step as u64);
                    let x = extractor.augmenter.view(crop, &batch.images, &mut rng);
                    let features = extractor.features(&x)?;
                    if step(at, &features, &batch.labels) {
                        return Err(Stopped.into());
                    }
                }
            }
        }
        Ok(f64::try_from(&sums.loss)? / sums.images.max(1) as f64)
    }

    /// Held-out top-1 and top-5.
    fn score(&self, classifier: &LinearClassifier) -> anyhow::Result<(f64, f64)> {
        Ok(match self {
            Inputs::Features { test, .. } => classifier.score(&test.0, &test.1),
            Inputs::Images {
                extractor, splits, ..
            } => {
                let (features, labels) = extractor.split(&splits.test, 0)?;
                classifier.score(&features, &labels)
            }
        })
    }
}

/// The probe's schedule: the lr set once per epoch from epoch 0, no warm-up, as both official
/// scripts' `adjust_learning_rate`.
fn lr_plan(cfg: &ProbeConfig) -> LrPlan {
    LrPlan {
        base_lr: cfg.effective_lr(),
        kind: cfg.lr_schedule,
        update: LrUpdate::Epoch,
        first_epoch: 0,
        milestones: cfg.lr_milestones.clone(),
        gamma: cfg.lr_gamma,
        warmup_epochs: 0.0,
        epochs: cfg.epochs,
    }
}

/// The epoch loop both kinds of input share.
fn fit(
    classifier: &mut LinearClassifier,
    inputs: &Inputs,
    cfg: &ProbeConfig,
    observer: &mut dyn ProbeObserver,
) -> anyhow::Result<Scores> {
    let steps_per_epoch =
        Loader::batches_per_epoch(inputs.train_len(), cfg.batch_size as usize, false) as i64;
    if steps_per_epoch == 0 {
        bail!("the training split has no labelled images");
    }
    let schedule = Schedule::for_lr(lr_plan(cfg), steps_per_epoch);
    let mut sgd = FlatOptimizer::new(&classifier.store, cfg.sgd_momentum, cfg.weight_decay, false);
    let mut at = EpochContext {
        cfg,
        epoch: 0,
        lr: 0.0,
        step: 0,
    };
    let mut scores = Scores {
        top1: 0.0,
        top5: 0.0,
        best_top1: 0.0,
        final_loss: f64::NAN,
    };
    for epoch in 0..cfg.epochs {
        at.epoch = epoch;
        at.lr = schedule.lr(at.step);
        let loss = inputs.train_epoch(classifier, &mut sgd, &mut at, observer)?;
        if !loss.is_finite() {
            bail!(
                "the classifier's loss became {loss} in epoch {}: lower base_lr (now {})",
                epoch + 1,
                cfg.base_lr
            );
        }
        scores.final_loss = loss;
        let done = epoch + 1;
        let scored = done == cfg.epochs || (cfg.eval_every > 0 && done % cfg.eval_every == 0);
        let (top1, top5) = if scored {
            let (top1, top5) = inputs.score(classifier)?;
            scores.top1 = top1;
            scores.top5 = top5;
            scores.best_top1 = scores.best_top1.max(top1);
            (Some(top1), Some(top5))
        } else {
            (None, None)
        };
        observer.on_event(&ProbeEvent::Epoch {
            epoch: done,
            step: at.step,
            lr: at.lr,
            loss,
            top1,
            top5,
        });
    }
    Ok(scores)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DatasetConfig;
    use serde_json::Value;

    #[derive(Default)]
    struct Events(Vec<ProbeEvent>);

    impl ProbeObserver for Events {
        fn on_event(&mut self, event: &ProbeEvent) {
            self.0.push(event.clone());
        }
    }

    impl Events {
        fn losses(&self) -> Vec<f64> {
            self.0
                .iter()
                .filter_map(|e| match e {
                    ProbeEvent::Epoch { loss, .. } => Some(*loss),
                    _ => None,
                })
                .collect()
        }
    }

    /// Mean cross-entropy of the linear classifier (w, b) and its gradients, in f64.
    fn cross_entropy(
        w: &[[f64; 3]; 2],
        b: &[f64; 2],
        x: &[[f64; 3]],
        y: &[usize],
    ) -> (f64, [[f64; 3]; 2], [f64; 2]) {
        let n = x.len() as f64;
        let (mut loss, mut gw, mut gb) = (0.0, [[0.0; 3]; 2], [0.0; 2]);
        for (xi, &yi) in x.iter().zip(y) {
            let z: Vec<f64> = (0..2)
                .map(|c| b[c] + (0..3).map(|j| w[c][j] * xi[j]).sum::<f64>())
                .collect();
            let top = z[0].max(z[1]);
            let sum: f64 = z.iter().map(|v| (v - top).exp()).sum();
            loss += (top + sum.ln() - z[yi]) / n;
            for c in 0..2 {
                let d = (z[c] - top).exp() / sum - if c == yi { 1.0 } else { 0.0 };
                gb[c] += d / n;
                for j in 0..3 {
                    gw[c][j] += d * xi[j] / n;
                }
            }
        }
        (loss, gw, gb)
    }

    #[test]
    fn two_sgd_steps_with_momentum_and_a_milestone_match_a_hand_computation() {
        let x = [
            [1.0, 0.5, -0.2],
            [0.3, -1.0, 0.8],
            [-0.7, 0.2, 1.5],
            [0.9, 0.9, 0.1],
        ];
        let y = [0usize, 1, 1, 0];
        let w0 = [[0.1, -0.2, 0.05], [0.0, 0.3, -0.1]];
        let b0 = [0.02, -0.01];
        // One full batch per epoch, so the shuffled order changes nothing; the milestone at half
        // of the 2 epochs drops lr 0.5 to 0.05 for the second step.
        let cfg = ProbeConfig::for_protocol(Protocol::Fast, DatasetConfig::synthetic())
            .with_overrides([
                ("epochs", Value::from(2)),
                ("batch_size", 4.into()),
                ("base_lr", 0.5.into()),
                ("lr_milestones", serde_json::json!([0.5])),
                ("sgd_momentum", 0.9.into()),
                ("weight_decay", 0.01.into()),
                ("eval_every", 0.into()),
            ])
            .unwrap();
        let (mu, wd) = (0.9, 0.01);

        // Expected, by hand: d = g + wd·θ; buf = μ·buf + d (buf starts at d); θ -= lr·buf.
        let flat = |w: &[[f64; 3]; 2], b: &[f64; 2]| -> Vec<f64> {
            w.iter()
                .flatten()
                .copied()
                .chain(b.iter().copied())
                .collect()
        };
        let unflat = |v: &[f64]| -> ([[f64; 3]; 2], [f64; 2]) {
            ([[v[0], v[1], v[2]], [v[3], v[4], v[5]]], [v[6], v[7]])
        };
        let mut theta = flat(&w0, &b0);
        let mut buf = [0.0; 8];
        let mut losses = Vec::new();
        for lr in [0.5, 0.05] {
            let (w, b) = unflat(&theta);
            let (loss, gw, gb) = cross_entropy(&w, &b, &x, &y);
            losses.push(loss);
            let g = flat(&gw, &gb);
            for i in 0..8 {
                buf[i] = mu * buf[i] + g[i] + wd * theta[i];
                theta[i] -= lr * buf[i];
            }
        }

        let mut classifier = LinearClassifier::new(3, 2, 0.01, 0, Device::Cpu);
        tch::no_grad(|| {
            let w: Vec<f32> = w0.iter().flatten().map(|&v| v as f32).collect();
            let b: Vec<f32> = b0.iter().map(|&v| v as f32).collect();
            classifier
                .weight
                .copy_(&Tensor::from_slice(&w).view([2, 3]));
            classifier.bias.copy_(&Tensor::from_slice(&b));
        });
        let features = Tensor::from_slice2(&x.map(|r| r.map(|v| v as f32)));
        let labels = Tensor::from_slice(&y.map(|c| c as i64));
        let mut events = Events::default();
        fit_on_features(
            &mut classifier,
            (features.shallow_clone(), labels.shallow_clone()),
            (features, labels),
            &cfg,
            &mut events,
        )
        .unwrap();
        let got: Vec<f64> = Vec::<f32>::try_from(classifier.store.flat())
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect();
        // fp32 arithmetic against f64: a few ulps of values around 0.1–1.
        let tolerance = 1e-6;
        for (i, (g, e)) in got.iter().zip(&theta).enumerate() {
            assert!((g - e).abs() < tolerance, "parameter {i}: {g} vs {e}");
        }
        for (g, e) in events.losses().iter().zip(&losses) {
            assert!((g - e).abs() < tolerance, "loss {g} vs {e}");
        }
        assert_eq!(events.losses().len(), 2);
    }

    #[test]
    fn the_moco_protocol_leaves_the_backbone_and_its_batchnorm_statistics_as_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let (run, model) = crate::eval::tests::tiny_model();
        // Statistics far from what the synthetic images would give, so a BatchNorm run in
        // training mode (which moves them towards the batch's) would show at once.
        tch::no_grad(|| {
            for (name, t) in &model.query.store.buffers {
                let value = if name.ends_with("running_mean") {
                    0.3
                } else {
                    2.5
                };
                let _ = t.shallow_clone().fill_(value);
            }
        });
        let path = dir.path().join("encoder.safetensors");
        crate::train::checkpoint::export_encoder(
            &path,
            &model,
            &crate::eval::tests::metadata(&run),
        )
        .unwrap();
        let encoder = FrozenEncoder::load(&path, Device::Cpu).unwrap();
        let copy = |list: Vec<(String, Tensor)>| -> Vec<(String, Tensor)> {
            list.into_iter().map(|(n, t)| (n, t.copy())).collect()
        };
        let before = copy(encoder.store.named_tensors());
        let cfg = ProbeConfig::for_protocol(Protocol::Moco, DatasetConfig::synthetic())
            .with_overrides([
                ("epochs", Value::from(2)),
                ("batch_size", 16.into()),
                ("dataset.synthetic_train", 40.into()),
                ("dataset.synthetic_test", 10.into()),
                ("loader_threads", 1.into()),
            ])
            .unwrap();
        let splits = crate::eval::open_labelled(&cfg.dataset, std::path::Path::new(".")).unwrap();
        let mut events = Events::default();
        let result = run_probe(
            &ProbeRequest {
                encoder: &encoder,
                splits: &splits,
                config: &cfg,
                device: Device::Cpu,
                feature_cache: None,
            },
            &mut events,
        )
        .unwrap();
        // 40 images in batches of 16, the last one smaller and kept: 3 steps per epoch.
        let steps: Vec<i64> = events
            .0
            .iter()
            .filter_map(|e| match e {
                ProbeEvent::Epoch { step, .. } => Some(*step),
                _ => None,
            })
            .collect();
        assert_eq!(steps, vec![3, 6]);
        let after = encoder.store.named_tensors();
        assert_eq!(before.len(), after.len());
        for ((name, b), (_, a)) in before.iter().zip(&after) {
            assert!(b.equal(a), "{name} changed");
        }
        assert!(encoder
            .store
            .buffers
            .iter()
            .any(|(n, t)| n.ends_with("running_var") && t.equal(&t.full_like(2.5))));
        assert!(result.backbone_unchanged);
        assert!((0.0..=100.0).contains(&result.top1) && result.top5 >= result.top1);
        assert!(matches!(events.0.last(), Some(ProbeEvent::Result(_))));
    }

    #[test]
    fn the_fast_protocol_reads_its_features_back_from_the_cache_and_scores_alike() {
        let dir = tempfile::tempdir().unwrap();
        let (run, model) = crate::eval::tests::tiny_model();
        let path = dir.path().join("encoder.safetensors");
        crate::train::checkpoint::export_encoder(
            &path,
            &model,
            &crate::eval::tests::metadata(&run),
        )
        .unwrap();
        let encoder = FrozenEncoder::load(&path, Device::Cpu).unwrap();
        let cache = FeatureCache {
            dir: dir.path().join("features"),
            encoder_sha256: crate::train::checkpoint::sha256_of_file(&path).unwrap(),
        };
        let probe = |train: i64| {
            let cfg = ProbeConfig::for_protocol(Protocol::Fast, DatasetConfig::synthetic())
                .with_overrides([
                    ("epochs", Value::from(3)),
                    ("batch_size", 16.into()),
                    ("dataset.synthetic_train", train.into()),
                    ("dataset.synthetic_test", 20.into()),
                    ("loader_threads", 1.into()),
                ])
                .unwrap();
            let splits =
                crate::eval::open_labelled(&cfg.dataset, std::path::Path::new(".")).unwrap();
            let mut events = Events::default();
            let result = run_probe(
                &ProbeRequest {
                    encoder: &encoder,
                    splits: &splits,
                    config: &cfg,
                    device: Device::Cpu,
                    feature_cache: Some(&cache),
                },
                &mut events,
            )
            .unwrap();
            let cached = events.0.iter().find_map(|e| match e {
                ProbeEvent::Features { cached, .. } => Some(*cached),
                _ => None,
            });
            (result, cached.unwrap())
        };
        let (first, cached) = probe(40);
        assert!(!cached);
        let (second, cached) = probe(40);
        assert!(cached);
        // The same features, read back bit for bit: the same classifier, the same scores.
        assert_eq!(
            (first.top1, first.top5, first.final_loss),
            (second.top1, second.top5, second.final_loss)
        );
        let files = || std::fs::read_dir(&cache.dir).unwrap().count();
        assert_eq!(files(), 1);
        // Another training split is another set of features.
        let (_, cached) = probe(48);
        assert!(!cached);
        assert_eq!(files(), 2);
    }

    #[test]
    fn scores_count_top1_and_top5() {
        let mut classifier = LinearClassifier::new(6, 6, 0.01, 0, Device::Cpu);
        tch::no_grad(|| {
            classifier
                .weight
                .copy_(&Tensor::eye(6, tch::kind::FLOAT_CPU));
            let _ = classifier.bias.zero_();
        });
        // The logits are the features: sample 0 is right at top-1, sample 1 only within top-5,
        // sample 2 (its class ranked last) at neither.
        let features = Tensor::from_slice2(&[
            [6.0f32, 5.0, 4.0, 3.0, 2.0, 1.0],
            [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],
            [6.0, 5.0, 4.0, 3.0, 2.0, 1.0],
        ]);
        let labels = Tensor::from_slice(&[0i64, 3, 5]);
        let (top1, top5) = classifier.score(&features, &labels);
        assert!((top1 - 100.0 / 3.0).abs() < 1e-9);
        assert!((top5 - 200.0 / 3.0).abs() < 1e-9);
    }
}
