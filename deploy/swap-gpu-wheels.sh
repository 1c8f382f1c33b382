#!/bin/sh
# Replace the CPU builds of onnxruntime and faiss with their CUDA builds in the image's venv.
# Why a swap instead of another extra: onnxruntime and onnxruntime-gpu (faiss-cpu and faiss-gpu-cu12)
# install the same Python module, so they must never sit side by side; the serve/train extras name the
# CPU builds, which is what every non-GPU install wants.
# Usage: swap-gpu-wheels.sh VARIANT ONNXRUNTIME_GPU_VERSION FAISS_GPU_VERSION   (a no-op unless VARIANT=gpu)
set -eu
variant=${1:?variant (cpu or gpu)}
ort_version=${2:?onnxruntime-gpu version}
faiss_version=${3:?faiss-gpu-cu12 version}
case "$variant" in
  cpu) exit 0 ;;
  gpu) ;;
  *) echo "swap-gpu-wheels.sh: unknown variant '$variant' (expected cpu or gpu)" >&2; exit 2 ;;
esac
pip uninstall -y onnxruntime faiss-cpu
pip install "onnxruntime-gpu==${ort_version}" "faiss-gpu-cu12==${faiss_version}"
python -c "import onnxruntime, faiss; print('onnxruntime', onnxruntime.__version__, 'faiss', faiss.__version__)"
