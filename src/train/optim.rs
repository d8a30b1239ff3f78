//! The optimizers over the flat parameter buffer: SGD with momentum and weight decay, MoCo v3's
//! LARS, and AdamW.
//!
//! Same update as `torch.optim.SGD` (dampening 0, no Nesterov): d = g + wd·θ; b = μ·b + d;
//! θ = θ − lr·b. Working on one flat tensor makes the step two kernels (the per-parameter weight
//! decay, then libtorch's fused SGD), and the momentum buffer a single tensor that the full
//! checkpoint stores for an exact resume. With fp16 the loss scaler unscales the gradient first
//! and the fused step skips itself on the device when it overflowed.
//!
//! LARS (moco-v3 `moco/optimizer.py`) changes only the direction fed to the same momentum step:
//! for every tensor with more than one dimension, d = g + wd·θ scaled by
//! q = trust · ‖θ‖ / ‖d‖ (1 when either norm is 0); BatchNorm parameters and biases keep d = g,
//! without decay. Then, as SGD: b = μ·b + d; θ = θ − lr·b. Its state is the same single momentum
//! buffer.
//!
//! AdamW is `torch.optim.AdamW`'s step (betas 0.9, 0.999, eps 1e-8, no amsgrad), as MoCo v3 trains
//! ViTs: θ ← θ·(1 − lr·wd) on every parameter; m ← β1·m + (1 − β1)·g; v ← β2·v + (1 − β2)·g²;
//! θ ← θ − lr/(1 − β1ᵗ) · m / (√v / √(1 − β2ᵗ) + eps). Its state is m, v and the step count t.
//! Under fp16 a step whose gradient overflowed is skipped (read on the host: one sync per
//! step).
use super::scaler::LossScaler;
use crate::config::{OptimizerKind, RunConfig};
use crate::moco::params::ParamStore;
use crate::torch_ext::fused_sgd_step;
use tch::{Kind, Tensor};

pub const MOMENTUM_BUFFER: &str = "optimizer.momentum_buffer";
pub const ADAM_EXP_AVG_SQ: &str = "optimizer.exp_avg_sq";
pub const ADAM_STEP: &str = "optimizer.step";

/// torch.optim.AdamW's defaults.
const ADAM_BETAS: (f64, f64) = (0.9, 0.999);
const ADAM_EPS: f64 = 1e-8;

pub struct FlatOptimizer {
    momentum: f64,
    /// Weight decay per element (0 where excluded; with LARS, where LARS applies it itself).
    decay: Tensor,
    /// Present for LARS.
    lars: Option<Lars>,
    /// Present for AdamW.
    adam: Option<AdamState>,
    /// The momentum buffer (SGD, LARS) or the first moment m (AdamW).
    pub buffer: Tensor,
    /// Present when training in fp16.
    pub scaler: Option<LossScaler>,
}

impl FlatOptimizer {
    pub fn new(
        store: &ParamStore,
        momentum: f64,
        weight_decay: f64,
        exclude_bn_and_bias: bool,
    ) -> Self {
        let flat = store.flat();
        FlatOptimizer {
            momentum,
            decay: store.decay_mask(exclude_bn_and_bias) * weight_decay,
            lars: None,
            adam: None,
            buffer: Tensor::zeros([flat.size()[0]], (Kind::Float, flat.device())),
            scaler: None,
        }
    }

    /// MoCo v3's LARS with momentum `momentum`, weight decay and trust coefficient `trust`.
    pub fn lars(store: &ParamStore, momentum: f64, weight_decay: f64, trust: f64) -> Self {
        let matrices = store
            .params
            .iter()
            .filter(|p| p.tensor.dim() > 1 && !p.frozen)
            .map(|p| (p.offset, p.numel))
            .collect();
        FlatOptimizer {
            lars: Some(Lars {
                trust,
                weight_decay,
                matrices,
            }),
            ..FlatOptimizer::new(store, momentum, 0.0, false)
        }
    }

    /// torch.optim.AdamW with `weight_decay` on every parameter, as MoCo v3's ViT training.
    pub fn adamw(store: &ParamStore, weight_decay: f64) -> Self {
        let base = FlatOptimizer::new(store, 0.0, weight_decay, false);
        FlatOptimizer {
            adam: Some(AdamState {
                exp_avg_sq: base.buffer.zeros_like(),
                step: 0,
            }),
            ..base
        }
    }

    /// The optimizer a run's settings ask for.
    pub fn for_run(store: &ParamStore, cfg: &RunConfig) -> Self {
        match cfg.optimizer {
            OptimizerKind::Sgd => FlatOptimizer::new(
                store,
                cfg.sgd_momentum,
                cfg.weight_decay,
                cfg.wd_exclude_bn_bias,
            ),
            OptimizerKind::Lars => {
                FlatOptimizer::lars(store, cfg.sgd_momentum, cfg.weight_decay, cfg.lars_trust)
            }
            OptimizerKind::Adamw => FlatOptimizer::adamw(store, cfg.weight_decay),
        }
    }

    /// Scales losses for fp16 from now on.
    pub fn with_loss_scaling(mut self) -> Self {
        self.scaler = Some(LossScaler::new(self.buffer.device()));
        self
    }

    /// Runs backward on `loss` (scaled when a loss scaler is in use). Errors when the backward
    /// pass fails, as a collective with the other ranks inside it (SyncBatchNorm's) does when a
    /// peer is gone.
    pub fn backward(&self, loss: &Tensor) -> anyhow::Result<()> {
        match &self.scaler {
            Some(scaler) => scaler.scale_loss(loss).f_backward(),
            None => loss.f_backward(),
        }
        .map_err(|e| anyhow::anyhow!("the backward pass failed: {e}"))
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
        if let Some(adam) = &mut self.adam {
            let overflowed = found_inf
                .as_ref()
                .is_some_and(|inf| inf.double_value(&[]) > 0.0);
            if !overflowed {
                adam.step(flat, &grad, &self.buffer, &self.decay, lr);
            }
            if let Some(scaler) = &mut self.scaler {
                scaler.update();
            }
            return;
        }
        let grad = match &self.lars {
            Some(lars) => lars.direction(&grad, flat),
            None => grad.addcmul(&self.decay, flat),
        };
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

    /// The optimizer's state for a checkpoint, by name (SGD and LARS alike; AdamW's m under the
    /// same name, with v and t).
    pub fn named_state(&self) -> Vec<(String, Tensor)> {
        let mut state = vec![(MOMENTUM_BUFFER.to_string(), self.buffer.shallow_clone())];
        if let Some(adam) = &self.adam {
            state.push((ADAM_EXP_AVG_SQ.to_string(), adam.exp_avg_sq.shallow_clone()));
            state.push((ADAM_STEP.to_string(), Tensor::from(adam.step)));
        }
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
        if let Some(adam) = &mut self.adam {
            let find = |name: &str| {
                tensors
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, t)| t)
                    .ok_or_else(|| anyhow::anyhow!("the checkpoint lacks {name}"))
            };
            adam.exp_avg_sq.copy_(find(ADAM_EXP_AVG_SQ)?);
            adam.step = find(ADAM_STEP)?.int64_value(&[]);
        }
        if let Some(scaler) = &mut self.scaler {
            scaler.load_state(tensors);
        }
        Ok(())
    }
}

/// LARS's per-tensor scaling of the direction.
struct Lars {
    trust: f64,
    weight_decay: f64,
    /// (offset, length) in the flat buffer of every tensor with more than one dimension.
    matrices: Vec<(i64, i64)>,
}

impl Lars {
    /// The gradient with every weight matrix and convolution replaced by q · (g + wd·θ); the
    /// other tensors keep g.
    fn direction(&self, grad: &Tensor, flat: &Tensor) -> Tensor {
        let out = grad.copy();
        for &(offset, len) in &self.matrices {
            let p = flat.narrow(0, offset, len);
            let d = grad.narrow(0, offset, len) + &p * self.weight_decay;
            let (p_norm, d_norm) = (p.norm(), d.norm());
            let ratio = (&p_norm * self.trust) / d_norm.clamp_min(f64::MIN_POSITIVE);
            let usable = p_norm.gt(0.0).logical_and(&d_norm.gt(0.0));
            let q = ratio.where_self(&usable, &ratio.ones_like());
            out.narrow(0, offset, len).copy_(&(d * q));
        }
        out
    }
}

/// AdamW's second moment and step count (its first moment is the optimizer's `buffer`).
struct AdamState {
    exp_avg_sq: Tensor,
    step: i64,
}

impl AdamState {
    /// One torch.optim.AdamW step; `decay` is the weight decay per element.
    fn step(&mut self, flat: &Tensor, grad: &Tensor, exp_avg: &Tensor, decay: &Tensor, lr: f64) {
        let (beta1, beta2) = ADAM_BETAS;
        self.step += 1;
        let t = self.step as i32;
        let mut flat = flat.shallow_clone();
        // Decoupled weight decay first: θ ← θ − lr·wd·θ.
        let _ = flat.addcmul_(&(decay * -lr), &flat.shallow_clone());
        let _ = exp_avg.shallow_clone().lerp_(grad, 1.0 - beta1);
        let _ = self
            .exp_avg_sq
            .g_mul_scalar_(beta2)
            .addcmul_(&(grad * (1.0 - beta2)), grad);
        let bias1 = 1.0 - beta1.powi(t);
        let bias2_sqrt = (1.0 - beta2.powi(t)).sqrt();
        let denom = self.exp_avg_sq.sqrt() / bias2_sqrt + ADAM_EPS;
        let _ = flat.addcdiv_(&(exp_avg * (-lr / bias1)), &denom);
    }
}
