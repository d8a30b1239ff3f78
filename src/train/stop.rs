//! The flag a trainer checks every step: keep going, cancel (the user asked) or interrupt (the
//! process is shutting down; the run will be resumed later).
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// Ordered by strength: an interrupt outranks a cancel (it keeps the run resumable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StopRequest {
    None,
    Cancel,
    Interrupt,
}

impl StopRequest {
    /// The value the flag stores (and the ranks of a distributed run compare).
    pub fn code(self) -> i64 {
        self as i64
    }

    pub fn from_code(code: i64) -> Self {
        match code {
            0 => StopRequest::None,
            1 => StopRequest::Cancel,
            _ => StopRequest::Interrupt,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct StopFlag(Arc<AtomicU8>);

impl StopFlag {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        // A cancel never downgrades an interrupt: a shutting-down process keeps the run resumable.
        let _ = self
            .0
            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub fn interrupt(&self) {
        self.0.store(2, Ordering::SeqCst);
    }

    pub fn get(&self) -> StopRequest {
        StopRequest::from_code(i64::from(self.0.load(Ordering::SeqCst)))
    }

    pub fn is_set(&self) -> bool {
        self.get() != StopRequest::None
    }
}
