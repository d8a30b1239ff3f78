//! Weighted kNN monitor (Wu et al., 2018; the MoCo CIFAR demo's `knn_predict`): each query votes
//! with its k most similar bank features, weighted by exp(sim / t).
use tch::{Kind, Tensor};

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
