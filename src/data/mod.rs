//! Datasets, batched on-device augmentation and the prefetching loader.
//!
//! Every dataset hands out images as uint8 HWC pixels of one fixed size (image folders are decoded
//! and resized once to `load_size`), so the loader can stack a batch into one `[N, 3, H, W]` uint8
//! tensor and the augmentations run batched on the training device.
//!
//! Formats: the built-in synthetic shapes ([`synthetic`]), CIFAR-10/100 binary ([`cifar`]), STL-10
//! binary ([`stl10`]) and image folders in the ImageNet layout ([`folder`]). [`open_splits`] opens
//! any of them from a [`DatasetConfig`]; [`parse_dataset_spec`] turns a command-line spec such as
//! `cifar10:cifar-10-batches-bin` into one.
use crate::config::Choice;
use crate::config::{DatasetConfig, DatasetKind};
use anyhow::Context;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub mod augment;
pub mod cifar;
pub mod fetch;
pub mod folder;
pub mod loader;
pub mod preview;
pub mod stl10;
pub mod synthetic;

pub use augment::Augmenter;
pub use loader::{Batch, Loader, LoaderOptions};

/// A labelled set of equally sized RGB images.
pub trait Dataset: Send + Sync {
    /// Number of images.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// (height, width) of every image this dataset hands out.
    fn image_size(&self) -> (usize, usize);
    fn class_names(&self) -> &[String];
    /// Label of image `index` (-1 for unlabeled images, e.g. STL-10's unlabeled split).
    fn label(&self, index: usize) -> i64;
    /// Writes image `index` as HWC uint8 RGB into `out` (len = h × w × 3).
    fn read_into(&self, index: usize, out: &mut [u8]) -> anyhow::Result<()>;
    /// Files left out because they could not be read (`skip_corrupt`), as "path: reason".
    fn skipped(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The training split and the held-out split (kNN queries) of a dataset.
#[derive(Clone)]
pub struct DatasetSplits {
    pub train: Arc<dyn Dataset>,
    pub test: Arc<dyn Dataset>,
    /// Per-channel mean and std of the training images in [0, 1] units (normalisation).
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

/// What `moco-server data inspect` prints and the dataset list shows.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DatasetInfo {
    /// Training images (with STL-10's unlabeled images when they are used).
    pub images: usize,
    /// Held-out images.
    pub test_images: usize,
    /// Number of classes.
    pub classes: usize,
    pub class_names: Vec<String>,
    /// Side of the (square) images handed to the loader.
    pub image_size: usize,
    pub mean: [f64; 3],
    pub std: [f64; 3],
    /// Unreadable files left out (`skip_corrupt`).
    pub skipped: usize,
    /// The first few of them, as "path: reason".
    pub skipped_examples: Vec<String>,
}

/// Images sampled (evenly spaced) for the mean/std of sets held in memory or drawn on the fly.
const STATS_SAMPLE: usize = 10_000;
/// Fewer for image folders without a cache: every sample is a file decode.
const STATS_SAMPLE_FILES: usize = 500;

/// Opens both splits of the dataset `cfg` describes; a relative path is joined to `base_dir`.
///
/// Errors name the path and the reason (missing, empty, wrong format, unreadable file).
pub fn open_splits(cfg: &DatasetConfig, base_dir: &Path) -> anyhow::Result<DatasetSplits> {
    let path = || -> anyhow::Result<PathBuf> {
        let p = cfg
            .path
            .as_deref()
            .filter(|p| !p.trim().is_empty())
            .with_context(|| format!("a {} dataset needs a path", cfg.kind.name()))?;
        let p = Path::new(p);
        Ok(if p.is_absolute() {
            p.to_path_buf()
        } else {
            base_dir.join(p)
        })
    };
    let (train, test, sample): (Arc<dyn Dataset>, Arc<dyn Dataset>, usize) = match cfg.kind {
        DatasetKind::Synthetic => {
            anyhow::ensure!(
                cfg.synthetic_train > 0 && cfg.synthetic_test > 0,
                "the synthetic dataset needs at least one image per split"
            );
            anyhow::ensure!(
                (8..=1024).contains(&cfg.synthetic_image_size),
                "synthetic_image_size must be between 8 and 1024, got {}",
                cfg.synthetic_image_size
            );
            let train = synthetic::Synthetic::new(
                synthetic::SYNTHETIC_SEED,
                synthetic::Split::Train,
                cfg.synthetic_train,
                cfg.synthetic_image_size,
            );
            let test = synthetic::Synthetic::new(
                synthetic::SYNTHETIC_SEED,
                synthetic::Split::Test,
                cfg.synthetic_test,
                cfg.synthetic_image_size,
            );
            (Arc::new(train), Arc::new(test), 1000)
        }
        DatasetKind::Cifar10 | DatasetKind::Cifar100 => {
            let (train, test) = cifar::open(&path()?, cfg.kind == DatasetKind::Cifar100)?;
            (Arc::new(train), Arc::new(test), STATS_SAMPLE)
        }
        DatasetKind::Stl10 => {
            let (train, test) = stl10::open(&path()?, cfg.use_unlabeled)?;
            (Arc::new(train), Arc::new(test), 2000)
        }
        DatasetKind::ImageFolder => {
            let opts = folder::FolderOptions {
                load_size: cfg.load_size,
                cache: cfg.cache,
                skip_corrupt: cfg.skip_corrupt,
            };
            let (train, test) = folder::open(&path()?, &opts)?;
            let sample = if cfg.cache {
                STATS_SAMPLE
            } else {
                STATS_SAMPLE_FILES
            };
            (Arc::new(train), Arc::new(test), sample)
        }
    };
    anyhow::ensure!(
        !train.is_empty(),
        "the training split of {} has no images",
        cfg.label()
    );
    let (mean, std) = mean_std(train.as_ref(), sample)?;
    Ok(DatasetSplits {
        train,
        test,
        mean,
        std,
    })
}

/// Per-channel mean and std in [0, 1] units over up to `limit` evenly spaced images.
pub fn mean_std(ds: &dyn Dataset, limit: usize) -> anyhow::Result<([f64; 3], [f64; 3])> {
    use rayon::prelude::*;
    let n = ds.len();
    anyhow::ensure!(n > 0, "no images to compute the mean and std of");
    let take = n.min(limit.max(1));
    let (h, w) = ds.image_size();
    // Exact integer sums per image, summed in f64: no rounding drift over many images.
    let sums = (0..take)
        .into_par_iter()
        .map_init(
            || vec![0u8; h * w * 3],
            |buf, k| -> anyhow::Result<[f64; 6]> {
                let index = k * n / take;
                ds.read_into(index, buf)?;
                let mut s = [0u64; 3];
                let mut sq = [0u64; 3];
                for px in buf.chunks_exact(3) {
                    for c in 0..3 {
                        let v = px[c] as u64;
                        s[c] += v;
                        sq[c] += v * v;
                    }
                }
                Ok([
                    s[0] as f64,
                    s[1] as f64,
                    s[2] as f64,
                    sq[0] as f64,
                    sq[1] as f64,
                    sq[2] as f64,
                ])
            },
        )
        .try_reduce(
            || [0.0; 6],
            |a, b| {
                let mut r = a;
                for (x, y) in r.iter_mut().zip(b) {
                    *x += y;
                }
                Ok(r)
            },
        )?;
    let count = (take * h * w) as f64;
    let mut mean = [0.0; 3];
    let mut std = [0.0; 3];
    for c in 0..3 {
        let m = sums[c] / count / 255.0;
        let var = (sums[c + 3] / count / (255.0 * 255.0) - m * m).max(0.0);
        mean[c] = m;
        // A constant channel would divide by zero in the normalisation.
        std[c] = var.sqrt().max(1e-3);
    }
    Ok((mean, std))
}

/// Count, classes, image size, mean/std and skipped files of opened splits.
pub fn inspect(splits: &DatasetSplits) -> DatasetInfo {
    let (h, _w) = splits.train.image_size();
    let mut skipped = splits.train.skipped();
    skipped.extend(splits.test.skipped());
    DatasetInfo {
        images: splits.train.len(),
        test_images: splits.test.len(),
        classes: splits.train.class_names().len(),
        class_names: splits.train.class_names().to_vec(),
        image_size: h,
        mean: splits.mean,
        std: splits.std,
        skipped: skipped.len(),
        skipped_examples: skipped.into_iter().take(10).collect(),
    }
}

/// Parses a dataset spec from the command line: `synthetic`, `KIND:PATH` (kind one of cifar10,
/// cifar100, stl10, folder / image_folder) or a bare path whose format is detected (relative to
/// the current directory).
pub fn parse_dataset_spec(spec: &str) -> anyhow::Result<DatasetConfig> {
    parse_dataset_spec_in(spec, Path::new("."))
}

/// [`parse_dataset_spec`] with bare relative paths detected under `base_dir` (the data directory).
/// The path stored in the config stays as written, so it is still relative to `base_dir`.
pub fn parse_dataset_spec_in(spec: &str, base_dir: &Path) -> anyhow::Result<DatasetConfig> {
    let spec = spec.trim();
    anyhow::ensure!(!spec.is_empty(), "the dataset spec is empty");
    if spec == "synthetic" {
        return Ok(DatasetConfig::synthetic());
    }
    let with_path = |kind: DatasetKind, path: &str| -> anyhow::Result<DatasetConfig> {
        anyhow::ensure!(
            !path.trim().is_empty(),
            "the dataset spec {spec:?} has no path after the colon"
        );
        Ok(DatasetConfig {
            kind,
            path: Some(path.to_string()),
            ..DatasetConfig::synthetic()
        })
    };
    if let Some((prefix, rest)) = spec.split_once(':') {
        let kind = match prefix {
            "cifar10" => Some(DatasetKind::Cifar10),
            "cifar100" => Some(DatasetKind::Cifar100),
            "stl10" => Some(DatasetKind::Stl10),
            "folder" | "image_folder" | "imagefolder" => Some(DatasetKind::ImageFolder),
            "synthetic" => anyhow::bail!("the synthetic dataset takes no path: write `synthetic`"),
            _ => None,
        };
        if let Some(kind) = kind {
            return with_path(kind, rest);
        }
    }
    let p = Path::new(spec);
    let full = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    };
    anyhow::ensure!(
        full.exists(),
        "dataset {}: no such file or directory (expected `synthetic`, KIND:PATH with KIND one of \
         cifar10, cifar100, stl10, folder, or an existing path)",
        full.display()
    );
    let kind = detect_kind(&full).with_context(|| {
        format!(
            "dataset {}: not a recognised format (CIFAR-10/100 binary, STL-10 binary, or a folder \
             of class subfolders holding JPEG/PNG images)",
            full.display()
        )
    })?;
    with_path(kind, spec)
}

/// Recognises a dataset directory by its files: CIFAR-10/100 binary (the directory itself or its
/// parent), STL-10 binary, or an image folder (class subfolders, optionally under train/).
pub fn detect_kind(path: &Path) -> Option<DatasetKind> {
    if !path.is_dir() {
        return None;
    }
    if cifar::find_dir(path, false).is_some() {
        return Some(DatasetKind::Cifar10);
    }
    if cifar::find_dir(path, true).is_some() {
        return Some(DatasetKind::Cifar100);
    }
    if stl10::find_dir(path).is_some() {
        return Some(DatasetKind::Stl10);
    }
    if folder::looks_like_image_folder(path) {
        return Some(DatasetKind::ImageFolder);
    }
    None
}

/// Rearranges one HWC image (as datasets hand them out) into CHW order (as tensors hold them).
pub(crate) fn hwc_to_chw(hwc: &[u8], chw: &mut [u8]) {
    let plane = hwc.len() / 3;
    for (i, px) in hwc.chunks_exact(3).enumerate() {
        chw[i] = px[0];
        chw[plane + i] = px[1];
        chw[2 * plane + i] = px[2];
    }
}
