# Two commands matter: `make demo` and `make test`. Everything else is what they use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test lint unit integration e2e binaries chart-crds venv clean bench-sidecar bench-telemetry bench-api bench-engine bench-shutdown bench-operator

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

# The `bench` extra (APScheduler, the peer some benchmarks compare with), on top of the venv.
BENCH_STAMP := $(VENV)/.bench-$(shell cksum pyproject.toml | cut -d' ' -f1)
$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	rm -f $(VENV)/.bench-*
	touch $@

# kube-apiserver, kubectl, etcd and helm, built from the Go module proxy once and cached.
binaries: venv
	$(PY) tools/controlplane.py binaries
	$(PY) tools/helmtool.py

# The chart and the package (for `podcron validate`) ship copies of the CRD;
# tests/unit/test_chart_crds.py fails until they are refreshed.
chart-crds:
	cp crds/*.yaml helm/podcron/crds/
	cp crds/*.yaml operator/podcron/crds/

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

unit: venv
	$(PY) -m pytest tests/unit

integration: venv binaries
	$(PY) -m pytest tests/integration

# kind: a cluster from kind-config.yaml, the image, the chart (needs kind and Docker; else skipped).
e2e: venv binaries
	$(PY) -m pytest tests/e2e

test: venv binaries lint
	$(PY) -m pytest tests

demo: venv binaries
	$(PY) tools/demo.py

# GET /_sys/job under wrk (Debian's package, installed when missing), plain and gzip, at 1,000
# and 10,000 jobs, and POST-to-start.
bench-sidecar: venv
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }
	$(PY) benchmarks/bench_sidecar.py

# Per-run CPU with telemetry (metrics, spans over OTLP to a loopback receiver) on and off.
bench-telemetry: venv
	$(PY) benchmarks/bench_telemetry.py

# 1,000 ScheduledJobs against a real API server: time to Ready, status patch rate, RSS.
bench-api: venv binaries
	$(PY) benchmarks/bench_api.py

# SIGTERM with 1,000 every-1s jobs: time to exit, and whether every job's last state reached status.
bench-shutdown: venv binaries
	$(PY) benchmarks/bench_shutdown.py

# Dispatch lateness at 10,000 and 50,000 jobs against APScheduler and a bare loop; QUICK=1 for <1 min.
bench-engine: $(BENCH_STAMP)
	$(PY) benchmarks/bench_engine.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# The whole operator (kopf, status, telemetry on) at 1,000 and 10,000 jobs, lateness seen by the
# jobs themselves. DURATION=300 for 5-minute windows; PROFILE=1 adds a py-spy profile of (a).
bench-operator: $(BENCH_STAMP) binaries
	$(PY) benchmarks/bench_operator.py
