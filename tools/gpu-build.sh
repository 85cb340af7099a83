#!/usr/bin/env bash
# Builds the three binaries for the lent GPU machine, here: that machine runs PyTorch 2.11 and has
# no Rust toolchain (../shared/spec/toolchain-notes.md, GPU row). tch 0.24.0 is the release for
# libtorch 2.11, so a copy of this checkout is built with tch/torch-sys =0.24.0 against the
# unzipped PyPI wheel torch==2.11.0 (cp312, manylinux_2_28_x86_64), with the `nccl` feature (the
# CUDA and NCCL headers of that wheel's pins, from PyPI), in release mode, stripped.
#
#   tools/gpu-build.sh [OUT_DIR]        (default: gpu-bin/, ignored by git; carry it to the machine)
#   tools/gpu-build.sh --check          (`cargo check` only, shims included: what `make test` runs so
#                                        that the 0.24 build keeps compiling)
#
# OUT_DIR gets sftok-prep, sftok-train, sftok-eval, libjpeg.so.62 and ../shared/bench's
# bench_train_py.py (the PyTorch side of the training table); tools/gpu-check.sh uses it
# when present. Downloads and the build tree live in ${SFTOK_CACHE:-~/.cache/sftok}.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
check=0
if [ "${1:-}" = --check ]; then check=1; shift; fi
out="${1:-$root/gpu-bin}"
cache="${SFTOK_CACHE:-$HOME/.cache/sftok}"
py="$root/.venv/bin/python"
[ -x "$py" ] || { echo "gpu-build.sh: $py missing: run tools/setup.sh first" >&2; exit 1; }
pip=("$py" -m pip --disable-pip-version-check --quiet)

# 1. libtorch 2.11 from its wheel (lib/ and include/ only).
lt="$cache/libtorch-2.11.0"
if [ ! -f "$lt/.complete" ]; then
  mkdir -p "$cache/wheels"
  "${pip[@]}" download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 torch==2.11.0 -d "$cache/wheels"
  rm -rf "$lt" && mkdir -p "$lt"
  "$py" -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith(("torch/include/", "torch/lib/"))])' \
    "$cache/wheels/torch-2.11.0-cp312-cp312-manylinux_2_28_x86_64.whl" "$lt"
  chmod -R u+rwX "$lt"
  touch "$lt/.complete"
fi
# 2. Headers the NCCL translation unit includes: CUDA 13.0 runtime, crt, cccl and NCCL 2.28.9 (the
#    wheel's pins: ProcessGroupNCCL's options embed NCCL's config struct, so nccl.h must be that one).
hdr="$cache/cuda-headers-2.11.0"
if [ ! -f "$hdr/.complete" ]; then
  rm -rf "$hdr"
  "${pip[@]}" install --no-deps --target "$hdr" "nvidia-cuda-runtime~=13.0.0" "nvidia-cuda-crt~=13.0.0" "nvidia-cuda-cccl~=13.0.0" nvidia-nccl-cu13==2.28.9
  touch "$hdr/.complete"
fi
includes=$(find "$hdr/nvidia" -maxdepth 3 -type d -name include | sort | paste -sd:)
includes="$includes:$(find "$hdr/nvidia" -maxdepth 4 -type d -path '*include/cccl' | paste -sd:)"
# Last, for the library headers c10's CUDA headers name (cublas.h, cusparse.h, …; declarations only,
# nothing of them is called): the CUDA 13 headers of the set-up venv's torch wheel.
includes="$includes:$(dirname "$(readlink -f "$root/.libtorch")")/nvidia/cu13/include"

# 3. This checkout's files (tracked and new) in a build tree with tch 0.24.
src="$cache/gpu-build-src"
rm -rf "$src" && mkdir -p "$src"
(cd "$root" && git ls-files -co --exclude-standard -z | tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$src"
sed -i -e 's/^tch = .*/tch = "=0.24.0"/' -e 's/^torch-sys = .*/torch-sys = "=0.24.0"/' "$src/Cargo.toml"
rm -f "$src/.cargo/config.toml" "$src/Cargo.lock" # the former points LIBTORCH at .libtorch (2.13)
cargo_cmd=(build --release); [ "$check" = 1 ] && cargo_cmd=(check --quiet)
(cd "$src" && LIBTORCH="$lt/torch" LIBTORCH_CXX11_ABI=1 SFTOK_CUDA_INCLUDE="$includes" \
  CARGO_TARGET_DIR="$cache/gpu-target" cargo "${cargo_cmd[@]}" --bins --features nccl)
if [ "$check" = 1 ]; then
  echo "gpu-build.sh --check: the tch 0.24 / libtorch 2.11 build (nccl feature) compiles"
  exit 0
fi

# 4. Stripped binaries + the libjpeg the machine may lack.
mkdir -p "$out"
for b in sftok-prep sftok-train sftok-eval; do
  strip -o "$out/$b" "$cache/gpu-target/release/$b"
done
jpeg=$(ldconfig -p | awk '/libjpeg\.so\.62 .*x86-64/ {print $NF; exit}')
[ -n "$jpeg" ] && cp -L "$jpeg" "$out/libjpeg.so.62"
# The PyTorch side of gpu-check.sh's training table (it needs only torch there).
bench="${SFTOK_BENCH_DIR:-$root/../shared/bench}"
[ -f "$bench/bench_train_py.py" ] && cp "$bench/bench_train_py.py" "$out/"
echo "gpu-build.sh: $(du -sh "$out" | cut -f1) in $out (carry it: run(carry=[\"gpu-bin\"]) then tools/gpu-check.sh)"
