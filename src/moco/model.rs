//! The MoCo model: query and key encoders (backbone + head), the momentum update and the queue.
use super::backbone::Backbone;
use super::head::{normalize, Head, V3Mlp};
use super::loss::{end_to_end, in_batch, in_batch_at, info_nce, ContrastiveLoss};
use super::memory_bank::MemoryBank;
use super::params::ParamStore;
use super::queue::Queue;
use super::shuffle::Shuffle;
use super::sync_bn::SyncScope;
use crate::config::{BnStatsAcrossRanks, Framework, Mechanism, RunConfig};
use crate::dist::{DataParallel, GradientReducer};
use rand_chacha::ChaCha8Rng;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// Backbone and head (and, on MoCo v3's query side, the predictor) sharing one flat parameter
/// buffer. The predictor's parameters come last, so the first `key` elements of the query's
/// buffer are exactly the key encoder's.
pub struct Encoder {
    pub store: ParamStore,
    pub backbone: Backbone,
    pub head: Head,
    pub predictor: Option<V3Mlp>,
}

impl Encoder {
    /// The encoder of `cfg`; `with_predictor` adds MoCo v3's predictor (the query side only).
    pub fn new(cfg: &RunConfig, device: Device, with_predictor: bool) -> Self {
        let mut store = ParamStore::new(device);
        let mut backbone = Backbone::new(&mut store, cfg.backbone_spec());
        backbone.set_channels_last(cfg.memory_format.channels_last_on(device));
        if cfg.zero_init_residual {
            backbone.zero_init_residual();
        }
        let vit = cfg.arch.is_vit();
        let head = Head::new(
            &mut store,
            cfg.head,
            backbone.feature_dim(),
            cfg.head_hidden_dim(),
            cfg.dim,
            cfg.head_layers,
            // timm's classifier is `head`, torchvision's `fc`: the projector replaces it.
            if vit { "head" } else { "fc" },
        );
        // ResNets' predictor ends without BatchNorm, ViTs' with (moco-v3 builder.py's MoCo_ResNet
        // and MoCo_ViT).
        let predictor = with_predictor.then(|| {
            V3Mlp::new(
                &mut store,
                "predictor",
                cfg.predictor_layers,
                (cfg.dim, cfg.head_hidden_dim(), cfg.dim),
                vit,
            )
        });
        store.flatten();
        Encoder {
            store,
            backbone,
            head,
            predictor,
        }
    }

    /// Multiply-accumulates of one forward pass (backbone, head and predictor) of one
    /// `image_size`² image.
    pub fn forward_macs(&self, image_size: i64) -> i64 {
        self.backbone.forward_macs(image_size)
            + self.head.macs()
            + self.predictor.as_ref().map_or(0, V3Mlp::macs)
    }

    /// The head's output [N, dim], not normalised.
    pub fn project(&self, x: &Tensor, train: bool, splits: i64) -> Tensor {
        self.head
            .forward(&self.backbone.forward(x, train, splits), train)
    }

    /// Unit-length embeddings [N, dim].
    pub fn embed(&self, x: &Tensor, train: bool, splits: i64) -> Tensor {
        normalize(&self.project(x, train, splits))
    }

    /// MoCo v3's query: the predictor on the projection (BatchNorm over the whole batch).
    fn predict(&self, x: &Tensor) -> Tensor {
        let p = self.project(x, true, 1);
        match &self.predictor {
            Some(predictor) => predictor.forward(&p, true),
            None => p,
        }
    }
}

/// What one training step produced, before the optimizer step.
pub struct StepOutput {
    pub loss: Tensor,
    /// The contrastive terms (one, or two with the symmetric loss) for the metrics.
    pub terms: Vec<ContrastiveLoss>,
    /// Keys to enqueue after the optimizer step.
    pub keys: Tensor,
    /// The memory bank's batch indices and their new queries, written after the step.
    pub bank_update: Option<(Tensor, Tensor)>,
}

pub struct MocoModel {
    pub query: Encoder,
    pub key: Encoder,
    /// K past keys (moco), or the last batch's keys (the other mechanisms and v3, for the
    /// key-similarity monitor).
    pub queue: Queue,
    /// The memory_bank mechanism's features, one per training image (`attach_memory_bank`).
    pub bank: Option<MemoryBank>,
    /// Which mechanism runs in the moco framework (None in v3).
    mechanism: Option<Mechanism>,
    temperature: f64,
    symmetric: bool,
    splits: i64,
    /// K: the memory bank's negatives per step.
    queue_size: i64,
    /// The other ranks of a data-parallel run: keys are shuffled across them and gathered.
    parallel: Option<Arc<DataParallel>>,
    /// The query's gradient all-reduce across those ranks.
    gradients: Option<GradientReducer>,
    /// What becomes of BatchNorm's running statistics across those ranks after a step.
    pub bn_stats_across_ranks: BnStatsAcrossRanks,
    /// The moco framework's queries normalised over the whole global batch (`sync_bn`).
    sync_queries: bool,
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
        let v3 = cfg.framework == Framework::V3;
        let mut query = Encoder::new(cfg, device, v3);
        query.store.attach_flat_grad();
        let mut key = Encoder::new(cfg, device, false);
        key.store.copy_from(&query.store);
        for p in &mut key.store.params {
            let _ = p.tensor.requires_grad_(false);
        }
        let queue = Queue::new(cfg.queue_len(), cfg.dim, device);
        MocoModel {
            query,
            key,
            queue,
            bank: None,
            mechanism: cfg.effective_mechanism(),
            temperature: cfg.temperature,
            symmetric: cfg.symmetric,
            splits: cfg.shuffle_bn_splits,
            queue_size: cfg.queue_size,
            parallel: None,
            gradients: None,
            bn_stats_across_ranks: cfg.bn_stats_across_ranks,
            sync_queries: cfg.sync_bn,
        }
    }

    /// Trains as one rank of `parallel` from now on: the batches it sees are its rows of the
    /// global batch, `shuffle_bn_splits` counts the global batch's BatchNorm groups, and the
    /// query's gradient is all-reduced in buckets of `bucket_cap_mb` MiB.
    pub fn set_parallel(
        &mut self,
        parallel: Arc<DataParallel>,
        bucket_cap_mb: f64,
    ) -> anyhow::Result<()> {
        self.gradients = Some(parallel.gradient_reducer(&self.query.store, bucket_cap_mb)?);
        self.parallel = Some(parallel);
        Ok(())
    }

    /// The data-parallel group this model trains in, if any.
    pub fn parallel(&self) -> Option<Arc<DataParallel>> {
        self.parallel.clone()
    }

    /// The all-reduce of the query's gradient when training across ranks.
    pub fn gradient_reducer(&self) -> Option<&GradientReducer> {
        self.gradients.as_ref()
    }

    /// BatchNorm groups in this process's share of the batch.
    fn local_splits(&self) -> i64 {
        let world = self.parallel.as_ref().map_or(1, |p| p.world() as i64);
        (self.splits / world).max(1)
    }

    /// The query's parameters the key encoder mirrors: all of them but v3's predictor, which
    /// comes last in the flat buffer.
    fn mirrored(&self) -> Tensor {
        let n = self.key.store.flat().size()[0];
        self.query.store.flat().narrow(0, 0, n)
    }

    /// θk ← m·θk + (1−m)·θq over every parameter at once (buffers are not averaged: f_k keeps its
    /// own BatchNorm statistics).
    pub fn momentum_update(&mut self, m: f64) {
        let _guard = tch::no_grad_guard();
        let q = self.mirrored();
        let _ = self.key.store.flat().shallow_clone().lerp_(&q, 1.0 - m);
    }

    /// Keys for `x` from f_k with shuffle BN, unit length, no gradient: this process's keys and
    /// the whole global batch's (the same tensor on one process).
    fn keys(&self, x: &Tensor, rng: &mut ChaCha8Rng) -> anyhow::Result<(Tensor, Tensor)> {
        let _guard = tch::no_grad_guard();
        let splits = self.local_splits();
        shuffled_encode(x, self.parallel.as_deref(), rng, |x| {
            self.key.embed(x, true, splits)
        })
    }

    /// Whether f_k is used and follows f_q by momentum (moco and v3; the end-to-end and
    /// memory-bank baselines have none).
    pub fn has_momentum_encoder(&self) -> bool {
        matches!(self.mechanism, None | Some(Mechanism::Moco))
    }

    /// Gives the memory_bank mechanism its bank of `images` entries, drawn from `seed` (the
    /// size is the training split's, known once the data is open). Other mechanisms keep none.
    pub fn attach_memory_bank(&mut self, cfg: &RunConfig, images: i64, seed: u64) {
        if self.mechanism == Some(Mechanism::MemoryBank) {
            let device = self.queue.keys.device();
            self.bank = Some(with_torch_seed(seed, || {
                MemoryBank::new(images, cfg.dim, cfg.bank_momentum, device)
            }));
        }
    }

    /// `forward_step_indexed` for mechanisms that need no image indices.
    pub fn forward_step(
        &mut self,
        x1: &Tensor,
        x2: &Tensor,
        m: f64,
        rng: &mut ChaCha8Rng,
    ) -> anyhow::Result<StepOutput> {
        self.forward_step_indexed(x1, x2, None, m, rng)
    }

    /// One step's forward passes for the run's framework and mechanism. The caller runs backward
    /// and the optimizer, then `store_keys`. `indices` ([N] int64 on the device, the batch's
    /// positions in the training split) are what the memory bank is read and written at. Errors
    /// only across ranks, when a collective with the others fails.
    pub fn forward_step_indexed(
        &mut self,
        x1: &Tensor,
        x2: &Tensor,
        indices: Option<&Tensor>,
        m: f64,
        rng: &mut ChaCha8Rng,
    ) -> anyhow::Result<StepOutput> {
        Ok(match self.mechanism {
            None => self.forward_step_v3(x1, x2, m)?,
            Some(Mechanism::Moco) => self.forward_step_moco(x1, x2, m, rng)?,
            Some(Mechanism::EndToEnd) => self.forward_step_end_to_end(x1, x2, rng),
            Some(Mechanism::MemoryBank) => {
                let indices = indices.expect("the memory bank is read at the batch's indices");
                self.forward_step_memory_bank(x1, indices, rng)
            }
        })
    }

    /// After the optimizer step: the step's keys into the queue, and the batch's queries into
    /// the memory bank.
    pub fn store_keys(&mut self, out: &StepOutput, next_step: i64) {
        self.queue.enqueue(&out.keys, next_step);
        if let (Some(bank), Some((indices, queries))) = (&mut self.bank, &out.bank_update) {
            bank.update(indices, queries);
        }
    }

    /// The end-to-end mechanism: q = f_q(x1), k = f_q(x2) with shuffle BN and with gradient;
    /// each query against the batch's keys. No momentum encoder, no queue.
    fn forward_step_end_to_end(
        &mut self,
        x1: &Tensor,
        x2: &Tensor,
        rng: &mut ChaCha8Rng,
    ) -> StepOutput {
        let q = self.query.embed(x1, true, self.splits);
        let shuffle = Shuffle::new(x2.size()[0], rng, x2.device());
        let k = shuffle.undo(&self.query.embed(&shuffle.apply(x2), true, self.splits));
        let term = end_to_end(&q, &k, self.temperature);
        StepOutput {
            loss: term.loss.shallow_clone(),
            terms: vec![term],
            keys: k.detach(),
            bank_update: None,
        }
    }

    /// The memory-bank mechanism: q = f_q(x1) against its image's bank entry (the positive)
    /// and K entries drawn from the bank; the entries of the batch move towards q afterwards.
    fn forward_step_memory_bank(
        &mut self,
        x1: &Tensor,
        indices: &Tensor,
        rng: &mut ChaCha8Rng,
    ) -> StepOutput {
        let q = self.query.embed(x1, true, self.splits);
        let bank = self
            .bank
            .as_ref()
            .expect("attach_memory_bank before training");
        let (positives, negatives) = (bank.entries(indices), bank.sample(self.queue_size, rng));
        let term = info_nce(&q, &positives, &negatives, self.temperature);
        let queries = q.detach();
        StepOutput {
            loss: term.loss.shallow_clone(),
            terms: vec![term],
            keys: queries.shallow_clone(),
            bank_update: Some((indices.shallow_clone(), queries)),
        }
    }

    /// q = f_q(x1); momentum update; k = f_k(x2) with shuffle BN; InfoNCE against the queue (and
    /// the mirrored term with the symmetric loss).
    fn forward_step_moco(
        &mut self,
        x1: &Tensor,
        x2: &Tensor,
        m: f64,
        rng: &mut ChaCha8Rng,
    ) -> anyhow::Result<StepOutput> {
        let splits = self.local_splits();
        let (q1, q2) = {
            // With sync_bn, one BatchNorm group: the whole global batch.
            let (scope, q_splits) = if self.sync_queries {
                (SyncScope::enter(self.parallel.as_ref()), 1)
            } else {
                (SyncScope::enter(None), splits)
            };
            let q1 = self.query.embed(x1, true, q_splits);
            let q2 = self.symmetric.then(|| self.query.embed(x2, true, q_splits));
            scope.finish()?;
            (q1, q2)
        };
        self.momentum_update(m);
        let (k2, k2_all) = self.keys(x2, rng)?;
        let mut terms = vec![info_nce(&q1, &k2, &self.queue.keys, self.temperature)];
        // Every rank enqueues the whole global batch's keys, so the queues stay identical.
        let keys = match q2 {
            Some(q2) => {
                let (k1, k1_all) = self.keys(x1, rng)?;
                terms.push(info_nce(&q2, &k1, &self.queue.keys, self.temperature));
                Tensor::cat(&[k1_all, k2_all], 0)
            }
            None => k2_all,
        };
        let loss = terms
            .iter()
            .map(|t| t.loss.shallow_clone())
            .reduce(|a, b| a + b)
            .expect("at least one term");
        Ok(StepOutput {
            loss,
            terms,
            keys,
            bank_update: None,
        })
    }

    /// MoCo v3 (moco-v3 builder.py `forward`): q1, q2 = pred(proj(base(x1, x2))); the momentum
    /// update; k1, k2 from the momentum encoder without shuffle, BatchNorm over the whole batch;
    /// ctr(q1, k2) + ctr(q2, k1). The keys of the batch are kept for the key-similarity monitor.
    ///
    /// Across ranks, as the official DDP code: every BatchNorm is SyncBatchNorm (the statistics of
    /// the whole global batch), and each rank's queries meet the keys of the whole global batch,
    /// gathered, with their positives at their rows' places in it.
    fn forward_step_v3(&mut self, x1: &Tensor, x2: &Tensor, m: f64) -> anyhow::Result<StepOutput> {
        let sync = SyncScope::enter(self.parallel.as_ref());
        let q1 = self.query.predict(x1);
        let q2 = self.query.predict(x2);
        self.momentum_update(m);
        let (k1, k2) =
            tch::no_grad(|| (self.key.project(x1, true, 1), self.key.project(x2, true, 1)));
        sync.finish()?;
        let (terms, k1, k2) = match &self.parallel {
            None => (
                vec![
                    in_batch(&q1, &k2, self.temperature),
                    in_batch(&q2, &k1, self.temperature),
                ],
                k1,
                k2,
            ),
            Some(p) => {
                let (k1, k2) = (p.gather_rows(&k1)?, p.gather_rows(&k2)?);
                let positives = p.global_positions(q1.size()[0] as usize, q1.device());
                (
                    vec![
                        in_batch_at(&q1, &k2, &positives, self.temperature),
                        in_batch_at(&q2, &k1, &positives, self.temperature),
                    ],
                    k1,
                    k2,
                )
            }
        };
        let loss = &terms[0].loss + &terms[1].loss;
        let keys = tch::no_grad(|| Tensor::cat(&[normalize(&k1), normalize(&k2)], 0));
        Ok(StepOutput {
            loss,
            terms,
            keys,
            bank_update: None,
        })
    }

    /// ‖θq − θk‖ / ‖θq‖ over the mirrored parameters, as a device scalar; 0 when the mechanism
    /// has no momentum encoder.
    pub fn drift(&self) -> Tensor {
        let _guard = tch::no_grad_guard();
        if !self.has_momentum_encoder() {
            return scalar_zero(self.queue.keys.device());
        }
        let q = self.mirrored();
        (&q - self.key.store.flat()).norm() / q.norm().clamp_min(1e-12)
    }
}

/// Shuffle BN's key pass (facebookresearch/moco builder.py `_batch_shuffle_ddp`, the encoder,
/// `_batch_unshuffle_ddp`): the global batch is permuted, each process encodes its rows of the
/// permuted batch (its BatchNorm groups are random subsets), and the results are put back in
/// order. Returns this process's rows of the result and all of it. The permutation comes from the
/// step's seeded stream, which every rank draws alike, so it needs no broadcast from rank 0.
pub fn shuffled_encode(
    x: &Tensor,
    parallel: Option<&DataParallel>,
    rng: &mut ChaCha8Rng,
    encode: impl FnOnce(&Tensor) -> Tensor,
) -> anyhow::Result<(Tensor, Tensor)> {
    Ok(match parallel {
        None => {
            let shuffle = Shuffle::new(x.size()[0], rng, x.device());
            let k = shuffle.undo(&encode(&shuffle.apply(x)));
            (k.shallow_clone(), k)
        }
        Some(p) => {
            let all = p.gather_rows(x)?;
            let shuffle = Shuffle::new(all.size()[0], rng, x.device());
            let mine = encode(&p.local_rows(&shuffle.apply(&all)));
            let k = shuffle.undo(&p.gather_rows(&mine)?);
            (p.local_rows(&k), k)
        }
    })
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
