//! Projection heads: v1's linear layer and v2's MLP, named as in the official MoCo code
//! (`fc` replaces the classifier; the MLP is `fc.0` → ReLU → `fc.2`).
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

pub enum Head {
    Linear(Linear),
    Mlp(Linear, Linear),
}

impl Head {
    pub fn new(store: &mut ParamStore, kind: HeadKind, input: i64, hidden: i64, dim: i64) -> Self {
        match kind {
            HeadKind::Linear => Head::Linear(Linear::new(store, "fc", input, dim)),
            HeadKind::Mlp => Head::Mlp(
                Linear::new(store, "fc.0", input, hidden),
                Linear::new(store, "fc.2", hidden, dim),
            ),
        }
    }

    /// Multiply-accumulates per image (one per weight).
    pub fn macs(&self) -> i64 {
        match self {
            Head::Linear(l) => l.weight.numel() as i64,
            Head::Mlp(a, b) => (a.weight.numel() + b.weight.numel()) as i64,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Head::Linear(l) => l.forward(x),
            Head::Mlp(a, b) => b.forward(&a.forward(x).relu()),
        }
    }
}

/// L2-normalises rows, as `F.normalize(x, dim=1)`.
pub fn normalize(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2.0, [1], true).clamp_min(1e-12)
}
