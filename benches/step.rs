//! One MoCo training step of ResNet-18 with the CIFAR stem, moco-server's engine side by side with
//! the same step in PyTorch (benches/py/moco_reference.py, the official code's order), on random
//! 32×32 inputs. Prints milliseconds per step (on the CPU the fastest step of two alternating
//! rounds per side) and the ratio engine / PyTorch (lower is better): for the moco framework
//! (the cifar preset's step: queue of 4096, split BN 8, SGD), for MoCo v3's step (the v3-cifar
//! preset: projector and predictor with 4096 hidden units, in-batch keys, LARS) and for MoCo v3's
//! ViT-S/16 step at 224×224 (the v3-vit-s preset: AdamW, frozen patch projection).
//!
//! On the CPU both sides compute in fp32. With a CUDA device a second table runs both sides as
//! each is used there: the engine with its defaults (bf16 autocast where the GPU has it, fp16 with
//! loss scaling otherwise, channels_last), PyTorch with torch.autocast, GradScaler for fp16 and
//! the model in channels_last. It adds images/s and the share of each step during which no
//! kernel ran on the device (launch overhead, host work), from libtorch's profiler.
use moco_server::config::{Precision, Preset, RunConfig};
use moco_server::moco::model::MocoModel;
use moco_server::torch_ext::{AutocastGuard, DeviceProfile, ReducedPrecision};
use moco_server::train::device::{precision_label, reduced_precision};
use moco_server::train::optim::FlatOptimizer;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[path = "support/python.rs"]
mod python_support;
use python_support::python;

/// Set in the child process that times the engine: "step width batch steps device".
const CHILD_ENV: &str = "MOCO_BENCH_ENGINE_STEP";

/// Steps profiled on a CUDA device to measure the device's busy time.
const PROFILED_STEPS: usize = 5;

/// Time per step, and the device's busy time per step where it was profiled.
struct Timing {
    ms_per_step: f64,
    device_busy_ms: Option<f64>,
}

/// benches/py/moco_reference.py of the checkout the bench was built from, or
/// $MOCO_BENCH_ROOT/py/moco_reference.py where the binary was carried to another machine
/// (scripts/build-gpu-bin.sh puts the script there).
fn reference_script() -> PathBuf {
    match std::env::var_os("MOCO_BENCH_ROOT") {
        Some(root) => Path::new(&root).join("py/moco_reference.py"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/py/moco_reference.py"),
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// The steps each side times.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    /// The cifar preset's, with K = 4096 and split BN 8.
    Moco,
    /// The v3-cifar preset's.
    V3,
    /// The v3-vit-s preset's: ViT-S/16 on 224×224 crops.
    V3VitS,
}

impl Step {
    const ALL: [Step; 3] = [Step::Moco, Step::V3, Step::V3VitS];

    fn name(self) -> &'static str {
        match self {
            Step::Moco => "moco",
            Step::V3 => "v3",
            Step::V3VitS => "v3-vit-s",
        }
    }

    fn parse(name: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|s| s.name() == name)
    }

    /// What the tables' titles say of it.
    fn title(self) -> &'static str {
        match self {
            Step::Moco => "MoCo step, ResNet-18 CIFAR stem, K=4096, split BN 8, SGD, 32×32",
            Step::V3 => {
                "MoCo v3 step, ResNet-18 CIFAR stem, projector and predictor 4096 wide, LARS, 32×32"
            }
            Step::V3VitS => {
                "MoCo v3 step, ViT-S/16 (patch projection frozen), projector 3 and predictor 2 \
                 layers 4096 wide, AdamW, 224×224"
            }
        }
    }

    /// The side of the square inputs.
    fn image_size(self) -> i64 {
        match self {
            Step::V3VitS => 224,
            _ => 32,
        }
    }

    /// (width, batch, timed steps) of its rows; a ViT has no width (0). A ViT-S step at 224 on
    /// a CPU takes seconds: one small batch.
    fn shapes(self) -> &'static [(i64, i64, usize)] {
        match self {
            Step::V3VitS => &[(0, 8, 2)],
            _ => &SHAPES,
        }
    }

    /// The GPU table's rows: the CPU's, and ViT-S at the batches a GPU trains it with.
    fn cuda_shapes(self) -> &'static [(i64, i64, usize)] {
        match self {
            Step::V3VitS => &[(0, 64, 0), (0, 256, 0)],
            _ => &SHAPES,
        }
    }

    /// The engine's config at a width and batch.
    fn config(self, width: i64, batch: i64) -> RunConfig {
        let batch = [("batch_size", Value::from(batch))];
        match self {
            Step::Moco => {
                RunConfig::preset(Preset::Cifar).with_overrides(batch.into_iter().chain([
                    ("width", width.into()),
                    ("queue_size", 4096.into()),
                    ("shuffle_bn_splits", 8.into()),
                ]))
            }
            Step::V3 => RunConfig::preset(Preset::V3Cifar)
                .with_overrides(batch.into_iter().chain([("width", width.into())])),
            Step::V3VitS => RunConfig::preset(Preset::V3VitS).with_overrides(batch),
        }
        .expect("bench config is valid")
    }

    /// The reference script's arguments for the same step.
    fn python_args(self) -> Vec<&'static str> {
        match self {
            Step::Moco => vec!["--framework", "moco"],
            Step::V3 => vec!["--framework", "v3"],
            Step::V3VitS => vec![
                "--framework",
                "v3",
                "--arch",
                "vit_small",
                "--image-size",
                "224",
            ],
        }
    }
}

fn engine_step_timing(
    kind: Step,
    width: i64,
    batch: i64,
    steps: usize,
    device: Device,
    precision: Option<ReducedPrecision>,
) -> Timing {
    let cfg = kind.config(width, batch);
    let side = kind.image_size();
    tch::manual_seed(0);
    let mut model = MocoModel::new(&cfg, device);
    let mut optimizer = FlatOptimizer::for_run(&model.query.store, &cfg);
    if precision == Some(ReducedPrecision::Fp16) {
        optimizer = optimizer.with_loss_scaling();
    }
    let x1 = Tensor::randn([batch, 3, side, side], (Kind::Float, device));
    let x2 = Tensor::randn([batch, 3, side, side], (Kind::Float, device));
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut step = |i: i64| {
        let out = {
            let _autocast = precision.map(|p| AutocastGuard::new(device, p).expect("autocast"));
            model.forward_step(&x1, &x2, 0.99, &mut rng).unwrap()
        };
        model.query.store.zero_grad();
        optimizer.backward(&out.loss).unwrap();
        optimizer.step(&model.query.store, cfg.effective_lr());
        model.queue.enqueue(&out.keys, i);
    };
    // The first steps pay for first-touch page faults while the allocator's pools grow.
    let warmup = 3;
    for i in 0..warmup {
        step(i);
    }
    sync(device);
    let mut start = Instant::now();
    let mut times = Vec::new();
    for i in 0..steps {
        step(i as i64 + warmup);
        if !device.is_cuda() {
            // On the CPU every step ends when its kernels do: time each one, keep the fastest
            // (a shared 2-core machine adds noise of ±15% to any single step).
            times.push(start.elapsed().as_secs_f64() * 1000.0);
            start = Instant::now();
        }
    }
    sync(device);
    if device.is_cuda() {
        // Steps queue up on the device: the mean over the synchronised run is the honest figure.
        times.push(start.elapsed().as_secs_f64() * 1000.0 / steps as f64);
    }
    let ms_per_step = times.iter().copied().fold(f64::INFINITY, f64::min);
    // Without CUPTI (or with another profiler active) the busy time is reported as n/a.
    let device_busy_ms = if device.is_cuda() {
        DeviceProfile::start(device)
            .map_err(|e| eprintln!("device profiling unavailable: {e}"))
            .ok()
            .and_then(|profile| {
                for i in 0..PROFILED_STEPS {
                    step(warmup + (steps + i) as i64);
                }
                sync(device);
                profile.finish().ok()
            })
            .map(|activity| activity.busy_ns as f64 / 1e6 / PROFILED_STEPS as f64)
    } else {
        None
    };
    Timing {
        ms_per_step,
        device_busy_ms,
    }
}

/// Times the engine in a fresh process, as the PyTorch side is: a process that already trained
/// other shapes has a different allocator state, which alone moved results by 10%.
fn engine_step_timing_in_child(
    kind: Step,
    width: i64,
    batch: i64,
    steps: usize,
    device: Device,
) -> Option<Timing> {
    let device_arg = match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    };
    timing_from(Command::new(std::env::current_exe().ok()?).env(
        CHILD_ENV,
        format!("{} {width} {batch} {steps} {device_arg}", kind.name()),
    ))
}

/// Runs a timing process (the engine's child or the PyTorch script) and reads the JSON report
/// it prints; None, with its stderr shown, when it fails.
fn timing_from(command: &mut Command) -> Option<Timing> {
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

/// The child's side of `engine_step_timing_in_child`: one timing, as JSON on stdout.
fn run_child(spec: &str) {
    let parts: Vec<&str> = spec.split(' ').collect();
    let [kind, width, batch, steps, device] = parts[..] else {
        panic!("{CHILD_ENV} is \"step width batch steps device\", got {spec:?}");
    };
    let kind = Step::parse(kind).expect("a step");
    let device = match device.strip_prefix("cuda:") {
        Some(i) => Device::Cuda(i.parse().expect("a CUDA index")),
        None => Device::Cpu,
    };
    if device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let precision = reduced_precision(Precision::Auto, device).expect("auto precision resolves");
    let t = engine_step_timing(
        kind,
        width.parse().expect("width"),
        batch.parse().expect("batch"),
        steps.parse().expect("steps"),
        device,
        precision,
    );
    println!(
        "{}",
        serde_json::json!({"ms_per_step": t.ms_per_step, "device_busy_ms_per_step": t.device_busy_ms})
    );
}

fn pytorch_step_timing(
    kind: Step,
    width: i64,
    batch: i64,
    steps: usize,
    device: Device,
    precision: Option<ReducedPrecision>,
) -> Option<Timing> {
    let mut command = Command::new(python());
    command
        .arg(reference_script())
        .arg("bench")
        .args(kind.python_args())
        .args(["--width", &width.to_string()])
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
    timing_from(&mut command)
}

const SHAPES: [(i64, i64, usize); 4] = [(16, 64, 10), (16, 256, 5), (64, 64, 5), (64, 256, 3)];
const CPU_ROUNDS: usize = 2;

/// A row's width: the ResNet's, or a dash for a ViT.
fn width_label(width: i64) -> String {
    if width > 0 {
        width.to_string()
    } else {
        "—".into()
    }
}

fn cpu_table(kind: Step) {
    println!(
        "{}, CPU fp32, threads {}",
        kind.title(),
        tch::get_num_threads()
    );
    println!(
        "{:>6} {:>6} {:>14} {:>14} {:>8}",
        "width", "batch", "engine ms", "pytorch ms", "ratio"
    );
    for &(width, batch, steps) in kind.shapes() {
        // Two rounds, alternating the sides, each keeping its fastest step: a shared machine's
        // background work otherwise lands on whichever side happens to run at the time.
        let mut engine = f64::INFINITY;
        let mut reference: Option<f64> = None;
        for _ in 0..CPU_ROUNDS {
            if let Some(e) = engine_step_timing_in_child(kind, width, batch, steps, Device::Cpu) {
                engine = engine.min(e.ms_per_step);
            }
            if let Some(r) = pytorch_step_timing(kind, width, batch, steps, Device::Cpu, None) {
                reference = Some(reference.map_or(r.ms_per_step, |best| best.min(r.ms_per_step)));
            }
        }
        let label = width_label(width);
        match reference {
            Some(reference) => println!(
                "{label:>6} {batch:>6} {engine:>14.1} {reference:>14.1} {:>8.3}",
                engine / reference
            ),
            None => println!(
                "{label:>6} {batch:>6} {engine:>14.1} {:>14} {:>8}",
                "n/a", "n/a"
            ),
        }
    }
}

/// Share of the step during which the device ran nothing.
fn idle_share(t: &Timing) -> String {
    match t.device_busy_ms {
        // No kernel recorded at all means the profiler saw nothing (no CUPTI), not an idle GPU.
        Some(busy) if busy > 0.0 => {
            format!("{:.0}%", (1.0 - busy / t.ms_per_step).max(0.0) * 100.0)
        }
        _ => "n/a".into(),
    }
}

fn cuda_table(device: Device, kind: Step) {
    let precision = reduced_precision(Precision::Auto, device).expect("auto precision resolves");
    let name = precision_label(precision);
    println!();
    println!("{} on {device:?}, {name}, channels_last", kind.title());
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
    for &(width, batch, _) in kind.cuda_shapes() {
        let steps = 30;
        let label = width_label(width);
        let Some(engine) = engine_step_timing_in_child(kind, width, batch, steps, device) else {
            println!("{label:>6} {batch:>6} engine failed");
            continue;
        };
        let images = |t: &Timing| batch as f64 * 1000.0 / t.ms_per_step;
        match pytorch_step_timing(kind, width, batch, steps, device, precision) {
            Some(reference) => println!(
                "{label:>6} {batch:>6} {:>11.2} {:>11.2} {:>7.3} {:>12.0} {:>12.0} {:>12} {:>12}",
                engine.ms_per_step,
                reference.ms_per_step,
                engine.ms_per_step / reference.ms_per_step,
                images(&engine),
                images(&reference),
                idle_share(&engine),
                idle_share(&reference)
            ),
            None => println!(
                "{label:>6} {batch:>6} {:>11.2} {:>11} {:>7} {:>12.0} {:>12} {:>12} {:>12}",
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
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        run_child(&spec);
        return;
    }
    // MOCO_BENCH_GPU_ONLY skips the CPU table where device time is scarce.
    // MOCO_BENCH_STEPS=moco,v3,v3-vit-s picks the steps timed (default: all).
    let chosen: Vec<Step> = match std::env::var("MOCO_BENCH_STEPS") {
        Ok(list) => list
            .split(',')
            .map(|name| {
                Step::parse(name.trim()).unwrap_or_else(|| {
                    panic!("MOCO_BENCH_STEPS: unknown step {name:?}; expected moco, v3 or v3-vit-s")
                })
            })
            .collect(),
        Err(_) => Step::ALL.to_vec(),
    };
    if std::env::var_os("MOCO_BENCH_GPU_ONLY").is_none() {
        for (i, &kind) in chosen.iter().enumerate() {
            if i > 0 {
                println!();
            }
            cpu_table(kind);
        }
    }
    if tch::Cuda::is_available() {
        tch::Cuda::cudnn_set_benchmark(true);
        for &kind in &chosen {
            cuda_table(Device::Cuda(0), kind);
        }
    } else {
        println!("\nno CUDA device: the GPU table (images/s, device idle share) is skipped");
    }
}
