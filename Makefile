# Document tagging platform. The two commands: `make up` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_SYS ?= python3
VENV       := .venv
PY         := $(VENV)/bin/python
PIP        := $(VENV)/bin/pip
STAMP      := $(VENV)/.installed
PROTO_SRC  := $(wildcard protos/*.proto)
PROTO_OUT  := services/common/pb/documents_pb2.py

.PHONY: help setup browser promtool deploy-tools protos check-protos up down logs status train lint test test-unit test-integration \
        test-e2e test-deployment test-hosts bench bench-model bench-ingest bench-search bench-gateway bench-web bundle deploy-all \
        deploy-gateway deploy-web deploy-tagging deploy-model deploy-db \
        rollback-gateway rollback-web rollback-tagging rollback-model rollback-db

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'
	@grep -E '^\$$\(addprefix [a-z]+-,.*## ' $(MAKEFILE_LIST) | sed -E 's/^\$$\(addprefix ([a-z]+-),[^#]*## /\1<role>|/' \
	  | awk -F'|' '{printf "  %-18s %s\n", $$1, $$2}'

setup: $(STAMP) protos ## create .venv with every role's extras (torch==2.13.0 CPU)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned, so nothing pulls a CUDA build
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	touch $@

CHROMIUM := /usr/bin/chromium

browser: $(CHROMIUM) ## Debian's Chromium for the web UI's browser tests (part of `make test`; Playwright downloads nothing)

$(CHROMIUM):
	@if [ "$$(id -u)" -ne 0 ]; then echo "the browser tests need Debian's Chromium: run 'sudo apt-get install -y chromium chromium-driver'"; exit 1; fi
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver

PROMTOOL := /usr/bin/promtool

promtool: $(PROMTOOL) ## Debian's prometheus package for promtool (part of `make test`: checks infra/prometheus)

# The package enables a Prometheus server on :9090; the tests need only promtool, so the
# service the package set up is stopped and disabled again (nothing else is touched).
$(PROMTOOL):
	@if [ "$$(id -u)" -ne 0 ]; then echo "the Prometheus tests need promtool: run 'sudo apt-get install -y --no-install-recommends prometheus'"; exit 1; fi
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus
	-if [ -d /run/systemd/system ]; then systemctl disable --now prometheus.service; \
	 else invoke-rc.d prometheus stop; update-rc.d prometheus disable; fi

# Debian's tools the deployment tests check with: cloud-init (`cloud-init schema`), systemd-analyze
# (`verify`), openssh-server (deploy over a real sshd). Not root: the tests that need them skip.
DEPLOY_TOOLS := /usr/bin/cloud-init /usr/bin/systemd-analyze /usr/sbin/sshd

deploy-tools: ## Debian's cloud-init, systemd and openssh-server for the deployment tests (part of `make test`)
	@missing=""; for t in $(DEPLOY_TOOLS); do test -x $$t || missing="$$missing $$t"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" -ne 0 ]; then echo "deployment tests skip without$$missing: run 'sudo apt-get install -y cloud-init systemd openssh-server'"; exit 0; fi; \
	apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends cloud-init systemd openssh-server

test: deploy-tools

protos: $(PROTO_OUT) ## generate gRPC stubs from protos/

$(PROTO_OUT): $(PROTO_SRC) infra/scripts/gen_protos.sh | $(STAMP)
	PYTHON=$(PY) infra/scripts/gen_protos.sh
	touch $@

check-protos: setup ## fail when the generated stubs differ from protos/
	PYTHON=$(PY) $(PY) -m pytest -q tests/unit/test_protos_fresh.py

DIST ?= dist
ROLE ?=

bundle: setup ## offline release bundles per VM role: $(DIST)/doctag-<version>-<role>.tar.gz (ROLE=gateway for one; cached in var/bundle-cache)
	$(VENV)/bin/doctag release bundle --out $(DIST) $(if $(ROLE),--role $(ROLE))

# Deploying (README, "Deploying on seven VMs"): INVENTORY names the hosts, HOST one of them (default:
# every host of the role), SSH how to reach them ("ssh -F cfg"), VERSION a bundle already in $(DIST)
# (default: build this tree's bundle first; cached, so a second build takes a second).
INVENTORY ?= infra/inventory.example.yaml
HOST      ?=
SSH       ?=
VERSION   ?=
DEPLOY_ARGS = --inventory $(INVENTORY) --dist $(DIST) $(if $(SSH),--ssh "$(SSH)") $(if $(VERSION),--version $(VERSION))
DEPLOY_ROLES := gateway web tagging model db

$(addprefix deploy-,$(DEPLOY_ROLES)): deploy-%: setup ## HOST=... [SSH=...] [INVENTORY=...]: bundle, install, configure, restart, wait until ready
	$(if $(VERSION),,$(VENV)/bin/doctag release bundle --out $(DIST) --role $*)
	$(VENV)/bin/doctag deploy role $* $(if $(HOST),--host $(HOST)) $(DEPLOY_ARGS)

deploy-all: setup ## every host of INVENTORY in dependency order (db, model, gateway, web, tagging; replicas of a role at once)
	$(if $(VERSION),,$(VENV)/bin/doctag release bundle --out $(DIST))
	$(VENV)/bin/doctag deploy all $(DEPLOY_ARGS)

$(addprefix rollback-,$(DEPLOY_ROLES)): rollback-%: setup ## [HOST=...]: back to the previous version, restart, wait until ready
	$(VENV)/bin/doctag deploy rollback $* $(if $(HOST),--host $(HOST)) --inventory $(INVENTORY) $(if $(SSH),--ssh "$(SSH)")

DATA_DIR  ?= ../shared/data
MODEL_DIR ?= services/model_serving/artifacts/doctag-tagger

up: setup ## install what is missing, migrate, start every service (supervisor), wait until ready
	$(VENV)/bin/doctag stack up

down: ## stop exactly what `make up` started
	@test -x $(VENV)/bin/doctag && $(VENV)/bin/doctag stack down || echo "nothing to stop"

status: ## state of every service
	$(VENV)/bin/doctag stack status

logs: ## follow the logs of every service
	tail -n 50 -F var/log/*.log

train: setup ## train the default tagging model from $(DATA_DIR) into $(MODEL_DIR) and register it (about 40-60 minutes on 2 cores)
	$(VENV)/bin/doctag db upgrade
	$(VENV)/bin/doctag model train --data-dir $(DATA_DIR) --out $(MODEL_DIR) --work-dir runs/cache --register

BENCH_ARGS ?=

bench-model: setup ## benchmark model-serving (gRPC, HTTP) vs a naive server and the bare model; BENCH_ARGS=--quick
	$(PY) -m tests.bench.bench_model $(BENCH_ARGS)

bench-ingest: setup ## uploads (c=1, c=16), upload->tagged vs model-serving, extraction per format, RSS with a 1 GB file; BENCH_ARGS=--quick
	$(PY) -m tests.bench.bench_ingest $(BENCH_ARGS)

bench-gateway: setup ## the gateway's cost (p50/p99, req/s at c=1 and c=32, direct vs through it) and a 500-request flood between two tenants; BENCH_ARGS=--quick|--profile
	$(PY) -m tests.bench.bench_gateway $(BENCH_ARGS)

bench-search: setup ## search at 1,000,000 documents (built once into its own database, then reused): p50/p95 vs naive ILIKE; BENCH_ARGS=--quick
	$(PY) -m tests.bench.bench_search $(BENCH_ARGS)

bench-web: setup browser ## web UI: page weight (cold cache) of upload and search, time to interactive of search
	$(PY) -m tests.bench.bench_web $(BENCH_ARGS)

bench: bench-model bench-ingest bench-search bench-gateway bench-web ## every benchmark (never part of `make test`)

lint: setup ## ruff, mypy and the import contracts between services (part of `make test`)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy

test: lint browser promtool ## lint, then unit + integration (real PostgreSQL/RabbitMQ) + end-to-end and browser tests
	$(PY) -m pytest -q -p no:cacheprovider -m "not deployment" tests/unit tests/integration tests/e2e

# The deployment's own tests (CI runs them after `make test`, see .ci/run): offline bundle installs,
# deploy over a real sshd, a db host of its own (PostgreSQL, RabbitMQ, Redis), then the seven hosts.
test-deployment: setup deploy-tools ## bundles, install.sh, deploy over SSH, the db host, then `make test-hosts` (root)
	$(PY) -m pytest -q -p no:cacheprovider -m deployment tests/integration
	$(MAKE) --no-print-directory test-hosts

test-unit: setup promtool
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

test-integration: setup
	$(PY) -m pytest -q -p no:cacheprovider tests/integration

test-e2e: setup browser
	$(PY) -m pytest -q -p no:cacheprovider tests/e2e

# A pytest process of its own: its platform must not run beside the end-to-end tests' one (memory).
# DEPLOY=bundles: the application hosts are deployed by `doctag deploy` over SSH from `make bundle`'s
# bundles (sshd in each namespace: Debian's openssh-server, which deploy-tools installs when missing).
DEPLOY ?=
test-hosts: setup $(if $(filter bundles,$(DEPLOY)),bundle deploy-tools) ## the platform on seven network namespaces (+ an attacker) with failures injected; needs root; DEPLOY=bundles
	DOCTAG_TEST_HOSTS_DEPLOY=$(DEPLOY) $(PY) -m pytest -q -p no:cacheprovider -m hosts tests/hosts
