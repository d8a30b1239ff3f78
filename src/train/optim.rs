//! SGD with momentum and weight decay over the flat parameter buffer.
//!
//! Same update as `torch.optim.SGD` (dampening 0, no Nesterov): d = g + wd·θ; b = μ·b + d;
//! θ = θ − lr·b. Working on one flat tensor makes the step two kernels (the per-parameter weight
//! decay, then libtorch's fused SGD), and the momentum buffer a single tensor that the full
//! checkpoint stores for an exact resume. With fp16 the loss scaler unscales the gradient first
//! and the fused step skips itself on the device when it overflowed.
use super::scaler::LossScaler;
use crate::moco::params::ParamStore;
use crate::torch_ext::fused_sgd_step;
use tch::{Kind, Tensor};

pub const MOMENTUM_BUFFER: &str = "optimizer.momentum_buffer";

pub struct FlatSgd {
    momentum: f64,
    /// Weight decay per element (0 where excluded).
    decay: Tensor,
    pub buffer: Tensor,
    /// Present when training in fp16.
    pub scaler: Option<LossScaler>,
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
            scaler: None,
        }
    }

    /// Scales losses for fp16 from now on.
    pub fn with_loss_scaling(mut self) -> Self {
        self.scaler = Some(LossScaler::new(self.buffer.device()));
        self
    }

    /// Runs backward on `loss` (scaled when a loss scaler is in use).
    pub fn backward(&self, loss: &Tensor) {
        match &self.scaler {
            Some(scaler) => scaler.scale_loss(loss).backward(),
            None => loss.backward(),
        }
    }

    /// Applies one step with the gradients currently held by the parameters.
    pub fn step(&mut self, store: &ParamStore, lr: f64) {
        let _guard = tch::no_grad_guard();
        let flat = store.flat();
        let grad = store.flat_grad();
        let found_inf = self
            .scaler
            .as_mut()
            .map(|s| s.unscale(&grad).shallow_clone());
        let grad = grad.addcmul(&self.decay, flat);
        fused_sgd_step(
            flat,
            &grad,
            &self.buffer,
            self.momentum,
            lr,
            found_inf.as_ref(),
        );
        if let Some(scaler) = &mut self.scaler {
            scaler.update();
        }
    }

    /// The optimizer's state for a checkpoint, by name.
    pub fn named_state(&self) -> Vec<(String, Tensor)> {
        let mut state = vec![(MOMENTUM_BUFFER.to_string(), self.buffer.shallow_clone())];
        if let Some(scaler) = &self.scaler {
            state.extend(scaler.named_state());
        }
        state
    }

    /// Restores the state saved by `named_state`.
    pub fn load_state(&mut self, tensors: &[(String, Tensor)]) -> anyhow::Result<()> {
        let buffer = tensors
            .iter()
            .find(|(n, _)| n == MOMENTUM_BUFFER)
            .map(|(_, t)| t)
            .ok_or_else(|| anyhow::anyhow!("the checkpoint lacks {MOMENTUM_BUFFER}"))?;
        anyhow::ensure!(
            buffer.size() == self.buffer.size(),
            "the checkpoint's optimizer state has {:?} values, the model {:?}",
            buffer.size(),
            self.buffer.size()
        );
        let _guard = tch::no_grad_guard();
        self.buffer.copy_(buffer);
        if let Some(scaler) = &mut self.scaler {
            scaler.load_state(tensors);
        }
        Ok(())
    }
}
