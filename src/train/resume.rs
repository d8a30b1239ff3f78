//! What a resume may change. Each setting's rule (`x-resume` in the settings' declaration):
//! "shape" settings give the saved state its shape and meaning and can never change; a
//! "trajectory" setting changes where the run goes from the saved state, so a new value is
//! refused unless the user asks for it; any other setting (device, precision, monitoring,
//! checkpoints) may always change.
use crate::config::settings::{self, Resume};
use crate::config::RunConfig;
use anyhow::bail;

/// A resume must continue the same model and queue, and, unless `allow_change`, the same
/// trajectory. Device, precision, monitoring and checkpoint settings may always change.
pub(crate) fn check_resumable(
    saved: &RunConfig,
    now: &RunConfig,
    allow_change: bool,
) -> anyhow::Result<()> {
    let saved_json = serde_json::to_value(saved)?;
    let now_json = serde_json::to_value(now)?;
    let changed = |rule: Resume| -> Vec<String> {
        settings::all()
            .iter()
            .filter(|s| s.resume == rule)
            .filter_map(|s| {
                let before = settings::lookup(&saved_json, &s.key);
                let after = settings::lookup(&now_json, &s.key);
                (before != after).then(|| {
                    let text = |v: Option<&serde_json::Value>| {
                        v.map_or("—".to_string(), |v| v.to_string())
                    };
                    format!("{} ({} → {})", s.key, text(before), text(after))
                })
            })
            .collect()
    };
    let mut shape = changed(Resume::Shape);
    if saved.head_hidden_dim() != now.head_hidden_dim() {
        shape.push(format!(
            "head_hidden ({} → {})",
            saved.head_hidden_dim(),
            now.head_hidden_dim()
        ));
    }
    if !shape.is_empty() {
        bail!(
            "cannot resume: the checkpoint's model, queue or data differ from this config: {}. \
             Resume with the config it was saved with",
            shape.join(", ")
        );
    }
    let trajectory = changed(Resume::Trajectory);
    if !trajectory.is_empty() && !allow_change {
        bail!(
            "cannot resume: this config changes the run's trajectory: {}. Resume with the \
             config the checkpoint was saved with, or pass --allow-config-change to continue \
             with the new values",
            trajectory.join(", ")
        );
    }
    Ok(())
}
