//! The fast protocol's features on disk: one file per encoder (by its SHA-256) and labelled set
//! (its settings and image counts), resolution and precision, so probing the same encoder again
//! (another lr, more epochs) skips the pass of the backbone over the data.
use crate::config::DatasetConfig;
use crate::train::checkpoint::{read_safetensors, write_safetensors_atomic};
use anyhow::Context;
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use tch::{Device, Tensor};

/// Bumped when what a file holds, or how the features are computed, changes.
const FORMAT: u32 = 1;

/// Features and labels of both splits: ((train features, labels), (test features, labels)).
pub type SplitFeatures = ((Tensor, Tensor), (Tensor, Tensor));

/// Where features of one encoder are kept.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    pub dir: PathBuf,
    /// Of the encoder file the features are computed with.
    pub encoder_sha256: String,
}

/// What else the features depend on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FeatureKey<'a> {
    pub dataset: &'a DatasetConfig,
    pub train_images: usize,
    pub test_images: usize,
    /// The side of the images the backbone sees.
    pub image_size: i64,
    /// "fp32", "bf16" …
    pub precision: &'a str,
}

impl FeatureCache {
    fn path(&self, key: &FeatureKey) -> PathBuf {
        let described =
            serde_json::json!({"format": FORMAT, "encoder": self.encoder_sha256, "key": key});
        let digest = hex::encode(Sha256::digest(described.to_string().as_bytes()));
        let encoder: String = self.encoder_sha256.chars().take(16).collect();
        self.dir
            .join(format!("{encoder}-{}.safetensors", &digest[..16]))
    }

    /// The stored features for `key`, on `device`; None when there are none. A file that cannot
    /// be read is treated as absent (and replaced by the next store).
    pub fn load(&self, key: &FeatureKey, device: Device) -> Option<SplitFeatures> {
        let path = self.path(key);
        if !path.is_file() {
            return None;
        }
        let read = || -> anyhow::Result<SplitFeatures> {
            let (tensors, _) = read_safetensors(&path, device)?;
            let take = |name: &str| {
                tensors
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, t)| t.shallow_clone())
                    .with_context(|| format!("{} has no {name}", path.display()))
            };
            Ok((
                (take("train.features")?, take("train.labels")?),
                (take("test.features")?, take("test.labels")?),
            ))
        };
        match read() {
            Ok(features) => Some(features),
            Err(e) => {
                tracing::warn!("ignoring an unreadable feature cache: {e:#}");
                None
            }
        }
    }

    /// Keeps the features for `key` (written to a temporary name, then renamed).
    pub fn store(&self, key: &FeatureKey, features: &SplitFeatures) -> anyhow::Result<()> {
        let ((train_f, train_y), (test_f, test_y)) = features;
        let tensors = [
            ("train.features".to_string(), train_f.shallow_clone()),
            ("train.labels".to_string(), train_y.shallow_clone()),
            ("test.features".to_string(), test_f.shallow_clone()),
            ("test.labels".to_string(), test_y.shallow_clone()),
        ];
        let metadata = [
            ("encoder_sha256".to_string(), self.encoder_sha256.clone()),
            ("key".to_string(), serde_json::to_string(key)?),
        ]
        .into_iter()
        .collect();
        write_safetensors_atomic(&self.path(key), &tensors, metadata)?;
        Ok(())
    }
}
