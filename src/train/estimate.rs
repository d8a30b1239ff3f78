//! How long a run will take, said before it starts (the New run form shows it).
//!
//! A run's work is counted in multiply-accumulates (MACs) of the very encoder its config builds:
//! per training image, the query encoder's forward and backward passes (backward ≈ 2 × forward)
//! and the key encoder's forward, 4 forward passes in all (8 with the symmetric loss; 6 for the
//! end-to-end mechanism, 3 for the memory bank); per kNN
//! evaluation, one forward pass over the bank and the held-out split. The device's speed is
//! measured once per device by timing training passes of a small ResNet, in MACs per second; the
//! estimate is that work at that speed. Data loading is not counted: the loader prefetches
//! while the device computes.
use crate::config::{Framework, Mechanism, Preset, RunConfig};
use crate::moco::model::Encoder;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Forward passes' worth of the query encoder's forward and backward (backward ≈ 2 × forward).
const QUERY_PASSES: f64 = 3.0;
/// Forward passes of the encoder per training image and loss term (query forward + backward,
/// key forward).
const PASSES_PER_TERM: f64 = QUERY_PASSES + 1.0;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub steps_per_epoch: i64,
    pub total_steps: i64,
    /// kNN evaluations, the untrained baseline included.
    pub evaluations: i64,
    pub seconds: f64,
    /// The device speed the estimate assumes.
    pub macs_per_second: f64,
}

impl Estimate {
    /// "about 4 min", "about 2 h 10 min".
    pub fn duration_text(&self) -> String {
        duration_words(self.seconds)
    }
}

/// "about 42 s", "about 4 min", "about 2 h 5 min".
pub fn duration_words(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=59 => format!("about {s} s"),
        60..=3599 => format!("about {} min", (s + 30) / 60),
        _ => {
            let minutes = (s + 30) / 60;
            format!("about {} h {} min", minutes / 60, minutes % 60)
        }
    }
}

/// MACs of one forward pass of one image through `cfg`'s encoder (backbone and head).
pub fn forward_macs(cfg: &RunConfig) -> f64 {
    // Building the encoder allocates its weights (100 MB for ResNet-50): done once per shape.
    static CACHE: Mutex<Option<HashMap<String, i64>>> = Mutex::new(None);
    let shape = format!(
        "{:?} {:?} {} {} {:?} {} {} {} {:?} {}",
        cfg.arch,
        cfg.stem,
        cfg.width,
        cfg.image_size,
        cfg.head,
        cfg.head_hidden_dim(),
        cfg.head_layers,
        cfg.dim,
        cfg.framework,
        cfg.predictor_layers
    );
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    *cache.entry(shape).or_insert_with(|| {
        let _no_grad = tch::no_grad_guard();
        Encoder::new(cfg, Device::Cpu, cfg.framework == Framework::V3).forward_macs(cfg.image_size)
    }) as f64
}

/// The estimate for `cfg` on a training split of `train_images` images and a held-out split of
/// `test_images`, on a device computing `macs_per_second`.
pub fn estimate(
    cfg: &RunConfig,
    train_images: usize,
    test_images: usize,
    macs_per_second: f64,
) -> Estimate {
    let steps_per_epoch = (train_images / cfg.batch_size.max(1) as usize) as i64;
    let total_steps = steps_per_epoch * cfg.epochs;
    let forward = forward_macs(cfg);
    let per_image = training_macs_per_image(cfg);
    let training = per_image * (total_steps * cfg.batch_size) as f64;
    let evaluations = evaluation_count(cfg);
    let bank = if cfg.knn_bank_limit > 0 {
        train_images.min(cfg.knn_bank_limit)
    } else {
        train_images
    };
    let evaluating = evaluations as f64 * (bank + test_images) as f64 * forward;
    Estimate {
        steps_per_epoch,
        total_steps,
        evaluations,
        seconds: (training + evaluating) / macs_per_second.max(1.0),
        macs_per_second,
    }
}

/// MACs of one training image in a step: the encoder passes of each loss term and the logits
/// against the queue (N × (K + 1) × dim, forward and backward).
fn training_macs_per_image(cfg: &RunConfig) -> f64 {
    let terms = if cfg.symmetric_loss() { 2.0 } else { 1.0 };
    let logits = 3.0 * (cfg.negatives() + 1) as f64 * cfg.dim as f64;
    terms * (passes_per_term(cfg) * forward_macs(cfg) + logits)
}

/// Forward passes' worth of encoder work per image and loss term: the query's forward and
/// backward (3), and the key's forward (moco, v3), or its forward and backward (end_to_end, whose
/// keys come from the query encoder with gradient); the memory bank encodes no keys.
fn passes_per_term(cfg: &RunConfig) -> f64 {
    match cfg.effective_mechanism() {
        None | Some(Mechanism::Moco) => PASSES_PER_TERM,
        Some(Mechanism::EndToEnd) => 2.0 * QUERY_PASSES,
        Some(Mechanism::MemoryBank) => QUERY_PASSES,
    }
}

/// kNN evaluations of a run from its start: every `knn_every` epochs and after the last, plus the
/// untrained baseline.
pub fn evaluation_count(cfg: &RunConfig) -> i64 {
    if cfg.knn_every <= 0 {
        return 0;
    }
    let periodic = cfg.epochs / cfg.knn_every;
    let last = i64::from(cfg.epochs % cfg.knn_every != 0);
    periodic + last + i64::from(cfg.knn_baseline)
}

/// The device's training speed in MACs per second, measured on first use and remembered.
pub fn device_speed(device: Device) -> f64 {
    static SPEEDS: Mutex<Option<HashMap<String, f64>>> = Mutex::new(None);
    let key = format!("{device:?}");
    if let Some(speed) = SPEEDS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .get(&key)
    {
        return *speed;
    }
    let speed = measure_speed(device);
    SPEEDS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(key, speed);
    speed
}

/// Times the engine's own training steps (views, forward passes, backward, optimizer, enqueue)
/// of the demo preset's model at batch 64, after one untimed step that warms up the allocator and
/// the kernels. Only data loading is left out.
fn measure_speed(device: Device) -> f64 {
    use crate::train::optim::FlatOptimizer;
    use crate::train::step::{train_step, StepParams};
    const BATCH: i64 = 64;
    const TIMED: i64 = 3;
    let cfg = RunConfig::preset(Preset::Demo);
    let mut model = crate::moco::model::MocoModel::new(&cfg, device);
    let mut optimizer = FlatOptimizer::for_run(&model.query.store, &cfg);
    let side = cfg.dataset.synthetic_image_size as i64;
    let augmenter = crate::data::Augmenter::for_run(&cfg, [0.5; 3], [0.25; 3]);
    let images = Tensor::randint(256, [BATCH, 3, side, side], (Kind::Uint8, device));
    let mut step = |i: i64| {
        let params = StepParams {
            seed: 0,
            step: i,
            lr: 0.01,
            momentum: cfg.momentum,
            precision: None,
        };
        let out = train_step(&mut model, &mut optimizer, &augmenter, &images, &[], params);
        // Wait for the device: its work is what is timed.
        let _ = out.map(|o| o.loss.double_value(&[]));
    };
    step(0);
    let start = Instant::now();
    for i in 1..=TIMED {
        step(i);
    }
    let seconds = start.elapsed().as_secs_f64().max(1e-6);
    training_macs_per_image(&cfg) * (BATCH * TIMED) as f64 / seconds
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn forward_macs_match_the_known_resnet_counts() {
        // torchvision ResNet-50 at 224²: 4.09 GMACs with its 1000-class fc; the convolutions
        // alone are 4,087,136,256 MACs (+ 2048 × 128 for the v1 head here).
        let v1 = RunConfig::preset(Preset::V1);
        assert_eq!(forward_macs(&v1), (4_087_136_256i64 + 2048 * 128) as f64);
        // ResNet-18 with the CIFAR stem at 32², width 64, by hand: conv1 3·64·9·32², layer1 four
        // 64·64·9·32² convolutions, layers 2–4 each 134,217,728 (a strided 3×3, three 3×3 and a
        // 1×1 downsample): 555,417,600 MACs.
        let cifar = RunConfig::preset(Preset::Cifar);
        assert_eq!(forward_macs(&cifar), (555_417_600i64 + 512 * 128) as f64);
    }

    #[test]
    fn the_estimate_counts_steps_evaluations_and_work() {
        let cfg = RunConfig::preset(Preset::Demo)
            .with_overrides([
                ("epochs", Value::from(5)),
                ("knn_every", 2.into()),
                ("batch_size", 128.into()),
            ])
            .unwrap();
        let speed = 1e10;
        let e = estimate(&cfg, 5000, 1000, speed);
        assert_eq!(e.steps_per_epoch, 39);
        assert_eq!(e.total_steps, 195);
        // Baseline, after epochs 2 and 4, and after the last (5).
        assert_eq!(e.evaluations, 4);
        let f = forward_macs(&cfg);
        let logits = 3.0 * (cfg.queue_size + 1) as f64 * cfg.dim as f64;
        let expected = ((4.0 * f + logits) * (195 * 128) as f64 + 4.0 * 6000.0 * f) / speed;
        assert!((e.seconds - expected).abs() < 1e-9 * expected);
    }

    #[test]
    fn durations_read_as_a_person_would_say_them() {
        let at = |seconds| Estimate {
            steps_per_epoch: 1,
            total_steps: 1,
            evaluations: 0,
            seconds,
            macs_per_second: 1.0,
        };
        assert_eq!(at(42.4).duration_text(), "about 42 s");
        assert_eq!(at(250.0).duration_text(), "about 4 min");
        assert_eq!(at(7800.0).duration_text(), "about 2 h 10 min");
    }
}
