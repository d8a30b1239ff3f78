//! Weighted kNN monitor (Wu et al., 2018; the MoCo CIFAR demo's `knn_predict`): each query votes
//! with its k most similar bank features, weighted by exp(sim / t).
use super::device::autocast;
use crate::config::{KnnFeatures, RunConfig};
use crate::data::{Augmenter, Dataset, DatasetSplits, Loader, LoaderOptions};
use crate::moco::backbone::Backbone;
use crate::moco::head::{normalize, Head};
use crate::moco::model::MocoModel;
use crate::torch_ext::ReducedPrecision;
use anyhow::bail;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// Top-1 accuracy in percent. `bank` [Nb, D] and `queries` [Nq, D] are unit vectors on the same
/// device; labels are int64; queries are processed in chunks to bound memory.
pub fn weighted_knn_top1(
    bank: &Tensor,
    bank_labels: &Tensor,
    queries: &Tensor,
    query_labels: &Tensor,
    classes: i64,
    k: i64,
    t: f64,
) -> f64 {
    let _guard = tch::no_grad_guard();
    let n = queries.size()[0];
    if n == 0 {
        return 0.0;
    }
    let k = k.min(bank.size()[0]);
    let bank_t = bank.tr();
    let mut correct = Tensor::zeros([], (Kind::Int64, queries.device()));
    let chunk = 256;
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let q = queries.narrow(0, start, len);
        let sim = q.mm(&bank_t);
        let (weights, idx) = sim.topk(k, 1, true, true);
        let neighbour_labels = bank_labels
            .unsqueeze(0)
            .expand([len, -1], false)
            .gather(1, &idx, false);
        let weights = (weights / t).exp();
        let scores = Tensor::zeros([len, classes], (Kind::Float, q.device())).scatter_add(
            1,
            &neighbour_labels,
            &weights,
        );
        let pred = scores.argmax(1, false);
        correct += pred
            .eq_tensor(&query_labels.narrow(0, start, len))
            .sum(Kind::Int64);
        start += len;
    }
    100.0 * i64::try_from(&correct).unwrap_or(0) as f64 / n as f64
}

/// Features of images in eval mode, without gradient: the kNN monitor's (unit length, from the
/// backbone or the head) and the offline evaluations' (`eval`: the kNN's, and the linear probe's
/// raw pooled output).
pub struct FeatureExtractor<'a> {
    pub backbone: &'a Backbone,
    /// The head's output instead of the pooled features (the CIFAR demo's monitor).
    pub head: Option<&'a Head>,
    /// Unit length, for the kNN's cosine similarities; the linear probe reads the raw avgpool
    /// output, as main_lincls.py's fc does.
    pub unit_length: bool,
    /// Its eval transform turns the loader's uint8 batches into the encoder's input.
    pub augmenter: &'a Augmenter,
    pub device: Device,
    pub threads: usize,
    /// The encoder runs under the training's autocast; the features come out fp32.
    pub precision: Option<ReducedPrecision>,
}

impl FeatureExtractor<'_> {
    /// Features [N, D] (fp32) of a normalised image batch [N, 3, S, S].
    pub fn features(&self, x: &Tensor) -> anyhow::Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let _autocast = autocast(self.device, self.precision)?;
        let mut f = self.backbone.forward(x, false, 1);
        if let Some(head) = self.head {
            f = head.forward(&f, false);
        }
        if self.unit_length {
            f = normalize(&f);
        }
        Ok(f.to_kind(Kind::Float))
    }

    /// Features of a whole split under the eval transform, with their labels (unlabeled images
    /// dropped), at most `limit` images (0 = all).
    pub fn split(
        &self,
        dataset: &Arc<dyn Dataset>,
        limit: usize,
    ) -> anyhow::Result<(Tensor, Tensor)> {
        let loader = Loader::new(
            dataset.clone(),
            LoaderOptions {
                batch_size: 256,
                shuffle: false,
                drop_last: false,
                seed: 0,
                epoch: 0,
                start_batch: 0,
                prefetch: 2,
                threads: self.threads,
                device: self.device,
                shard: (0, 1),
            },
        );
        let mut features = Vec::new();
        let mut labels = Vec::new();
        let mut seen = 0;
        for batch in loader {
            let batch = batch?;
            features.push(self.features(&self.augmenter.eval_view(&batch.images))?);
            labels.push(batch.labels);
            seen += batch.indices.len();
            if limit > 0 && seen >= limit {
                break;
            }
        }
        if features.is_empty() {
            bail!("the split has no images");
        }
        let mut features = Tensor::cat(&features, 0);
        let mut labels = Tensor::cat(&labels, 0);
        if limit > 0 && (labels.size()[0] as usize) > limit {
            features = features.narrow(0, 0, limit as i64);
            labels = labels.narrow(0, 0, limit as i64);
        }
        let keep = labels.ge(0).nonzero().squeeze_dim(1);
        Ok((
            features.index_select(0, &keep),
            labels.index_select(0, &keep),
        ))
    }
}

/// Weighted kNN top-1 of `extractor`'s features: bank = training split (at most `bank_limit`
/// images, 0 = all), queries = held-out split.
pub fn knn_top1(
    extractor: &FeatureExtractor,
    splits: &DatasetSplits,
    bank_limit: usize,
    k: i64,
    t: f64,
) -> anyhow::Result<f64> {
    let (bank, bank_labels) = extractor.split(&splits.train, bank_limit)?;
    let (queries, query_labels) = extractor.split(&splits.test, 0)?;
    let classes = splits.train.class_names().len().max(1) as i64;
    Ok(weighted_knn_top1(
        &bank,
        &bank_labels,
        &queries,
        &query_labels,
        classes,
        k,
        t,
    ))
}

/// Weighted kNN top-1 of the query encoder, as the run's settings ask for it.
pub(crate) fn knn_monitor(
    model: &MocoModel,
    splits: &DatasetSplits,
    augmenter: &Augmenter,
    cfg: &RunConfig,
    device: Device,
    threads: usize,
    precision: Option<ReducedPrecision>,
) -> anyhow::Result<f64> {
    let extractor = FeatureExtractor {
        backbone: &model.query.backbone,
        head: (cfg.knn_features == KnnFeatures::Head).then_some(&model.query.head),
        unit_length: true,
        augmenter,
        device,
        threads,
        precision,
    };
    knn_top1(&extractor, splits, cfg.knn_bank_limit, cfg.knn_k, cfg.knn_t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn votes_are_weighted_by_similarity() {
        // Two bank points of class 0 near the query, one of class 1 exactly on it: with a small
        // temperature the exact match outweighs the pair.
        let bank = Tensor::from_slice2(&[[1.0f32, 0.0], [0.8, 0.6], [0.8, -0.6]]);
        let bank_labels = Tensor::from_slice(&[1i64, 0, 0]);
        let query = Tensor::from_slice2(&[[1.0f32, 0.0]]);
        let top1 = weighted_knn_top1(
            &bank,
            &bank_labels,
            &query,
            &Tensor::from_slice(&[1i64]),
            2,
            3,
            0.05,
        );
        assert_eq!(top1, 100.0);
        // A large temperature makes votes nearly equal: two votes for class 0 win.
        let top1 = weighted_knn_top1(
            &bank,
            &bank_labels,
            &query,
            &Tensor::from_slice(&[1i64]),
            2,
            3,
            100.0,
        );
        assert_eq!(top1, 0.0);
    }
}
