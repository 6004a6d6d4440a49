# The front door: `make run` starts the service, `make test` runs the whole suite.
# Both install what is missing first (Debian packages, the .venv, the package itself).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.wondercraft-installed
# libcap-dev: python-prctl builds against it; user-mode-linux: the cgroup v2 test guest;
# systemd: systemd-analyze, which the tests use to verify the service unit; chromium: the
# browser the dashboard's tests drive through Playwright (never `playwright install`).
HOST_PACKAGES := libcap-dev iproute2 user-mode-linux systemd chromium
BENCH_PACKAGES := bubblewrap
HOST ?= 127.0.0.1
PORT ?= 3000
STATE_DIR ?= ./var
PYTEST_ARGS ?=
# The dashboard's chart library, pinned by package-lock.json, installed by npm ci and served
# from node_modules (never from a CDN, never committed).
DASHBOARD_WEB := server/dashboard/web
DASHBOARD_STAMP := $(DASHBOARD_WEB)/node_modules/.wondercraft-installed

.PHONY: install install-service run test lint format bench rootfs clean

install: $(STAMP) $(DASHBOARD_STAMP)

$(STAMP): setup.py scripts/host-packages.sh native/wc-init.c aggregation/kernels.py
	scripts/host-packages.sh $(HOST_PACKAGES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,torch]'
	# The aggregation kernels into numba's cache, so no service start or round compiles them.
	$(PY) -m aggregation.warmup
	touch $@

$(DASHBOARD_STAMP): $(DASHBOARD_WEB)/package.json $(DASHBOARD_WEB)/package-lock.json
	command -v npm >/dev/null || scripts/host-packages.sh nodejs npm
	cd $(DASHBOARD_WEB) && npm ci --no-audit --no-fund --ignore-scripts
	touch $@

# The systemd unit (systemd/wondercraft.service), with ExecStart pointing at this checkout's venv;
# then: systemctl enable --now wondercraft.
install-service: install
	scripts/install-service.sh --bin-dir $(CURDIR)/$(VENV)/bin

run: install
	@echo "wondercraft: serving on http://$(HOST):$(PORT), state in $(STATE_DIR);" \
	      "admin token in $(STATE_DIR)/admin.token unless WONDERCRAFT_ADMIN_TOKEN is set;" \
	      "dashboard at http://$(HOST):$(PORT)/dashboard/"
	$(VENV)/bin/wondercraft serve --host $(HOST) --port $(PORT) --state-dir $(STATE_DIR)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# scripts/run-tests.sh: the Ray cluster and browser tests run beside the rest (two pytest sessions).
test: lint
	PY=$(PY) scripts/run-tests.sh $(PYTEST_ARGS)

bench: install
	scripts/host-packages.sh $(BENCH_PACKAGES)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,bench]'
	$(PY) -m bench

# Optional: a minimal Debian (debootstrap) as the sandboxes' base layer instead of the
# host's /usr; select it with WONDERCRAFT_ROOTFS_IMAGE=$(CURDIR)/rootfs/build/debian.
rootfs: install
	scripts/build-rootfs.sh rootfs/build/debian

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache $(DASHBOARD_WEB)/node_modules tests/artifacts
