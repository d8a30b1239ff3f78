//! The MoCo algorithm: encoders with torchvision names, heads, split BN, the queue (and the
//! baselines' memory bank), the momentum update and the InfoNCE loss. No I/O here.
pub mod backbone;
pub mod encoder;
pub mod head;
pub mod loss;
pub mod memory_bank;
pub mod model;
pub mod norm;
pub mod params;
pub mod queue;
pub mod shuffle;
pub mod sync_bn;
pub mod vit;
