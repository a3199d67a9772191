#!/usr/bin/env bash
# The paper's LLaVA steering (Sec. 4.3, Table 3): a Matryoshka SAE (x64) on 2 random tokens per
# ImageNet-train image at block 22 of CLIP ViT-L/14-336 (LLaVA-1.5's vision tower), its latents'
# top-16 train images from mean-pooled codes, CLIP ViT-B/32 embeddings of ImageNet train, the
# steering score on a white image (first NEURONS_WHITE latents) and on the first image of each
# ImageNet class (NEURONS_IMAGENET latents), steered (alpha 100) and unsteered, the bounds, and
# the report.
#
#   IMAGENET_PATH=/data/imagenet OUT_DIR=runs/steering bash scripts/mllm_steering.sh
#
# PROTOCOL=authors (default; docs/reproduction.md) or saevlm; CLASS_NAMES: JSON of the authors'
# ImageNet class-name strings for the bounds (without it the authors' bounds are skipped, saying so).
# LLAVA_MODEL may be any supported MLLM (LLaVA-1.5, LLaVA-NeXT, LLaVA-OneVision, Qwen2.5-VL, Gemma-3;
# docs/steering.md). For the paper's LLaVA-1.5 the activations come from CLIP ViT-L/14-336 (its tower)
# at block 22; for any other MLLM, from the tower inside it (MODEL=LLAVA_MODEL) at the block its
# language model reads (from its config), so the SAE sees what steering feeds it.
# Overrides: MODEL (the tower to extract from), LLAVA_MODEL, CLIP_MODEL, STEER_LAYER, EXPANSION_FACTOR,
# K, STEPS, BATCH_SIZE, SAVE_STEP, GROUP_FRACTIONS, WARMUP_STEPS, THRESHOLD_START_STEP, ALPHA,
# NEURONS_WHITE, NEURONS_IMAGENET, DEVICE, EXTRACT_BATCH_SIZE, NUM_WORKERS, TAKE_EVERY, PYTHON.
source "$(dirname "$0")/_common.sh"
need_dataset IMAGENET_PATH train
OUT_DIR=${OUT_DIR:-runs/steering}
PAPER_LLAVA=$(cfg experiments.steering.llava_model)
LLAVA_MODEL=${LLAVA_MODEL:-$PAPER_LLAVA}
if [ "$LLAVA_MODEL" = "$PAPER_LLAVA" ]; then
  MODEL=${MODEL:-$(cfg experiments.models.clip)}; STEER_LAYER=${STEER_LAYER:-$(cfg experiments.steering.layer)}
else  # another MLLM: its own tower, at the block its language model reads
  MODEL=${MODEL:-$LLAVA_MODEL}
  STEER_LAYER=${STEER_LAYER:-$("$PY" -m saevlm.models.towers "$LLAVA_MODEL")} || exit 2
fi
CLIP_MODEL=${CLIP_MODEL:-$(cfg experiments.steering.clip_model)}
EXPANSION_FACTOR=${EXPANSION_FACTOR:-$(cfg experiments.steering.expansion_factor)}
train_settings
GROUP_FRACTIONS=${GROUP_FRACTIONS:-$(cfg commands.train.group_fractions)}
PROTOCOL=${PROTOCOL:-authors}
ALPHA=${ALPHA:-$(cfg experiments.steering.alpha)}; NEURONS_WHITE=${NEURONS_WHITE:-$(cfg experiments.steering.neurons_white)}
NEURONS_IMAGENET=${NEURONS_IMAGENET:-$(cfg experiments.steering.neurons_imagenet)}
DEVICE=${DEVICE:-auto}; EXTRACT_BATCH_SIZE=${EXTRACT_BATCH_SIZE:-256}; NUM_WORKERS=${NUM_WORKERS:-8}
TAKE_EVERY=${TAKE_EVERY:-1}
MT=$(tag_of "$MODEL"); slug=$(slug_of "$STEER_LAYER")
data=(--dataset_name imagenet --data_path "$IMAGENET_PATH" --split train --batch_size "$EXTRACT_BATCH_SIZE"
      --num_workers "$NUM_WORKERS" --device "$DEVICE" --take_every "$TAKE_EVERY")
store="$OUT_DIR/activations/$MT/imagenet_train_random2/$slug"

say "activations: $MODEL block $STEER_LAYER, 2 random tokens per ImageNet-train image"
saevlm extract --model_name "$MODEL" --layer "$STEER_LAYER" --random_k 2 --dtype fp16 \
  --output_dir "$OUT_DIR/activations/$MT/imagenet_train_random2" "${data[@]}"
ck="$OUT_DIR/sae/$MT/$slug"
say "train the steering SAE: Matryoshka x$EXPANSION_FACTOR"
# shellcheck disable=SC2086
saevlm train --activations_dir "$store" --checkpoints_dir "$ck" --sae_model matryoshka_batch_top_k \
  --expansion_factor "$EXPANSION_FACTOR" --k "$K" --steps "$STEPS" --batch_size "$BATCH_SIZE" \
  --warmup_steps "$WARMUP_STEPS" --threshold_start_step "$THRESHOLD_START_STEP" --group_fractions $GROUP_FRACTIONS \
  --layout trainers $([ "$SAVE_STEP" -lt "$STEPS" ] && echo --save_at "$SAVE_STEP") --device "$DEVICE" --config "$CONFIG"
sae=$(checkpoint_of "$ck/trainer_0")
# top-16 train images per latent, the authors' protocol: the SAE encodes EVERY token of the block
# for every ImageNet-train image, codes are mean-pooled per image (mean_t encode(x_t)), and a
# running top-16 is kept (the pooled codes themselves would be 335 GB at x64)
say "top-16 images per latent: SAE on all tokens, mean-pooled codes (ImageNet train)"
topdir="$OUT_DIR/top_images/$MT/imagenet_train_meanpool"
saevlm extract --model_name "$MODEL" --layer "$STEER_LAYER" --mean_pool --sae_path "$sae" --top_k 16 \
  --output_dir "$topdir" "${data[@]}"
top="$topdir/${slug}_codes/top_images_16.npy"
say "CLIP embeddings of ImageNet train ($CLIP_MODEL)"
clip_emb="$OUT_DIR/embeddings/$(tag_of "$CLIP_MODEL")/imagenet_train"
saevlm embed --model_name "$CLIP_MODEL" --embeddings_path "$clip_emb" "${data[@]}"
eval_dir="$OUT_DIR/eval_first_image_per_class"
[ -f "$eval_dir/class_names.json" ] || saevlm make-eval-folder --dataset_name imagenet --data_path "$IMAGENET_PATH" \
  --split train --output_dir "$eval_dir"
score=(--sae_path "$sae" --llava_model "$LLAVA_MODEL" --layer "$STEER_LAYER" --top_images "$top"
       --clip_embeddings "$clip_emb" --clip_model "$CLIP_MODEL" --protocol "$PROTOCOL" --device "$DEVICE")
for setting in white imagenet; do
  if [ "$setting" = white ]; then imgs=white; n=$NEURONS_WHITE; else imgs=$eval_dir; n=$NEURONS_IMAGENET; fi
  for mode in steered unsteered; do
    out="$OUT_DIR/steering_score/${setting}_$mode"
    [ -f "$out/steering_score.json" ] && continue
    say "steering score: $setting, $mode, $n latents"
    extra=(--alpha "$ALPHA"); [ "$mode" = unsteered ] && extra=(--no_steer)
    saevlm steering-score "${score[@]}" --images "$imgs" --neurons "$n" "${extra[@]}" --output_dir "$out"
  done
done
if [ -f "$eval_dir/similarity_baseline.json" ]; then :
elif [ -n "${CLASS_NAMES:-}" ]; then
  saevlm similarity-baseline --images "$eval_dir" --class_names "$CLASS_NAMES" --protocol "$PROTOCOL" \
    --clip_model "$CLIP_MODEL" --device "$DEVICE"
elif [ "$PROTOCOL" = saevlm ]; then
  saevlm similarity-baseline --images "$eval_dir" --protocol saevlm --clip_model "$CLIP_MODEL" --device "$DEVICE"
else
  echo "warning: bounds skipped: the authors' protocol embeds their ImageNet class-name strings; set" \
       "CLASS_NAMES=<json {index: [wnid, name]}> (or PROTOCOL=saevlm) and rerun" >&2
fi
say "report"
saevlm report --run_dir "$OUT_DIR" --no_grids --title "Steering through the vision tower: $LLAVA_MODEL"
echo "done: $OUT_DIR/report.html"
