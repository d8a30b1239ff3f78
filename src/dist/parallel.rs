//! Data parallelism over a process group, laid out so that N ranks compute what one process
//! computes on the whole batch.
//!
//! `batch_size` is the global batch, as the official scripts' `--batch-size` ("total batch size of
//! all GPUs"). Rank r holds rows r, r+N, r+2N, … of every global batch (DistributedSampler's
//! interleaving, applied to each batch of the epoch's seeded order). With that layout the
//! BatchNorm groups line up: one process with `shuffle_bn_splits` = S normalises the rows ≡ g
//! (mod S) together, and a rank with S/N local groups normalises exactly its rows of the same
//! global groups. So a run on N ranks equals the single-process run with the same global batch
//! and S, up to floating-point summation order: the property the tests check.
use super::group::{ProcessGroup, ReduceOp};
use super::reducer::GradientReducer;
use crate::config::BnStatsAcrossRanks;
use crate::moco::params::ParamStore;
use crate::train::stop::StopRequest;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

pub struct DataParallel {
    pub group: ProcessGroup,
    /// Where this rank's collectives take their tensors: the CPU for Gloo, the rank's GPU for
    /// NCCL (which reduces CUDA tensors only), so host values cross through it.
    device: Device,
    /// Nanoseconds spent in collectives since the last `take_comm_time`.
    comm_ns: AtomicU64,
}

impl DataParallel {
    pub fn new(group: ProcessGroup, device: Device) -> Self {
        DataParallel {
            group,
            device,
            comm_ns: AtomicU64::new(0),
        }
    }

    /// Host values as a tensor the group's backend takes.
    fn host_values<T: tch::kind::Element>(&self, values: &[T]) -> Tensor {
        Tensor::from_slice(values).to_device(self.device)
    }

    /// Runs a collective, adding its duration to the communication time.
    fn timed<T>(&self, collective: impl FnOnce(&ProcessGroup) -> T) -> T {
        let start = Instant::now();
        let out = collective(&self.group);
        self.comm_ns
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        out
    }

    /// The time spent in collectives (waiting for the other ranks included) since the last
    /// call.
    pub fn take_comm_time(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.comm_ns.swap(0, Ordering::Relaxed))
    }

    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    pub fn world(&self) -> usize {
        self.group.world()
    }

    /// Rank 0 writes checkpoints, reports progress and runs the kNN monitor.
    pub fn is_leader(&self) -> bool {
        self.rank() == 0
    }

    /// This rank's positions in a global batch of `n` rows.
    pub fn positions(&self, n: usize) -> impl Iterator<Item = usize> {
        (self.rank()..n).step_by(self.world())
    }

    /// This rank's rows of a tensor laid out in global order.
    pub fn local_rows(&self, global: &Tensor) -> Tensor {
        global.slice(0, self.rank() as i64, None, self.world() as i64)
    }

    /// Every rank's `local_rows`, back in global order: the inverse of `local_rows` across ranks.
    /// No gradient flows through it (keys and images only).
    pub fn gather_rows(&self, local: &Tensor) -> anyhow::Result<Tensor> {
        let _guard = tch::no_grad_guard();
        let gathered = self.timed(|g| g.all_gather(local))?;
        let size = local.size();
        let (n, world) = (size[0], self.world() as i64);
        // gathered[r·n + j] is global row r + N·j.
        let mut grouped = vec![world, n];
        grouped.extend_from_slice(&size[1..]);
        let mut global = vec![world * n];
        global.extend_from_slice(&size[1..]);
        Ok(gathered
            .view(grouped.as_slice())
            .transpose(0, 1)
            .contiguous()
            .view(global.as_slice()))
    }

    /// The sum of every rank's `tensor` with a gradient (SyncBatchNorm's statistics). Only the
    /// forward's time counts as communication; the backward's is in the step's.
    pub fn sum_with_grad(&self, tensor: &Tensor) -> anyhow::Result<Tensor> {
        self.timed(|g| g.sum_with_grad(tensor))
    }

    /// Where each of this rank's rows sits in the global batch, as an int64 tensor on `device`
    /// (the column of its positive among the gathered keys of an in-batch contrast).
    pub fn global_positions(&self, n_local: usize, device: tch::Device) -> Tensor {
        let positions: Vec<i64> = self
            .positions(n_local * self.world())
            .map(|p| p as i64)
            .collect();
        Tensor::from_slice(&positions).to_device(device)
    }

    /// Rank 0's values of `tensors`, in place on every rank (the start of training, as DDP's
    /// constructor broadcasts the module's state).
    pub fn broadcast_from_leader(&self, tensors: &[&Tensor]) -> anyhow::Result<()> {
        let _guard = tch::no_grad_guard();
        for t in tensors {
            self.timed(|g| g.broadcast_(t, 0))?;
        }
        Ok(())
    }

    /// A reducer of `store`'s flat gradient over this group (see `reducer`).
    pub fn gradient_reducer(
        &self,
        store: &ParamStore,
        bucket_cap_mb: f64,
    ) -> anyhow::Result<GradientReducer> {
        GradientReducer::new(&self.group, store, bucket_cap_mb)
    }

    /// After backward: the gradient becomes the mean of the ranks' gradients, so the step is the
    /// one of the global batch's mean loss. The buckets backward already started overlap its
    /// computation; what counts as communication is the wait left after it.
    pub fn average_gradients(&self, reducer: &GradientReducer) -> anyhow::Result<()> {
        let _guard = tch::no_grad_guard();
        self.timed(|_| reducer.finish()).map(drop)
    }

    /// The float buffers (BatchNorm's running statistics) become the ranks' mean: each rank moved
    /// them with its own BN groups, and their mean is the move of all the global batch's groups,
    /// what one process keeps.
    pub fn average_buffers(&self, store: &ParamStore) -> anyhow::Result<()> {
        let _guard = tch::no_grad_guard();
        let floats: Vec<&Tensor> = float_buffers(store).collect();
        if floats.is_empty() {
            return Ok(());
        }
        let flat = Tensor::cat(
            &floats.iter().map(|t| t.reshape([-1])).collect::<Vec<_>>(),
            0,
        );
        self.timed(|g| g.all_reduce_(&flat, ReduceOp::Sum))?;
        let flat = flat / self.world() as f64;
        let mut offset = 0;
        for t in floats {
            let n = t.numel() as i64;
            t.shallow_clone()
                .copy_(&flat.narrow(0, offset, n).view_as(t));
            offset += n;
        }
        Ok(())
    }

    /// The stop every rank takes: the strongest request any rank saw (a Ctrl-C or cancel reaches
    /// the ranks at different steps; all of them must stop at the same one).
    pub fn agree_on_stop(&self, local: StopRequest) -> anyhow::Result<StopRequest> {
        let code = self.host_values(&[local.code()]);
        self.timed(|g| g.all_reduce_(&code, ReduceOp::Max))?;
        Ok(StopRequest::from_code(code.int64_value(&[0])))
    }

    /// The float buffers become rank 0's (`bn_stats_across_ranks = rank0`, as DDP's
    /// `broadcast_buffers`).
    pub fn broadcast_buffers(&self, store: &ParamStore) -> anyhow::Result<()> {
        let _guard = tch::no_grad_guard();
        for t in float_buffers(store) {
            self.timed(|g| g.broadcast_(t, 0))?;
        }
        Ok(())
    }

    /// The float buffers after a step, as `rule` says.
    pub fn sync_buffers(&self, store: &ParamStore, rule: BnStatsAcrossRanks) -> anyhow::Result<()> {
        match rule {
            BnStatsAcrossRanks::Mean => self.average_buffers(store),
            BnStatsAcrossRanks::Rank0 => self.broadcast_buffers(store),
        }
    }

    /// In place: the ranks' mean of `means` and maximum of `maxima` (metrics of the interval).
    pub fn reduce_metrics(&self, means: &Tensor, maxima: &Tensor) -> anyhow::Result<()> {
        self.timed(|g| g.all_reduce_(means, ReduceOp::Sum))?;
        let _ = means.shallow_clone().g_div_scalar_(self.world() as f64);
        self.timed(|g| g.all_reduce_(maxima, ReduceOp::Max))
    }

    /// Every rank's `values` (the same count on each), in rank order.
    pub fn gather_values(&self, values: &[f64]) -> anyhow::Result<Vec<Vec<f64>>> {
        let gathered = self.timed(|g| g.all_gather(&self.host_values(values)))?;
        let flat: Vec<f64> = Vec::try_from(&gathered.to_device(Device::Cpu).to_kind(Kind::Double))?;
        Ok(flat
            .chunks(values.len().max(1))
            .map(<[f64]>::to_vec)
            .collect())
    }

    /// Bytes only rank 0 can read (a checkpoint on its machine), on every rank: rank 0 runs
    /// `read` and sends what it got. When `read` fails there, every rank fails: rank 0 with the
    /// reason, the others saying that rank 0 could not read it.
    pub fn leader_bytes(
        &self,
        read: impl FnOnce() -> anyhow::Result<Vec<u8>>,
    ) -> anyhow::Result<Vec<u8>> {
        let mine = if self.is_leader() { Some(read()) } else { None };
        let len = match &mine {
            Some(Ok(bytes)) => bytes.len() as i64,
            Some(Err(_)) => -1,
            None => 0,
        };
        let len = self.host_values(&[len]);
        self.timed(|g| g.broadcast_(&len, 0))?;
        let len = len.int64_value(&[0]);
        if let Some(Err(e)) = mine {
            return Err(e);
        }
        anyhow::ensure!(len >= 0, "rank 0 could not read it");
        let data = match mine {
            Some(Ok(bytes)) => self.host_values(&bytes),
            _ => Tensor::zeros([len], (Kind::Uint8, self.device)),
        };
        self.timed(|g| g.broadcast_(&data, 0))?;
        Ok(Vec::<u8>::try_from(&data.to_device(Device::Cpu))?)
    }

    /// Rank 0's value of a number, on every rank.
    pub fn leader_value(&self, value: f64) -> anyhow::Result<f64> {
        let t = self.host_values(&[value]);
        self.timed(|g| g.broadcast_(&t, 0))?;
        Ok(t.double_value(&[0]))
    }
}

/// The store's float buffers: BatchNorm's running statistics (`num_batches_tracked` is an integer
/// count, the same on every rank).
fn float_buffers(store: &ParamStore) -> impl Iterator<Item = &Tensor> {
    store
        .buffers
        .iter()
        .map(|(_, t)| t)
        .filter(|t| t.kind() == Kind::Float)
}
