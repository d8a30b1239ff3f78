//! SGD with momentum and weight decay over the flat parameter buffer.
//!
//! Same update as `torch.optim.SGD` (dampening 0, no Nesterov): d = g + wd·θ; b = μ·b + d;
//! θ = θ − lr·b. Working on one flat tensor makes the step a few kernels, and the momentum buffer a
//! single tensor that the full checkpoint stores for an exact resume.
use crate::moco::params::ParamStore;
use tch::{Kind, Tensor};

pub struct FlatSgd {
    momentum: f64,
    /// Weight decay per element (0 where excluded).
    decay: Tensor,
    pub buffer: Tensor,
}

impl FlatSgd {
    pub fn new(
        store: &ParamStore,
        momentum: f64,
        weight_decay: f64,
        exclude_bn_and_bias: bool,
    ) -> Self {
        let flat = store.flat();
        FlatSgd {
            momentum,
            decay: store.decay_mask(exclude_bn_and_bias) * weight_decay,
            buffer: Tensor::zeros([flat.size()[0]], (Kind::Float, flat.device())),
        }
    }

    /// Applies one step with the gradients currently held by the parameters.
    pub fn step(&mut self, store: &ParamStore, lr: f64) {
        let _guard = tch::no_grad_guard();
        let mut flat = store.flat().shallow_clone();
        let grad = store.flat_grad().addcmul(&self.decay, &flat);
        let _ = self.buffer.g_mul_scalar_(self.momentum).g_add_(&grad);
        let _ = flat.g_add_(&(&self.buffer * -lr));
    }
}
