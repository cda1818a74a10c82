# affluent — every entry point a user or CI needs. `make help` lists them.
SHELL := /bin/bash
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
AFFLUENT := $(BIN)/affluent
PYTEST_ARGS ?=
DEMO_DURATION ?= 60
SOAK_MINUTES ?= 10
FUZZ_MINUTES ?= 10

.PHONY: help system-deps setup up down status demo schemas test test-unit test-network3 lint format bench soak clean dashboards chaos fuzz lock screenshots

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

# Every third-party package comes from requirements.lock, pinned with its hashes (`make lock` renews it);
# affluent itself is then installed editable without resolving anything again.
$(VENV)/.installed: pyproject.toml requirements.lock
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --require-hashes -r requirements.lock
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	touch $@

setup: $(VENV)/.installed ## create .venv and install affluent with its dev tools, from requirements.lock

lock: ## re-resolve pyproject.toml into requirements.lock (dev) and requirements-runtime.lock (image), with hashes
	$(PY) -m venv .lockenv && .lockenv/bin/pip install -q pip-tools
	.lockenv/bin/pip-compile --quiet --extra dev --generate-hashes --strip-extras --allow-unsafe \
		--no-emit-find-links -o requirements.lock pyproject.toml
	.lockenv/bin/pip-compile --quiet --generate-hashes --strip-extras --no-emit-find-links \
		-c requirements.lock -o requirements-runtime.lock pyproject.toml
	rm -rf .lockenv

system-deps: ## install the Debian packages affluent needs when missing (Java, Maven, Prometheus, Mosquitto)
	@scripts/system-deps

up: setup system-deps ## start Kafka (KRaft) + schema registry on 127.0.0.1, fetching jars on first use
	$(AFFLUENT) stack up

down: ## stop the local stack (data kept in .state/)
	@if [ -x $(AFFLUENT) ]; then $(AFFLUENT) stack down; fi

status: setup ## what runs in the local stack
	$(AFFLUENT) stack status

demo: up ## the main job: show the platform working end to end
	$(AFFLUENT) demo --duration $(DEMO_DURATION)

schemas: up ## check every schema against the registry, then register them
	$(AFFLUENT) schemas check
	$(AFFLUENT) schemas register

test: up ## the whole test suite against the real local stack
	$(BIN)/pytest $(PYTEST_ARGS)

test-unit: setup ## pure tests only, no broker needed
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: setup ## ruff + mypy, as CI runs them
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy affluent connectors streams schemas formats bench deploy/grafana/dashboards.py deploy/prometheus/rules.py

dashboards: setup ## regenerate deploy/grafana/dashboards/*.json and deploy/prometheus/rules/*.yml
	$(BIN)/python deploy/grafana/dashboards.py
	$(BIN)/python deploy/prometheus/rules.py

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test-network3: setup ## three-level network test (2 hospitals -> region -> national, own clusters; minutes)
	AFFLUENT_NETWORK_THREE_LEVELS=1 $(BIN)/pytest tests/integration/test_network.py -k three_levels $(PYTEST_ARGS)

bench: up ## measure throughput on this machine into BENCHMARKS.md
	$(BIN)/python -m bench

chaos: setup system-deps ## the fault suite on a three-broker cluster, full durations, with its accounting tables
	AFFLUENT_CHAOS_FULL=1 AFFLUENT_CHAOS_REPORT=$(CURDIR)/BENCHMARKS.md $(BIN)/pytest -m chaos -s tests/reliability $(PYTEST_ARGS)

fuzz: setup ## mutation fuzzing of doors, parsers and normalizers for FUZZ_MINUTES (10); findings in tests/fuzz/found/
	$(BIN)/python -m tests.fuzz --minutes $(FUZZ_MINUTES)

soak: up ## memory of every `affluent run` process under steady HL7 traffic (SOAK_MINUTES=10)
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES)

screenshots: up ## the console's pages in headless Chromium on synthetic data -> docs/img/console-*.png
	scripts/console-screenshots

clean: down
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
