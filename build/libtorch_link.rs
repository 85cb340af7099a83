//! Build script shared by every package that links libtorch (root package and `model/`).
//!
//! torch-sys sets no rpath on final binaries, and Rust links with `--as-needed`, which silently
//! drops `libtorch_cuda.so` (nothing references it by symbol; it registers the CUDA backend in
//! static initialisers). See shared/spec/toolchain-notes.md §7.
//! `DEP_TCH_LIBTORCH_LIB` is only visible to direct dependents of torch-sys (`links = "tch"`).
pub fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    // Canonical path: the rpath must not depend on the `.libtorch` symlink in the clone.
    let dir = std::fs::canonicalize(&dir).map(|p| p.display().to_string()).unwrap_or(dir);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
    if std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
