//! One training step (views, forward passes and momentum update, backward, optimizer, enqueue)
//! and the statistics the loop accumulates on the device between two metric reads.
use super::checkpoint::TrainingState;
use super::device::autocast;
use super::events::{metric, MetricRecord};
use super::optim::FlatOptimizer;
use crate::data::Augmenter;
use crate::moco::model::{scalar_zero, MocoModel, StepOutput};
use crate::torch_ext::{self, ReducedPrecision};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// What one training step needs besides the model, the optimizer and the batch.
pub struct StepParams {
    pub seed: u64,
    /// The global step about to be taken (0-based): it picks the step's random stream.
    pub step: i64,
    pub lr: f64,
    pub momentum: f64,
    pub precision: Option<ReducedPrecision>,
}

/// One MoCo training step on a batch of uint8 images (at `indices` of the training split): the
/// two views, the forward passes and the momentum update (under the run's autocast), backward,
/// the optimizer step, and the new keys enqueued (and written to the memory bank). Returns the
/// step's output for the metrics.
pub fn train_step(
    model: &mut MocoModel,
    optimizer: &mut FlatOptimizer,
    augmenter: &Augmenter,
    images: &Tensor,
    indices: &[usize],
    params: StepParams,
) -> anyhow::Result<StepOutput> {
    let mut rng = crate::rng::stream(params.seed, crate::rng::Purpose::Step, params.step as u64);
    let parallel = model.parallel();
    // Each image's views come from its own stream, named by its position in the global batch,
    // so N ranks augmenting their rows draw what one process augmenting the batch draws.
    let n = images.size()[0] as usize;
    let positions: Vec<usize> = match &parallel {
        Some(p) => p.positions(n * p.world()).collect(),
        None => (0..n).collect(),
    };
    let mut view_rngs: Vec<_> = positions
        .iter()
        .map(|&position| crate::rng::image_views(params.seed, params.step as u64, position))
        .collect();
    let (x1, x2) = augmenter.two_views_per_image(images, &mut view_rngs);
    // Only the memory bank reads the batch's positions in the training split.
    let indices = model.bank.is_some().then(|| {
        let indices: Vec<i64> = indices.iter().map(|&i| i as i64).collect();
        Tensor::from_slice(&indices).to_device(images.device())
    });
    let out = {
        let _autocast = autocast(images.device(), params.precision)?;
        model.forward_step_indexed(&x1, &x2, indices.as_ref(), params.momentum, &mut rng)?
    };
    model.query.store.zero_grad();
    // Across ranks, backward starts each gradient bucket's all-reduce as soon as it is complete.
    let reducer = model.gradient_reducer();
    if let Some(r) = reducer {
        r.arm()?;
    }
    optimizer.backward(&out.loss)?;
    if let (Some(p), Some(r)) = (&parallel, reducer) {
        p.average_gradients(r)?;
    }
    optimizer.step(&model.query.store, params.lr);
    model.store_keys(&out, params.step + 1);
    if let Some(p) = &parallel {
        p.sync_buffers(&model.query.store, model.bn_stats_across_ranks)?;
        p.sync_buffers(&model.key.store, model.bn_stats_across_ranks)?;
    }
    Ok(out)
}

/// Loss and logit statistics summed on the device between two metric reads.
pub(crate) struct Accumulator {
    pub(crate) loss: Tensor,
    pub(crate) top1: Tensor,
    pub(crate) pos: Tensor,
    pub(crate) neg: Tensor,
    pub(crate) neg_max: Tensor,
    /// The largest gradient norms of the interval: all parameters, the first layer.
    pub(crate) grad_norm: Tensor,
    pub(crate) grad_norm_first: Tensor,
    pub(crate) steps: i64,
    pub(crate) images: i64,
    pub(crate) data_wait: Duration,
    pub(crate) since: Instant,
}

impl Accumulator {
    /// Folds in the gradient of the step just taken (the optimizer has unscaled it under fp16),
    /// on the device.
    pub(crate) fn add_gradient(&mut self, model: &MocoModel) {
        let _guard = tch::no_grad_guard();
        let store = &model.query.store;
        let grad = store.flat_grad();
        self.grad_norm = self.grad_norm.maximum(&grad.norm());
        // The first parameter registered is the first layer's weight.
        if let Some(first) = store.params.first() {
            let norm = grad.narrow(0, first.offset, first.numel).norm();
            self.grad_norm_first = self.grad_norm_first.maximum(&norm);
        }
    }

    pub(crate) fn new(device: Device) -> Self {
        Accumulator {
            loss: scalar_zero(device),
            top1: scalar_zero(device),
            pos: scalar_zero(device),
            neg: scalar_zero(device),
            neg_max: scalar_zero(device) - f64::INFINITY,
            grad_norm: scalar_zero(device),
            grad_norm_first: scalar_zero(device),
            steps: 0,
            images: 0,
            data_wait: Duration::ZERO,
            since: Instant::now(),
        }
    }
}

/// Reads the accumulated statistics and the queue state in one transfer from the device.
pub(crate) fn read_metrics(
    model: &MocoModel,
    optimizer: &FlatOptimizer,
    acc: &mut Accumulator,
    state: &TrainingState,
    lr: f64,
    m: f64,
) -> anyhow::Result<MetricRecord> {
    let q = model.queue.stats(state.step);
    // With a memory bank the negatives' store is the bank: its fill says whether they are real.
    let fill = match &model.bank {
        Some(bank) => bank.fill(),
        None => q.fill,
    };
    let steps = acc.steps.max(1) as f64;
    let parallel = model.parallel();
    let mut neg_max = acc.neg_max.shallow_clone();
    let means = Tensor::stack(&[&acc.loss, &acc.top1, &acc.pos, &acc.neg], 0) / steps;
    if let Some(p) = &parallel {
        // Each rank saw its rows of the batches: the interval's figures are the ranks' mean (and
        // maximum). Everything else read here is the same on every rank.
        neg_max = neg_max.reshape([1]).copy();
        p.reduce_metrics(&means, &neg_max)?;
        neg_max = neg_max.reshape([]);
    }
    let mut device_values = vec![
        means.get(0),
        means.get(1),
        means.get(2),
        means.get(3),
        neg_max,
        fill,
        q.age_mean,
        q.age_max,
        q.similarity,
        model.drift(),
        acc.grad_norm.shallow_clone(),
        acc.grad_norm_first.shallow_clone(),
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
        metric::GRAD_NORM,
        metric::GRAD_NORM_FIRST,
        metric::LOSS_SCALE,
    ];
    for (name, value) in names.iter().zip(v) {
        values.insert(name.to_string(), value);
    }
    values.insert(metric::LR.into(), lr);
    values.insert(metric::MOMENTUM.into(), m);
    values.insert(metric::QUEUE_PTR.into(), model.queue.ptr as f64);
    // The ranks step together, so the run's throughput is this rank's times their number.
    let world = parallel.as_ref().map_or(1, |p| p.world()) as f64;
    values.insert(
        metric::IMAGES_PER_SEC.into(),
        acc.images as f64 * world / elapsed,
    );
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
    if let Some(p) = &parallel {
        let comm = p.take_comm_time().as_secs_f64();
        values.insert(metric::COMM_MS.into(), comm * 1000.0 / steps);
        // Every rank's own figures, so a slow one shows: its images per second of its own work
        // (the interval less the time in collectives, where it waits for the others).
        let own = [
            acc.images as f64 / (elapsed - comm).max(1e-9),
            comm * 1000.0 / steps,
        ];
        for (rank, figures) in p.gather_values(&own)?.iter().enumerate() {
            values.insert(
                metric::per_rank(metric::RANK_IMAGES_PER_SEC, rank),
                figures[0],
            );
            values.insert(metric::per_rank(metric::RANK_COMM_MS, rank), figures[1]);
        }
    }
    Ok(MetricRecord {
        step: state.step,
        epoch: state.epoch,
        values,
    })
}
