//! Augmented view pairs per second on the CPU for CIFAR-sized images (the CIFAR demo recipe,
//! batch 256), side by side with torchvision's per-image transforms of the same recipe through a
//! DataLoader with 2 worker processes (benches/py/augment_ref.py, run with .venv/bin/python).
//!
//! Both sides work on the same kind of input: in-memory random uint8 images of 32×32. The Rust
//! side is measured twice: the batched augmentation of a ready uint8 batch, and the whole path a
//! training step sees (prefetching loader → uint8 batch → two views).
//!
//! `cargo bench --bench augment [-- --batches N --images N --workers N --threads N --ops]`
//! (`--ops` adds a per-operation timing breakdown; `--threads` sets torch's intra-op threads,
//! 1 by default: the loader thread has the other core).
use moco_server::config::AugRecipe;
use moco_server::data::{Augmenter, Dataset, Loader, LoaderOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Tensor};

const SIDE: usize = 32;
const BATCH: usize = 256;
const WARMUP: usize = 3;
/// The CIFAR demo's normalisation.
const MEAN: [f64; 3] = [0.4914, 0.4822, 0.4465];
const STD: [f64; 3] = [0.2023, 0.1994, 0.2010];

/// Random 32×32 images held in memory, as torchvision's CIFAR10 holds its arrays.
struct InMemory {
    pixels: Vec<u8>,
    len: usize,
    classes: Vec<String>,
}

impl Dataset for InMemory {
    fn len(&self) -> usize {
        self.len
    }
    fn image_size(&self) -> (usize, usize) {
        (SIDE, SIDE)
    }
    fn class_names(&self) -> &[String] {
        &self.classes
    }
    fn label(&self, index: usize) -> i64 {
        (index % 10) as i64
    }
    fn read_into(&self, index: usize, out: &mut [u8]) -> anyhow::Result<()> {
        let n = SIDE * SIDE * 3;
        out.copy_from_slice(&self.pixels[index * n..(index + 1) * n]);
        Ok(())
    }
}

struct Args {
    batches: usize,
    images: usize,
    workers: usize,
    threads: Option<i32>,
    ops: bool,
}

fn parse_args() -> Args {
    let mut args = Args {
        batches: 40,
        images: 5120,
        workers: 2,
        threads: None,
        ops: false,
    };
    let argv: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < argv.len() {
        let value = || argv.get(i + 1).and_then(|v| v.parse::<usize>().ok());
        match argv[i].as_str() {
            "--batches" => args.batches = value().expect("--batches N"),
            "--images" => args.images = value().expect("--images N"),
            "--workers" => args.workers = value().expect("--workers N"),
            "--threads" => args.threads = Some(value().expect("--threads N") as i32),
            "--ops" => {
                args.ops = true;
                i += 1;
                continue;
            }
            // `cargo bench` passes --bench; other flags are ignored.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    args.images = args.images.max(BATCH);
    args
}

/// Pairs per second of the batched augmentation on a ready uint8 batch.
fn bench_views(augmenter: &Augmenter, batch: &Tensor, batches: usize) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for _ in 0..WARMUP {
        let _ = augmenter.two_views(batch, &mut rng);
    }
    let start = Instant::now();
    for _ in 0..batches {
        let (a, b) = augmenter.two_views(batch, &mut rng);
        assert_eq!(a.size()[0] + b.size()[0], 2 * BATCH as i64);
    }
    (batches * BATCH) as f64 / start.elapsed().as_secs_f64()
}

/// Pairs per second of loader + views, the path a training step waits on.
fn bench_pipeline(augmenter: &Augmenter, dataset: Arc<dyn Dataset>, batches: usize) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let per_epoch = Loader::batches_per_epoch(dataset.len(), BATCH, true);
    let mut epoch = 0u64;
    let mut done = 0usize;
    let mut pairs = 0usize;
    let mut start = None;
    while done < batches + WARMUP {
        let loader = Loader::new(
            dataset.clone(),
            LoaderOptions {
                batch_size: BATCH,
                shuffle: true,
                drop_last: true,
                seed: 0,
                epoch,
                start_batch: 0,
                prefetch: 4,
                threads: 1,
                device: Device::Cpu,
                shard: (0, 1),
            },
        );
        for batch in loader.take(per_epoch) {
            let batch = batch.expect("in-memory batch");
            let (a, _b) = augmenter.two_views(&batch.images, &mut rng);
            done += 1;
            if done == WARMUP {
                start = Some(Instant::now());
            } else if done > WARMUP {
                pairs += a.size()[0] as usize;
            }
            if done >= batches + WARMUP {
                break;
            }
        }
        epoch += 1;
    }
    pairs as f64 / start.expect("warm-up finished").elapsed().as_secs_f64()
}

/// Runs the torchvision reference; its last stdout line is a JSON object.
fn torchvision_reference(args: &Args) -> Result<serde_json::Value, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    let script = root.join("benches/py/augment_ref.py");
    if !python.exists() {
        return Err(format!("{} not found (run `make setup`)", python.display()));
    }
    let epochs = (args.batches * BATCH).div_ceil(args.images) + 1;
    let out = Command::new(&python)
        .arg(&script)
        .args(["--images", &args.images.to_string()])
        .args(["--workers", &args.workers.to_string()])
        .args(["--batch-size", &BATCH.to_string()])
        .args(["--epochs", &epochs.to_string()])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).map_err(|e| format!("unexpected output {line:?}: {e}"))
}

/// Milliseconds per call of each building block on a [256, 3, 32, 32] batch.
fn bench_ops(batch: &Tensor) {
    use moco_server::data::augment::{
        adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, grayscale,
    };
    use tch::Kind;
    let _guard = tch::no_grad_guard();
    let n = batch.size()[0];
    let x = batch.to_kind(Kind::Float) / 255.0;
    let factor = Tensor::full([n, 1, 1, 1], 1.2, (Kind::Float, Device::Cpu));
    let theta = Tensor::from_slice(&[0.8f32, 0., 0.1, 0., 0.8, -0.1])
        .view([1, 2, 3])
        .repeat([n, 1, 1]);
    let grid = Tensor::affine_grid_generator(&theta, [n, 3, 32, 32], false);
    let source = batch.to_kind(Kind::Float);
    let idx = Tensor::arange(n * 4 / 5, (Kind::Int64, Device::Cpu));
    let time = |name: &str, f: &dyn Fn() -> Tensor| {
        let _ = f();
        let start = Instant::now();
        for _ in 0..20 {
            let _ = f();
        }
        println!(
            "    {name:<28} {:>7.2} ms",
            start.elapsed().as_secs_f64() * 1000.0 / 20.0
        );
    };
    println!("  building blocks (one view of {n} images):");
    time("uint8 → float", &|| batch.to_kind(Kind::Float));
    let xs = Tensor::rand([n, 32], (Kind::Float, Device::Cpu));
    let ys = Tensor::rand([n, 32], (Kind::Float, Device::Cpu));
    time("sampling grid (per axis)", &|| {
        Tensor::cat(
            &[
                xs.view([n, 1, 32, 1]).expand([n, 32, 32, 1], false),
                ys.view([n, 32, 1, 1]).expand([n, 32, 32, 1], false),
            ],
            3,
        )
    });
    time("affine_grid_generator", &|| {
        Tensor::affine_grid_generator(&theta, [n, 3, 32, 32], false)
    });
    time("bilinear grid sample", &|| {
        source.grid_sampler(&grid, 0, 1, false)
    });
    time("brightness", &|| adjust_brightness(&x, &factor));
    time("contrast", &|| adjust_contrast(&x, &factor));
    time("saturation", &|| adjust_saturation(&x, &factor));
    time("hue", &|| adjust_hue(&x, &factor));
    time("grayscale", &|| grayscale(&x));
    time("index_select 80%", &|| x.index_select(0, &idx));
    let sub = x.narrow(0, 0, n * 4 / 5).copy();
    time("index_copy_ 80%", &|| {
        let mut y = x.shallow_clone();
        y.index_copy_(0, &idx, &sub)
    });
}

fn main() {
    let args = parse_args();
    // One core runs torch's kernels, the other the loader thread, as the two DataLoader workers
    // share the two cores on the other side. With two OpenMP threads here, the loader thread
    // preempts a spinning OpenMP worker and every parallel region waits for it.
    tch::set_num_threads(args.threads.unwrap_or(1));
    let threads = tch::get_num_threads();
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let pixels: Vec<u8> = (0..args.images * SIDE * SIDE * 3)
        .map(|_| rng.gen())
        .collect();
    let dataset = Arc::new(InMemory {
        pixels,
        len: args.images,
        classes: (0..10).map(|i| format!("class{i}")).collect(),
    });
    let augmenter = Augmenter::new(AugRecipe::Cifar, SIDE as i64, MEAN, STD);
    let batch = Tensor::from_slice(&dataset.pixels[..BATCH * SIDE * SIDE * 3])
        .view([BATCH as i64, SIDE as i64, SIDE as i64, 3])
        .permute([0, 3, 1, 2])
        .contiguous();

    // The built-in dataset's cost: 5000 images of 32×32 drawn on the rayon pool.
    let synthetic = moco_server::data::synthetic::Synthetic::new(
        moco_server::data::synthetic::SYNTHETIC_SEED,
        moco_server::data::synthetic::Split::Train,
        5000,
        SIDE,
    );
    let start = Instant::now();
    {
        use rayon::prelude::*;
        (0..5000usize).into_par_iter().for_each_init(
            || vec![0u8; SIDE * SIDE * 3],
            |buf, i| synthetic.read_into(i, buf).expect("synthetic image"),
        );
    }
    println!(
        "synthetic: 5000 images of {SIDE}×{SIDE} drawn in {:.0} ms",
        start.elapsed().as_secs_f64() * 1000.0
    );
    println!(
        "augment: cifar recipe, {SIDE}×{SIDE}, batch {BATCH}, CPU ({threads} torch threads), \
         {} batches",
        args.batches
    );
    if args.ops {
        bench_ops(&batch);
    }
    let views = bench_views(&augmenter, &batch, args.batches);
    println!("  moco-server batched views             {views:>10.0} pairs/s");
    let pipeline = bench_pipeline(&augmenter, dataset.clone(), args.batches);
    println!("  moco-server loader + batched views    {pipeline:>10.0} pairs/s");
    match torchvision_reference(&args) {
        Ok(reference) => {
            let tv = reference["pairs_per_sec"].as_f64().unwrap_or(f64::NAN);
            println!(
                "  torchvision DataLoader, {} workers     {tv:>10.0} pairs/s  (torch {}, \
                 torchvision {})",
                args.workers,
                reference["torch"].as_str().unwrap_or("?"),
                reference["torchvision"].as_str().unwrap_or("?")
            );
            println!(
                "  ratio: {:.1}× (loader + views), {:.1}× (views only)",
                pipeline / tv,
                views / tv
            );
            println!(
                "{}",
                serde_json::json!({
                    "bench": "augment",
                    "recipe": "cifar",
                    "batch_size": BATCH,
                    "rust_views_pairs_per_sec": views,
                    "rust_pipeline_pairs_per_sec": pipeline,
                    "torchvision_pairs_per_sec": tv,
                    "ratio": pipeline / tv,
                })
            );
        }
        Err(e) => println!("  torchvision reference skipped: {e}"),
    }
}
