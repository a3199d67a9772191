#!/usr/bin/env bash
# The paper's Matryoshka hierarchy on iNaturalist 2021 (App. E.3): a Matryoshka SAE (expansion 2
# on CLIP ViT-L/14-336's 768-d projection) with groups sized like the first five taxonomy levels
# (3 / 16 / 69 / 359 / 1536 latents), each latent's 16 highest-activating iNat train images, the
# mean lowest-common-ancestor depth per group, and the report.
#
#   INAT_PATH=/data/inat2021 OUT_DIR=runs/hierarchy bash scripts/matryoshka_hierarchy.sh
#
# Overrides: MODEL, LAYER (default last), EXPANSION_FACTORS, K, STEPS, BATCH_SIZE, SAVE_STEP,
# GROUP_FRACTIONS, WARMUP_STEPS, THRESHOLD_START_STEP, SPLIT, DEVICE, EXTRACT_BATCH_SIZE,
# NUM_WORKERS, TAKE_EVERY, PYTHON.
source "$(dirname "$0")/_common.sh"
SPLIT=${SPLIT:-train}
need_dataset INAT_PATH "$SPLIT"
OUT_DIR=${OUT_DIR:-runs/hierarchy}
MODEL=${MODEL:-$(cfg experiments.models.clip)}
LAYER=${LAYER:-$(cfg experiments.hierarchy.layer)}
EXPANSION_FACTORS=${EXPANSION_FACTORS:-$(cfg experiments.hierarchy.expansion_factor)}
train_settings
GROUP_FRACTIONS=${GROUP_FRACTIONS:-$(cfg experiments.hierarchy.group_fractions)}
DEVICE=${DEVICE:-auto}; EXTRACT_BATCH_SIZE=${EXTRACT_BATCH_SIZE:-256}; NUM_WORKERS=${NUM_WORKERS:-8}
TAKE_EVERY=${TAKE_EVERY:-1}
MT=$(tag_of "$MODEL"); slug=$(slug_of "$LAYER")
store="$OUT_DIR/activations/$MT/inat_$SPLIT/$slug"

say "activations: $MODEL, iNat $SPLIT, $slug"
saevlm extract --model_name "$MODEL" --layer "$LAYER" --cls_only --dataset_name inat --data_path "$INAT_PATH" \
  --split "$SPLIT" --batch_size "$EXTRACT_BATCH_SIZE" --num_workers "$NUM_WORKERS" --device "$DEVICE" \
  --take_every "$TAKE_EVERY" --output_dir "$OUT_DIR/activations/$MT/inat_$SPLIT"
ck="$OUT_DIR/sae/$MT/$slug"
say "train Matryoshka SAE(s): x$EXPANSION_FACTORS, groups $GROUP_FRACTIONS"
# shellcheck disable=SC2086
saevlm train --activations_dir "$store" --checkpoints_dir "$ck" --sae_model matryoshka_batch_top_k \
  --expansion_factor $EXPANSION_FACTORS --k "$K" --steps "$STEPS" --batch_size "$BATCH_SIZE" \
  --warmup_steps "$WARMUP_STEPS" --threshold_start_step "$THRESHOLD_START_STEP" --group_fractions $GROUP_FRACTIONS \
  --layout trainers $([ "$SAVE_STEP" -lt "$STEPS" ] && echo --save_at "$SAVE_STEP") --device "$DEVICE" --config "$CONFIG"
for t in $(trainers_of "$ck"); do
  codes="$OUT_DIR/codes/$MT/inat_$SPLIT/$slug/$t"
  saevlm encode --sae_path "$(checkpoint_of "$ck/$t")" --activations_dir "$store" --output_dir "$codes" --device "$DEVICE"
  [ -f "$codes/top_images_16.npy" ] || saevlm top-images --activations_dir "$codes" --device "$DEVICE" --config "$CONFIG"
  saevlm hierarchy --activations_dir "$codes" --config "$CONFIG"
done
say "report"
saevlm report --run_dir "$OUT_DIR" --title "Matryoshka hierarchy on iNaturalist: $MODEL"
echo "done: $OUT_DIR/report.html"
