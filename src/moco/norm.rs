//! BatchNorm with torchvision's initialisation and split statistics.
//!
//! Shuffle BN needs several devices; on one device MoCo emulates it with split BN: in training the
//! batch is viewed as `S` sub-batches and each is normalised with its own statistics (the official
//! CIFAR demo's `SplitBatchNorm`). Sample `n` belongs to sub-batch `n mod S`, which after the key
//! shuffle is a random subset. Running statistics are the mean of the sub-batches' updates.
use super::params::ParamStore;
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

impl BatchNorm {
    /// Registers `<prefix>.weight` (1), `.bias` (0), `.running_mean` (0) and `.running_var` (1), as
    /// torchvision initialises them.
    pub fn new(store: &mut ParamStore, prefix: &str, channels: i64) -> Self {
        let opts = (Kind::Float, tch::Device::Cpu);
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
            running_mean: store.buffer(
                format!("{prefix}.running_mean"),
                Tensor::zeros([channels], opts),
            ),
            running_var: store.buffer(
                format!("{prefix}.running_var"),
                Tensor::ones([channels], opts),
            ),
            channels,
        }
    }

    /// Normalises `x` ([N, C, H, W] or [N, C]). In training with `splits` > 1, each of the
    /// `splits` sub-batches uses its own statistics.
    pub fn forward(&self, x: &Tensor, train: bool, splits: i64) -> Tensor {
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
}
