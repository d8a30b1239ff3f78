//! Run configuration: every setting of a MoCo run, the papers' presets, overrides and validation.
//!
//! A run is always "a preset plus overrides". Overrides are applied on the JSON form of the config,
//! so the CLI (`key=value`), TOML files and the JSON API share one path, and every error names the
//! field it is about.
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// The papers' starting points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// MoCo v1 (He et al., 2019) on ImageNet.
    V1,
    /// MoCo v2 (Chen et al., 2020) on ImageNet.
    V2,
    /// The official CIFAR-10 demo: ResNet-18 with the CIFAR stem.
    Cifar,
    /// A few minutes on a CPU: a narrow ResNet-18 on the built-in set, to see MoCo learn.
    Demo,
}

impl Preset {
    pub const ALL: [Preset; 4] = [Preset::V1, Preset::V2, Preset::Cifar, Preset::Demo];

    pub fn name(self) -> &'static str {
        match self {
            Preset::V1 => "v1",
            Preset::V2 => "v2",
            Preset::Cifar => "cifar",
            Preset::Demo => "demo",
        }
    }

    pub fn parse(s: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.name() == s)
    }

    /// "v1, v2, cifar, demo": for error messages and help texts.
    pub fn names() -> String {
        Preset::ALL.map(Preset::name).join(", ")
    }

    /// The New run form's default: the CIFAR demo where a GPU trains it in reasonable time, the
    /// CPU demo otherwise.
    pub fn default_for(has_gpu: bool) -> Preset {
        if has_gpu {
            Preset::Cifar
        } else {
            Preset::Demo
        }
    }

    /// [`Preset::default_for`] this machine (the New run form's and the CLI's default).
    pub fn default_here() -> Preset {
        Preset::default_for(tch::Cuda::is_available())
    }

    pub fn description(self) -> &'static str {
        match self {
            Preset::V1 => "MoCo v1: linear head, T=0.07, K=65536, step lr 0.03×B/256",
            Preset::V2 => "MoCo v2: MLP head, blur, stronger jitter, T=0.2, cosine lr",
            Preset::Cifar => "CIFAR demo: ResNet-18 CIFAR stem, T=0.1, m=0.99, K=4096, cosine lr",
            Preset::Demo => {
                "CPU demo: ResNet-18 width 16 on the built-in shapes, a few minutes on 2 cores"
            }
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Resnet18,
    Resnet34,
    Resnet50,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Resnet18 => "resnet18",
            Arch::Resnet34 => "resnet34",
            Arch::Resnet50 => "resnet50",
        }
    }
}

/// The first layers of the ResNet: ImageNet (7×7 stride 2 + max-pool) or CIFAR (3×3 stride 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stem {
    Imagenet,
    Cifar,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadKind {
    /// v1: one linear layer to `dim`.
    Linear,
    /// v2: Linear → ReLU → Linear to `dim`.
    Mlp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AugRecipe {
    V1,
    V2,
    Cifar,
    /// MoCo v3 / BYOL asymmetric views (blur and solarize differ between the two views).
    V3,
}

impl AugRecipe {
    pub fn name(self) -> &'static str {
        match self {
            AugRecipe::V1 => "v1",
            AugRecipe::V2 => "v2",
            AugRecipe::Cifar => "cifar",
            AugRecipe::V3 => "v3",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// Multiply by `lr_gamma` at each epoch of `lr_milestones`.
    Step,
    Cosine,
}

/// How often the learning rate is set. The official MoCo v1/v2 code and the CIFAR demo set it once
/// per epoch (`adjust_learning_rate(optimizer, epoch, args)`); MoCo v3 sets it every step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrUpdate {
    Epoch,
    Step,
}

impl LrUpdate {
    /// Configs stored before this setting existed were trained with per-step updates.
    fn stored_default() -> LrUpdate {
        LrUpdate::Step
    }
}

/// The per-channel mean and std the images are normalised with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Normalization {
    /// The CIFAR demo's constants: mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010).
    Cifar,
    /// torchvision's ImageNet constants: mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
    Imagenet,
    /// Measured on a sample of the training images (for users' own data).
    Measured,
}

impl Normalization {
    /// The constants, or None where they are measured on the dataset.
    pub fn constants(self) -> Option<([f64; 3], [f64; 3])> {
        match self {
            Normalization::Cifar => Some(([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010])),
            Normalization::Imagenet => Some(([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])),
            Normalization::Measured => None,
        }
    }

    /// (mean, std) for a dataset whose measured statistics are `measured`.
    pub fn resolve(self, measured: ([f64; 3], [f64; 3])) -> ([f64; 3], [f64; 3]) {
        self.constants().unwrap_or(measured)
    }

    /// Configs stored before this setting existed were normalised with measured statistics.
    fn stored_default() -> Normalization {
        Normalization::Measured
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MomentumSchedule {
    Constant,
    /// m rises from `momentum` to 1 along a half cosine over the run (BYOL / MoCo v3).
    Cosine,
}

/// Arithmetic of the forward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 autocast on a CUDA device that computes in bf16 natively, fp16 with loss scaling on
    /// older ones, fp32 on the CPU.
    #[default]
    Auto,
    Fp32,
    /// Autocast in bfloat16: fp32's range, so no loss scaling is needed.
    Bf16,
    /// Autocast in float16 with dynamic loss scaling (steps whose gradients overflow are skipped).
    Fp16,
}

/// Memory layout of images and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryFormat {
    /// channels_last on CUDA (cuDNN's tensor-core convolutions work in NHWC), contiguous on the
    /// CPU.
    #[default]
    Auto,
    ChannelsLast,
    Contiguous,
}

impl MemoryFormat {
    /// Whether activations are kept channels_last on `device`.
    pub fn channels_last_on(self, device: tch::Device) -> bool {
        match self {
            MemoryFormat::Auto => device.is_cuda(),
            MemoryFormat::ChannelsLast => true,
            MemoryFormat::Contiguous => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KnnFeatures {
    Backbone,
    Head,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetKind {
    /// Procedurally drawn shapes, built in: needs no download.
    Synthetic,
    /// CIFAR-10 in its distributed binary format (`cifar-10-batches-bin`).
    Cifar10,
    /// CIFAR-100 in its distributed binary format (`cifar-100-binary`).
    Cifar100,
    /// STL-10 binary (`stl10_binary`); its unlabeled split can be used for pre-training.
    Stl10,
    /// `root/<class>/*.{jpg,png}`, or `root/train/<class>/…` with `root/test/<class>/…`.
    ImageFolder,
}

impl DatasetKind {
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Synthetic => "synthetic",
            DatasetKind::Cifar10 => "cifar10",
            DatasetKind::Cifar100 => "cifar100",
            DatasetKind::Stl10 => "stl10",
            DatasetKind::ImageFolder => "image_folder",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetConfig {
    pub kind: DatasetKind,
    /// Relative to the data directory (the server refuses anything that resolves outside it).
    /// Unused for the synthetic set.
    #[serde(default)]
    pub path: Option<String>,
    /// Images per split of the synthetic set.
    #[serde(default = "default_synthetic_train")]
    pub synthetic_train: usize,
    #[serde(default = "default_synthetic_test")]
    pub synthetic_test: usize,
    /// Side of the synthetic images.
    #[serde(default = "default_synthetic_size")]
    pub synthetic_image_size: usize,
    /// Image folders: every image is decoded and resized once to this square side before the
    /// batched augmentation crops from it (0 = the crop size × 8/7, as ImageNet's 256 for 224).
    #[serde(default)]
    pub load_size: usize,
    /// Keep decoded images in memory (image folders; small sets).
    #[serde(default)]
    pub cache: bool,
    /// STL-10: pre-train on train + unlabeled (100k) images.
    #[serde(default)]
    pub use_unlabeled: bool,
    /// Skip unreadable files (counted and reported) instead of failing.
    #[serde(default)]
    pub skip_corrupt: bool,
}

fn default_true() -> bool {
    true
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

/// Everything a MoCo run needs. Field names are the names used by the CLI, the TOML file, the
/// JSON API and the dashboard form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub name: String,
    pub preset: Preset,
    pub dataset: DatasetConfig,
    /// Side of the augmented crops fed to the encoder.
    pub image_size: i64,

    // Encoder and head.
    pub arch: Arch,
    pub stem: Stem,
    /// Base width of the ResNet (64 in torchvision; 16 or 32 for cheap runs).
    pub width: i64,
    pub head: HeadKind,
    /// Hidden width of the MLP head (v2: 2048 for ResNet-50); 0 = the backbone's feature width.
    pub head_hidden: i64,
    /// Output dimension of the head (the contrastive embedding).
    pub dim: i64,

    // MoCo.
    pub temperature: f64,
    pub momentum: f64,
    pub momentum_schedule: MomentumSchedule,
    /// K: number of negative keys in the queue.
    pub queue_size: i64,
    /// Symmetric loss: L(x1, x2) + L(x2, x1), both key sets enqueued.
    pub symmetric: bool,
    /// Split-BN sub-batches that emulate shuffle BN on one device (1 = plain BN).
    pub shuffle_bn_splits: i64,

    // Optimisation.
    pub batch_size: i64,
    pub epochs: i64,
    /// Learning rate at `lr_base_batch`; the effective lr is base_lr × batch_size / lr_base_batch.
    pub base_lr: f64,
    pub lr_base_batch: i64,
    pub lr_schedule: LrSchedule,
    /// Set the lr once per epoch (the official v1/v2 and CIFAR demo code) or every step.
    #[serde(default = "LrUpdate::stored_default")]
    pub lr_update: LrUpdate,
    /// With per-epoch updates, the number the schedule gives the first epoch: 0 as main_moco.py
    /// (`range(start_epoch, epochs)`), 1 as the CIFAR demo notebook (`range(1, epochs + 1)`),
    /// whose last epoch then trains at lr 0 on the cosine.
    #[serde(default)]
    pub lr_first_epoch: i64,
    /// Step schedule: where lr is multiplied by `lr_gamma`, as fractions of the run
    /// (v1's epochs 120 and 160 of 200 are 0.6 and 0.8), so changing `epochs` keeps the shape.
    pub lr_milestones: Vec<f64>,
    pub lr_gamma: f64,
    /// Linear warm-up from 0 over these epochs, then the schedule over the remaining epochs
    /// (MoCo v3's `adjust_learning_rate`).
    pub warmup_epochs: f64,
    pub sgd_momentum: f64,
    pub weight_decay: f64,
    /// No weight decay on BatchNorm parameters and biases.
    pub wd_exclude_bn_bias: bool,

    // Data.
    pub augmentation: AugRecipe,
    /// The mean/std images are normalised with: the official constants, or measured on the data.
    #[serde(default = "Normalization::stored_default")]
    pub normalization: Normalization,
    /// Batches prepared ahead of the trainer by the loader thread.
    pub prefetch: usize,
    /// Decode threads of the loader (0 = number of cores).
    pub loader_threads: usize,

    // Monitoring.
    pub seed: u64,
    /// "auto", "cpu" or "cuda:N".
    pub device: String,
    /// auto, fp32, bf16 or fp16 (see `Precision`).
    #[serde(default)]
    pub precision: Precision,
    /// auto, channels_last or contiguous (see `MemoryFormat`).
    #[serde(default)]
    pub memory_format: MemoryFormat,
    /// Read metrics from the device every N steps.
    pub metrics_every: i64,
    /// Weighted kNN monitor every E epochs (0 = never; always after the last epoch otherwise).
    pub knn_every: i64,
    /// Also evaluate the untrained encoder, reported as epoch 0: the baseline learning is seen
    /// against (switch off for very large sets, where one evaluation is costly).
    #[serde(default = "default_true")]
    pub knn_baseline: bool,
    pub knn_k: i64,
    pub knn_t: f64,
    pub knn_features: KnnFeatures,
    /// At most this many training images form the kNN bank (0 = all).
    pub knn_bank_limit: usize,
    /// Full checkpoint every N epochs (0 = only at the end and on cancel).
    pub checkpoint_every: i64,
    /// Fail the run as collapsed when the mean pairwise similarity of the queue exceeds this while
    /// the positive logit no longer stands out from the negatives (two metric records in a row).
    pub collapse_threshold: f64,
}

impl RunConfig {
    pub fn preset(preset: Preset) -> RunConfig {
        let imagenet = RunConfig {
            name: String::new(),
            preset,
            dataset: DatasetConfig::synthetic(),
            image_size: 224,
            arch: Arch::Resnet50,
            stem: Stem::Imagenet,
            width: 64,
            head: HeadKind::Linear,
            head_hidden: 0,
            dim: 128,
            temperature: 0.07,
            momentum: 0.999,
            momentum_schedule: MomentumSchedule::Constant,
            queue_size: 65536,
            symmetric: false,
            shuffle_bn_splits: 8,
            batch_size: 256,
            epochs: 200,
            base_lr: 0.03,
            lr_base_batch: 256,
            lr_schedule: LrSchedule::Step,
            lr_update: LrUpdate::Epoch,
            lr_first_epoch: 0,
            lr_milestones: vec![0.6, 0.8],
            lr_gamma: 0.1,
            warmup_epochs: 0.0,
            sgd_momentum: 0.9,
            weight_decay: 1e-4,
            wd_exclude_bn_bias: false,
            augmentation: AugRecipe::V1,
            normalization: Normalization::Imagenet,
            prefetch: 4,
            loader_threads: 0,
            seed: 0,
            device: "auto".into(),
            precision: Precision::Auto,
            memory_format: MemoryFormat::Auto,
            metrics_every: 10,
            knn_every: 1,
            knn_baseline: true,
            knn_k: 200,
            knn_t: 0.1,
            knn_features: KnnFeatures::Backbone,
            knn_bank_limit: 0,
            checkpoint_every: 10,
            collapse_threshold: 0.95,
        };
        // The official CIFAR-10 demo (moco_cifar10_demo.ipynb): its arguments as the notebook
        // sets them, lr set once per epoch, the kNN monitor on the head's output.
        let cifar = RunConfig {
            image_size: 32,
            arch: Arch::Resnet18,
            stem: Stem::Cifar,
            temperature: 0.1,
            momentum: 0.99,
            queue_size: 4096,
            batch_size: 512,
            epochs: 200,
            base_lr: 0.06,
            lr_base_batch: 512,
            lr_schedule: LrSchedule::Cosine,
            lr_first_epoch: 1,
            lr_milestones: vec![],
            weight_decay: 5e-4,
            augmentation: AugRecipe::Cifar,
            normalization: Normalization::Cifar,
            knn_every: 10,
            knn_features: KnnFeatures::Head,
            checkpoint_every: 10,
            ..imagenet.clone()
        };
        match preset {
            Preset::V1 => imagenet,
            Preset::V2 => RunConfig {
                head: HeadKind::Mlp,
                // The official builder.py: the MLP's hidden width is the backbone's feature width
                // (`dim_mlp = encoder_q.fc.weight.shape[1]`, 2048 for ResNet-50).
                head_hidden: 0,
                temperature: 0.2,
                lr_schedule: LrSchedule::Cosine,
                lr_milestones: vec![],
                augmentation: AugRecipe::V2,
                ..imagenet
            },
            Preset::Cifar => cifar,
            // The demo's recipe on a budget two CPU cores train in a few minutes: a narrow
            // ResNet-18 on the built-in shapes, a queue well below the set's size.
            Preset::Demo => RunConfig {
                width: 16,
                batch_size: 128,
                queue_size: 1024,
                epochs: 8,
                base_lr: 0.06,
                lr_base_batch: 128,
                // Counted from 0, so the short run's last epoch still learns.
                lr_first_epoch: 0,
                knn_every: 2,
                knn_k: 50,
                checkpoint_every: 0,
                metrics_every: 5,
                ..cifar
            },
        }
    }

    /// The learning rate after the linear scaling rule: base_lr × batch_size / lr_base_batch.
    pub fn effective_lr(&self) -> f64 {
        self.base_lr * self.batch_size as f64 / self.lr_base_batch as f64
    }

    /// Keys written to the queue per step (2 × batch with the symmetric loss).
    pub fn keys_per_step(&self) -> i64 {
        if self.symmetric {
            2 * self.batch_size
        } else {
            self.batch_size
        }
    }

    /// Width of the backbone's pooled feature (512 × width/64 for R18/34, 2048 × width/64 for R50).
    pub fn feature_dim(&self) -> i64 {
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

    /// Every rule a run must satisfy before anything starts. All violations are returned, each
    /// naming its field.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        fn push(errors: &mut Vec<FieldError>, ok: bool, field: &str, message: String) {
            if !ok {
                errors.push(FieldError::new(field, message));
            }
        }
        macro_rules! check {
            ($ok:expr, $field:expr, $msg:expr $(,)?) => {
                push(&mut errors, $ok, $field, $msg)
            };
        }
        check!(
            self.name.chars().count() <= 100,
            "name",
            "must be at most 100 characters".into(),
        );
        check!(
            self.name.chars().all(|c| !c.is_control()),
            "name",
            "must not contain control characters".into(),
        );
        check!(
            (8..=1024).contains(&self.image_size),
            "image_size",
            format!("must be between 8 and 1024, got {}", self.image_size),
        );
        check!(
            (4..=256).contains(&self.width) && self.width % 4 == 0,
            "width",
            format!(
                "must be a multiple of 4 between 4 and 256, got {}",
                self.width
            ),
        );
        check!(
            (1..=65536).contains(&self.dim),
            "dim",
            format!("must be between 1 and 65536, got {}", self.dim),
        );
        check!(
            (0..=65536).contains(&self.head_hidden),
            "head_hidden",
            format!("must be between 0 and 65536, got {}", self.head_hidden),
        );
        check!(
            self.temperature.is_finite() && self.temperature > 0.0 && self.temperature <= 10.0,
            "temperature",
            format!("must be in (0, 10], got {}", self.temperature),
        );
        check!(
            self.momentum.is_finite() && (0.0..=1.0).contains(&self.momentum),
            "momentum",
            format!("must be in [0, 1], got {}", self.momentum),
        );
        check!(
            (1..=65536).contains(&self.batch_size),
            "batch_size",
            format!("must be between 1 and 65536, got {}", self.batch_size),
        );
        check!(
            (1..=10_000).contains(&self.epochs),
            "epochs",
            format!("must be between 1 and 10000, got {}", self.epochs),
        );
        check!(
            self.queue_size >= 1 && self.queue_size <= 4_194_304,
            "queue_size",
            format!("must be between 1 and 4194304, got {}", self.queue_size),
        );
        let per_step = self.keys_per_step();
        if self.queue_size >= 1 && self.batch_size >= 1 && self.queue_size % per_step != 0 {
            let what = if self.symmetric {
                format!("2 × batch_size = {per_step} (symmetric loss enqueues both key sets)")
            } else {
                format!("batch_size = {per_step}")
            };
            let message = format!(
                "queue_size {} must be a multiple of the keys enqueued per step, {what}; \
                 e.g. {}",
                self.queue_size,
                ((self.queue_size / per_step).max(1)) * per_step
            );
            errors.push(FieldError::new("queue_size", message.clone()));
            errors.push(FieldError::new("batch_size", message));
        }
        check!(
            self.shuffle_bn_splits >= 1 && self.shuffle_bn_splits <= 256,
            "shuffle_bn_splits",
            format!("must be between 1 and 256, got {}", self.shuffle_bn_splits),
        );
        if self.shuffle_bn_splits >= 1 && self.batch_size >= 1 {
            check!(
                self.batch_size % self.shuffle_bn_splits == 0
                    && self.batch_size / self.shuffle_bn_splits >= 2,
                "shuffle_bn_splits",
                format!(
                    "batch_size {} must split into {} sub-batches of at least 2 images each",
                    self.batch_size, self.shuffle_bn_splits
                ),
            );
        }
        check!(
            self.base_lr.is_finite() && self.base_lr > 0.0 && self.base_lr <= 100.0,
            "base_lr",
            format!("must be in (0, 100], got {}", self.base_lr),
        );
        check!(
            self.lr_base_batch >= 1,
            "lr_base_batch",
            format!("must be at least 1, got {}", self.lr_base_batch),
        );
        if self.lr_schedule == LrSchedule::Step {
            let sorted = self.lr_milestones.windows(2).all(|w| w[0] < w[1]);
            let in_range = self
                .lr_milestones
                .iter()
                .all(|&f| f.is_finite() && f > 0.0 && f < 1.0);
            check!(
                sorted && in_range,
                "lr_milestones",
                format!(
                    "must be increasing fractions of the run in (0, 1), got {:?}",
                    self.lr_milestones
                ),
            );
        }
        check!(
            (0..=1).contains(&self.lr_first_epoch),
            "lr_first_epoch",
            format!("must be 0 or 1, got {}", self.lr_first_epoch),
        );
        check!(
            self.lr_gamma.is_finite() && self.lr_gamma > 0.0 && self.lr_gamma <= 1.0,
            "lr_gamma",
            format!("must be in (0, 1], got {}", self.lr_gamma),
        );
        check!(
            self.warmup_epochs.is_finite()
                && self.warmup_epochs >= 0.0
                && self.warmup_epochs < self.epochs as f64,
            "warmup_epochs",
            format!("must be in [0, epochs), got {}", self.warmup_epochs),
        );
        check!(
            self.sgd_momentum.is_finite() && (0.0..1.0).contains(&self.sgd_momentum),
            "sgd_momentum",
            format!("must be in [0, 1), got {}", self.sgd_momentum),
        );
        check!(
            self.weight_decay.is_finite() && (0.0..=1.0).contains(&self.weight_decay),
            "weight_decay",
            format!("must be in [0, 1], got {}", self.weight_decay),
        );
        check!(
            (1..=64).contains(&self.prefetch),
            "prefetch",
            format!("must be between 1 and 64, got {}", self.prefetch),
        );
        check!(
            self.loader_threads <= 256,
            "loader_threads",
            format!("must be at most 256, got {}", self.loader_threads),
        );
        check!(
            parse_device(&self.device).is_some(),
            "device",
            format!("must be auto, cpu or cuda:N, got {:?}", self.device),
        );
        check!(
            (1..=1_000_000).contains(&self.metrics_every),
            "metrics_every",
            format!("must be between 1 and 1000000, got {}", self.metrics_every),
        );
        check!(
            self.knn_every >= 0,
            "knn_every",
            format!("must be 0 (never) or more, got {}", self.knn_every),
        );
        check!(
            (1..=10_000).contains(&self.knn_k),
            "knn_k",
            format!("must be between 1 and 10000, got {}", self.knn_k),
        );
        check!(
            self.knn_t.is_finite() && self.knn_t > 0.0,
            "knn_t",
            format!("must be positive, got {}", self.knn_t),
        );
        check!(
            self.checkpoint_every >= 0,
            "checkpoint_every",
            format!(
                "must be 0 (only at the end) or more, got {}",
                self.checkpoint_every
            ),
        );
        check!(
            self.collapse_threshold.is_finite()
                && self.collapse_threshold > 0.0
                && self.collapse_threshold <= 1.0,
            "collapse_threshold",
            format!("must be in (0, 1], got {}", self.collapse_threshold),
        );
        let ds = &self.dataset;
        match ds.kind {
            DatasetKind::Synthetic => {
                check!(
                    (10..=1_000_000).contains(&ds.synthetic_train),
                    "dataset.synthetic_train",
                    format!("must be between 10 and 1000000, got {}", ds.synthetic_train),
                );
                check!(
                    (10..=1_000_000).contains(&ds.synthetic_test),
                    "dataset.synthetic_test",
                    format!("must be between 10 and 1000000, got {}", ds.synthetic_test),
                );
                check!(
                    (8..=512).contains(&ds.synthetic_image_size),
                    "dataset.synthetic_image_size",
                    format!("must be between 8 and 512, got {}", ds.synthetic_image_size),
                );
            }
            _ => check!(
                ds.path.as_deref().is_some_and(|p| !p.trim().is_empty()),
                "dataset.path",
                format!("is required for a {} dataset", ds.kind.name()),
            ),
        }
        check!(
            ds.load_size == 0 || (8..=2048).contains(&ds.load_size),
            "dataset.load_size",
            format!(
                "must be 0 (automatic) or between 8 and 2048, got {}",
                ds.load_size
            ),
        );
        if ds.kind == DatasetKind::Synthetic && self.batch_size as usize > ds.synthetic_train {
            errors.push(FieldError::new(
                "batch_size",
                format!(
                    "batch_size {} is larger than the dataset ({} images): no full batch",
                    self.batch_size, ds.synthetic_train
                ),
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// Applies `field=value` overrides (dotted names reach into `dataset`). Values are parsed as
    /// JSON where they can be (numbers, booleans, arrays), as plain strings otherwise.
    pub fn with_overrides<'a, I>(&self, overrides: I) -> Result<RunConfig, Vec<FieldError>>
    where
        I: IntoIterator<Item = (&'a str, Value)>,
    {
        let mut json = serde_json::to_value(self).expect("RunConfig serialises");
        let mut errors = Vec::new();
        for (key, value) in overrides {
            if let Err(e) = set_json_field(&mut json, key, value) {
                errors.push(e);
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        from_json_value(json)
    }

    /// Parses a full config or a partial one (keys missing are taken from `preset`, itself read
    /// from the document's `preset` key when present).
    pub fn from_partial_json(doc: &Value, fallback: Preset) -> Result<RunConfig, Vec<FieldError>> {
        let Some(obj) = doc.as_object() else {
            return Err(vec![FieldError::new("", "the config must be an object")]);
        };
        let preset = match obj.get("preset") {
            None => fallback,
            Some(Value::String(s)) => match Preset::parse(s) {
                Some(p) => p,
                None => {
                    return Err(vec![FieldError::new(
                        "preset",
                        format!("unknown preset {s:?}; expected one of {}", Preset::names()),
                    )])
                }
            },
            Some(_) => return Err(vec![FieldError::new("preset", "must be a string")]),
        };
        let base = RunConfig::preset(preset);
        let mut flat = Vec::new();
        for (k, v) in obj {
            if k == "dataset" {
                if let Value::Object(ds) = v {
                    for (dk, dv) in ds {
                        flat.push((format!("dataset.{dk}"), dv.clone()));
                    }
                    continue;
                }
            }
            flat.push((k.clone(), v.clone()));
        }
        base.with_overrides(flat.iter().map(|(k, v)| (k.as_str(), v.clone())))
    }

    /// Parses `key=value` strings from the command line.
    pub fn parse_override(s: &str) -> Result<(String, Value), FieldError> {
        let Some((k, v)) = s.split_once('=') else {
            return Err(FieldError::new(
                s,
                "an override must look like field=value, e.g. epochs=10",
            ));
        };
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        Ok((k.trim().to_string(), value))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("RunConfig serialises to TOML")
    }
}

/// Deserialises with the path of the failing field in the error.
fn from_json_value(json: Value) -> Result<RunConfig, Vec<FieldError>> {
    let cfg: RunConfig = serde_path_to_error::deserialize(json).map_err(|e| {
        let field = e.path().to_string();
        let message = e.inner().to_string();
        // serde_json appends " at line 0 column 0" on values that did not come from text.
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_string();
        vec![FieldError::new(&field, message)]
    })?;
    cfg.validate()?;
    Ok(cfg)
}

fn set_json_field(json: &mut Value, key: &str, value: Value) -> Result<(), FieldError> {
    let mut target = json;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let obj = target
            .as_object_mut()
            .ok_or_else(|| FieldError::new(key, "is not a setting"))?;
        if !obj.contains_key(*part) {
            return Err(FieldError::new(key, "unknown setting"));
        }
        if i + 1 == parts.len() {
            let slot = obj.get_mut(*part).expect("checked above");
            // A string value for a numeric field came from a form or CLI: try reading it as JSON.
            let value = match (&*slot, value) {
                (Value::String(_), v) => match v {
                    Value::Number(n) => Value::String(n.to_string()),
                    Value::Bool(b) => Value::String(b.to_string()),
                    other => other,
                },
                (_, Value::String(s)) => serde_json::from_str(&s).unwrap_or(Value::String(s)),
                (_, v) => v,
            };
            *slot = value;
            return Ok(());
        }
        target = obj.get_mut(*part).expect("checked above");
    }
    Ok(())
}

/// "auto", "cpu", "cuda" or "cuda:N" → a device, if the string is well formed.
pub fn parse_device(s: &str) -> Option<DeviceChoice> {
    match s {
        "auto" => Some(DeviceChoice::Auto),
        "cpu" => Some(DeviceChoice::Cpu),
        "cuda" => Some(DeviceChoice::Cuda(0)),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .map(DeviceChoice::Cuda),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Auto,
    Cpu,
    Cuda(usize),
}

impl DeviceChoice {
    /// Resolves to a tch device; an unavailable CUDA device is an error naming it.
    pub fn resolve(self) -> Result<tch::Device, String> {
        match self {
            DeviceChoice::Auto => Ok(tch::Device::cuda_if_available()),
            DeviceChoice::Cpu => Ok(tch::Device::Cpu),
            DeviceChoice::Cuda(n) => {
                let count = tch::Cuda::device_count() as usize;
                if n < count {
                    Ok(tch::Device::Cuda(n))
                } else {
                    Err(format!(
                        "cuda:{n} is not available ({count} CUDA device(s) on this machine)"
                    ))
                }
            }
        }
    }
}

/// One validation failure: the field (dotted path) and a sentence about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        FieldError {
            field: field.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Joins field errors into one message for the terminal.
pub fn describe_errors(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
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
        for p in Preset::ALL {
            RunConfig::preset(p).validate().unwrap();
        }
    }

    #[test]
    fn queue_not_multiple_of_batch_names_both_fields() {
        let cfg = RunConfig::preset(Preset::Cifar).with_overrides([
            ("queue_size", Value::from(1000)),
            ("batch_size", 256.into()),
        ]);
        let errors = cfg.unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["queue_size", "batch_size"]);
        assert!(
            errors[0].message.contains("multiple"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn unknown_field_and_bad_type_are_named() {
        let errors = RunConfig::preset(Preset::V2)
            .with_overrides([("epochz", Value::from(3))])
            .unwrap_err();
        assert_eq!(errors[0].field, "epochz");
        let errors = RunConfig::preset(Preset::V2)
            .with_overrides([("epochs", Value::from("three"))])
            .unwrap_err();
        assert_eq!(errors[0].field, "epochs");
        let errors = RunConfig::preset(Preset::V2)
            .with_overrides([("dataset.kind", Value::from("mnist"))])
            .unwrap_err();
        assert_eq!(errors[0].field, "dataset.kind");
    }

    #[test]
    fn string_values_from_forms_are_read_as_numbers() {
        let cfg = RunConfig::preset(Preset::Cifar)
            .with_overrides([("epochs", Value::from("3")), ("momentum", "0.9".into())])
            .unwrap();
        assert_eq!(cfg.epochs, 3);
        assert_eq!(cfg.momentum, 0.9);
    }

    #[test]
    fn effective_lr_follows_the_linear_rule() {
        let cfg = RunConfig::preset(Preset::Cifar)
            .with_overrides([("batch_size", Value::from(256))])
            .unwrap();
        assert!((cfg.effective_lr() - 0.03).abs() < 1e-12);
    }

    #[test]
    fn partial_json_takes_preset_defaults() {
        let doc =
            serde_json::json!({"preset": "v1", "epochs": 5, "dataset": {"synthetic_train": 1000}});
        let cfg = RunConfig::from_partial_json(&doc, Preset::Cifar).unwrap();
        assert_eq!(cfg.preset, Preset::V1);
        assert_eq!(cfg.temperature, 0.07);
        assert_eq!(cfg.epochs, 5);
        assert_eq!(cfg.dataset.synthetic_train, 1000);
    }
}
