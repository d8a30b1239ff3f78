//! Learning-rate and momentum schedules, as functions of the global step.
use crate::config::{LrSchedule, MomentumSchedule, RunConfig};
use std::f64::consts::PI;

#[derive(Debug, Clone)]
pub struct Schedule {
    base_lr: f64,
    kind: LrSchedule,
    milestones: Vec<f64>,
    gamma: f64,
    warmup_steps: f64,
    total_steps: f64,
    momentum: f64,
    momentum_kind: MomentumSchedule,
}

impl Schedule {
    pub fn new(cfg: &RunConfig, steps_per_epoch: i64) -> Self {
        Schedule {
            base_lr: cfg.effective_lr(),
            kind: cfg.lr_schedule,
            milestones: cfg.lr_milestones.clone(),
            gamma: cfg.lr_gamma,
            warmup_steps: cfg.warmup_epochs * steps_per_epoch as f64,
            total_steps: (cfg.epochs * steps_per_epoch) as f64,
            momentum: cfg.momentum,
            momentum_kind: cfg.momentum_schedule,
        }
    }

    /// Learning rate for the step about to be taken (0-based). Linear warm-up, then the schedule
    /// over the whole run (as the official code, the cosine spans all epochs).
    pub fn lr(&self, step: i64) -> f64 {
        let s = step as f64;
        if s < self.warmup_steps {
            return self.base_lr * (s + 1.0) / self.warmup_steps;
        }
        let progress = s / self.total_steps.max(1.0);
        match self.kind {
            LrSchedule::Cosine => self.base_lr * 0.5 * (1.0 + (PI * progress).cos()),
            LrSchedule::Step => {
                let passed = self.milestones.iter().filter(|&&m| progress >= m).count();
                self.base_lr * self.gamma.powi(passed as i32)
            }
        }
    }

    /// Key-encoder momentum for the step: constant, or rising to 1 along a half cosine.
    pub fn momentum(&self, step: i64) -> f64 {
        match self.momentum_kind {
            MomentumSchedule::Constant => self.momentum,
            MomentumSchedule::Cosine => {
                let progress = step as f64 / self.total_steps.max(1.0);
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

    #[test]
    fn v1_step_schedule_drops_at_120_and_160_of_200() {
        let cfg = RunConfig::preset(Preset::V1);
        let s = Schedule::new(&cfg, 10);
        assert!((s.lr(0) - 0.03).abs() < 1e-12);
        assert!((s.lr(1199) - 0.03).abs() < 1e-12);
        assert!((s.lr(1200) - 0.003).abs() < 1e-12);
        assert!((s.lr(1600) - 0.0003).abs() < 1e-12);
    }

    #[test]
    fn cosine_with_warmup() {
        let cfg = RunConfig::preset(Preset::Cifar)
            .with_overrides([("warmup_epochs", Value::from(1)), ("epochs", 10.into())])
            .unwrap();
        let s = Schedule::new(&cfg, 4);
        let lr = cfg.effective_lr();
        assert!((s.lr(0) - lr / 4.0).abs() < 1e-12);
        assert!((s.lr(3) - lr).abs() < 1e-12);
        assert!((s.lr(20) - lr * 0.5).abs() < 1e-12);
        assert!(s.lr(39) < lr * 0.01);
    }

    #[test]
    fn momentum_cosine_reaches_one() {
        let cfg = RunConfig::preset(Preset::Cifar)
            .with_overrides([("momentum_schedule", Value::from("cosine"))])
            .unwrap();
        let s = Schedule::new(&cfg, 10);
        assert!((s.momentum(0) - 0.99).abs() < 1e-12);
        assert!((s.momentum(1000) - 0.995).abs() < 1e-12);
        assert!((s.momentum(2000) - 1.0).abs() < 1e-12);
    }
}
