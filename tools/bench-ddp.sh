#!/usr/bin/env bash
# Data-parallel overhead on this machine, over libtorch's Gloo (CPU):
#  1. gradient all-reduce bandwidth through the trainer's own path (`sftok-train allreduce-bench`:
#     25 MB buckets, sum, divide) for the tiny stage-1 gradient and SFTok-B stage 1's
#     (172,647,424 + 2,457,408 values, sftok-training.md §9), 2 ranks under torchrun;
#  2. the tiny stage-1 step time, 1 process vs 2 (torchrun), one thread per process, batch 8 per rank.
# Both share the machine's cores with everything else: noisy on a 2-core machine; read the medians.
#
#   tools/bench-ddp.sh [WORK_DIR] [STEPS]      (defaults: /tmp/sftok-bench-ddp, 40)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${1:-/tmp/sftok-bench-ddp}"
steps="${2:-40}"
py="$root/.venv/bin/python"
torchrun="$root/.venv/bin/torchrun"
[ -x "$torchrun" ] || { echo "bench-ddp.sh: $torchrun missing: run tools/setup.sh first" >&2; exit 1; }
cargo build --quiet --bins --manifest-path "$root/Cargo.toml"
bin="$root/target/debug/sftok-train"
export OMP_NUM_THREADS=1 GLOO_SOCKET_IFNAME=lo
mkdir -p "$work" && cd "$work"
two() { "$torchrun" --nproc_per_node 2 --standalone --no-python -- "$@" 2> >(grep -v '^W[0-9]* ' >&2); }

if [ ! -d shards/train ]; then
  "$root/target/debug/sftok-prep" synth --out fake --classes 4 --per-class 16 --val 0 --seed 0 >/dev/null 2>&1
  "$root/target/debug/sftok-prep" shard fake --out shards --split train --shard-size 16 --seed 0 >/dev/null 2>&1
  "$root/target/debug/sftok-prep" proxy-codes --teacher random:0 --shards shards/train --out codes --views 2 \
    --resize-shorter 64 --crop 64 --device cpu >/dev/null 2>&1
fi

train() { # $1 = output dir; the rest: launcher + binary
  local out="$1"; shift
  rm -rf "$out"
  "$@" stage1 --config "$root/configs/tiny/sftok_tiny_stage1.yaml" --device cpu --workers 1 --resume never \
    "experiment.output_dir=$out" dataset.params.train_shards_path_or_url=shards/train dataset.params.train_proxy_codes_path=codes \
    training.per_gpu_batch_size=8 "training.max_train_steps=$steps" experiment.save_every=1000000 experiment.generate_every=0 \
    experiment.log_every=1000000 >/dev/null 2>"$out.err" || { cat "$out.err" >&2; exit 1; }
}
echo "== tiny stage 1, batch 8 per rank, $steps steps, 1 thread per process"
train one "$bin"
train two two "$bin"
tiny=$(sed -n 's/^stage1: \([0-9]*\) trainable.*/\1/p' one/log.txt)
"$py" - one/metrics.jsonl two/metrics.jsonl <<'PY'
import json, statistics, sys
for path, ranks in zip(sys.argv[1:], (1, 2)):
    rows = [json.loads(l) for l in open(path)][5:]  # past the warm-up
    rate = statistics.median(r["samples/sec"] for r in rows)  # images/s of one rank
    print(f"{ranks} process(es): median step {1e3 * 8 / rate:7.1f} ms, {rate * ranks:6.1f} images/s in all")
PY

echo "== gradient all-reduce, 2 ranks over Gloo on loopback"
two "$bin" allreduce-bench --device cpu --numel "$tiny" --numel 175104832 --iters 3
