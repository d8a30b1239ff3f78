//! Links libtorch so that `cargo run`, `cargo test` and the release binary work without
//! LD_LIBRARY_PATH, and so that CUDA is really linked when the wheel carries it.
//!
//! rustc passes `--as-needed` to the linker, which drops `libtorch_cuda.so` because no symbol of it
//! is referenced directly (its kernels register themselves at load time). `--no-as-needed` before
//! the libraries keeps it; the rpath points at the libtorch directory torch-sys built against.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:warning=torch-sys did not report DEP_TCH_LIBTORCH_LIB; relying on the default search path");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-search=native={lib_dir}");
    if Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-cfg=libtorch_has_cuda");
    }
    println!("cargo:rustc-link-arg=-ltorch");
    println!("cargo:rustc-check-cfg=cfg(libtorch_has_cuda)");
}
