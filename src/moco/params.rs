//! Parameters and buffers of a network, kept in one flat buffer.
//!
//! Every trainable tensor is a view into a single contiguous tensor, so the momentum update
//! θk ← m·θk + (1−m)·θq is one `lerp_` over the whole network and the optimizer step a handful of
//! kernels, whatever the number of layers — no per-tensor loop, no host round trip. The trained
//! encoder's gradients can live the same way (`attach_flat_grad`): backward accumulates into views
//! of one buffer, zeroing them is one kernel and the optimizer reads the buffer without a copy.
use tch::{Device, Kind, Tensor};

/// One trainable tensor and where it lives in the flat buffer.
pub struct Param {
    /// torchvision-style dotted name, e.g. `layer1.0.conv1.weight`.
    pub name: String,
    pub tensor: Tensor,
    /// False for BatchNorm parameters and biases (optionally excluded from weight decay).
    pub is_bn_or_bias: bool,
    /// Never updated (a ViT's frozen patch projection): its layer takes no gradient through it
    /// and the optimizers neither decay nor scale it.
    pub frozen: bool,
    pub offset: i64,
    pub numel: i64,
}

/// The parameters and buffers of one network, in creation order.
pub struct ParamStore {
    pub params: Vec<Param>,
    /// Non-trainable state (BatchNorm running statistics, `num_batches_tracked`).
    pub buffers: Vec<(String, Tensor)>,
    flat: Option<Tensor>,
    /// Gradient buffer in the flat layout, when attached.
    flat_grad: Option<Tensor>,
    device: Device,
}

impl ParamStore {
    pub fn new(device: Device) -> Self {
        ParamStore {
            params: Vec::new(),
            buffers: Vec::new(),
            flat: None,
            flat_grad: None,
            device,
        }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Registers an initialised tensor as a trainable parameter; returns the handle the layer keeps.
    pub fn param(&mut self, name: String, init: Tensor, is_bn_or_bias: bool) -> Tensor {
        assert!(
            self.flat.is_none(),
            "parameters are registered before flattening"
        );
        assert!(
            self.params.iter().all(|p| p.name != name),
            "duplicate parameter name {name}"
        );
        let tensor = init
            .to_device(self.device)
            .to_kind(Kind::Float)
            .set_requires_grad(true);
        let numel = tensor.numel() as i64;
        self.params.push(Param {
            name,
            tensor: tensor.shallow_clone(),
            is_bn_or_bias,
            frozen: false,
            offset: 0,
            numel,
        });
        tensor
    }

    /// Marks the named parameters as never trained.
    pub fn freeze(&mut self, names: &[&str]) {
        for p in &mut self.params {
            if names.contains(&p.name.as_str()) {
                p.frozen = true;
            }
        }
    }

    pub fn buffer(&mut self, name: String, init: Tensor) -> Tensor {
        let tensor = init.to_device(self.device);
        self.buffers.push((name, tensor.shallow_clone()));
        tensor
    }

    /// Moves every parameter into one contiguous buffer (`set_data` keeps the layers' handles).
    pub fn flatten(&mut self) {
        let total: i64 = self.params.iter().map(|p| p.numel).sum();
        let flat = Tensor::zeros([total], (Kind::Float, self.device));
        let _guard = tch::no_grad_guard();
        let mut offset = 0;
        for p in &mut self.params {
            let mut view = flat
                .narrow(0, offset, p.numel)
                .view(p.tensor.size().as_slice());
            view.copy_(&p.tensor);
            p.tensor.set_data(&view);
            p.offset = offset;
            offset += p.numel;
        }
        self.flat = Some(flat);
    }

    /// Gives every parameter a gradient that is a view into one zeroed buffer in the flat layout.
    pub fn attach_flat_grad(&mut self) {
        let grad = self.flat().zeros_like();
        for p in &self.params {
            let view = grad
                .narrow(0, p.offset, p.numel)
                .view(p.tensor.size().as_slice());
            crate::torch_ext::set_grad(&p.tensor, &view);
        }
        self.flat_grad = Some(grad);
    }

    /// All parameters as one tensor (shares storage with the parameters).
    pub fn flat(&self) -> &Tensor {
        self.flat.as_ref().expect("ParamStore::flatten was called")
    }

    pub fn num_parameters(&self) -> i64 {
        self.params.iter().map(|p| p.numel).sum()
    }

    /// The gradients of all parameters in the flat layout (zeros where a parameter received
    /// none), shared with the parameters' `.grad`.
    pub fn flat_grad(&self) -> Tensor {
        self.flat_grad
            .as_ref()
            .expect("ParamStore::attach_flat_grad was called")
            .shallow_clone()
    }

    pub fn zero_grad(&mut self) {
        let _ = self.flat_grad().zero_();
    }

    /// 1 for parameters that take weight decay, 0 for the others, in the flat layout.
    pub fn decay_mask(&self, exclude_bn_and_bias: bool) -> Tensor {
        let parts: Vec<Tensor> = self
            .params
            .iter()
            .map(|p| {
                let v = if p.frozen || (exclude_bn_and_bias && p.is_bn_or_bias) {
                    0.0
                } else {
                    1.0
                };
                Tensor::full([p.numel], v, (Kind::Float, self.device))
            })
            .collect();
        Tensor::cat(&parts, 0)
    }

    /// Every parameter and buffer by name (for checkpoints and export).
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.tensor.detach()))
            .chain(
                self.buffers
                    .iter()
                    .map(|(n, t)| (n.clone(), t.shallow_clone())),
            )
            .collect()
    }

    /// Copies values by name into this store; every name must be present with the same shape.
    pub fn load_named(&mut self, tensors: &[(String, Tensor)], prefix: &str) -> anyhow::Result<()> {
        let lookup: std::collections::HashMap<&str, &Tensor> = tensors
            .iter()
            .filter_map(|(n, t)| n.strip_prefix(prefix).map(|n| (n, t)))
            .collect();
        let _guard = tch::no_grad_guard();
        let targets = self
            .params
            .iter_mut()
            .map(|p| (&p.name, &mut p.tensor))
            .chain(self.buffers.iter_mut().map(|(n, t)| (&*n, t)));
        for (name, target) in targets {
            let src = lookup
                .get(name.as_str())
                .ok_or_else(|| anyhow::anyhow!("checkpoint lacks {prefix}{name}"))?;
            anyhow::ensure!(
                src.size() == target.size(),
                "{prefix}{name} has shape {:?} in the checkpoint, {:?} in the model",
                src.size(),
                target.size()
            );
            target.copy_(src);
        }
        Ok(())
    }

    /// Copies every parameter and buffer of `other` into this store. `other` has the same
    /// layers, possibly followed by more (MoCo v3's query has a predictor after what the key
    /// encoder mirrors): those are left out.
    pub fn copy_from(&mut self, other: &ParamStore) {
        let _guard = tch::no_grad_guard();
        for (mine, theirs) in self.params.iter().zip(&other.params) {
            assert_eq!(mine.name, theirs.name, "the stores' layers differ");
        }
        let mut flat = self.flat.as_ref().expect("flattened").shallow_clone();
        let n = flat.size()[0];
        flat.copy_(&other.flat().narrow(0, 0, n));
        for ((_, dst), (_, src)) in self.buffers.iter_mut().zip(other.buffers.iter()) {
            dst.copy_(src);
        }
    }
}
