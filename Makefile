# mlstack — `make help` lists the targets. Recipes stay short: the logic lives in Python.
.DEFAULT_GOAL := help
SHELL := /bin/bash

# Never let uv fetch an interpreter: use the machine's Python 3.11 or 3.12.
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON_PREFERENCE := only-system
# The system certificate store: where registries sit behind a TLS-inspecting proxy, its CA is there.
export UV_SYSTEM_CERTS := 1
# PYTHONDONTWRITEBYTECODE is common in CI images: compile once at install or every import recompiles.
export UV_COMPILE_BYTECODE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
# The interpreter itself, not a shim: uv recreates .venv when the path it is given changes.
PYTHON ?= $(shell for p in python3.11 python3.12 python3; do \
	command -v $$p >/dev/null && $$p -c 'import sys; print(sys.executable)' && break; done)
TOOLS := .mlstack/tools
UV ?= $(shell command -v uv 2>/dev/null || echo $(TOOLS)/bin/uv)
# Extras of the environment: the test, lint and bench targets add the Ray engine (`ray` extra); the
# default install (`make demo`) does not carry the Ray wheel. Target-specific, so `install` follows.
EXTRAS :=
RUN = $(UV) run --frozen $(EXTRAS) --python $(PYTHON)
# Tests run tools that must not share the project's lock (checkov pins old packaging) with `uv tool run`.
export MLSTACK_UV := $(abspath $(UV))
PYTEST_ARGS ?=

.PHONY: help install system-deps demo test test-unit test-integration test-browser test-infra lint docs format bench down clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-17s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(TOOLS)/bin/uv:
	@echo "uv not found: installing it into $(TOOLS) (a private venv)"
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv

install: $(if $(filter $(TOOLS)/bin/uv,$(UV)),$(TOOLS)/bin/uv) ## Install the locked dependencies into .venv (bootstraps uv)
	$(UV) sync --frozen $(EXTRAS) --python $(PYTHON)

# Debian packages some tests drive (browser, Prometheus, Pushgateway, load generator); each installs
# a binary of its own name. apt-get update runs only when the install fails without it.
SYSTEM_PACKAGES := chromium prometheus prometheus-pushgateway wrk jq

system-deps: ## apt-get install the system packages the tests need (chromium, prometheus, prometheus-pushgateway, wrk, jq) when missing
	@missing=$$(for b in $(SYSTEM_PACKAGES); do command -v $$b >/dev/null || echo $$b; done); \
	if [ -z "$$missing" ]; then echo "system packages present: $(SYSTEM_PACKAGES)"; exit 0; fi; \
	echo "missing: $$missing; installing $(SYSTEM_PACKAGES)"; \
	sudo=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	export DEBIAN_FRONTEND=noninteractive; \
	$$sudo apt-get install -y --no-install-recommends $(SYSTEM_PACKAGES) \
	  || { $$sudo apt-get update && $$sudo apt-get install -y --no-install-recommends $(SYSTEM_PACKAGES); }

demo: install ## Run the whole loop on embedded defaults (no Docker, no system services)
	$(RUN) mlstack demo

test test-unit test-integration test-browser test-infra lint bench docs format: EXTRAS := --extra ray

test: install ## Run the test suite (starts its own Redis unless MLSTACK_TEST_REDIS_URL is set)
	$(RUN) pytest $(PYTEST_ARGS)

test-unit: install ## Run the unit tier only: hermetic (no Redis, no servers), under a minute
	$(RUN) pytest -m unit tests/unit $(PYTEST_ARGS)

test-integration: install ## Run the integration and e2e tiers: real Redis, PostgreSQL, MLflow, Prefect, bentoml serve
	$(RUN) pytest -m "integration or e2e" tests/integration tests/e2e $(PYTEST_ARGS)

test-browser: install ## Run the browser tier: headless Chromium against a local stack (needs `make system-deps`)
	$(RUN) pytest -m browser tests/browser $(PYTEST_ARGS)

test-infra: install ## Run the infra tier only: static checks of compose, Dockerfiles, k8s and dashboards
	$(RUN) pytest -m infra tests/infra $(PYTEST_ARGS)

lint: install ## Lint: ruff, formatting, the layering contract (import-linter), types (mypy), declared dependencies (deptry)
	$(RUN) ruff check .
	$(RUN) ruff format --check .
	$(RUN) lint-imports
	$(RUN) mypy
	$(RUN) deptry .

docs: install ## Regenerate the generated parts of the docs (the settings table in docs/configuration.md)
	$(RUN) python -c 'from mlstack.settings import write_settings_reference; write_settings_reference()'

format: install ## Format and auto-fix with ruff
	$(RUN) ruff format .
	$(RUN) ruff check --fix .

bench: install ## Run the benchmarks: materialisation and training sets at 100k customers, online scoring (see docs/benchmarks.md)
	$(RUN) python -m benchmarks.materialize
	$(RUN) python -m benchmarks.training_set
	$(RUN) python -m benchmarks.serving

down: install ## Stop what the local stack runs in the background
	$(RUN) mlstack down

clean: down ## Stop the stack and delete all local state (.mlstack/, keeps the uv bootstrap)
	find .mlstack -mindepth 1 -maxdepth 1 ! -name tools -exec rm -rf {} +
