//! Offline evaluation of a trained encoder, as the papers report it: the linear probe on frozen
//! features (`linear`) and the weighted kNN (`knn`), from the command line (`cli`).
//!
//! Here is what both start from: an encoder read from a run's full checkpoint or from an encoder
//! export, frozen (no parameter takes a gradient, BatchNorm only ever in eval mode), with what is
//! known about it (architecture, crop size, the normalisation it was trained with); and a
//! labelled dataset opened for it.
pub mod cli;
pub mod feature_cache;
pub mod knn;
pub mod linear;
pub mod spec;

use crate::config::{Arch, Choice, DatasetConfig, MemoryFormat, Stem};
use crate::data::augment::ViewSpec;
use crate::data::{Augmenter, DatasetSplits};
use crate::moco::backbone::{Backbone, BackboneSpec};
use crate::moco::params::ParamStore;
use crate::train::checkpoint::{self, EncoderMetadata, NamedTensors, ENCODER_FORMAT, FULL_FORMAT};
use anyhow::{bail, ensure, Context};
use serde::Serialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// Which kind of file an encoder was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A run's full checkpoint (`*.ckpt.safetensors`): its query encoder's backbone.
    Checkpoint,
    /// An encoder export (`encoder-*.safetensors`, torchvision's keys).
    Encoder,
    /// ResNet weights under torchvision's keys without our metadata (e.g. torchvision's own
    /// `resnet50(weights=…).state_dict()` saved with safetensors): the architecture is read
    /// from the shapes, the normalisation is ImageNet's.
    Torchvision,
}

/// What is known about a loaded encoder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EncoderInfo {
    pub path: PathBuf,
    pub kind: SourceKind,
    pub arch: Arch,
    pub stem: Stem,
    pub width: i64,
    /// ViTs: the patch side.
    pub patch_size: i64,
    /// The crop size it was trained on: evaluations feed it images of this side by default
    /// (a ViT only takes this side: its position embedding is built for it).
    pub image_size: i64,
    /// The normalisation it was trained with, which evaluations use too.
    pub mean: [f64; 3],
    pub std: [f64; 3],
    /// Epochs and steps it was trained for.
    pub epoch: i64,
    pub step: i64,
}

/// A backbone with its weights and BatchNorm statistics, frozen: no parameter requires a
/// gradient, and evaluations only run it in eval mode.
pub struct FrozenEncoder {
    pub store: ParamStore,
    pub backbone: Backbone,
    pub info: EncoderInfo,
}

impl FrozenEncoder {
    /// Reads a full checkpoint or an encoder export onto `device`. A file of another format, an
    /// architecture this build does not know, or weights that do not fit the stated
    /// architecture are errors naming the file and the reason.
    pub fn load(path: &Path, device: Device) -> anyhow::Result<FrozenEncoder> {
        ensure!(path.is_file(), "{}: no such file", path.display());
        // Read on the host: a full checkpoint also holds the key encoder, the queue and the
        // optimizer's state, none of which needs to reach the device.
        let (tensors, metadata) = checkpoint::read_safetensors(path, Device::Cpu)?;
        match metadata.get("format").map(String::as_str) {
            Some(FULL_FORMAT) => {
                let ckpt = checkpoint::full_from_parts(path, tensors, &metadata)?;
                let cfg = &ckpt.state.config;
                let info = EncoderInfo {
                    path: path.to_path_buf(),
                    kind: SourceKind::Checkpoint,
                    arch: cfg.arch,
                    stem: cfg.stem,
                    width: cfg.width,
                    patch_size: cfg.patch_size,
                    image_size: cfg.image_size,
                    mean: ckpt.state.mean,
                    std: ckpt.state.std,
                    epoch: ckpt.state.epoch,
                    step: ckpt.state.step,
                };
                FrozenEncoder::build(info, &ckpt.tensors, "encoder_q.", device)
            }
            Some(ENCODER_FORMAT) => {
                let meta = EncoderMetadata::from_strings(&metadata)
                    .with_context(|| format!("{}: unreadable encoder metadata", path.display()))?;
                let info = encoder_info(path, &meta)?;
                FrozenEncoder::build(info, &tensors, "", device)
            }
            None if tensors.iter().any(|(name, _)| name == "conv1.weight") => {
                let info = torchvision_info(path, &tensors)?;
                FrozenEncoder::build(info, &tensors, "", device)
            }
            other => bail!(
                "{}: not a moco-server checkpoint, encoder export or torchvision ResNet (its \
                 metadata has format {:?}; expected {FULL_FORMAT} or {ENCODER_FORMAT}, or no \
                 format and torchvision's keys)",
                path.display(),
                other.unwrap_or("none")
            ),
        }
    }

    /// The backbone `info` describes, with every parameter and BatchNorm statistic taken from
    /// `tensors` (names after `prefix`). Strict, as torchvision's `load_state_dict`: each name
    /// present with its shape, and nothing left over but `num_batches_tracked` (which our
    /// BatchNorm does not keep), a classifier or head under `fc.` and MoCo v3's predictor.
    fn build(
        info: EncoderInfo,
        tensors: &[(String, Tensor)],
        prefix: &str,
        device: Device,
    ) -> anyhow::Result<FrozenEncoder> {
        let what = format!(
            "{}: the weights do not fit a {} with the {} stem and width {}",
            info.path.display(),
            info.arch.name(),
            info.stem.name(),
            info.width
        );
        let mut store = ParamStore::new(device);
        let mut backbone = Backbone::new(
            &mut store,
            BackboneSpec {
                arch: info.arch,
                stem: info.stem,
                width: info.width,
                patch_size: info.patch_size,
                image_size: info.image_size,
                freeze_patch_embed: false,
            },
        );
        backbone.set_channels_last(MemoryFormat::Auto.channels_last_on(device));
        store.flatten();
        store.load_named(tensors, prefix).context(what.clone())?;
        let known: HashSet<String> = store
            .named_tensors()
            .into_iter()
            .map(|(name, _)| format!("{prefix}{name}"))
            .collect();
        let left_over = tensors.iter().map(|(name, _)| name).find(|name| {
            name.strip_prefix(prefix).is_some_and(|rest| {
                !known.contains(name.as_str())
                    && !rest.ends_with(".num_batches_tracked")
                    && crate::moco::encoder::is_backbone_name(rest)
            })
        });
        if let Some(name) = left_over {
            bail!("{what}: {name} has no place in it");
        }
        for p in &mut store.params {
            let _ = p.tensor.requires_grad_(false);
        }
        Ok(FrozenEncoder {
            store,
            backbone,
            info,
        })
    }

    /// Width of the pooled features.
    pub fn feature_dim(&self) -> i64 {
        self.backbone.feature_dim()
    }

    /// Copies of every parameter and BatchNorm statistic, to check after an evaluation that
    /// none of them changed.
    pub fn snapshot(&self) -> Snapshot {
        let _guard = tch::no_grad_guard();
        Snapshot(
            self.store
                .named_tensors()
                .into_iter()
                .map(|(name, t)| (name, t.copy()))
                .collect(),
        )
    }

    /// The evaluation transform (and, for the probe, the training crops) at `image_size`
    /// (0 = the encoder's crop size), with the encoder's normalisation.
    pub fn augmenter(&self, image_size: i64, crop: ViewSpec) -> Augmenter {
        let size = if image_size > 0 {
            image_size
        } else {
            self.info.image_size
        };
        Augmenter::with_views([crop.clone(), crop], size, self.info.mean, self.info.std)
    }
}

/// An encoder's weights and statistics as they were (see [`FrozenEncoder::snapshot`]).
pub struct Snapshot(NamedTensors);

impl Snapshot {
    /// As main_lincls.py's `sanity_check`: every tensor of `encoder` equals its copy exactly;
    /// the first that does not is named.
    pub fn verify(&self, encoder: &FrozenEncoder) -> anyhow::Result<()> {
        for ((name, before), (_, now)) in self.0.iter().zip(encoder.store.named_tensors()) {
            ensure!(
                before.equal(&now),
                "{name} of the backbone changed during the evaluation: it must stay frozen"
            );
        }
        Ok(())
    }
}

/// The architecture an export's metadata states, checked against what this build can build.
fn encoder_info(path: &Path, meta: &EncoderMetadata) -> anyhow::Result<EncoderInfo> {
    let arch = Arch::parse(&meta.arch).with_context(|| {
        format!(
            "{}: unknown arch {:?} (expected one of {})",
            path.display(),
            meta.arch,
            Arch::names_joined()
        )
    })?;
    let stem = Stem::parse(&meta.stem).with_context(|| {
        format!(
            "{}: unknown stem {:?} (expected one of {})",
            path.display(),
            meta.stem,
            Stem::names_joined()
        )
    })?;
    ensure!(
        (4..=256).contains(&meta.width) && meta.width % 4 == 0,
        "{}: width {} is not a multiple of 4 between 4 and 256",
        path.display(),
        meta.width
    );
    ensure!(
        (8..=1024).contains(&meta.image_size),
        "{}: image_size {} is not between 8 and 1024",
        path.display(),
        meta.image_size
    );
    Ok(EncoderInfo {
        path: path.to_path_buf(),
        kind: SourceKind::Encoder,
        arch,
        stem,
        width: meta.width,
        patch_size: meta.patch_size,
        image_size: meta.image_size,
        mean: meta.mean,
        std: meta.std,
        epoch: meta.epoch,
        step: meta.step,
    })
}

/// What torchvision-keyed ResNet weights are, read from their shapes: the stem from conv1's
/// kernel (7×7: ImageNet's, 3×3: the CIFAR stem), the width from its filters, the depth from the
/// blocks per stage and their kind (bottlenecks have a conv3). The crop size is the stem's usual
/// one (224 or 32) and the normalisation ImageNet's, as torchvision's weights expect.
fn torchvision_info(path: &Path, tensors: &[(String, Tensor)]) -> anyhow::Result<EncoderInfo> {
    let shape = |name: &str| {
        tensors
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.size())
    };
    let conv1 = shape("conv1.weight").context("no conv1.weight")?;
    ensure!(
        conv1.len() == 4 && conv1[1] == 3,
        "{}: conv1.weight has shape {conv1:?}, not that of a ResNet's first convolution",
        path.display()
    );
    let stem = match conv1[2] {
        7 => Stem::Imagenet,
        3 => Stem::Cifar,
        k => bail!(
            "{}: conv1 has a {k}×{k} kernel; a ResNet stem has 7×7 (ImageNet) or 3×3 (CIFAR)",
            path.display()
        ),
    };
    let blocks: Vec<usize> = (1..=4)
        .map(|layer| {
            (0..)
                .take_while(|i| shape(&format!("layer{layer}.{i}.conv1.weight")).is_some())
                .count()
        })
        .collect();
    let bottleneck = shape("layer1.0.conv3.weight").is_some();
    let arch = match (blocks.as_slice(), bottleneck) {
        ([2, 2, 2, 2], false) => Arch::Resnet18,
        ([3, 4, 6, 3], false) => Arch::Resnet34,
        ([3, 4, 6, 3], true) => Arch::Resnet50,
        _ => bail!(
            "{}: blocks per stage {blocks:?}{} fit none of {}",
            path.display(),
            if bottleneck { " (bottlenecks)" } else { "" },
            Arch::names_joined()
        ),
    };
    let (mean, std) = crate::config::Normalization::Imagenet
        .constants()
        .expect("ImageNet's normalisation is constant");
    Ok(EncoderInfo {
        path: path.to_path_buf(),
        kind: SourceKind::Torchvision,
        arch,
        stem,
        width: conv1[0],
        patch_size: 16,
        image_size: if stem == Stem::Imagenet { 224 } else { 32 },
        mean,
        std,
        epoch: 0,
        step: 0,
    })
}

/// Opens both splits of a labelled dataset for an evaluation; relative paths are under
/// `base_dir`. A set without labels (fewer than two classes) or without held-out images is an
/// error saying so.
pub fn open_labelled(cfg: &DatasetConfig, base_dir: &Path) -> anyhow::Result<DatasetSplits> {
    let splits = crate::data::open_splits(cfg, base_dir)
        .with_context(|| format!("cannot open the dataset {}", cfg.label()))?;
    let classes = splits.train.class_names().len();
    ensure!(
        classes >= 2,
        "the dataset {} has {classes} class(es): an evaluation needs images labelled with at \
         least two classes",
        cfg.label()
    );
    ensure!(
        !splits.test.is_empty(),
        "the dataset {} has no held-out images to score on",
        cfg.label()
    );
    Ok(splits)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{Preset, RunConfig};
    use crate::moco::model::MocoModel;
    use crate::train::checkpoint::{export_encoder, read_safetensors, write_safetensors_atomic};

    /// The demo's ResNet-18 at width 8 (CIFAR stem, 32-pixel crops), untrained.
    pub(crate) fn tiny_model() -> (RunConfig, MocoModel) {
        let cfg = RunConfig::preset(Preset::Demo)
            .with_overrides([("width", serde_json::Value::from(8))])
            .unwrap();
        let model = MocoModel::seeded(&cfg, Device::Cpu, 3);
        (cfg, model)
    }

    pub(crate) fn metadata(cfg: &RunConfig) -> EncoderMetadata {
        EncoderMetadata::for_run(cfg, ([0.5; 3], [0.25; 3]), 4, 40)
    }

    #[test]
    fn an_export_loads_back_with_its_weights_statistics_and_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, model) = tiny_model();
        let _guard = tch::no_grad_guard();
        // Statistics that differ from their initial values, so a load that skipped them shows.
        for (_, t) in &model.query.store.buffers {
            let _ = t.shallow_clone().fill_(0.75);
        }
        let path = dir.path().join("encoder.safetensors");
        export_encoder(&path, &model, &metadata(&cfg)).unwrap();
        let encoder = FrozenEncoder::load(&path, Device::Cpu).unwrap();
        assert_eq!(encoder.info.kind, SourceKind::Encoder);
        assert_eq!(
            (encoder.info.arch, encoder.info.width, encoder.info.epoch),
            (Arch::Resnet18, 8, 4)
        );
        assert_eq!(encoder.info.mean, [0.5; 3]);
        let original: Vec<(String, Tensor)> = model
            .query
            .store
            .named_tensors()
            .into_iter()
            .filter(|(n, _)| !n.starts_with("fc."))
            .collect();
        let loaded = encoder.store.named_tensors();
        assert_eq!(original.len(), loaded.len());
        for ((a, x), (b, y)) in original.iter().zip(&loaded) {
            assert_eq!(a, b);
            assert!(x.equal(y), "{a}");
        }
        assert!(encoder
            .store
            .params
            .iter()
            .all(|p| !p.tensor.requires_grad()));
    }

    #[test]
    fn weights_that_do_not_fit_the_stated_arch_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, model) = tiny_model();
        let path = dir.path().join("encoder.safetensors");
        export_encoder(&path, &model, &metadata(&cfg)).unwrap();
        let (tensors, meta) = read_safetensors(&path, Device::Cpu).unwrap();
        // The metadata says width 16; the weights are width 8.
        let mut wider = meta.clone();
        wider.insert("width".into(), "16".into());
        let bad = dir.path().join("wider.safetensors");
        write_safetensors_atomic(&bad, &tensors, wider).unwrap();
        let err = format!(
            "{:#}",
            FrozenEncoder::load(&bad, Device::Cpu).err().unwrap()
        );
        assert!(
            err.contains("wider.safetensors") && err.contains("has shape"),
            "{err}"
        );
        // resnet34's extra blocks fit no resnet18.
        let mut extra = tensors;
        extra.push((
            "layer1.2.conv1.weight".into(),
            Tensor::zeros([8, 8, 3, 3], tch::kind::FLOAT_CPU),
        ));
        let bad = dir.path().join("extra.safetensors");
        write_safetensors_atomic(&bad, &extra, meta.clone()).unwrap();
        let err = format!(
            "{:#}",
            FrozenEncoder::load(&bad, Device::Cpu).err().unwrap()
        );
        assert!(err.contains("layer1.2.conv1.weight has no place"), "{err}");
        // Another format.
        let mut other = meta;
        other.insert("format".into(), "something-else".into());
        let bad = dir.path().join("other.safetensors");
        write_safetensors_atomic(&bad, &[], other).unwrap();
        let err = format!(
            "{:#}",
            FrozenEncoder::load(&bad, Device::Cpu).err().unwrap()
        );
        assert!(
            err.contains("other.safetensors: not a moco-server checkpoint"),
            "{err}"
        );
    }

    #[test]
    fn torchvision_keyed_weights_without_metadata_load_with_their_shape_read_from_the_keys() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, model) = tiny_model();
        let export = dir.path().join("encoder.safetensors");
        export_encoder(&export, &model, &metadata(&cfg)).unwrap();
        let (mut tensors, _) = read_safetensors(&export, Device::Cpu).unwrap();
        // torchvision's state_dict also holds its classifier.
        tensors.retain(|(n, _)| !n.starts_with("fc."));
        tensors.push((
            "fc.weight".into(),
            Tensor::zeros([10, 64], tch::kind::FLOAT_CPU),
        ));
        tensors.push(("fc.bias".into(), Tensor::zeros([10], tch::kind::FLOAT_CPU)));
        let plain = dir.path().join("torchvision.safetensors");
        write_safetensors_atomic(&plain, &tensors, Default::default()).unwrap();
        let encoder = FrozenEncoder::load(&plain, Device::Cpu).unwrap();
        let info = &encoder.info;
        assert_eq!(info.kind, SourceKind::Torchvision);
        assert_eq!(
            (info.arch, info.stem, info.width, info.image_size),
            (Arch::Resnet18, Stem::Cifar, 8, 32)
        );
        assert_eq!(info.mean, [0.485, 0.456, 0.406]);
        let original = model.query.store.named_tensors();
        let (_, w) = original
            .iter()
            .find(|(n, _)| n == "layer2.0.conv1.weight")
            .unwrap();
        let (_, got) = encoder
            .store
            .named_tensors()
            .into_iter()
            .find(|(n, _)| n == "layer2.0.conv1.weight")
            .unwrap();
        assert!(w.equal(&got));
        // Missing a block of the last stage: no ResNet this build knows.
        let short: Vec<(String, Tensor)> = tensors
            .into_iter()
            .filter(|(n, _)| !n.starts_with("layer4.1."))
            .collect();
        let bad = dir.path().join("short.safetensors");
        write_safetensors_atomic(&bad, &short, Default::default()).unwrap();
        let err = format!(
            "{:#}",
            FrozenEncoder::load(&bad, Device::Cpu).err().unwrap()
        );
        assert!(
            err.contains("short.safetensors: blocks per stage [2, 2, 2, 1]"),
            "{err}"
        );
    }

    #[test]
    fn a_changed_statistic_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cfg, model) = tiny_model();
        let path = dir.path().join("encoder.safetensors");
        export_encoder(&path, &model, &metadata(&cfg)).unwrap();
        let encoder = FrozenEncoder::load(&path, Device::Cpu).unwrap();
        let snapshot = encoder.snapshot();
        snapshot.verify(&encoder).unwrap();
        let (name, t) = &encoder.store.buffers[0];
        let mut t = t.shallow_clone();
        t += 1e-3;
        let err = snapshot.verify(&encoder).unwrap_err().to_string();
        assert!(err.starts_with(name.as_str()), "{err}");
    }
}
