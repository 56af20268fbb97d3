# Two commands matter: `make demo` and `make test`. Everything else is what they use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo test coverage-report mutation lint unit integration e2e kind-images binaries chart-crds venv clean bench-sidecar bench-telemetry bench-api bench-engine bench-dispatch bench-burst bench-shutdown bench-resources bench-operator bench-ha chaos bench-vs-cronjob bench-scale

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

# mutmut, for `make mutation`, on top of the venv.
MUTATION_STAMP := $(VENV)/.mutation-$(shell cksum pyproject.toml | cut -d' ' -f1)
$(MUTATION_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,mutation]'
	rm -f $(VENV)/.mutation-*
	touch $@

# kube-apiserver, kubectl, etcd, helm and promtool, built from the Go module proxy once and cached.
binaries: venv
	$(PY) tools/controlplane.py binaries
	$(PY) tools/helmtool.py
	$(PY) tools/promtool.py

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

# kind: a cluster from kind-config.yaml, the image, the chart. Docker is installed and started
# where missing; where no registry answers, kind's node image is built here first (kind-images).
e2e: venv binaries
	$(PY) -m pytest tests/e2e

# kind's node image and a Python base for the Dockerfile, built with no registry (docs/kind.md).
kind-images: venv binaries
	$(PY) tools/kindimages.py

# Line and branch coverage of podcron in every process the tests start ([tool.coverage] in
# pyproject.toml): the report below, HTML in build/coverage/html. Floors, as group=files:percent,
# sit about a point under the measured values (docs/testing.md); raise them as tests are added.
COVERAGE := $(VENV)/bin/coverage
SIDECAR := operator/podcron/sidecar
SIDECAR_REQUEST_PATH := $(SIDECAR)/admission.py,$(SIDECAR)/app.py,$(SIDECAR)/cidr.py,$\
	$(SIDECAR)/envelope.py,$(SIDECAR)/joblist.py,$(SIDECAR)/operator_client.py,$\
	$(SIDECAR)/protocol.py
COVERAGE_FLOORS := \
	all=operator/podcron/*:94.7 \
	schedules=operator/podcron/schedules/*:98.0 \
	engine=operator/podcron/engine/*:96.2 \
	sidecar-request-path=$(SIDECAR_REQUEST_PATH):94.7

# Unit and integration under coverage in two workers (most tests wait on processes and
# sockets), then the kind suite (the code in its containers is not measured). On a machine
# that has never built kind's images, they build in the background meanwhile (the log is
# build/kind-images.log; the e2e suite waits for them and says why if they failed).
PYTEST_WORKERS ?= 2
test: venv binaries lint
	rm -rf build/coverage && mkdir -p build
	$(PY) tools/kindimages.py >build/kind-images.log 2>&1 & images=$$!; \
	$(COVERAGE) run -m pytest -n $(PYTEST_WORKERS) --dist loadfile tests --ignore=tests/e2e; \
	status=$$?; \
	$(MAKE) --no-print-directory coverage-report || status=1; \
	wait $$images || tail -n 20 build/kind-images.log; \
	$(PY) -m pytest tests/e2e || status=1; \
	exit $$status

# Combine the processes' data, print the per-module summary, write HTML, check the floors.
coverage-report:
	$(COVERAGE) combine --quiet
	$(COVERAGE) html --quiet
	$(COVERAGE) report --sort=cover
	@failed=0; for floor in $(COVERAGE_FLOORS); do \
		group=$${floor%%=*}; rest=$${floor#*=}; files=$${rest%:*}; minimum=$${rest##*:}; \
		total=$$($(COVERAGE) report --include="$$files" --format=total --precision=1); \
		if $(COVERAGE) report --include="$$files" --fail-under=$$minimum >/dev/null; then \
			echo "coverage $$group: $$total% (floor $$minimum%)"; \
		else echo "coverage $$group: $$total% is under its floor of $$minimum%"; failed=1; fi; \
	done; exit $$failed

# Mutation testing of the scheduling core against the unit tests (slow: not part of `make test`).
# MUTATION_GROUPS="schedules cidr" runs some groups only; scores in docs/testing.md.
mutation: $(MUTATION_STAMP)
	$(PY) tools/mutation.py $(MUTATION_GROUPS)

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

# bench-engine's lateness on a clock only the loop's own work moves (the load does not); TREES=
# other checkouts side by side; QUICK=1 for 10,000 jobs only.
bench-dispatch: venv
	$(PY) benchmarks/bench_dispatch.py $(TREES)

# bench-operator's scenario (a) on the engine alone (no kopf, no API server), telemetry on:
# 1,000 runs due at each second; TREES= other checkouts side by side, taking turns.
bench-burst: venv
	$(PY) benchmarks/bench_burst.py $(TREES)

# A warm shared connection (a resource) against one opened per run, over loopback TCP; QUICK=1.
bench-resources: venv
	$(PY) benchmarks/bench_resources.py

# The replica protocol's CPU per verdict and per epoch change, and its writes per replica; QUICK=1.
bench-ha: venv
	$(PY) benchmarks/bench_ha.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache build

# The whole operator (kopf, status, telemetry on) at 1,000 and 10,000 jobs, lateness seen by the
# jobs themselves. DURATION=300 for 5-minute windows; PROFILE=1 adds a py-spy profile of (a).
bench-operator: $(BENCH_STAMP) binaries
	$(PY) benchmarks/bench_operator.py

# JOBS ScheduledJobs (20,000) on REPLICAS replicas (4), then the same on 1 (ALONE=0: not): time
# until all are Ready, lateness p99, RSS and CPU per replica, API writes/s. QUICK=1: 2,000 jobs.
bench-scale: $(BENCH_STAMP) binaries
	$(PY) benchmarks/bench_scale.py

# podcron beside kube-controller-manager's CronJob controller on one API server: N CronJobs and
# N ScheduledJobs every minute, N every second; JOBS=100,1000 by default, QUICK=1 for 2-minute
# windows. Builds kube-controller-manager on first use (tools/kindimages.py), else skips.
bench-vs-cronjob: $(BENCH_STAMP) binaries
	$(PY) benchmarks/bench_vs_cronjob.py

# Operators under injected faults (tests/chaos, docs/testing.md): every tick started at most once,
# and exactly once outside what the operators counted. HA="ha_ring=chaos lease_stale_seconds=6"
# passes HA settings to every operator (the ring is on by default: HA= runs replicas that do not
# coordinate, the baseline); FAULTS=none or a comma-separated list of kinds.
REPLICAS ?= 3
JOBS ?= 2000
MINUTES ?= 10
SEED ?= 1
FAULTS ?= all
HA ?= ha_ring=chaos
chaos: venv binaries
	PYTHONPATH=tools $(PY) -m tests.chaos.run --replicas $(REPLICAS) --jobs $(JOBS) \
		--minutes $(MINUTES) --seed $(SEED) --faults $(FAULTS) $(foreach s,$(HA),--ha $(s))
