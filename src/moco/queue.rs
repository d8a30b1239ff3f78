//! The queue of negative keys: K unit vectors in a ring buffer, with the step each was written.
use tch::{Device, Kind, Tensor};

pub struct Queue {
    /// [K, dim] unit vectors; starts as random directions, as in the official code.
    pub keys: Tensor,
    /// [K] step at which each key was enqueued; −1 for the initial random keys.
    pub stamps: Tensor,
    /// Next row to write.
    pub ptr: i64,
}

/// Queue statistics as device scalars (read together with the other metrics).
pub struct QueueStats {
    /// Real keys / K.
    pub fill: Tensor,
    pub age_mean: Tensor,
    pub age_max: Tensor,
    /// Mean cosine similarity over distinct pairs of keys.
    pub similarity: Tensor,
}

impl Queue {
    pub fn new(size: i64, dim: i64, device: Device) -> Self {
        let keys = super::head::normalize(&Tensor::randn([size, dim], (Kind::Float, device)));
        Queue {
            keys,
            stamps: Tensor::full([size], -1, (Kind::Int64, device)),
            ptr: 0,
        }
    }

    pub fn len(&self) -> i64 {
        self.keys.size()[0]
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes `keys` ([n, dim], n dividing K — checked when the config is validated) at `ptr` and
    /// advances it, wrapping around: first in, first out.
    pub fn enqueue(&mut self, keys: &Tensor, step: i64) {
        let n = keys.size()[0];
        let size = self.len();
        assert!(
            size % n == 0,
            "queue size {size} is not a multiple of the {n} keys enqueued per step"
        );
        let _guard = tch::no_grad_guard();
        self.keys
            .narrow(0, self.ptr, n)
            .copy_(&keys.detach().to_kind(Kind::Float));
        let _ = self.stamps.narrow(0, self.ptr, n).fill_(step);
        self.ptr = (self.ptr + n) % size;
    }

    /// Fill, key age and pairwise similarity at `step`, computed on the device.
    pub fn stats(&self, step: i64) -> QueueStats {
        let _guard = tch::no_grad_guard();
        let size = self.len() as f64;
        let real = self.stamps.ge(0);
        let real_count = real.sum(Kind::Float);
        let ages = (self.stamps.neg() + step).to_kind(Kind::Float) * real.to_kind(Kind::Float);
        let age_mean = ages.sum(Kind::Float) / real_count.clamp_min(1.0);
        let age_max = ages.max();
        // Σ_{i≠j} k_i·k_j = ‖Σ k‖² − Σ‖k_i‖² for unit keys: O(K·dim) instead of O(K²·dim).
        let total = self.keys.sum_dim_intlist(0i64, false, Kind::Float);
        let self_sim = self.keys.square().sum(Kind::Float);
        let similarity = (total.dot(&total) - self_sim) / (size * (size - 1.0)).max(1.0);
        QueueStats {
            fill: real_count / size,
            age_mean,
            age_max,
            similarity,
        }
    }
}
