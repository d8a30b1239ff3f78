//! STL-10 in its binary format (`stl10_binary/`).
//!
//! `train_X.bin` / `test_X.bin` / `unlabeled_X.bin` hold 96×96 RGB images of 27 648 bytes each:
//! three channel planes (red, green, blue), each stored column-major (the official readers
//! transpose it: byte `c·9216 + x·96 + y` is the pixel at row y, column x). `train_y.bin` /
//! `test_y.bin` hold one label byte per image, 1–10. Images are read from disk on demand
//! (positioned reads), so the 2.7 GB unlabeled split costs no memory.
use super::Dataset;
use anyhow::Context;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

pub const SIDE: usize = 96;
pub const IMAGE_BYTES: usize = SIDE * SIDE * 3;
pub const DIR_NAME: &str = "stl10_binary";

pub const CLASSES: [&str; 10] = [
    "airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck",
];

/// The directory holding the binary files: `path` itself or `path/stl10_binary`.
pub fn find_dir(path: &Path) -> Option<PathBuf> {
    [path.to_path_buf(), path.join(DIR_NAME)]
        .into_iter()
        .find(|d| d.join("train_X.bin").is_file() && d.join("test_X.bin").is_file())
}

/// Checks that the four labelled files are in `dir`, that the image files are a whole number of
/// images and that each label file has one byte per image (by size only: cheap, for a freshly
/// extracted archive). `unlabeled_X.bin`, when present, must be whole images too.
pub fn check_files(dir: &Path) -> anyhow::Result<()> {
    let size = |name: &str| -> anyhow::Result<u64> {
        let path = dir.join(name);
        Ok(std::fs::metadata(&path)
            .with_context(|| format!("{} is missing", path.display()))?
            .len())
    };
    let images = |name: &str| -> anyhow::Result<u64> {
        let len = size(name)?;
        anyhow::ensure!(
            len > 0 && len.is_multiple_of(IMAGE_BYTES as u64),
            "{}: {len} bytes is not a whole number of 96×96×3 STL-10 images",
            dir.join(name).display()
        );
        Ok(len / IMAGE_BYTES as u64)
    };
    for split in ["train", "test"] {
        let count = images(&format!("{split}_X.bin"))?;
        let labels = size(&format!("{split}_y.bin"))?;
        anyhow::ensure!(
            labels == count,
            "{}: {labels} labels for {count} images",
            dir.join(format!("{split}_y.bin")).display()
        );
    }
    if dir.join("unlabeled_X.bin").exists() {
        images("unlabeled_X.bin")?;
    }
    Ok(())
}

/// One image file (and its labels, when labelled).
struct Source {
    path: PathBuf,
    file: File,
    count: usize,
    /// 0-based labels; `None` for the unlabeled images.
    labels: Option<Vec<u8>>,
}

impl Source {
    fn open(images: PathBuf, labels: Option<PathBuf>) -> anyhow::Result<Source> {
        let file =
            File::open(&images).with_context(|| format!("cannot open {}", images.display()))?;
        let size = file
            .metadata()
            .with_context(|| format!("cannot read {}", images.display()))?
            .len() as usize;
        anyhow::ensure!(size > 0, "{}: the file is empty", images.display());
        anyhow::ensure!(
            size.is_multiple_of(IMAGE_BYTES),
            "{}: {size} bytes is not a whole number of 96×96×3 STL-10 images (truncated?)",
            images.display()
        );
        let count = size / IMAGE_BYTES;
        let labels = match labels {
            None => None,
            Some(lp) => {
                let raw =
                    std::fs::read(&lp).with_context(|| format!("cannot read {}", lp.display()))?;
                anyhow::ensure!(
                    raw.len() == count,
                    "{}: {} labels for {} images in {}",
                    lp.display(),
                    raw.len(),
                    count,
                    images.display()
                );
                let mut labels = Vec::with_capacity(count);
                for (i, &l) in raw.iter().enumerate() {
                    anyhow::ensure!(
                        (1..=CLASSES.len() as u8).contains(&l),
                        "{}: label {l} of image {i} is outside 1–10",
                        lp.display()
                    );
                    labels.push(l - 1);
                }
                Some(labels)
            }
        };
        Ok(Source {
            path: images,
            file,
            count,
            labels,
        })
    }
}

/// A split made of one or more sources back to back (train + unlabeled for pre-training).
pub struct Stl10Split {
    sources: Vec<Source>,
    len: usize,
    class_names: Vec<String>,
}

impl Stl10Split {
    fn new(sources: Vec<Source>, class_names: Vec<String>) -> Self {
        let len = sources.iter().map(|s| s.count).sum();
        Stl10Split {
            sources,
            len,
            class_names,
        }
    }

    fn locate(&self, mut index: usize) -> Option<(&Source, usize)> {
        for s in &self.sources {
            if index < s.count {
                return Some((s, index));
            }
            index -= s.count;
        }
        None
    }
}

impl Dataset for Stl10Split {
    fn len(&self) -> usize {
        self.len
    }

    fn image_size(&self) -> (usize, usize) {
        (SIDE, SIDE)
    }

    fn class_names(&self) -> &[String] {
        &self.class_names
    }

    fn label(&self, index: usize) -> i64 {
        match self.locate(index) {
            Some((s, i)) => s.labels.as_ref().map_or(-1, |l| l[i] as i64),
            None => -1,
        }
    }

    fn read_into(&self, index: usize, out: &mut [u8]) -> anyhow::Result<()> {
        let (source, i) = self
            .locate(index)
            .with_context(|| format!("image {index} is out of range ({} images)", self.len))?;
        anyhow::ensure!(
            out.len() == IMAGE_BYTES,
            "buffer of {} bytes, need {IMAGE_BYTES}",
            out.len()
        );
        let mut raw = vec![0u8; IMAGE_BYTES];
        source
            .file
            .read_exact_at(&mut raw, (i * IMAGE_BYTES) as u64)
            .with_context(|| format!("{}: cannot read image {i}", source.path.display()))?;
        column_major_to_hwc(&raw, out);
        Ok(())
    }
}

/// STL-10's channel planes are column-major; the dataset hands out row-major HWC.
pub fn column_major_to_hwc(raw: &[u8], out: &mut [u8]) {
    let plane = SIDE * SIDE;
    for c in 0..3 {
        let p = &raw[c * plane..(c + 1) * plane];
        for x in 0..SIDE {
            let column = &p[x * SIDE..(x + 1) * SIDE];
            for (y, &v) in column.iter().enumerate() {
                out[(y * SIDE + x) * 3 + c] = v;
            }
        }
    }
}

/// Writes HWC 96×96 images in STL-10's column-major layout (tests make small files with it).
pub fn encode_images(images: &[Vec<u8>]) -> Vec<u8> {
    let plane = SIDE * SIDE;
    let mut out = vec![0u8; images.len() * IMAGE_BYTES];
    for (k, hwc) in images.iter().enumerate() {
        assert_eq!(hwc.len(), IMAGE_BYTES, "STL-10 images are 96×96×3");
        let o = &mut out[k * IMAGE_BYTES..(k + 1) * IMAGE_BYTES];
        for c in 0..3 {
            for x in 0..SIDE {
                for y in 0..SIDE {
                    o[c * plane + x * SIDE + y] = hwc[(y * SIDE + x) * 3 + c];
                }
            }
        }
    }
    out
}

fn class_names(dir: &Path) -> Vec<String> {
    if let Ok(text) = std::fs::read_to_string(dir.join("class_names.txt")) {
        let names: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        if names.len() == CLASSES.len() {
            return names;
        }
    }
    CLASSES.iter().map(|s| s.to_string()).collect()
}

/// Opens STL-10 under `path` (the binary directory or its parent). With `use_unlabeled` the
/// training split is train + unlabeled (105 000 images; unlabeled ones have label -1).
pub fn open(path: &Path, use_unlabeled: bool) -> anyhow::Result<(Stl10Split, Stl10Split)> {
    anyhow::ensure!(
        path.exists(),
        "STL-10 dataset {}: no such directory",
        path.display()
    );
    let dir = find_dir(path).with_context(|| {
        format!(
            "STL-10 dataset {}: expected train_X.bin, train_y.bin, test_X.bin, test_y.bin there \
             or in {}/{DIR_NAME}",
            path.display(),
            path.display()
        )
    })?;
    let names = class_names(&dir);
    let mut train_sources = vec![Source::open(
        dir.join("train_X.bin"),
        Some(dir.join("train_y.bin")),
    )?];
    if use_unlabeled {
        let unlabeled = dir.join("unlabeled_X.bin");
        anyhow::ensure!(
            unlabeled.is_file(),
            "STL-10 dataset: use_unlabeled is set but {} is missing",
            unlabeled.display()
        );
        train_sources.push(Source::open(unlabeled, None)?);
    }
    let test = Source::open(dir.join("test_X.bin"), Some(dir.join("test_y.bin")))?;
    Ok((
        Stl10Split::new(train_sources, names.clone()),
        Stl10Split::new(vec![test], names),
    ))
}
