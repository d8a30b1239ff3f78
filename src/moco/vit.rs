//! Vision Transformers as MoCo v3 trains them (moco-v3 `vits.py` on timm's VisionTransformer):
//! a convolutional patch projection, a class token, a fixed 2-D sin-cos position embedding,
//! pre-norm blocks (LayerNorm eps 1e-6 → multi-head attention with a qkv bias → LayerNorm → MLP
//! with GELU, ratio 4), a last LayerNorm, and the class token's output as the feature.
//!
//! Names are timm's (`patch_embed.proj.weight`, `cls_token`, `pos_embed`, `blocks.N.attn.qkv.weight`,
//! `norm.weight`, …), so an export loads into `timm.create_model('vit_small_patch16_224',
//! num_classes=0)`. Initialisation is vits.py's: xavier-uniform Linear weights (qkv's bound taken
//! per Q, K and V: √(6 / (out/3 + in))), zero biases, the class token N(0, 1e-6²), the patch
//! projection uniform ±√(6 / (3·p² + D)) with a zero bias. With `freeze_patch_embed` the random
//! patch projection never trains (the paper's stability trick, `--stop-grad-conv1`). Attention goes
//! through libtorch's scaled_dot_product_attention, so a GPU uses its fused kernels.
use super::params::ParamStore;
use crate::config::Arch;
use tch::{Kind, Tensor};

/// LayerNorm's epsilon in vits.py.
const LN_EPS: f64 = 1e-6;
const MLP_RATIO: i64 = 4;

/// Embedding width, depth and heads of a ViT.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VitShape {
    pub dim: i64,
    pub depth: i64,
    pub heads: i64,
}

impl VitShape {
    /// timm's ViT-Tiny, ViT-Small and ViT-Base; None for the ResNets.
    pub fn of(arch: Arch) -> Option<VitShape> {
        let (dim, depth, heads) = match arch {
            Arch::VitTiny => (192, 12, 3),
            Arch::VitSmall => (384, 12, 12),
            Arch::VitBase => (768, 12, 12),
            Arch::Resnet18 | Arch::Resnet34 | Arch::Resnet50 => return None,
        };
        Some(VitShape { dim, depth, heads })
    }
}

/// `nn.Linear` with vits.py's initialisation.
struct Linear {
    weight: Tensor,
    bias: Tensor,
}

impl Linear {
    fn new(store: &mut ParamStore, name: &str, fan_in: i64, fan_out: i64, qkv: bool) -> Self {
        let bound = if qkv {
            (6.0 / (fan_out / 3 + fan_in) as f64).sqrt()
        } else {
            (6.0 / (fan_in + fan_out) as f64).sqrt()
        };
        let opts = (Kind::Float, tch::Device::Cpu);
        let weight = Tensor::empty([fan_out, fan_in], opts).uniform_(-bound, bound);
        Linear {
            weight: store.param(format!("{name}.weight"), weight, false),
            bias: store.param(format!("{name}.bias"), Tensor::zeros([fan_out], opts), true),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, Some(&self.bias))
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    fn new(store: &mut ParamStore, name: &str, dim: i64) -> Self {
        let opts = (Kind::Float, tch::Device::Cpu);
        LayerNorm {
            weight: store.param(format!("{name}.weight"), Tensor::ones([dim], opts), true),
            bias: store.param(format!("{name}.bias"), Tensor::zeros([dim], opts), true),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let dim = self.weight.size()[0];
        x.layer_norm([dim], Some(&self.weight), Some(&self.bias), LN_EPS, true)
    }
}

struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: i64,
}

impl Block {
    fn forward(&self, x: &Tensor) -> Tensor {
        let size = x.size();
        let (n, tokens, dim) = (size[0], size[1], size[2]);
        let qkv = self
            .qkv
            .forward(&self.norm1.forward(x))
            .reshape([n, tokens, 3, self.heads, dim / self.heads])
            .permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let attended = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<&Tensor>,
            0.0,
            false,
            None,
            false,
        )
        .transpose(1, 2)
        .reshape([n, tokens, dim]);
        let x = x + self.proj.forward(&attended);
        let h = self.fc1.forward(&self.norm2.forward(&x)).gelu("none");
        &x + self.fc2.forward(&h)
    }
}

pub struct Vit {
    patch_weight: Tensor,
    patch_bias: Tensor,
    patch: i64,
    freeze_patch_embed: bool,
    cls_token: Tensor,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: LayerNorm,
    shape: VitShape,
    grid: i64,
}

impl Vit {
    /// A ViT of `shape` for `image_size`² images cut into `patch`² patches (`image_size` a
    /// multiple of `patch`: validation checks it).
    pub fn new(
        store: &mut ParamStore,
        shape: VitShape,
        patch: i64,
        image_size: i64,
        freeze_patch_embed: bool,
    ) -> Self {
        let opts = (Kind::Float, tch::Device::Cpu);
        let d = shape.dim;
        let grid = image_size / patch;
        let bound = (6.0 / (3 * patch * patch + d) as f64).sqrt();
        let patch_weight = store.param(
            "patch_embed.proj.weight".into(),
            Tensor::empty([d, 3, patch, patch], opts).uniform_(-bound, bound),
            false,
        );
        let patch_bias = store.param(
            "patch_embed.proj.bias".into(),
            Tensor::zeros([d], opts),
            true,
        );
        if freeze_patch_embed {
            store.freeze(&["patch_embed.proj.weight", "patch_embed.proj.bias"]);
        }
        let cls_token = store.param(
            "cls_token".into(),
            Tensor::randn([1, 1, d], opts) * 1e-6,
            false,
        );
        // Fixed, as vits.py's (requires_grad False): kept with the buffers.
        let pos_embed = store.buffer("pos_embed".into(), sincos_position_embedding(grid, d));
        let blocks = (0..shape.depth)
            .map(|i| {
                let p = format!("blocks.{i}");
                Block {
                    norm1: LayerNorm::new(store, &format!("{p}.norm1"), d),
                    qkv: Linear::new(store, &format!("{p}.attn.qkv"), d, 3 * d, true),
                    proj: Linear::new(store, &format!("{p}.attn.proj"), d, d, false),
                    norm2: LayerNorm::new(store, &format!("{p}.norm2"), d),
                    fc1: Linear::new(store, &format!("{p}.mlp.fc1"), d, MLP_RATIO * d, false),
                    fc2: Linear::new(store, &format!("{p}.mlp.fc2"), MLP_RATIO * d, d, false),
                    heads: shape.heads,
                }
            })
            .collect();
        let norm = LayerNorm::new(store, "norm", d);
        Vit {
            patch_weight,
            patch_bias,
            patch,
            freeze_patch_embed,
            cls_token,
            pos_embed,
            blocks,
            norm,
            shape,
            grid,
        }
    }

    pub fn feature_dim(&self) -> i64 {
        self.shape.dim
    }

    /// Multiply-accumulates of one forward pass of one image: the patch projection, and per
    /// block qkv, the attention's two products, the output projection and the MLP.
    pub fn forward_macs(&self) -> i64 {
        let (d, p, g) = (self.shape.dim, self.patch, self.grid);
        let tokens = g * g + 1;
        let per_block =
            tokens * d * 3 * d + 2 * tokens * tokens * d + tokens * d * d + 2 * tokens * d * 4 * d;
        g * g * d * 3 * p * p + self.shape.depth * per_block
    }

    /// Images [N, 3, H, W] → the class token's output [N, dim] after the last LayerNorm.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let n = x.size()[0];
        let (weight, bias) = if self.freeze_patch_embed {
            (self.patch_weight.detach(), self.patch_bias.detach())
        } else {
            (
                self.patch_weight.shallow_clone(),
                self.patch_bias.shallow_clone(),
            )
        };
        let patches = x
            .conv2d(
                &weight,
                Some(&bias),
                [self.patch, self.patch],
                [0, 0],
                [1, 1],
                1,
            )
            .flatten(2, -1)
            .transpose(1, 2);
        let cls = self.cls_token.expand([n, 1, self.shape.dim], false);
        let mut tokens = Tensor::cat(&[cls, patches], 1) + &self.pos_embed;
        for block in &self.blocks {
            tokens = block.forward(&tokens);
        }
        self.norm.forward(&tokens).select(1, 0)
    }
}

/// vits.py's `build_2d_sincos_position_embedding` (temperature 10 000) for a `grid`² patch grid:
/// [1, 1 + grid², dim], a zero row for the class token first. As there, `torch.meshgrid(grid_w,
/// grid_h)` indexes 'ij', so token k (row-major over the patches) takes w = k / grid and
/// h = k mod grid; each quarter of the dimensions is sin(w·ω), cos(w·ω), sin(h·ω), cos(h·ω) with
/// ω = 10000^(−i / (dim/4)).
pub fn sincos_position_embedding(grid: i64, dim: i64) -> Tensor {
    assert!(dim % 4 == 0, "the ViT's width must be a multiple of 4");
    let pos_dim = dim / 4;
    let mut rows = vec![0f32; dim as usize];
    for k in 0..grid * grid {
        let (w, h) = ((k / grid) as f64, (k % grid) as f64);
        let mut row = vec![0f32; dim as usize];
        for i in 0..pos_dim {
            let omega = 1.0 / 10000f64.powf(i as f64 / pos_dim as f64);
            let i = i as usize;
            let p = pos_dim as usize;
            row[i] = (w * omega).sin() as f32;
            row[p + i] = (w * omega).cos() as f32;
            row[2 * p + i] = (h * omega).sin() as f32;
            row[3 * p + i] = (h * omega).cos() as f32;
        }
        rows.extend(row);
    }
    Tensor::from_slice(&rows).view([1, grid * grid + 1, dim])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sincos_embedding_has_vits_values() {
        let pe = sincos_position_embedding(2, 8);
        assert_eq!(pe.size(), vec![1, 5, 8]);
        let row = |k: i64| Vec::<f32>::try_from(pe.get(0).get(k)).unwrap();
        // The class token's row is zero.
        assert!(row(0).iter().all(|v| *v == 0.0));
        // Token 3 is the patch at k = 2: w = 1, h = 0; ω = 1, 1/100.
        let expected = [
            1f64.sin(),
            0.01f64.sin(),
            1f64.cos(),
            0.01f64.cos(),
            0.0,
            0.0,
            1.0,
            1.0,
        ];
        for (got, want) in row(3).iter().zip(expected) {
            assert!((*got as f64 - want).abs() < 1e-6, "{:?}", row(3));
        }
        // Token 2 (k = 1): w = 0, h = 1.
        let r = row(2);
        assert_eq!((r[0], r[2]), (0.0, 1.0));
        assert!((r[4] as f64 - 1f64.sin()).abs() < 1e-6 && (r[6] as f64 - 1f64.cos()).abs() < 1e-6);
    }

    #[test]
    fn a_vit_has_timms_names_and_a_frozen_patch_projection_takes_no_gradient() {
        let mut store = ParamStore::new(tch::Device::Cpu);
        let shape = VitShape {
            dim: 16,
            depth: 2,
            heads: 2,
        };
        let vit = Vit::new(&mut store, shape, 4, 8, true);
        store.flatten();
        store.attach_flat_grad();
        let names: Vec<String> = store.named_tensors().into_iter().map(|(n, _)| n).collect();
        for name in [
            "patch_embed.proj.weight",
            "cls_token",
            "pos_embed",
            "blocks.1.attn.qkv.weight",
            "blocks.1.attn.proj.bias",
            "blocks.0.mlp.fc2.weight",
            "norm.bias",
        ] {
            assert!(names.iter().any(|n| n == name), "no {name}: {names:?}");
        }
        let x = Tensor::randn([3, 3, 8, 8], (Kind::Float, tch::Device::Cpu));
        let f = vit.forward(&x);
        assert_eq!(f.size(), vec![3, 16]);
        f.square().sum(Kind::Float).backward();
        let grad = store.flat_grad();
        let patch = &store.params[0];
        assert_eq!(patch.name, "patch_embed.proj.weight");
        assert!(patch.frozen);
        assert_eq!(
            grad.narrow(0, patch.offset, patch.numel)
                .abs()
                .sum(Kind::Float)
                .double_value(&[]),
            0.0
        );
        let norm = store.params.last().unwrap();
        assert!(
            grad.narrow(0, norm.offset, norm.numel)
                .abs()
                .sum(Kind::Float)
                .double_value(&[])
                > 0.0
        );
        // The qkv weights' bound is √(6 / (out/3 + in)) = √(6 / 32).
        let qkv = store
            .params
            .iter()
            .find(|p| p.name == "blocks.0.attn.qkv.weight")
            .unwrap();
        let max = qkv.tensor.abs().max().double_value(&[]);
        assert!(max <= (6.0f64 / 32.0).sqrt() + 1e-6 && max > 0.3, "{max}");
    }
}
