//! InfoNCE over (q·k⁺, q·queue) / T with the positive at index 0 (MoCo v1/v2, and the memory
//! bank with its entries as keys), the end-to-end mechanism's and MoCo v3's in-batch contrasts.
use tch::{Kind, Tensor};

pub struct ContrastiveLoss {
    /// Mean cross-entropy (scalar, differentiable).
    pub loss: Tensor,
    /// [N] q·k⁺ before /T.
    pub l_pos: Tensor,
    /// [N, K] q·queue before /T.
    pub l_neg: Tensor,
}

impl ContrastiveLoss {
    /// Share of rows whose positive has the largest logit among the K + 1.
    pub fn top1(&self) -> Tensor {
        let max_neg = self.l_neg.amax([1], false);
        self.l_pos
            .detach()
            .gt_tensor(&max_neg)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
    }
}

/// `q`, `k`: [N, dim] unit vectors (k without gradient); `queue`: [K, dim].
pub fn info_nce(q: &Tensor, k: &Tensor, queue: &Tensor, temperature: f64) -> ContrastiveLoss {
    let l_pos = (q * k).sum_dim_intlist(1i64, false, Kind::Float);
    let l_neg = q.mm(&queue.tr());
    let logits = Tensor::cat(&[l_pos.unsqueeze(1), l_neg.shallow_clone()], 1) / temperature;
    let labels = Tensor::zeros([q.size()[0]], (Kind::Int64, q.device()));
    let loss = logits.cross_entropy_for_logits(&labels);
    ContrastiveLoss { loss, l_pos, l_neg }
}

/// The end-to-end mechanism's InfoNCE: each query against every key of the batch, its own at
/// column n and the other N − 1 as negatives, /T, mean cross-entropy. `q`, `k`: [N, dim] unit
/// vectors, both with gradient (the keys come from the query encoder).
pub fn end_to_end(q: &Tensor, k: &Tensor, temperature: f64) -> ContrastiveLoss {
    let (sims, loss) = batch_contrast(q, k, temperature);
    let (l_pos, l_neg) = split_diagonal(&sims);
    ContrastiveLoss { loss, l_pos, l_neg }
}

/// q·kᵀ and the cross-entropy of (q·kᵀ / T) with the positive of row n at column n.
fn batch_contrast(q: &Tensor, k: &Tensor, temperature: f64) -> (Tensor, Tensor) {
    let sims = q.mm(&k.tr());
    let labels = Tensor::arange(q.size()[0], (Kind::Int64, q.device()));
    let loss = (&sims / temperature).cross_entropy_for_logits(&labels);
    (sims, loss)
}

/// The positives (the diagonal, [N]) and the negatives (the rest of each row, [N, N − 1]) of a
/// batch's similarity matrix.
fn split_diagonal(sims: &Tensor) -> (Tensor, Tensor) {
    let n = sims.size()[0];
    let off_diagonal = Tensor::eye(n, (Kind::Bool, sims.device())).logical_not();
    let l_neg = sims.masked_select(&off_diagonal).view([n, n - 1]);
    (sims.diagonal(0, 0, 1), l_neg)
}

/// MoCo v3's `ctr(q, k)` (moco-v3 builder.py `contrastive_loss`): q and k made unit length, the
/// logits q·kᵀ / T of every query against every key of the batch, the positive of row n at
/// column n, cross-entropy × 2T. `q`: [N, dim] with gradient, `k`: [N, dim] without.
pub fn in_batch(q: &Tensor, k: &Tensor, temperature: f64) -> ContrastiveLoss {
    let positives = Tensor::arange(q.size()[0], (Kind::Int64, q.device()));
    in_batch_at(q, k, &positives, temperature)
}

/// `in_batch` across ranks: `k` holds the keys of the whole global batch (builder.py's
/// `concat_all_gather(k)`) and `positives` [N] the column of each query's own key in it (the
/// official code's `arange(N) + N · rank`; here the rows' places in the global batch).
pub fn in_batch_at(
    q: &Tensor,
    k: &Tensor,
    positives: &Tensor,
    temperature: f64,
) -> ContrastiveLoss {
    let q = super::head::normalize(q);
    let k = super::head::normalize(&k.detach());
    let sims = q.mm(&k.tr());
    let loss = (&sims / temperature).cross_entropy_for_logits(positives);
    let (n, m) = (sims.size()[0], sims.size()[1]);
    let is_positive = positives
        .unsqueeze(1)
        .eq_tensor(&Tensor::arange(m, (Kind::Int64, sims.device())).unsqueeze(0));
    let l_pos = sims
        .gather(1, &positives.unsqueeze(1), false)
        .squeeze_dim(1);
    let l_neg = sims
        .masked_select(&is_positive.logical_not())
        .view([n, m - 1]);
    ContrastiveLoss {
        loss: loss * (2.0 * temperature),
        l_pos,
        l_neg,
    }
}
