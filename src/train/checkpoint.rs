//! Checkpoint files, both in safetensors: the full resumable state (`*.ckpt.safetensors`) and the
//! encoder export (`*.safetensors`) whose keys and shapes are torchvision's.
//!
//! Files are serialised in memory, written to a temporary name in the same directory, synced and
//! renamed, so a crash never leaves a half-written checkpoint under the real name.
use super::events::{CheckpointInfo, CheckpointKind};
use super::optim::FlatOptimizer;
use crate::config::{Choice, RunConfig};
use crate::moco::encoder::is_backbone_name;
use crate::moco::model::MocoModel;
use anyhow::{bail, Context};
use safetensors::tensor::{Dtype, View};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

pub const FULL_FORMAT: &str = "moco-server-full-v1";
pub const ENCODER_FORMAT: &str = "moco-server-encoder-v1";

/// Where training stands; with the tensors it is everything a resume needs. The random state is
/// derived from (seed, epoch, step), so the counters are the RNG state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    /// Epochs fully trained.
    pub epoch: i64,
    /// Batches of epoch `epoch` already trained (0 at an epoch boundary).
    pub batch_in_epoch: i64,
    /// Optimizer steps taken.
    pub step: i64,
    pub queue_ptr: i64,
    pub best_knn: Option<f64>,
    pub last_knn: Option<f64>,
    /// Normalisation of the training data, carried into the encoder export.
    pub mean: [f64; 3],
    pub std: [f64; 3],
    pub config: RunConfig,
}

/// Host copy of a tensor in safetensors' terms.
struct HostTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl HostTensor {
    fn from_tensor(t: &Tensor) -> anyhow::Result<Self> {
        let t = t.detach().to_device(Device::Cpu).contiguous();
        let dtype = match t.kind() {
            Kind::Float => Dtype::F32,
            Kind::Int64 => Dtype::I64,
            Kind::BFloat16 => Dtype::BF16,
            Kind::Half => Dtype::F16,
            Kind::Int => Dtype::I32,
            other => bail!("cannot store a tensor of kind {other:?}"),
        };
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)?;
        Ok(HostTensor {
            dtype,
            shape: t.size().iter().map(|&d| d as usize).collect(),
            bytes,
        })
    }
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// The SHA-256 of a file, as hex (what the checkpoints table and evaluations record).
pub fn sha256_of_file(path: &Path) -> anyhow::Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Serialises tensors with string metadata and writes them atomically; returns (size, sha256).
pub fn write_safetensors_atomic(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> anyhow::Result<(u64, String)> {
    let host: Vec<(String, HostTensor)> = tensors
        .iter()
        .map(|(n, t)| Ok((n.clone(), HostTensor::from_tensor(t)?)))
        .collect::<anyhow::Result<_>>()?;
    let bytes = safetensors::serialize(host.iter().map(|(n, t)| (n.as_str(), t)), &Some(metadata))
        .context("cannot serialise the checkpoint")?;
    write_atomically(path, &bytes)?;
    Ok((bytes.len() as u64, hex::encode(Sha256::digest(&bytes))))
}

/// Writes `bytes` to a temporary file beside `path`, syncs it and renames it over `path`, so a
/// reader (or a crash) never sees half a file. Creates the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("cannot rename the file to {}", path.display()))?;
    Ok(())
}

/// Tensors by name, in file order.
pub type NamedTensors = Vec<(String, Tensor)>;

/// Reads every tensor and the metadata of a safetensors file onto `device`.
pub fn read_safetensors(
    path: &Path,
    device: Device,
) -> anyhow::Result<(NamedTensors, HashMap<String, String>)> {
    let bytes = read_file(path)?;
    parse_safetensors(&bytes, path, device)
}

/// The bytes of the file at `path`, with an error naming it.
pub fn read_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Every tensor and the metadata of safetensors `bytes` (read from `path`, which errors name)
/// onto `device`.
pub fn parse_safetensors(
    bytes: &[u8],
    path: &Path,
    device: Device,
) -> anyhow::Result<(NamedTensors, HashMap<String, String>)> {
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let metadata = meta.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(bytes)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let mut tensors = Vec::new();
    for (name, view) in st.tensors() {
        let kind = match view.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::I64 => Kind::Int64,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F16 => Kind::Half,
            Dtype::I32 => Kind::Int,
            other => bail!(
                "{}: tensor {name} has unsupported dtype {other:?}",
                path.display()
            ),
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t = Tensor::f_from_data_size(view.data(), &shape, kind)?.to_device(device);
        tensors.push((name, t));
    }
    Ok((tensors, metadata))
}

/// Writes the full resumable state: both encoders with BN buffers, the queue and its stamps (and
/// the memory bank), the
/// optimizer's state (momentum buffer, and the loss scale in fp16), the counters and the config.
pub fn save_full(
    path: &Path,
    model: &MocoModel,
    optimizer: &FlatOptimizer,
    state: &TrainingState,
) -> anyhow::Result<CheckpointInfo> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    for (n, t) in model.query.store.named_tensors() {
        tensors.push((format!("encoder_q.{n}"), t));
    }
    for (n, t) in model.key.store.named_tensors() {
        tensors.push((format!("encoder_k.{n}"), t));
    }
    tensors.push(("queue.keys".into(), model.queue.keys.shallow_clone()));
    tensors.push(("queue.stamps".into(), model.queue.stamps.shallow_clone()));
    if let Some(bank) = &model.bank {
        tensors.push(("memory_bank".into(), bank.features.shallow_clone()));
        tensors.push((
            "memory_bank.written".into(),
            bank.written.to_kind(Kind::Float),
        ));
    }
    tensors.extend(optimizer.named_state());
    let metadata = HashMap::from([
        ("format".to_string(), FULL_FORMAT.to_string()),
        ("state".to_string(), serde_json::to_string(state)?),
    ]);
    let (size_bytes, sha256) = write_safetensors_atomic(path, &tensors, metadata)?;
    Ok(CheckpointInfo {
        kind: CheckpointKind::Full,
        path: path.to_path_buf(),
        epoch: state.epoch,
        step: state.step,
        size_bytes,
        sha256,
    })
}

/// A full checkpoint read back.
pub struct FullCheckpoint {
    pub tensors: Vec<(String, Tensor)>,
    pub state: TrainingState,
}

pub fn load_full(path: &Path, device: Device) -> anyhow::Result<FullCheckpoint> {
    let (tensors, metadata) = read_safetensors(path, device)?;
    full_from_parts(path, tensors, &metadata)
}

/// A full checkpoint from the bytes of the file at `path`.
pub fn load_full_bytes(
    bytes: &[u8],
    path: &Path,
    device: Device,
) -> anyhow::Result<FullCheckpoint> {
    let (tensors, metadata) = parse_safetensors(bytes, path, device)?;
    full_from_parts(path, tensors, &metadata)
}

/// A full checkpoint from the tensors and metadata of the file at `path`, already read.
pub fn full_from_parts(
    path: &Path,
    tensors: NamedTensors,
    metadata: &HashMap<String, String>,
) -> anyhow::Result<FullCheckpoint> {
    if metadata.get("format").map(String::as_str) != Some(FULL_FORMAT) {
        bail!(
            "{} is not a full moco-server checkpoint (an encoder export cannot be resumed)",
            path.display()
        );
    }
    let state: TrainingState = serde_json::from_str(
        metadata
            .get("state")
            .context("the checkpoint has no training state")?,
    )
    .context("the checkpoint's training state is unreadable")?;
    Ok(FullCheckpoint { tensors, state })
}

impl FullCheckpoint {
    /// Restores encoders and queue; the optimizer takes its state with `FlatOptimizer::load_state`.
    pub fn restore(&self, model: &mut MocoModel) -> anyhow::Result<()> {
        model.query.store.load_named(&self.tensors, "encoder_q.")?;
        model.key.store.load_named(&self.tensors, "encoder_k.")?;
        let get = |name: &str| {
            self.tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t.shallow_clone())
                .with_context(|| format!("the checkpoint lacks {name}"))
        };
        let keys = get("queue.keys")?;
        anyhow::ensure!(
            keys.size() == model.queue.keys.size(),
            "the checkpoint's queue has shape {:?}, the config asks for {:?}",
            keys.size(),
            model.queue.keys.size()
        );
        let _guard = tch::no_grad_guard();
        model.queue.keys.copy_(&keys);
        model.queue.stamps.copy_(&get("queue.stamps")?);
        model.queue.ptr = self.state.queue_ptr;
        if let Some(bank) = &mut model.bank {
            let features = get("memory_bank")?;
            anyhow::ensure!(
                features.size() == bank.features.size(),
                "the checkpoint's memory bank has shape {:?}, the training split asks for {:?}",
                features.size(),
                bank.features.size()
            );
            bank.features.copy_(&features);
            bank.written
                .copy_(&get("memory_bank.written")?.to_kind(Kind::Bool));
        }
        Ok(())
    }
}

/// Metadata of an encoder export (also read back by `moco-server export` checks and tests).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderMetadata {
    pub arch: String,
    pub stem: String,
    pub width: i64,
    /// ViTs' patch side (exports written before ViTs existed lack it).
    #[serde(default = "default_patch_size")]
    pub patch_size: i64,
    pub feature_dim: i64,
    pub dim: i64,
    pub image_size: i64,
    pub mean: [f64; 3],
    pub std: [f64; 3],
    pub preset: String,
    pub epoch: i64,
    pub step: i64,
}

fn default_patch_size() -> i64 {
    16
}

impl EncoderMetadata {
    /// The metadata of an export of a model built from `cfg`, normalised with `norm` (mean,
    /// std), trained to `epoch` and `step`.
    pub fn for_run(
        cfg: &RunConfig,
        norm: ([f64; 3], [f64; 3]),
        epoch: i64,
        step: i64,
    ) -> EncoderMetadata {
        EncoderMetadata {
            arch: cfg.arch.name().into(),
            stem: cfg.stem.name().into(),
            width: cfg.width,
            patch_size: cfg.patch_size,
            feature_dim: cfg.feature_dim(),
            dim: cfg.dim,
            image_size: cfg.image_size,
            mean: norm.0,
            std: norm.1,
            preset: cfg.preset.name().into(),
            epoch,
            step,
        }
    }

    /// The file's metadata: safetensors holds strings, so numbers and lists are written as JSON,
    /// with `format` = [`ENCODER_FORMAT`].
    pub fn to_strings(&self) -> anyhow::Result<HashMap<String, String>> {
        let serde_json::Value::Object(map) = serde_json::to_value(self)? else {
            bail!("the encoder metadata is not a JSON object");
        };
        let mut metadata: HashMap<String, String> = map
            .into_iter()
            .map(|(k, v)| {
                let s = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (k, s)
            })
            .collect();
        metadata.insert("format".into(), ENCODER_FORMAT.into());
        Ok(metadata)
    }

    /// Reads back what [`EncoderMetadata::to_strings`] wrote (values that are not JSON are
    /// strings); a missing or malformed field is an error naming it.
    pub fn from_strings(metadata: &HashMap<String, String>) -> anyhow::Result<Self> {
        let map: serde_json::Map<String, serde_json::Value> = metadata
            .iter()
            .filter(|(k, _)| k.as_str() != "format")
            .map(|(k, v)| {
                let value = serde_json::from_str(v)
                    .unwrap_or_else(|_| serde_json::Value::String(v.clone()));
                (k.clone(), value)
            })
            .collect();
        serde_path_to_error::deserialize(serde_json::Value::Object(map))
            .map_err(|e| anyhow::anyhow!("metadata field {}: {}", e.path(), e.inner()))
    }
}

/// Writes the query backbone with torchvision's keys (no `fc`: replace the classifier with your
/// own head or `nn.Identity()`), including `num_batches_tracked` for every BatchNorm.
pub fn export_encoder(
    path: &Path,
    model: &MocoModel,
    meta: &EncoderMetadata,
) -> anyhow::Result<CheckpointInfo> {
    let store = &model.query.store;
    let mut tensors: Vec<(String, Tensor)> = store
        .named_tensors()
        .into_iter()
        .filter(|(n, _)| is_backbone_name(n))
        .collect();
    let tracked = Tensor::from(meta.step);
    for bn in crate::moco::encoder::ResNet::batch_norm_names(store)
        .into_iter()
        .filter(|n| is_backbone_name(n))
    {
        tensors.push((format!("{bn}.num_batches_tracked"), tracked.shallow_clone()));
    }
    let (size_bytes, sha256) = write_safetensors_atomic(path, &tensors, meta.to_strings()?)?;
    Ok(CheckpointInfo {
        kind: CheckpointKind::Encoder,
        path: path.to_path_buf(),
        epoch: meta.epoch,
        step: meta.step,
        size_bytes,
        sha256,
    })
}

/// `checkpoint-epochNNNN-stepNNNNNNNN.ckpt.safetensors` in a run's directory.
pub fn full_checkpoint_path(run_dir: &Path, state: &TrainingState) -> PathBuf {
    run_dir.join(format!(
        "checkpoint-epoch{:04}-step{:08}.ckpt.safetensors",
        state.epoch, state.step
    ))
}

/// Writes `encoder-epochNNNN.safetensors` for the query backbone in `run_dir`.
pub fn export_encoder_to_run_dir(
    run_dir: &Path,
    model: &MocoModel,
    state: &TrainingState,
) -> anyhow::Result<CheckpointInfo> {
    export_encoder(
        &run_dir.join(format!("encoder-epoch{:04}.safetensors", state.epoch)),
        model,
        &encoder_metadata(state),
    )
}

fn encoder_metadata(state: &TrainingState) -> EncoderMetadata {
    EncoderMetadata::for_run(
        &state.config,
        (state.mean, state.std),
        state.epoch,
        state.step,
    )
}

/// Turns a full checkpoint into an encoder export at `out` (`moco-server export`).
pub fn export_from_checkpoint(
    checkpoint_path: &Path,
    out: &Path,
) -> anyhow::Result<CheckpointInfo> {
    let ckpt = load_full(checkpoint_path, Device::Cpu)?;
    let mut model = MocoModel::new(&ckpt.state.config, Device::Cpu);
    ckpt.restore(&mut model)?;
    export_encoder(out, &model, &encoder_metadata(&ckpt.state))
}
