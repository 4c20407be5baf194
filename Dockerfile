# syntax=docker/dockerfile:1
#
# The vlmops images: one hand-written multi-stage Dockerfile rather than BentoML's bentofile.yaml and
# `bentoml build`. A Bento packs one service with one entry point, while this one code base runs seven:
# `vlmops serve` of five services (embedding, captioning, vqa, grounding, search), `vlmops worker` for
# the two queues (celery, train), the `vlmops` CLI itself, and `mlflow server` for the bundled MLflow.
# And the cluster runs every container as uid 10001 on a read-only root filesystem, with only /tmp and
# /var/lib/vlmops writable, which the Dockerfile BentoML generates (user bentoml, uid 1034, state under
# its home) does not fit.
#
# Two final targets, one per kind of node (`make images` builds both and prints their tags):
#   cpu  python:3.11 slim on Debian bookworm, CPU torch: search, the celery worker, the CLI and the
#        bundled MLflow (and, in cpu-dev, everything)
#   gpu  nvidia/cuda base on Ubuntu 24.04 with the same CPython copied in (Ubuntu's glibc 2.39 is newer
#        than bookworm's 2.36, so binaries built on bookworm run there), CUDA torch: the four model
#        services and the trainer
# Every Python package comes from pyproject.toml at the versions requirements.lock pins (`make lock`);
# the gpu target adds requirements-cuda.lock, what only the CUDA build of torch needs. No weights are
# baked in: the services fetch model versions from the MLflow registry when they start.
#
# The CUDA base is `base` (the CUDA runtime and the NVIDIA_* settings the container toolkit reads), not
# `runtime`: the CUDA wheels of torch bring their own cuBLAS, cuDNN and NCCL, which `runtime` would
# duplicate by some gigabytes. Its CUDA version (13.0) is the one torch's wheel was built for; a build
# step checks that they agree. The host driver must support CUDA 13.0 (R580 or newer).

# ---- the interpreter, for every stage (CPython 3.11: pyproject's requires-python) ----------------------
FROM python:3.11.17-slim-bookworm AS python

# ---- the project's source: only what the wheel is built from (no tests, no benchmarks, no weights) ----
FROM scratch AS source
COPY pyproject.toml README.md /src/
COPY services /src/services
COPY workers /src/workers
COPY registry /src/registry
COPY infra /src/infra

# ---- a venv at /opt/vlmops/venv, the final stages copy it as it is -----------------------------------
FROM python AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/vlmops/venv/bin:$PATH
WORKDIR /src
COPY requirements.lock requirements-cuda.lock ./
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/vlmops/venv \
    && pip install --constraint requirements.lock pip setuptools

# CPU torch: the +cpu builds of the versions the lock pins, from PyTorch's CPU index (--no-deps: their
# dependencies come from PyPI in the next step; `torch==X` in the lock matches X+cpu). Then everything
# else the lock pins, wheels only; then the project, non-editable, with its s3 extra.
FROM builder AS venv-cpu
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --constraint requirements.lock --no-deps --index-url "$TORCH_CPU_INDEX" \
        "$(grep '^torch==' requirements.lock)+cpu" "$(grep '^torchvision==' requirements.lock)+cpu" \
    && pip install --constraint requirements.lock --only-binary :all: --requirement requirements.lock
COPY --from=source /src/ ./
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --constraint requirements.lock --only-binary :all: --no-build-isolation ".[s3]" \
    && pip check \
    && python -c "import torch; assert torch.version.cuda is None, torch.__version__"

# CUDA torch: PyPI's Linux wheel of torch is the CUDA build; requirements-cuda.lock pins the nvidia-*,
# cuda-* and triton wheels it pulls in.
FROM builder AS venv-gpu
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --constraint requirements.lock --constraint requirements-cuda.lock --only-binary :all: \
        --requirement requirements.lock --requirement requirements-cuda.lock
COPY --from=source /src/ ./
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --constraint requirements.lock --constraint requirements-cuda.lock --only-binary :all: \
        --no-build-isolation ".[s3]" \
    && pip check

# ---- cpu: search, the celery worker, the CLI, MLflow ----------------------------------------------------
FROM python AS cpu
ARG VERSION=dev
ARG SOURCE=https://github.com/vlmops/vlmops
LABEL org.opencontainers.image.title="vlmops-cpu" \
      org.opencontainers.image.description="vlmops on CPU: search, workers, CLI, MLflow server" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}"
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 vlmops \
    && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin vlmops \
    && install -d -o 10001 -g 10001 /var/lib/vlmops /var/lib/vlmops-jobs /var/lib/vlmops-blobs /var/lib/mlflow
COPY --from=venv-cpu /opt/vlmops/venv /opt/vlmops/venv
# Only /tmp and VLMOPS_HOME are writable in the cluster (emptyDirs; jobs and blobs are volumes): every
# home, cache and config folder a library writes to points into one of them. Model downloads go to
# VLMOPS_HOME (the larger emptyDir); the rest to /tmp, which every pod has (the MLflow pod has no
# VLMOPS_HOME), the torch compile caches included: importing torchvision creates the inductor cache
# folder, and a process fails at import where it cannot.
ENV PATH=/opt/vlmops/venv/bin:$PATH \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VLMOPS_HOME=/var/lib/vlmops \
    HOME=/tmp \
    XDG_CONFIG_HOME=/tmp/.config \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    BENTOML_HOME=/tmp/bentoml \
    HF_HOME=/var/lib/vlmops/huggingface \
    TORCH_HOME=/var/lib/vlmops/torch \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    TRITON_CACHE_DIR=/tmp/triton \
    BENTOML_DO_NOT_TRACK=true \
    DO_NOT_TRACK=true \
    HF_HUB_DISABLE_TELEMETRY=1
# not VLMOPS_HOME: `bentoml serve` puts its working directory on sys.path, which should not be writable
WORKDIR /opt/vlmops
USER 10001:10001
RUN vlmops --help > /dev/null
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["vlmops", "--help"]

# ---- gpu: the four model services and the trainer ------------------------------------------------------
FROM nvidia/cuda:13.0.2-base-ubuntu24.04 AS gpu
ARG VERSION=dev
ARG SOURCE=https://github.com/vlmops/vlmops
LABEL org.opencontainers.image.title="vlmops-gpu" \
      org.opencontainers.image.description="vlmops on CUDA: the model services and the trainer" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.version="${VERSION}"
# what the python image has besides CPython: the shared libraries its extension modules link against
# (Ubuntu 24.04's names; libnsl2 for nis, should it be built), ca-certificates, tzdata; and tini
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        ca-certificates netbase tzdata tini \
        libbz2-1.0 libdb5.3t64 libexpat1 libffi8 libgdbm6t64 libgdbm-compat4t64 liblzma5 libncursesw6 \
        libnsl2 libreadline8t64 libsqlite3-0 libssl3t64 libtinfo6 libuuid1 zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 vlmops \
    && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin vlmops \
    && install -d -o 10001 -g 10001 /var/lib/vlmops /var/lib/vlmops-jobs /var/lib/vlmops-blobs /var/lib/mlflow
COPY --from=python /usr/local/ /usr/local/
# every CPython extension module finds its libraries (tkinter excepted: the slim image drops Tk too)
RUN ldconfig \
    && ! find /usr/local/bin/python3.11 /usr/local/lib/python3.11/lib-dynload -name '*.so' -o -name 'python3.11' \
        | grep -v tkinter | xargs ldd | grep 'not found'
COPY --from=venv-gpu /opt/vlmops/venv /opt/vlmops/venv
ENV PATH=/opt/vlmops/venv/bin:$PATH \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VLMOPS_HOME=/var/lib/vlmops \
    HOME=/tmp \
    XDG_CONFIG_HOME=/tmp/.config \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    BENTOML_HOME=/tmp/bentoml \
    HF_HOME=/var/lib/vlmops/huggingface \
    TORCH_HOME=/var/lib/vlmops/torch \
    TORCHINDUCTOR_CACHE_DIR=/tmp/torchinductor \
    TRITON_CACHE_DIR=/tmp/triton \
    BENTOML_DO_NOT_TRACK=true \
    DO_NOT_TRACK=true \
    HF_HUB_DISABLE_TELEMETRY=1
WORKDIR /opt/vlmops
USER 10001:10001
# torch's CUDA build is the base image's CUDA version (CUDA_VERSION is set by the nvidia/cuda image)
RUN vlmops --help > /dev/null \
    && python -c "import os, torch; v = os.environ['CUDA_VERSION']; assert v.startswith(f'{torch.version.cuda}.'), v"
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["vlmops", "--help"]
