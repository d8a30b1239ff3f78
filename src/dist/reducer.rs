//! The gradient's all-reduce, in buckets that start while backward still runs
//! (csrc/dist_reducer.cpp), cut as DistributedDataParallel cuts them.
//!
//! DDP's Reducer fills buckets in the order gradients arrive (after its first iteration it
//! rebuilds them in the order it saw): the first holds `FIRST_BUCKET_BYTES`, so communication
//! starts early, the others `bucket_cap_mb`. Backward computes gradients roughly in the reverse
//! of the order the layers registered their parameters, which is the order used here from the
//! first step on; a bucket is a contiguous range of those parameters, hence a slice of the flat
//! gradient.
use super::group::ProcessGroup;
use crate::moco::params::{Param, ParamStore};
use crate::torch_ext::{check, raw};
use std::ffi::c_void;

extern "C" {
    fn moco_dist_reducer_new(
        group: *mut c_void,
        flat_grad: *const c_void,
        params: *const *const c_void,
        bucket_of: *const i64,
        n_params: i64,
        offsets: *const i64,
        numels: *const i64,
        n_buckets: i64,
        out: *mut *mut c_void,
    ) -> *mut std::ffi::c_char;
    fn moco_dist_reducer_free(reducer: *mut c_void);
    fn moco_dist_reducer_arm(reducer: *mut c_void) -> *mut std::ffi::c_char;
    fn moco_dist_reducer_finish(
        reducer: *mut c_void,
        started_before: *mut i64,
    ) -> *mut std::ffi::c_char;
}

/// DDP's first bucket (`torch.distributed._DEFAULT_FIRST_BUCKET_BYTES`, 1 MiB).
pub const FIRST_BUCKET_BYTES: i64 = 1 << 20;
const MIB: f64 = (1 << 20) as f64;

/// Which slice of the flat gradient each bucket reduces, in launch order.
#[derive(Debug, PartialEq)]
pub struct Buckets {
    /// (offset, numel) of each bucket's slice.
    pub slices: Vec<(i64, i64)>,
    /// Each parameter's bucket (registration order), None for a frozen one: backward never
    /// reaches it, so no bucket waits for it.
    pub bucket_of: Vec<Option<usize>>,
}

/// DDP's bucketing (`compute_bucket_assignment_by_size`) over the parameters taken in the reverse
/// of their registration: a bucket closes once it holds at least its limit, `first_bytes` for the
/// first one and `bytes` for the others.
pub fn assign_buckets(params: &[Param], first_bytes: i64, bytes: i64) -> Buckets {
    let mut slices = Vec::new();
    let mut bucket_of = vec![None; params.len()];
    // The open bucket: the lowest offset it reaches, its end, its size in bytes.
    let mut open: Option<(i64, i64, i64)> = None;
    for (i, p) in params.iter().enumerate().rev() {
        let (start, end, size) = open.unwrap_or((p.offset, p.offset + p.numel, 0));
        let size = size + p.numel * std::mem::size_of::<f32>() as i64;
        if !p.frozen {
            bucket_of[i] = Some(slices.len());
        }
        let start = start.min(p.offset);
        let limit = if slices.is_empty() {
            first_bytes
        } else {
            bytes
        };
        if size >= limit {
            slices.push((start, end - start));
            open = None;
        } else {
            open = Some((start, end, size));
        }
    }
    if let Some((start, end, _)) = open {
        slices.push((start, end - start));
    }
    Buckets { slices, bucket_of }
}

/// The all-reduce of one store's flat gradient over a group, armed before each backward pass and
/// finished after it.
pub struct GradientReducer {
    raw: *mut c_void,
    buckets: usize,
}

// SAFETY: the reducer's state is behind a mutex on the C++ side; backward may run its hooks on
// another thread (CUDA's autograd thread).
unsafe impl Send for GradientReducer {}
unsafe impl Sync for GradientReducer {}

impl GradientReducer {
    /// Hooks every trained parameter of `store` (its flat gradient attached) so that its bucket
    /// starts over `group` once backward has accumulated all of the bucket's gradients; buckets of
    /// `bucket_cap_mb` MiB, the first of 1 MiB at most, as DDP.
    pub fn new(
        group: &ProcessGroup,
        store: &ParamStore,
        bucket_cap_mb: f64,
    ) -> anyhow::Result<Self> {
        let cap = (bucket_cap_mb * MIB).round().max(1.0) as i64;
        let buckets = assign_buckets(&store.params, FIRST_BUCKET_BYTES.min(cap), cap);
        let flat_grad = store.flat_grad();
        let params: Vec<*const c_void> = store.params.iter().map(|p| raw(&p.tensor)).collect();
        let bucket_of: Vec<i64> = buckets
            .bucket_of
            .iter()
            .map(|b| b.map_or(-1, |b| b as i64))
            .collect();
        let (offsets, numels): (Vec<i64>, Vec<i64>) = buckets.slices.iter().copied().unzip();
        let mut out: *mut c_void = std::ptr::null_mut();
        // SAFETY: live tensors and arrays of the stated lengths; the C++ side keeps its own
        // references to the tensors.
        check(unsafe {
            moco_dist_reducer_new(
                group.raw(),
                raw(&flat_grad),
                params.as_ptr(),
                bucket_of.as_ptr(),
                params.len() as i64,
                offsets.as_ptr(),
                numels.as_ptr(),
                offsets.len() as i64,
                &mut out,
            )
        })?;
        Ok(GradientReducer {
            raw: out,
            buckets: offsets.len(),
        })
    }

    /// How many all-reduces one backward pass issues.
    pub fn buckets(&self) -> usize {
        self.buckets
    }

    /// Before backward, the gradient zeroed: every bucket waits for its gradients again.
    pub fn arm(&self) -> anyhow::Result<()> {
        // SAFETY: a live reducer.
        check(unsafe { moco_dist_reducer_arm(self.raw) })
    }

    /// After backward: waits for every bucket; the flat gradient is then the ranks' mean.
    /// Returns how many buckets backward had started itself (the others, whose parameters it
    /// did not reach, start now).
    pub fn finish(&self) -> anyhow::Result<usize> {
        let mut started: i64 = 0;
        // SAFETY: a live reducer and an out-pointer to a local.
        check(unsafe { moco_dist_reducer_finish(self.raw, &mut started) })?;
        Ok(started as usize)
    }
}

impl Drop for GradientReducer {
    fn drop(&mut self) {
        // SAFETY: created by moco_dist_reducer_new, freed once.
        unsafe { moco_dist_reducer_free(self.raw) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Tensor};

    fn store(sizes: &[i64], frozen: &[&str]) -> ParamStore {
        let mut store = ParamStore::new(Device::Cpu);
        for (i, &n) in sizes.iter().enumerate() {
            let _ = store.param(
                format!("p{i}"),
                Tensor::zeros([n], tch::kind::FLOAT_CPU),
                false,
            );
        }
        store.freeze(frozen);
        store.flatten();
        store
    }

    #[test]
    fn buckets_fill_from_the_last_parameter_with_ddps_limits() {
        // Sizes in floats (4 bytes); the first bucket closes at 16 bytes, the others at 40.
        let s = store(&[3, 5, 2, 6, 4, 1], &[]);
        let b = assign_buckets(&s.params, 16, 40);
        // Offsets: p0 0, p1 3, p2 8, p3 10, p4 16, p5 20 (end 21).
        // p5 (4 B) + p4 (16 B) = 20 B ≥ 16: bucket 0 = [16, 21).
        // p3 24 B, + p2 8 B = 32, + p1 20 B = 52 ≥ 40: bucket 1 = [3, 16).
        // p0 12 B, left open: bucket 2 = [0, 3).
        assert_eq!(b.slices, vec![(16, 5), (3, 13), (0, 3)]);
        assert_eq!(
            b.bucket_of,
            vec![Some(2), Some(1), Some(1), Some(1), Some(0), Some(0)]
        );
        // Every element of the flat gradient is in exactly one bucket.
        assert_eq!(b.slices.iter().map(|s| s.1).sum::<i64>(), 21);
    }

    #[test]
    fn a_frozen_parameter_is_reduced_with_its_bucket_but_never_awaited() {
        let s = store(&[4, 4], &["p0"]);
        let b = assign_buckets(&s.params, 1 << 20, 1 << 20);
        assert_eq!(b.slices, vec![(0, 8)]);
        assert_eq!(b.bucket_of, vec![None, Some(0)]);
    }
}
