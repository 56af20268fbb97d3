# Two commands matter: `make demo` and `make test`. Everything else is what they use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test lint unit integration binaries venv clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

# kube-apiserver, kubectl and etcd, built from the Go module proxy once and cached.
binaries: venv
	$(PY) tools/controlplane.py binaries

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

unit: venv
	$(PY) -m pytest tests/unit

integration: venv binaries
	$(PY) -m pytest tests/integration

test: venv binaries lint
	$(PY) -m pytest tests

demo: venv binaries
	$(PY) tools/demo.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
