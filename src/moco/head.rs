//! Projection heads: v1's linear layer and v2's MLP, named as in the official MoCo code
//! (`fc` replaces the classifier; the MLP is `fc.0` → ReLU → `fc.2`), and MoCo v3's MLPs with
//! BatchNorm (its projector `fc.*` and predictor `predictor.*`).
use super::norm::{BatchNorm, BN_EPS, BN_MOMENTUM};
use super::params::ParamStore;
use crate::config::HeadKind;
use tch::{Kind, Tensor};

/// `nn.Linear` with PyTorch's default initialisation: U(−1/√fan_in, 1/√fan_in) for both tensors.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Tensor,
}

impl Linear {
    pub fn new(store: &mut ParamStore, name: &str, fan_in: i64, fan_out: i64) -> Self {
        let bound = 1.0 / (fan_in as f64).sqrt();
        let opts = (Kind::Float, tch::Device::Cpu);
        let weight = Tensor::empty([fan_out, fan_in], opts).uniform_(-bound, bound);
        let bias = Tensor::empty([fan_out], opts).uniform_(-bound, bound);
        Linear {
            weight: store.param(format!("{name}.weight"), weight, false),
            bias: store.param(format!("{name}.bias"), bias, true),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias))
    }
}

/// BatchNorm without affine parameters (`nn.BatchNorm1d(dim, affine=False)`): MoCo v3's last
/// layer of an MLP, after SimCLR.
pub struct FeatureNorm {
    pub running_mean: Tensor,
    pub running_var: Tensor,
}

impl FeatureNorm {
    fn new(store: &mut ParamStore, prefix: &str, channels: i64) -> Self {
        let (running_mean, running_var) = super::norm::running_stats(store, prefix, channels);
        FeatureNorm {
            running_mean,
            running_var,
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        if train {
            if let Some(stats) = super::sync_bn::global_stats(x) {
                return super::sync_bn::normalise(
                    x,
                    stats,
                    None,
                    (&self.running_mean, &self.running_var),
                );
            }
        }
        x.batch_norm(
            None::<&Tensor>,
            None::<&Tensor>,
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            BN_MOMENTUM,
            BN_EPS,
            x.device().is_cuda(),
        )
    }
}

/// MoCo v3's `_build_mlp(num_layers, input_dim, mlp_dim, output_dim, last_bn)`: per hidden layer
/// Linear (no bias) → BatchNorm1d → ReLU, then Linear (no bias) and, with `last_bn`,
/// BatchNorm1d(affine=False). Named as the `nn.Sequential` numbers its modules
/// (`<prefix>.0.weight`, `<prefix>.1.*`, ReLU at 2, `<prefix>.3.weight`, …).
pub struct V3Mlp {
    hidden: Vec<(Tensor, BatchNorm)>,
    last: Tensor,
    last_norm: Option<FeatureNorm>,
}

impl V3Mlp {
    pub fn new(
        store: &mut ParamStore,
        prefix: &str,
        layers: i64,
        dims: (i64, i64, i64),
        last_bn: bool,
    ) -> Self {
        let (input, mlp_dim, output) = dims;
        // nn.Linear's default initialisation, as Linear above (the weight's bound).
        let weight = |store: &mut ParamStore, index: i64, fan_in: i64, fan_out: i64| {
            let bound = 1.0 / (fan_in as f64).sqrt();
            let init = Tensor::empty([fan_out, fan_in], (Kind::Float, tch::Device::Cpu))
                .uniform_(-bound, bound);
            store.param(format!("{prefix}.{index}.weight"), init, false)
        };
        let mut hidden = Vec::new();
        let mut fan_in = input;
        for l in 0..layers.max(1) - 1 {
            let w = weight(store, 3 * l, fan_in, mlp_dim);
            let bn = BatchNorm::new(store, &format!("{prefix}.{}", 3 * l + 1), mlp_dim);
            hidden.push((w, bn));
            fan_in = mlp_dim;
        }
        let l = layers.max(1) - 1;
        let last = weight(store, 3 * l, fan_in, output);
        let last_norm =
            last_bn.then(|| FeatureNorm::new(store, &format!("{prefix}.{}", 3 * l + 1), output));
        V3Mlp {
            hidden,
            last,
            last_norm,
        }
    }

    pub fn macs(&self) -> i64 {
        self.hidden
            .iter()
            .map(|(w, _)| w.numel() as i64)
            .sum::<i64>()
            + self.last.numel() as i64
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let mut h = x.shallow_clone();
        for (w, bn) in &self.hidden {
            h = bn.forward(&h.linear(w, None::<&Tensor>), train, 1).relu();
        }
        let out = h.linear(&self.last, None::<&Tensor>);
        match &self.last_norm {
            Some(norm) => norm.forward(&out, train),
            None => out,
        }
    }
}

pub enum Head {
    Linear(Linear),
    Mlp(Linear, Linear),
    V3(V3Mlp),
}

impl Head {
    /// `layers` counts the v3 head's layers (the others have a fixed shape).
    /// `prefix` is the classifier's name the head replaces (`fc`, or a ViT's `head`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: &mut ParamStore,
        kind: HeadKind,
        input: i64,
        hidden: i64,
        dim: i64,
        layers: i64,
        prefix: &str,
    ) -> Self {
        match kind {
            HeadKind::Linear => Head::Linear(Linear::new(store, prefix, input, dim)),
            HeadKind::Mlp => Head::Mlp(
                Linear::new(store, &format!("{prefix}.0"), input, hidden),
                Linear::new(store, &format!("{prefix}.2"), hidden, dim),
            ),
            // The projector of MoCo v3, with its last BatchNorm.
            HeadKind::V3 => Head::V3(V3Mlp::new(
                store,
                prefix,
                layers,
                (input, hidden, dim),
                true,
            )),
        }
    }

    /// Multiply-accumulates per image (one per weight).
    pub fn macs(&self) -> i64 {
        match self {
            Head::Linear(l) => l.weight.numel() as i64,
            Head::Mlp(a, b) => (a.weight.numel() + b.weight.numel()) as i64,
            Head::V3(mlp) => mlp.macs(),
        }
    }

    /// In training, the v3 head's BatchNorm normalises over the batch and moves its running
    /// statistics; the other heads have none.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        match self {
            Head::Linear(l) => l.forward(x),
            Head::Mlp(a, b) => b.forward(&a.forward(x).relu()),
            Head::V3(mlp) => mlp.forward(x, train),
        }
    }
}

/// L2-normalises rows, as `F.normalize(x, dim=1)`.
pub fn normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2.0, [1], true).clamp_min(1e-12)
}
