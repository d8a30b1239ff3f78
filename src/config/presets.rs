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
            Preset::V3 => {
                "MoCo v3: ResNet-50, in-batch keys, predictor, LARS lr 0.6×B/256, batch 4096, T=1"
            }
            Preset::V3Cifar => "MoCo v3's method on the CIFAR ResNet-18: LARS, T=0.2, batch 512",
            Preset::V3VitS => {
                "MoCo v3: ViT-Small/16, frozen patch projection, AdamW lr 1.5e-4×B/256, T=0.2"
            }
            Preset::V3VitB => {
                "MoCo v3: ViT-Base/16, frozen patch projection, AdamW lr 1.5e-4×B/256, T=0.2"
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
            head_layers: 2,
            patch_size: 16,
            freeze_patch_embed: false,
            zero_init_residual: false,
            dim: 128,
            framework: Framework::Moco,
            mechanism: Mechanism::Moco,
            bank_momentum: 0.5,
            predictor_layers: 2,
            temperature: 0.07,
            momentum: 0.999,
            momentum_schedule: MomentumSchedule::Constant,
            queue_size: 65536,
            symmetric: false,
            shuffle_bn_splits: 8,
            bn_stats_across_ranks: BnStatsAcrossRanks::Mean,
            sync_bn: false,
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
            optimizer: OptimizerKind::Sgd,
            lars_trust: 0.001,
            sgd_momentum: 0.9,
            weight_decay: 1e-4,
            wd_exclude_bn_bias: false,
            augmentation: AugRecipe::V1,
            crop_min_scale: 0.0,
            normalization: Normalization::Imagenet,
            prefetch: 4,
            loader_threads: 0,
            seed: 0,
            device: "auto".into(),
            devices: 1,
            precision: Precision::Auto,
            memory_format: MemoryFormat::Auto,
            bucket_cap_mb: super::default_bucket_cap_mb(),
            metrics_every: 10,
            knn_every: 1,
            knn_baseline: true,
            knn_k: 200,
            knn_t: 0.1,
            knn_features: KnnFeatures::Backbone,
            knn_bank_limit: 0,
            checkpoint_every: 10,
            grad_spike_factor: 5.0,
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
        // MoCo v3 with ResNet-50: facebookresearch/moco-v3 main_moco.py's defaults and CONFIG.md's
        // 100-epoch command (`--moco-m-cos --crop-min=.2`): LARS at lr 0.6 × B/256, wd 1e-6,
        // batch 4096, T 1.0, m from 0.99 to 1 on a cosine, a 10-epoch warm-up then a cosine set
        // every step, the projector 2048→4096→256 and the predictor 256→4096→256, zero-init
        // residuals, BYOL's asymmetric views. 300 epochs: base_lr 0.3.
        let v3 = RunConfig {
            framework: Framework::V3,
            head: HeadKind::V3,
            head_hidden: 4096,
            head_layers: 2,
            dim: 256,
            predictor_layers: 2,
            zero_init_residual: true,
            temperature: 1.0,
            momentum: 0.99,
            momentum_schedule: MomentumSchedule::Cosine,
            symmetric: true,
            shuffle_bn_splits: 1,
            batch_size: 4096,
            epochs: 100,
            base_lr: 0.6,
            lr_base_batch: 256,
            lr_schedule: LrSchedule::Cosine,
            lr_update: LrUpdate::Step,
            lr_milestones: vec![],
            warmup_epochs: 10.0,
            optimizer: OptimizerKind::Lars,
            weight_decay: 1e-6,
            augmentation: AugRecipe::V3,
            crop_min_scale: 0.2,
            ..imagenet.clone()
        };
        // MoCo v3 with ViTs: CONFIG.md's ViT-Small and ViT-Base commands (`--optimizer=adamw
        // --lr=1.5e-4 --weight-decay=.1 --epochs=300 --warmup-epochs=40 --stop-grad-conv1
        // --moco-m-cos --moco-t=.2`, batch 4096 for the published models), with vits.py's
        // 3-layer projector and a predictor that ends in BatchNorm, and main_moco.py's default
        // crop minimum 0.08.
        let v3_vit = RunConfig {
            arch: Arch::VitSmall,
            patch_size: 16,
            freeze_patch_embed: true,
            zero_init_residual: false,
            head_layers: 3,
            temperature: 0.2,
            epochs: 300,
            warmup_epochs: 40.0,
            base_lr: 1.5e-4,
            optimizer: OptimizerKind::Adamw,
            weight_decay: 0.1,
            crop_min_scale: 0.08,
            ..v3.clone()
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
            Preset::V3 => v3,
            Preset::V3VitS => v3_vit,
            Preset::V3VitB => RunConfig {
                arch: Arch::VitBase,
                ..v3_vit
            },
            // MoCo v3's method on the CIFAR demo's encoder and data (the official code has no
            // CIFAR setting): the ResNet-18 CIFAR stem, v3's heads, loss, LARS and schedules,
            // with the demo's batch, epochs, views and kNN monitor, T 0.2 (v3's ViT value; 1.0
            // is tuned for batches of 4096) and base_lr 0.3 × B/256 (v3's 300-epoch value).
            Preset::V3Cifar => RunConfig {
                image_size: 32,
                arch: Arch::Resnet18,
                stem: Stem::Cifar,
                temperature: 0.2,
                batch_size: 512,
                epochs: 200,
                base_lr: 0.3,
                augmentation: AugRecipe::Cifar,
                crop_min_scale: 0.0,
                normalization: Normalization::Cifar,
                knn_every: 10,
                knn_features: KnnFeatures::Backbone,
                checkpoint_every: 10,
                ..v3
            },
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
