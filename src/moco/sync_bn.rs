//! BatchNorm over the whole global batch of a data-parallel run (PyTorch's SyncBatchNorm, which
//! moco-v3's main_moco.py converts the model to): each rank's statistics are summed across the
//! ranks with a gradient, so every rank normalises with the global batch's mean and variance and
//! its backward sends each rank its share, as one process normalising the whole batch would.
//!
//! Which forward passes synchronise is a scope the model opens around them (`SyncScope`), not an
//! argument threaded through every layer: BatchNorm layers in a scope normalise across the
//! scope's ranks; outside one they are ordinary BatchNorm.
use crate::dist::DataParallel;
use std::cell::RefCell;
use std::sync::Arc;
use tch::{Kind, Tensor};

struct Scope {
    parallel: Arc<DataParallel>,
    /// The first collective that failed in the scope; the layers after it skip theirs (a peer
    /// that stalled would otherwise cost a timeout per layer).
    error: Option<anyhow::Error>,
}

thread_local! {
    static SCOPE: RefCell<Option<Scope>> = const { RefCell::new(None) };
}

/// While it lives, BatchNorm in training on this thread normalises over every rank's batch.
pub struct SyncScope {
    active: bool,
}

impl SyncScope {
    /// Synchronises over `parallel`'s ranks; with None (one process) it changes nothing.
    pub fn enter(parallel: Option<&Arc<DataParallel>>) -> SyncScope {
        let Some(parallel) = parallel else {
            return SyncScope { active: false };
        };
        SCOPE.with(|s| {
            let mut s = s.borrow_mut();
            assert!(s.is_none(), "SyncBatchNorm scopes do not nest");
            *s = Some(Scope {
                parallel: parallel.clone(),
                error: None,
            });
        });
        SyncScope { active: true }
    }

    /// Ends the scope: Err when a collective in it failed (the outputs are then meaningless).
    pub fn finish(mut self) -> anyhow::Result<()> {
        self.active = false;
        match SCOPE.with(|s| s.borrow_mut().take()) {
            Some(Scope {
                error: Some(error), ..
            }) => Err(error),
            _ => Ok(()),
        }
    }
}

impl Drop for SyncScope {
    fn drop(&mut self) {
        if self.active {
            SCOPE.with(|s| s.borrow_mut().take());
        }
    }
}

/// The global batch's statistics of `x` ([N, C, …]) per channel, if this thread is in a scope:
/// (mean, biased variance) with gradients, and the global count of values per channel. Two
/// passes, as batch_norm computes them: the global mean first, then the sum of squares about it,
/// so a large mean costs no precision.
pub fn global_stats(x: &Tensor) -> Option<(Tensor, Tensor, f64)> {
    SCOPE.with(|s| {
        let mut guard = s.borrow_mut();
        let scope = guard.as_mut()?;
        let size = x.size();
        let channels = size[1];
        let dims: Vec<i64> = (0..size.len() as i64).filter(|&d| d != 1).collect();
        let shape: Vec<i64> = (0..size.len() as i64)
            .map(|d| if d == 1 { channels } else { 1 })
            .collect();
        let local = (x.numel() as i64 / channels.max(1)) as f64;
        let count = local * scope.parallel.world() as f64;
        let x = x.to_kind(Kind::Float);
        if scope.error.is_none() {
            let synced = (|| {
                let sum = scope.parallel.sum_with_grad(&x.sum_dim_intlist(
                    &dims[..],
                    false,
                    Kind::Float,
                ))?;
                let mean = sum / count;
                let centred = &x - mean.view(shape.as_slice());
                let squares = scope
                    .parallel
                    .sum_with_grad(&centred.square().sum_dim_intlist(
                        &dims[..],
                        false,
                        Kind::Float,
                    ))?;
                anyhow::Ok((mean, squares / count))
            })();
            match synced {
                Ok((mean, var)) => return Some((mean, var, count)),
                Err(e) => scope.error = Some(e),
            }
        }
        // A collective failed, here or in an earlier layer: anything finite will do, the step is
        // abandoned.
        let (var, mean) = x.var_mean_correction(&dims[..], 0, false);
        Some((mean, var, local))
    })
}

/// `x` normalised with the global statistics `stats` (from `global_stats`) and the affine
/// parameters if any; the running statistics move as batch_norm moves them (unbiased variance),
/// identically on every rank since every rank has the same statistics.
pub fn normalise(
    x: &Tensor,
    stats: (Tensor, Tensor, f64),
    affine: Option<(&Tensor, &Tensor)>,
    running: (&Tensor, &Tensor),
) -> Tensor {
    use super::norm::{BN_EPS, BN_MOMENTUM};
    let (mean, var, count) = stats;
    let size = x.size();
    let shape: Vec<i64> = (0..size.len())
        .map(|d| if d == 1 { size[1] } else { 1 })
        .collect();
    let inverse_std = (&var + BN_EPS).rsqrt();
    let (scale, shift) = match affine {
        Some((weight, bias)) => {
            let scale = inverse_std * weight;
            let shift = bias - &mean * &scale;
            (scale, shift)
        }
        None => {
            let shift = -(&mean * &inverse_std);
            (inverse_std, shift)
        }
    };
    let out = x.to_kind(Kind::Float) * scale.view(shape.as_slice()) + shift.view(shape.as_slice());
    tch::no_grad(|| {
        let unbiased = &var * (count / (count - 1.0).max(1.0));
        let _ = running.0.shallow_clone().lerp_(&mean, BN_MOMENTUM);
        let _ = running.1.shallow_clone().lerp_(&unbiased, BN_MOMENTUM);
    });
    out.to_kind(x.kind())
}
