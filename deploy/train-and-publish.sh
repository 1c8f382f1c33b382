#!/bin/sh
# One-shot training: dataset -> checkpoint -> verified artifact published under the artifacts root.
#
# Used by the compose `trainer` service, the Kubernetes bootstrap Job and tests/test_ops_e2e.py, so the
# same commands run everywhere; they are quickstart.sh's (FREEDOM + MRdIB, the product's main model,
# about a minute on CPU for the built-in catalogue). Settings come from the environment (defaults in brackets):
#   MRDIB_ARTIFACTS   artifacts root to publish into              [/var/lib/mrdib/artifacts]
#   MRDIB_DATASET     MMRec dataset folder; when it holds no *.inter, the built-in synthetic catalogue
#                     is generated into it first                  [/data/dataset]
#   MRDIB_WORK        scratch space for the checkpoint            [/var/lib/mrdib/work]
#   MRDIB_BACKBONE    bpr | lightgcn | vbpr | freedom | mgcn      [freedom]
#   MRDIB_PLUGIN      1 = train with the MRdIB plug-in, 0 = without [1]
#   MRDIB_EPOCHS      maximum epochs (early stopping may end sooner) [60]
#   MRDIB_DEVICE      auto | cpu | cuda                           [auto]
#   MRDIB_SYNTH_PRESET  preset of the built-in catalogue          [small]
#   MRDIB_SYNTH_ARGS  extra arguments for `mrdib data synth`, e.g. "--users 200 --items 120" []
#   MRDIB_TRAIN_ARGS  extra arguments for `mrdib train`, e.g. "--batch-size 512 --seed 7" []
#   MRDIB_EXPORT_ARGS extra arguments for `mrdib export`, e.g. "--tower-epochs 20 --keep 3" []
#   MRDIB_FORCE_TRAIN 1 = train even when a model is already published [0]
# Leaves: the new version under MRDIB_ARTIFACTS (and `current` pointing to it), and its model weights in
# MRDIB_ARTIFACTS/retrain/checkpoints/<version>/ for the retraining's warm start; the checkpoint itself is scratch.
# Exit status: 0 published (or already published), non-zero = the failing step's status.
set -eu

artifacts=${MRDIB_ARTIFACTS:-/var/lib/mrdib/artifacts}
dataset=${MRDIB_DATASET:-/data/dataset}
work=${MRDIB_WORK:-/var/lib/mrdib/work}
backbone=${MRDIB_BACKBONE:-freedom}
epochs=${MRDIB_EPOCHS:-60}
device=${MRDIB_DEVICE:-auto}
preset=${MRDIB_SYNTH_PRESET:-small}
case "${MRDIB_PLUGIN:-1}" in
  1|true|yes) plugin=--mrdib ;;
  0|false|no) plugin=--no-mrdib ;;
  *) echo "train-and-publish: MRDIB_PLUGIN must be 1 or 0, got '${MRDIB_PLUGIN}'" >&2; exit 2 ;;
esac

log() { echo "train-and-publish: $*" >&2; }

# `docker compose up` runs this on every start: a published model means there is nothing to do, so the
# API starts at once instead of waiting for a retraining it did not ask for.
if [ -s "$artifacts/current" ] && [ "${MRDIB_FORCE_TRAIN:-0}" != 1 ]; then
  log "a model is already published ($(cat "$artifacts/current")); set MRDIB_FORCE_TRAIN=1 to train anyway"
  exit 0
fi

mkdir -p "$artifacts" "$work" "$dataset"
if ! ls "$dataset"/*.inter >/dev/null 2>&1; then
  log "no *.inter in $dataset: generating the built-in synthetic catalogue (preset $preset)"
  # shellcheck disable=SC2086  # MRDIB_SYNTH_ARGS is a word list on purpose
  mrdib data synth --out "$dataset" --preset "$preset" ${MRDIB_SYNTH_ARGS:-}
fi
mrdib data inspect "$dataset" >&2

checkpoint="$work/checkpoint-$(date -u +%Y%m%dT%H%M%SZ)-$$"
log "training $backbone ($plugin) on $dataset -> $checkpoint"
# shellcheck disable=SC2086  # MRDIB_TRAIN_ARGS is a word list on purpose
mrdib train --data "$dataset" --backbone "$backbone" "$plugin" --epochs "$epochs" --device "$device" \
  --out "$checkpoint" --no-progress ${MRDIB_TRAIN_ARGS:-}
log "exporting $checkpoint -> $artifacts"
# shellcheck disable=SC2086  # MRDIB_EXPORT_ARGS is a word list on purpose
mrdib export --checkpoint "$checkpoint" --out "$artifacts" ${MRDIB_EXPORT_ARGS:-}
version=$(cat "$artifacts/current")
mrdib artifact verify "$artifacts/$version"
# The weights stay where `mrdib retrain` looks for the served version's checkpoint, so that the first nightly
# retraining is warm-started from this model too (every retraining keeps its own there the same way).
mkdir -p "$artifacts/retrain/checkpoints/$version"
cp "$checkpoint/model.safetensors" "$artifacts/retrain/checkpoints/$version/model.safetensors"
log "published $version"
rm -rf "$checkpoint"
