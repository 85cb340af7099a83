#!/usr/bin/env bash
# Loader benchmark: sftok's Rust loader next to the Python reference loader
# (../shared/bench/bench_load_py.py) on the same shards, in the same run_bench.py rotation, so
# background load hits both alike. Prints run_bench.py's min/median/max table.
#
#   tools/bench-load.sh [WORK_DIR] [REPEATS]        (defaults: /tmp/sftok-bench-load, 3)
#
# WORK_DIR gets the fake ImageNet (20 classes × 50, made by make_fake_imagenet.py) and the
# webdataset shards (bench_shard_py.py --mode copy) the first time; later runs reuse them.
# Extra arguments for the Rust loader: BENCH_LOAD_ARGS="--workers 2 --batch 64".
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${1:-/tmp/sftok-bench-load}"
repeats="${2:-3}"
bench="${SFTOK_BENCH_DIR:-$root/../shared/bench}"
py="$root/.venv/bin/python"
[ -x "$py" ] || { echo "bench-load.sh: $py missing: run tools/setup.sh first" >&2; exit 1; }
[ -f "$bench/run_bench.py" ] || { echo "bench-load.sh: no run_bench.py in $bench (set SFTOK_BENCH_DIR)" >&2; exit 1; }

# The dev profile is the project's one build (Cargo.toml): dependencies, where decoding and
# resizing happen, are at opt-level 3 there.
cargo build --quiet --bin sftok-prep --manifest-path "$root/Cargo.toml"
prep="$root/target/debug/sftok-prep"
args="${BENCH_LOAD_ARGS:---batch 64 --workers 2}"

mkdir -p "$work"
"$py" "$bench/run_bench.py" --work "$work" --repeats "$repeats" --only shard_copy,load_train_copy \
  --add "load_rust_train=$prep bench-load {work}/shards_copy $args --tag copy" \
  --add "load_rust_eval=$prep bench-load {work}/shards_copy $args --eval --decode-images 0 --tag copy"
