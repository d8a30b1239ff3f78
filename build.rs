//! Links libtorch so that `cargo run`, `cargo test` and the release binary work without
//! LD_LIBRARY_PATH, and so that CUDA is really linked when the wheel carries it.
//!
//! rustc passes `--as-needed` to the linker, which drops `libtorch_cuda.so` because no symbol of it
//! is referenced directly (its kernels register themselves at load time). `--no-as-needed` before
//! the libraries keeps it; the rpath points at the libtorch directory torch-sys built against.
//!
//! It also compiles csrc/torch_ext.cpp, the few libtorch calls tch does not expose (bf16 autocast,
//! channels_last, the gradient scaler, fused SGD, CUDA memory statistics), against the headers of
//! that same libtorch.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc/torch_ext.cpp");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib_dir = std::env::var("DEP_TCH_LIBTORCH_LIB").expect(
        "torch-sys reports DEP_TCH_LIBTORCH_LIB (run `make` so scripts/setup.sh prepares libtorch)",
    );
    compile_torch_ext(Path::new(&lib_dir));
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

/// Builds csrc/torch_ext.cpp with the include directory next to libtorch's lib directory.
fn compile_torch_ext(lib_dir: &Path) {
    let root = lib_dir
        .parent()
        .expect("libtorch's lib directory has a parent");
    let include = root.join("include");
    cc::Build::new()
        .cpp(true)
        .file("csrc/torch_ext.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        // libtorch's headers trip many warnings that are not ours to fix.
        .warnings(false)
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .compile("moco_torch_ext");
}
