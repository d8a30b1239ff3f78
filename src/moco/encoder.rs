//! ResNet-18/34/50 with torchvision's parameter names and shapes, an optional CIFAR stem
//! (3×3 stride 1, no max-pool) and a base width (64 in torchvision).
//!
//! `tch::vision::resnet` hard-codes the ImageNet stem and tch's BatchNorm initialisation, so the
//! network is built here from raw tensors; names match `torchvision.models.resnetXX().state_dict()`.
use super::norm::BatchNorm;
use super::params::ParamStore;
use crate::config::{Arch, Stem};
use crate::torch_ext::to_channels_last;
use tch::{Kind, Tensor};

/// A convolution without bias, Kaiming-normal initialised in fan-out mode (torchvision's init).
pub struct Conv {
    weight: Tensor,
    stride: i64,
    padding: i64,
}

impl Conv {
    fn new(store: &mut ParamStore, name: &str, cin: i64, cout: i64, k: i64, stride: i64) -> Self {
        let fan_out = (cout * k * k) as f64;
        let std = (2.0 / fan_out).sqrt();
        let init = Tensor::randn([cout, cin, k, k], (Kind::Float, tch::Device::Cpu)) * std;
        Conv {
            weight: store.param(format!("{name}.weight"), init, false),
            stride,
            padding: k / 2,
        }
    }

    /// Side of the output for an input of side `side`.
    fn out_side(&self, side: i64) -> i64 {
        let k = self.weight.size()[2];
        (side + 2 * self.padding - k) / self.stride + 1
    }

    /// Multiply-accumulates for one image whose input has side `side`; also returns the output
    /// side.
    fn macs(&self, side: i64) -> (i64, i64) {
        let out = self.out_side(side);
        let w = self.weight.size();
        (w.iter().product::<i64>() * out * out, out)
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(
            &self.weight,
            None::<&Tensor>,
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )
    }
}

struct Downsample {
    conv: Conv,
    bn: BatchNorm,
}

/// BasicBlock (R18/34) or Bottleneck (R50), torchvision v1.5 (stride on the 3×3 conv).
struct Block {
    convs: Vec<Conv>,
    bns: Vec<BatchNorm>,
    downsample: Option<Downsample>,
}

impl Block {
    fn forward(&self, x: &Tensor, train: bool, splits: i64) -> Tensor {
        let mut out = x.shallow_clone();
        let last = self.convs.len() - 1;
        for (i, (conv, bn)) in self.convs.iter().zip(&self.bns).enumerate() {
            out = bn.forward(&conv.forward(&out), train, splits);
            if i != last {
                // In place, as torchvision's ReLU(inplace=True): BatchNorm's backward needs its
                // input, not its output, so this saves one activation per layer.
                let _ = out.relu_();
            }
        }
        let identity = match &self.downsample {
            Some(d) => d.bn.forward(&d.conv.forward(x), train, splits),
            None => x.shallow_clone(),
        };
        let mut out = out + identity;
        let _ = out.relu_();
        out
    }
}

pub struct ResNet {
    /// Convert the input to channels_last, so every convolution, BatchNorm and activation after it
    /// stays NHWC. The weights stay in the flat contiguous buffer: cuDNN converts them per call,
    /// which is small next to the activations.
    pub channels_last: bool,
    stem: Stem,
    conv1: Conv,
    bn1: BatchNorm,
    layers: Vec<Vec<Block>>,
    feature_dim: i64,
}

impl ResNet {
    pub fn new(store: &mut ParamStore, arch: Arch, stem: Stem, width: i64) -> Self {
        let (blocks, bottleneck) = match arch {
            Arch::Resnet18 => ([2, 2, 2, 2], false),
            Arch::Resnet34 => ([3, 4, 6, 3], false),
            Arch::Resnet50 => ([3, 4, 6, 3], true),
            Arch::VitTiny | Arch::VitSmall | Arch::VitBase => {
                unreachable!("a ViT is built by Backbone::new")
            }
        };
        let expansion = if bottleneck { 4 } else { 1 };
        let conv1 = match stem {
            Stem::Imagenet => Conv::new(store, "conv1", 3, width, 7, 2),
            Stem::Cifar => Conv::new(store, "conv1", 3, width, 3, 1),
        };
        let bn1 = BatchNorm::new(store, "bn1", width);
        let mut inplanes = width;
        let mut layers = Vec::new();
        for (li, &n) in blocks.iter().enumerate() {
            let planes = width << li;
            let layer_stride = if li == 0 { 1 } else { 2 };
            let mut layer = Vec::new();
            for bi in 0..n {
                let stride = if bi == 0 { layer_stride } else { 1 };
                let p = format!("layer{}.{}", li + 1, bi);
                let (convs, bns) = if bottleneck {
                    (
                        vec![
                            Conv::new(store, &format!("{p}.conv1"), inplanes, planes, 1, 1),
                            Conv::new(store, &format!("{p}.conv2"), planes, planes, 3, stride),
                            Conv::new(store, &format!("{p}.conv3"), planes, planes * 4, 1, 1),
                        ],
                        vec![
                            BatchNorm::new(store, &format!("{p}.bn1"), planes),
                            BatchNorm::new(store, &format!("{p}.bn2"), planes),
                            BatchNorm::new(store, &format!("{p}.bn3"), planes * 4),
                        ],
                    )
                } else {
                    (
                        vec![
                            Conv::new(store, &format!("{p}.conv1"), inplanes, planes, 3, stride),
                            Conv::new(store, &format!("{p}.conv2"), planes, planes, 3, 1),
                        ],
                        vec![
                            BatchNorm::new(store, &format!("{p}.bn1"), planes),
                            BatchNorm::new(store, &format!("{p}.bn2"), planes),
                        ],
                    )
                };
                // Conv/BN pairs interleave in torchvision's registration order; ours registers
                // convs first, which only changes the flat layout, never the names.
                let out_planes = planes * expansion;
                let downsample = (stride != 1 || inplanes != out_planes).then(|| Downsample {
                    conv: Conv::new(
                        store,
                        &format!("{p}.downsample.0"),
                        inplanes,
                        out_planes,
                        1,
                        stride,
                    ),
                    bn: BatchNorm::new(store, &format!("{p}.downsample.1"), out_planes),
                });
                layer.push(Block {
                    convs,
                    bns,
                    downsample,
                });
                inplanes = out_planes;
            }
            layers.push(layer);
        }
        ResNet {
            channels_last: false,
            stem,
            conv1,
            bn1,
            layers,
            feature_dim: inplanes,
        }
    }

    /// Width of the pooled feature vector.
    pub fn feature_dim(&self) -> i64 {
        self.feature_dim
    }

    /// Multiply-accumulates of the convolutions in one forward pass of one `image_size`² image
    /// (BatchNorm, ReLU and pooling are memory-bound and small next to them).
    pub fn forward_macs(&self, image_size: i64) -> i64 {
        let (mut total, mut side) = self.conv1.macs(image_size);
        if self.stem == Stem::Imagenet {
            // The 3×3 stride-2 max-pool with padding 1.
            side = (side + 2 - 3) / 2 + 1;
        }
        for block in self.layers.iter().flatten() {
            let input_side = side;
            for conv in &block.convs {
                let (macs, out) = conv.macs(side);
                total += macs;
                side = out;
            }
            if let Some(d) = &block.downsample {
                total += d.conv.macs(input_side).0;
            }
        }
        total
    }

    /// Images [N, 3, H, W] → pooled features [N, feature_dim].
    pub fn forward(&self, x: &Tensor, train: bool, splits: i64) -> Tensor {
        let x = if self.channels_last {
            to_channels_last(x)
        } else {
            x.shallow_clone()
        };
        let mut out = self.bn1.forward(&self.conv1.forward(&x), train, splits);
        let _ = out.relu_();
        if self.stem == Stem::Imagenet {
            out = out.max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        }
        for layer in &self.layers {
            for block in layer {
                out = block.forward(&out, train, splits);
            }
        }
        out.adaptive_avg_pool2d([1, 1]).flatten(1, -1)
    }

    /// Names of the BatchNorm layers, for the `num_batches_tracked` entries torchvision expects.
    /// torchvision's `zero_init_residual`: the last BatchNorm of every block (bn2 of a basic
    /// block, bn3 of a bottleneck) starts with weight 0, so each residual branch starts at zero
    /// and the block as the identity. Call before the store is flattened.
    pub fn zero_init_residual(&mut self) {
        let _guard = tch::no_grad_guard();
        for block in self.layers.iter_mut().flatten() {
            if let Some(bn) = block.bns.last_mut() {
                let _ = bn.weight.zero_();
            }
        }
    }

    pub fn batch_norm_names(store: &ParamStore) -> Vec<String> {
        store
            .buffers
            .iter()
            .filter_map(|(n, _)| n.strip_suffix(".running_mean").map(str::to_string))
            .collect()
    }
}

/// Whether a parameter or buffer of an encoder's store belongs to the backbone (what exports and
/// evaluations keep), not to the projection head (`fc.*`, a ViT's `head.*`) or MoCo v3's
/// predictor.
pub fn is_backbone_name(name: &str) -> bool {
    !name.starts_with("fc.") && !name.starts_with("head.") && !name.starts_with("predictor.")
}
