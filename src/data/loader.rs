//! The prefetching loader: one epoch of uint8 batches, prepared ahead on a background thread.
//!
//! The thread walks the epoch's order (shuffled from (seed, epoch), so a resumed run sees the same
//! order), decodes the images of each batch in parallel on its own rayon pool into one buffer,
//! turns it into a `[N, 3, H, W]` uint8 tensor and moves it to the device (from pinned memory,
//! without blocking, on CUDA). Up to `prefetch` finished batches wait in a bounded channel, so
//! `next()` is a channel receive when the loader keeps up. Dropping the loader stops the thread
//! after at most the batch it is working on.
use super::Dataset;
use rand::seq::SliceRandom;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone)]
pub struct LoaderOptions {
    pub batch_size: usize,
    pub shuffle: bool,
    /// Leave out the last, smaller batch of the epoch.
    pub drop_last: bool,
    pub seed: u64,
    pub epoch: u64,
    /// First batch of the epoch to hand out (resuming mid-epoch; the order is the same).
    pub start_batch: usize,
    /// Finished batches kept ready ahead of the consumer (at least 1).
    pub prefetch: usize,
    /// Decode threads (0 = one per core; 1 = the loader thread itself, no pool).
    pub threads: usize,
    pub device: Device,
    /// (rank, world): a data-parallel rank loads rows rank, rank + world, … of every batch
    /// (see `dist::parallel`); (0, 1) loads whole batches.
    pub shard: (usize, usize),
}

impl Default for LoaderOptions {
    fn default() -> Self {
        LoaderOptions {
            batch_size: 256,
            shuffle: true,
            drop_last: true,
            seed: 0,
            epoch: 0,
            start_batch: 0,
            prefetch: 4,
            threads: 0,
            device: Device::Cpu,
            shard: (0, 1),
        }
    }
}

/// Decode threads for a `loader_threads` setting: 0 means one per core.
pub fn resolve_threads(setting: usize) -> usize {
    if setting == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        setting
    }
}

/// One batch: images and labels on the device, and which dataset images they are.
pub struct Batch {
    /// uint8 `[N, 3, H, W]`.
    pub images: Tensor,
    /// int64 `[N]` (-1 for unlabeled images).
    pub labels: Tensor,
    pub indices: Vec<usize>,
}

pub struct Loader {
    receiver: Option<crossbeam_channel::Receiver<anyhow::Result<Batch>>>,
    stop: Arc<AtomicBool>,
    worker: Option<JoinHandle<()>>,
    remaining: usize,
}

impl Loader {
    /// Starts the background thread for one epoch.
    pub fn new(dataset: Arc<dyn Dataset>, opts: LoaderOptions) -> Self {
        let batch_size = opts.batch_size.max(1);
        let total = Self::batches_per_epoch(dataset.len(), batch_size, opts.drop_last);
        let remaining = total.saturating_sub(opts.start_batch);
        let (sender, receiver) = crossbeam_channel::bounded(opts.prefetch.max(1));
        let stop = Arc::new(AtomicBool::new(false));
        let worker = if remaining > 0 {
            let thread_stop = stop.clone();
            let spawned = std::thread::Builder::new()
                .name("data-loader".into())
                .spawn(move || produce(dataset, opts, batch_size, total, sender, thread_stop));
            match spawned {
                Ok(handle) => Some(handle),
                Err(e) => {
                    // No thread: hand the error out as the first item.
                    let (s, r) = crossbeam_channel::bounded(1);
                    let _ = s.send(Err(anyhow::anyhow!("cannot start the loader thread: {e}")));
                    return Loader {
                        receiver: Some(r),
                        stop,
                        worker: None,
                        remaining: 1,
                    };
                }
            }
        } else {
            None
        };
        Loader {
            receiver: Some(receiver),
            stop,
            worker,
            remaining,
        }
    }

    /// Batches in one epoch of `len` images.
    pub fn batches_per_epoch(len: usize, batch_size: usize, drop_last: bool) -> usize {
        let batch_size = batch_size.max(1);
        if drop_last {
            len / batch_size
        } else {
            len.div_ceil(batch_size)
        }
    }

    /// Batches still to come in this epoch.
    pub fn remaining(&self) -> usize {
        self.remaining
    }
}

/// The order in which an epoch visits the dataset: a permutation drawn from (seed, epoch), or
/// 0..len without shuffling.
pub fn epoch_order(len: usize, shuffle: bool, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        // One stream per epoch: independent orders, and epoch e needs no earlier draws.
        order.shuffle(&mut crate::rng::stream(
            seed,
            crate::rng::Purpose::EpochOrder,
            epoch,
        ));
    }
    order
}

impl Iterator for Loader {
    type Item = anyhow::Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        match self.receiver.as_ref()?.recv() {
            Ok(item) => {
                // After an error the thread has stopped: end the epoch there.
                self.remaining = if item.is_ok() { self.remaining - 1 } else { 0 };
                Some(item)
            }
            Err(_) => {
                self.remaining = 0;
                Some(Err(anyhow::anyhow!(
                    "the loader thread stopped before the end of the epoch"
                )))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Dropping the receiver wakes a thread blocked on a full channel (its send fails).
        self.receiver = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

fn produce(
    dataset: Arc<dyn Dataset>,
    opts: LoaderOptions,
    batch_size: usize,
    total: usize,
    sender: crossbeam_channel::Sender<anyhow::Result<Batch>>,
    stop: Arc<AtomicBool>,
) {
    // One decode thread means this thread itself: no pool, nothing else competing for a core.
    let pool = if opts.threads == 1 {
        None
    } else {
        match rayon::ThreadPoolBuilder::new()
            .num_threads(opts.threads)
            .thread_name(|i| format!("data-decode-{i}"))
            .build()
        {
            Ok(pool) => Some(pool),
            Err(e) => {
                let _ = sender.send(Err(anyhow::anyhow!("cannot start decode threads: {e}")));
                return;
            }
        }
    };
    let order = epoch_order(dataset.len(), opts.shuffle, opts.seed, opts.epoch);
    for b in opts.start_batch..total {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let start = b * batch_size;
        let end = (start + batch_size).min(order.len());
        let (rank, world) = opts.shard;
        let indices: Vec<usize> = order[start..end]
            .iter()
            .skip(rank)
            .step_by(world.max(1))
            .copied()
            .collect();
        let result = match &pool {
            Some(pool) => pool.install(|| make_batch(dataset.as_ref(), indices, opts.device)),
            None => make_batch_on_this_thread(dataset.as_ref(), indices, opts.device),
        };
        let failed = result.is_err();
        if sender.send(result).is_err() || failed {
            return;
        }
    }
}

/// Decodes `indices` into one `[N, 3, H, W]` uint8 tensor on `device` (with the labels), the
/// images in parallel on the current rayon pool.
pub fn make_batch(
    dataset: &dyn Dataset,
    indices: Vec<usize>,
    device: Device,
) -> anyhow::Result<Batch> {
    use rayon::prelude::*;
    build_batch(indices, dataset, device, |buffer, image_bytes, indices| {
        buffer
            .par_chunks_mut(image_bytes)
            .zip(indices.par_iter())
            .try_for_each_init(
                || vec![0u8; image_bytes],
                |hwc, (chw, &index)| decode_one(dataset, index, hwc, chw),
            )
    })
}

/// [`make_batch`] decoding on the calling thread only.
pub fn make_batch_on_this_thread(
    dataset: &dyn Dataset,
    indices: Vec<usize>,
    device: Device,
) -> anyhow::Result<Batch> {
    build_batch(indices, dataset, device, |buffer, image_bytes, indices| {
        let mut hwc = vec![0u8; image_bytes];
        for (chw, &index) in buffer.chunks_mut(image_bytes).zip(indices) {
            decode_one(dataset, index, &mut hwc, chw)?;
        }
        Ok(())
    })
}

fn decode_one(
    dataset: &dyn Dataset,
    index: usize,
    hwc: &mut [u8],
    chw: &mut [u8],
) -> anyhow::Result<()> {
    dataset.read_into(index, hwc)?;
    super::hwc_to_chw(hwc, chw);
    Ok(())
}

/// Allocates the host buffer (pinned on CUDA), fills it with `fill(buffer, bytes per image,
/// indices)`, and moves images and labels to `device`.
fn build_batch(
    indices: Vec<usize>,
    dataset: &dyn Dataset,
    device: Device,
    fill: impl FnOnce(&mut [u8], usize, &[usize]) -> anyhow::Result<()>,
) -> anyhow::Result<Batch> {
    let (h, w) = dataset.image_size();
    let n = indices.len();
    let image_bytes = h * w * 3;
    let pinned = device.is_cuda();
    // On CUDA the host buffer is page-locked, so the copy to the device can run asynchronously.
    let host = Tensor::empty(
        [n as i64, 3, h as i64, w as i64],
        (Kind::Uint8, Device::Cpu),
    );
    let host = if pinned {
        host.pin_memory(device)
    } else {
        host
    };
    {
        // SAFETY: `host` is a fresh contiguous uint8 tensor of n × 3 × h × w bytes that nothing
        // else references until this block ends.
        let buffer =
            unsafe { std::slice::from_raw_parts_mut(host.data_ptr() as *mut u8, n * image_bytes) };
        fill(buffer, image_bytes, &indices)?;
    }
    let labels: Vec<i64> = indices.iter().map(|&i| dataset.label(i)).collect();
    let labels = Tensor::from_slice(&labels);
    let (images, labels) = if device == Device::Cpu {
        (host, labels)
    } else if pinned {
        (
            host.to_device_(device, Kind::Uint8, true, false),
            labels
                .pin_memory(device)
                .to_device_(device, Kind::Int64, true, false),
        )
    } else {
        (host.to_device(device), labels.to_device(device))
    };
    Ok(Batch {
        images,
        labels,
        indices,
    })
}
