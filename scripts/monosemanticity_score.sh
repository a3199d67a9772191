#!/usr/bin/env bash
# The paper's MS experiment (Sec. 4.1, Table 1a / A2): CLIP ViT-L/14-336 CLS activations at blocks
# 11 17 22 23 and the projection (ImageNet train for training, val for evaluation), BatchTopK and
# Matryoshka SAEs at expansion 1 2 4 8 16 64 (K = 20, 110,000 steps, batch 4096), the MS of raw
# neurons and SAE latents on val with DINOv2 and CLIP ViT-B/32 embeddings, top images and
# uniqueness on train codes (as the paper), and the report.
#
#   IMAGENET_PATH=/data/imagenet OUT_DIR=runs/ms bash scripts/monosemanticity_score.sh
#
# Every step whose output is complete is skipped, so a rerun resumes. Defaults come from
# configs/paper.yaml (CONFIG=file for another). Overrides: MODEL, LAYERS, SAE_MODELS,
# EXPANSION_FACTORS, K, STEPS, BATCH_SIZE, SAVE_STEP,
# GROUP_FRACTIONS, WARMUP_STEPS, THRESHOLD_START_STEP, EMBEDDERS, DEVICE, EXTRACT_BATCH_SIZE,
# NUM_WORKERS, DTYPE, TAKE_EVERY, PYTHON.
source "$(dirname "$0")/_common.sh"
need_dataset IMAGENET_PATH train val
OUT_DIR=${OUT_DIR:-runs/ms}
MODEL=${MODEL:-$(cfg experiments.models.clip)}
LAYERS=${LAYERS:-$(cfg experiments.ms_layers)}
SAE_MODELS=${SAE_MODELS:-$(cfg experiments.ms_sweep.sae_model)}
EXPANSION_FACTORS=${EXPANSION_FACTORS:-$(cfg experiments.ms_sweep.expansion_factor)}
train_settings
GROUP_FRACTIONS=${GROUP_FRACTIONS:-$(cfg commands.train.group_fractions)}
EMBEDDERS=${EMBEDDERS:-$(cfg experiments.embeddings)}
DEVICE=${DEVICE:-auto}; EXTRACT_BATCH_SIZE=${EXTRACT_BATCH_SIZE:-256}; NUM_WORKERS=${NUM_WORKERS:-8}
DTYPE=${DTYPE:-fp32}; TAKE_EVERY=${TAKE_EVERY:-1}
MT=$(tag_of "$MODEL")
data=(--dataset_name imagenet --data_path "$IMAGENET_PATH" --batch_size "$EXTRACT_BATCH_SIZE"
      --num_workers "$NUM_WORKERS" --device "$DEVICE" --take_every "$TAKE_EVERY")

for split in train val; do
  say "activations: $MODEL, ImageNet $split, layers $LAYERS (one pass)"
  # shellcheck disable=SC2086
  saevlm extract --model_name "$MODEL" --layer $LAYERS --cls_only --split "$split" --dtype "$DTYPE" \
    --output_dir "$OUT_DIR/activations/$MT/imagenet_$split" "${data[@]}"
done
for emb in $EMBEDDERS; do
  say "embeddings: $emb, ImageNet val"
  saevlm embed --model_name "$emb" --split val --embeddings_path "$OUT_DIR/embeddings/$(tag_of "$emb")/imagenet_val" "${data[@]}"
done

for layer in $LAYERS; do
  slug=$(slug_of "$layer")
  train_store="$OUT_DIR/activations/$MT/imagenet_train/$slug"
  val_store="$OUT_DIR/activations/$MT/imagenet_val/$slug"
  for emb in $EMBEDDERS; do
    et=$(tag_of "$emb")
    [ -f "$val_store/ms_$et/ms.json" ] || { say "MS raw neurons, $slug, $emb"
      saevlm ms --activations_dir "$val_store" --embeddings_path "$OUT_DIR/embeddings/$et/imagenet_val" \
        --output_subdir "ms_$et" --device "$DEVICE"; }
  done
  ck="$OUT_DIR/sae/$MT/$slug"
  say "train SAEs, $slug: $SAE_MODELS x $EXPANSION_FACTORS (shared batches)"
  # shellcheck disable=SC2086
  saevlm train --activations_dir "$train_store" --val_activations_dir "$val_store" --checkpoints_dir "$ck" \
    --sae_model $SAE_MODELS --expansion_factor $EXPANSION_FACTORS --k "$K" --steps "$STEPS" \
    --batch_size "$BATCH_SIZE" --warmup_steps "$WARMUP_STEPS" --threshold_start_step "$THRESHOLD_START_STEP" \
    --group_fractions $GROUP_FRACTIONS --layout trainers $([ "$SAVE_STEP" -lt "$STEPS" ] && echo --save_at "$SAVE_STEP") \
    --device "$DEVICE" --config "$CONFIG"
  for t in $(trainers_of "$ck"); do
    codes="$OUT_DIR/codes/$MT/imagenet_val/$slug/$t"
    saevlm encode --sae_path "$(checkpoint_of "$ck/$t")" --activations_dir "$val_store" --output_dir "$codes" --device "$DEVICE"
    for emb in $EMBEDDERS; do
      et=$(tag_of "$emb")
      [ -f "$codes/ms_$et/ms.json" ] || saevlm ms --activations_dir "$codes" \
        --embeddings_path "$OUT_DIR/embeddings/$et/imagenet_val" --output_subdir "ms_$et" --device "$DEVICE"
    done
    # top-16 grids and uniqueness come from ImageNet TRAIN codes, as in the paper (App. G) and the
    # authors' script; the MS stays on val
    tcodes="$OUT_DIR/codes/$MT/imagenet_train/$slug/$t"
    saevlm encode --sae_path "$(checkpoint_of "$ck/$t")" --activations_dir "$train_store" --output_dir "$tcodes" --device "$DEVICE"
    [ -f "$tcodes/top_images_16.npy" ] || saevlm top-images --activations_dir "$tcodes" --device "$DEVICE" --config "$CONFIG"
    [ -f "$tcodes/uniqueness_16.json" ] || saevlm uniqueness --activations_dir "$tcodes" --config "$CONFIG"
  done
done
say "report"
saevlm report --run_dir "$OUT_DIR" --title "Monosemanticity Score: $MODEL"
echo "done: $OUT_DIR/report.html"
