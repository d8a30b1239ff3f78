//! CIFAR-10 and CIFAR-100 in their distributed binary format.
//!
//! CIFAR-10 (`cifar-10-batches-bin/`): `data_batch_1.bin` … `data_batch_5.bin` (training) and
//! `test_batch.bin`, records of 1 label byte followed by 3072 pixel bytes (1024 red, 1024 green,
//! 1024 blue, row-major 32×32). CIFAR-100 (`cifar-100-binary/`): `train.bin` and `test.bin`, records
//! of 2 label bytes (coarse, fine) followed by the same 3072 bytes; the fine label is used.
//! The files are read whole into memory (180 MB for CIFAR-10).
use super::Dataset;
use anyhow::Context;
use std::path::{Path, PathBuf};

pub const SIDE: usize = 32;
pub const PIXELS: usize = SIDE * SIDE * 3;

pub const CIFAR10_CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

pub const CIFAR100_CLASSES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

/// The directory name inside the official archives.
pub fn dir_name(cifar100: bool) -> &'static str {
    if cifar100 {
        "cifar-100-binary"
    } else {
        "cifar-10-batches-bin"
    }
}

fn train_files(cifar100: bool) -> Vec<&'static str> {
    if cifar100 {
        vec!["train.bin"]
    } else {
        vec![
            "data_batch_1.bin",
            "data_batch_2.bin",
            "data_batch_3.bin",
            "data_batch_4.bin",
            "data_batch_5.bin",
        ]
    }
}

fn test_file(cifar100: bool) -> &'static str {
    if cifar100 {
        "test.bin"
    } else {
        "test_batch.bin"
    }
}

/// The directory holding the binary files: `path` itself or `path/<official name>`.
pub fn find_dir(path: &Path, cifar100: bool) -> Option<PathBuf> {
    let marker = train_files(cifar100)[0];
    [path.to_path_buf(), path.join(dir_name(cifar100))]
        .into_iter()
        .find(|d| d.join(marker).is_file() && d.join(test_file(cifar100)).is_file())
}

/// One split held in memory: labels and CHW pixels, record by record.
pub struct CifarSplit {
    labels: Vec<u8>,
    pixels: Vec<u8>,
    class_names: Vec<String>,
}

impl CifarSplit {
    /// Parses records from the given files (in order).
    fn read(files: &[PathBuf], cifar100: bool, class_names: Vec<String>) -> anyhow::Result<Self> {
        let label_bytes = if cifar100 { 2 } else { 1 };
        let record = label_bytes + PIXELS;
        let mut labels = Vec::new();
        let mut pixels = Vec::new();
        for file in files {
            let bytes =
                std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
            anyhow::ensure!(!bytes.is_empty(), "{}: the file is empty", file.display());
            anyhow::ensure!(
                bytes.len() % record == 0,
                "{}: {} bytes is not a whole number of {}-byte CIFAR-{} records (truncated or \
                 not a CIFAR-{} file)",
                file.display(),
                bytes.len(),
                record,
                if cifar100 { 100 } else { 10 },
                if cifar100 { 100 } else { 10 },
            );
            labels.reserve(bytes.len() / record);
            pixels.reserve(bytes.len() / record * PIXELS);
            for (i, rec) in bytes.chunks_exact(record).enumerate() {
                let label = rec[label_bytes - 1];
                anyhow::ensure!(
                    (label as usize) < class_names.len(),
                    "{}: record {i} has label {label}, but there are only {} classes",
                    file.display(),
                    class_names.len()
                );
                labels.push(label);
                pixels.extend_from_slice(&rec[label_bytes..]);
            }
        }
        Ok(CifarSplit {
            labels,
            pixels,
            class_names,
        })
    }
}

impl Dataset for CifarSplit {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn image_size(&self) -> (usize, usize) {
        (SIDE, SIDE)
    }

    fn class_names(&self) -> &[String] {
        &self.class_names
    }

    fn label(&self, index: usize) -> i64 {
        self.labels[index] as i64
    }

    fn read_into(&self, index: usize, out: &mut [u8]) -> anyhow::Result<()> {
        anyhow::ensure!(
            index < self.len(),
            "image {index} is out of range ({} images)",
            self.len()
        );
        anyhow::ensure!(
            out.len() == PIXELS,
            "buffer of {} bytes, need {PIXELS}",
            out.len()
        );
        let chw = &self.pixels[index * PIXELS..(index + 1) * PIXELS];
        let plane = SIDE * SIDE;
        for (i, px) in out.chunks_exact_mut(3).enumerate() {
            px[0] = chw[i];
            px[1] = chw[plane + i];
            px[2] = chw[2 * plane + i];
        }
        Ok(())
    }
}

/// Class names from the archive's text file (`batches.meta.txt` / `fine_label_names.txt`) when it
/// is there and has the right number of lines, else the official list.
fn class_names(dir: &Path, cifar100: bool) -> Vec<String> {
    let (file, builtin): (&str, &[&str]) = if cifar100 {
        ("fine_label_names.txt", &CIFAR100_CLASSES)
    } else {
        ("batches.meta.txt", &CIFAR10_CLASSES)
    };
    if let Ok(text) = std::fs::read_to_string(dir.join(file)) {
        let names: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        if names.len() == builtin.len() {
            return names;
        }
    }
    builtin.iter().map(|s| s.to_string()).collect()
}

/// Opens the training and test splits under `path` (the binary directory or its parent).
pub fn open(path: &Path, cifar100: bool) -> anyhow::Result<(CifarSplit, CifarSplit)> {
    let what = if cifar100 { "CIFAR-100" } else { "CIFAR-10" };
    anyhow::ensure!(
        path.exists(),
        "{what} dataset {}: no such directory",
        path.display()
    );
    let dir = find_dir(path, cifar100).with_context(|| {
        let expected: Vec<&str> = train_files(cifar100)
            .into_iter()
            .chain([test_file(cifar100)])
            .collect();
        format!(
            "{what} dataset {}: expected {} there or in {}/{}",
            path.display(),
            expected.join(", "),
            path.display(),
            dir_name(cifar100)
        )
    })?;
    let names = class_names(&dir, cifar100);
    let train_paths: Vec<PathBuf> = train_files(cifar100)
        .into_iter()
        .map(|f| dir.join(f))
        .collect();
    for p in &train_paths {
        anyhow::ensure!(p.is_file(), "{what} dataset: {} is missing", p.display());
    }
    let train = CifarSplit::read(&train_paths, cifar100, names.clone())?;
    let test = CifarSplit::read(&[dir.join(test_file(cifar100))], cifar100, names)?;
    Ok((train, test))
}

/// Checks that every file of the format is in `dir`, non-empty and a whole number of records
/// (by size only: cheap, for a freshly extracted archive).
pub fn check_files(dir: &Path, cifar100: bool) -> anyhow::Result<()> {
    let record = if cifar100 { 2 + PIXELS } else { 1 + PIXELS };
    for name in train_files(cifar100)
        .into_iter()
        .chain([test_file(cifar100)])
    {
        let path = dir.join(name);
        let len = std::fs::metadata(&path)
            .with_context(|| format!("{} is missing", path.display()))?
            .len() as usize;
        anyhow::ensure!(
            len > 0 && len.is_multiple_of(record),
            "{}: {len} bytes is not a whole number of {record}-byte records",
            path.display()
        );
    }
    Ok(())
}

/// Writes records in the CIFAR binary format (tests and tooling make small files with it).
/// `images` are HWC 32×32 RGB; for CIFAR-100 the coarse label byte is written as `label / 5`.
pub fn encode_records(images: &[(u8, Vec<u8>)], cifar100: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (label, hwc) in images {
        assert_eq!(hwc.len(), PIXELS, "CIFAR images are 32×32×3");
        if cifar100 {
            out.push(label / 5);
        }
        out.push(*label);
        for c in 0..3 {
            out.extend(hwc.chunks_exact(3).map(|px| px[c]));
        }
    }
    out
}
