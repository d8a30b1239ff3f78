//! The run monitor's weighted kNN (`train::knn`) for any encoder on any labelled set: the
//! training split is the bank, the held-out split the queries, both through the evaluation
//! transform, the backbone's pooled features at unit length.
use super::FrozenEncoder;
use crate::config::{Choice, KnnConfig};
use crate::data::augment::ViewSpec;
use crate::data::DatasetSplits;
use crate::train::device::{device_name, reduced_precision};
use crate::train::knn::{knn_top1, FeatureExtractor};
use serde::Serialize;
use std::time::Instant;
use tch::Device;

#[derive(Debug, Clone, Serialize)]
pub struct KnnResult {
    /// Top-1 accuracy in percent on the held-out split.
    pub top1: f64,
    pub k: i64,
    pub t: f64,
    /// The dataset's spec, e.g. "synthetic" or "cifar10:cifar-10-batches-bin".
    pub dataset: String,
    pub bank_images: usize,
    pub query_images: usize,
    pub encoder: String,
    pub encoder_epoch: i64,
    pub device: String,
    pub precision: String,
    pub seconds: f64,
}

/// Weighted kNN top-1 of `encoder`'s backbone features on `splits`.
pub fn run_knn(
    encoder: &FrozenEncoder,
    splits: &DatasetSplits,
    cfg: &KnnConfig,
    device: Device,
) -> anyhow::Result<KnnResult> {
    let start = Instant::now();
    let precision = reduced_precision(cfg.precision, device)?;
    // The crop is never used: only the evaluation transform runs.
    let augmenter = encoder.augmenter(cfg.image_size, ViewSpec::crop_and_flip(1.0));
    let extractor = FeatureExtractor {
        backbone: &encoder.backbone,
        head: None,
        unit_length: true,
        augmenter: &augmenter,
        device,
        threads: crate::data::loader::resolve_threads(cfg.loader_threads),
        precision,
    };
    let top1 = knn_top1(&extractor, splits, cfg.bank_limit, cfg.k, cfg.t)?;
    let bank_images = match cfg.bank_limit {
        0 => splits.train.len(),
        limit => limit.min(splits.train.len()),
    };
    Ok(KnnResult {
        top1,
        k: cfg.k,
        t: cfg.t,
        dataset: cfg.dataset.label(),
        bank_images,
        query_images: splits.test.len(),
        encoder: encoder.info.path.display().to_string(),
        encoder_epoch: encoder.info.epoch,
        device: device_name(device),
        precision: cfg.precision.name().into(),
        seconds: start.elapsed().as_secs_f64(),
    })
}
