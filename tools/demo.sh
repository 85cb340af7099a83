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

# The tiny configs name their data relatively (shards/, codes/, outputs/): run from $out.
cd "$out"
val_images=$(ls imagenet/val/*.JPEG | head -n 8)

step "5. proxy codes of a RANDOMLY INITIALISED teacher (sftok-prep proxy-codes)"
echo "   (no weights ship with sftok: with the real maskgit-vqgan-imagenet-f16-256.bin these codes would mean something)"
rm -rf codes
"$bin/sftok-prep" proxy-codes --teacher random:0 --shards shards/train --out codes/train --views 2 --resize-shorter 64 --crop 64 --device cpu

step "6. stage 1 — warming up (sftok-train stage1, tiny model, CPU)"
rm -rf outputs
"$bin/sftok-train" stage1 --config "$root/configs/tiny/sftok_tiny_stage1.yaml" --device cpu --teacher random:0 \
  training.max_train_steps=200 experiment.save_every=100 experiment.generate_every=100 \
  experiment.eval_every=100 experiment.log_grad_norm_every=20

step "7. stage 2 — self-forcing from stage 1's EMA weights (sftok-train stage2)"
"$bin/sftok-train" stage2 --config "$root/configs/tiny/sftok_tiny_stage2.yaml" --device cpu --teacher random:0 \
  training.max_train_steps=100 experiment.save_every=100 experiment.generate_every=50 \
  experiment.eval_every=50 experiment.log_grad_norm_every=20

spread() { # train/latent_spread of metrics.jsonl's first and last training line, as "A -> B"
  sed -n 's/.*"train\/latent_spread":\([0-9.e-]*\).*/\1/p' "$1" | sed -n '1p;$p' | awk '{ v[NR] = $1 } END { printf "%.4f -> %.4f", v[1], v[NR] }'
}
echo
echo "encoder output spread across images (train/latent_spread; about 0: the tokens do not depend on the image;"
echo "0.14 for a width-256 tiny model that has learned, README \"What the demo shows\"):"
echo "  stage 1  $(spread outputs/sftok_tiny_stage1_run1/metrics.jsonl)"
echo "  stage 2  $(spread outputs/sftok_tiny_stage2_run1/metrics.jsonl)"

step "8. reconstructions with the stage-2 model (sftok-eval recon; its proxy codes decoded by the teacher)"
# shellcheck disable=SC2086
"$bin/sftok-eval" recon --checkpoint outputs/sftok_tiny_stage2_run1/ema_model --teacher random:0 --device cpu \
  --out recon --images $val_images | tee recon.log

step "9. stage 3 — fine-tuning the decoder + pixel decoder on pixels (sftok-train stage3)"
echo "   (RANDOM-weight LPIPS VGG16 and DINO backbone: with vgg16-397923af.pth, vgg.pth and"
echo "    dino_deitsmall16_pretrain.pth the perceptual and adversarial terms would mean something)"
"$bin/sftok-train" stage3 --config "$root/configs/tiny/sftok_tiny_stage3.yaml" --device cpu --teacher random:0 \
  --vgg16-weights random:1 --lpips-weights random:2 --dino-weights random:3 \
  training.max_train_steps=120 losses.discriminator_start=112 optimizer.params.learning_rate=1e-3 \
  experiment.save_every=60 experiment.generate_every=60

step "10. reconstructions with the stage-3 model (sftok-eval recon; its own pixel decoder, no teacher)"
# shellcheck disable=SC2086
"$bin/sftok-eval" recon --checkpoint outputs/sftok_tiny_stage3_run1/ema_model --device cpu \
  --out recon3 --images $val_images | tee recon3.log
psnr_of() { sed -n "s/^$2 \([0-9.-]*\) dB.*/\1/p" "$1" | head -n 1; }
echo
echo "mean val PSNR on the same $(echo "$val_images" | wc -w) images:"
echo "  stage-2 model (through the random teacher)   $(psnr_of recon.log 'mean PSNR') dB"
echo "  stage-3 model (its own pixel decoder)        $(psnr_of recon3.log 'mean PSNR') dB"
echo "  each image filled with its own mean colour   $(sed -n 's/^mean-colour baseline.*: \([0-9.-]*\) dB/\1/p' recon3.log) dB"
echo "  (at this size the decoder learns to ignore the tokens, in plain PyTorch too: README, \"What the demo shows\")"

step "11. rFID on the val shards (sftok-eval rfid) — RANDOM-WEIGHT Inception: only a smoke test of the pipeline"
"$bin/sftok-eval" rfid --checkpoint outputs/sftok_tiny_stage2_run1/ema_model --teacher random:0 --shards shards/val \
  --random-weights 0 --float32 --device cpu --batch 8

step "12. the stage-3 tokenizer's tokens for every training image, centre crop + mirror (sftok-prep tokenize)"
rm -rf tokens
"$bin/sftok-prep" tokenize --checkpoint outputs/sftok_tiny_stage3_run1/ema_model --shards shards/train --out tokens/train \
  --resize-shorter 64 --crop 64 --batch 32 --device cpu | tee tokenize.log

step "13. the class-conditional MaskGIT generator on those tokens (sftok-train generator)"
"$bin/sftok-train" generator --config "$root/configs/tiny/sftok_tiny_maskgit.yaml" --device cpu \
  --tokenizer outputs/sftok_tiny_stage3_run1/ema_model
masked_loss() { # mean train/masked_loss of metrics.jsonl lines $1..$2
  sed -n "$1,$2p" outputs/sftok_tiny_maskgit_run1/metrics.jsonl | sed -n 's/.*"train\/masked_loss":\([0-9.e-]*\).*/\1/p' |
    awk '{ s += $1; n += 1 } END { printf "%.3f", s / n }'
}
echo
echo "masked-token loss: first 10 steps $(masked_loss 1 10), last 50 steps $(masked_loss 251 300) nats"
echo "  bound for a predictor without class or context: $(sed -n 's/.*with label smoothing 0.1: \([0-9.]*\).*/\1/p' tokenize.log) nats"

step "14. 256 class-balanced samples → an ADM sample batch (sftok-eval sample), then gFID against the val images"
echo "   (RANDOM-weight Inception: only a smoke test of the pipeline; the real one: --weights pt_inception-2015-12-05-6726825d.pth"
echo "    --ref VIRTUAL_imagenet256_labeled.npz with 50,000 samples)"
"$bin/sftok-eval" sample --generator outputs/sftok_tiny_maskgit_run1/ema_model --tokenizer outputs/sftok_tiny_stage3_run1/ema_model \
  --num 256 --per-proc-batch 32 --device cpu --out samples.npz
"$bin/sftok-eval" gfid samples.npz --ref imagenet/val --random-weights 0 --device cpu --batch 32

step "done in $((SECONDS - t0)) s — outputs:"
echo "  fake ImageNet        $out/imagenet  (train/, val/, LOC_val_solution.csv, LOC_synset_mapping.txt)"
echo "  effective config     $out/sftok_tiny_stage1.effective.yaml"
echo "  shards               $out/shards/{train,val}/  (<split>-NNNNNN.tar + manifest.json)"
echo "  proxy codes          $out/codes/train/  (one Parquet file per shard)"
echo "  stage 1 / 2 / 3      $out/outputs/sftok_tiny_stage{1,2,3}_run1/  (checkpoint-*/, ema_model/, loss.png, metrics.jsonl)"
echo "  TensorBoard          tensorboard --logdir $out/outputs"
echo "  reconstructions      $out/recon/grid.png (stage 2), $out/recon3/grid.png (stage 3): original | reconstruction; tokens.json with PSNR"
echo "  tokens               $out/tokens/train/  (8 token ids per view, one Parquet file per shard)"
echo "  generator            $out/outputs/sftok_tiny_maskgit_run1/  (ema_model/, loss.png; train_images/*.png: one row of samples per class)"
echo "  samples              $out/samples.npz (arr_0 uint8 [256, 64, 64, 3]) + samples.npz.json (settings, labels per row)"
