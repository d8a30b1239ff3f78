//! Learning-rate and momentum schedules, as functions of the global step.
//!
//! The learning rate follows the official code exactly:
//! * MoCo v1/v2 and the CIFAR demo (`main_moco.py`, `adjust_learning_rate(optimizer, epoch,
//!   args)`): set once per epoch, cosine `lr·½(1 + cos(π·epoch/epochs))` or ×`lr_gamma` at each
//!   milestone epoch;
//! * MoCo v3 (`adjust_learning_rate(optimizer, epoch + i / iters_per_epoch, args)`): set every
//!   step from the fractional epoch, a linear warm-up from 0 over `warmup_epochs`, then the cosine
//!   over the remaining epochs.
//!
//! `lr_update` chooses per epoch or per step. The warm-up, where there is one, always ramps per
//! step: set per epoch it would spend the whole first epoch at lr 0.
use crate::config::{LrSchedule, LrUpdate, MomentumSchedule, RunConfig};
use std::f64::consts::PI;

/// The learning-rate half of a schedule: what any SGD loop here (the MoCo run's, the linear
/// probe's) needs to set its lr.
#[derive(Debug, Clone)]
pub struct LrPlan {
    /// The lr at the top of the schedule (after any batch scaling).
    pub base_lr: f64,
    pub kind: LrSchedule,
    pub update: LrUpdate,
    /// Added to the epoch's index with per-epoch updates (the CIFAR demo counts from 1).
    pub first_epoch: i64,
    /// Fractions of the run.
    pub milestones: Vec<f64>,
    pub gamma: f64,
    pub warmup_epochs: f64,
    pub epochs: i64,
}

#[derive(Debug, Clone)]
pub struct Schedule {
    base_lr: f64,
    kind: LrSchedule,
    update: LrUpdate,
    first_epoch: f64,
    milestones: Vec<f64>,
    gamma: f64,
    warmup_epochs: f64,
    epochs: f64,
    steps_per_epoch: f64,
    momentum: f64,
    momentum_kind: MomentumSchedule,
}

impl Schedule {
    pub fn new(cfg: &RunConfig, steps_per_epoch: i64) -> Self {
        let plan = LrPlan {
            base_lr: cfg.effective_lr(),
            kind: cfg.lr_schedule,
            update: cfg.lr_update,
            first_epoch: cfg.lr_first_epoch,
            milestones: cfg.lr_milestones.clone(),
            gamma: cfg.lr_gamma,
            warmup_epochs: cfg.warmup_epochs,
            epochs: cfg.epochs,
        };
        Schedule {
            momentum: cfg.momentum,
            momentum_kind: cfg.momentum_schedule,
            ..Schedule::for_lr(plan, steps_per_epoch)
        }
    }

    /// The learning rate alone, for loops without a key encoder (its momentum reads 0).
    pub fn for_lr(plan: LrPlan, steps_per_epoch: i64) -> Self {
        Schedule {
            base_lr: plan.base_lr,
            kind: plan.kind,
            update: plan.update,
            first_epoch: plan.first_epoch as f64,
            milestones: plan.milestones,
            gamma: plan.gamma,
            warmup_epochs: plan.warmup_epochs,
            epochs: plan.epochs as f64,
            steps_per_epoch: steps_per_epoch.max(1) as f64,
            momentum: 0.0,
            momentum_kind: MomentumSchedule::Constant,
        }
    }

    /// Learning rate for the step about to be taken (0-based).
    pub fn lr(&self, step: i64) -> f64 {
        // Where in the run the step is, in epochs: fractional for per-step updates, the epoch's
        // index for per-epoch updates.
        let fractional = step as f64 / self.steps_per_epoch;
        if fractional < self.warmup_epochs {
            return self.base_lr * fractional / self.warmup_epochs;
        }
        let epoch = match self.update {
            LrUpdate::Step => fractional,
            LrUpdate::Epoch => (fractional.floor() + self.first_epoch).max(self.warmup_epochs),
        };
        match self.kind {
            LrSchedule::Cosine => {
                let span = (self.epochs - self.warmup_epochs).max(f64::MIN_POSITIVE);
                let progress = ((epoch - self.warmup_epochs) / span).clamp(0.0, 1.0);
                self.base_lr * 0.5 * (1.0 + (PI * progress).cos())
            }
            LrSchedule::Step => {
                let progress = epoch / self.epochs;
                // A small tolerance so a milestone at an epoch boundary (0.6 of 200 = 120) is
                // passed at exactly that epoch despite rounding in the fraction.
                let passed = self
                    .milestones
                    .iter()
                    .filter(|&&m| progress + 1e-9 >= m)
                    .count();
                self.base_lr * self.gamma.powi(passed as i32)
            }
        }
    }

    /// Key-encoder momentum for the step: constant, or rising to 1 along a half cosine.
    pub fn momentum(&self, step: i64) -> f64 {
        match self.momentum_kind {
            MomentumSchedule::Constant => self.momentum,
            MomentumSchedule::Cosine => {
                let progress = step as f64 / (self.steps_per_epoch * self.epochs);
                1.0 - (1.0 - self.momentum) * 0.5 * (1.0 + (PI * progress).cos())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Preset, RunConfig};
    use serde_json::Value;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn v1_step_schedule_drops_at_120_and_160_of_200() {
        let cfg = RunConfig::preset(Preset::V1);
        let s = Schedule::new(&cfg, 10);
        assert!(close(s.lr(0), 0.03));
        assert!(close(s.lr(1199), 0.03));
        assert!(close(s.lr(1200), 0.003));
        assert!(close(s.lr(1600), 0.0003));
    }

    #[test]
    fn the_cifar_demo_sets_the_cosine_once_per_epoch() {
        let cfg = RunConfig::preset(Preset::Cifar)
            .with_overrides([("epochs", Value::from(2))])
            .unwrap();
        let s = Schedule::new(&cfg, 97);
        // The notebook's loop, `for epoch in range(1, epochs + 1)`, and its adjust_learning_rate:
        // 0.06·½(1 + cos(π·1/2)) in the first epoch, 0.06·½(1 + cos(π)) = 0 in the second.
        for step in [0, 50, 96] {
            assert!(close(s.lr(step), 0.03), "step {step}: {}", s.lr(step));
        }
        for step in [97, 150, 193] {
            assert!(close(s.lr(step), 0.0), "step {step}: {}", s.lr(step));
        }
        // main_moco.py counts from 0: 0.06, then 0.03.
        let from_zero = RunConfig::preset(Preset::Cifar)
            .with_overrides([("epochs", Value::from(2)), ("lr_first_epoch", 0.into())])
            .unwrap();
        let s = Schedule::new(&from_zero, 97);
        assert!(close(s.lr(96), 0.06));
        assert!(close(s.lr(97), 0.03));
    }

    #[test]
    fn per_step_cosine_follows_the_fractional_epoch() {
        let cfg = RunConfig::preset(Preset::Cifar)
            .with_overrides([("epochs", Value::from(2)), ("lr_update", "step".into())])
            .unwrap();
        let s = Schedule::new(&cfg, 100);
        assert!(close(s.lr(0), 0.06));
        assert!(close(s.lr(100), 0.03));
        assert!(close(s.lr(50), 0.03 * (1.0 + (PI / 4.0).cos())));
    }

    #[test]
    fn warm_up_rises_from_zero_then_the_cosine_spans_the_remaining_epochs() {
        // MoCo v3: lr·epoch/warmup, then lr·½(1 + cos(π·(epoch − warmup)/(epochs − warmup))).
        for update in ["step", "epoch"] {
            let cfg = RunConfig::preset(Preset::Cifar)
                .with_overrides([
                    ("warmup_epochs", Value::from(2)),
                    ("epochs", 10.into()),
                    ("lr_update", update.into()),
                    ("lr_first_epoch", 0.into()),
                ])
                .unwrap();
            let s = Schedule::new(&cfg, 4);
            let lr = cfg.effective_lr();
            assert!(close(s.lr(0), 0.0), "{update}");
            assert!(close(s.lr(1), lr / 8.0), "{update}");
            assert!(close(s.lr(4), lr / 2.0), "{update}");
            // The end of the warm-up is the top of the cosine: no drop when it ends.
            assert!(close(s.lr(8), lr), "{update}");
            // Half-way through the 8 cosine epochs (epoch 6) the lr is half.
            assert!(close(s.lr(24), lr * 0.5), "{update}");
            assert!(s.lr(39) < lr * 0.05, "{update}: {}", s.lr(39));
        }
    }

    #[test]
    fn momentum_cosine_reaches_one() {
        let cfg = RunConfig::preset(Preset::Cifar)
            .with_overrides([("momentum_schedule", Value::from("cosine"))])
            .unwrap();
        let s = Schedule::new(&cfg, 10);
        assert!(close(s.momentum(0), 0.99));
        assert!(close(s.momentum(1000), 0.995));
        assert!(close(s.momentum(2000), 1.0));
    }
}
