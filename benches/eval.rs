//! The linear-probe evaluation of moco-server (`eval linear`: `eval::linear::run_probe`) side by
//! side with the same work in PyTorch and torchvision (benches/py/eval_reference.py, the loop of
//! facebookresearch/moco's main_lincls.py), on the same encoder file and the same images. Each
//! side runs in a fresh process, the sides alternating, and prints its timings as JSON; the bench
//! prints them side by side with the ratio engine / PyTorch (below 1: the engine is faster) and
//! both sides' held-out accuracy, which must roughly agree.
//!
//! Two workloads:
//!  * the fast protocol: features of the un-augmented images (eval transform) computed once by the
//!    frozen backbone in eval mode, then fc on the pooled features (weight N(0, 0.01²), bias 0)
//!    trained with SGD (lr 30, momentum 0.9, weight decay 0, batch 256, lr ×0.1 at 60% and 80% of
//!    the epochs, set per epoch) and scored top-1 / top-5 on the held-out split after every
//!    epoch. Reported: feature time, classifier-training time, their total, process wall time,
//!    top-1 / top-5.
//!  * the official moco protocol: every step a RandomResizedCrop (scale 0.08–1) + flip of the
//!    training images through the frozen backbone in eval mode, fc trained as above, for one epoch
//!    by default. Reported: epoch time (training steps only, the loader's start included), images
//!    per second, the held-out scoring pass after it, top-1 / top-5.
//!
//! The engine's side is this bench's own binary started again with the job in
//! `MOCO_BENCH_EVAL_ENGINE`: it opens the encoder and the data as `moco-server eval linear` does
//! and calls `run_probe` with an observer that timestamps its events and the last step of each
//! epoch, so the training time can be told from the scoring pass that follows it in the same
//! epoch event.
//!
//! The encoder: a seeded ResNet-18 of the cifar preset (CIFAR stem, 32-pixel crops, the CIFAR
//! demo's normalisation) at the bench's width, its BatchNorm statistics calibrated on training
//! images (forward passes in training mode, no gradient), written with `export_encoder` under
//! torchvision's keys; PyTorch loads the same file (`--encoder` probes an existing export
//! instead). Both sides use the export's normalisation. Calibrated, its pooled features have about
//! the norm of the engine's own briefly trained exports (5–12), at which lr 30 makes the
//! classifier's loss swing widely; both sides see the same swings, and their accuracies after 100
//! epochs agree closely. After the moco workload's single epoch the classifier has not settled,
//! so those accuracies are a sanity check only.
//!
//! Data: `../shared/data/cifar10` next to the checkout (an image folder with train/<class>/*.jpg
//! and test/<class>/*.jpg) when it exists, otherwise the engine's built-in synthetic set, written
//! once as PNG files so both sides read the same pixels; cut to an evenly spread subset per class.
//!
//! Budget (flag or environment variable; flags win):
//!   --epochs N         MOCO_EVAL_EPOCHS          100 (fast protocol, the protocol's own)
//!   --moco-epochs N    MOCO_EVAL_MOCO_EPOCHS     1 (moco protocol)
//!   --width N          MOCO_EVAL_WIDTH           16 (ResNet-18 channels × N/64)
//!   --batch N          MOCO_EVAL_BATCH           256
//!   --seed N           MOCO_EVAL_SEED            0 (encoder, classifier init, order, crops)
//!   --threads N        MOCO_EVAL_THREADS         cores (libtorch intra-op, both sides)
//!   --workers N        MOCO_EVAL_WORKERS         cores (engine loader threads = DataLoader workers)
//!   --limit-train N    MOCO_EVAL_LIMIT_TRAIN     10000 (0 = all)
//!   --limit-test N     MOCO_EVAL_LIMIT_TEST      2000 (0 = all)
//!   --data DIR|synthetic  MOCO_EVAL_DATA         ../shared/data/cifar10, else synthetic
//!   --device cpu|cuda  MOCO_EVAL_DEVICE          cpu
//!   --precision fp32|bf16|fp16  MOCO_EVAL_PRECISION  fp32 (the backbone's; fc is fp32)
//!   --rounds N         MOCO_EVAL_ROUNDS          1 (times: the fastest round of each side)
//!   --calibrate N      MOCO_EVAL_CALIBRATE       20 batches for the BatchNorm statistics (0: none)
//!   --encoder FILE     MOCO_EVAL_ENCODER         an encoder export to probe instead
//!   --only fast|moco   MOCO_EVAL_ONLY            one workload
//!
//! The full bench takes 3–7 minutes on 2 cores. A smoke run (under a minute once built):
//! `cargo bench --bench eval -- --limit-train 1000 --limit-test 500 --epochs 10 --width 8`.
use moco_server::config::{describe_errors, parse_device, Choice, Preset, ProbeConfig, RunConfig};
use moco_server::config::{Normalization, Protocol};
use moco_server::data::augment::ViewSpec;
use moco_server::data::{parse_dataset_spec, Augmenter, Loader, LoaderOptions};
use moco_server::eval::linear::{run_probe, ProbeEvent, ProbeObserver, ProbeRequest};
use moco_server::eval::{open_labelled, FrozenEncoder};
use moco_server::moco::model::MocoModel;
use moco_server::train::checkpoint::{export_encoder, EncoderMetadata};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;
use tch::Device;

#[path = "support/image_folder.rs"]
mod image_folder;
#[path = "support/options.rs"]
mod options;
#[path = "support/python.rs"]
mod python_support;
use python_support::python;

/// Set in the child process that runs the engine's probe: the job, as JSON.
const CHILD_ENV: &str = "MOCO_BENCH_EVAL_ENGINE";

/// Accuracies of the two sides agree when they differ by at most this many standard errors of
/// the difference of two independent scores on the held-out images (a heuristic: both sides
/// draw their own initial weights, order and crops).
const AGREEMENT_SIGMAS: f64 = 3.0;

struct Options {
    epochs: usize,
    moco_epochs: usize,
    width: usize,
    batch: usize,
    seed: u64,
    threads: usize,
    workers: usize,
    limit_train: usize,
    limit_test: usize,
    data: Option<String>,
    device: String,
    precision: String,
    rounds: usize,
    calibrate: usize,
    encoder: Option<PathBuf>,
    only: Option<Protocol>,
}

fn parse_options() -> Options {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let settings = options::Settings::from_args();
    let setting = |flag: &str, env: &str| settings.get(flag, env);
    let number = |flag: &str, env: &str, default: usize| settings.number(flag, env, default);
    let device = setting("--device", "MOCO_EVAL_DEVICE").unwrap_or_else(|| "cpu".into());
    assert!(
        device == "cpu" || device == "cuda",
        "--device: cpu or cuda, got {device:?}"
    );
    let precision = setting("--precision", "MOCO_EVAL_PRECISION").unwrap_or_else(|| "fp32".into());
    assert!(
        ["fp32", "bf16", "fp16"].contains(&precision.as_str()),
        "--precision: fp32, bf16 or fp16, got {precision:?}"
    );
    let only = setting("--only", "MOCO_EVAL_ONLY").map(|v| match v.as_str() {
        "fast" => Protocol::Fast,
        "moco" => Protocol::Moco,
        other => panic!("--only: fast or moco, got {other:?}"),
    });
    Options {
        epochs: number("--epochs", "MOCO_EVAL_EPOCHS", 100).max(1),
        moco_epochs: number("--moco-epochs", "MOCO_EVAL_MOCO_EPOCHS", 1).max(1),
        width: number("--width", "MOCO_EVAL_WIDTH", 16),
        batch: number("--batch", "MOCO_EVAL_BATCH", 256).max(1),
        seed: number("--seed", "MOCO_EVAL_SEED", 0) as u64,
        threads: number("--threads", "MOCO_EVAL_THREADS", cores).max(1),
        workers: number("--workers", "MOCO_EVAL_WORKERS", cores).max(1),
        limit_train: number("--limit-train", "MOCO_EVAL_LIMIT_TRAIN", 10_000),
        limit_test: number("--limit-test", "MOCO_EVAL_LIMIT_TEST", 2_000),
        data: setting("--data", "MOCO_EVAL_DATA"),
        device,
        precision,
        rounds: number("--rounds", "MOCO_EVAL_ROUNDS", 1).max(1),
        calibrate: number("--calibrate", "MOCO_EVAL_CALIBRATE", 20),
        encoder: setting("--encoder", "MOCO_EVAL_ENCODER").map(PathBuf::from),
        only,
    }
}

/// Scratch space of the bench: synthetic export, subsets, the encoder.
fn work_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("eval-bench")
}

/// benches/py/eval_reference.py of this checkout, or $MOCO_BENCH_ROOT/py/… where the bench was
/// carried to another machine.
fn reference_script() -> PathBuf {
    match std::env::var_os("MOCO_BENCH_ROOT") {
        Some(root) => Path::new(&root).join("py/eval_reference.py"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/py/eval_reference.py"),
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// The bench's encoder: a seeded ResNet-18 of the cifar preset at `opts.width` with BatchNorm
/// statistics calibrated on `opts.calibrate` batches of the (eval-transformed) training images,
/// exported to `path`.
fn create_encoder(opts: &Options, data: &Path, path: &Path) -> anyhow::Result<()> {
    let cfg = RunConfig::preset(Preset::Cifar)
        .with_overrides([("width", Value::from(opts.width))])
        .map_err(|e| anyhow::anyhow!("{}", describe_errors(&e)))?;
    let (mean, std) = cfg
        .normalization
        .constants()
        .or_else(|| Normalization::Imagenet.constants())
        .expect("ImageNet's normalisation is constant");
    let model = MocoModel::seeded(&cfg, Device::Cpu, opts.seed);
    if opts.calibrate > 0 {
        // Fresh BatchNorm statistics (mean 0, variance 1) leave the activations of a random
        // ResNet unnormalised, growing block by block; a trained encoder's are normalised. Passes
        // in training mode move the statistics (momentum 0.1) to the data's.
        let dataset = parse_dataset_spec(&format!("folder:{}", data.display()))?;
        let splits = open_labelled(&dataset, Path::new("."))?;
        let augmenter = Augmenter::with_views(
            [ViewSpec::crop_and_flip(1.0), ViewSpec::crop_and_flip(1.0)],
            cfg.image_size,
            mean,
            std,
        );
        let _guard = tch::no_grad_guard();
        let mut done = 0;
        for epoch in 0.. {
            let loader = Loader::new(
                splits.train.clone(),
                LoaderOptions {
                    batch_size: opts.batch,
                    shuffle: true,
                    drop_last: false,
                    seed: opts.seed,
                    epoch,
                    start_batch: 0,
                    prefetch: 2,
                    threads: opts.workers,
                    device: Device::Cpu,
                    shard: (0, 1),
                },
            );
            for batch in loader.take(opts.calibrate - done) {
                let x = augmenter.eval_view(&batch?.images);
                let _ = model.query.backbone.forward(&x, true, 1);
                done += 1;
            }
            if done >= opts.calibrate {
                break;
            }
        }
    }
    let meta = EncoderMetadata::for_run(&cfg, (mean, std), 0, 0);
    export_encoder(path, &model, &meta)?;
    Ok(())
}

/// Timestamps of a probe's events, for the engine's child process.
struct Timer {
    device: Device,
    started: Instant,
    steps_per_epoch: i64,
    features_s: f64,
    /// Seconds after the start event at which the features were ready (fast).
    features_at: f64,
    /// Seconds after the start event of each epoch's last step and of its epoch event (which
    /// follows the scoring pass).
    train_end_at: Vec<f64>,
    epoch_at: Vec<f64>,
}

impl ProbeObserver for Timer {
    fn on_event(&mut self, event: &ProbeEvent) {
        match event {
            ProbeEvent::Started {
                steps_per_epoch, ..
            } => {
                self.started = Instant::now();
                self.steps_per_epoch = *steps_per_epoch;
            }
            ProbeEvent::Features { seconds, .. } => {
                self.features_s = *seconds;
                self.features_at = self.started.elapsed().as_secs_f64();
            }
            ProbeEvent::Epoch { .. } => self.epoch_at.push(self.started.elapsed().as_secs_f64()),
            ProbeEvent::Result(_) => {}
        }
    }

    fn on_step(&mut self, step: i64) {
        if self.steps_per_epoch > 0 && step % self.steps_per_epoch == 0 {
            // The device may still be running the step the host has queued.
            sync(self.device);
            self.train_end_at.push(self.started.elapsed().as_secs_f64());
        }
    }
}

/// The engine's side of one workload, in this process: the encoder and the data opened as
/// `moco-server eval linear` opens them, then `run_probe`. Prints one JSON line with the fields
/// eval_reference.py prints.
fn run_child(spec: &str) -> anyhow::Result<()> {
    let job: Value = serde_json::from_str(spec)?;
    let text = |key: &str| job[key].as_str().unwrap_or_default().to_string();
    tch::set_num_threads(job["threads"].as_i64().unwrap_or(1) as i32);
    let protocol = Protocol::parse(&text("protocol"))
        .ok_or_else(|| anyhow::anyhow!("unknown protocol {:?}", text("protocol")))?;
    let dataset = parse_dataset_spec(&text("data"))?;
    let overrides: Vec<(String, Value)> = job["overrides"]
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let cfg = ProbeConfig::for_protocol(protocol, dataset)
        .with_overrides(overrides.iter().map(|(k, v)| (k.as_str(), v.clone())))
        .map_err(|e| anyhow::anyhow!("{}", describe_errors(&e)))?;
    let device = parse_device(&text("device"))
        .ok_or_else(|| anyhow::anyhow!("unknown device {:?}", text("device")))?
        .resolve()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let encoder = FrozenEncoder::load(Path::new(&text("encoder")), device)?;
    let splits = open_labelled(&cfg.dataset, &std::env::current_dir()?)?;
    let mut timer = Timer {
        device,
        started: Instant::now(),
        steps_per_epoch: 0,
        features_s: 0.0,
        features_at: 0.0,
        train_end_at: Vec::new(),
        epoch_at: Vec::new(),
    };
    let result = run_probe(
        &ProbeRequest {
            encoder: &encoder,
            splits: &splits,
            config: &cfg,
            device,
            // The feature pass is part of what is timed: never read from a cache.
            feature_cache: None,
        },
        &mut timer,
    )?;
    let last_epoch_at = timer.epoch_at.last().copied().unwrap_or(0.0);
    let (train_s, score_s, epoch_s) = match protocol {
        // Training and its per-epoch scoring on the cached features, as the reference times it.
        Protocol::Fast => (last_epoch_at - timer.features_at, 0.0, Vec::new()),
        _ => {
            // Epoch e trains from the end of epoch e − 1 (its epoch event) to its last step; the
            // scoring pass runs from there to its own epoch event.
            let mut epoch_s = Vec::new();
            let mut score_s = 0.0;
            let mut begin = 0.0;
            for (end, event) in timer.train_end_at.iter().zip(&timer.epoch_at) {
                epoch_s.push(end - begin);
                score_s += event - end;
                begin = *event;
            }
            (epoch_s.iter().sum(), score_s, epoch_s)
        }
    };
    let mut settings = serde_json::to_value(&cfg)?;
    settings["threads"] = Value::from(tch::get_num_threads());
    settings["device"] = Value::from(result.device.clone());
    settings["precision"] = Value::from(result.precision.clone());
    println!(
        "{}",
        json!({
            "protocol": protocol.name(),
            "top1": result.top1,
            "top5": result.top5,
            "best_top1": result.best_top1,
            "final_loss": result.final_loss,
            "features_s": timer.features_s,
            "train_s": train_s,
            "score_s": score_s,
            "epoch_s": epoch_s,
            "probe_s": timer.features_s + train_s + score_s,
            "train_images": result.train_images,
            "test_images": result.test_images,
            "steps": timer.train_end_at.len() as i64 * timer.steps_per_epoch,
            "backbone_unchanged": result.backbone_unchanged,
            "settings": settings,
        })
    );
    Ok(())
}

/// One side's run of one workload: what its process printed, and its wall time.
struct Run {
    report: Value,
    /// Process start to exit (interpreter start, imports, opening the data included).
    wall_s: f64,
}

impl Run {
    fn f(&self, key: &str) -> f64 {
        self.report[key].as_f64().unwrap_or(f64::NAN)
    }
}

/// Both sides' libtorch intra-op threads.
fn thread_env(cmd: &mut Command, threads: usize) {
    cmd.env("OMP_NUM_THREADS", threads.to_string())
        .env("MKL_NUM_THREADS", threads.to_string());
}

/// Runs `cmd` to its end and reads the last JSON line of its output.
fn run_process(mut cmd: Command, side: &str) -> Run {
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let start = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start the {side} side: {e}"));
    let wall_s = start.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the {side} side failed ({}): {text}",
        out.status
    );
    let report = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| panic!("no JSON line from the {side} side: {text}"));
    Run { report, wall_s }
}

fn epochs_of(opts: &Options, protocol: Protocol) -> usize {
    if protocol == Protocol::Fast {
        opts.epochs
    } else {
        opts.moco_epochs
    }
}

fn run_engine(opts: &Options, protocol: Protocol, encoder: &Path, data: &Path) -> Run {
    let device = if opts.device == "cuda" {
        "cuda:0"
    } else {
        "cpu"
    };
    let job = json!({
        "protocol": protocol.name(),
        "encoder": encoder,
        "data": format!("folder:{}", data.display()),
        "device": device,
        "threads": opts.threads,
        // Only what the bench changes; the rest is the protocol's own.
        "overrides": {
            "epochs": epochs_of(opts, protocol),
            "batch_size": opts.batch,
            "loader_threads": opts.workers,
            "seed": opts.seed,
            "precision": opts.precision,
        },
    });
    let mut cmd = Command::new(std::env::current_exe().expect("the bench's own binary"));
    cmd.env(CHILD_ENV, job.to_string());
    thread_env(&mut cmd, opts.threads);
    run_process(cmd, "engine")
}

fn run_pytorch(opts: &Options, protocol: Protocol, encoder: &Path, data: &Path) -> Run {
    let mut cmd = Command::new(python());
    cmd.arg(reference_script())
        .arg("--encoder")
        .arg(encoder)
        .arg("--data")
        .arg(data)
        .args(["--protocol", protocol.name()])
        .args(["--epochs", &epochs_of(opts, protocol).to_string()])
        .args(["--batch", &opts.batch.to_string()])
        .args(["--seed", &opts.seed.to_string()])
        .args(["--threads", &opts.threads.to_string()])
        .args(["--workers", &opts.workers.to_string()])
        .args(["--device", &opts.device])
        .args(["--precision", &opts.precision]);
    thread_env(&mut cmd, opts.threads);
    run_process(cmd, "PyTorch")
}

/// The fastest of the rounds for a time, the mean for anything else.
fn fastest(runs: &[Run], value: impl Fn(&Run) -> f64) -> f64 {
    runs.iter().map(value).fold(f64::INFINITY, f64::min)
}

fn mean(runs: &[Run], value: impl Fn(&Run) -> f64) -> f64 {
    runs.iter().map(value).sum::<f64>() / runs.len().max(1) as f64
}

fn row(name: &str, engine: String, pytorch: String, ratio: String) {
    println!("{name:<40} {engine:>16} {pytorch:>16} {ratio:>14}");
}

fn time_row(name: &str, engine: f64, pytorch: f64) {
    row(
        name,
        format!("{engine:.2} s"),
        format!("{pytorch:.2} s"),
        format!("{:.3}", engine / pytorch),
    );
}

/// top-1 / top-5 of both sides, their difference and whether it is within the noise band.
fn accuracy_rows(engine: &[Run], pytorch: &[Run], test_images: f64) {
    let (e1, p1) = (
        mean(engine, |r| r.f("top1")),
        mean(pytorch, |r| r.f("top1")),
    );
    let (e5, p5) = (
        mean(engine, |r| r.f("top5")),
        mean(pytorch, |r| r.f("top5")),
    );
    row(
        "held-out top-1 / top-5",
        format!("{e1:.2} / {e5:.2} %"),
        format!("{p1:.2} / {p5:.2} %"),
        format!("{:+.2} pt", e1 - p1),
    );
    let p = ((e1 + p1) / 200.0).clamp(0.01, 0.99);
    let band = AGREEMENT_SIGMAS * 100.0 * (2.0 * p * (1.0 - p) / test_images.max(1.0)).sqrt();
    let verdict = if (e1 - p1).abs() <= band {
        "agree"
    } else {
        "DISAGREE"
    };
    println!(
        "  top-1 engine − PyTorch {:+.2} pt: {verdict} (band ±{band:.2} pt, {AGREEMENT_SIGMAS}σ \
         of two independent scores on {test_images} images)",
        e1 - p1
    );
}

fn fast_table(engine: &[Run], pytorch: &[Run], opts: &Options) {
    println!();
    println!(
        "fast protocol: features once, then fc for {} epochs on them",
        opts.epochs
    );
    row(
        "",
        "engine".into(),
        "PyTorch".into(),
        "engine/PyTorch".into(),
    );
    let t = |runs: &[Run], key: &str| fastest(runs, |r| r.f(key));
    time_row(
        "features (train + held-out splits)",
        t(engine, "features_s"),
        t(pytorch, "features_s"),
    );
    time_row(
        "fc training (scored every epoch)",
        t(engine, "train_s"),
        t(pytorch, "train_s"),
    );
    time_row(
        "total (features + training)",
        t(engine, "probe_s"),
        t(pytorch, "probe_s"),
    );
    time_row(
        "process wall time",
        fastest(engine, |r| r.wall_s),
        fastest(pytorch, |r| r.wall_s),
    );
    row(
        "final training loss",
        format!("{:.4}", mean(engine, |r| r.f("final_loss"))),
        format!("{:.4}", mean(pytorch, |r| r.f("final_loss"))),
        String::new(),
    );
    accuracy_rows(engine, pytorch, pytorch[0].f("test_images"));
}

fn moco_table(engine: &[Run], pytorch: &[Run], opts: &Options) {
    println!();
    println!(
        "moco protocol (main_lincls.py): {} epoch(s) of crops + flips through the frozen backbone",
        opts.moco_epochs
    );
    row(
        "",
        "engine".into(),
        "PyTorch".into(),
        "engine/PyTorch".into(),
    );
    let epoch = |runs: &[Run]| {
        fastest(runs, |r| {
            let epochs = r.report["epoch_s"].as_array().map_or(0, |a| a.len()).max(1);
            r.f("train_s") / epochs as f64
        })
    };
    let (e, p) = (epoch(engine), epoch(pytorch));
    time_row("training epoch", e, p);
    let images = pytorch[0].f("train_images");
    row(
        "training images/s",
        format!("{:.0}", images / e),
        format!("{:.0}", images / p),
        format!("{:.3}", p / e),
    );
    time_row(
        "held-out scoring pass(es)",
        fastest(engine, |r| r.f("score_s")),
        fastest(pytorch, |r| r.f("score_s")),
    );
    time_row(
        "process wall time",
        fastest(engine, |r| r.wall_s),
        fastest(pytorch, |r| r.wall_s),
    );
    row(
        "training loss (last epoch)",
        format!("{:.4}", mean(engine, |r| r.f("final_loss"))),
        format!("{:.4}", mean(pytorch, |r| r.f("final_loss"))),
        String::new(),
    );
    accuracy_rows(engine, pytorch, pytorch[0].f("test_images"));
}

/// Settings a side reports, as key=value.
fn shown(settings: &Value, keys: &[&str]) -> String {
    keys.iter()
        .filter_map(|k| settings.get(*k).map(|v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() -> anyhow::Result<()> {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        return run_child(&spec);
    }
    let opts = parse_options();
    std::fs::create_dir_all(work_dir())?;
    tch::set_num_threads(opts.threads as i32);
    let (data, label) = image_folder::prepare(
        opts.data.as_deref(),
        opts.limit_train,
        opts.limit_test,
        &work_dir(),
    )?;
    let encoder = match &opts.encoder {
        Some(path) => std::fs::canonicalize(path)?,
        None => {
            let path = work_dir().join(format!(
                "encoder-resnet18-w{}-seed{}.safetensors",
                opts.width, opts.seed
            ));
            let t = Instant::now();
            create_encoder(&opts, &data, &path)?;
            eprintln!(
                "encoder written in {:.1} s ({} calibration batches)",
                t.elapsed().as_secs_f64(),
                opts.calibrate
            );
            path
        }
    };

    println!(
        "linear probe, engine vs PyTorch: batch {}, {} intra-op thread(s), {} loader worker(s), \
         device {}, precision {}, {} round(s)",
        opts.batch, opts.threads, opts.workers, opts.device, opts.precision, opts.rounds
    );
    match &opts.encoder {
        Some(_) => println!("encoder: {}", encoder.display()),
        None => println!(
            "encoder: seeded ResNet-18 (cifar preset, CIFAR stem) width {}, seed {}, BatchNorm \
             statistics from {} training batches: {}",
            opts.width,
            opts.seed,
            opts.calibrate,
            encoder.display()
        ),
    }
    println!("data: {label}");
    println!(
        "      limited to {} train / {} test images (0 = all)",
        opts.limit_train, opts.limit_test
    );
    println!(
        "engine/PyTorch: time ratio (below 1: the engine is faster); for images/s the throughput \
         ratio (above 1: the engine is faster)"
    );

    let workloads: Vec<Protocol> = [Protocol::Fast, Protocol::Moco]
        .into_iter()
        .filter(|p| opts.only.is_none_or(|o| o == *p))
        .collect();
    for (w, &protocol) in workloads.iter().enumerate() {
        let mut engine = Vec::new();
        let mut pytorch = Vec::new();
        // The side that goes first alternates (between workloads and rounds), so neither always
        // runs on a machine the other has just warmed or heated.
        for round in 0..opts.rounds {
            let engine_first = (w + round) % 2 == 0;
            for side in 0..2 {
                if (side == 0) == engine_first {
                    eprintln!(
                        "{} protocol, engine, round {} …",
                        protocol.name(),
                        round + 1
                    );
                    engine.push(run_engine(&opts, protocol, &encoder, &data));
                } else {
                    eprintln!(
                        "{} protocol, PyTorch, round {} …",
                        protocol.name(),
                        round + 1
                    );
                    pytorch.push(run_pytorch(&opts, protocol, &encoder, &data));
                }
            }
        }
        let (e, p) = (&engine[0].report, &pytorch[0].report);
        println!();
        println!(
            "{} protocol: engine {} train / {} test images in {} steps, PyTorch {} / {} in {} \
             steps",
            protocol.name(),
            e["train_images"],
            e["test_images"],
            e["steps"],
            p["train_images"],
            p["test_images"],
            p["steps"]
        );
        println!(
            "  engine:  {}",
            shown(
                &e["settings"],
                &[
                    "epochs",
                    "batch_size",
                    "base_lr",
                    "lr_milestones",
                    "lr_gamma",
                    "sgd_momentum",
                    "weight_decay",
                    "init_std",
                    "crop_min_scale",
                    "loader_threads",
                    "threads",
                    "device",
                    "precision",
                ]
            )
        );
        println!(
            "  PyTorch: {}",
            shown(
                &p["settings"],
                &[
                    "epochs",
                    "batch",
                    "lr",
                    "milestones",
                    "sgd_momentum",
                    "weight_decay",
                    "init_std",
                    "min_scale",
                    "workers",
                    "threads",
                    "device",
                    "precision",
                    "torch",
                ]
            )
        );
        if e["steps"] != p["steps"] {
            println!("warning: the two sides took different numbers of steps");
        }
        if protocol == Protocol::Fast {
            fast_table(&engine, &pytorch, &opts);
        } else {
            moco_table(&engine, &pytorch, &opts);
        }
    }
    Ok(())
}
