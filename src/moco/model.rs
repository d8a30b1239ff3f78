//! The MoCo model: query and key encoders (backbone + head), the momentum update and the queue.
use super::encoder::ResNet;
use super::head::{normalize, Head};
use super::loss::{info_nce, ContrastiveLoss};
use super::params::ParamStore;
use super::queue::Queue;
use super::shuffle::Shuffle;
use crate::config::RunConfig;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

/// Backbone and head sharing one flat parameter buffer.
pub struct Encoder {
    pub store: ParamStore,
    pub backbone: ResNet,
    pub head: Head,
}

impl Encoder {
    pub fn new(cfg: &RunConfig, device: Device) -> Self {
        let mut store = ParamStore::new(device);
        let mut backbone = ResNet::new(&mut store, cfg.arch, cfg.stem, cfg.width);
        backbone.channels_last = cfg.memory_format.channels_last_on(device);
        let head = Head::new(
            &mut store,
            cfg.head,
            backbone.feature_dim(),
            cfg.head_hidden_dim(),
            cfg.dim,
        );
        store.flatten();
        Encoder {
            store,
            backbone,
            head,
        }
    }

    /// Multiply-accumulates of one forward pass (backbone and head) of one `image_size`² image.
    pub fn forward_macs(&self, image_size: i64) -> i64 {
        self.backbone.forward_macs(image_size) + self.head.macs()
    }

    /// Unit-length embeddings [N, dim].
    pub fn embed(&self, x: &Tensor, train: bool, splits: i64) -> Tensor {
        normalize(&self.head.forward(&self.backbone.forward(x, train, splits)))
    }
}

/// What one training step produced, before the optimizer step.
pub struct StepOutput {
    pub loss: Tensor,
    /// The contrastive terms (one, or two with the symmetric loss) for the metrics.
    pub terms: Vec<ContrastiveLoss>,
    /// Keys to enqueue after the optimizer step.
    pub keys: Tensor,
}

pub struct MocoModel {
    pub query: Encoder,
    pub key: Encoder,
    pub queue: Queue,
    temperature: f64,
    symmetric: bool,
    splits: i64,
}

impl MocoModel {
    /// Builds the model from `seed`: the same seed gives the same initial weights and queue, even
    /// while other threads train (initialisation draws from torch's process-wide generator, so
    /// seeding and drawing happen under one lock).
    pub fn seeded(cfg: &RunConfig, device: Device, seed: u64) -> Self {
        with_torch_seed(seed, || MocoModel::new(cfg, device))
    }

    /// Builds f_q from the global torch generator (seed it first), copies it into f_k and fills
    /// the queue with random unit vectors.
    pub fn new(cfg: &RunConfig, device: Device) -> Self {
        let mut query = Encoder::new(cfg, device);
        query.store.attach_flat_grad();
        let mut key = Encoder::new(cfg, device);
        key.store.copy_from(&query.store);
        for p in &mut key.store.params {
            let _ = p.tensor.requires_grad_(false);
        }
        let queue = Queue::new(cfg.queue_size, cfg.dim, device);
        MocoModel {
            query,
            key,
            queue,
            temperature: cfg.temperature,
            symmetric: cfg.symmetric,
            splits: cfg.shuffle_bn_splits,
        }
    }

    /// θk ← m·θk + (1−m)·θq over every parameter at once (buffers are not averaged: f_k keeps its
    /// own BatchNorm statistics).
    pub fn momentum_update(&mut self, m: f64) {
        let _guard = tch::no_grad_guard();
        let _ = self
            .key
            .store
            .flat()
            .shallow_clone()
            .lerp_(self.query.store.flat(), 1.0 - m);
    }

    /// Keys for `x` from f_k with shuffled split BN, unshuffled, unit length, no gradient.
    fn keys(&self, x: &Tensor, rng: &mut ChaCha8Rng) -> Tensor {
        let _guard = tch::no_grad_guard();
        let shuffle = Shuffle::new(x.size()[0], rng, x.device());
        let k = self.key.embed(&shuffle.apply(x), true, self.splits);
        shuffle.undo(&k)
    }

    /// q = f_q(x1); momentum update; k = f_k(x2) with shuffle BN; InfoNCE against the queue (and
    /// the mirrored term with the symmetric loss). The caller runs backward and the optimizer,
    /// then enqueues `keys`.
    pub fn forward_step(
        &mut self,
        x1: &Tensor,
        x2: &Tensor,
        m: f64,
        rng: &mut ChaCha8Rng,
    ) -> StepOutput {
        let q1 = self.query.embed(x1, true, self.splits);
        let q2 = self
            .symmetric
            .then(|| self.query.embed(x2, true, self.splits));
        self.momentum_update(m);
        let k2 = self.keys(x2, rng);
        let mut terms = vec![info_nce(&q1, &k2, &self.queue.keys, self.temperature)];
        let keys = match q2 {
            Some(q2) => {
                let k1 = self.keys(x1, rng);
                terms.push(info_nce(&q2, &k1, &self.queue.keys, self.temperature));
                Tensor::cat(&[k1, k2], 0)
            }
            None => k2,
        };
        let loss = terms
            .iter()
            .map(|t| t.loss.shallow_clone())
            .reduce(|a, b| a + b)
            .expect("at least one term");
        StepOutput { loss, terms, keys }
    }

    /// ‖θq − θk‖ / ‖θq‖ as a device scalar.
    pub fn drift(&self) -> Tensor {
        let _guard = tch::no_grad_guard();
        let q = self.query.store.flat();
        (q - self.key.store.flat()).norm() / q.norm().clamp_min(1e-12)
    }
}

/// Runs `init` with torch's process-wide generator seeded with `seed`, under one lock, so what it
/// draws depends on the seed alone even while other threads train (initialisation draws from
/// that generator).
pub fn with_torch_seed<T>(seed: u64, init: impl FnOnce() -> T) -> T {
    static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _lock = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    tch::manual_seed(seed as i64);
    init()
}

/// A fresh float scalar on `device`, for accumulating metrics without host synchronisation.
pub fn scalar_zero(device: Device) -> Tensor {
    Tensor::zeros([], (Kind::Float, device))
}
