//! Quality at a small budget: moco-server's engine and the official MoCo CIFAR-10 demo in
//! PyTorch and torchvision (benches/py/quality_reference.py: DataLoader with workers, per-image
//! transforms, the demo's loop) trained side by side on the same images, for two seeds, each run
//! in a fresh process, the sides alternating. Prints per seed and mean the kNN top-1 after the last
//! epoch, the final loss (mean over the last epoch), the wall time (process start to exit) and the
//! training images/s (kNN passes left out), then the two goals: the engine's mean kNN at least
//! PyTorch's less 0.5 pt, in at most half PyTorch's wall time.
//!
//! Data: `../shared/data/cifar10` next to the checkout (an image folder with train/<class>/*.jpg
//! and test/<class>/*.jpg) when it exists, otherwise the engine's built-in synthetic set, written
//! once as PNG files so both sides read the same images.
//!
//! The engine runs the cifar preset; the bench passes only what the budget changes (width, batch,
//! epochs, seed, data, threads, device) and prints the effective settings of both sides.
//!
//! Budget (flag or environment variable; flags win):
//!   --epochs N         MOCO_QUALITY_EPOCHS        2
//!   --width N          MOCO_QUALITY_WIDTH         16 (ResNet-18 channels × N/64)
//!   --batch N          MOCO_QUALITY_BATCH         256
//!   --seeds A,B        MOCO_QUALITY_SEEDS         0,1
//!   --threads N        MOCO_QUALITY_THREADS       cores (libtorch intra-op, both sides)
//!   --workers N        MOCO_QUALITY_WORKERS       cores (engine loader threads = DataLoader workers)
//!   --limit-train N    MOCO_QUALITY_LIMIT_TRAIN   0 = all (an evenly spread subset per class)
//!   --limit-test N     MOCO_QUALITY_LIMIT_TEST    0 = all
//!   --data DIR|synthetic  MOCO_QUALITY_DATA       ../shared/data/cifar10, else synthetic
//!   --device cpu|cuda  MOCO_QUALITY_DEVICE        cpu
//!   --lr-first-epoch 1|0  MOCO_QUALITY_LR_FIRST_EPOCH  1: PyTorch's cosine counts epochs from 1
//!                      as the demo's loop does (its last epoch runs at lr 0), or from 0
//! `--export-synthetic DIR` only writes the synthetic set as an image folder and exits.
//!
//! A smoke run (about 4 minutes on 2 cores): `cargo bench --bench quality -- --limit-train 2048
//! --limit-test 500 --threads 1 --workers 1`. Keep 2 epochs there: with the demo's epoch count a
//! 1-epoch run trains PyTorch at lr 0.
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

#[path = "support/image_folder.rs"]
mod image_folder;
#[path = "support/options.rs"]
mod options;
#[path = "support/python.rs"]
mod python_support;
use python_support::python;

/// The goals: kNN mean at least PyTorch's minus this many points …
const KNN_MARGIN_PT: f64 = 0.5;
/// … in at most this share of PyTorch's wall time.
const WALL_RATIO_GOAL: f64 = 0.5;

/// Engine settings shown in the header, where the engine has them.
const SHOWN_ENGINE_FIELDS: [&str; 28] = [
    "preset",
    "arch",
    "stem",
    "width",
    "head",
    "dim",
    "queue_size",
    "momentum",
    "temperature",
    "symmetric",
    "shuffle_bn_splits",
    "batch_size",
    "epochs",
    "base_lr",
    "lr_base_batch",
    "lr_schedule",
    "lr_update",
    "sgd_momentum",
    "weight_decay",
    "wd_exclude_bn_bias",
    "augmentation",
    "normalization",
    "knn_k",
    "knn_t",
    "knn_features",
    "knn_baseline",
    "loader_threads",
    "device",
];

struct Options {
    epochs: usize,
    width: usize,
    batch: usize,
    seeds: Vec<u64>,
    threads: usize,
    workers: usize,
    limit_train: usize,
    limit_test: usize,
    data: Option<String>,
    device: String,
    lr_first_epoch: usize,
    export_synthetic: Option<PathBuf>,
}

fn parse_options() -> Options {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let settings = options::Settings::from_args();
    let setting = |flag: &str, env: &str| settings.get(flag, env);
    let number = |flag: &str, env: &str, default: usize| settings.number(flag, env, default);
    let seeds = setting("--seeds", "MOCO_QUALITY_SEEDS")
        .unwrap_or_else(|| "0,1".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("--seeds: {s:?} is not a number"))
        })
        .collect();
    Options {
        epochs: number("--epochs", "MOCO_QUALITY_EPOCHS", 2).max(1),
        width: number("--width", "MOCO_QUALITY_WIDTH", 16),
        batch: number("--batch", "MOCO_QUALITY_BATCH", 256),
        seeds,
        threads: number("--threads", "MOCO_QUALITY_THREADS", cores).max(1),
        workers: number("--workers", "MOCO_QUALITY_WORKERS", cores).max(1),
        limit_train: number("--limit-train", "MOCO_QUALITY_LIMIT_TRAIN", 0),
        limit_test: number("--limit-test", "MOCO_QUALITY_LIMIT_TEST", 0),
        data: setting("--data", "MOCO_QUALITY_DATA"),
        device: setting("--device", "MOCO_QUALITY_DEVICE").unwrap_or_else(|| "cpu".into()),
        lr_first_epoch: number("--lr-first-epoch", "MOCO_QUALITY_LR_FIRST_EPOCH", 1).min(1),
        export_synthetic: setting("--export-synthetic", "MOCO_QUALITY_EXPORT_SYNTHETIC")
            .map(PathBuf::from),
    }
}

/// Scratch space of the bench: synthetic export, smoke-run subsets, engine run directories.
fn work_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("quality-bench")
}

/// benches/py/quality_reference.py of this checkout, or $MOCO_BENCH_ROOT/py/… where the bench was
/// carried to another machine.
fn reference_script() -> PathBuf {
    match std::env::var_os("MOCO_BENCH_ROOT") {
        Some(root) => Path::new(&root).join("py/quality_reference.py"),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/py/quality_reference.py"),
    }
}

/// The image folder both sides train on, and a label for the header.
fn prepare_data(opts: &Options) -> anyhow::Result<(PathBuf, String)> {
    image_folder::prepare(
        opts.data.as_deref(),
        opts.limit_train,
        opts.limit_test,
        &work_dir(),
    )
}

/// One training run of one side.
#[derive(Default)]
struct RunResult {
    knn_top1: f64,
    final_loss: f64,
    /// Process start to exit.
    wall_s: f64,
    /// Training images over the time spent training (kNN passes left out).
    images_per_s: f64,
    knn_per_epoch: Vec<f64>,
    /// The lr of each epoch's first metric record (the lr of the whole epoch where it is set once
    /// per epoch).
    lr_per_epoch: Vec<f64>,
    /// The engine sets the lr every step (its config says so, or its records differ within an
    /// epoch).
    lr_per_step: bool,
    train_images: usize,
    test_images: usize,
    /// PyTorch: its settings, as key=value (the engine's are printed from its config).
    settings: String,
}

/// The engine's `train` arguments: the cifar preset and only what the bench changes.
fn engine_args(opts: &Options, data: &Path, seed: u64, has_knn_baseline: bool) -> Vec<String> {
    let device = if opts.device == "cuda" {
        "cuda:0"
    } else {
        &opts.device
    };
    let mut args = vec![
        "train".to_string(),
        "--preset".into(),
        "cifar".into(),
        "--data".into(),
        format!("image_folder:{}", data.display()),
        format!("width={}", opts.width),
        format!("batch_size={}", opts.batch),
        format!("epochs={}", opts.epochs),
        format!("seed={seed}"),
        format!("loader_threads={}", opts.workers),
        format!("device={device}"),
    ];
    // The demo evaluates after every epoch only; the engine's extra kNN pass on the untrained
    // encoder would be time PyTorch does not spend.
    if has_knn_baseline {
        args.push("knn_baseline=false".into());
    }
    args
}

/// Environment of both sides: the same number of libtorch intra-op threads.
fn thread_env(cmd: &mut Command, threads: usize) {
    cmd.env("OMP_NUM_THREADS", threads.to_string())
        .env("MKL_NUM_THREADS", threads.to_string());
}

/// The engine's effective config for the bench's runs (`train --print-config`), as a TOML table.
fn engine_config(opts: &Options, data: &Path) -> anyhow::Result<toml::Table> {
    let print = |has_knn_baseline: bool| -> anyhow::Result<toml::Table> {
        let mut args = engine_args(opts, data, 0, has_knn_baseline);
        args.push("--print-config".into());
        let out = Command::new(env!("CARGO_BIN_EXE_moco-server"))
            .args(&args)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "moco-server train --print-config failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(toml::from_str(&String::from_utf8(out.stdout)?)?)
    };
    // Engines without the knn_baseline setting never run that extra pass.
    let cfg = print(false)?;
    if cfg.contains_key("knn_baseline") {
        return print(true);
    }
    Ok(cfg)
}

fn show_engine_settings(cfg: &toml::Table) -> String {
    SHOWN_ENGINE_FIELDS
        .iter()
        .filter_map(|k| cfg.get(*k).map(|v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(" ")
}

fn run_engine(opts: &Options, data: &Path, seed: u64, cfg: &toml::Table) -> RunResult {
    let out_dir = work_dir().join(format!("engine-seed{seed}"));
    let _ = std::fs::remove_dir_all(&out_dir);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_moco-server"));
    cmd.args(engine_args(
        opts,
        data,
        seed,
        cfg.contains_key("knn_baseline"),
    ))
    .arg("--json")
    .arg("--out")
    .arg(&out_dir)
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit());
    thread_env(&mut cmd, opts.threads);
    let start = Instant::now();
    let mut child = cmd.spawn().expect("cannot start moco-server");
    let stdout = child.stdout.take().expect("piped stdout");

    let mut result = RunResult {
        // Engines from before the lr_update setting set the lr every step.
        lr_per_step: cfg.get("lr_update").and_then(|v| v.as_str()) != Some("epoch"),
        ..RunResult::default()
    };
    // Training time: the intervals that end in a metric record (the engine prints every event as
    // it happens, so an interval ending in an evaluation is a kNN pass, one ending in a checkpoint
    // is the save).
    let mut last_line_at = start.elapsed().as_secs_f64();
    let mut train_s = 0.0;
    let mut images = 0usize;
    let mut last_step = 0i64;
    // Per epoch: (loss × steps, steps) and the lr of each record.
    let mut loss_sums: BTreeMap<i64, (f64, f64)> = BTreeMap::new();
    let mut lrs: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    let mut outcome = Value::Null;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("engine stdout");
        let now = start.elapsed().as_secs_f64();
        let Ok(event) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        match event["type"].as_str() {
            Some("started") => {
                result.train_images = event["train_images"].as_u64().unwrap_or(0) as usize;
            }
            Some("metrics") => {
                let step = event["step"].as_i64().unwrap_or(0);
                let epoch = event["epoch"].as_i64().unwrap_or(0);
                let steps = (step - last_step).max(0);
                last_step = step;
                train_s += now - last_line_at;
                images += steps as usize * opts.batch;
                let values = &event["values"];
                let loss = values["loss"].as_f64().unwrap_or(f64::NAN);
                let entry = loss_sums.entry(epoch).or_default();
                entry.0 += loss * steps as f64;
                entry.1 += steps as f64;
                if let Some(lr) = values["lr"].as_f64() {
                    lrs.entry(epoch).or_default().push(lr);
                }
            }
            Some("evaluation") => {
                let knn = event["knn_top1"].as_f64().unwrap_or(f64::NAN);
                if event["epoch"].as_i64().unwrap_or(0) > 0 {
                    result.knn_per_epoch.push(knn);
                    eprintln!(
                        "  engine  seed {seed}: epoch {} kNN top-1 {knn:.2}%",
                        event["epoch"]
                    );
                }
            }
            Some("log") => eprintln!(
                "  engine  {}: {}",
                event["level"].as_str().unwrap_or("log"),
                event["message"].as_str().unwrap_or_default()
            ),
            Some(_) => {}
            None if event.get("state").is_some() => outcome = event,
            None => {}
        }
        last_line_at = now;
    }
    let status = child.wait().expect("moco-server ran");
    result.wall_s = start.elapsed().as_secs_f64();
    assert!(
        status.success() && outcome["state"] == "completed",
        "the engine run for seed {seed} did not complete ({status}): {outcome}"
    );
    result.knn_top1 = outcome["final_knn_top1"]
        .as_f64()
        .or_else(|| result.knn_per_epoch.last().copied())
        .unwrap_or(f64::NAN);
    let (sum, steps) = loss_sums
        .values()
        .next_back()
        .copied()
        .unwrap_or((f64::NAN, 1.0));
    result.final_loss = sum / steps;
    result.images_per_s = images as f64 / train_s.max(1e-9);
    for values in lrs.values() {
        result.lr_per_epoch.push(values[0]);
        result.lr_per_step |= values.iter().any(|v| (v - values[0]).abs() > 1e-12);
    }
    let _ = std::fs::remove_dir_all(&out_dir);
    result
}

fn run_pytorch(opts: &Options, data: &Path, seed: u64) -> RunResult {
    let mut cmd = Command::new(python());
    cmd.arg(reference_script())
        .arg("--data")
        .arg(data)
        .args(["--epochs", &opts.epochs.to_string()])
        .args(["--width", &opts.width.to_string()])
        .args(["--batch", &opts.batch.to_string()])
        .args(["--seed", &seed.to_string()])
        .args(["--threads", &opts.threads.to_string()])
        .args(["--workers", &opts.workers.to_string()])
        .args(["--device", &opts.device])
        .args(["--lr-first-epoch", &opts.lr_first_epoch.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    thread_env(&mut cmd, opts.threads);
    let start = Instant::now();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", python().display()));
    let wall_s = start.elapsed().as_secs_f64();
    assert!(
        out.status.success(),
        "the PyTorch run for seed {seed} failed ({})",
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let report: Value = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON line from quality_reference.py: {text}"));
    let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let list = |v: &Value| -> Vec<f64> {
        v.as_array()
            .map(|a| a.iter().map(f).collect())
            .unwrap_or_default()
    };
    let settings = &report["settings"];
    let shown = settings
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    RunResult {
        knn_top1: f(&report["knn_top1"]),
        final_loss: f(&report["final_loss"]),
        wall_s,
        images_per_s: f(&report["images_per_s"]),
        knn_per_epoch: list(&report["knn_per_epoch"]),
        lr_per_epoch: list(&report["lr_per_epoch"]),
        lr_per_step: false,
        train_images: settings["train_images"].as_u64().unwrap_or(0) as usize,
        test_images: settings["test_images"].as_u64().unwrap_or(0) as usize,
        settings: shown,
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = values.collect();
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

fn format_lrs(lrs: &[f64]) -> String {
    lrs.iter()
        .map(|lr| format!("{lr:.5}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() -> anyhow::Result<()> {
    let opts = parse_options();
    if let Some(dir) = &opts.export_synthetic {
        image_folder::export_synthetic(dir)?;
        println!("wrote the synthetic set to {}", dir.display());
        return Ok(());
    }
    std::fs::create_dir_all(work_dir())?;
    let (data, label) = prepare_data(&opts)?;
    let cfg = engine_config(&opts, &data)?;

    println!(
        "MoCo CIFAR demo recipe at a small budget: ResNet-18 width {}, batch {}, {} epoch(s), \
         seeds {:?}, {} intra-op thread(s), {} loader worker(s), device {}",
        opts.width, opts.batch, opts.epochs, opts.seeds, opts.threads, opts.workers, opts.device
    );
    println!("data: {label}");
    if opts.limit_train > 0 || opts.limit_test > 0 {
        println!(
            "      limited to {} train / {} test images (0 = all)",
            opts.limit_train, opts.limit_test
        );
    }
    println!("engine settings:  {}", show_engine_settings(&cfg));

    // Seeds in turn; within a seed the side that goes first alternates, so neither side always
    // runs on a machine the other has just warmed (or heated).
    let mut engine = Vec::new();
    let mut pytorch = Vec::new();
    for (i, &seed) in opts.seeds.iter().enumerate() {
        let engine_first = i % 2 == 0;
        for side in 0..2 {
            if (side == 0) == engine_first {
                eprintln!("engine, seed {seed} …");
                engine.push(run_engine(&opts, &data, seed, &cfg));
            } else {
                eprintln!("PyTorch, seed {seed} …");
                pytorch.push(run_pytorch(&opts, &data, seed));
            }
        }
    }
    println!("PyTorch settings: {}", pytorch[0].settings);
    println!(
        "images: engine {} train, PyTorch {} train / {} test",
        engine[0].train_images, pytorch[0].train_images, pytorch[0].test_images
    );
    let lr_note = if engine[0].lr_per_step {
        " (set every step: at each epoch's first metric record)"
    } else {
        ""
    };
    println!(
        "lr per epoch: engine [{}]{lr_note}, PyTorch [{}]",
        format_lrs(&engine[0].lr_per_epoch),
        format_lrs(&pytorch[0].lr_per_epoch)
    );
    let lr_same = engine[0].lr_per_epoch.len() == pytorch[0].lr_per_epoch.len()
        && engine[0]
            .lr_per_epoch
            .iter()
            .zip(&pytorch[0].lr_per_epoch)
            .all(|(a, b)| (a - b).abs() <= 1e-6 * b.abs().max(1e-3))
        && !engine[0].lr_per_step;
    if !lr_same {
        println!("warning: the two sides do not follow the same lr schedule");
    }

    println!();
    println!("{:<22} {:>12} {:>12}", "", "engine", "PyTorch");
    let row = |name: String, e: String, p: String| println!("{name:<22} {e:>12} {p:>12}");
    for (i, seed) in opts.seeds.iter().enumerate() {
        row(
            format!("kNN top-1 seed {seed}"),
            format!("{:.2} %", engine[i].knn_top1),
            format!("{:.2} %", pytorch[i].knn_top1),
        );
    }
    let knn_engine = mean(engine.iter().map(|r| r.knn_top1));
    let knn_pytorch = mean(pytorch.iter().map(|r| r.knn_top1));
    row(
        "kNN top-1 mean".into(),
        format!("{knn_engine:.2} %"),
        format!("{knn_pytorch:.2} %"),
    );
    for (i, seed) in opts.seeds.iter().enumerate() {
        row(
            format!("final loss seed {seed}"),
            format!("{:.4}", engine[i].final_loss),
            format!("{:.4}", pytorch[i].final_loss),
        );
    }
    for (i, seed) in opts.seeds.iter().enumerate() {
        row(
            format!("wall time seed {seed}"),
            format!("{:.1} s", engine[i].wall_s),
            format!("{:.1} s", pytorch[i].wall_s),
        );
    }
    let wall_engine = mean(engine.iter().map(|r| r.wall_s));
    let wall_pytorch = mean(pytorch.iter().map(|r| r.wall_s));
    row(
        "wall time mean".into(),
        format!("{wall_engine:.1} s"),
        format!("{wall_pytorch:.1} s"),
    );
    for (i, seed) in opts.seeds.iter().enumerate() {
        row(
            format!("images/s seed {seed}"),
            format!("{:.0}", engine[i].images_per_s),
            format!("{:.0}", pytorch[i].images_per_s),
        );
    }
    println!();
    let knn_diff = knn_engine - knn_pytorch;
    let wall_ratio = wall_engine / wall_pytorch;
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "kNN: engine − PyTorch = {knn_diff:+.2} pt (goal ≥ −{KNN_MARGIN_PT:.1} pt): {}",
        verdict(knn_diff >= -KNN_MARGIN_PT)
    );
    println!(
        "wall time: engine / PyTorch = {wall_ratio:.2} (goal ≤ {WALL_RATIO_GOAL:.2}): {}",
        verdict(wall_ratio <= WALL_RATIO_GOAL)
    );
    Ok(())
}
