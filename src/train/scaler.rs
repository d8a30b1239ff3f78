//! Dynamic loss scaling for fp16 training (torch.amp.GradScaler's algorithm and defaults).
//!
//! fp16 gradients underflow to zero below about 6e-8, so the loss is multiplied by a large scale
//! before backward and the gradients divided by it afterwards. When a gradient overflows, the step
//! is skipped and the scale halved; after `GROWTH_INTERVAL` clean steps in a row it doubles. All of
//! it happens on the device: the scale, the overflow flag and the counter are tensors, so no step
//! waits for the host.
use crate::torch_ext::unscale_and_check;
use tch::{Device, Kind, Tensor};

pub const INITIAL_SCALE: f64 = 65536.0;
pub const GROWTH_FACTOR: f64 = 2.0;
pub const BACKOFF_FACTOR: f64 = 0.5;
pub const GROWTH_INTERVAL: i64 = 2000;

pub struct LossScaler {
    /// Current scale, a float scalar on the device.
    pub scale: Tensor,
    /// Clean steps since the scale last changed (int32 scalar on the device).
    pub growth_tracker: Tensor,
    /// 1 when the last step's gradients overflowed (the step was skipped).
    pub found_inf: Tensor,
}

impl LossScaler {
    pub fn new(device: Device) -> Self {
        LossScaler {
            scale: Tensor::full([], INITIAL_SCALE, (Kind::Float, device)),
            growth_tracker: Tensor::zeros([], (Kind::Int, device)),
            found_inf: Tensor::zeros([], (Kind::Float, device)),
        }
    }

    /// The loss to run backward on.
    pub fn scale_loss(&self, loss: &Tensor) -> Tensor {
        loss * &self.scale
    }

    /// Divides `grad` (in place) by the scale and records whether it overflowed; returns the flag
    /// the optimizer step checks.
    pub fn unscale(&mut self, grad: &Tensor) -> &Tensor {
        let _guard = tch::no_grad_guard();
        let _ = self.found_inf.zero_();
        let inv_scale = self.scale.reciprocal();
        unscale_and_check(grad, &self.found_inf, &inv_scale);
        &self.found_inf
    }

    /// Backs off after an overflow, grows after a run of clean steps.
    pub fn update(&mut self) {
        let _guard = tch::no_grad_guard();
        let _ = self.scale.internal_amp_update_scale_(
            &self.growth_tracker,
            &self.found_inf,
            GROWTH_FACTOR,
            BACKOFF_FACTOR,
            GROWTH_INTERVAL,
        );
    }

    /// The state a checkpoint keeps, by name.
    pub fn named_state(&self) -> Vec<(String, Tensor)> {
        vec![
            ("optimizer.loss_scale".into(), self.scale.shallow_clone()),
            (
                "optimizer.loss_scale_growth_tracker".into(),
                self.growth_tracker.shallow_clone(),
            ),
        ]
    }

    /// Restores the scale from a checkpoint when it has one (a run saved in fp32 or bf16 has
    /// none, and starts from the initial scale).
    pub fn load_state(&mut self, tensors: &[(String, Tensor)]) {
        let _guard = tch::no_grad_guard();
        for (name, target) in [
            ("optimizer.loss_scale", &mut self.scale),
            (
                "optimizer.loss_scale_growth_tracker",
                &mut self.growth_tracker,
            ),
        ] {
            if let Some((_, t)) = tensors.iter().find(|(n, _)| n == name) {
                target.copy_(t);
            }
        }
    }
}
