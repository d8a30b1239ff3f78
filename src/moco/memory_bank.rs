//! The memory bank of Wu et al. (2018), the MoCo paper's second baseline mechanism: one unit
//! feature per training image, read as the image's positive and sampled for negatives, and moved
//! towards each new query of the image with momentum.
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

pub struct MemoryBank {
    /// [images, dim] unit vectors; random directions before an image is first seen.
    pub features: Tensor,
    /// [images] whether the entry has held a query yet (the rest are still random).
    pub written: Tensor,
    /// entry ← normalise(m·entry + (1 − m)·q).
    momentum: f64,
}

impl MemoryBank {
    /// Random unit entries, drawn from torch's generator like the queue's initial keys. (Wu et
    /// al. draw uniform entries in ±√(3/dim), whose norm is 1 on average; these are exactly 1.)
    pub fn new(images: i64, dim: i64, momentum: f64, device: Device) -> Self {
        let features = super::head::normalize(&Tensor::randn([images, dim], (Kind::Float, device)));
        let written = Tensor::zeros([images], (Kind::Bool, device));
        MemoryBank {
            features,
            written,
            momentum,
        }
    }

    pub fn len(&self) -> i64 {
        self.features.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored features of `indices` ([N] int64 on the bank's device), without gradient.
    pub fn entries(&self, indices: &Tensor) -> Tensor {
        self.features.index_select(0, indices)
    }

    /// `k` entries drawn uniformly with replacement from the step's stream, shared by the
    /// batch's queries (Wu et al. draw per query; one draw per step is what makes it one matrix
    /// product, as MoCo's queue is).
    pub fn sample(&self, k: i64, rng: &mut ChaCha8Rng) -> Tensor {
        let n = self.len();
        let picks: Vec<i64> = (0..k).map(|_| rng.gen_range(0..n)).collect();
        let picks = Tensor::from_slice(&picks).to_device(self.features.device());
        self.entries(&picks)
    }

    /// Moves the entries of `indices` towards `queries` ([N, dim], unit length) and makes them
    /// unit length again, as lemniscate's NCEAverage does after each step.
    pub fn update(&mut self, indices: &Tensor, queries: &Tensor) {
        let _guard = tch::no_grad_guard();
        let moved = self.entries(indices) * self.momentum
            + queries.detach().to_kind(Kind::Float) * (1.0 - self.momentum);
        let _ = self
            .features
            .index_copy_(0, indices, &super::head::normalize(&moved));
        let _ = self.written.index_fill_(0, indices, 1);
    }

    /// The share of entries that have held a query, as a device scalar: below 1 the bank still
    /// hands out random negatives and positives.
    pub fn fill(&self) -> Tensor {
        self.written.to_kind(Kind::Float).mean(Kind::Float)
    }
}
