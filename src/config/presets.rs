//! The presets: each paper's settings as its official code sets them, and the CPU demo. A run is
//! always a preset plus overrides, so these are every setting's defaults.
use super::choices::*;
use super::{DatasetConfig, RunConfig};

impl Preset {
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

    /// One line for pickers and help texts.
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
}
