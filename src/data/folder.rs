//! Image folders in the ImageNet layout: `root/<class>/**/*.{jpg,jpeg,png}`.
//!
//! Splits: when `root` has `train/` and `test/` (or `val/`) subfolders they are the two splits
//! (each in the class layout, class names taken from `train/`); otherwise a deterministic ~10% of
//! every class (evenly spaced in file-name order) is held out as the test split.
//!
//! Images of any size are decoded, their shorter side resized (triangle filter, antialiased) to
//! the load size and centre-cropped to a square, so batches stack and the batched augmentation
//! crops from them. The load size is `load_size`, or when that is 0, the shorter side of the first
//! image capped at 256 (32 for CIFAR-like folders; 256 = 224 × 8/7 for ImageNet).
//!
//! At open every file's header is checked in parallel (cheap); with `cache` every image is fully
//! decoded in parallel and kept in memory, so a corrupt file surfaces at open either way. A file
//! that fails is an error naming it and the reason — or, with `skip_corrupt`, it is left out,
//! counted and reported by [`Dataset::skipped`]. A file whose body turns out broken only when the
//! loader decodes it (headers pass, data does not) is an error naming it, or with `skip_corrupt` it
//! is replaced by the next readable image of the same class and reported.
use super::Dataset;
use anyhow::Context;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Image extensions read (case-insensitive).
pub const EXTENSIONS: [&str; 3] = ["jpg", "jpeg", "png"];
/// The load size chosen when `load_size` is 0 is at most this (ImageNet's 256 for 224 crops).
pub const MAX_AUTO_LOAD_SIZE: usize = 256;
/// Warn above this much memory for a decoded cache.
const LARGE_CACHE_BYTES: usize = 4 << 30;

#[derive(Debug, Clone, Default)]
pub struct FolderOptions {
    /// Square side images are decoded to (0 = automatic, see the module docs).
    pub load_size: usize,
    /// Decode everything at open and keep it in memory.
    pub cache: bool,
    /// Leave unreadable files out (counted) instead of failing.
    pub skip_corrupt: bool,
}

/// One split: image files, their labels, and optionally their decoded pixels.
pub struct FolderSplit {
    files: Vec<PathBuf>,
    labels: Vec<i64>,
    class_names: Vec<String>,
    side: usize,
    /// Decoded HWC images back to back (`cache`).
    cache: Option<Vec<u8>>,
    skip_corrupt: bool,
    /// Files left out at open, as "path: reason".
    skipped_at_open: Vec<String>,
    /// Files that failed when the loader decoded them (and were replaced), as "path: reason".
    skipped_later: Mutex<Vec<String>>,
}

impl FolderSplit {
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Decodes image `index` from its file.
    fn decode_file(&self, index: usize, out: &mut [u8]) -> anyhow::Result<()> {
        let pixels = decode(&self.files[index], self.side)?;
        out.copy_from_slice(&pixels);
        Ok(())
    }
}

impl Dataset for FolderSplit {
    fn len(&self) -> usize {
        self.files.len()
    }

    fn image_size(&self) -> (usize, usize) {
        (self.side, self.side)
    }

    fn class_names(&self) -> &[String] {
        &self.class_names
    }

    fn label(&self, index: usize) -> i64 {
        self.labels[index]
    }

    fn read_into(&self, index: usize, out: &mut [u8]) -> anyhow::Result<()> {
        anyhow::ensure!(
            index < self.len(),
            "image {index} is out of range ({} images)",
            self.len()
        );
        let bytes = self.side * self.side * 3;
        anyhow::ensure!(
            out.len() == bytes,
            "buffer of {} bytes, need {bytes}",
            out.len()
        );
        if let Some(cache) = &self.cache {
            out.copy_from_slice(&cache[index * bytes..(index + 1) * bytes]);
            return Ok(());
        }
        let error = match self.decode_file(index, out) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if !self.skip_corrupt {
            return Err(error);
        }
        let message = format!("{error:#}");
        tracing::warn!("skipping unreadable image: {message}");
        if let Ok(mut later) = self.skipped_later.lock() {
            if !later.contains(&message) {
                later.push(message);
            }
        }
        // The next readable image of the same class stands in, so the label stays right.
        let label = self.labels[index];
        let n = self.len();
        for step in 1..n {
            let other = (index + step) % n;
            if self.labels[other] == label && self.decode_file(other, out).is_ok() {
                return Ok(());
            }
        }
        Err(error.context("no readable image of the same class to stand in for it"))
    }

    fn skipped(&self) -> Vec<String> {
        let mut all = self.skipped_at_open.clone();
        if let Ok(later) = self.skipped_later.lock() {
            all.extend(later.iter().cloned());
        }
        all
    }
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// Subdirectories of `dir`, sorted by name, hidden ones left out.
fn subdirs(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let path = entry.path();
        if path.is_dir() && !is_hidden(&path) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Image files under `dir` (recursively), sorted.
fn image_files(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        entries.push(
            entry
                .with_context(|| format!("cannot list {}", dir.display()))?
                .path(),
        );
    }
    entries.sort();
    for path in entries {
        if is_hidden(&path) {
            continue;
        }
        if path.is_dir() {
            image_files(&path, out)?;
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Classes (subfolders holding at least one image) and their files under `root`.
fn scan(root: &Path) -> anyhow::Result<Vec<(String, Vec<PathBuf>)>> {
    let mut classes = Vec::new();
    for dir in subdirs(root)? {
        let mut files = Vec::new();
        image_files(&dir, &mut files)?;
        if files.is_empty() {
            continue;
        }
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        classes.push((name, files));
    }
    anyhow::ensure!(
        !classes.is_empty(),
        "image folder {}: no class subfolders with .jpg/.jpeg/.png images (expected \
         {}/<class>/<image>)",
        root.display(),
        root.display()
    );
    Ok(classes)
}

/// Is `path` laid out as an image folder (class subfolders with images, or train/ holding them)?
pub fn looks_like_image_folder(path: &Path) -> bool {
    fn has_class_dirs(root: &Path) -> bool {
        let Ok(dirs) = subdirs(root) else {
            return false;
        };
        dirs.iter().take(64).any(|d| {
            std::fs::read_dir(d).is_ok_and(|entries| {
                entries
                    .take(256)
                    .filter_map(|e| e.ok())
                    .any(|e| is_image(&e.path()))
            })
        })
    }
    path.is_dir() && (has_class_dirs(path) || has_class_dirs(&path.join("train")))
}

/// Decodes a JPEG or PNG (format from its content), resizes the shorter side to `side` and
/// centre-crops a `side`×`side` square. Returns HWC RGB bytes.
pub fn decode(path: &Path, side: usize) -> anyhow::Result<Vec<u8>> {
    let img = image::ImageReader::open(path)
        .with_context(|| format!("{}: cannot open", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("{}: cannot read", path.display()))?
        .decode()
        .with_context(|| format!("{}: not a readable JPEG/PNG image", path.display()))?
        .to_rgb8();
    let (w, h) = img.dimensions();
    anyhow::ensure!(w > 0 && h > 0, "{}: the image is empty", path.display());
    let side32 = side as u32;
    let img = if w.min(h) != side32 {
        // Shorter side to `side`, the longer one keeping the aspect ratio.
        let (nw, nh) = if w <= h {
            (
                side32,
                ((h as u64 * side as u64) as f64 / w as f64)
                    .round()
                    .max(1.0) as u32,
            )
        } else {
            (
                ((w as u64 * side as u64) as f64 / h as f64)
                    .round()
                    .max(1.0) as u32,
                side32,
            )
        };
        image::imageops::resize(
            &img,
            nw.max(side32),
            nh.max(side32),
            image::imageops::FilterType::Triangle,
        )
    } else {
        img
    };
    let (w, h) = img.dimensions();
    let left = (w - side32) / 2;
    let top = (h - side32) / 2;
    let square = image::imageops::crop_imm(&img, left, top, side32, side32).to_image();
    Ok(square.into_raw())
}

/// Reads just the header: cheap, catches empty, truncated-at-the-start and non-image files.
fn check_header(path: &Path) -> anyhow::Result<(u32, u32)> {
    image::ImageReader::open(path)
        .with_context(|| format!("{}: cannot open", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("{}: cannot read", path.display()))?
        .into_dimensions()
        .with_context(|| format!("{}: not a readable JPEG/PNG image", path.display()))
}

/// The load size for `load_size = 0`: the first readable image's shorter side, capped at 256.
fn auto_side(files: &[PathBuf]) -> Option<usize> {
    files.iter().take(32).find_map(|f| {
        check_header(f)
            .ok()
            .map(|(w, h)| (w.min(h) as usize).clamp(1, MAX_AUTO_LOAD_SIZE))
    })
}

/// Files with labels, before checking them.
struct Listing {
    files: Vec<PathBuf>,
    labels: Vec<i64>,
}

/// Checks (or decodes, with `cache`) every file; the unreadable ones are an error or skipped.
fn build_split(
    root: &Path,
    listing: Listing,
    class_names: &[String],
    side: usize,
    opts: &FolderOptions,
) -> anyhow::Result<FolderSplit> {
    let bytes = side * side * 3;
    if opts.cache && listing.files.len() * bytes > LARGE_CACHE_BYTES {
        tracing::warn!(
            "caching {} images of {side}×{side} from {} takes {:.1} GiB of memory",
            listing.files.len(),
            root.display(),
            (listing.files.len() * bytes) as f64 / (1u64 << 30) as f64
        );
    }
    // One result per file, in order: decoded pixels with `cache`, else just a header check.
    let results: Vec<anyhow::Result<Option<Vec<u8>>>> = listing
        .files
        .par_iter()
        .map(|f| {
            if opts.cache {
                decode(f, side).map(Some)
            } else {
                check_header(f).map(|_| None)
            }
        })
        .collect();
    let failures: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| format!("{e:#}")))
        .collect();
    if !failures.is_empty() && !opts.skip_corrupt {
        let more = if failures.len() > 1 {
            format!(" (and {} more unreadable files)", failures.len() - 1)
        } else {
            String::new()
        };
        anyhow::bail!(
            "image folder {}: {}{more}; set skip_corrupt to leave unreadable files out",
            root.display(),
            failures[0]
        );
    }
    let mut files = Vec::with_capacity(listing.files.len());
    let mut labels = Vec::with_capacity(listing.files.len());
    let mut cache = opts
        .cache
        .then(|| Vec::with_capacity(listing.files.len() * bytes));
    for ((file, label), result) in listing.files.into_iter().zip(listing.labels).zip(results) {
        match result {
            Ok(pixels) => {
                files.push(file);
                labels.push(label);
                if let (Some(cache), Some(pixels)) = (cache.as_mut(), pixels) {
                    cache.extend_from_slice(&pixels);
                }
            }
            Err(_) => continue,
        }
    }
    if !failures.is_empty() {
        tracing::warn!(
            "image folder {}: left out {} unreadable file(s), e.g. {}",
            root.display(),
            failures.len(),
            failures[0]
        );
    }
    Ok(FolderSplit {
        files,
        labels,
        class_names: class_names.to_vec(),
        side,
        cache,
        skip_corrupt: opts.skip_corrupt,
        skipped_at_open: failures,
        skipped_later: Mutex::new(Vec::new()),
    })
}

/// Indices of the held-out files of a class of `n`: ~10%, evenly spaced, none for a single image.
pub fn held_out(n: usize) -> Vec<usize> {
    if n < 2 {
        return Vec::new();
    }
    let k = ((n as f64 / 10.0).round() as usize).max(1);
    (0..k).map(|j| ((2 * j + 1) * n) / (2 * k)).collect()
}

/// Opens the train and test splits of the image folder at `path`.
pub fn open(path: &Path, opts: &FolderOptions) -> anyhow::Result<(FolderSplit, FolderSplit)> {
    anyhow::ensure!(
        path.exists(),
        "image folder {}: no such directory",
        path.display()
    );
    anyhow::ensure!(
        path.is_dir(),
        "image folder {}: not a directory",
        path.display()
    );
    let train_dir = path.join("train");
    let test_dir = ["test", "val"]
        .into_iter()
        .map(|d| path.join(d))
        .find(|d| d.is_dir());
    let (train, test, class_names) = match (train_dir.is_dir(), test_dir) {
        (true, Some(test_dir)) => {
            let train_classes = scan(&train_dir)?;
            let names: Vec<String> = train_classes.iter().map(|(n, _)| n.clone()).collect();
            let mut train = Listing {
                files: Vec::new(),
                labels: Vec::new(),
            };
            for (label, (_, files)) in train_classes.into_iter().enumerate() {
                train
                    .labels
                    .extend(std::iter::repeat_n(label as i64, files.len()));
                train.files.extend(files);
            }
            let mut test = Listing {
                files: Vec::new(),
                labels: Vec::new(),
            };
            for (name, files) in scan(&test_dir)? {
                let label = names.iter().position(|n| *n == name).with_context(|| {
                    format!(
                        "image folder {}: class {name:?} is in {} but not in {}",
                        path.display(),
                        test_dir.display(),
                        train_dir.display()
                    )
                })?;
                test.labels
                    .extend(std::iter::repeat_n(label as i64, files.len()));
                test.files.extend(files);
            }
            (train, test, names)
        }
        _ => {
            let classes = scan(path)?;
            let names: Vec<String> = classes.iter().map(|(n, _)| n.clone()).collect();
            let mut train = Listing {
                files: Vec::new(),
                labels: Vec::new(),
            };
            let mut test = Listing {
                files: Vec::new(),
                labels: Vec::new(),
            };
            for (label, (_, files)) in classes.into_iter().enumerate() {
                let hold = held_out(files.len());
                for (i, f) in files.into_iter().enumerate() {
                    let split = if hold.contains(&i) {
                        &mut test
                    } else {
                        &mut train
                    };
                    split.files.push(f);
                    split.labels.push(label as i64);
                }
            }
            (train, test, names)
        }
    };
    let side = if opts.load_size > 0 {
        opts.load_size
    } else {
        auto_side(&train.files).with_context(|| {
            format!(
                "image folder {}: none of the first images is readable",
                path.display()
            )
        })?
    };
    let train = build_split(path, train, &class_names, side, opts)?;
    anyhow::ensure!(
        !train.files.is_empty(),
        "image folder {}: no readable training images",
        path.display()
    );
    let test = build_split(path, test, &class_names, side, opts)?;
    Ok((train, test))
}
