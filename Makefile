# taskchat — the commands the README names.
#   make test             every test (unit + integration against the local NATS and Postgres)
#   make bench            every benchmark (prints figures; see docs in README)
#   make bench-eventlog   the event store benchmark alone
#   make bench-task-service  add_task over NATS and MCP at 1 and 32 clients
#   make bench-agent-worker  worker turns/s, overhead per turn, scaling over replicas
#   make bench-projection    projection replay rate over 1,000,000 events
#   make bench-gateway       POST /api/{user}/chat, whole stack: turns/s and p50/p90/p99 at 1
#                            and 64 users, CPU ms and SQL statements per turn, a 1,000-turn
#                            conversation's first turns against its last; then one user
#                            flooding (200 turns at once) against a calm user's latency;
#                            then a worker killed under load: how long its turns wait
#   make replay / verify     rebuild the read models / check them against the log
#   make lint             rustfmt check and clippy with warnings as errors
#   make schemas          regenerate proto-schemas/schemas/*.json from the Rust types
#   make services         make sure PostgreSQL and NATS answer (start/install them if not)
#   make k8s-check        render every Kubernetes overlay and validate it offline (schemas of
#                         Kubernetes 1.32 and the CRDs, policies), lint the Dockerfile,
#                         validate the compose file; then test that it catches seeded mistakes

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: services browser-deps python-deps build test lint fmt schemas bench bench-eventlog bench-task-service bench-agent-worker bench-projection bench-gateway replay verify k8s-check k8s-check-test

services:
	@deploy/local/services.sh

# Debian's chromium + chromium-driver for the web page's end-to-end test.
browser-deps:
	@deploy/local/browser-deps.sh

# The Python tools the system tests drive (OpenAI Agents SDK, schemathesis), pinned in
# tests/python/requirements.txt, in a venv under $HOME/.cache/taskchat.
python-deps:
	@deploy/local/python-deps.sh

# make up: build and start the whole stack as local processes (logs in .run/logs);
# make down: stop what make up started.
.PHONY: up down
up:
	@deploy/local/up.sh

down:
	@deploy/local/down.sh

build:
	$(CARGO) build --workspace --all-targets

# The system tests start the service binaries, so build them first. The deployment
# files are checked first: seconds, once k8s/check's venv exists.
test: k8s-check services browser-deps python-deps
	$(CARGO) build --workspace --bins
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast; \
	else \
		$(CARGO) test --workspace --no-fail-fast; \
	fi

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

schemas:
	UPDATE_SCHEMAS=1 $(CARGO) test -p proto-schemas --lib schema
	@git --no-pager diff --stat -- proto-schemas/schemas || true

bench: bench-eventlog bench-task-service bench-agent-worker bench-projection bench-gateway

bench-eventlog: services
	$(CARGO) bench -p eventlog --bench eventlog

bench-task-service: services
	$(CARGO) bench -p task-service --bench commands

bench-agent-worker: services
	$(CARGO) bench -p agent-worker --bench turns

bench-projection: services
	$(CARGO) bench -p projection --bench replay

# The whole stack as processes: the bench starts the release binaries, so build them.
bench-gateway: services
	$(CARGO) build --release --workspace --bins
	$(CARGO) bench -p system-tests --bench chat
	$(CARGO) bench -p system-tests --bench flood
	$(CARGO) bench -p system-tests --bench failover

# Rebuild every read model from the event log (swapped in while queries go on), and
# check the live read models against a fresh fold of the log.
replay: services
	$(CARGO) run --release -p projection -- replay

verify: services
	$(CARGO) run --release -p projection -- verify

# Offline: the tools are pinned in k8s/check/requirements.txt, installed once into
# their own venv by k8s/check/install.sh. k8s-check-test seeds a mistake of each kind
# into a copy of the tree and expects the check to fail on it.
k8s-check:
	@venv=$$(k8s/check/install.sh) && "$$venv/bin/python" k8s/check/check.py
	@$(MAKE) --no-print-directory k8s-check-test

k8s-check-test:
	@venv=$$(k8s/check/install.sh) && cd k8s/check && "$$venv/bin/python" test_check.py
