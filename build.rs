//! Links libtorch so that `cargo run`, `cargo test` and the release binary work without
//! LD_LIBRARY_PATH, and so that CUDA is really linked when the wheel carries it.
//!
//! rustc passes `--as-needed` to the linker, which drops `libtorch_cuda.so` because no symbol of it
//! is referenced directly (its kernels register themselves at load time). `--no-as-needed` before
//! the libraries keeps it; the rpath points at the libtorch directory torch-sys built against.
//!
//! It also compiles csrc/torch_ext.cpp, the few libtorch calls tch does not expose (bf16 autocast,
//! channels_last, the gradient scaler, fused SGD, CUDA memory statistics), and csrc/dist.cpp,
//! libtorch's c10d process groups (Gloo, and NCCL with CUDA), against the headers of that same
//! libtorch.
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc/torch_ext.cpp");
    println!("cargo:rerun-if-changed=csrc/dist.cpp");
    println!("cargo:rerun-if-changed=csrc/dist_nccl.cpp");
    println!("cargo:rerun-if-changed=csrc/dist_reducer.cpp");
    println!("cargo:rerun-if-changed=csrc/dist_group.h");
    println!("cargo:rerun-if-changed=csrc/guarded.h");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let lib_dir = std::env::var("DEP_TCH_LIBTORCH_LIB").expect(
        "torch-sys reports DEP_TCH_LIBTORCH_LIB (run `make` so scripts/setup.sh prepares libtorch)",
    );
    compile_torch_ext(Path::new(&lib_dir));
    compile_dist(Path::new(&lib_dir));
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

/// A C++ build against the headers next to libtorch's lib directory.
fn libtorch_build(lib_dir: &Path) -> cc::Build {
    let root = lib_dir
        .parent()
        .expect("libtorch's lib directory has a parent");
    let include = root.join("include");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        // libtorch's headers trip many warnings that are not ours to fix.
        .warnings(false)
        .define("_GLIBCXX_USE_CXX11_ABI", "1");
    build
}

fn compile_torch_ext(lib_dir: &Path) {
    libtorch_build(lib_dir)
        .file("csrc/torch_ext.cpp")
        .compile("moco_torch_ext");
}

/// Builds csrc/dist.cpp (c10d: TCPStore, Gloo), csrc/dist_reducer.cpp (the bucketed gradient
/// all-reduce) and, when libtorch carries CUDA, csrc/dist_nccl.cpp (NCCL). ProcessGroupGloo.hpp includes gloo's own headers, which the torch wheel lacks:
/// scripts/setup.sh installs them (Debian's libgloo-dev, in /usr/include). The NCCL group's
/// headers need CUDA's and NCCL's, from the wheel's nvidia packages (site-packages/nvidia).
fn compile_dist(lib_dir: &Path) {
    let gloo = std::env::var("GLOO_INCLUDE_DIR").unwrap_or_else(|_| "/usr/include".into());
    println!("cargo:rerun-if-env-changed=GLOO_INCLUDE_DIR");
    assert!(
        Path::new(&gloo).join("gloo/algorithm.h").exists(),
        "gloo's headers are not in {gloo} (run `make setup`: it installs Debian's libgloo-dev; \
         elsewhere set GLOO_INCLUDE_DIR to the directory holding gloo/)"
    );
    let mut build = libtorch_build(lib_dir);
    build
        .file("csrc/dist.cpp")
        .file("csrc/dist_reducer.cpp")
        .include(&gloo)
        .define("USE_C10D_GLOO", None);
    if lib_dir.join("libtorch_cuda.so").exists() {
        // The real path: .venv/libtorch is a link into site-packages.
        let lib_dir = lib_dir
            .canonicalize()
            .expect("libtorch's lib directory exists");
        let nvidia = lib_dir
            .parent()
            .and_then(Path::parent)
            .expect("libtorch lies in site-packages/torch")
            .join("nvidia");
        let cuda = nvidia.join("cu13/include");
        let includes = [cuda.clone(), cuda.join("cccl"), nvidia.join("nccl/include")];
        for dir in &includes {
            assert!(
                dir.exists(),
                "{} is missing: run `make setup` (it installs CUDA's headers into .venv)",
                dir.display()
            );
        }
        build
            .file("csrc/dist_nccl.cpp")
            .includes(&includes)
            .define("USE_C10D_NCCL", None)
            .define("MOCO_WITH_NCCL", None);
    }
    build.compile("moco_dist");
}
