# keycard — two commands on a fresh machine with Python 3.11, make and git:
#   make run    install into .venv, initialise a demo organization (once) and serve it on :8080
#   make test   install, then lint, type-check and run every test
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed-$(shell cat uv.lock pyproject.toml | cksum | cut -d' ' -f1)
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: install run demo test lint typecheck browser bench bench-server bench-identity bench-proxy bench-quick clean

install: $(STAMP)

$(STAMP): pyproject.toml uv.lock
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/python -m pip install -q --disable-pip-version-check "uv==0.13.9"
	@$(UV) sync --frozen --inexact --all-groups -q
	@rm -f $(VENV)/.installed-* && touch $@

ADMIN ?= admin@example.com
PORT ?= 8080

run: install
	@$(VENV)/bin/keycard init --organization-domain example.com --admin user:$(ADMIN) --demo --format json >/dev/null
	@echo "keycard: organization example.com initialised in .keycard/ (admin $(ADMIN)); starting the server."
	@echo "Call it from another terminal:"
	@echo '  curl -s -H "Authorization: Bearer $$($(VENV)/bin/keycard auth print-access-token --user $(ADMIN))" http://127.0.0.1:$(PORT)/v3/projects:search'
	@$(VENV)/bin/keycard serve --port $(PORT)

demo: install
	@$(VENV)/bin/keycard demo

lint: install
	$(VENV)/bin/ruff check src tests bench

typecheck: install
	$(VENV)/bin/mypy

# Debian's Chromium for the proxy's browser sign-in test (tests/server/test_proxy_browser.py, Playwright).
# Installed with apt when missing and possible (root); otherwise that test skips and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1; } || \
	  echo "chromium is not installed: the proxy's browser sign-in test will be skipped"

test: lint typecheck browser
	$(VENV)/bin/pytest -n 3 --dist loadfile

# The engine against Cedar, Rego (regorus), Casbin, a precomputed index and a naive evaluator; its work per
# check counted under valgrind; then the server over HTTP and the rest. Each writes its part of
# docs/benchmarks.md (the scripts after run.py between their markers). ~60 minutes on 2 cores.
bench: install
	$(VENV)/bin/python bench/run.py --scales small,medium,large --out docs/benchmarks.md
	$(VENV)/bin/python bench/cachesim.py --scales small,medium,large --out docs/benchmarks.md
	$(VENV)/bin/python bench/server.py --backends sqlite,postgresql --workers 2 --out docs/benchmarks.md
	$(VENV)/bin/python bench/identity.py --out docs/benchmarks.md
	$(VENV)/bin/python bench/ml.py --out docs/benchmarks.md
	$(VENV)/bin/python bench/proxy.py --out docs/benchmarks.md
	$(VENV)/bin/python bench/asset.py --out docs/benchmarks.md
	$(VENV)/bin/python bench/reco.py --out docs/benchmarks.md
	$(VENV)/bin/python bench/cli.py --out docs/benchmarks.md

bench-server: install
	$(VENV)/bin/python bench/server.py --backends sqlite,postgresql --workers 2 --out docs/benchmarks.md

bench-identity: install
	$(VENV)/bin/python bench/identity.py --out docs/benchmarks.md

bench-proxy: install
	$(VENV)/bin/python bench/proxy.py --out docs/benchmarks.md

bench-quick: install
	$(VENV)/bin/python bench/run.py --quick --out /tmp/keycard-bench-quick.md

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis
