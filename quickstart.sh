#!/usr/bin/env bash
# The main job in one command: set up a virtualenv, generate the built-in synthetic catalogue,
# train FREEDOM+MRdIB on it (CPU is fine), export a versioned artifact and serve it on :8000.
#
# Environment knobs (all optional):
#   MRDIB_HOME      where data, runs, artifacts and logs go          (default: ./mrdib-home)
#   EPOCHS          training epoch budget (early stopping may end sooner) (default: 60)
#   PORT / HOST     where to serve                                  (default: 8000 / 127.0.0.1)
#   DATA            an MMRec-layout dataset folder to use instead of the synthetic catalogue
#   DEVICE          auto | cpu | cuda                               (default: auto)
#   NO_SERVE=1      stop after publishing the artifact
set -euo pipefail
cd "$(dirname "$0")"

HOME_DIR=${MRDIB_HOME:-$PWD/mrdib-home}
EPOCHS=${EPOCHS:-60}
PORT=${PORT:-8000}
HOST=${HOST:-127.0.0.1}
DEVICE=${DEVICE:-auto}
mkdir -p "$HOME_DIR/logs"

if [ ! -x .venv/bin/mrdib ]; then
  echo "==> installing into .venv (CPU torch first, so no CUDA build is pulled)"
  ${PYTHON:-python3} -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e ".[train,serve]"
fi
MRDIB=.venv/bin/mrdib

DATA_DIR=${DATA:-$HOME_DIR/data/synth}
if [ -z "${DATA:-}" ] && [ ! -f "$DATA_DIR/synth.inter" ]; then
  echo "==> generating the built-in synthetic catalogue in $DATA_DIR"
  $MRDIB data synth --out "$DATA_DIR"
fi
$MRDIB data inspect "$DATA_DIR"

RUN_DIR=$HOME_DIR/runs/$(date -u +%Y%m%dT%H%M%SZ)
echo "==> training FREEDOM+MRdIB into $RUN_DIR"
$MRDIB train --data "$DATA_DIR" --backbone freedom --mrdib --epochs "$EPOCHS" --device "$DEVICE" --out "$RUN_DIR"

echo "==> exporting to $HOME_DIR/artifacts"
$MRDIB export --checkpoint "$RUN_DIR" --out "$HOME_DIR/artifacts"
$MRDIB artifact verify "$HOME_DIR/artifacts/current"

[ "${NO_SERVE:-0}" = "1" ] && exit 0
echo "==> serving on http://$HOST:$PORT (logs: stdout; artifacts: $HOME_DIR/artifacts)"
export MRDIB_WAL_PATH=${MRDIB_WAL_PATH:-$HOME_DIR/events.wal.jsonl}
exec $MRDIB serve --artifacts "$HOME_DIR/artifacts" --host "$HOST" --port "$PORT"
