//! Data-parallel training on the CPU: `moco-server train --nproc 2` (Gloo) against the same
//! global batch on one process, side by side with PyTorch DistributedDataParallel running the
//! official builder.py step (benches/py/ddp_reference.py) on the same shapes: ResNet-18 with the
//! CIFAR stem at width 16, 32×32, global batch 64, K 4096, one BatchNorm group per rank (split
//! BN 2 on one process), the v1 loss, SGD.
//!
//! Prints milliseconds per step for 1 and 2 processes on each side, the engine's time in
//! collectives per step (`comm_ms`: sharing images, keys and gradients, and waiting for the other
//! rank) and the ratios. A third engine row trains 2 processes with the whole gradient in one
//! bucket (`bucket_cap_mb` above its size: one all-reduce after backward), against DDP's buckets
//! that overlap backward in the row above. The engine's figure is a whole training step as a run takes it,
//! augmentation of both views and the loader included; PyTorch's is the model step on tensors
//! already in memory, so the ratio leans in PyTorch's favour.
//!
//! Options (flag or environment variable): `--width` / MOCO_DIST_WIDTH (16), `--batch` /
//! MOCO_DIST_BATCH (64), `--steps` / MOCO_DIST_STEPS (40).
use serde_json::Value;
use std::process::Command;

#[path = "support/options.rs"]
mod options;
#[path = "support/python.rs"]
mod python_support;
use options::Settings;
use python_support::python;

/// Metrics are read every this many steps; the bench keeps the fastest interval after the first.
const INTERVAL: usize = 5;

struct EngineTiming {
    ms_per_step: f64,
    comm_ms: Option<f64>,
}

fn engine(nproc: usize, width: usize, batch: usize, steps: usize, extra: &[&str]) -> EngineTiming {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let images = batch * steps;
    let mut settings = vec![
        format!("width={width}"),
        format!("batch_size={batch}"),
        "queue_size=4096".into(),
        "shuffle_bn_splits=2".into(),
        "head=linear".into(),
        "dim=128".into(),
        "temperature=0.2".into(),
        "symmetric=false".into(),
        "epochs=1".into(),
        "knn_every=0".into(),
        "knn_baseline=false".into(),
        format!("metrics_every={INTERVAL}"),
        "device=cpu".into(),
        format!("dataset.synthetic_train={images}"),
        "dataset.synthetic_test=16".into(),
    ];
    settings.extend(extra.iter().map(|s| s.to_string()));
    let out = Command::new(env!("CARGO_BIN_EXE_moco-server"))
        .current_dir(dir.path())
        .args([
            "train",
            "--preset",
            "cifar",
            "--data",
            "synthetic",
            "--json",
        ])
        .args(["--out", "run", "--nproc", &nproc.to_string()])
        .args(&settings)
        .output()
        .expect("moco-server runs");
    assert!(
        out.status.success(),
        "moco-server train --nproc {nproc} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let intervals: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["type"] == "metrics")
        .skip(1)
        .collect();
    let best = intervals
        .iter()
        .max_by(|a, b| {
            let ips = |e: &Value| e["values"]["images_per_sec"].as_f64().unwrap_or(0.0);
            ips(a).total_cmp(&ips(b))
        })
        .expect("metrics after the first interval: raise --steps");
    let ips = best["values"]["images_per_sec"].as_f64().unwrap();
    EngineTiming {
        ms_per_step: batch as f64 / ips * 1000.0,
        comm_ms: best["values"]["comm_ms"].as_f64(),
    }
}

fn pytorch(world: usize, width: usize, batch: usize, steps: usize) -> f64 {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/py/ddp_reference.py");
    let out = Command::new(python())
        .arg(script)
        .args(["--world", &world.to_string(), "--width", &width.to_string()])
        .args(["--batch", &batch.to_string(), "--steps", &steps.to_string()])
        .args(["--splits", "2", "--queue-size", "4096"])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "ddp_reference.py --world {world} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("a JSON report");
    report["ms_per_step"].as_f64().unwrap()
}

fn main() {
    let settings = Settings::from_args();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let width = settings.number("--width", "MOCO_DIST_WIDTH", 16);
    let batch = settings.number("--batch", "MOCO_DIST_BATCH", 64);
    let steps = settings.number("--steps", "MOCO_DIST_STEPS", 40);
    assert!(
        steps >= 2 * INTERVAL,
        "--steps: at least {} steps",
        2 * INTERVAL
    );
    println!(
        "data-parallel MoCo step on the CPU (Gloo), ResNet-18 CIFAR width {width}, 32x32, global \
         batch {batch}, K 4096, one BN group per rank; {} cores",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!("| processes | engine ms/step | engine comm ms/step | PyTorch DDP ms/step | engine / PyTorch |");
    println!("| --- | --- | --- | --- | --- |");
    let mut rows = Vec::new();
    for nproc in [1, 2] {
        let e = engine(nproc, width, batch, steps, &[]);
        let p = pytorch(nproc, width, batch, steps);
        let comm = e.comm_ms.map_or("–".to_string(), |c| format!("{c:.1}"));
        println!(
            "| {nproc} | {:.1} | {comm} | {p:.1} | {:.2} |",
            e.ms_per_step,
            e.ms_per_step / p
        );
        rows.push((e, p));
    }
    let one_bucket = engine(2, width, batch, steps, &["bucket_cap_mb=4096"]);
    println!(
        "| 2, one bucket | {:.1} | {} | | |",
        one_bucket.ms_per_step,
        one_bucket
            .comm_ms
            .map_or("–".to_string(), |c| format!("{c:.1}"))
    );
    let (one, two) = (&rows[0], &rows[1]);
    println!(
        "2 processes, DDP's buckets / one bucket after backward: {:.2} of the step, {:.2} of the \
         time in collectives",
        two.0.ms_per_step / one_bucket.ms_per_step,
        two.0.comm_ms.unwrap_or(0.0) / one_bucket.comm_ms.unwrap_or(f64::NAN)
    );
    println!(
        "2 processes / 1 process, same global batch: engine {:.2}, PyTorch DDP {:.2}; share of the \
         engine's 2-process step in collectives: {:.0}%",
        two.0.ms_per_step / one.0.ms_per_step,
        two.1 / one.1,
        100.0 * two.0.comm_ms.unwrap_or(0.0) / two.0.ms_per_step
    );
}
