# Swin Transformer inference service.
#
#   docker build -t swin-serve .                               GPU runtime with the model baked in
#                                                              (the last stage, the default)
#   docker build --target cpu -t swin-serve:cpu .              CPU runtime with the model baked in
#   docker build --target gpu-runtime -t swin-serve:gpu-runtime .   serve-only images: no model,
#   docker build --target cpu-runtime -t swin-serve:cpu-runtime .   no export stage, no torch;
#                                                              mount your own export at /models
#
# Build arguments of the export (each reaches `swin-export`; the optional ones only when set):
#   VARIANT=swin_tiny_patch4_window7_224   the preset to export
#   WEIGHTS=official|random|auto|URL|PATH  checkpoint (a PATH is inside the build context)
#   NUM_CLASSES=                           head size; empty: the checkpoint's (or the labels')
#   LABELS=                                labels file inside the build context (--labels)
#   IMG_SIZE=                              input side in pixels; empty: the preset's
#   FP16=                                  1: also write the float16 model, which the GPU image
#                                          then serves (--fp16)
#   TRUST_CHECKPOINT=                      1: allow a pickled checkpoint holding Python objects
#                                          besides tensors (runs its code; --trust-checkpoint)
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu   extra index for the CPU-only torch;
#                                          set it empty (or to a mirror) on restricted networks
#   TORCH_FIND_LINKS=/build/wheels         local wheels copied from the context's wheels/ folder
#
# Whatever the variant, size and precision, the baked model is served as /app/models/model.onnx
# (model.fp16.onnx with FP16): the server reads what the model is from the manifest in the ONNX
# metadata, never from the file name, so SWIN_MODEL_PATH is right for every combination.
#
# Only the export stage has torch. The runtime stages get the project's wheel from the wheel stage
# and the verified ONNX model from the export stage, and install onnxruntime (cpu) or
# onnxruntime-gpu with CUDA's and cuDNN's wheels (gpu), never both. Every stage is built on
# python:3.11-slim, the CPython the lock is resolved for, and installs under requirements.lock
# (pip --constraint), so an image built next month holds the same releases as the one tested today.

# ---------------------------------------------------------------------------------------------
# The project's wheel (pure Python). Its own stage, so that the serve-only images need no torch.
FROM python:3.11-slim AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /build
COPY pyproject.toml requirements.lock README.md LICENSE ./
COPY src/ src/
RUN pip install --constraint requirements.lock pip setuptools \
 && pip wheel --no-deps --no-build-isolation -w /build/dist .

# ---------------------------------------------------------------------------------------------
FROM python:3.11-slim AS export
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

# The project itself, from the wheel stage (its dependencies are above): the swin-export command.
COPY --from=wheel /build/dist/ /tmp/dist/
RUN pip install --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist

# The model's arguments are declared only now: a RUN sees every ARG declared before it, so
# another checkpoint or variant would otherwise rebuild the torch layer.
ARG VARIANT=swin_tiny_patch4_window7_224
ARG WEIGHTS=official
ARG NUM_CLASSES=
ARG LABELS=
ARG IMG_SIZE=
ARG FP16=
ARG TRUST_CHECKPOINT=
COPY . .
# Switches are 1 or empty, so that FP16=0 never exports (and serves) float16. A checkpoint or
# labels path outside the context (.dockerignore leaves out artefacts/, for one) fails here, with
# a hint. The exporter checks ONNX Runtime against PyTorch itself and fails the build on a
# mismatch. It writes to /tmp/export, and its files (NAME.onnx,
# NAME.json, NAME.fp16.onnx, ...) are renamed model.*: `mv -n` never overwrites, so rmdir fails
# the build if two files would have the same name. The model is made read-only here: COPY --from
# keeps the mode, and a chmod in the runtime stage would store a second copy of the 100+ MB file
# in a new layer.
RUN for switch in "FP16=$FP16" "TRUST_CHECKPOINT=$TRUST_CHECKPOINT"; do \
      case "${switch#*=}" in ""|1) ;; *) \
        echo "error: build argument $switch: set it to 1, or leave it empty" >&2; exit 2;; esac; \
    done \
 && for path in "WEIGHTS=$WEIGHTS" "LABELS=$LABELS"; do \
      case "${path#*=}" in ""|official|random|auto|*://*) ;; *) [ -e "${path#*=}" ] || { \
        echo "error: build argument $path: no such file in the build context (the project" \
             "folder, less what .dockerignore leaves out, such as artefacts/)" >&2; exit 2; };; esac; \
    done \
 && swin-export --variant "$VARIANT" --checkpoint "$WEIGHTS" --out /tmp/export \
        ${NUM_CLASSES:+--num-classes "$NUM_CLASSES"} ${IMG_SIZE:+--img-size "$IMG_SIZE"} \
        ${LABELS:+--labels "$LABELS"} ${FP16:+--fp16} ${TRUST_CHECKPOINT:+--trust-checkpoint} \
 && mkdir /build/models \
 && for f in /tmp/export/*; do name=${f##*/}; mv -n "$f" "/build/models/model.${name#*.}"; done \
 && rmdir /tmp/export \
 && chmod 0444 /build/models/* \
 && ls -l /build/models

# ---------------------------------------------------------------------------------------------
# Serve-only CPU image: the server and its dependencies, no model. Mount an export at /models and
# point SWIN_MODEL_PATH at it (docker-compose.byo.yml does both).
FROM python:3.11-slim AS cpu-runtime
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    SWIN_HOST=0.0.0.0 SWIN_PORT=8000 SWIN_GRPC_PORT=8001 \
    SWIN_MODEL_PATH=/models/swin_tiny_patch4_window7_224.onnx
WORKDIR /app

COPY pyproject.toml requirements.lock /tmp/deps/
COPY deploy/requirements.py /tmp/deps/deploy/
RUN python -m venv /opt/venv \
 && python /tmp/deps/deploy/requirements.py serve openvino > /tmp/deps/requirements.txt \
 && pip install --constraint /tmp/deps/requirements.lock -r /tmp/deps/requirements.txt \
 && rm -rf /tmp/deps \
 && groupadd --system --gid 10001 swin \
 && useradd --system --uid 10001 --gid swin --no-create-home swin

COPY --from=wheel /build/dist/ /tmp/dist/
RUN pip install --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist

USER 10001:10001
# The API (HTTP, with the Open Inference Protocol under /v2) and the protocol's gRPC endpoint.
EXPOSE 8000 8001
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('SWIN_PORT', '8000'), timeout=4)"]
# Exec form: the server is PID 1 and receives SIGTERM directly, so it can drain.
CMD ["swin-serve"]

# ---------------------------------------------------------------------------------------------
# The CPU image with the exported model baked in.
FROM cpu-runtime AS cpu
# Owned by root (COPY's default, whatever USER says) with mode 0444: the service user can read
# it, never replace it.
COPY --from=export /build/models/ /app/models/
ENV SWIN_MODEL_PATH=/app/models/model.onnx

# ---------------------------------------------------------------------------------------------
# Serve-only GPU image. onnxruntime-gpu 1.31 on PyPI is built for CUDA 13 and cuDNN 9; the `gpu`
# extra installs both as NVIDIA's wheels (nvidia-*, pinned by the lock), and the server loads them
# from there before it opens a CUDA session. So the base is the CPU stages' Python, not a CUDA
# image: the host provides only the driver (>= 580, CUDA 13's), which the NVIDIA Container Toolkit
# mounts into the container.
FROM python:3.11-slim AS gpu-runtime
# What the nvidia/cuda images declare for the NVIDIA Container Toolkit: every GPU and the
# driver's compute libraries where no GPU is requested explicitly, and a container that refuses
# to start on a driver older than CUDA 13 instead of serving on the CPU.
# Where some hosts (GKE's device plugin, for one) mount the driver's libraries, instead of
# registering them with the dynamic loader as the toolkit's hook does: the nvidia/cuda images'
# own paths.
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    NVIDIA_REQUIRE_CUDA=cuda>=13.0 \
    LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:/usr/local/nvidia/bin:$PATH \
    SWIN_HOST=0.0.0.0 SWIN_PORT=8000 SWIN_GRPC_PORT=8001 SWIN_PROVIDERS=auto \
    SWIN_MODEL_PATH=/models/swin_tiny_patch4_window7_224.onnx
WORKDIR /app

COPY pyproject.toml requirements.lock /tmp/deps/
COPY deploy/requirements.py /tmp/deps/deploy/
RUN python -m venv /opt/venv \
 && python /tmp/deps/deploy/requirements.py gpu > /tmp/deps/requirements.txt \
 && pip install --constraint /tmp/deps/requirements.lock -r /tmp/deps/requirements.txt \
 && rm -rf /tmp/deps \
 && groupadd --system --gid 10001 swin \
 && useradd --system --uid 10001 --gid swin --no-create-home swin

COPY --from=wheel /build/dist/ /tmp/dist/
RUN pip install --no-deps /tmp/dist/*.whl && rm -rf /tmp/dist

USER 10001:10001
# The API (HTTP, with the Open Inference Protocol under /v2) and the protocol's gRPC endpoint.
EXPOSE 8000 8001
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('SWIN_PORT', '8000'), timeout=4)"]
CMD ["swin-serve"]

# ---------------------------------------------------------------------------------------------
# The GPU image with the exported model baked in (the default target). Built with FP16=1 it
# serves the float16 model; SWIN_MODEL_PATH=/app/models/model.onnx serves the float32 one.
FROM gpu-runtime AS gpu
ARG FP16=
COPY --from=export /build/models/ /app/models/
ENV SWIN_MODEL_PATH=/app/models/model${FP16:+.fp16}.onnx
