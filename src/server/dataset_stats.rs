//! Mean and std of the listed datasets, computed on demand and remembered.
//!
//! Computing them reads up to 10 000 images (about a second for CIFAR; a few hundred JPEG decodes
//! for an image folder), far too slow for every view of the Datasets page, while the numbers only
//! change when the files do. So each result is kept in memory under the dataset's picker value
//! (`kind:path`) with a fingerprint of its files (image counts and the directory's modification
//! time); a changed fingerprint computes again. The page shows what is known at once and asks
//! `GET /api/datasets/stats` for the rest after loading. One computation runs at a time, so a page
//! listing many sets cannot flood the machine while runs train.
use super::datasets::DatasetEntry;
use crate::config::DatasetConfig;
use crate::data;
use anyhow::Context;
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::SystemTime;

/// What the page shows of a dataset beyond the scan's counts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DatasetStats {
    /// The picker value ("synthetic" or "kind:path").
    pub dataset: String,
    /// Per channel (R, G, B) in [0, 1] units, over the training images sampled.
    pub mean: [f64; 3],
    pub std: [f64; 3],
    pub class_names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct Fingerprint {
    images: u64,
    test_images: u64,
    modified: Option<SystemTime>,
}

#[derive(Default)]
pub struct StatsCache {
    known: Mutex<HashMap<String, (Fingerprint, DatasetStats)>>,
    /// Held while computing.
    busy: tokio::sync::Mutex<()>,
}

/// The picker value of a scanned dataset ("synthetic" or "kind:path").
pub fn value_of(entry: &DatasetEntry) -> String {
    match &entry.path {
        Some(path) => format!("{}:{path}", entry.kind),
        None => entry.kind.clone(),
    }
}

fn fingerprint(data_dir: &Path, entry: &DatasetEntry) -> Fingerprint {
    Fingerprint {
        images: entry.images,
        test_images: entry.test_images,
        modified: entry
            .path
            .as_ref()
            .and_then(|p| std::fs::metadata(data_dir.join(p)).ok())
            .and_then(|m| m.modified().ok()),
    }
}

impl StatsCache {
    /// The numbers when they are known for the dataset as it is now (a `stat` call, no reading).
    pub fn cached(&self, data_dir: &Path, entry: &DatasetEntry) -> Option<DatasetStats> {
        let print = fingerprint(data_dir, entry);
        let known = self.known.lock().expect("stats cache");
        known
            .get(&value_of(entry))
            .filter(|(f, _)| *f == print)
            .map(|(_, s)| s.clone())
    }

    /// The numbers, computed when not known. `entry` must come from the scan of `data_dir`
    /// (its path is then inside the data directory).
    pub async fn get(&self, data_dir: &Path, entry: &DatasetEntry) -> anyhow::Result<DatasetStats> {
        if let Some(s) = self.cached(data_dir, entry) {
            return Ok(s);
        }
        let _turn = self.busy.lock().await;
        // Someone else may have computed it while this request waited.
        if let Some(s) = self.cached(data_dir, entry) {
            return Ok(s);
        }
        let print = fingerprint(data_dir, entry);
        let value = value_of(entry);
        let cfg: DatasetConfig = serde_json::from_value(entry.config.clone())
            .with_context(|| format!("the listed dataset {value} has no usable config"))?;
        let dir = data_dir.to_path_buf();
        let info = tokio::task::spawn_blocking(move || {
            data::open_splits(&cfg, &dir).map(|splits| data::inspect(&splits))
        })
        .await
        .context("the mean/std computation stopped unexpectedly")??;
        let stats = DatasetStats {
            dataset: value.clone(),
            mean: info.mean,
            std: info.std,
            class_names: info.class_names,
        };
        self.known
            .lock()
            .expect("stats cache")
            .insert(value, (print, stats.clone()));
        Ok(stats)
    }
}
