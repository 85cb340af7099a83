//! The shared libtorch link step (rpath, libtorch_cuda), then csrc/sftok_autocast.cpp (libtorch's
//! per-device autocast state, which tch does not expose) compiled against the libtorch torch-sys
//! links (its `DEP_TCH_LIBTORCH_LIB`, else `$LIBTORCH/lib`).

#[path = "../build/libtorch_link.rs"]
mod libtorch_link;

use std::path::PathBuf;

fn main() {
    libtorch_link::main();
    println!("cargo:rerun-if-changed=csrc/sftok_autocast.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let lib = std::env::var("DEP_TCH_LIBTORCH_LIB")
        .map(PathBuf::from)
        .or_else(|_| std::env::var("LIBTORCH").map(|p| PathBuf::from(p).join("lib")))
        .expect("libtorch not found: run tools/setup.sh (it links .libtorch) or set LIBTORCH");
    let root = lib.parent().expect("libtorch/lib has a parent").to_path_buf();
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    cc::Build::new()
        .cpp(true)
        .file("csrc/sftok_autocast.cpp")
        .include(root.join("include"))
        .include(root.join("include/torch/csrc/api/include"))
        .flag("-std=c++20") // libtorch 2.13's headers use C++20 bit-field initialisers
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag_if_supported("-Wno-unused-parameter")
        .opt_level(2)
        .compile("sftok_autocast");
}
