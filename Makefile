# `make test` and `make demo` are all a newcomer needs: both build .venv from nothing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# A 4.x ffmpeg for the compatibility tests: imageio-ffmpeg wheels up to 0.5.1 bundle
# 4.2.2, the oldest build paddock supports (standing for Ubuntu 20.04/22.04's 4.x).
FFMPEG42 := $(VENV)/ffmpeg-4.2

.PHONY: test test-slow test-all test-fast demo install clean bench

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch 2.13.0 first: on these machines it is a local CPU build; a bare
	# `torch` would pull several GB of CUDA packages.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps --target $(FFMPEG42) imageio-ffmpeg==0.5.1
	touch $(STAMP)

install: $(STAMP)

# The everyday suite: everything but the slow tier (tests/conftest.py says what is slow, and why).
test: $(STAMP)
	$(PY) -m pytest -q --durations=15 -m "not slow" tests

# The slow tier: CLI subprocesses, Ray Jobs, TP rank groups, a multi-node cluster, the browser,
# kill and fault campaigns. CI runs it after `make test`.
test-slow: $(STAMP)
	$(PY) -m pytest -q --durations=15 -m slow tests

test-all: test test-slow

test-fast: $(STAMP)
	$(PY) -m pytest -q tests/unit

demo: $(STAMP)
	$(PY) -m jobs.cli run examples/briefs.parquet --dam ./dam --workdir ./work

clean:
	rm -rf $(VENV) dam work .pytest_cache
