#!/usr/bin/env bash
# `make demo`: the whole flow on a small built-in example, on CPU. Outputs go to demo-out/.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/target/debug"
out="${SFTOK_DEMO_OUT:-$root/demo-out}"
mkdir -p "$out"
t0=$SECONDS
step() { printf '\n== %s\n' "$*"; }

step "1. fake ImageNet (sftok-prep synth)"
rm -rf "$out/imagenet"
"$bin/sftok-prep" synth --out "$out/imagenet" --classes 8 --per-class 12 --val 32 --seed 0

step "2. libtorch check (sftok-train doctor)"
"$bin/sftok-train" doctor --device auto

step "3. effective stage-1 config of the tiny model (sftok-train config)"
"$bin/sftok-train" config configs/tiny/sftok_tiny_stage1.yaml training.seed=0 > "$out/sftok_tiny_stage1.effective.yaml"
echo "written $out/sftok_tiny_stage1.effective.yaml"

step "4. webdataset shards of the fake ImageNet (sftok-prep shard, verify)"
rm -rf "$out/shards"
"$bin/sftok-prep" shard "$out/imagenet" --out "$out/shards" --split all --shard-size 32 --seed 0
"$bin/sftok-prep" verify "$out/shards"

step "done in $((SECONDS - t0)) s — outputs:"
echo "  fake ImageNet        $out/imagenet  (train/, val/, LOC_val_solution.csv, LOC_synset_mapping.txt)"
echo "  effective config     $out/sftok_tiny_stage1.effective.yaml"
echo "  shards               $out/shards/{train,val}/  (<split>-NNNNNN.tar + manifest.json)"
