//! A run's state and the moves between states.
use serde::{Deserialize, Serialize};

/// Where a run is in its life.
///
/// queued → running → completed | failed | cancelled | interrupted; interrupted, cancelled and
/// failed runs can be resumed (back to queued), a queued or interrupted run can be cancelled.
/// Stored by name in `runs.state` (the table's CHECK constraint lists the same names).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    sqlx::Type,
    schemars::JsonSchema,
    strum::IntoStaticStr,
    strum::VariantArray,
    strum::Display,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum RunState {
    Queued,
    Running,
    Completed,
    Failed,
    Cancelled,
    /// The process stopped while the run was training; it can resume from its last checkpoint.
    Interrupted,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Nothing will change the run by itself any more.
    pub fn is_finished(self) -> bool {
        !matches!(self, RunState::Queued | RunState::Running)
    }

    /// The run can be queued again (continuing from its latest full checkpoint, if any).
    pub fn can_resume(self) -> bool {
        matches!(
            self,
            RunState::Interrupted | RunState::Cancelled | RunState::Failed
        )
    }

    /// Progress in [0, 1] of a job in this state that took `step` of `total_steps` steps (0 until
    /// the total is known; 1 once completed).
    pub fn progress(self, step: i64, total_steps: i64) -> f64 {
        if self == RunState::Completed {
            1.0
        } else if total_steps > 0 {
            (step as f64 / total_steps as f64).clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    /// Seconds left for a job in this state at `step` of `total_steps`, going at
    /// `steps_per_sec`: only a running job with a known speed and total has an ETA.
    pub fn eta_seconds(
        self,
        step: i64,
        total_steps: i64,
        steps_per_sec: Option<f64>,
    ) -> Option<f64> {
        match (self, steps_per_sec) {
            (RunState::Running, Some(sps)) if sps > 0.0 && total_steps > 0 => {
                Some((total_steps - step).max(0) as f64 / sps)
            }
            _ => None,
        }
    }

    /// The run can be cancelled (a running one stops within a step and keeps a checkpoint).
    pub fn can_cancel(self) -> bool {
        matches!(
            self,
            RunState::Queued | RunState::Running | RunState::Interrupted
        )
    }
}
