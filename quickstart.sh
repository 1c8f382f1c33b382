#!/usr/bin/env bash
# The main job in one command: set up a virtualenv, generate the built-in synthetic catalogue,
# train FREEDOM+MRdIB on it (CPU is fine: about a minute on the default catalogue), export a
# versioned artifact and serve it on :8000.
#
# Environment knobs (all optional; relative paths are taken from the directory you run it in):
#   MRDIB_HOME      where data, runs, artifacts and logs go          (default: mrdib-home/ next to this script)
#   EPOCHS          training epoch budget (early stopping may end sooner) (default: 60)
#   PORT / HOST     where to serve                                  (default: 8000 / 127.0.0.1)
#   DATA            an MMRec-layout dataset folder to use instead of the synthetic catalogue
#   SYNTH_ARGS      extra `mrdib data synth` flags, e.g. "--users 200 --items 120 --interactions 4000"
#                   (used only when the catalogue is generated, i.e. MRDIB_HOME/data/synth is empty)
#   DEVICE          auto | cpu | cuda                               (default: auto)
#   NO_SERVE=1      stop after publishing the artifact
#   TORCH_INDEX_URL where the first install takes torch from (default: PyTorch's CPU wheels, so no multi-GB
#                   CUDA build is pulled; e.g. https://download.pytorch.org/whl/cu128 for CUDA; see
#                   deploy/install-torch.sh)
# An existing .venv/bin/mrdib (e.g. from `bash .ci/run`) is reused as is: nothing is reinstalled.
set -euo pipefail
CALLER_DIR=$PWD
cd "$(dirname "$0")"

# Relative paths mean "relative to where the user ran the script", not to the repository.
absolute() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$CALLER_DIR/$1" ;; esac; }
HOME_DIR=$(absolute "${MRDIB_HOME:-$PWD/mrdib-home}")
EPOCHS=${EPOCHS:-60}
PORT=${PORT:-8000}
HOST=${HOST:-127.0.0.1}
DEVICE=${DEVICE:-auto}
mkdir -p "$HOME_DIR"

if [ ! -x .venv/bin/mrdib ]; then
  echo "==> installing into .venv (CPU torch first, so no CUDA build is pulled)"
  ${PYTHON:-python3} -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  sh deploy/install-torch.sh .venv/bin/python   # the CPU build, from TORCH_INDEX_URL
  .venv/bin/python -m pip install -q -e ".[train,serve]"
fi
MRDIB=.venv/bin/mrdib

if [ -n "${DATA:-}" ]; then
  DATA_DIR=$(absolute "$DATA")
else
  DATA_DIR=$HOME_DIR/data/synth
  if ! ls "$DATA_DIR"/*.inter >/dev/null 2>&1; then
    echo "==> generating the built-in synthetic catalogue in $DATA_DIR"
    # shellcheck disable=SC2086  # SYNTH_ARGS is a word list on purpose
    $MRDIB data synth --out "$DATA_DIR" ${SYNTH_ARGS:-}
  fi
fi
$MRDIB data inspect "$DATA_DIR"

RUN_DIR=$HOME_DIR/runs/$(date -u +%Y%m%dT%H%M%SZ)
echo "==> training FREEDOM+MRdIB into $RUN_DIR"
$MRDIB train --data "$DATA_DIR" --backbone freedom --mrdib --epochs "$EPOCHS" --device "$DEVICE" --out "$RUN_DIR"

echo "==> exporting to $HOME_DIR/artifacts"
$MRDIB export --checkpoint "$RUN_DIR" --out "$HOME_DIR/artifacts"
$MRDIB artifact verify "$HOME_DIR/artifacts/current"

if [ "${NO_SERVE:-0}" = "1" ]; then
  echo "==> published $(cat "$HOME_DIR/artifacts/current") (NO_SERVE=1: not serving)"
  exit 0
fi
echo "==> serving on http://$HOST:$PORT (demo page: http://$HOST:$PORT/ui, API docs: /docs; logs: stdout; artifacts: $HOME_DIR/artifacts)"
export MRDIB_WAL_PATH=${MRDIB_WAL_PATH:-$HOME_DIR/events.wal.jsonl}
exec $MRDIB serve --artifacts "$HOME_DIR/artifacts" --host "$HOST" --port "$PORT"
