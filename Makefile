# Quick start:  make demo   (virtualenv + install + compile/run/verify the bundled example)
#               make test   (the test suite)
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install conformance bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

# pytest's exit code 5 means "no tests collected": not a failure of the code under test.
test: $(STAMP)
	$(PY) -m pytest -n 2 -q || [ $$? -eq 5 ]

# Needs torch for exporting the models: $(PY) -m pip install torch==2.13.0
bench: $(STAMP)
	$(PY) benchmarks/latency.py

clean:
	rm -rf $(VENV) .pytest_cache *.lepton
