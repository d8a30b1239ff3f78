//! The run's random streams: every random draw of a run comes from ChaCha8(seed) on a stream of
//! its own purpose, so no two purposes ever draw the same sequence (the epoch order of epoch 3
//! and the augmentation of step 3 are independent), and each draw is reproducible from
//! (seed, purpose, index) alone, which is what makes a resumed run continue exactly.
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What a stream is drawn for. The discriminant sits in the stream number's top byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Purpose {
    /// The order an epoch visits the training set in; index = epoch.
    EpochOrder = 1,
    /// The two views and the shuffle permutations of a training step; index = global step.
    Step = 2,
    /// The training crops of a linear probe's step; index = the probe's step.
    Probe = 3,
    /// The two views of one image of a training step; index = (global step, the image's
    /// position in the global batch), see [`image_views`].
    ImageViews = 4,
}

/// Indices must stay below 2^56 (they do: epochs and steps).
const INDEX_BITS: u32 = 56;

/// The generator for `purpose` at `index` of a run seeded with `seed`.
pub fn stream(seed: u64, purpose: Purpose, index: u64) -> ChaCha8Rng {
    debug_assert!(index < 1 << INDEX_BITS, "stream index {index} too large");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(((purpose as u64) << INDEX_BITS) | index);
    rng
}

/// Bits of an `ImageViews` index that hold the image's position in the batch (batches stay far
/// below 2^24 images; steps below 2^32).
const POSITION_BITS: u32 = 24;

/// The generator of the views of the image at `position` of the global batch of training step
/// `step`. One stream per image makes an image's views independent of which process augments
/// it, and of the rest of the batch.
pub fn image_views(seed: u64, step: u64, position: usize) -> ChaCha8Rng {
    debug_assert!(
        (position as u64) < 1 << POSITION_BITS,
        "batch position {position} too large"
    );
    stream(
        seed,
        Purpose::ImageViews,
        (step << POSITION_BITS) | position as u64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn purposes_at_the_same_index_draw_different_sequences() {
        let a: u64 = stream(7, Purpose::EpochOrder, 3).gen();
        let b: u64 = stream(7, Purpose::Step, 3).gen();
        assert_ne!(a, b);
        let again: u64 = stream(7, Purpose::Step, 3).gen();
        assert_eq!(b, again);
    }
}
