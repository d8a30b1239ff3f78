//! The datasets a run can use: the built-in synthetic set, then every CIFAR-10/100, STL-10 or image
//! folder found under the data directory (never outside it). Counting is cheap (file sizes and
//! directory listings, no decoding), so the list is quick even for large sets.
use crate::config::Choice;
use crate::config::{DatasetConfig, DatasetKind};
use crate::data::{cifar, detect_kind, folder, stl10, synthetic};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How deep under the data directory datasets are looked for.
const MAX_DEPTH: usize = 3;
/// Directories looked at in all, at most (a data directory full of unrelated folders).
const MAX_DIRS: usize = 2000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetEntry {
    /// synthetic | cifar10 | cifar100 | stl10 | image_folder
    pub kind: String,
    /// Relative to the data directory (what a run's `dataset.path` takes); null for synthetic.
    pub path: Option<String>,
    pub label: String,
    /// Training images.
    pub images: u64,
    /// Held-out images.
    pub test_images: u64,
    pub classes: u64,
    /// Side of the images (image folders: the shorter side of the first image).
    pub image_size: Option<u64>,
    /// The `dataset` object to post in a run's config.
    pub config: serde_json::Value,
}

/// Scans `data_dir` (canonical). Blocking: call from `spawn_blocking`.
pub fn scan(data_dir: &Path) -> Vec<DatasetEntry> {
    let synth = DatasetConfig::synthetic();
    let mut out = vec![DatasetEntry {
        kind: "synthetic".into(),
        path: None,
        label: "Synthetic shapes (built in)".into(),
        images: synth.synthetic_train as u64,
        test_images: synth.synthetic_test as u64,
        classes: synthetic::CLASS_NAMES.len() as u64,
        image_size: Some(synth.synthetic_image_size as u64),
        config: serde_json::json!({"kind": "synthetic"}),
    }];
    let mut found = Vec::new();
    let mut visited = 0;
    walk(data_dir, data_dir, 0, &mut visited, &mut found);
    found.sort_by(|a, b| a.path.cmp(&b.path));
    out.extend(found);
    out
}

fn walk(
    data_dir: &Path,
    dir: &Path,
    depth: usize,
    visited: &mut usize,
    found: &mut Vec<DatasetEntry>,
) {
    if depth > MAX_DEPTH || *visited >= MAX_DIRS {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut children: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            // Run outputs and hidden folders hold no datasets.
            !(name.starts_with('.') || (depth == 0 && name == "runs"))
        })
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    children.sort();
    for child in children {
        *visited += 1;
        if *visited >= MAX_DIRS {
            return;
        }
        // A symlink that leads outside is not offered (runs could not use it either).
        let Ok(canonical) = child.canonicalize() else {
            continue;
        };
        if !canonical.starts_with(data_dir) {
            continue;
        }
        let Some(rel) = child
            .strip_prefix(data_dir)
            .ok()
            .and_then(|r| r.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        match detect_kind(&canonical).and_then(|kind| describe(&canonical, kind, &rel)) {
            Some(entry) => found.push(entry),
            None => walk(data_dir, &child, depth + 1, visited, found),
        }
    }
}

fn describe(path: &Path, kind: DatasetKind, rel: &str) -> Option<DatasetEntry> {
    let (images, test_images, classes, image_size, name) = match kind {
        DatasetKind::Cifar10 | DatasetKind::Cifar100 => {
            let c100 = kind == DatasetKind::Cifar100;
            let dir = cifar::find_dir(path, c100)?;
            // One label byte (two for CIFAR-100) and 32×32×3 pixels per record.
            let record = if c100 { 3074 } else { 3073 };
            let size = |names: &[&str]| -> u64 {
                names
                    .iter()
                    .filter_map(|n| std::fs::metadata(dir.join(n)).ok())
                    .map(|m| m.len() / record)
                    .sum()
            };
            let (train, test) = if c100 {
                (size(&["train.bin"]), size(&["test.bin"]))
            } else {
                (
                    size(&[
                        "data_batch_1.bin",
                        "data_batch_2.bin",
                        "data_batch_3.bin",
                        "data_batch_4.bin",
                        "data_batch_5.bin",
                    ]),
                    size(&["test_batch.bin"]),
                )
            };
            let name = if c100 { "CIFAR-100" } else { "CIFAR-10" };
            (train, test, if c100 { 100 } else { 10 }, Some(32), name)
        }
        DatasetKind::Stl10 => {
            let dir = stl10::find_dir(path)?;
            let count = |n: &str| {
                std::fs::metadata(dir.join(n)).map_or(0, |m| m.len() / stl10::IMAGE_BYTES as u64)
            };
            (
                count("train_X.bin"),
                count("test_X.bin"),
                10,
                Some(stl10::SIDE as u64),
                "STL-10",
            )
        }
        DatasetKind::ImageFolder => {
            let (train_root, test_root) = if path.join("train").is_dir() {
                let test = ["test", "val"]
                    .iter()
                    .map(|n| path.join(n))
                    .find(|p| p.is_dir());
                (path.join("train"), test)
            } else {
                (path.to_path_buf(), None)
            };
            let classes = std::fs::read_dir(&train_root)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .filter(|e| e.path().is_dir())
                        .count() as u64
                })
                .unwrap_or(0);
            let mut first = None;
            let train = count_images(&train_root, &mut first);
            let test = test_root.map_or(0, |t| count_images(&t, &mut None));
            let side = first
                .and_then(|f| image::image_dimensions(f).ok())
                .map(|(w, h)| w.min(h) as u64);
            (train, test, classes, side, "Image folder")
        }
        DatasetKind::Synthetic => return None,
    };
    Some(DatasetEntry {
        kind: kind.name().to_string(),
        path: Some(rel.to_string()),
        label: format!("{name}: {rel} ({images} images)"),
        images,
        test_images,
        classes,
        image_size,
        config: serde_json::json!({"kind": kind.name(), "path": rel}),
    })
}

/// Image files under `root` (any depth), remembering the first one found.
fn count_images(root: &Path, first: &mut Option<PathBuf>) -> u64 {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.filter_map(|e| e.ok()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| folder::EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
            {
                n += 1;
                if first.is_none() {
                    *first = Some(p);
                }
            }
        }
    }
    n
}
