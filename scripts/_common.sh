# Shared helpers for the experiment scripts (sourced, not run).
set -euo pipefail
PY=${PYTHON:-python}
saevlm() { "$PY" -m saevlm "$@"; }
say() { printf '\n=== %s\n' "$*" >&2; }

# The paper's settings: configs/paper.yaml (the single source), or CONFIG=other.yaml. Every
# default below comes from it; the scripts also pass it to each command as --config.
CONFIG=${CONFIG:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/configs/paper.yaml}
[ -f "$CONFIG" ] || { echo "error: CONFIG=$CONFIG: no such file" >&2; exit 2; }
# cfg KEY: a value of the config (lists space-separated), e.g. cfg commands.train.k
cfg() { "$PY" -m saevlm.config "$CONFIG" "$1"; }

# train_settings: K STEPS BATCH_SIZE SAVE_STEP WARMUP_STEPS THRESHOLD_START_STEP from the
# environment, else from the config (the paper's training recipe).
train_settings() {
  K=${K:-$(cfg commands.train.k)}; STEPS=${STEPS:-$(cfg commands.train.steps)}
  BATCH_SIZE=${BATCH_SIZE:-$(cfg commands.train.batch_size)}; SAVE_STEP=${SAVE_STEP:-$(cfg experiments.evaluated_step)}
  WARMUP_STEPS=${WARMUP_STEPS:-$(cfg commands.train.warmup_steps)}
  THRESHOLD_START_STEP=${THRESHOLD_START_STEP:-$(cfg commands.train.threshold_start_step)}
}

# need_dataset VAR: stop at once, saying what to set, when a dataset path is missing
# (hf:<repo id> values name a Hugging Face dataset, streamed: see docs/datasets.md).
need_dataset() {
  local var=$1 val=${!1:-}
  if [ -z "$val" ]; then
    echo "error: set $var to the dataset root (e.g. $var=/data/... bash $0)" >&2; exit 2
  fi
  case "$val" in hf:*) return 0 ;; esac  # a hub dataset (streamed): nothing on disk to check
  if [ ! -d "$val" ]; then
    echo "error: $var=$val: no such directory" >&2; exit 2
  fi
  shift
  for sub in "$@"; do
    [ -d "$val/$sub" ] || { echo "error: $var=$val has no $sub/ folder (expected $*)" >&2; exit 2; }
  done
}

# slug_of LAYER: the store directory extract writes for a layer ("last"/-1: the projection).
slug_of() { case "$1" in last|-1) echo post_projection ;; *) echo "post_mlp_residual_$1" ;; esac; }

# tag_of NAME: a directory-safe name for a model given by short name, hub id or path.
tag_of() { basename "$1" | tr -c 'A-Za-z0-9._\n-' '_'; }

# checkpoint_of TRAINER_DIR: the evaluated weights (ae_<SAVE_STEP>.pt when it exists, else ae.pt).
checkpoint_of() {
  local ck="$1/checkpoints/ae_${SAVE_STEP:-100000}.pt"
  if [ -f "$ck" ]; then echo "$ck"; else echo "$1/ae.pt"; fi
}

# trainers_of CHECKPOINTS_DIR: trainer_<i> directory names listed in run.json.
trainers_of() { "$PY" -c 'import json,sys; [print(t["dir"]) for t in json.load(open(sys.argv[1]))["identity"]["trainers"]]' "$1/run.json"; }
