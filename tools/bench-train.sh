#!/usr/bin/env bash
# Training-step throughput: `sftok-train stage1` (or stage2) next to
# ../shared/bench/bench_train_py.py (the reference's step in plain PyTorch), same model size,
# stage, batch and precision (fp32 on CPU),
# interleaved within every repeat so that background load hits both sides alike. Prints one table
# (median img/s, CPU seconds per image, peak RSS per row) and the ratios of #16.
#
#   tools/bench-train.sh [WORK_DIR] [REPEATS] [SIZE] [STAGE]
#       (defaults: /tmp/sftok-bench-train, 3, tiny, 1; SIZE tiny|B; STAGE 1 = warm-up, 2 = self-forcing)
#
# Rows: PyTorch in the reference's mode (the teacher encoder on the fly in every step, fp32: its
# fp16 autocast is CUDA-only), PyTorch with precomputed codes, sftok with precomputed codes (its
# Parquet store), sftok with the teacher on the fly; then both with precomputed codes under bf16
# autocast (training.mixed_precision=bf16 / --precision bf16), which CPUs with AVX512-BF16 or AMX
# run on their bf16 matmul units; last, sftok with precomputed codes and SFTOK_CPU_MATMUL=mkl: its
# float32 products in MKL, as PyTorch's, which shows how much of the gap is oneDNN's matmul
# (model/src/cpu_matmul.rs: the default on AMD CPUs with AVX-512). tiny: batch 8, one thread each (OMP_NUM_THREADS=1 / --threads 1); B: batch 2, two
# threads. sftok's CPU seconds and RSS are the whole process (start-up included), PyTorch's the
# timed steps and the process's max RSS (includes ~0.7 GB of torch). At tiny size the two teachers
# differ (the Python script's tiny teacher vs the full MaskGIT-VQGAN sftok's tiny config uses), so
# only the precomputed rows are like for like there; at B both sides run the full-size teacher.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="${1:-/tmp/sftok-bench-train}"
repeats="${2:-3}"
size="${3:-tiny}"
stage="${4:-1}"
case "$stage" in 1|2) ;; *) echo "bench-train.sh: STAGE is 1 or 2" >&2; exit 1 ;; esac
py="$root/.venv/bin/python"
bench="${SFTOK_BENCH_DIR:-$root/../shared/bench}"
[ -x "$py" ] || { echo "bench-train.sh: $py missing: run tools/setup.sh first" >&2; exit 1; }
[ -f "$bench/bench_train_py.py" ] || { echo "bench-train.sh: no bench_train_py.py in $bench (set SFTOK_BENCH_DIR)" >&2; exit 1; }
case "$size" in
  tiny) batch=8; px=64; config="$root/configs/tiny/sftok_tiny_stage$stage.yaml"; steps=30; warm=5; export OMP_NUM_THREADS=1; pythreads=1 ;;
  B) batch=2; px=256; config="$root/configs/sftok_b64_stage$stage.yaml"; steps=4; warm=1; pythreads=0 ;;
  *) echo "bench-train.sh: SIZE is tiny or B" >&2; exit 1 ;;
esac
cargo build --quiet --bins --manifest-path "$root/Cargo.toml"
bin="$root/target/debug"
mkdir -p "$work" && cd "$work"
if [ ! -d "shards-$px/train" ]; then
  "$bin/sftok-prep" synth --out fake --classes 4 --per-class 8 --val 0 --seed 0 >/dev/null 2>&1
  "$bin/sftok-prep" shard fake --out "shards-$px" --split train --shard-size 32 --seed 0 >/dev/null 2>&1
fi
[ -d "codes-$px" ] || "$bin/sftok-prep" proxy-codes --teacher random:0 --shards "shards-$px/train" --out "codes-$px" \
  --views 2 --resize-shorter "$px" --crop "$px" --device cpu >/dev/null 2>&1

rs() { # $1 = precomputed | on-the-fly, $2 = no | bf16, $3 = SFTOK_CPU_MATMUL → "img/s cpu_s_per_image peak_rss_mb"
  local codes="codes-$px"; [ "$1" = on-the-fly ] && codes=""
  rm -rf out-rs
  SFTOK_CPU_MATMUL="$3" /usr/bin/time -f "%U %S %M" -o time.txt "$bin/sftok-train" "stage$stage" --config "$config" --device cpu --teacher random:0 \
    --resume never --workers 1 experiment.output_dir=out-rs experiment.init_weight= "dataset.params.train_proxy_codes_path=$codes" \
    "dataset.params.train_shards_path_or_url=shards-$px/train" "dataset.preprocessing.resize_shorter_edge=$px" \
    "dataset.preprocessing.crop_size=$px" "training.per_gpu_batch_size=$batch" "training.max_train_steps=$((steps + warm))" \
    "training.mixed_precision=$2" experiment.save_every=1000000 experiment.generate_every=0 experiment.eval_every=0 \
    experiment.log_every=1000000 >/dev/null 2>&1
  "$py" - "$warm" "$batch" "$((steps + warm))" <<'PY'
import json, statistics, sys
warm, batch, total = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rows = [json.loads(l) for l in open("out-rs/metrics.jsonl")][warm:]
u, s, m = open("time.txt").read().split()
print(statistics.median(r["samples/sec"] for r in rows), (float(u) + float(s)) / (batch * total), int(m) / 1024)
PY
  rm -rf out-rs # the run's final checkpoint: ~3 GB at SFTok-B
}
pyb() { # $1 = on-the-fly | precomputed, $2 = fp32 | bf16
  "$py" "$bench/bench_train_py.py" --size "$size" --stage "$stage" --batch "$batch" --steps "$steps" --warmup "$warm" --teacher "$1" --precision "$2" \
    --threads "$pythreads" 2>/dev/null | grep '^RESULT train_py' | tail -1 |
    "$py" -c "
import sys
kv = dict(t.split('=', 1) for t in sys.stdin.read().split() if '=' in t)
ips = float(kv['images_per_s']); cpu = float(kv.get('cpu_s', 'nan')) / float(kv['images'])
print(ips, cpu, float(kv['peak_mem_mb']))"
}
declare -A res
for _ in $(seq "$repeats"); do
  res[py_ref]+="$(pyb on-the-fly fp32);"
  res[py_pre]+="$(pyb precomputed fp32);"
  res[rs_pre]+="$(rs precomputed no auto);"
  res[rs_fly]+="$(rs on-the-fly no auto);"
  res[py_bf16]+="$(pyb precomputed bf16);"
  res[rs_bf16]+="$(rs precomputed bf16 auto);"
  res[rs_mkl]+="$(rs precomputed no mkl);"
done
"$py" - "$size" "$batch" "$stage" "${res[py_ref]}" "${res[py_pre]}" "${res[rs_pre]}" "${res[rs_fly]}" "${res[py_bf16]}" "${res[rs_bf16]}" "${res[rs_mkl]}" <<'PY'
import statistics, sys
size, batch, stage = sys.argv[1], sys.argv[2], sys.argv[3]
names = ["PyTorch, teacher on the fly (reference mode)", "PyTorch, precomputed codes", "sftok, precomputed codes",
         "sftok, teacher on the fly", "PyTorch, precomputed codes, bf16 autocast", "sftok, precomputed codes, bf16 autocast",
         "sftok, precomputed codes, MKL matmul"]
med = []
print(f"SFTok-{size} stage {stage}, batch {batch}, CPU; fp32 unless the row says bf16")
print(f"{'row':46} {'img/s (median)':>15} {'CPU s/img':>10} {'peak RSS MB':>12}  runs img/s")
for name, arg in zip(names, sys.argv[4:]):
    runs = [list(map(float, r.split())) for r in arg.strip(";").split(";")]
    m = [statistics.median(c) for c in zip(*runs)]
    med.append(m[0])
    print(f"{name:46} {m[0]:15.3f} {m[1]:10.3f} {m[2]:12.0f}  {', '.join(f'{r[0]:.3f}' for r in runs)}")
print(f"RESULT train_ratio size={size} stage={stage} ours_precomputed_vs_reference_mode={med[2] / med[0]:.2f} "
      f"ours_vs_pytorch_like_for_like={med[2] / med[1]:.2f} ours_on_the_fly_vs_reference_mode={med[3] / med[0]:.2f} "
      f"ours_bf16_vs_reference_mode={med[5] / med[0]:.2f} ours_bf16_vs_pytorch_bf16={med[5] / med[4]:.2f} "
      f"ours_mkl_matmul_vs_pytorch_like_for_like={med[6] / med[1]:.2f}")
PY
