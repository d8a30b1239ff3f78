//! The encoder's backbone: a ResNet or a Vision Transformer, behind one type so the model, the
//! kNN monitor and the evaluations need not know which.
use super::encoder::ResNet;
use super::params::ParamStore;
use super::vit::{Vit, VitShape};
use crate::config::{Arch, Stem};
use tch::Tensor;

pub enum Backbone {
    ResNet(ResNet),
    Vit(Vit),
}

/// What a backbone is built from (the run's settings, or an export's metadata).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackboneSpec {
    pub arch: Arch,
    /// ResNets only.
    pub stem: Stem,
    pub width: i64,
    /// ViTs only: the patch side, the image side its position embedding is built for, and
    /// whether the patch projection stays as initialised.
    pub patch_size: i64,
    pub image_size: i64,
    pub freeze_patch_embed: bool,
}

impl Backbone {
    pub fn new(store: &mut ParamStore, spec: BackboneSpec) -> Self {
        match VitShape::of(spec.arch) {
            Some(shape) => Backbone::Vit(Vit::new(
                store,
                shape,
                spec.patch_size,
                spec.image_size,
                spec.freeze_patch_embed,
            )),
            None => Backbone::ResNet(ResNet::new(store, spec.arch, spec.stem, spec.width)),
        }
    }

    /// ResNets: run every activation in channels_last (ViTs have no convolution past the patch
    /// projection, so nothing changes for them).
    pub fn set_channels_last(&mut self, on: bool) {
        if let Backbone::ResNet(r) = self {
            r.channels_last = on;
        }
    }

    /// ResNets: torchvision's zero_init_residual (ViTs have no residual BatchNorm).
    pub fn zero_init_residual(&mut self) {
        if let Backbone::ResNet(r) = self {
            r.zero_init_residual();
        }
    }

    /// Width of the feature vector.
    pub fn feature_dim(&self) -> i64 {
        match self {
            Backbone::ResNet(r) => r.feature_dim(),
            Backbone::Vit(v) => v.feature_dim(),
        }
    }

    /// Multiply-accumulates of one forward pass of one `image_size`² image.
    pub fn forward_macs(&self, image_size: i64) -> i64 {
        match self {
            Backbone::ResNet(r) => r.forward_macs(image_size),
            Backbone::Vit(v) => v.forward_macs(),
        }
    }

    /// Images [N, 3, H, W] → features [N, feature_dim]. `train` and `splits` drive a ResNet's
    /// BatchNorm (a ViT has none).
    pub fn forward(&self, x: &Tensor, train: bool, splits: i64) -> Tensor {
        match self {
            Backbone::ResNet(r) => r.forward(x, train, splits),
            Backbone::Vit(v) => v.forward(x),
        }
    }
}
