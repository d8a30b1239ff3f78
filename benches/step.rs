//! One MoCo training step of ResNet-18 with the CIFAR stem, moco-server's engine side by side with
//! the same step in PyTorch (benches/py/moco_reference.py, the official code's order), on random
//! 32×32 inputs. Prints milliseconds per step and the ratio engine / PyTorch (lower is better).
use moco_server::config::{Preset, RunConfig};
use moco_server::moco::model::MocoModel;
use moco_server::train::optim::FlatSgd;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn engine_ms_per_step(width: i64, batch: i64, steps: usize) -> f64 {
    let cfg = RunConfig::preset(Preset::Cifar)
        .with_overrides([
            ("width", Value::from(width)),
            ("batch_size", batch.into()),
            ("queue_size", 4096.into()),
            ("shuffle_bn_splits", 8.into()),
        ])
        .expect("bench config is valid");
    tch::manual_seed(0);
    let mut model = MocoModel::new(&cfg, Device::Cpu);
    let mut optimizer = FlatSgd::new(&model.query.store, 0.9, 5e-4, false);
    let x1 = Tensor::randn([batch, 3, 32, 32], (Kind::Float, Device::Cpu));
    let x2 = Tensor::randn([batch, 3, 32, 32], (Kind::Float, Device::Cpu));
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut step = |i: i64| {
        let out = model.forward_step(&x1, &x2, 0.99, &mut rng);
        model.query.store.zero_grad();
        out.loss.backward();
        optimizer.step(&model.query.store, 0.06);
        model.queue.enqueue(&out.keys, i);
    };
    for i in 0..2 {
        step(i);
    }
    let start = Instant::now();
    for i in 0..steps {
        step(i as i64 + 2);
    }
    start.elapsed().as_secs_f64() * 1000.0 / steps as f64
}

fn pytorch_ms_per_step(width: i64, batch: i64, steps: usize) -> Option<f64> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(root.join(".venv/bin/python"))
        .arg(root.join("benches/py/moco_reference.py"))
        .args([
            "bench",
            "--width",
            &width.to_string(),
            "--batch",
            &batch.to_string(),
        ])
        .args([
            "--steps",
            &steps.to_string(),
            "--splits",
            "8",
            "--queue-size",
            "4096",
        ])
        .args(["--threads", &tch::get_num_threads().to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let report: Value = serde_json::from_slice(&out.stdout).ok()?;
    report["ms_per_step"].as_f64()
}

fn main() {
    println!(
        "MoCo step, ResNet-18 CIFAR stem, 32×32, K=4096, split BN 8, CPU threads {}",
        tch::get_num_threads()
    );
    println!(
        "{:>6} {:>6} {:>14} {:>14} {:>8}",
        "width", "batch", "engine ms", "pytorch ms", "ratio"
    );
    for (width, batch, steps) in [(16, 64, 10), (16, 256, 5), (64, 64, 5), (64, 256, 3)] {
        let engine = engine_ms_per_step(width, batch, steps);
        match pytorch_ms_per_step(width, batch, steps) {
            Some(reference) => println!(
                "{width:>6} {batch:>6} {engine:>14.1} {reference:>14.1} {:>8.3}",
                engine / reference
            ),
            None => println!(
                "{width:>6} {batch:>6} {engine:>14.1} {:>14} {:>8}",
                "n/a", "n/a"
            ),
        }
    }
}
