# bucket_app: `make run` and `make test` are all a newcomer needs.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
STAMP := $(VENV)/.installed
# The counting kernel (native/, Rust) is built from source by cargo, which rustup puts here.
export PATH := $(HOME)/.cargo/bin:$(PATH)
KERNEL := $(VENV)/.kernel
KERNEL_SOURCES := native/Cargo.toml native/Cargo.lock native/pyproject.toml \
	$(wildcard native/src/*.rs native/python/bucket_app_kernel/*)
export BUCKET_APP_SETTINGS ?= $(CURDIR)/settings.ini

.PHONY: setup kafka kafka-stop kafka-cluster kafka-cluster-stop kafka-secure kafka-secure-stop schema-registry schema-registry-stop run test test-unit lint bench soak clean

setup: $(STAMP) $(KERNEL)

$(STAMP): requirements.lock requirements-dev.lock setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check pip==24.3.1
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock -r requirements-dev.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

# maturin (pinned in native/pyproject.toml) runs cargo on native/Cargo.lock; the crates and the
# build stay in native/target, so a change to the Rust rebuilds only the crate.
$(KERNEL): $(STAMP) $(KERNEL_SOURCES)
	@command -v cargo >/dev/null || { echo "make setup: cargo not found; install Rust (https://rustup.rs)" >&2; exit 1; }
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps ./native
	touch $(KERNEL)

kafka:
	scripts/kafka.sh start

kafka-stop:
	scripts/kafka.sh stop

kafka-cluster:
	scripts/kafka-cluster.sh start

kafka-cluster-stop:
	scripts/kafka-cluster.sh stop

# SASL_SSL (SCRAM-SHA-512, user bucket_app) broker on 127.0.0.1:9095; CA in .kafka/secure/ca.pem,
# password in .kafka/secure/password. Its readiness check uses .venv (make setup). See scripts/kafka-secure.sh.
kafka-secure:
	scripts/kafka-secure.sh start

kafka-secure-stop:
	scripts/kafka-secure.sh stop

# Apicurio Registry (Confluent-compatible API under /apis/ccompat/v7) on 127.0.0.1:8081, in memory;
# downloaded from Maven Central into .registry/ on first use. See scripts/schema-registry.sh.
schema-registry:
	scripts/schema-registry.sh start

schema-registry-stop:
	scripts/schema-registry.sh stop

# Starts the local broker only when the settings point at it (127.0.0.1:9092 / localhost:9092).
run: setup
	@if $(BIN)/python -m bucket_app uses-local-broker; then scripts/kafka.sh start; fi
	$(BIN)/faust -A bucket_app worker -l info

# lint-imports checks the import contracts of .importlinter (layers, no Kafka below kafka/).
lint: setup
	$(BIN)/ruff check bucket_app tests bench
	$(BIN)/mypy bucket_app
	$(BIN)/lint-imports

test-unit: setup
	$(BIN)/pytest -q tests/unit

# Starts the brokers (plaintext, secure) and the schema registry if not running, runs lint and
# every test, stops what it started.
test: setup
	@started=0; secure_started=0; registry_started=0; \
	if ! scripts/kafka.sh status >/dev/null 2>&1; then scripts/kafka.sh start && started=1; fi; \
	if ! scripts/kafka-secure.sh status >/dev/null 2>&1; then scripts/kafka-secure.sh start && secure_started=1; fi; \
	if ! scripts/schema-registry.sh status >/dev/null 2>&1; then scripts/schema-registry.sh start && registry_started=1; fi; \
	rc=0; \
	$(MAKE) --no-print-directory lint || rc=$$?; \
	if [ $$rc -eq 0 ]; then scripts/test-tools.sh || rc=$$?; fi; \
	if [ $$rc -eq 0 ]; then $(BIN)/pytest -q -p no:cacheprovider --durations=25 tests || rc=$$?; fi; \
	if [ $$registry_started -eq 1 ]; then scripts/schema-registry.sh stop; fi; \
	if [ $$secure_started -eq 1 ]; then scripts/kafka-secure.sh stop; fi; \
	if [ $$started -eq 1 ]; then scripts/kafka.sh stop; fi; \
	exit $$rc

bench: setup
	@if [ ! -f .bench-venv/.installed ] || [ bench/requirements.lock -nt .bench-venv/.installed ]; then \
	  $(PYTHON) -m venv .bench-venv && \
	  .bench-venv/bin/pip install --quiet --disable-pip-version-check -r bench/requirements.lock && \
	  touch .bench-venv/.installed; fi
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# One worker for SOAK_MINUTES (20) at 70% of its measured capacity, with SQL, SSE and dashboard
# clients; per-minute RSS, descriptors, threads, SQL and visibility p99 (bench/soak.py). Needs
# a broker on 127.0.0.1:9092 (make kafka); SOAK_ARGS passes more (--rate, --out).
SOAK_MINUTES ?= 20
soak: setup
	$(BIN)/python -m bench.soak --minutes $(SOAK_MINUTES) $(SOAK_ARGS)

clean: kafka-stop kafka-secure-stop schema-registry-stop
	rm -rf data .soak .pytest_cache .mypy_cache .ruff_cache
