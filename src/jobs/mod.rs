//! Running the runs: the scheduler (queue → device threads), the training threads and their
//! observer, the recorder that stores what the engine reports, and the live event fan-out.
//!
//! Handlers (the JSON API and the HTML forms alike) act on runs through the `Scheduler`, so both
//! get the same validation and the same state machine. Nothing here knows the web layer.
pub mod eval_job;
pub mod hub;
pub mod paths;
pub mod ranked;
pub mod recorder;
pub mod scheduler;
pub mod worker;

pub use scheduler::{
    CreatedEval, CreatedRun, EvalRequest, EvalSource, Scheduler, SchedulerError, SchedulerOptions,
};
