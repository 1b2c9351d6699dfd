# `make run` and `make test` each build .venv from nothing when it is missing or stale.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# A torch/torchvision pair known to match (timm imports torchvision); a preinstalled matching pair is kept.
TORCH_PAIR ?= torch==2.14.1 torchvision==0.29.1
# On a machine whose system Python already holds a CUDA torch: make VENV_FLAGS=--system-site-packages
VENV_FLAGS ?=

.PHONY: run test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PY) -c "import torch, torchvision, torchvision.ops" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PAIR)
	$(PY) -m pip install -q -e ".[dev,clip,serve,server,cluster]"  # clip, serve: the tests run the optional CLIP text path and exports too; server: `zenml login --local`; cluster: the cluster stack test registers its flavors
	cd $(CURDIR) && $(VENV)/bin/zenml init  # the ZenML repository at the project root: `zenml` finds it from any folder below
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m pipelines.semi_supervised_benchmark

test: $(STAMP)
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) runs outputs mlruns mlflow.db mlartifacts .zen .pytest_cache
