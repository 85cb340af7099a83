//! Compiles csrc/sftok_jpeg.c against the system libjpeg-turbo (Debian/Ubuntu: libjpeg-dev,
//! installed by tools/setup.sh), the JPEG decoder PIL uses.

fn main() {
    println!("cargo:rerun-if-changed=csrc/sftok_jpeg.c");
    println!("cargo:rerun-if-env-changed=SFTOK_JPEG_INCLUDE");
    println!("cargo:rerun-if-env-changed=SFTOK_JPEG_LIB");
    let header_dirs = ["/usr/include", "/usr/local/include", "/opt/homebrew/include"];
    let include = std::env::var("SFTOK_JPEG_INCLUDE").ok();
    if include.is_none() && !header_dirs.iter().any(|d| std::path::Path::new(d).join("jpeglib.h").exists()) {
        println!(
            "cargo:warning=jpeglib.h not found: install libjpeg-turbo's headers (Debian/Ubuntu: \
             apt-get install libjpeg-dev, which tools/setup.sh does) or set SFTOK_JPEG_INCLUDE"
        );
    }
    let mut build = cc::Build::new();
    build.file("csrc/sftok_jpeg.c").opt_level(2).warnings(true);
    if let Some(dir) = &include {
        build.include(dir);
    }
    build.compile("sftok_jpeg");
    if let Ok(dir) = std::env::var("SFTOK_JPEG_LIB") {
        println!("cargo:rustc-link-search=native={dir}");
    }
    println!("cargo:rustc-link-lib=jpeg");
}
