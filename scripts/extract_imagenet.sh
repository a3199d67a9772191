#!/usr/bin/env bash
# Step 1 of the paper's MS experiment (arXiv 2504.02821): CLS activations of CLIP ViT-L/14-336 at
# blocks 11 17 22 23 and the projection, for ImageNet train (SAE training) and val (evaluation),
# plus the DINOv2 and CLIP ViT-B/32 embeddings of ImageNet val for the Monosemanticity Score.
# All layers come from one forward pass. Rerunning resumes; finished stores are skipped.
#
#   IMAGENET_PATH=/data/imagenet OUT_DIR=runs/paper bash scripts/extract_imagenet.sh
#
# Overrides: MODEL, LAYERS, SPLITS, BATCH_SIZE, NUM_WORKERS, DEVICE, DTYPE, AUTOCAST, TAKE_EVERY.
set -euo pipefail
: "${IMAGENET_PATH:?set IMAGENET_PATH to the ImageNet root (holding train/ and val/)}"
case "$IMAGENET_PATH" in hf:*) ;; *) [ -d "$IMAGENET_PATH" ] || { echo "IMAGENET_PATH=$IMAGENET_PATH: no such directory" >&2; exit 2; } ;; esac
OUT_DIR=${OUT_DIR:-runs/paper}
MODEL=${MODEL:-clip-vit-large-patch14-336}
LAYERS=${LAYERS:-"11 17 22 23 last"}
SPLITS=${SPLITS:-"train val"}
BATCH_SIZE=${BATCH_SIZE:-256}
NUM_WORKERS=${NUM_WORKERS:-8}
DEVICE=${DEVICE:-auto}
DTYPE=${DTYPE:-fp32}
AUTOCAST=${AUTOCAST:-none}
TAKE_EVERY=${TAKE_EVERY:-1}
PY=${PYTHON:-python}

for split in $SPLITS; do
  # shellcheck disable=SC2086
  $PY -m saevlm extract --model_name "$MODEL" --layer $LAYERS --cls_only \
    --dataset_name imagenet --data_path "$IMAGENET_PATH" --split "$split" --take_every "$TAKE_EVERY" \
    --batch_size "$BATCH_SIZE" --num_workers "$NUM_WORKERS" --device "$DEVICE" \
    --dtype "$DTYPE" --autocast "$AUTOCAST" --output_dir "$OUT_DIR/activations/$MODEL/imagenet_$split"
done
for emb in dinov2-base clip-vit-base-patch32; do
  $PY -m saevlm embed --model_name "$emb" --dataset_name imagenet --data_path "$IMAGENET_PATH" \
    --split val --batch_size "$BATCH_SIZE" --num_workers "$NUM_WORKERS" --device "$DEVICE" \
    --embeddings_path "$OUT_DIR/embeddings/$emb/imagenet_val"
done
echo "stores under $OUT_DIR/activations and $OUT_DIR/embeddings"
