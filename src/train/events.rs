//! What the engine tells the outside world while it trains. The engine knows nothing of HTTP, SQL
//! or terminals: the CLI's progress bar and the server's recorder are both `Observer`s.
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Names of the values in a `MetricRecord` (the dashboard and the API use the same names).
pub mod metric {
    pub const LOSS: &str = "loss";
    pub const LR: &str = "lr";
    pub const MOMENTUM: &str = "momentum";
    /// How often the positive key has the largest logit among the K + 1.
    pub const TOP1: &str = "top1";
    /// Mean positive logit q·k⁺ (before /T).
    pub const POS_LOGIT: &str = "pos_logit";
    /// Mean and max negative logit q·queue (before /T).
    pub const NEG_LOGIT: &str = "neg_logit";
    pub const NEG_LOGIT_MAX: &str = "neg_logit_max";
    /// Real keys in the queue / K.
    pub const QUEUE_FILL: &str = "queue_fill";
    pub const QUEUE_PTR: &str = "queue_ptr";
    /// Age in steps of the keys in the queue (only real keys count).
    pub const KEY_AGE_MEAN: &str = "key_age_mean";
    pub const KEY_AGE_MAX: &str = "key_age_max";
    /// Mean pairwise cosine similarity within the queue; near 1 means collapse.
    pub const QUEUE_SIMILARITY: &str = "queue_similarity";
    /// ‖θq − θk‖ / ‖θq‖.
    pub const DRIFT: &str = "drift";
    pub const IMAGES_PER_SEC: &str = "images_per_sec";
    /// Mean time per step the trainer waited for the loader, in milliseconds.
    pub const DATA_WAIT_MS: &str = "data_wait_ms";
    /// Several ranks only: mean time per step this rank spent in collectives with the others
    /// (sharing keys, images and gradients, and waiting for slower ranks), in milliseconds.
    pub const COMM_MS: &str = "comm_ms";
    /// Several ranks only, one value per rank under `per_rank(name, rank)`: the images per second
    /// of the rank's own work (the interval less its time in collectives), and its time in
    /// collectives per step in milliseconds. A rank slower than the others computes fewer images
    /// per second and waits less.
    pub const RANK_IMAGES_PER_SEC: &str = "images_per_sec_rank";
    pub const RANK_COMM_MS: &str = "comm_ms_rank";

    /// The name a per-rank value is stored under: "images_per_sec_rank1".
    pub fn per_rank(name: &str, rank: usize) -> String {
        format!("{name}{rank}")
    }

    /// CUDA only: memory the caching allocator holds on the device (what nvidia-smi shows for the
    /// process, less the CUDA context), and the most held by live tensors, in MiB.
    pub const DEVICE_MEMORY_MB: &str = "device_memory_mb";
    pub const DEVICE_MEMORY_PEAK_MB: &str = "device_memory_peak_mb";
    /// fp16 only: the loss scale (halved on every overflowing step, which is skipped).
    pub const LOSS_SCALE: &str = "loss_scale";
    /// The largest gradient norm ‖∇θq‖ of the query encoder over the steps since the previous
    /// record (the largest, not the mean, so a one-step spike shows).
    pub const GRAD_NORM: &str = "grad_norm";
    /// The same for the first layer alone (the stem convolution; a ViT's patch projection), where
    /// the MoCo v3 paper traces training instability to.
    pub const GRAD_NORM_FIRST: &str = "grad_norm_first";
    /// In every record.
    pub const ALL: [&str; 17] = [
        LOSS,
        LR,
        MOMENTUM,
        TOP1,
        POS_LOGIT,
        NEG_LOGIT,
        NEG_LOGIT_MAX,
        QUEUE_FILL,
        QUEUE_PTR,
        KEY_AGE_MEAN,
        KEY_AGE_MAX,
        QUEUE_SIMILARITY,
        DRIFT,
        IMAGES_PER_SEC,
        DATA_WAIT_MS,
        GRAD_NORM,
        GRAD_NORM_FIRST,
    ];
    /// In the records of runs where they apply.
    pub const OPTIONAL: [&str; 3] = [DEVICE_MEMORY_MB, DEVICE_MEMORY_PEAK_MB, LOSS_SCALE];
}

/// Metrics averaged over the steps since the previous record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRecord {
    /// Global step (1-based: the number of optimizer steps taken so far).
    pub step: i64,
    /// Epoch being trained (0-based).
    pub epoch: i64,
    pub values: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckpointKind {
    /// Everything needed to resume.
    Full,
    /// The query backbone in safetensors with torchvision's keys.
    Encoder,
}

impl CheckpointKind {
    pub fn name(self) -> &'static str {
        match self {
            CheckpointKind::Full => "full",
            CheckpointKind::Encoder => "encoder",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub kind: CheckpointKind,
    pub path: PathBuf,
    pub epoch: i64,
    pub step: i64,
    pub size_bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TrainEvent {
    /// Training (or a resume) begins: the shape of the run.
    Started {
        device: String,
        start_step: i64,
        start_epoch: i64,
        steps_per_epoch: i64,
        total_steps: i64,
        train_images: usize,
        parameters: i64,
    },
    Metrics(MetricRecord),
    /// Weighted kNN top-1 (percent) on the held-out split after `epoch` epochs (0: the untrained
    /// encoder, the baseline).
    Evaluation {
        epoch: i64,
        step: i64,
        knn_top1: f64,
        features: String,
    },
    CheckpointSaved(CheckpointInfo),
    Log {
        level: LogLevel,
        message: String,
    },
}

/// Receives events on the training thread; must not block for long (the server's observer only
/// pushes into a bounded channel).
pub trait Observer: Send {
    fn on_event(&mut self, event: TrainEvent);
}

/// Collects events in memory (tests, tools).
#[derive(Default)]
pub struct CollectingObserver {
    pub events: Vec<TrainEvent>,
}

impl Observer for CollectingObserver {
    fn on_event(&mut self, event: TrainEvent) {
        self.events.push(event);
    }
}

impl CollectingObserver {
    pub fn metrics(&self) -> impl Iterator<Item = &MetricRecord> {
        self.events.iter().filter_map(|e| match e {
            TrainEvent::Metrics(m) => Some(m),
            _ => None,
        })
    }

    pub fn evaluations(&self) -> impl Iterator<Item = (i64, f64)> + '_ {
        self.events.iter().filter_map(|e| match e {
            TrainEvent::Evaluation {
                epoch, knn_top1, ..
            } => Some((*epoch, *knn_top1)),
            _ => None,
        })
    }

    pub fn checkpoints(&self) -> impl Iterator<Item = &CheckpointInfo> {
        self.events.iter().filter_map(|e| match e {
            TrainEvent::CheckpointSaved(c) => Some(c),
            _ => None,
        })
    }

    /// The encoder export the run wrote, if it wrote one.
    pub fn encoder_export(&self) -> Option<&CheckpointInfo> {
        self.checkpoints()
            .find(|c| c.kind == CheckpointKind::Encoder)
    }
}

/// How a training call ended (errors before or during training are `Err`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RunOutcome {
    Completed {
        step: i64,
        final_knn_top1: Option<f64>,
    },
    /// Stopped by the user; a full checkpoint was written.
    Cancelled { step: i64 },
    /// Stopped by a shutdown of the process; a full checkpoint was written and the run can resume.
    Interrupted { step: i64 },
    /// The run diverged (NaN/Inf loss) or collapsed; the reason is for the user.
    Failed { step: i64, reason: String },
}
