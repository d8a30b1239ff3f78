//! Run configuration: every setting of a MoCo run, declared once.
//!
//! `RunConfig` is the declaration: each field's type, its doc comment (the help text), and its
//! schemars attributes (label as `title`, range or length, and `x-group`, the section of the form
//! it belongs to) make the JSON schema that `settings` reads. From that one schema come the range
//! checks of `validation`, the dashboard's form, the OpenAPI schema and the README's settings
//! table; the presets (`presets`) give every field's defaults. Overrides (`overrides`) are
//! applied on the JSON form of the config, so the CLI (`key=value`), TOML files, the form and the
//! JSON API share one path, and every error names the field it is about. The offline evaluations'
//! settings (`probe`) are declared, overridden and checked the same way.
pub mod choices;
pub mod devices;
mod overrides;
mod presets;
pub mod probe;
pub mod settings;
mod validation;

pub use choices::*;
pub(crate) use overrides::from_json_value;
pub use probe::{KnnConfig, ProbeConfig};
pub use validation::{describe_errors, queue_rule, FieldError};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a run's images come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    /// The dataset's format.
    #[schemars(title = "Dataset kind", extend("x-group" = "run", "x-resume" = "shape"))]
    pub kind: DatasetKind,
    /// Relative to the data directory (the server refuses anything that resolves outside it);
    /// unused for the synthetic set.
    #[serde(default)]
    #[schemars(title = "Dataset path", extend("x-group" = "run", "x-resume" = "shape"))]
    pub path: Option<String>,
    /// Built-in synthetic set only.
    #[serde(default = "default_synthetic_train")]
    #[schemars(
        title = "Synthetic: training images",
        range(min = 10, max = 1_000_000),
        extend("x-group" = "data", "x-resume" = "shape")
    )]
    pub synthetic_train: usize,
    /// Built-in synthetic set only; the kNN monitor queries these.
    #[serde(default = "default_synthetic_test")]
    #[schemars(
        title = "Synthetic: held-out images",
        range(min = 10, max = 1_000_000),
        extend("x-group" = "data", "x-resume" = "shape")
    )]
    pub synthetic_test: usize,
    /// Side in pixels of the synthetic images.
    #[serde(default = "default_synthetic_size")]
    #[schemars(
        title = "Synthetic: image side",
        range(min = 8, max = 512),
        extend("x-group" = "data", "x-resume" = "shape")
    )]
    pub synthetic_image_size: usize,
    /// Image folders: every image is decoded and resized once to this square side before the
    /// batched augmentation crops from it (0 = crop size × 8/7, as ImageNet's 256 for 224).
    #[serde(default)]
    #[schemars(title = "Load size", range(max = 2048), extend("x-group" = "data", "x-resume" = "shape"))]
    pub load_size: usize,
    /// Image folders: keep the decoded images in memory (small sets).
    #[serde(default)]
    #[schemars(title = "Keep decoded images in memory", extend("x-group" = "data"))]
    pub cache: bool,
    /// STL-10: pre-train on train + the 100 000 unlabeled images.
    #[serde(default)]
    #[schemars(title = "Use STL-10's unlabeled split", extend("x-group" = "data", "x-resume" = "shape"))]
    pub use_unlabeled: bool,
    /// Skip unreadable files (counted and reported) instead of failing the run.
    #[serde(default)]
    #[schemars(title = "Skip unreadable files", extend("x-group" = "data"))]
    pub skip_corrupt: bool,
}

fn default_true() -> bool {
    true
}

// What configs stored before these settings existed were trained with.
fn default_head_layers() -> i64 {
    2
}
fn default_patch_size() -> i64 {
    16
}
fn default_framework() -> Framework {
    Framework::Moco
}
fn default_mechanism() -> Mechanism {
    Mechanism::Moco
}
fn default_devices() -> i64 {
    1
}
/// DistributedDataParallel's default bucket_cap_mb.
fn default_bucket_cap_mb() -> f64 {
    25.0
}
fn default_bn_stats_across_ranks() -> BnStatsAcrossRanks {
    BnStatsAcrossRanks::Mean
}
fn default_bank_momentum() -> f64 {
    0.5
}
fn default_predictor_layers() -> i64 {
    2
}
fn default_optimizer() -> OptimizerKind {
    OptimizerKind::Sgd
}
fn default_lars_trust() -> f64 {
    0.001
}
fn default_grad_spike_factor() -> f64 {
    5.0
}

fn default_synthetic_train() -> usize {
    5000
}
fn default_synthetic_test() -> usize {
    1000
}
fn default_synthetic_size() -> usize {
    32
}

impl DatasetConfig {
    pub fn synthetic() -> Self {
        DatasetConfig {
            kind: DatasetKind::Synthetic,
            path: None,
            synthetic_train: default_synthetic_train(),
            synthetic_test: default_synthetic_test(),
            synthetic_image_size: default_synthetic_size(),
            load_size: 0,
            cache: false,
            use_unlabeled: false,
            skip_corrupt: false,
        }
    }

    /// A short label for lists: "synthetic" or "cifar10:cifar-10-batches-bin".
    pub fn label(&self) -> String {
        match &self.path {
            Some(p) => format!("{}:{}", self.kind.name(), p),
            None => self.kind.name().to_string(),
        }
    }
}

/// Every setting of a MoCo run. Field names are the names used by the CLI, the TOML file, the
/// JSON API and the dashboard form; as a request body, any subset (the rest comes from the
/// preset).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Optional; shown in lists and charts.
    #[schemars(title = "Name", length(max = 100), extend("x-group" = "basics"))]
    pub name: String,
    /// The paper's settings every other value starts from.
    #[schemars(title = "Preset", extend("x-group" = "run"))]
    pub preset: Preset,
    pub dataset: DatasetConfig,

    // Basics.
    /// Passes over the training split.
    #[schemars(title = "Epochs", range(min = 1, max = 10_000), extend("x-group" = "basics", "x-resume" = "trajectory"))]
    pub epochs: i64,
    /// Images per step. queue_size must be a multiple of it (of 2 × batch_size with the
    /// symmetric loss).
    #[schemars(title = "Batch size", range(min = 1, max = 65536), extend("x-group" = "basics", "x-resume" = "shape"))]
    pub batch_size: i64,
    /// auto (a GPU when there is one), cpu or cuda:N; with several processes, the first GPU
    /// (the next ones follow) or a list with one per process (cuda:0,cuda:2).
    #[schemars(title = "Device", extend("x-group" = "basics"))]
    pub device: String,
    /// Processes the run trains on, data parallel over PyTorch's c10d: with device cpu, CPU
    /// processes over Gloo sharing the cores; with GPUs, one per GPU over NCCL. batch_size is
    /// the global batch, split evenly; a resume may change the count.
    #[serde(default = "default_devices")]
    #[schemars(title = "Processes", range(min = 1, max = 256), extend("x-group" = "basics", "x-resume" = "free"))]
    pub devices: i64,

    // Encoder and head.
    /// Side in pixels of the augmented crops fed to the encoder.
    #[schemars(title = "Crop size", range(min = 8, max = 1024), extend("x-group" = "encoder", "x-resume" = "trajectory"))]
    pub image_size: i64,
    /// The ResNet depth.
    #[schemars(title = "Backbone", extend("x-group" = "encoder", "x-resume" = "shape"))]
    pub arch: Arch,
    /// imagenet: 7×7 stride 2 + max-pool; cifar: 3×3 stride 1 for small images.
    #[schemars(title = "Stem", extend("x-group" = "encoder", "x-resume" = "shape"))]
    pub stem: Stem,
    /// Base channels of the ResNet (64 in torchvision; 8–32 for cheap runs).
    #[schemars(
        title = "Width",
        range(min = 4, max = 256),
        extend("multipleOf" = 4, "x-group" = "encoder", "x-resume" = "shape")
    )]
    pub width: i64,
    /// v1: linear; v2: MLP; v3: MoCo v3's projector, Linear → BatchNorm → ReLU per hidden layer
    /// and a last BatchNorm without affine parameters (head_layers layers).
    #[schemars(title = "Projection head", extend("x-group" = "encoder", "x-resume" = "shape"))]
    pub head: HeadKind,
    /// Hidden width of the MLP head (and of v3's predictor); 0 = the backbone's feature width, as
    /// the official v2.
    #[schemars(
        title = "MLP hidden width",
        range(min = 0, max = 65536),
        extend("x-group" = "encoder")
    )]
    pub head_hidden: i64,
    /// ViTs: the side of the square patches (16 as ViT-S/16 and ViT-B/16; 4 for 32×32 images);
    /// the crop size must be a multiple of it.
    #[serde(default = "default_patch_size")]
    #[schemars(
        title = "ViT patch size",
        range(min = 2, max = 64),
        extend("x-group" = "encoder", "x-resume" = "shape")
    )]
    pub patch_size: i64,
    /// ViTs: the random patch projection never trains (MoCo v3's `--stop-grad-conv1`, its
    /// stability trick).
    #[serde(default)]
    #[schemars(title = "Freeze the patch projection", extend("x-group" = "encoder", "x-resume" = "trajectory"))]
    pub freeze_patch_embed: bool,
    /// Layers of the v3 head (MoCo v3: 2 for ResNets, 3 for ViTs).
    #[serde(default = "default_head_layers")]
    #[schemars(
        title = "v3 head layers",
        range(min = 1, max = 8),
        extend("x-group" = "encoder", "x-resume" = "shape")
    )]
    pub head_layers: i64,
    /// The last BatchNorm of every residual block starts at 0, so each block starts as the
    /// identity (torchvision's zero_init_residual, which MoCo v3 sets).
    #[serde(default)]
    #[schemars(title = "Zero-init residuals", extend("x-group" = "encoder", "x-resume" = "trajectory"))]
    pub zero_init_residual: bool,
    /// Output of the head (the contrastive embedding).
    #[schemars(
        title = "Embedding dimension",
        range(min = 1, max = 65536),
        extend("x-group" = "encoder", "x-resume" = "shape")
    )]
    pub dim: i64,

    // MoCo.
    /// moco: v1/v2's queue of negatives with shuffle BN; v3: the other view's keys of the batch
    /// as negatives, a predictor, BatchNorm over the whole batch.
    #[serde(default = "default_framework")]
    #[schemars(title = "Framework", extend("x-group" = "moco", "x-resume" = "shape"))]
    pub framework: Framework,
    /// The moco framework's keys: a momentum encoder and a queue (moco), the query encoder with
    /// gradient and the batch as negatives (end_to_end), or a memory bank of every image's
    /// feature (memory_bank) — the MoCo paper's three mechanisms.
    #[serde(default = "default_mechanism")]
    #[schemars(title = "Mechanism", extend("x-group" = "moco", "x-resume" = "shape"))]
    pub mechanism: Mechanism,
    /// memory_bank: an image's entry becomes m·entry + (1 − m)·q, made unit length (0.5 as Wu et
    /// al. 2018).
    #[serde(default = "default_bank_momentum")]
    #[schemars(
        title = "Memory bank momentum",
        range(min = 0),
        extend("exclusiveMaximum" = 1, "x-group" = "moco", "x-resume" = "trajectory")
    )]
    pub bank_momentum: f64,
    /// MoCo v3's predictor after the projector (hidden width head_hidden, no BatchNorm at the
    /// end for ResNets): its layers. Only the query side has one.
    #[serde(default = "default_predictor_layers")]
    #[schemars(
        title = "v3 predictor layers",
        range(min = 1, max = 8),
        extend("x-group" = "moco", "x-resume" = "shape")
    )]
    pub predictor_layers: i64,
    /// Logits are divided by T.
    #[schemars(
        title = "Temperature T",
        range(max = 10),
        extend("exclusiveMinimum" = 0, "x-group" = "moco", "x-resume" = "trajectory")
    )]
    pub temperature: f64,
    /// θk ← m·θk + (1 − m)·θq after every step.
    #[schemars(
        title = "Key encoder momentum m",
        range(min = 0, max = 1),
        extend("x-group" = "moco", "x-resume" = "trajectory")
    )]
    pub momentum: f64,
    /// cosine raises m to 1 over the run.
    #[schemars(title = "Momentum schedule", extend("x-group" = "moco", "x-resume" = "trajectory"))]
    pub momentum_schedule: MomentumSchedule,
    /// K: negative keys kept in the queue (the moco mechanism), or drawn from the memory bank
    /// each step (memory_bank); end_to_end and v3 have none.
    #[schemars(title = "Queue size K", range(min = 1, max = 4_194_304), extend("x-group" = "moco", "x-resume" = "shape"))]
    pub queue_size: i64,
    /// L(x1, x2) + L(x2, x1); both key sets are enqueued, so K must be a multiple of
    /// 2 × batch_size. The v3 framework's loss is always symmetric.
    #[schemars(title = "Symmetric loss", extend("x-group" = "moco", "x-resume" = "shape"))]
    pub symmetric: bool,
    /// Sub-batches with their own BN statistics, emulating shuffle BN on one device (1 = plain
    /// BN); must divide batch_size.
    #[schemars(title = "Shuffle-BN splits", range(min = 1, max = 256), extend("x-group" = "moco", "x-resume" = "trajectory"))]
    pub shuffle_bn_splits: i64,
    /// With several processes (`train --nproc`): BatchNorm's running statistics after each step
    /// are the ranks' mean (what one process with the same BN groups keeps) or rank 0's (as
    /// DistributedDataParallel broadcasts them). They only matter for evaluation; one process
    /// has nothing to choose.
    #[serde(default = "default_bn_stats_across_ranks")]
    #[schemars(
        title = "BN statistics across ranks",
        extend("x-group" = "moco", "x-resume" = "free")
    )]
    pub bn_stats_across_ranks: BnStatsAcrossRanks,
    /// The query encoder's BatchNorm normalises over the whole global batch: SyncBatchNorm
    /// across ranks, one group on one process. The key encoder keeps shuffle BN. Off in the
    /// official v1/v2 code (BatchNorm per process); the v3 framework always does, as the official
    /// code converts its model to SyncBatchNorm.
    #[serde(default)]
    #[schemars(title = "SyncBN for queries", extend("x-group" = "moco", "x-resume" = "trajectory"))]
    pub sync_bn: bool,

    // Optimisation.
    /// The learning rate at lr_base_batch images per step.
    #[schemars(
        title = "Base learning rate",
        range(max = 100),
        extend("exclusiveMinimum" = 0, "x-group" = "optimisation", "x-resume" = "trajectory")
    )]
    pub base_lr: f64,
    /// Effective lr = base_lr × batch_size / lr_base_batch.
    #[schemars(title = "lr base batch", range(min = 1), extend("x-group" = "optimisation", "x-resume" = "trajectory"))]
    pub lr_base_batch: i64,
    /// step: ×lr_gamma at the milestones; cosine: half a cosine to 0.
    #[schemars(title = "lr schedule", extend("x-group" = "optimisation", "x-resume" = "trajectory"))]
    pub lr_schedule: LrSchedule,
    /// epoch: as the official v1/v2 code and the CIFAR demo; step: as MoCo v3. A warm-up always
    /// ramps per step.
    #[serde(default = "LrUpdate::stored_default")]
    #[schemars(title = "lr set every", extend("x-group" = "optimisation", "x-resume" = "trajectory"))]
    pub lr_update: LrUpdate,
    /// Per-epoch lr: the number the schedule gives the first epoch, 0 as main_moco.py, 1 as the
    /// CIFAR demo notebook (its last epoch then trains at lr 0).
    #[serde(default)]
    #[schemars(
        title = "First epoch's number",
        range(min = 0, max = 1),
        extend("x-group" = "optimisation", "x-resume" = "trajectory")
    )]
    pub lr_first_epoch: i64,
    /// Step schedule: fractions of the run where lr is multiplied by lr_gamma, e.g. 0.6, 0.8
    /// (v1's epochs 120 and 160 of 200), so changing epochs keeps the shape.
    #[schemars(title = "lr milestones", extend("x-group" = "optimisation", "x-resume" = "trajectory"))]
    pub lr_milestones: Vec<f64>,
    /// Factor at each milestone.
    #[schemars(
        title = "lr gamma",
        range(max = 1),
        extend("exclusiveMinimum" = 0, "x-group" = "optimisation", "x-resume" = "trajectory")
    )]
    pub lr_gamma: f64,
    /// Linear from 0, then the schedule over the remaining epochs (MoCo v3's warm-up).
    #[schemars(title = "Warm-up epochs", range(min = 0), extend("x-group" = "optimisation", "x-resume" = "trajectory"))]
    pub warmup_epochs: f64,
    /// sgd; lars (MoCo v3's for ResNets); adamw (MoCo v3's for ViTs; sgd_momentum unused).
    #[serde(default = "default_optimizer")]
    #[schemars(title = "Optimizer", extend("x-group" = "optimisation", "x-resume" = "trajectory"))]
    pub optimizer: OptimizerKind,
    /// LARS: a weight's step is scaled to this × ‖θ‖ / ‖g + wd·θ‖.
    #[serde(default = "default_lars_trust")]
    #[schemars(
        title = "LARS trust coefficient",
        range(max = 1),
        extend("exclusiveMinimum" = 0, "x-group" = "optimisation", "x-resume" = "trajectory")
    )]
    pub lars_trust: f64,
    /// Momentum of SGD (and of LARS).
    #[schemars(
        title = "SGD momentum",
        range(min = 0),
        extend("exclusiveMaximum" = 1, "x-group" = "optimisation", "x-resume" = "trajectory")
    )]
    pub sgd_momentum: f64,
    /// L2 penalty (LARS: on weight matrices and convolutions only).
    #[schemars(
        title = "Weight decay",
        range(min = 0, max = 1),
        extend("x-group" = "optimisation", "x-resume" = "trajectory")
    )]
    pub weight_decay: f64,
    /// No weight decay on BatchNorm parameters and biases.
    #[schemars(title = "No weight decay on BN and biases", extend("x-group" = "optimisation", "x-resume" = "trajectory"))]
    pub wd_exclude_bn_bias: bool,

    // Data.
    /// The run page shows a preview of the views.
    #[schemars(title = "Augmentation recipe", extend("x-group" = "data", "x-resume" = "trajectory"))]
    pub augmentation: AugRecipe,
    /// Smallest area fraction of the views' random resized crop; 0 = the recipe's own (0.2 for
    /// v1 and v2, 0.08 for cifar and v3; MoCo v3 sets 0.2 for ResNet-50).
    #[serde(default)]
    #[schemars(title = "Crop scale minimum", range(min = 0, max = 1), extend("x-group" = "data", "x-resume" = "trajectory"))]
    pub crop_min_scale: f64,
    /// The official mean/std constants of CIFAR or ImageNet, or measured on the training images
    /// (for your own data).
    #[serde(default = "Normalization::stored_default")]
    #[schemars(title = "Normalisation", extend("x-group" = "data", "x-resume" = "trajectory"))]
    pub normalization: Normalization,
    /// Batches prepared ahead of the trainer by the loader thread.
    #[schemars(title = "Prefetched batches", range(min = 1, max = 64), extend("x-group" = "data"))]
    pub prefetch: usize,
    /// Decode threads of the loader; 0 = one per core.
    #[schemars(title = "Loader threads", range(max = 256), extend("x-group" = "data"))]
    pub loader_threads: usize,

    // Speed.
    /// auto = bf16 autocast on a GPU that has it (fp16 with loss scaling on older ones), fp32 on
    /// the CPU.
    #[serde(default)]
    #[schemars(title = "Precision", extend("x-group" = "speed"))]
    pub precision: Precision,
    /// auto = channels_last on a GPU, contiguous on the CPU.
    #[serde(default)]
    #[schemars(title = "Memory format", extend("x-group" = "speed"))]
    pub memory_format: MemoryFormat,
    /// With several processes: the gradient is all-reduced in buckets of this many MiB, each
    /// started while backward still computes the layers before it; the first bucket holds at
    /// most 1 MiB (DistributedDataParallel's bucket_cap_mb and first bucket). A bucket larger
    /// than the encoder's gradient gives one all-reduce at the end of backward.
    #[serde(default = "default_bucket_cap_mb")]
    #[schemars(
        title = "Gradient bucket (MiB)",
        range(max = 65536),
        extend("exclusiveMinimum" = 0, "x-group" = "speed")
    )]
    pub bucket_cap_mb: f64,

    // Monitoring and checkpoints.
    /// Seeds the initial weights, the epoch order and the augmentations.
    #[schemars(title = "Seed", extend("x-group" = "monitoring", "x-resume" = "trajectory"))]
    pub seed: u64,
    /// How often values are read from the device and charted.
    #[schemars(
        title = "Metrics every N steps",
        range(min = 1, max = 1_000_000),
        extend("x-group" = "monitoring")
    )]
    pub metrics_every: i64,
    /// Weighted kNN monitor every E epochs; 0 = never, always after the last epoch otherwise.
    #[schemars(title = "kNN every E epochs", range(min = 0), extend("x-group" = "monitoring"))]
    pub knn_every: i64,
    /// Evaluated before training and shown as epoch 0, the baseline learning is seen against;
    /// switch off for very large sets.
    #[serde(default = "default_true")]
    #[schemars(title = "kNN of the untrained encoder", extend("x-group" = "monitoring"))]
    pub knn_baseline: bool,
    /// Neighbours that vote.
    #[schemars(title = "kNN k", range(min = 1, max = 10_000), extend("x-group" = "monitoring"))]
    pub knn_k: i64,
    /// Temperature of the neighbours' weights.
    #[schemars(
        title = "kNN temperature",
        extend("exclusiveMinimum" = 0, "x-group" = "monitoring")
    )]
    pub knn_t: f64,
    /// backbone: the pooled features; head: the head's output, as the CIFAR demo.
    #[schemars(title = "kNN features", extend("x-group" = "monitoring"))]
    pub knn_features: KnnFeatures,
    /// At most this many training images in the bank; 0 = all.
    #[schemars(title = "kNN bank limit", extend("x-group" = "monitoring"))]
    pub knn_bank_limit: usize,
    /// Full checkpoint every E epochs; 0 = only at the end and on cancel.
    #[schemars(
        title = "Checkpoint every E epochs",
        range(min = 0),
        extend("x-group" = "monitoring")
    )]
    pub checkpoint_every: i64,
    /// A warning is logged when the largest gradient norm of an interval (the whole encoder's,
    /// or the first layer's) exceeds this multiple of its running median: the MoCo v3 paper
    /// traces unstable training to such spikes.
    #[serde(default = "default_grad_spike_factor")]
    #[schemars(
        title = "Gradient spike factor",
        range(max = 1000),
        extend("exclusiveMinimum" = 1, "x-group" = "monitoring")
    )]
    pub grad_spike_factor: f64,
    /// The run fails as collapsed when the queue's mean similarity exceeds it while the
    /// positive logit no longer stands out from the negatives (two metric records in a row).
    #[schemars(
        title = "Collapse threshold",
        range(max = 1),
        extend("exclusiveMinimum" = 0, "x-group" = "monitoring")
    )]
    pub collapse_threshold: f64,
}

impl RunConfig {
    /// The learning rate after the linear scaling rule: base_lr × batch_size / lr_base_batch.
    pub fn effective_lr(&self) -> f64 {
        self.base_lr * self.batch_size as f64 / self.lr_base_batch as f64
    }

    /// Keys written to the queue per step (2 × batch with the symmetric loss).
    pub fn keys_per_step(&self) -> i64 {
        keys_per_step(self.batch_size, self.symmetric_loss())
    }

    /// Both views are encoded by both encoders: the symmetric loss, and always in MoCo v3.
    pub fn symmetric_loss(&self) -> bool {
        self.symmetric || self.framework == Framework::V3
    }

    /// The queue the model keeps: K past keys (the moco mechanism), or the current batch's keys
    /// (the others and v3, which keep them only for the key-similarity monitor).
    pub fn queue_len(&self) -> i64 {
        match (self.framework, self.mechanism) {
            (Framework::Moco, Mechanism::Moco) => self.queue_size,
            _ => self.keys_per_step(),
        }
    }

    /// The mechanism that actually runs: v3 has its own in-batch keys and momentum encoder.
    pub fn effective_mechanism(&self) -> Option<Mechanism> {
        (self.framework == Framework::Moco).then_some(self.mechanism)
    }

    /// K, the negatives each query is contrasted with: the queue or the bank draw, the other
    /// keys of the batch (end_to_end and v3).
    pub fn negatives(&self) -> i64 {
        match self.effective_mechanism() {
            Some(Mechanism::Moco | Mechanism::MemoryBank) => self.queue_size,
            Some(Mechanism::EndToEnd) | None => self.batch_size - 1,
        }
    }

    /// Width of the backbone's feature (512 × width/64 for R18/34, 2048 × width/64 for R50, the
    /// embedding width for ViTs).
    pub fn feature_dim(&self) -> i64 {
        if let Some(shape) = crate::moco::vit::VitShape::of(self.arch) {
            return shape.dim;
        }
        let expansion = if self.arch == Arch::Resnet50 { 4 } else { 1 };
        8 * self.width * expansion
    }

    pub fn head_hidden_dim(&self) -> i64 {
        if self.head_hidden > 0 {
            self.head_hidden
        } else {
            self.feature_dim()
        }
    }

    /// What the backbone is built from.
    pub fn backbone_spec(&self) -> crate::moco::backbone::BackboneSpec {
        crate::moco::backbone::BackboneSpec {
            arch: self.arch,
            stem: self.stem,
            width: self.width,
            patch_size: self.patch_size,
            image_size: self.image_size,
            freeze_patch_embed: self.freeze_patch_embed,
        }
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("RunConfig serialises to TOML")
    }
}

/// Keys written to the queue per step: the batch, twice with the symmetric loss.
pub fn keys_per_step(batch_size: i64, symmetric: bool) -> i64 {
    if symmetric {
        2 * batch_size
    } else {
        batch_size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_stored_before_precision_existed_still_loads() {
        let mut stored = serde_json::to_value(RunConfig::preset(Preset::V2)).unwrap();
        let object = stored.as_object_mut().unwrap();
        object.remove("precision");
        object.remove("memory_format");
        let cfg: RunConfig = serde_json::from_value(stored).unwrap();
        assert_eq!(cfg.precision, Precision::Auto);
        assert_eq!(cfg.memory_format, MemoryFormat::Auto);
        assert_eq!(cfg.head, HeadKind::Mlp);
    }

    #[test]
    fn presets_are_valid() {
        for p in Preset::all() {
            RunConfig::preset(*p).validate().unwrap();
        }
    }

    #[test]
    fn effective_lr_follows_the_linear_rule() {
        let cfg = RunConfig::preset(Preset::Cifar)
            .with_overrides([("batch_size", serde_json::Value::from(256))])
            .unwrap();
        assert!((cfg.effective_lr() - 0.03).abs() < 1e-12);
    }
}
