# Every target creates .venv and installs what it needs, so a fresh clone works with plain `make demo` / `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch==2.13.0 is a CPU wheel on this machine's disk; an unpinned torch would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: install test test-fast demo bench browser-deps docs docs-figures clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

DOCS_STAMP := $(VENV)/.docs-installed
# apt-get needs root; elsewhere it goes through sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q $(TORCH_PIN)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# The full suite, as CI runs it.  It includes TensorBoard-in-Chromium and docs-site-in-Chromium tests, so test
# installs the browser (browser-deps) and the docs extra (the site is built and its formulas checked offline).
test: $(STAMP) $(DOCS_STAMP) browser-deps
	$(PY) -m pytest -q

# The quick loop: the suite without the tests marked slow or browser (make test runs everything).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not browser"

# BPTT vs GTF on the 2-D PLRNN teacher with the BifurcationMonitor attached (3 seeds each, about 2 minutes on a
# 2-core CPU); prints the comparison table and the tensorboard command.  `bifurcation-callback demo --fast` is a
# seconds-long smoke test.
demo: $(STAMP)
	$(VENV)/bin/bifurcation-callback demo

# Speed checks (not tests): ratios against baselines measured in the same run; results in docs/benchmarks.md.
bench: $(STAMP)
	$(PY) benchmarks/bench_finder.py
	$(PY) benchmarks/bench_scan.py
	$(PY) benchmarks/bench_monitor.py

# Headless Chromium for tests/test_dashboard_browser.py (Debian/Ubuntu packages); .ci/run calls this before `make test`.
browser-deps:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then \
		echo "chromium and chromedriver are installed"; \
	else \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; \
	fi

$(DOCS_STAMP): pyproject.toml | $(STAMP)
	$(PY) -m pip install -q -e ".[docs]"
	touch $(DOCS_STAMP)

# The documentation site in site/; --strict turns every mkdocs / mkdocstrings warning into an error.  MathJax comes
# from the docs extra and ships inside site/, so the formulas render offline (file:// pages too).
# NO_MKDOCS_2_WARNING silences mkdocs-material's end-of-life banner (a notice about the theme, not about the docs).
docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# Regenerate the committed pictures: package figures (docs/gen_figures.py) and the TensorBoard screenshots.
docs-figures: $(STAMP) browser-deps
	$(PY) docs/gen_figures.py
	UPDATE_DOCS_SCREENSHOT=1 $(PY) -m pytest -q tests/test_dashboard_browser.py

clean:
	rm -rf $(VENV) lightning_logs .pytest_cache site runs example_out
