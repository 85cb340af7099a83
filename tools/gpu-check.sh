#!/usr/bin/env bash
# One prepared script for a lent GPU machine: set-up, build, CUDA checks, a short table.
# The binaries: gpu-bin/ when present (tools/gpu-build.sh makes it on the development machine for
# the GPU machine's PyTorch 2.11; carry it along), else a build here (needs Rust and libtorch 2.13).
# On a machine without CUDA it says so and exits 0.
#   tools/gpu-check.sh            # doctor + teacher throughput + SFTok-B recon + training step rate next to PyTorch
#                                 # (SFTok-B/-L stages 1-2, fp16 and bf16, MFU; stage 3) + generator train/sample
#                                 # + NCCL all-reduce (1 process; all GPUs when there are more) + a 2-GPU stage-1 run
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check: no NVIDIA GPU on this machine; nothing to check."
  exit 0
fi
if [ -x "$root/gpu-bin/sftok-train" ]; then
  # Built elsewhere by tools/gpu-build.sh (tch 0.24, libtorch 2.11, NCCL) for a machine that has
  # PyTorch 2.11 but no Rust toolchain and no downloads: its torch/lib serves the binaries.
  bin="$root/gpu-bin"
  py=python3
  torch_lib=$("$py" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') || exit 1
  export LD_LIBRARY_PATH="$torch_lib:$bin${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  torchrun=("$py" -m torch.distributed.run)
else
  bash tools/setup.sh || exit 1
  # The NCCL process group (model/csrc/sftok_c10d_nccl.cpp) needs CUDA headers: see model/build.rs.
  cargo build --bins --features nccl 2>&1 | tail -3 || exit 1
  bin="$root/target/debug"
  py="$root/.venv/bin/python"
  torchrun=("$root/.venv/bin/torchrun")
fi
work="${GPU_CHECK_WORK:-/tmp/sftok-gpu-check}"
rm -rf "$work" && mkdir -p "$work"
rows=()
add() { rows+=("$(printf '%-34s %-6s %s' "$1" "$2" "$3")"); }
timed() { local t0=$SECONDS; "$@" > "$work/last.log" 2>&1; local rc=$?; echo $((SECONDS - t0)) > "$work/secs"; return $rc; }

add "device" "info" "$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)"
if out=$("$bin/sftok-prep" doctor --device cuda:0 2>&1); then
  add "doctor (cuda:0, f32+bf16)" "ok" "$(echo "$out" | grep -E 'matmul' | tr -s ' ' | paste -sd ';')"
else
  add "doctor (cuda:0, f32+bf16)" "FAIL" "$(echo "$out" | tail -2 | paste -sd ';')"
fi

# Data: 512 fake ImageNet images in 4 shards.
"$bin/sftok-prep" synth --out "$work/fake" --classes 8 --per-class 64 --val 64 >/dev/null
"$bin/sftok-prep" shard "$work/fake" --out "$work/shards" --split all --shard-size 128 >/dev/null 2>&1

# Teacher throughput at full size (random weights), 10 views per image, and CPU/GPU agreement.
if timed "$bin/sftok-prep" proxy-codes --teacher random:0 --shards "$work/shards/train" --out "$work/codes_gpu" --device cuda:0 --batch 256; then
  add "teacher proxy-codes (GPU)" "ok" "$(grep -o '[0-9.]* views/s' "$work/last.log")"
else
  add "teacher proxy-codes (GPU)" "FAIL" "$(tail -1 "$work/last.log")"
fi
if timed "$bin/sftok-prep" proxy-codes --teacher random:0 --shards "$work/shards/val" --out "$work/codes_val_gpu" --views 1 --device cuda:0 \
   && timed "$bin/sftok-prep" proxy-codes --teacher random:0 --shards "$work/shards/val" --out "$work/codes_val_cpu" --views 1 --device cpu; then
  flips=$("$py" - "$work/codes_val_gpu" "$work/codes_val_cpu" 2>&1 <<'PY' | tail -1
import sys, glob, os, pyarrow.parquet as pq, numpy as np
a, b = sys.argv[1], sys.argv[2]
diff = total = 0
for f in sorted(glob.glob(a + "/*.parquet")):
    x = pq.read_table(f).column("codes").combine_chunks().values.to_numpy()
    y = pq.read_table(os.path.join(b, os.path.basename(f))).column("codes").combine_chunks().values.to_numpy()
    diff += int((x != y).sum()); total += x.size
print(f"{diff}/{total} codes differ GPU vs CPU ({100 * diff / max(total, 1):.3f} %)")
PY
)
  add "teacher codes CPU vs GPU" "info" "$flips"
fi

# SFTok-B: reconstruction images/s and a few stage-1 training steps at batch 32.
"$bin/sftok-train" init configs/sftok_b64_stage3.yaml --out "$work/sftok-b" >/dev/null
imgs=$(ls "$work"/fake/val/*.JPEG | head -n 32)
# shellcheck disable=SC2086
if timed "$bin/sftok-eval" recon --checkpoint "$work/sftok-b" --device cuda:0 --batch 32 --out "$work/recon" --images $imgs; then
  add "SFTok-B recon, 32 images (GPU)" "ok" "$(grep -o '[0-9.]* s/image' "$work/last.log") incl. model load"
else
  add "SFTok-B recon (GPU)" "FAIL" "$(tail -1 "$work/last.log")"
fi
# The training step next to PyTorch on this GPU (bench_train_py.py: the reference's step in plain
# PyTorch), same size, stage and per-GPU batch (32, the reference's): PyTorch in the reference's
# mode (fp16 autocast + GradScaler, teacher on the fly) and in its best plain form (bf16, direct
# SDPA, fused AdamW, foreach EMA, precomputed codes), sftok with precomputed codes (the Parquet
# store made above) in fp16 and in bf16. Each run: 3 warm-up steps, then the median of 10; sftok is
# stopped there (kill: no final checkpoint of several GB). Peak memory: nvidia-smi's maximum during
# the run, the same measure for both sides (CUDA context and allocator cache included). MFU: the
# tokenizer's model FLOPs per image (forward + backward of encoder and decoder, stage 2 also the
# guidance decode; the teacher not counted), the same for both sides, over 790 TFLOP/s (H200, bf16
# dense). The issue's goals: sftok fp16 ≥ 1.2× the reference mode, sftok bf16 ≥ 1.0× PyTorch's best.
bench_py=""
for d in "$bin" "$root/../shared/bench"; do [ -z "$bench_py" ] && [ -f "$d/bench_train_py.py" ] && bench_py="$d/bench_train_py.py"; done
gpu_mem() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1; }
watch_peak() { # $1 = pid [, $2 = file, $3 = lines: kill the process once the file has that many] → peak MiB
  local peak=0 m
  while kill -0 "$1" 2>/dev/null; do
    m=$(gpu_mem); [ "$m" -gt "$peak" ] && peak=$m
    if [ $# -eq 3 ] && [ "$(wc -l < "$2" 2>/dev/null || echo 0)" -ge "$3" ]; then kill -9 "$1" 2>/dev/null; break; fi
    sleep 0.5
  done
  wait "$1" 2>/dev/null
  echo "$peak"
}
flops_per_image() { # $1 = B|L, $2 = stage → GFLOP of one image's training step (analytic)
  python3 - "$1" "$2" <<'PY'
import sys
size, stage = sys.argv[1], int(sys.argv[2])
T = 1 + 256 + 64  # class token, 256 patches (256 px / 16), 64 latent tokens; the decoder: 256 mask rows + 64 + 1
block = lambda w: 24 * T * w * w + 4 * T * T * w  # qkv + out + 4x MLP matmuls, q·kᵀ and p·v, per layer
enc = 12 * block(768) + 2 * 256 * (3 * 16 * 16) * 768
wd, dd = {"B": (768, 12), "L": (1024, 24)}[size]
dec = dd * block(wd) + 2 * 256 * wd * 1024  # + the proxy-code head
print((3 * (enc + dec) + (dec if stage == 2 else 0)) / 1e9)
PY
}
py_rate() { # $1 size, $2 stage, $3 precision, $4 teacher, extra flags… → "img/s peak_MiB"
  local size=$1 stage=$2 prec=$3 teacher=$4; shift 4
  python3 "$bench_py" --size "$size" --stage "$stage" --device cuda --batch 32 --steps 10 --warmup 3 --precision "$prec" --teacher "$teacher" "$@" \
    > "$work/py.log" 2>&1 &
  local peak; peak=$(watch_peak $!)
  local ips; ips=$(grep '^RESULT train_py' "$work/py.log" | tail -1 | grep -o 'images_per_s=[0-9.]*' | cut -d= -f2)
  echo "${ips:-FAIL} $peak"
}
rs_rate() { # $1 size, $2 stage, $3 precision → "img/s peak_MiB"
  local size=$1 stage=$2 prec=$3 out="$work/rs_train"
  local lower; lower=$(echo "$size" | tr 'BL' 'bl')
  rm -rf "$out"
  "$bin/sftok-train" "stage$stage" --config "configs/sftok_${lower}64_stage$stage.yaml" --device cuda:0 --teacher random:0 --resume never \
    experiment.output_dir="$out" experiment.init_weight= dataset.params.train_shards_path_or_url="$work/shards/train" \
    dataset.params.train_proxy_codes_path="$work/codes_gpu" training.per_gpu_batch_size=32 training.max_train_steps=100000 \
    training.mixed_precision="$prec" experiment.save_every=1000000 experiment.generate_every=0 experiment.eval_every=0 \
    experiment.log_every=1000000 > "$work/rs.log" 2>&1 &
  local peak; peak=$(watch_peak $! "$out/metrics.jsonl" 13)
  local ips; ips=$(python3 -c "
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][3:13]
print(statistics.median(r['samples/sec'] for r in rows) if len(rows) == 10 else 'FAIL')" "$out/metrics.jsonl" 2>/dev/null)
  # The first step's attention kernels, as the trainer logged them (model/src/attention.rs).
  grep -o 'attention kernels.*' "$work/rs.log" | head -1 > "$work/attn.txt"
  rm -rf "$out"
  echo "${ips:-FAIL} $peak"
}
train_rows=()
if [ -z "$bench_py" ]; then
  add "training vs PyTorch" "skip" "no bench_train_py.py (tools/gpu-build.sh stages it in gpu-bin/)"
else
  for run in "B 1" "B 2" "L 1" "L 2"; do
    read -r size stage <<< "$run"
    gf=$(flops_per_image "$size" "$stage")
    read -r ref ref_mem <<< "$(py_rate "$size" "$stage" fp16 on-the-fly)"
    read -r best best_mem <<< "$(py_rate "$size" "$stage" bf16 precomputed --sdpa --fused-adamw --ema-foreach)"
    read -r ours16 ours16_mem <<< "$(rs_rate "$size" "$stage" fp16)"
    [ "$size$stage" = B1 ] && add "attention kernels (SFTok-B, fp16)" "info" "$(cat "$work/attn.txt")"
    read -r ours bf_mem <<< "$(rs_rate "$size" "$stage" bf16)"
    train_rows+=("$(python3 - "$size" "$stage" "$gf" "$ref" "$ref_mem" "$best" "$best_mem" "$ours16" "$ours16_mem" "$ours" "$bf_mem" <<'PY'
import sys
size, stage, gf = sys.argv[1], sys.argv[2], float(sys.argv[3])
vals = sys.argv[4:]
def num(x):
    try: return float(x)
    except ValueError: return None
ref, best, o16, obf = (num(vals[i]) for i in (0, 2, 4, 6))
mems = [vals[i] for i in (1, 3, 5, 7)]
mfu = lambda ips: f"{100 * ips * gf * 1e9 / 790e12:5.1f}%" if ips else "  -  "
fmt = lambda ips: f"{ips:8.1f}" if ips else "    FAIL"
ratio = lambda a, b: f"{a / b:5.2f}x" if a and b else "   - "
print(f"SFTok-{size} stage {stage}  {fmt(ref)} {fmt(best)} {fmt(o16)} {fmt(obf)}   {ratio(o16, ref)} {ratio(obf, best)}   "
      f"MFU {mfu(ref)} {mfu(best)} {mfu(o16)} {mfu(obf)}   peak MiB {'/'.join(mems)}   {gf:.0f} GFLOP/img")
PY
)")
  done
fi
# Stage 3 (ours only: bench_train_py.py covers stages 1 and 2) at its reference batch, fp16.
if timed "$bin/sftok-train" stage3 --config configs/sftok_b64_stage3.yaml --device cuda:0 --teacher random:0 --resume never \
     --vgg16-weights random:1 --lpips-weights random:2 --dino-weights random:3 experiment.output_dir="$work/train_s3" experiment.init_weight= \
     dataset.params.train_shards_path_or_url="$work/shards/train" dataset.params.train_proxy_codes_path="$work/codes_gpu" \
     training.max_train_steps=20 experiment.log_every=10 experiment.generate_every=0 experiment.eval_every=0 losses.discriminator_start=0; then
  add "SFTok-B stage-3 train, batch 8 (fp16)" "ok" "$(grep '^step 20/' "$work/last.log" | grep -o '[0-9.]* img/s')"
else
  add "SFTok-B stage-3 train (GPU)" "FAIL" "$(tail -2 "$work/last.log" | paste -sd ';')"
fi
rm -rf "$work/train_s3"
# The MaskGIT generator (ImageBert, 183.5M parameters) on SFTok-B's tokens computed on the fly, in
# its reference precision (bf16 autocast through model/csrc/sftok_autocast.cpp), then sampling.
if timed "$bin/sftok-train" generator --config configs/sftok_maskgit.yaml --device cuda:0 --tokenizer "$work/sftok-b" --resume never \
     experiment.output_dir="$work/gen" dataset.params.train_shards_path_or_url="$work/shards/train" training.per_gpu_batch_size=32 \
     training.max_train_steps=20 experiment.log_every=10 experiment.save_every=20 experiment.generate_every=0; then
  add "generator train, batch 32 (bf16)" "ok" "$(grep '^step 20/' "$work/last.log" | grep -o '[0-9.]* img/s')"
  if timed "$bin/sftok-eval" sample --generator "$work/gen/ema_model" --tokenizer "$work/sftok-b" --num 1000 --device cuda:0 --out "$work/samples.npz"; then
    add "generator sample 1000 (8×125)" "ok" "$(grep -o '[0-9.]* images/s; peak RSS [0-9]* MB' "$work/last.log")"
  else
    add "generator sample (GPU)" "FAIL" "$(tail -2 "$work/last.log" | paste -sd ';')"
  fi
else
  add "generator train (GPU)" "FAIL" "$(tail -2 "$work/last.log" | paste -sd ';')"
fi
# Data parallelism over NCCL: the trainer's bucketed gradient all-reduce for SFTok-B stage 1's
# 175,104,832 values, one process, then every GPU under torchrun, then 2 GPUs training stage 1.
gpus=$(nvidia-smi -L | wc -l)
if timed "$bin/sftok-train" allreduce-bench --device cuda:0 --numel 175104832 --iters 5; then
  add "NCCL all-reduce, 1 process" "ok" "$(grep -o 'algbw.*' "$work/last.log")"
else
  add "NCCL all-reduce, 1 process" "FAIL" "$(tail -2 "$work/last.log" | paste -sd ';')"
fi
if [ "$gpus" -gt 1 ]; then
  if timed "${torchrun[@]}" --standalone --nproc_per_node "$gpus" --no-python "$bin/sftok-train" allreduce-bench --device cuda --numel 175104832 --iters 5; then
    add "NCCL all-reduce, $gpus GPUs" "ok" "$(grep -o 'algbw.*' "$work/last.log")"
  else
    add "NCCL all-reduce, $gpus GPUs" "FAIL" "$(tail -2 "$work/last.log" | paste -sd ';')"
  fi
  if timed "${torchrun[@]}" --standalone --nproc_per_node 2 --no-python "$bin/sftok-train" stage1 --config configs/sftok_b64_stage1.yaml \
       --device cuda --teacher random:0 --resume never experiment.output_dir="$work/train_b_ddp" \
       dataset.params.train_shards_path_or_url="$work/shards/train" dataset.params.train_proxy_codes_path= \
       training.per_gpu_batch_size=32 training.max_train_steps=30 experiment.log_every=10; then
    add "SFTok-B stage-1 train, 2 GPUs × 32" "ok" "$(grep '^step 30/' "$work/last.log" | grep -o '[0-9.]* img/s') per GPU"
  else
    add "SFTok-B stage-1 train, 2 GPUs" "FAIL" "$(tail -2 "$work/last.log" | paste -sd ';')"
  fi
fi
add "GPU memory after runs" "info" "$(nvidia-smi --query-gpu=memory.used --format=csv,noheader | head -1)"

printf '\n%-34s %-6s %s\n' "check" "result" "details"
printf '%s\n' "${rows[@]}"
if [ "${#train_rows[@]}" -gt 0 ]; then
  printf '\ntraining, batch 32, img/s:   PyTorch ref-mode(fp16)  PyTorch best(bf16)  sftok fp16  sftok bf16   vs ref  vs best   MFU (same order)   peak MiB (same order)\n'
  printf '%s\n' "${train_rows[@]}"
fi
