# Everyday commands. `make help` lists them.
#
# Every package is installed at its version in requirements.lock (see `make lock`). The virtual
# environment is (re)installed only when the lock or pyproject.toml changes: each install leaves
# a stamp named after their checksums, so a second `make serve` or `make test` goes straight
# to work.

PYTHON ?= python3
# `make serve GPU=1`: ONNX Runtime's CUDA build, in an environment of its own (.venv-gpu: the CPU
# and CUDA builds of onnxruntime cannot share one), with CUDA required rather than hoped for.
# FP16=1 serves the float16 variant. CUDA 13 and cuDNN 9 come with it as pip wheels (the `gpu`
# extra), so the host needs only an NVIDIA driver >= 580 (docs/troubleshooting.md).
GPU ?=
FP16 ?=
ifneq ($(filter-out 1,$(GPU) $(FP16)),)
$(error GPU and FP16 are 1 or empty, not '$(GPU)$(FP16)')
endif
ifneq ($(and $(GPU),$(filter-out serve export,$(MAKECMDGOALS))),)
$(error GPU=1 is for `make serve` and `make export`; tests and tools run in .venv)
endif
ifeq ($(GPU),1)
VENV := .venv-gpu
SERVE_EXTRAS := gpu,export
SERVE_ENV := SWIN_PROVIDERS=$${SWIN_PROVIDERS:-cuda}
else
VENV := .venv
SERVE_EXTRAS := serve,openvino,export
SERVE_ENV :=
endif
PY := $(VENV)/bin/python
LOCK := requirements.lock

VARIANT ?= swin_tiny_patch4_window7_224
CHECKPOINT ?= auto
EXPORT_ARGS ?=
IMG_SIZE ?=
# The file the exporter writes for these variables: an input size of its own is in the name.
MODEL := artefacts/$(VARIANT)$(if $(IMG_SIZE),_$(IMG_SIZE))$(if $(FP16),.fp16).onnx
SERVE_EXPORT_ARGS := $(if $(FP16),--fp16)$(if $(IMG_SIZE), --img-size $(IMG_SIZE))
PYTEST_ARGS ?=

# torch is locked as its small CPU build. deploy/install-locked takes it from TORCH_INDEX_URL
# when set, else from a local wheel when pip is configured with one, else the PyTorch CPU index.
TORCH_INDEX_URL ?=
export TORCH_INDEX_URL
INSTALL := deploy/install-locked $(PY)

DOCKER ?= docker
IMAGE ?= swin-serve
DOCKER_BUILD_ARGS ?=

HASH := $(firstword $(shell cat pyproject.toml $(LOCK) | cksum))
SERVE_STAMP := $(VENV)/.installed-serve-$(HASH)
DEV_STAMP := $(VENV)/.installed-dev-$(HASH)
BENCH_STAMP := $(VENV)/.installed-bench-$(HASH)

.DEFAULT_GOAL := help
.PHONY: help serve test export lint format lock proto bench bench-swap bench-tracing soak docker docker-cpu clean distclean

# The variables `make help` lists, each with what it does (`make VAR=value target`).
DOCKER_MODEL_ARGS := VARIANT WEIGHTS NUM_CLASSES LABELS IMG_SIZE FP16 TRUST_CHECKPOINT
HELP_VARIABLES := PYTHON GPU FP16 VARIANT CHECKPOINT EXPORT_ARGS PYTEST_ARGS BENCH_ARGS SOAK_MINUTES \
  PACKAGE TORCH_INDEX_URL DOCKER IMAGE DOCKER_BUILD_ARGS $(DOCKER_MODEL_ARGS)
HELP_PYTHON := the Python 3.11+ that creates .venv
HELP_GPU := 1: make serve/export with ONNX Runtime's CUDA build, in .venv-gpu
HELP_FP16 := 1: serve (and export) the float16 model, with GPU=1
HELP_IMG_SIZE := make serve/export/docker: the preset at another input size (as the checkpoint's)
HELP_VARIANT := the preset make serve, make export and make docker use
HELP_CHECKPOINT := weights: auto, official, random, a path or a URL
HELP_EXPORT_ARGS := more swin-export options, e.g. --labels classes.txt --int8
HELP_PYTEST_ARGS := options for make test's pytest, e.g. -x tests/server
HELP_BENCH_ARGS := options for make bench, e.g. --quick
HELP_SOAK_MINUTES := how long make soak runs (default 10)
HELP_PACKAGE := make lock: upgrade only this package
HELP_TORCH_INDEX_URL := where torch's CPU build comes from (empty: a local wheel, else PyTorch's)
HELP_DOCKER := the container command of make docker
HELP_IMAGE := the image make docker builds
HELP_DOCKER_BUILD_ARGS := more docker build options
HELP_WEIGHTS := make docker: the weights baked in (official, random, auto, a path or a URL)
HELP_NUM_CLASSES := make docker: the head size (default: the checkpoint's own)
HELP_LABELS := make docker: a class-names file in the project folder
HELP_TRUST_CHECKPOINT := make docker: 1 allows a pickle holding Python objects (runs its code)
# A value shown in single quotes, so that the shell prints it as it is, quotes and backticks too.
quoted = '$(subst ','\'',$(1))'

help: ## list the targets and the variables they take
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'
	@echo "Variables (make VAR=value TARGET), with their values now:"
	@$(foreach v,$(sort $(HELP_VARIABLES)),printf '  %-40s %s\n' $(call quoted,$(v)=$($(v))) $(call quoted,$(HELP_$(v)));)

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "error: Python 3.11 or newer is needed; '$(PYTHON)' is $$($(PYTHON) --version 2>&1)." >&2; \
	  echo "       Install it, or point make at one: make PYTHON=python3.12 ..." >&2; exit 1; }
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "error: '$(PYTHON) -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv" >&2; exit 1; }

# Each install is a superset of the one before (serve < dev < bench) and leaves the stamps of
# the smaller ones too.
$(SERVE_STAMP): | $(PY)
	@if [ -f $(DEV_STAMP) ]; then touch $@; else \
	  rm -f $(VENV)/.installed-* && $(INSTALL) $(SERVE_EXTRAS) && touch $@; fi

$(DEV_STAMP): | $(PY)
	rm -f $(VENV)/.installed-*
	$(INSTALL) serve,openvino,export,dev
	touch $@ $(SERVE_STAMP)

$(BENCH_STAMP): | $(PY)
	rm -f $(VENV)/.installed-*
	$(INSTALL) serve,openvino,export,dev,bench
	touch $@ $(DEV_STAMP) $(SERVE_STAMP)

serve: $(SERVE_STAMP) ## install, export the default model if missing, serve on :8000
	@if [ ! -f $(MODEL) ] && [ -n "$(FP16)" ] && [ -f artefacts/$(VARIANT).onnx ]; then \
	  echo "error: $(MODEL) is missing beside artefacts/$(VARIANT).onnx; export both from your" \
	    "weights: make export CHECKPOINT=... EXPORT_ARGS=--fp16" >&2; exit 1; fi
	@test -f $(MODEL) || $(VENV)/bin/swin-export --variant $(VARIANT) --checkpoint $(CHECKPOINT) --out artefacts/$(if $(SERVE_EXPORT_ARGS), $(SERVE_EXPORT_ARGS))
	@echo "Loading $${SWIN_MODEL_PATH:-$(MODEL)}; the server logs its URLs once it is ready."
	SWIN_MODEL_PATH=$${SWIN_MODEL_PATH:-$(MODEL)} $(SERVE_ENV) $(VENV)/bin/swin-serve

test: $(DEV_STAMP) ## install (with dev tools) and run the whole test suite
	$(PY) -m pytest $(PYTEST_ARGS)

export: $(SERVE_STAMP) ## export VARIANT with CHECKPOINT (auto|official|random|PATH) to artefacts/
	$(VENV)/bin/swin-export --variant $(VARIANT) --checkpoint $(CHECKPOINT) --out artefacts/$(if $(IMG_SIZE), --img-size $(IMG_SIZE)) $(EXPORT_ARGS)

lint: $(DEV_STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(DEV_STAMP) ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Resolves pyproject.toml's requirements (every extra) to the newest releases they allow, on
# CPython 3.11 (the Docker image's), and records the digest of pyproject.toml's dependency tables
# in the lock, on Linux x86_64 (where torch has a +cpu build). torch's CPU build comes from
# TORCH_INDEX_URL when set, else a local wheel, else the PyTorch CPU index. PACKAGE=name upgrades
# only that package.
lock: | $(PY) ## re-resolve requirements.lock after a change to pyproject.toml's dependencies
	@$(PY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { \
	  echo "error: the lock is resolved on CPython 3.11; make distclean, then make lock PYTHON=python3.11" >&2; exit 1; }
	@[ "$$(uname -sm)" = "Linux x86_64" ] || { \
	  echo "error: the lock is resolved on Linux x86_64, where torch has its +cpu build; run make lock there" >&2; exit 1; }
	$(PY) -m pip install -q --constraint $(LOCK) pip-tools
	@torch=$$(grep -E '^torch==' $(LOCK) | cut -d' ' -f1); index=$$(deploy/torch-source $(PY) "$$torch"); \
	  set -x; $(PY) -m piptools compile --quiet --all-extras --strip-extras --allow-unsafe \
	    --no-emit-index-url --no-emit-find-links --newline=LF $${index:+--extra-index-url $$index} \
	    $(if $(PACKAGE),--upgrade-package $(PACKAGE),--upgrade) --output-file $(LOCK) pyproject.toml
	$(PY) deploy/requirements.py --stamp $(LOCK)
	@echo "$(LOCK) updated: commit it with the change to pyproject.toml that needed it"

proto: $(DEV_STAMP) ## recompile src/swin_serve/server/v2/open_inference.proto into the descriptor the server loads
	$(PY) -m grpc_tools.protoc -I src/swin_serve/server/v2 --descriptor_set_out=src/swin_serve/server/v2/open_inference.binpb open_inference.proto

bench: $(BENCH_STAMP) ## run the benchmark suite (writes bench/results/; BENCH_ARGS=--quick: smoke run)
	@command -v wrk >/dev/null || { echo "installing wrk, the HTTP load generator"; \
	  sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  if command -v apt-get >/dev/null; then \
	    $$sudo apt-get install -y wrk || { $$sudo apt-get update && $$sudo apt-get install -y wrk; }; \
	  else echo "error: wrk is needed: brew install wrk, dnf install wrk, ..." >&2; exit 1; fi; }
	$(PY) -m bench $(BENCH_ARGS)

bench-swap: $(BENCH_STAMP) ## a model swap under load, and memory per model (writes bench/results/swap.*)
	$(PY) -m bench swap $(BENCH_ARGS)

bench-tracing: $(BENCH_STAMP) ## tracing's cost: c=16 with OpenTelemetry off and on (writes bench/results/tracing.*)
	$(PY) -m bench tracing $(BENCH_ARGS)

soak: $(BENCH_STAMP) ## long-running load and memory soak test
	@test -f $(MODEL) || $(VENV)/bin/swin-export --variant $(VARIANT) --checkpoint $(CHECKPOINT) --out artefacts/
	$(PY) -m bench soak --model $(MODEL) --minutes $${SOAK_MINUTES:-10}

docker: ## build the GPU image (VARIANT, WEIGHTS, NUM_CLASSES, LABELS, IMG_SIZE, FP16, TRUST_CHECKPOINT reach the export)
	$(DOCKER) build $(strip $(foreach a,$(DOCKER_MODEL_ARGS),$(if $($(a)),--build-arg '$(a)=$($(a))'))) $(DOCKER_BUILD_ARGS) -t $(IMAGE) .

docker-cpu: ## build the CPU-only image (the same build arguments as docker)
	$(DOCKER) build $(strip $(foreach a,$(DOCKER_MODEL_ARGS),$(if $($(a)),--build-arg '$(a)=$($(a))'))) $(DOCKER_BUILD_ARGS) --target cpu -t $(IMAGE):cpu .

clean: ## remove caches and build outputs (keeps .venv and artefacts/)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . \( -path ./.venv -o -path ./.venv-gpu \) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean ## also remove .venv, .venv-gpu, .venv-checkov and artefacts/
	rm -rf .venv .venv-gpu .venv-checkov artefacts
