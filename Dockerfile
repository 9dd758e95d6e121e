# Swin Transformer inference service.
#
#   docker build -t swin-serve .                        GPU runtime (the last stage, the default)
#   docker build --target cpu -t swin-serve:cpu .       CPU runtime
#
# Build arguments:
#   WEIGHTS=official|random|PATH   checkpoint for the export (PATH is inside the build context)
#   VARIANT=swin_tiny_patch4_window7_224
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu   extra index for the CPU-only torch;
#                                  set it empty (or to a mirror) on restricted networks
#   TORCH_FIND_LINKS=/build/wheels local wheels copied from the context's wheels/ folder
#
# Only the export stage has torch. The runtime stages get the verified ONNX model and the
# project's wheel from it, and install onnxruntime (cpu) or onnxruntime-gpu (gpu), never both.
# Every stage installs under requirements.lock (pip --constraint), so an image built next month
# holds the same releases as the one tested today.

ARG VARIANT=swin_tiny_patch4_window7_224

# ---------------------------------------------------------------------------------------------
FROM python:3.11-slim AS export
ARG VARIANT
ARG WEIGHTS=official
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_FIND_LINKS=/build/wheels
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /build

# Dependencies first, from pyproject.toml and the lock alone, so that the torch layer survives
# code changes.
COPY pyproject.toml requirements.lock ./
COPY deploy/requirements.py deploy/
COPY wheels/ wheels/
RUN python deploy/requirements.py serve export > /tmp/requirements.txt \
 && pip install --constraint requirements.lock pip \
 && pip install --constraint requirements.lock ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
        ${TORCH_FIND_LINKS:+--find-links "$TORCH_FIND_LINKS"} -r /tmp/requirements.txt

COPY . .
# The exporter checks ONNX Runtime against PyTorch itself and fails the build on a mismatch.
# The model is made read-only here: COPY --from keeps the mode, and a chmod in the runtime
# stage would store a second copy of the 100+ MB file in a new layer.
RUN python -m export --variant "$VARIANT" --checkpoint "$WEIGHTS" --out /build/models \
 && chmod 0444 /build/models/* \
 && pip wheel --no-deps --no-build-isolation -w /build/dist .

# ---------------------------------------------------------------------------------------------
FROM python:3.11-slim AS cpu
ARG VARIANT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    SWIN_HOST=0.0.0.0 SWIN_PORT=8000 \
    SWIN_MODEL_PATH=/app/models/${VARIANT}.onnx
WORKDIR /app

COPY pyproject.toml requirements.lock /tmp/deps/
COPY deploy/requirements.py /tmp/deps/deploy/
RUN python -m venv /opt/venv \
 && python /tmp/deps/deploy/requirements.py serve > /tmp/deps/requirements.txt \
 && pip install --constraint /tmp/deps/requirements.lock -r /tmp/deps/requirements.txt \
 && rm -rf /tmp/deps \
 && groupadd --system --gid 10001 swin \
 && useradd --system --uid 10001 --gid swin --no-create-home swin

COPY --from=export /build/dist/ /tmp/dist/
RUN pip install --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist
# Owned by root (COPY's default) with mode 0444: the service user can read it, never replace it.
COPY --from=export /build/models/ /app/models/

USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('SWIN_PORT', '8000'), timeout=4)"]
# Exec form: the server is PID 1 and receives SIGTERM directly, so it can drain.
CMD ["python", "-m", "service"]

# ---------------------------------------------------------------------------------------------
# onnxruntime-gpu 1.31 on PyPI is built against CUDA 13.0 and cuDNN 9 (its build info says
# cuda_version 13.0), so the base is the matching CUDA 13 + cuDNN 9 runtime image. The host
# needs an NVIDIA driver >= 580 and the NVIDIA Container Toolkit.
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04 AS gpu
ARG VARIANT
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    SWIN_HOST=0.0.0.0 SWIN_PORT=8000 SWIN_PROVIDERS=auto \
    SWIN_MODEL_PATH=/app/models/${VARIANT}.onnx
WORKDIR /app

# Ubuntu's python3 (3.12) in a venv; no compilers: every dependency ships as a wheel.
COPY pyproject.toml requirements.lock /tmp/deps/
COPY deploy/requirements.py /tmp/deps/deploy/
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv \
 && python /tmp/deps/deploy/requirements.py gpu > /tmp/deps/requirements.txt \
 && pip install --constraint /tmp/deps/requirements.lock -r /tmp/deps/requirements.txt \
 && rm -rf /tmp/deps \
 && groupadd --system --gid 10001 swin \
 && useradd --system --uid 10001 --gid swin --no-create-home swin

COPY --from=export /build/dist/ /tmp/dist/
RUN pip install --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist
COPY --from=export /build/models/ /app/models/

USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('SWIN_PORT', '8000'), timeout=4)"]
CMD ["python", "-m", "service"]
