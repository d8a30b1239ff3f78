//! The estimated duration of a run a user is about to start, for the New run form and the JSON
//! API: the config as the server would store it, the dataset's size from the data directory's
//! listing and the speed of the device it would train on (see `train::estimate`).
use super::AppState;
use crate::config::Choice;
use crate::config::{DatasetKind, FieldError, Preset, RunConfig};
use crate::train::estimate::{self, Estimate};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Clone, Serialize)]
pub struct RunEstimate {
    #[serde(flatten)]
    pub estimate: Estimate,
    pub train_images: usize,
    pub test_images: usize,
    /// "cpu" or "cuda:N": the device the speed was measured on.
    pub device: String,
    /// One sentence for the form: "about 4 min (312 steps, 5 kNN evaluations, on cpu)".
    pub text: String,
}

/// The estimate for a partial config (keys missing come from its preset, as a new run's do).
/// Err: the config is invalid, or its dataset is not in the data directory (each error names its
/// field), so nothing can be estimated.
pub async fn for_config(state: &AppState, doc: &Value) -> Result<RunEstimate, Vec<FieldError>> {
    for_run_config(state, RunConfig::from_partial_json(doc, Preset::Cifar)?).await
}

/// The estimate for a validated config.
pub async fn for_run_config(
    state: &AppState,
    cfg: RunConfig,
) -> Result<RunEstimate, Vec<FieldError>> {
    let (train_images, test_images) = dataset_size(state, &cfg).await?;
    let rank_devices = crate::config::devices::resolve_rank_devices(&cfg.device, cfg.devices)
        .map_err(|e| vec![e])?;
    // The ranks' shares of a step run side by side: the first one's speed stands for all (on the
    // CPU they share the cores, which the speed measured with all of them already is).
    let device = rank_devices[0];
    let speed = tokio::task::spawn_blocking(move || estimate::device_speed(device))
        .await
        .map_err(|_| {
            vec![FieldError::new(
                "device",
                "the speed of the device could not be measured",
            )]
        })?;
    // GPUs each take their share of the batch; CPU ranks share the cores the speed was measured
    // with. (The kNN monitor, on rank 0 alone, is counted as shared too.)
    let speed = if device.is_cuda() {
        speed * rank_devices.len() as f64
    } else {
        speed
    };
    let cfg_for_work = cfg.clone();
    let estimate = tokio::task::spawn_blocking(move || {
        estimate::estimate(&cfg_for_work, train_images, test_images, speed)
    })
    .await
    .map_err(|_| vec![FieldError::new("", "the run could not be estimated")])?;
    let device = crate::config::devices::rank_devices_name(&rank_devices);
    let text = format!(
        "{} ({} steps, {} kNN evaluation{}, on {device})",
        estimate.duration_text(),
        estimate.total_steps,
        estimate.evaluations,
        if estimate.evaluations == 1 { "" } else { "s" },
    );
    Ok(RunEstimate {
        estimate,
        train_images,
        test_images,
        device,
        text,
    })
}

/// Training and held-out images of the config's dataset: the synthetic set's sizes, or what the
/// data directory's listing counted.
async fn dataset_size(
    state: &AppState,
    cfg: &RunConfig,
) -> Result<(usize, usize), Vec<FieldError>> {
    let ds = &cfg.dataset;
    if ds.kind == DatasetKind::Synthetic {
        return Ok((ds.synthetic_train, ds.synthetic_test));
    }
    let listing = state.datasets().await.map_err(|e| {
        tracing::warn!("cannot list datasets: {e:#}");
        vec![FieldError::new(
            "dataset",
            "the data directory could not be listed",
        )]
    })?;
    listing
        .iter()
        .find(|d| d.kind == ds.kind.name() && d.path == ds.path)
        .map(|d| (d.images as usize, d.test_images as usize))
        .ok_or_else(|| {
            vec![FieldError::new(
                "dataset.path",
                format!("{} is not in the data directory", ds.label()),
            )]
        })
}
