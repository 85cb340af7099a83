#!/usr/bin/env bash
# One prepared script for a lent GPU machine: set-up, build, CUDA checks, a short table.
# The binaries: gpu-bin/ when present (tools/gpu-build.sh makes it on the development machine for
# the GPU machine's PyTorch 2.11; carry it along), else a build here (needs Rust and libtorch 2.13).
# On a machine without CUDA it says so and exits 0.
#   tools/gpu-check.sh            # doctor + teacher throughput + SFTok-B recon + training step rate + generator train/sample
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
if timed "$bin/sftok-train" stage1 --config configs/sftok_b64_stage1.yaml --device cuda:0 --teacher random:0 --resume never \
     experiment.output_dir="$work/train_b" dataset.params.train_shards_path_or_url="$work/shards/train" \
     dataset.params.train_proxy_codes_path= training.per_gpu_batch_size=32 training.max_train_steps=30 experiment.log_every=10; then
  add "SFTok-B stage-1 train, batch 32" "ok" "$(grep '^step 30/' "$work/last.log" | grep -o '[0-9.]* img/s')"
else
  add "SFTok-B stage-1 train (GPU)" "FAIL" "$(tail -2 "$work/last.log" | paste -sd ';')"
fi
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
