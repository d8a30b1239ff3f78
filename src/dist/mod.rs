//! Training on several processes (devices, machines) over PyTorch's c10d: the process group
//! (`group`), the data-parallel arithmetic (`parallel`), the gradient's all-reduce overlapped
//! with backward (`reducer`) and the launcher that spawns and supervises the ranks (`launch`).
pub mod group;
pub mod launch;
pub mod parallel;
pub mod reducer;

pub use group::{CommBackend, ProcessGroup, Rendezvous};
pub use parallel::DataParallel;
pub use reducer::GradientReducer;

use crate::config::{FieldError, Framework, Mechanism, RunConfig};

/// What a run must satisfy to train on `world` ranks, each error naming its field. `batch_size`
/// is the global batch, split evenly; `shuffle_bn_splits` counts the global batch's BatchNorm
/// groups, each rank holding the same number of them.
pub fn check_config(cfg: &RunConfig, world: usize) -> Result<(), Vec<FieldError>> {
    if world <= 1 {
        return Ok(());
    }
    let n = world as i64;
    let mut errors = Vec::new();
    if cfg.batch_size % n != 0 {
        errors.push(FieldError::new(
            "batch_size",
            format!(
                "the global batch {} must split evenly over {world} ranks",
                cfg.batch_size
            ),
        ));
    }
    // v3 normalises over the whole global batch with SyncBatchNorm: it has no groups to split.
    if cfg.framework != Framework::V3 {
        if cfg.mechanism != Mechanism::Moco {
            errors.push(FieldError::new(
                "mechanism",
                format!(
                    "the {} mechanism trains on one process; across ranks only the moco mechanism",
                    cfg.mechanism
                ),
            ));
        } else if cfg.shuffle_bn_splits % n != 0 {
            errors.push(FieldError::new(
                "shuffle_bn_splits",
                format!(
                    "the global batch's {} BatchNorm groups must split evenly over {world} ranks \
                     (one group per rank, as the official DDP code, is shuffle_bn_splits = {world})",
                    cfg.shuffle_bn_splits
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}
