# Every target creates .venv and installs what it needs, so a fresh clone works with plain `make demo` / `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch==2.13.0 is a CPU wheel on this machine's disk; an unpinned torch would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: install test demo demo-full bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# BPTT vs GTF on the 2-D PLRNN teacher with the BifurcationMonitor attached (3 seeds each, a few minutes on a
# laptop CPU); prints the comparison table and the tensorboard command.  `bifurcation-callback demo --fast` is the
# one-minute version.
demo: $(STAMP)
	$(VENV)/bin/bifurcation-callback demo

bench: $(STAMP)
	$(PY) benchmarks/bench_finder.py

clean:
	rm -rf $(VENV) lightning_logs .pytest_cache
