#!/usr/bin/env bash
# One prepared script for a lent GPU machine: set-up, build, CUDA checks, a short table.
# On a machine without CUDA it says so and exits 0.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check: no NVIDIA GPU on this machine; nothing to check."
  exit 0
fi
bash tools/setup.sh || exit 1
cargo build --workspace --bins 2>&1 | tail -3 || exit 1
rows=()
add() { rows+=("$(printf '%-28s %-8s %s' "$1" "$2" "$3")"); }

name=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | head -1)
add "device" "info" "$name"
if out=$(env -u LD_LIBRARY_PATH target/debug/sftok-prep doctor --device cuda:0 2>&1); then
  add "doctor (cuda:0, f32+bf16)" "ok" "$(echo "$out" | grep -E 'matmul' | tr -s ' ' | paste -sd ';')"
else
  add "doctor (cuda:0, f32+bf16)" "FAIL" "$(echo "$out" | tail -2 | paste -sd ';')"
fi

printf '\n%-28s %-8s %s\n' "check" "result" "details"
printf '%s\n' "${rows[@]}"
