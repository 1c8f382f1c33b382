#!/bin/sh
# Install the pinned torch into a Python environment, the CPU build by default: torch from the default index
# (PyPI) is the CUDA build on Linux, several GB of wheels a CPU-only machine never uses. quickstart.sh and
# .ci/run call this before installing the project, so that nothing later pulls torch from PyPI (pip keeps
# an installed torch that satisfies the project's `torch>=` requirement).
#
# Usage: install-torch.sh PYTHON            e.g. install-torch.sh .venv/bin/python
#   TORCH_VERSION      torch version                                  [2.13.0]
#   TORCH_INDEX_URL    index to take torch from                       [https://download.pytorch.org/whl/cpu]
#                      e.g. https://download.pytorch.org/whl/cu128 for the CUDA 12.8 build, or a mirror;
#                      set it empty to use pip's own configuration (index-url/find-links) only
#   TORCH_PIP_RETRIES  pip --retries for that index                   [0]
#   TORCH_PIP_TIMEOUT  pip --timeout (seconds per socket operation)   [15]
#
# Why no retries by default: pip's other sources (its configuration's find-links and extra-index-url, a
# local wheelhouse) are still searched when the index cannot be reached, so a machine without internet
# but with a configured wheelhouse falls back to it at once instead of spending pip's 5 retries (measured:
# ~8 s of retry warnings); a machine with internet downloads from the index as usual.
set -eu
py=${1:?usage: install-torch.sh PYTHON}
version=${TORCH_VERSION:-2.13.0}
url=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}
if [ -n "$url" ]; then
  set -- --index-url "$url" --retries "${TORCH_PIP_RETRIES:-0}" --timeout "${TORCH_PIP_TIMEOUT:-15}"
else
  set --
fi
echo "install-torch: torch==$version from ${url:-pip's configured sources}" >&2
"$py" -m pip install -q "$@" "torch==$version"
