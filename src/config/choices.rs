//! The settings that take one of a fixed set of values. Names, parsing and lists come from the
//! derives (strum for names, serde for the wire format, schemars for the schema), so an enum is
//! written once; a test checks the strum and serde spellings agree.
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use strum::{IntoStaticStr, VariantArray};

/// What every choice enum offers: its name, parsing from a name, and the list of names.
pub trait Choice: Copy + PartialEq + Into<&'static str> + VariantArray + 'static {
    fn name(self) -> &'static str {
        self.into()
    }

    fn parse(name: &str) -> Option<Self> {
        Self::VARIANTS.iter().copied().find(|v| v.name() == name)
    }

    /// Every value in declaration order.
    fn all() -> &'static [Self] {
        Self::VARIANTS
    }

    /// Every name in declaration order.
    fn names() -> Vec<&'static str> {
        Self::VARIANTS.iter().map(|v| v.name()).collect()
    }

    /// "a, b, c": for error messages and help texts.
    fn names_joined() -> String {
        Self::names().join(", ")
    }
}

impl<T: Copy + PartialEq + Into<&'static str> + VariantArray + 'static> Choice for T {}

/// Derives shared by every choice enum; `$case` is both serde's and strum's spelling rule.
macro_rules! choice_enum {
    ($case:literal, $(#[$meta:meta])* pub enum $name:ident { $($body:tt)* }) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
            IntoStaticStr, VariantArray, strum::Display,
        )]
        #[serde(rename_all = $case)]
        #[strum(serialize_all = $case)]
        pub enum $name { $($body)* }
    };
}

choice_enum! { "lowercase",
    /// The papers' starting points.
    pub enum Preset {
        /// MoCo v1 (He et al., 2019) on ImageNet.
        V1,
        /// MoCo v2 (Chen et al., 2020) on ImageNet.
        V2,
        /// The official CIFAR-10 demo: ResNet-18 with the CIFAR stem.
        Cifar,
        /// A few minutes on a CPU: a narrow ResNet-18 on the built-in set, to see MoCo learn.
        Demo,
        /// MoCo v3 (Chen, Xie and He, 2021) with ResNet-50 on ImageNet.
        V3,
        /// MoCo v3's method with the CIFAR ResNet-18.
        #[serde(rename = "v3-cifar")]
        #[strum(serialize = "v3-cifar")]
        V3Cifar,
        /// MoCo v3 with ViT-Small/16 on ImageNet.
        #[serde(rename = "v3-vit-s")]
        #[strum(serialize = "v3-vit-s")]
        V3VitS,
        /// MoCo v3 with ViT-Base/16 on ImageNet.
        #[serde(rename = "v3-vit-b")]
        #[strum(serialize = "v3-vit-b")]
        V3VitB,
    }
}

choice_enum! { "snake_case",
    /// Where the negatives come from, and the loss.
    pub enum Framework {
        /// MoCo v1/v2: InfoNCE of q against its key and a queue of K past keys, shuffle BN.
        Moco,
        /// MoCo v3: no queue; each view's prediction against the other view's keys of the whole
        /// batch, ctr(q1, k2) + ctr(q2, k1), with a predictor after the projector.
        V3,
    }
}

choice_enum! { "snake_case",
    /// Within the moco framework, how the keys are encoded and kept (the MoCo paper's Figure 3
    /// compares the three).
    pub enum Mechanism {
        /// A momentum key encoder and a queue of K past keys.
        Moco,
        /// Keys from the query encoder itself, with gradient; the negatives are the other keys
        /// of the batch, so K = batch_size − 1.
        EndToEnd,
        /// Wu et al. (2018): one stored feature per training image; the positive is the
        /// image's own entry, K negatives are drawn from the bank each step, and the batch's
        /// entries move towards the new queries with bank_momentum.
        MemoryBank,
    }
}

choice_enum! { "snake_case",
    /// BatchNorm's running statistics when several processes train one run.
    pub enum BnStatsAcrossRanks {
        /// The ranks' mean after each step: the statistics of all the global batch's BatchNorm
        /// groups, what one process with the same groups keeps.
        Mean,
        /// Rank 0's, copied to the others after each step, as DistributedDataParallel
        /// broadcasts its buffers from rank 0 (the official scripts).
        Rank0,
    }
}

choice_enum! { "lowercase",
    /// How parameters are updated.
    pub enum OptimizerKind {
        /// torch.optim.SGD with momentum (MoCo v1/v2, the CIFAR demo).
        Sgd,
        /// MoCo v3's LARS: SGD with momentum whose step of every weight matrix and convolution
        /// is scaled to trust × ‖θ‖ / ‖g + wd·θ‖; BatchNorm parameters and biases take neither
        /// weight decay nor scaling.
        Lars,
        /// torch.optim.AdamW (betas 0.9, 0.999, eps 1e-8), decay on every parameter: MoCo v3's
        /// for Vision Transformers.
        Adamw,
    }
}

choice_enum! { "lowercase",
    /// The backbone: a ResNet depth, or a Vision Transformer (MoCo v3's vits.py).
    pub enum Arch {
        Resnet18,
        Resnet34,
        Resnet50,
        /// ViT-Tiny: width 192, 12 blocks of 3 heads.
        #[serde(rename = "vit_tiny")]
        #[strum(serialize = "vit_tiny")]
        VitTiny,
        /// ViT-Small as MoCo v3 builds it: width 384, 12 blocks of 12 heads.
        #[serde(rename = "vit_small")]
        #[strum(serialize = "vit_small")]
        VitSmall,
        /// ViT-Base: width 768, 12 blocks of 12 heads.
        #[serde(rename = "vit_base")]
        #[strum(serialize = "vit_base")]
        VitBase,
    }
}

impl Arch {
    pub fn is_vit(self) -> bool {
        matches!(self, Arch::VitTiny | Arch::VitSmall | Arch::VitBase)
    }
}

choice_enum! { "lowercase",
    /// The first layers of the ResNet.
    pub enum Stem {
        /// 7×7 stride 2 + max-pool, as torchvision.
        Imagenet,
        /// 3×3 stride 1, no max-pool, for small images.
        Cifar,
    }
}

choice_enum! { "lowercase",
    /// The projection head.
    pub enum HeadKind {
        /// v1: one linear layer to `dim`.
        Linear,
        /// v2: Linear → ReLU → Linear to `dim`.
        Mlp,
        /// MoCo v3's `_build_mlp`: per hidden layer Linear (no bias) → BatchNorm → ReLU, then a
        /// last Linear (no bias) → BatchNorm without affine parameters, `head_layers` layers.
        V3,
    }
}

choice_enum! { "lowercase",
    /// The augmentation recipe of the two views.
    pub enum AugRecipe {
        /// MoCo v1: random resized crop, grey 0.2, colour jitter 0.4, flip.
        V1,
        /// MoCo v2: v1 with jitter p 0.8 (hue 0.1) and Gaussian blur.
        V2,
        /// The CIFAR demo's recipe.
        Cifar,
        /// MoCo v3 / BYOL asymmetric views (blur and solarize differ between the two views).
        V3,
    }
}

choice_enum! { "lowercase",
    /// The shape of the learning-rate schedule.
    pub enum LrSchedule {
        /// Multiply by `lr_gamma` at each of `lr_milestones`.
        Step,
        /// Half a cosine from the base lr to 0.
        Cosine,
    }
}

choice_enum! { "lowercase",
    /// How often the learning rate is set. The official MoCo v1/v2 code and the CIFAR demo set
    /// it once per epoch (`adjust_learning_rate(optimizer, epoch, args)`); MoCo v3 every step.
    pub enum LrUpdate {
        Epoch,
        Step,
    }
}

impl LrUpdate {
    /// Configs stored before this setting existed were trained with per-step updates.
    pub(super) fn stored_default() -> LrUpdate {
        LrUpdate::Step
    }
}

choice_enum! { "lowercase",
    /// The per-channel mean and std the images are normalised with.
    pub enum Normalization {
        /// The CIFAR demo's constants: mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994, 0.2010).
        Cifar,
        /// torchvision's ImageNet constants: mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
        Imagenet,
        /// Measured on a sample of the training images (for users' own data).
        Measured,
    }
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
    pub(super) fn stored_default() -> Normalization {
        Normalization::Measured
    }
}

choice_enum! { "lowercase",
    /// How the key encoder's momentum moves over the run.
    pub enum MomentumSchedule {
        /// m stays at `momentum`.
        Constant,
        /// m rises from `momentum` to 1 along a half cosine over the run (BYOL / MoCo v3).
        Cosine,
    }
}

choice_enum! { "lowercase",
    /// Arithmetic of the forward passes.
    #[derive(Default)]
    pub enum Precision {
        /// bf16 autocast on a CUDA device that computes in bf16 natively, fp16 with loss scaling
        /// on older ones, fp32 on the CPU.
        #[default]
        Auto,
        /// Plain fp32 everywhere.
        Fp32,
        /// Autocast in bfloat16: fp32's range, so no loss scaling is needed.
        Bf16,
        /// Autocast in float16 with dynamic loss scaling (steps whose gradients overflow are
        /// skipped).
        Fp16,
    }
}

choice_enum! { "snake_case",
    /// Memory layout of images and activations.
    #[derive(Default)]
    pub enum MemoryFormat {
        /// channels_last on CUDA (cuDNN's tensor-core convolutions work in NHWC), contiguous on
        /// the CPU.
        #[default]
        Auto,
        /// NHWC everywhere.
        ChannelsLast,
        /// NCHW everywhere.
        Contiguous,
    }
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

choice_enum! { "lowercase",
    /// What the kNN monitor compares.
    pub enum KnnFeatures {
        /// The pooled features of the backbone.
        Backbone,
        /// The head's output, as the CIFAR demo's monitor.
        Head,
    }
}

choice_enum! { "snake_case",
    /// The format of a dataset.
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
}

choice_enum! { "lowercase",
    /// How a linear probe trains its classifier on the frozen backbone; each protocol is named
    /// after the code it follows.
    pub enum Protocol {
        /// facebookresearch/moco `main_lincls.py`: random resized crops and flips of the training
        /// images through the frozen backbone every step, SGD lr 30, ×0.1 at epochs 60 and 80 of
        /// 100, batch 256.
        Moco,
        /// facebookresearch/moco-v3 `main_lincls.py`: as moco with SGD lr 0.1 × B/256 on a
        /// per-epoch cosine, 90 epochs, batch 1024.
        V3,
        /// The features of the un-augmented images computed once, then moco's classifier,
        /// optimiser and schedule trained on them: for small machines.
        Fast,
    }
}

choice_enum! { "lowercase",
    /// What an evaluation of a trained encoder measures.
    pub enum EvalMethod {
        /// A linear classifier trained on the frozen features, by one of the `Protocol`s.
        Linear,
        /// The weighted kNN of the run's monitor, on any labelled set.
        Knn,
    }
}

impl EvalMethod {
    /// "linear (fast)" or "knn": what every reported number says produced it.
    pub fn label(self, protocol: Option<Protocol>) -> String {
        match (self, protocol) {
            (EvalMethod::Linear, Some(p)) => format!("linear ({})", p.name()),
            (method, _) => method.name().to_string(),
        }
    }
}

/// Where a run trains: "auto", "cpu", "cuda" or "cuda:N".
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

#[cfg(test)]
mod tests {
    use super::*;

    fn spelled_alike<T: Choice + Serialize + std::fmt::Debug>() {
        for v in T::VARIANTS {
            assert_eq!(
                serde_json::to_value(v).unwrap(),
                serde_json::Value::from(v.name())
            );
            assert_eq!(T::parse(v.name()), Some(*v));
        }
    }

    #[test]
    fn serde_and_strum_spell_every_choice_alike() {
        spelled_alike::<Preset>();
        spelled_alike::<Arch>();
        spelled_alike::<Stem>();
        spelled_alike::<HeadKind>();
        spelled_alike::<AugRecipe>();
        spelled_alike::<LrSchedule>();
        spelled_alike::<LrUpdate>();
        spelled_alike::<Normalization>();
        spelled_alike::<MomentumSchedule>();
        spelled_alike::<Precision>();
        spelled_alike::<MemoryFormat>();
        spelled_alike::<KnnFeatures>();
        spelled_alike::<DatasetKind>();
        spelled_alike::<Protocol>();
        spelled_alike::<EvalMethod>();
        spelled_alike::<Framework>();
        spelled_alike::<OptimizerKind>();
        spelled_alike::<Mechanism>();
        spelled_alike::<BnStatsAcrossRanks>();
        assert_eq!(MemoryFormat::ChannelsLast.name(), "channels_last");
        assert_eq!(DatasetKind::ImageFolder.name(), "image_folder");
        assert_eq!(
            Preset::names_joined(),
            "v1, v2, cifar, demo, v3, v3-cifar, v3-vit-s, v3-vit-b"
        );
    }

    #[test]
    fn devices_parse() {
        assert_eq!(parse_device("cuda"), Some(DeviceChoice::Cuda(0)));
        assert_eq!(parse_device("cuda:3"), Some(DeviceChoice::Cuda(3)));
        assert_eq!(parse_device("gpu"), None);
    }
}
