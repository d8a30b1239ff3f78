//! Shuffle BN on one device: the key batch is permuted before the key encoder, so the split-BN
//! sub-batches of the keys differ from the queries', and un-permuted after.
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Tensor};

pub struct Shuffle {
    pub forward: Tensor,
    pub inverse: Tensor,
}

impl Shuffle {
    /// A permutation of `n` from the step's seeded generator (reproducible and resumable, unlike
    /// the torch global generator) and its inverse.
    pub fn new(n: i64, rng: &mut ChaCha8Rng, device: Device) -> Self {
        let mut perm: Vec<i64> = (0..n).collect();
        perm.shuffle(rng);
        let mut inverse = vec![0i64; n as usize];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p as usize] = i as i64;
        }
        Shuffle {
            forward: upload(&perm, device),
            inverse: upload(&inverse, device),
        }
    }

    pub fn apply(&self, x: &Tensor) -> Tensor {
        x.index_select(0, &self.forward)
    }

    pub fn undo(&self, x: &Tensor) -> Tensor {
        x.index_select(0, &self.inverse)
    }
}

/// Copies indices to the device. On CUDA the copy goes through pinned memory and does not block
/// the host, so drawing a permutation never waits for the kernels already queued.
fn upload(indices: &[i64], device: Device) -> Tensor {
    let host = Tensor::from_slice(indices);
    if device.is_cuda() {
        host.pin_memory(device)
            .to_device_(device, tch::Kind::Int64, true, false)
    } else {
        host
    }
}
