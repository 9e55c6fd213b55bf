# The two commands of the README:
#   make run   — set up and run the whole suite on this machine (cloud, edge agent, broker, sims)
#   make test  — set up and run the tests (unit, integration against real servers, end to end)
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python

.PHONY: setup run test lint proto bench clean dashboard deb image

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh $(VENV)
	touch $@

run: setup
	$(VENV)/bin/fieldgate up $(ARGS)

test: setup
	bash scripts/test.sh $(VENV)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache --no-logo
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy fieldgate tests hil benchmarks

proto: setup
	$(PY) scripts/gen_proto.py

# Rebuild the dashboard SPA (dashboard/) into fieldgate/cloud/api/rest/static/dashboard (committed;
# Node is needed only here, never at run time).
dashboard:
	cd dashboard && npm ci && npm run build

# The edge agent as a Debian package, and a flashable gateway image with it (as root, on Debian;
# docs/operations/gateways.md). ARCH=arm64 DEB=<arm64 package> for an arm64 image.
deb:
	bash scripts/build_deb.sh

image:
	bash scripts/build_image.sh $(if $(ARCH),--arch $(ARCH)) $(if $(DEB),--deb $(DEB))

bench: setup
	$(PY) benchmarks/bench_ingest.py $(ARGS)

clean:
	rm -rf $(VENV) .fieldgate
