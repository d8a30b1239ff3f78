//! The Python interpreter the benches run their PyTorch side with.
use std::path::{Path, PathBuf};

/// $MOCO_BENCH_PYTHON, else the project's venv, else the machine's python3 (which must have
/// torch 2.11 and torchvision).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("MOCO_BENCH_PYTHON") {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}
