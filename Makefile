# Two commands for a fresh machine (see README.md):
#   make demo   set up, then run the main job
#   make test   set up, then run the whole test suite (what CI runs)

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo demo-model test lint format benchmark clean

setup: $(STAMP)

# torch goes in first, on its own: installed alongside transformers, pip would
# resolve it to a CUDA build and pull gigabytes of packages.
$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[interop,test,notebooks,sweeps,serve]'
	touch $(STAMP)

# Prompt-tunes the shipped demo T5 on the WordNet task and prints the comparison table (minutes, on a CPU).
demo: $(STAMP)
	$(PY) -m prompt_tuning.demo

# Rebuilds the shipped demo models and task from scratch (WordNet + King James Bible from Debian packages, then
# vocabulary, and for each of the demo family's three sizes pretraining, LM adaptation and their exports): see
# prompt_tuning/assets/demo_t5*/MODEL_CARD.md. Needs the two packages.
demo-model: $(STAMP)
	scripts/build_demo_model.sh

# Two workers, a whole file each at a time, handed out in the order tests/conftest.py sorts them (the longest files
# first, so that both workers finish together); the 25 slowest tests listed at the end.
test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=25 -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

benchmark: $(STAMP)
	$(PY) benchmarks/forward_backward.py
	$(PY) benchmarks/train_step.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
