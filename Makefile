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

# Until the training demo lands, the demo finds the cycles of the paper's 2-D PLRNN (two 16-cycles, no 15-cycle).
demo: $(STAMP)
	$(VENV)/bin/bifurcation-callback find examples/models/plrnn_2d_16cycles.json --orders 1 2 15 16

bench: $(STAMP)
	$(PY) benchmarks/bench_finder.py

clean:
	rm -rf $(VENV) lightning_logs .pytest_cache
