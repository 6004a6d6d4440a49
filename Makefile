# The front door: `make run` starts the service, `make test` runs the whole suite.
# Both install what is missing first (Debian packages, the .venv, the package itself).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.wondercraft-installed
# libcap-dev: python-prctl builds against it; user-mode-linux: the cgroup v2 test guest;
# systemd: systemd-analyze, which the tests use to verify the service unit.
HOST_PACKAGES := libcap-dev iproute2 user-mode-linux systemd
BENCH_PACKAGES := bubblewrap
HOST ?= 127.0.0.1
PORT ?= 3000
STATE_DIR ?= ./var
PYTEST_ARGS ?=

.PHONY: install install-service run test lint format bench rootfs clean

install: $(STAMP)

$(STAMP): setup.py scripts/host-packages.sh native/wc-init.c
	scripts/host-packages.sh $(HOST_PACKAGES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,torch]'
	touch $@

# The systemd unit (systemd/wondercraft.service), with ExecStart pointing at this checkout's venv;
# then: systemctl enable --now wondercraft.
install-service: install
	scripts/install-service.sh --bin-dir $(CURDIR)/$(VENV)/bin

run: install
	@echo "wondercraft: serving on http://$(HOST):$(PORT), state in $(STATE_DIR);" \
	      "admin token in $(STATE_DIR)/admin.token unless WONDERCRAFT_ADMIN_TOKEN is set"
	$(VENV)/bin/wondercraft serve --host $(HOST) --port $(PORT) --state-dir $(STATE_DIR)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

bench: install
	scripts/host-packages.sh $(BENCH_PACKAGES)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,bench]'
	$(PY) -m bench

# Optional: a minimal Debian (debootstrap) as the sandboxes' base layer instead of the
# host's /usr; select it with WONDERCRAFT_ROOTFS_IMAGE=$(CURDIR)/rootfs/build/debian.
rootfs: install
	scripts/build-rootfs.sh rootfs/build/debian

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
