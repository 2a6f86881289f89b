# fissure — one Makefile for people and CI. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
# Heavy downloads and built tools live outside the clone so fresh clones reuse them.
CACHE ?= $(HOME)/.cache/fissure
UV_VERSION := 0.13.8
UV := $(CACHE)/bootstrap/bin/uv
VENV := .venv
STAMP := $(VENV)/.fissure-installed
export UV_CACHE_DIR ?= $(CACHE)/uv
export PATH := $(CURDIR)/$(VENV)/bin:$(CACHE)/bin:$(PATH)
PYTEST_ARGS ?=

.PHONY: help venv test up

# versions the targets' help names, filled in by `make help`
HELP_VARS = GATEWAY_API_VERSION TRAEFIK_VERSION K8S_VERSION
help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*?## ' $(MAKEFILE_LIST) | sort | awk 'BEGIN{FS=":.*?## "}{printf "  %-16s %s\n",$$1,$$2}' \
	  | sed $(foreach v,$(HELP_VARS),-e 's|$$($(v))|$($(v))|g')

$(UV):
	@echo ">> bootstrapping uv $(UV_VERSION) into $(CACHE)/bootstrap"
	@$(PYTHON) -m venv $(CACHE)/bootstrap && $(CACHE)/bootstrap/bin/pip install -q "uv==$(UV_VERSION)"

# Reinstalls only when pyproject.toml changes; uv links from its cache, so this is seconds when warm.
$(STAMP): pyproject.toml | $(UV)
	@echo ">> installing fissure and its dependencies into $(VENV) (first run downloads ~3 GB of torch)"
	@$(UV) venv -q --allow-existing -p $(PYTHON) $(VENV)
	@$(UV) pip install -q -p $(VENV)/bin/python -e '.[serve,dev]'
	@touch $@

venv: $(STAMP) ## create .venv with fissure installed (editable)

# the tests on the single-node cluster run in a second pytest beside the others (mk/run-tests.sh).
# The Go-built tools are built first: on a new machine that takes many minutes, which must not
# count against the timeout of whichever test asks for them first.
test: venv java k8s-tools ## run the whole test suite (installs what it needs: Java 17 for TorchServe, the Go-built Kubernetes tools)
	@mk/run-tests.sh $(VENV)/bin/python $(PYTEST_ARGS)

-include mk/*.mk
