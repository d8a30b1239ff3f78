//! BatchNorm with torchvision's initialisation and split statistics.
//!
//! Shuffle BN needs several devices; on one device MoCo emulates it with split BN: in training the
//! batch is viewed as `S` sub-batches and each is normalised with its own statistics (the official
//! CIFAR demo's `SplitBatchNorm`). Sample `n` belongs to sub-batch `n mod S`, which after the key
//! shuffle is a random subset. Running statistics are the mean of the sub-batches' updates.
use super::params::ParamStore;
use crate::torch_ext::is_channels_last;
use tch::{Kind, Tensor};

pub const BN_MOMENTUM: f64 = 0.1;
pub const BN_EPS: f64 = 1e-5;

pub struct BatchNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    channels: i64,
}

/// `<prefix>.running_mean` (zeros) and `<prefix>.running_var` (ones) registered as buffers, as
/// torch's BatchNorm starts them; the affine-free norm of MoCo v3's heads has these alone.
pub fn running_stats(store: &mut ParamStore, prefix: &str, channels: i64) -> (Tensor, Tensor) {
    let opts = (Kind::Float, tch::Device::Cpu);
    (
        store.buffer(
            format!("{prefix}.running_mean"),
            Tensor::zeros([channels], opts),
        ),
        store.buffer(
            format!("{prefix}.running_var"),
            Tensor::ones([channels], opts),
        ),
    )
}

impl BatchNorm {
    /// Registers `<prefix>.weight` (1), `.bias` (0), `.running_mean` (0) and `.running_var` (1), as
    /// torchvision initialises them.
    pub fn new(store: &mut ParamStore, prefix: &str, channels: i64) -> Self {
        let opts = (Kind::Float, tch::Device::Cpu);
        let (running_mean, running_var) = running_stats(store, prefix, channels);
        BatchNorm {
            weight: store.param(
                format!("{prefix}.weight"),
                Tensor::ones([channels], opts),
                true,
            ),
            bias: store.param(
                format!("{prefix}.bias"),
                Tensor::zeros([channels], opts),
                true,
            ),
            running_mean,
            running_var,
            channels,
        }
    }

    /// Normalises `x` ([N, C, H, W] or [N, C]). In training with `splits` > 1, each of the
    /// `splits` sub-batches uses its own statistics.
    /// In a `sync_bn::SyncScope`, training normalises over every rank's batch and `splits` is
    /// not used.
    pub fn forward(&self, x: &Tensor, train: bool, splits: i64) -> Tensor {
        if train {
            if let Some(stats) = super::sync_bn::global_stats(x) {
                return super::sync_bn::normalise(
                    x,
                    stats,
                    Some((&self.weight, &self.bias)),
                    (&self.running_mean, &self.running_var),
                );
            }
        }
        let cudnn = x.device().is_cuda();
        if !train || splits <= 1 {
            return x.batch_norm(
                Some(&self.weight),
                Some(&self.bias),
                Some(&self.running_mean),
                Some(&self.running_var),
                train,
                BN_MOMENTUM,
                BN_EPS,
                cudnn,
            );
        }
        let size = x.size();
        let n = size[0];
        assert!(
            n % splits == 0,
            "batch of {n} does not split into {splits} sub-batches"
        );
        if size.len() == 4 && is_channels_last(x) {
            return self.split_channels_last(x, splits);
        }
        let mut grouped_shape = size.clone();
        grouped_shape[0] = n / splits;
        grouped_shape[1] = self.channels * splits;
        let mean = self.running_mean.repeat([splits]);
        let var = self.running_var.repeat([splits]);
        let out = x.reshape(grouped_shape.as_slice()).batch_norm(
            Some(&self.weight.repeat([splits])),
            Some(&self.bias.repeat([splits])),
            Some(&mean),
            Some(&var),
            true,
            BN_MOMENTUM,
            BN_EPS,
            cudnn,
        );
        // Reshape before the no-grad scope: under it the output would leave the autograd graph
        // and the layers below would receive no gradient.
        let out = out.reshape(size.as_slice());
        tch::no_grad(|| {
            let mean = mean
                .view([splits, self.channels])
                .mean_dim(0, false, Kind::Float);
            let var = var
                .view([splits, self.channels])
                .mean_dim(0, false, Kind::Float);
            self.running_mean.shallow_clone().copy_(&mean);
            self.running_var.shallow_clone().copy_(&var);
        });
        out
    }

    /// Split BN for a channels_last input, keeping it channels_last. The grouped view above
    /// ([N/S, S·C, H, W]) does not exist in NHWC memory, and reshaping there would copy every
    /// activation twice and hand the next convolution an NCHW tensor. So the statistics are
    /// computed on the view [N/S, S, C, H, W] (sample n in sub-batch n mod S, as above) and the
    /// normalisation is one fused multiply-add; autograd derives the same gradients as batch_norm.
    fn split_channels_last(&self, x: &Tensor, splits: i64) -> Tensor {
        let size = x.size();
        let (n, c, h, w) = (size[0], size[1], size[2], size[3]);
        let grouped = x.view([n / splits, splits, c, h, w]);
        // Statistics in fp32 even when autocast hands us bf16/fp16 activations, as cuDNN's
        // batch norm keeps them.
        let (var, mean) =
            grouped
                .to_kind(Kind::Float)
                .var_mean_correction(&[0i64, 3, 4][..], 0, true);
        let affine_shape = [1, 1, c, 1, 1];
        let scale = (&var + BN_EPS).rsqrt() * self.weight.view(affine_shape);
        let shift = self.bias.view(affine_shape) - &mean * &scale;
        let out = shift
            .to_kind(x.kind())
            .addcmul(&grouped, &scale.to_kind(x.kind()))
            .reshape(size.as_slice());
        tch::no_grad(|| {
            // Each sub-batch moves the running statistics as its own batch_norm would (unbiased
            // variance); the result is their mean, as in the grouped path.
            let count = (n / splits * h * w) as f64;
            let unbiased = &var * (count / (count - 1.0).max(1.0));
            let batch_mean = mean.view([splits, c]).mean_dim(0, false, Kind::Float);
            let batch_var = unbiased.view([splits, c]).mean_dim(0, false, Kind::Float);
            let _ = self
                .running_mean
                .shallow_clone()
                .lerp_(&batch_mean, BN_MOMENTUM);
            let _ = self
                .running_var
                .shallow_clone()
                .lerp_(&batch_var, BN_MOMENTUM);
        });
        out
    }
}
