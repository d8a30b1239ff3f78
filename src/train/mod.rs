//! The training engine: the loop, schedules, optimizer, checkpoints, kNN monitor and export.
pub mod checkpoint;
pub mod estimate;
pub mod events;
pub mod knn;
pub mod optim;
pub mod scaler;
pub mod schedule;
pub mod stop;
pub mod trainer;

pub use trainer::{run_training, TrainRequest};
