//! A c10d process group (csrc/dist.cpp): PyTorch's own TCPStore rendezvous and Gloo or NCCL
//! collectives, the engine the official DistributedDataParallel scripts run on.
use crate::torch_ext::{check, raw};
use std::ffi::{c_char, c_int, c_void, CString};
use std::time::Duration;
use tch::Tensor;
use torch_sys::C_tensor;

extern "C" {
    fn moco_dist_new(
        master_addr: *const c_char,
        port: c_int,
        rank: c_int,
        world: c_int,
        timeout_ms: i64,
        nccl: c_int,
        bind: *const c_char,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn moco_dist_free(group: *mut c_void);
    fn moco_dist_all_reduce(group: *mut c_void, tensor: *const c_void, op: c_int) -> *mut c_char;
    fn moco_dist_broadcast(group: *mut c_void, tensor: *const c_void, root: c_int) -> *mut c_char;
    fn moco_dist_all_gather(
        group: *mut c_void,
        tensor: *const c_void,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn moco_dist_sum_with_grad(
        group: *mut c_void,
        tensor: *const c_void,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    fn moco_dist_barrier(group: *mut c_void) -> *mut c_char;
}

/// The collectives' transport: Gloo for CPU tensors, NCCL for CUDA tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::EnumString, strum::Display)]
#[strum(serialize_all = "lowercase")]
pub enum CommBackend {
    Gloo,
    Nccl,
}

/// How an all-reduce combines the ranks' tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    Max,
    Min,
}

impl ReduceOp {
    fn code(self) -> c_int {
        match self {
            ReduceOp::Sum => 0,
            ReduceOp::Max => 1,
            ReduceOp::Min => 2,
        }
    }
}

/// Where and how the ranks of a run meet.
#[derive(Debug, Clone)]
pub struct Rendezvous {
    /// The address of the machine of rank 0, which serves the store.
    pub master_addr: String,
    pub master_port: u16,
    pub rank: usize,
    pub world: usize,
    pub backend: CommBackend,
    /// Joining, and every collective, fails after this long instead of waiting for a peer that
    /// died or hangs.
    pub timeout: Duration,
    /// What Gloo binds to: "" the address this host's name resolves to, "if:NAME" an interface,
    /// otherwise an address (127.0.0.1 when every rank is on this machine).
    pub bind: String,
}

/// A joined process group. Collectives block until they complete on this rank.
pub struct ProcessGroup {
    raw: *mut c_void,
    rank: usize,
    world: usize,
}

// SAFETY: the c10d backend may be used from any thread; the trainer issues every collective from
// its one training thread, in the same order on every rank.
unsafe impl Send for ProcessGroup {}
unsafe impl Sync for ProcessGroup {}

impl ProcessGroup {
    /// Joins the group: blocks until all `world` ranks have arrived (or the timeout passes).
    pub fn join(rdv: &Rendezvous) -> anyhow::Result<Self> {
        anyhow::ensure!(
            rdv.world >= 1 && rdv.rank < rdv.world,
            "rank {} is outside a world of {}",
            rdv.rank,
            rdv.world
        );
        let addr = CString::new(rdv.master_addr.as_str())?;
        let bind = CString::new(rdv.bind.as_str())?;
        let mut out: *mut c_void = std::ptr::null_mut();
        // SAFETY: NUL-terminated strings and an out-pointer to a local.
        check(unsafe {
            moco_dist_new(
                addr.as_ptr(),
                c_int::from(rdv.master_port),
                rdv.rank as c_int,
                rdv.world as c_int,
                rdv.timeout.as_millis() as i64,
                c_int::from(rdv.backend == CommBackend::Nccl),
                bind.as_ptr(),
                &mut out,
            )
        })
        .map_err(|e| {
            anyhow::anyhow!(
                "rank {} could not join the {} group at {}:{}: {e}",
                rdv.rank,
                rdv.backend,
                rdv.master_addr,
                rdv.master_port
            )
        })?;
        Ok(ProcessGroup {
            raw: out,
            rank: rdv.rank,
            world: rdv.world,
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    /// The C++ group, for the other shims that work over it (the gradient reducer).
    pub(super) fn raw(&self) -> *mut c_void {
        self.raw
    }

    pub fn world(&self) -> usize {
        self.world
    }

    /// `tensor` (contiguous) becomes the reduction over every rank's, in place.
    pub fn all_reduce_(&self, tensor: &Tensor, op: ReduceOp) -> anyhow::Result<()> {
        // SAFETY: a live tensor; c10d checks its device against the backend.
        check(unsafe { moco_dist_all_reduce(self.raw, raw(tensor), op.code()) })
    }

    /// `tensor` becomes rank `root`'s, in place.
    pub fn broadcast_(&self, tensor: &Tensor, root: usize) -> anyhow::Result<()> {
        // SAFETY: as above.
        check(unsafe { moco_dist_broadcast(self.raw, raw(tensor), root as c_int) })
    }

    /// Every rank's `tensor` (the same shape everywhere), concatenated along dim 0 in rank
    /// order: `[world · n, …]`.
    pub fn all_gather(&self, tensor: &Tensor) -> anyhow::Result<Tensor> {
        let mut out: *mut c_void = std::ptr::null_mut();
        // SAFETY: a live tensor; on success `out` is a new at::Tensor that we own.
        check(unsafe { moco_dist_all_gather(self.raw, raw(tensor), &mut out) })?;
        Ok(unsafe { Tensor::from_ptr(out as *mut C_tensor) })
    }

    /// The sum of every rank's `tensor`, as a new tensor with a gradient: backward sums the
    /// ranks' gradients (each rank must run it, as every rank runs its backward). The group must
    /// outlive the backward pass, which the trainer's does.
    pub fn sum_with_grad(&self, tensor: &Tensor) -> anyhow::Result<Tensor> {
        let mut out: *mut c_void = std::ptr::null_mut();
        // SAFETY: as all_gather; the graph keeps the group's pointer, valid while `self` lives.
        check(unsafe { moco_dist_sum_with_grad(self.raw, raw(tensor), &mut out) })?;
        Ok(unsafe { Tensor::from_ptr(out as *mut C_tensor) })
    }

    /// Returns once every rank has called it.
    pub fn barrier(&self) -> anyhow::Result<()> {
        // SAFETY: a live group.
        check(unsafe { moco_dist_barrier(self.raw) })
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created by moco_dist_new, freed once.
        unsafe { moco_dist_free(self.raw) }
    }
}
