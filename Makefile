# Everyday commands. `make help` lists them.
#
# The virtual environment is (re)installed only when pyproject.toml changes: each install
# leaves a stamp named after a checksum of pyproject.toml, so a second `make serve` or
# `make test` goes straight to work.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

VARIANT ?= swin_tiny_patch4_window7_224
CHECKPOINT ?= auto
EXPORT_ARGS ?=
MODEL := models/$(VARIANT).onnx
PYTEST_ARGS ?=

# pip normally finds torch on PyPI, whose Linux wheel pulls in the CUDA libraries (GBs).
# On a CPU-only machine, `make serve TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu`
# fetches the small CPU build instead.
TORCH_INDEX_URL ?=
PIP_INSTALL := $(PY) -m pip install $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL))

DOCKER ?= docker
IMAGE ?= swin-serve
DOCKER_BUILD_ARGS ?=

HASH := $(firstword $(shell cksum pyproject.toml))
SERVE_STAMP := $(VENV)/.installed-serve-$(HASH)
DEV_STAMP := $(VENV)/.installed-dev-$(HASH)
BENCH_STAMP := $(VENV)/.installed-bench-$(HASH)

.DEFAULT_GOAL := help
.PHONY: help serve test export lint format bench soak docker docker-cpu clean distclean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "error: Python 3.11 or newer is needed; '$(PYTHON)' is $$($(PYTHON) --version 2>&1)." >&2; \
	  echo "       Install it, or point make at one: make PYTHON=python3.12 ..." >&2; exit 1; }
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "error: '$(PYTHON) -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv" >&2; exit 1; }
	$(PY) -m pip install -q --upgrade pip

# Each install is a superset of the one before (serve < dev < bench) and leaves the stamps of
# the smaller ones too.
$(SERVE_STAMP): | $(PY)
	@if [ -f $(DEV_STAMP) ]; then touch $@; else \
	  rm -f $(VENV)/.installed-* && $(PIP_INSTALL) -e '.[serve,export]' && touch $@; fi

$(DEV_STAMP): | $(PY)
	rm -f $(VENV)/.installed-*
	$(PIP_INSTALL) -e '.[serve,export,dev]'
	touch $@ $(SERVE_STAMP)

$(BENCH_STAMP): | $(PY)
	rm -f $(VENV)/.installed-*
	$(PIP_INSTALL) -e '.[serve,export,dev,bench]'
	touch $@ $(DEV_STAMP) $(SERVE_STAMP)

serve: $(SERVE_STAMP) ## install, export the default model if missing, serve on :8000
	@test -f $(MODEL) || $(PY) -m export --variant $(VARIANT) --checkpoint $(CHECKPOINT) --out models/
	@port=$${SWIN_PORT:-8000}; echo; echo "Serving $(MODEL). Try:"; \
	  echo "  http://127.0.0.1:$$port/            (web page)"; \
	  echo "  http://127.0.0.1:$$port/docs        (OpenAPI)"; \
	  echo "  curl http://127.0.0.1:$$port/readyz"; \
	  echo "  curl -F file=@../shared/images/flower.jpg http://127.0.0.1:$$port/classify"; echo
	SWIN_MODEL_PATH=$${SWIN_MODEL_PATH:-$(MODEL)} $(PY) -m service

test: $(DEV_STAMP) ## install (with dev tools) and run the whole test suite
	$(PY) -m pytest $(PYTEST_ARGS)

export: $(SERVE_STAMP) ## export VARIANT with CHECKPOINT (auto|official|random|PATH) to models/
	$(PY) -m export --variant $(VARIANT) --checkpoint $(CHECKPOINT) --out models/ $(EXPORT_ARGS)

lint: $(DEV_STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(DEV_STAMP) ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(BENCH_STAMP) ## run the benchmark suite (writes bench/results/; BENCH_ARGS=--quick: smoke run)
	@command -v wrk >/dev/null || { echo "installing wrk, the HTTP load generator"; \
	  sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  if command -v apt-get >/dev/null; then \
	    $$sudo apt-get install -y wrk || { $$sudo apt-get update && $$sudo apt-get install -y wrk; }; \
	  else echo "error: wrk is needed: brew install wrk, dnf install wrk, ..." >&2; exit 1; fi; }
	$(PY) -m bench $(BENCH_ARGS)

soak: $(BENCH_STAMP) ## long-running load and memory soak test
	@test -f $(MODEL) || $(PY) -m export --variant $(VARIANT) --checkpoint $(CHECKPOINT) --out models/
	$(PY) -m bench.soak --model $(MODEL) --minutes $${SOAK_MINUTES:-10}

docker: ## build the default (GPU) image
	$(DOCKER) build $(DOCKER_BUILD_ARGS) -t $(IMAGE) .

docker-cpu: ## build the CPU-only image
	$(DOCKER) build $(DOCKER_BUILD_ARGS) --target cpu -t $(IMAGE):cpu .

clean: ## remove caches and build outputs (keeps .venv and models/)
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean ## also remove .venv and models/
	rm -rf $(VENV) models
