#!/usr/bin/env bash
# Generator-training throughput: stored tokens (`sftok-prep tokenize` once, the loader joins them
# to the shards) vs the reference's way (the frozen tokenizer's encoder on every micro-batch), the
# same tiny generator, data and steps, in alternation so background load hits both alike.
# Prints img/s of each (median over repeats, from metrics.jsonl `samples/sec`) and their ratio.
#
#   tools/bench-generator.sh [WORK_DIR] [REPEATS] [STEPS]     (defaults: /tmp/sftok-bench-generator, 3, 100)
#
# The tokenizer is the tiny stage-3 model with random weights (`sftok-train init`) at 64 px, so the
# ratio is a lower bound: with SFTok-B's ViT-B encoder at 256 px the on-the-fly cost is far larger.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${1:-/tmp/sftok-bench-generator}"
repeats="${2:-3}"
steps="${3:-100}"
tok_cfg="$root/configs/tiny/sftok_tiny_stage3.yaml"
crop=64
cargo build --quiet --bins --manifest-path "$root/Cargo.toml"
bin="$root/target/debug"
mkdir -p "$work" && cd "$work"
if [ ! -d shards/train ]; then
  "$bin/sftok-prep" synth --out fake --classes 8 --per-class 64 --val 0 --seed 0 >/dev/null 2>&1
  "$bin/sftok-prep" shard fake --out shards --split train --shard-size 128 --seed 0 >/dev/null 2>&1
fi
[ -f tok/model.safetensors ] || "$bin/sftok-train" init "$tok_cfg" --out tok --seed 0 >/dev/null
[ -d tokens/train ] || "$bin/sftok-prep" tokenize --checkpoint tok --shards shards/train --out tokens/train \
  --resize-shorter "$crop" --crop "$crop" --batch 32 --device cpu >/dev/null 2>&1

run() { # $1 = name, $2 = pretokenization dir ("" = on the fly)
  rm -rf "out-$1"
  "$bin/sftok-train" generator --config "$root/configs/tiny/sftok_tiny_maskgit.yaml" --device cpu --tokenizer tok --resume never \
    "experiment.output_dir=out-$1" "dataset.params.pretokenization=$2" "training.max_train_steps=$steps" \
    "dataset.preprocessing.resize_shorter_edge=$crop" "dataset.preprocessing.crop_size=$crop" \
    experiment.save_every=1000000 experiment.generate_every=0 experiment.log_every=1000000 >/dev/null 2>&1
  # Median img/s over the steps after the first 10 (warm-up).
  "$root/.venv/bin/python" -c "
import json, statistics, sys
rows = [json.loads(l) for l in open('out-$1/metrics.jsonl')][10:]
print(statistics.median(r['samples/sec'] for r in rows))"
}
stored=() ; fly=()
for _ in $(seq "$repeats"); do
  stored+=("$(run stored tokens/train)")
  fly+=("$(run fly "")")
done
"$root/.venv/bin/python" - "${stored[*]}" "${fly[*]}" <<'PY'
import statistics, sys
s = [float(x) for x in sys.argv[1].split()]; f = [float(x) for x in sys.argv[2].split()]
ms, mf = statistics.median(s), statistics.median(f)
print(f"stored tokens   {ms:10.1f} img/s  (runs: {', '.join(f'{x:.0f}' for x in s)})")
print(f"on the fly      {mf:10.1f} img/s  (runs: {', '.join(f'{x:.0f}' for x in f)})")
print(f"RESULT generator_stored_vs_on_the_fly {ms / mf:.2f}x")
PY
