//! moco-server: Momentum Contrast training as a library, a CLI and an HTTP server.
pub mod allocator;
pub mod cli_data;
pub mod cli_sweep;
pub mod cli_train;
pub mod config;
pub mod data;
pub mod db;
pub mod dist;
pub mod doctor;
pub mod eval;
pub mod jobs;
pub mod moco;
pub mod rng;
pub mod server;
pub mod sweep;
pub mod torch_ext;
pub mod train;
