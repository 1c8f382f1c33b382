# syntax=docker/dockerfile:1.7
# MRdIB images. One Dockerfile, three things to build:
#
#   docker build --target serve -t mrdib-serve .                      slim API image, no torch
#   docker build --target train -t mrdib-train .                      CPU torch: synth/train/export/retrain
#   docker build --target train --build-arg VARIANT=gpu -t mrdib-train-gpu .   CUDA torch, faiss-gpu, onnxruntime-gpu
#   docker build --target serve --build-arg VARIANT=gpu -t mrdib-serve-gpu .   GPU inference
#
# Every base image is pinned by tag; Python packages are pinned by deploy/constraints.txt (the versions
# CI tested), torch by TORCH_VERSION. Nothing secret is baked in: MRDIB_ADMIN_TOKEN and REDIS_URL come
# from the environment at run time. The containers run as the unprivileged user `mrdib` (uid 10001).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG VARIANT=cpu

# ---------------------------------------------------------------------------------------------------
# Bases: the CPU variant is the official slim Python image; the GPU variant is NVIDIA's CUDA runtime
# image with the distribution's Python (3.12 on Ubuntu 24.04; the project needs >= 3.11).
FROM ${PYTHON_IMAGE} AS base-cpu

FROM ${CUDA_IMAGE} AS base-gpu
# Pinning apt versions would break on every Ubuntu security update; the pinned base tag is the anchor.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/python3 /usr/local/bin/python

# hadolint ignore=DL3006
FROM base-${VARIANT} AS base
ARG VARIANT
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_CONSTRAINT=/tmp/constraints.txt \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    MRDIB_VARIANT=${VARIANT}
RUN groupadd --system --gid 10001 mrdib \
    && useradd --system --uid 10001 --gid mrdib --home-dir /var/lib/mrdib --shell /usr/sbin/nologin mrdib \
    && mkdir -p /var/lib/mrdib/artifacts /var/lib/mrdib/work /data/dataset \
    && chown -R mrdib:mrdib /var/lib/mrdib /data
WORKDIR /app

# ---------------------------------------------------------------------------------------------------
# Builders: a virtualenv in /opt/venv, copied whole into the final stages (no compilers, no pip cache).
FROM base AS builder-common
ARG VARIANT
ARG ONNXRUNTIME_GPU_VERSION=1.31.1
ARG FAISS_GPU_VERSION=1.14.1.post1
COPY deploy/constraints.txt /tmp/constraints.txt
COPY deploy/swap-gpu-wheels.sh /tmp/swap-gpu-wheels.sh
RUN python -m venv /opt/venv

FROM builder-common AS builder-serve
COPY pyproject.toml README.md* ./
COPY mrdib ./mrdib
COPY training ./training
COPY service ./service
# The constraints file pins the versions; hadolint cannot see it.
# hadolint ignore=DL3013
RUN pip install ".[serve]" \
    && sh /tmp/swap-gpu-wheels.sh "${VARIANT}" "${ONNXRUNTIME_GPU_VERSION}" "${FAISS_GPU_VERSION}"

FROM builder-common AS builder-train
ARG TORCH_VERSION=2.13.0
# Empty = the PyTorch index that matches VARIANT (CPU wheels, or CUDA 12.8 wheels). Override for a mirror.
ARG TORCH_INDEX_URL=""
RUN url="${TORCH_INDEX_URL}"; \
    if [ -z "$url" ]; then \
      if [ "${VARIANT}" = "gpu" ]; then url=https://download.pytorch.org/whl/cu128; \
      else url=https://download.pytorch.org/whl/cpu; fi; \
    fi; \
    pip install --index-url "$url" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md* ./
COPY mrdib ./mrdib
COPY training ./training
COPY service ./service
# serve is included so that the e2e retraining flow (train image) can also run the API for checks.
# hadolint ignore=DL3013
RUN pip install ".[train,serve]" \
    && sh /tmp/swap-gpu-wheels.sh "${VARIANT}" "${ONNXRUNTIME_GPU_VERSION}" "${FAISS_GPU_VERSION}"

# ---------------------------------------------------------------------------------------------------
# serve: the API. Reads artifacts (read-only is enough), writes nothing but logs.
FROM base AS serve
COPY --from=builder-serve /opt/venv /opt/venv
ENV MRDIB_ARTIFACTS=/var/lib/mrdib/artifacts \
    MRDIB_WAL_PATH=/var/lib/mrdib/work/events.wal.jsonl \
    MRDIB_PORT=8000 \
    MRDIB_WORKERS=1
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('MRDIB_PORT', '8000'), timeout=4)"]
CMD ["sh", "-c", "exec mrdib serve --artifacts \"$MRDIB_ARTIFACTS\" --host 0.0.0.0 --port \"$MRDIB_PORT\" --workers \"$MRDIB_WORKERS\""]

# ---------------------------------------------------------------------------------------------------
# train: one-shot training/publishing (deploy/train-and-publish.sh) and the scheduled retraining
# (deploy/retrain-cron.sh runs `mrdib retrain` under supercronic, a cron made for containers).
FROM base AS train
ARG SUPERCRONIC_VERSION=v0.2.33
ARG SUPERCRONIC_SHA1SUM=71b0d58cc53f6bd72cf2f293e09e294b79c666d8
# Python's urllib fetches the pinned release (no curl in the image); the checksum is checked before use.
COPY deploy/fetch-supercronic.py /tmp/fetch-supercronic.py
RUN python /tmp/fetch-supercronic.py "${SUPERCRONIC_VERSION}" "${SUPERCRONIC_SHA1SUM}" /usr/local/bin/supercronic \
    && rm /tmp/fetch-supercronic.py
COPY --from=builder-train /opt/venv /opt/venv
COPY deploy/train-and-publish.sh deploy/retrain-cron.sh deploy/crontab /app/deploy/
ENV MRDIB_ARTIFACTS=/var/lib/mrdib/artifacts \
    MRDIB_DATASET=/data/dataset \
    MRDIB_WORK=/var/lib/mrdib/work
USER 10001:10001
CMD ["/app/deploy/train-and-publish.sh"]
