//! One MoCo training step of ResNet-18 with the CIFAR stem, moco-server's engine side by side with
//! the same step in PyTorch (benches/py/moco_reference.py, the official code's order), on random
//! 32×32 inputs. Prints milliseconds per step and the ratio engine / PyTorch (lower is better).
//!
//! On the CPU both sides compute in fp32. With a CUDA device a second table runs both sides as
//! each is used there: the engine with its defaults (bf16 autocast where the GPU has it, fp16 with
//! loss scaling otherwise, channels_last), PyTorch with torch.autocast, GradScaler for fp16 and
//! the model in channels_last. It adds images/s and the share of each step during which no
//! kernel ran on the device (launch overhead, host work), from libtorch's profiler.
use moco_server::config::{Precision, Preset, RunConfig};
use moco_server::moco::model::MocoModel;
use moco_server::torch_ext::{AutocastGuard, DeviceProfile, ReducedPrecision};
use moco_server::train::optim::FlatSgd;
use moco_server::train::trainer::reduced_precision;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Steps profiled on a CUDA device to measure the device's busy time.
const PROFILED_STEPS: usize = 5;

/// Time per step, and the device's busy time per step where it was profiled.
struct Timing {
    ms_per_step: f64,
    device_busy_ms: Option<f64>,
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn engine_step_timing(
    width: i64,
    batch: i64,
    steps: usize,
    device: Device,
    precision: Option<ReducedPrecision>,
) -> Timing {
    let cfg = RunConfig::preset(Preset::Cifar)
        .with_overrides([
            ("width", Value::from(width)),
            ("batch_size", batch.into()),
            ("queue_size", 4096.into()),
            ("shuffle_bn_splits", 8.into()),
        ])
        .expect("bench config is valid");
    tch::manual_seed(0);
    let mut model = MocoModel::new(&cfg, device);
    let mut optimizer = FlatSgd::new(&model.query.store, 0.9, 5e-4, false);
    if precision == Some(ReducedPrecision::Fp16) {
        optimizer = optimizer.with_loss_scaling();
    }
    let x1 = Tensor::randn([batch, 3, 32, 32], (Kind::Float, device));
    let x2 = Tensor::randn([batch, 3, 32, 32], (Kind::Float, device));
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut step = |i: i64| {
        let out = {
            let _autocast = precision.map(|p| AutocastGuard::new(device, p).expect("autocast"));
            model.forward_step(&x1, &x2, 0.99, &mut rng)
        };
        model.query.store.zero_grad();
        optimizer.backward(&out.loss);
        optimizer.step(&model.query.store, 0.06);
        model.queue.enqueue(&out.keys, i);
    };
    let warmup = if device.is_cuda() { 3 } else { 2 };
    for i in 0..warmup {
        step(i);
    }
    sync(device);
    let start = Instant::now();
    for i in 0..steps {
        step(i as i64 + warmup);
    }
    sync(device);
    let ms_per_step = start.elapsed().as_secs_f64() * 1000.0 / steps as f64;
    let device_busy_ms = device.is_cuda().then(|| {
        let profile = DeviceProfile::start(device).expect("profiler starts");
        for i in 0..PROFILED_STEPS {
            step(warmup + (steps + i) as i64);
        }
        sync(device);
        let activity = profile.finish().expect("profiler stops");
        activity.busy_ns as f64 / 1e6 / PROFILED_STEPS as f64
    });
    Timing {
        ms_per_step,
        device_busy_ms,
    }
}

fn pytorch_step_timing(
    width: i64,
    batch: i64,
    steps: usize,
    device: Device,
    precision: Option<ReducedPrecision>,
) -> Option<Timing> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut command = Command::new(root.join(".venv/bin/python"));
    command
        .arg(root.join("benches/py/moco_reference.py"))
        .args(["bench", "--width", &width.to_string()])
        .args(["--batch", &batch.to_string(), "--steps", &steps.to_string()])
        .args(["--splits", "8", "--queue-size", "4096"])
        .args(["--threads", &tch::get_num_threads().to_string()]);
    if let Device::Cuda(i) = device {
        command
            .args(["--device", &format!("cuda:{i}"), "--channels-last"])
            .args(["--profile-steps", &PROFILED_STEPS.to_string()])
            .args([
                "--precision",
                match precision {
                    None => "fp32",
                    Some(ReducedPrecision::Bf16) => "bf16",
                    Some(ReducedPrecision::Fp16) => "fp16",
                },
            ]);
    }
    let out = command.output().ok()?;
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    let report: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(Timing {
        ms_per_step: report["ms_per_step"].as_f64()?,
        device_busy_ms: report["device_busy_ms_per_step"].as_f64(),
    })
}

const SHAPES: [(i64, i64, usize); 4] = [(16, 64, 10), (16, 256, 5), (64, 64, 5), (64, 256, 3)];

fn cpu_table() {
    println!(
        "MoCo step, ResNet-18 CIFAR stem, 32×32, K=4096, split BN 8, CPU fp32, threads {}",
        tch::get_num_threads()
    );
    println!(
        "{:>6} {:>6} {:>14} {:>14} {:>8}",
        "width", "batch", "engine ms", "pytorch ms", "ratio"
    );
    for (width, batch, steps) in SHAPES {
        let engine = engine_step_timing(width, batch, steps, Device::Cpu, None).ms_per_step;
        match pytorch_step_timing(width, batch, steps, Device::Cpu, None) {
            Some(reference) => println!(
                "{width:>6} {batch:>6} {engine:>14.1} {:>14.1} {:>8.3}",
                reference.ms_per_step,
                engine / reference.ms_per_step
            ),
            None => println!(
                "{width:>6} {batch:>6} {engine:>14.1} {:>14} {:>8}",
                "n/a", "n/a"
            ),
        }
    }
}

/// Share of the step during which the device ran nothing.
fn idle_share(t: &Timing) -> String {
    t.device_busy_ms.map_or("n/a".into(), |busy| {
        format!("{:.0}%", (1.0 - busy / t.ms_per_step).max(0.0) * 100.0)
    })
}

fn cuda_table(device: Device) {
    let precision = reduced_precision(Precision::Auto, device).expect("auto precision resolves");
    let name = match precision {
        Some(ReducedPrecision::Bf16) => "bf16 autocast",
        Some(ReducedPrecision::Fp16) => "fp16 autocast + loss scaling",
        None => "fp32",
    };
    println!();
    println!(
        "MoCo step on {device:?}, ResNet-18 CIFAR stem, K=4096, split BN 8, {name}, channels_last"
    );
    println!(
        "{:>6} {:>6} {:>11} {:>11} {:>7} {:>12} {:>12} {:>12} {:>12}",
        "width",
        "batch",
        "engine ms",
        "pytorch ms",
        "ratio",
        "engine img/s",
        "torch img/s",
        "engine idle",
        "torch idle"
    );
    for (width, batch, _) in SHAPES {
        let steps = 30;
        let engine = engine_step_timing(width, batch, steps, device, precision);
        let images = |t: &Timing| batch as f64 * 1000.0 / t.ms_per_step;
        match pytorch_step_timing(width, batch, steps, device, precision) {
            Some(reference) => println!(
                "{width:>6} {batch:>6} {:>11.2} {:>11.2} {:>7.3} {:>12.0} {:>12.0} {:>12} {:>12}",
                engine.ms_per_step,
                reference.ms_per_step,
                engine.ms_per_step / reference.ms_per_step,
                images(&engine),
                images(&reference),
                idle_share(&engine),
                idle_share(&reference)
            ),
            None => println!(
                "{width:>6} {batch:>6} {:>11.2} {:>11} {:>7} {:>12.0} {:>12} {:>12} {:>12}",
                engine.ms_per_step,
                "n/a",
                "n/a",
                images(&engine),
                "n/a",
                idle_share(&engine),
                "n/a"
            ),
        }
    }
}

fn main() {
    cpu_table();
    if tch::Cuda::is_available() {
        tch::Cuda::cudnn_set_benchmark(true);
        cuda_table(Device::Cuda(0));
    } else {
        println!("\nno CUDA device: the GPU table (images/s, device idle share) is skipped");
    }
}
