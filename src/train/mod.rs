//! The training engine: the loop, schedules, optimizer, checkpoints, kNN monitor and export.
pub mod checkpoint;
pub mod device;
pub mod estimate;
pub mod events;
mod failure;
pub mod knn;
pub mod optim;
mod resume;
pub mod scaler;
pub mod schedule;
pub mod stability;
pub mod step;
pub mod stop;
pub mod trainer;

pub use trainer::{run_training, TrainRequest};
