//! The shared libtorch link step (rpath, libtorch_cuda), then the C++ shims compiled against the
//! libtorch torch-sys links (its `DEP_TCH_LIBTORCH_LIB`, else `$LIBTORCH/lib`):
//! - csrc/sftok_autocast.cpp: libtorch's per-device autocast state, which tch does not expose;
//! - csrc/sftok_optim.cpp: the fused AdamW and foreach-lerp kernels (the optimiser and the EMA);
//! - csrc/sftok_layout.cpp: channels-last conv weights (memory formats);
//! - csrc/sftok_matmul.cpp: the CPU's float32 mm/addmm through oneDNN (cpu_matmul.rs);
//! - csrc/sftok_guarded.{h,cpp}: how every shim returns an exception's message;
//! - csrc/sftok_c10d.cpp: c10d's stores, ProcessGroupGloo and collectives (data-parallel training).
//!   The wheel ships c10d's headers but not gloo's: Debian's libgloo-dev has them (tools/setup.sh),
//!   or `SFTOK_GLOO_INCLUDE` names a directory holding `gloo/`;
//! - csrc/sftok_c10d_nccl.cpp with the `nccl` feature: ProcessGroupNCCL. The CUDA and NCCL headers
//!   come from `SFTOK_CUDA_INCLUDE` (colon-separated) and from the wheel's own `nvidia/*/include`
//!   beside `torch/` (PyPI torch 2.13 ships cuda.h and nccl.h there).

#[path = "../build/libtorch_link.rs"]
mod libtorch_link;

use std::path::{Path, PathBuf};

fn main() {
    libtorch_link::main();
    for f in ["csrc/sftok_autocast.cpp", "csrc/sftok_optim.cpp", "csrc/sftok_layout.cpp", "csrc/sftok_matmul.cpp", "csrc/sftok_guarded.h", "csrc/sftok_guarded.cpp", "csrc/sftok_c10d.cpp", "csrc/sftok_c10d.h", "csrc/sftok_c10d_nccl.cpp"] {
        println!("cargo:rerun-if-changed={f}");
    }
    for v in ["LIBTORCH", "LIBTORCH_CXX11_ABI", "SFTOK_GLOO_INCLUDE", "SFTOK_CUDA_INCLUDE"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("LIBTORCH").map(|p| PathBuf::from(p).join("lib")))
        .expect("libtorch not found: run tools/setup.sh (it links .libtorch) or set LIBTORCH");
    let root = lib.parent().expect("libtorch/lib has a parent").to_path_buf();
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    let build = || {
        let mut b = cc::Build::new();
        b.cpp(true)
            .include(root.join("include"))
            .include(root.join("include/torch/csrc/api/include"))
            .flag("-std=c++20") // libtorch 2.13's headers use C++20 bit-field initialisers
            .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
            .flag_if_supported("-Wno-unused-parameter")
            .opt_level(2);
        b
    };
    build().files(["csrc/sftok_autocast.cpp", "csrc/sftok_optim.cpp", "csrc/sftok_layout.cpp", "csrc/sftok_matmul.cpp", "csrc/sftok_guarded.cpp"]).compile("sftok_shims");

    let gloo = std::env::var("SFTOK_GLOO_INCLUDE").map(PathBuf::from).unwrap_or_else(|_| PathBuf::from("/usr/include"));
    if !gloo.join("gloo/config.h").is_file() {
        panic!(
            "gloo's headers are missing ({}/gloo/config.h): c10d's ProcessGroupGloo.hpp includes them and the torch wheel \
             does not ship them. Run tools/setup.sh (installs Debian's libgloo-dev), or set SFTOK_GLOO_INCLUDE to a \
             directory holding gloo/",
            gloo.display()
        );
    }
    let mut c10d = build();
    c10d.file("csrc/sftok_c10d.cpp").include(&gloo).define("USE_C10D_GLOO", None);
    if std::env::var_os("CARGO_FEATURE_NCCL").is_some() {
        c10d.file("csrc/sftok_c10d_nccl.cpp").define("USE_C10D_NCCL", None);
        for dir in std::env::var("SFTOK_CUDA_INCLUDE").unwrap_or_default().split(':').filter(|d| !d.is_empty()) {
            c10d.include(Path::new(dir));
        }
        // The PyPI wheel's CUDA and NCCL headers beside torch/ (site-packages/nvidia/*/include).
        let torch_dir = std::fs::canonicalize(&root).unwrap_or_else(|_| root.clone());
        if let Ok(entries) = std::fs::read_dir(torch_dir.parent().unwrap_or(&torch_dir).join("nvidia")) {
            let mut dirs: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("include")).filter(|d| d.is_dir()).collect();
            dirs.sort();
            for d in dirs {
                c10d.include(d);
            }
        }
    }
    c10d.compile("sftok_c10d");
}
