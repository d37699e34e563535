# Two commands: `make test` and `make demo`. Both set themselves up.
# Debian's interpreter when there is one: syncs run as each person's uid, in the
# tests and the demo too, and an interpreter under /root (pyenv, mode 0700) is
# out of their reach.
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The real Claude Code CLI, pinned, installed into a git-ignored folder (a folder per version, so
# moving the pin installs the new one). 2.1.197 is still supported and tested by .ci/run
# (`make test-claude-version CLAUDE_VERSION=2.1.197`): sites do not upgrade every machine at once.
CLAUDE_CODE_VERSION := 2.1.332
NODE_DIR := .node/$(CLAUDE_CODE_VERSION)
CLAUDE_BIN := $(NODE_DIR)/node_modules/.bin/claude
# promtool (to unit-test the shipped alert rules), and the prometheus and node_exporter servers
# (the dashboard test starts them on loopback), taken from Debian's prometheus and
# prometheus-node-exporter packages without installing either server or its service.
TOOLS_DIR := .tools
PROMTOOL := $(TOOLS_DIR)/promtool
PROMETHEUS := $(TOOLS_DIR)/prometheus
NODE_EXPORTER := $(TOOLS_DIR)/prometheus-node-exporter
# libfaketime (Debian's package, taken without installing it): the soak's clock jumps of a host.
FAKETIME_LIB := $(TOOLS_DIR)/libfaketime.so.1
# `make soak`: minutes of faults (then one quiet cycle and the checks); SOAK_SEED replays a run.
SOAK_MINUTES ?= 30

# `make install`: an administrator's installation (README, "Install on a workstation").
# A venv from Debian's python3 in PREFIX, readable and executable by every user (each
# person's sync runs the installed `claude-auth` as that person), linked into BINDIR.
PREFIX ?= /opt/claude-auth
BINDIR ?= /usr/local/bin
# The login-shell notice (deploy/profile.d/claude-auth.sh: one line when a person's login needs them).
PROFILE_DIR ?= /etc/profile.d

.PHONY: test demo bench setup clean install uninstall test-claude-version test-claude-latest deb deb-lock soak

setup: $(STAMP) $(CLAUDE_BIN) $(PROMTOOL) $(PROMETHEUS) $(NODE_EXPORTER) $(FAKETIME_LIB)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

$(CLAUDE_BIN):
	mkdir -p $(NODE_DIR)
	npm install --prefix $(NODE_DIR) --no-audit --no-fund --loglevel=error \
		@anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION)
	test -x $@

$(PROMTOOL) $(PROMETHEUS) &:
	rm -rf $(TOOLS_DIR)/deb && mkdir -p $(TOOLS_DIR)/deb
	cd $(TOOLS_DIR)/deb && { apt-get download prometheus 2>/dev/null || { apt-get update -qq && apt-get download prometheus; }; }
	dpkg-deb -x $(TOOLS_DIR)/deb/prometheus_*.deb $(TOOLS_DIR)/deb/root
	cp $(TOOLS_DIR)/deb/root/usr/bin/promtool $(PROMTOOL)
	cp $(TOOLS_DIR)/deb/root/usr/bin/prometheus $(PROMETHEUS)
	rm -rf $(TOOLS_DIR)/deb
	$(PROMTOOL) --version >/dev/null
	$(PROMETHEUS) --version >/dev/null

$(NODE_EXPORTER):
	rm -rf $(TOOLS_DIR)/deb-ne && mkdir -p $(TOOLS_DIR)/deb-ne
	cd $(TOOLS_DIR)/deb-ne && { apt-get download prometheus-node-exporter 2>/dev/null || \
		{ apt-get update -qq && apt-get download prometheus-node-exporter; }; }
	dpkg-deb -x $(TOOLS_DIR)/deb-ne/prometheus-node-exporter_*.deb $(TOOLS_DIR)/deb-ne/root
	cp $(TOOLS_DIR)/deb-ne/root/usr/bin/prometheus-node-exporter $@
	rm -rf $(TOOLS_DIR)/deb-ne
	$@ --version >/dev/null

$(FAKETIME_LIB):
	rm -rf $(TOOLS_DIR)/ftdeb && mkdir -p $(TOOLS_DIR)/ftdeb
	cd $(TOOLS_DIR)/ftdeb && { apt-get download libfaketime 2>/dev/null || { apt-get update -qq && apt-get download libfaketime; }; }
	dpkg-deb -x $(TOOLS_DIR)/ftdeb/libfaketime_*.deb $(TOOLS_DIR)/ftdeb/root
	cp $(TOOLS_DIR)/ftdeb/root/usr/lib/*/faketime/libfaketime.so.1 $@
	rm -rf $(TOOLS_DIR)/ftdeb

test: setup
	$(PY) -m mypy reconcile
	CLAUDE_AUTH_TEST_CLAUDE=$(abspath $(CLAUDE_BIN)) CLAUDE_AUTH_PROMTOOL=$(abspath $(PROMTOOL)) \
		CLAUDE_AUTH_PROMETHEUS=$(abspath $(PROMETHEUS)) CLAUDE_AUTH_NODE_EXPORTER=$(abspath $(NODE_EXPORTER)) \
		CLAUDE_AUTH_FAKETIME_LIB=$(abspath $(FAKETIME_LIB)) $(PY) -m pytest

# Issue 27: every fault at once for SOAK_MINUTES (not part of `make test`, which runs two seeded
# minutes of it). Prints a table; the JSON report goes to .soak/report-<seed>.json.
soak: setup
	CLAUDE_AUTH_TEST_CLAUDE=$(abspath $(CLAUDE_BIN)) CLAUDE_AUTH_FAKETIME_LIB=$(abspath $(FAKETIME_LIB)) \
		$(PY) -m tests.soak --minutes $(SOAK_MINUTES)

demo: setup
	CLAUDE_AUTH_DEMO_CLAUDE=$(abspath $(CLAUDE_BIN)) $(PY) demo/run_demo.py

# Every test that runs the real claude, against another CLI version (installed outside the
# checkout, once per version): `make test-claude-version CLAUDE_VERSION=2.1.197`, or the newest
# npm serves now with `make test-claude-latest`. The version tested is printed first.
CLAUDE_FACING_TESTS := tests/test_sync_real.py tests/test_sync_claude_cli.py tests/test_sync_refresh_lock.py \
	tests/test_setup_token.py tests/test_setup_token_hardened.py tests/test_sync_hostile_files.py \
	tests/test_sync_hostile_kv.py tests/test_sync_sandboxed.py tests/test_sync_umask.py tests/test_sync_unit.py \
	tests/test_sync_broken_shapes.py
CLAUDE_VERSIONS_DIR ?= /var/cache/claude-auth-test/claude
CLAUDE_VERSION ?= latest

test-claude-version: $(STAMP)
	@version=$$(npm view @anthropic-ai/claude-code@$(CLAUDE_VERSION) version | tail -1) && \
	dir=$(CLAUDE_VERSIONS_DIR)/$$version && \
	{ test -x $$dir/node_modules/.bin/claude || npm install --prefix $$dir --no-audit --no-fund \
		--loglevel=error @anthropic-ai/claude-code@$$version; } && \
	echo "claude-facing tests against Claude Code $$($$dir/node_modules/.bin/claude --version)" && \
	CLAUDE_AUTH_TEST_CLAUDE=$$dir/node_modules/.bin/claude CLAUDE_AUTH_PROMTOOL=$(abspath $(PROMTOOL)) \
		$(PY) -m pytest -q -rs $(CLAUDE_FACING_TESTS)

test-claude-latest:
	$(MAKE) test-claude-version CLAUDE_VERSION=latest

# Benchmarks print their figures as JSON; they are measurements, never tests.
bench: setup
	$(PY) bench/vault_bench.py --users 1000,10000 --rounds 3
	$(PY) bench/sync_bench.py --runs 15
	$(PY) bench/fleet_bench.py --hosts 10 --users 100 --rounds 3
	$(PY) bench/notice_bench.py --runs 200
	$(PY) bench/pool_bench.py --tokens 1000 --rounds 2

# Idempotent: run again after `git pull` to upgrade in place. Installs from this
# checkout (not editable), so the checkout may live anywhere, /root included.
install:
	@case "$(PREFIX)" in /*) ;; *) echo "PREFIX must be an absolute path" >&2; exit 1;; esac
	umask 022; test -x $(PREFIX)/bin/python || $(PYTHON) -m venv $(PREFIX)
	umask 022; $(PREFIX)/bin/python -m pip install -q --disable-pip-version-check --no-cache-dir \
		--upgrade --force-reinstall --no-deps .
	umask 022; $(PREFIX)/bin/python -m pip install -q --disable-pip-version-check .
	chmod -R u+rwX,go+rX,go-w $(PREFIX)
	mkdir -p $(BINDIR)
	ln -sfn $(PREFIX)/bin/claude-auth $(BINDIR)/claude-auth
	mkdir -p $(PROFILE_DIR)
	install -m 0644 deploy/profile.d/claude-auth.sh $(PROFILE_DIR)/claude-auth.sh
	$(BINDIR)/claude-auth --help >/dev/null
	@echo "installed $(PREFIX); $(BINDIR)/claude-auth -> $(PREFIX)/bin/claude-auth"

# `make deb`: dist/claude-auth_<version>_<arch>.deb (README, "Install on a workstation";
# packaging/deb/README.Debian). The pinned wheels are downloaded once into WHEELHOUSE and reused;
# DEB_VERSION overrides the version (default: pyproject's). Needs dpkg-deb; lintian checks it.
WHEELHOUSE ?= build/deb/wheels
deb: $(STAMP)
	BUILD_PYTHON=$(PY) WHEELHOUSE=$(WHEELHOUSE) DEB_VERSION=$(DEB_VERSION) DEB_MAINTAINER="$(DEB_MAINTAINER)" \
		packaging/deb/build.sh

# Re-pin the package's Python dependencies (packaging/requirements.txt) to the newest releases
# that satisfy pyproject.toml, with their wheels' hashes, for this machine's Python and arch.
deb-lock: $(STAMP)
	packaging/deb/lock.sh $(PY)

# Removes the program only: stop and remove the units first (README), and the roster,
# /var/lib/claude-auth and the Vault data stay.
uninstall:
	@case "$(PREFIX)" in /*) ;; *) echo "PREFIX must be an absolute path" >&2; exit 1;; esac
	if [ "$$(readlink $(BINDIR)/claude-auth)" = "$(PREFIX)/bin/claude-auth" ]; then rm -f $(BINDIR)/claude-auth; fi
	if [ -f $(PREFIX)/pyvenv.cfg ]; then rm -rf $(PREFIX); fi
	if cmp -s deploy/profile.d/claude-auth.sh $(PROFILE_DIR)/claude-auth.sh; then rm -f $(PROFILE_DIR)/claude-auth.sh; fi

clean:
	rm -rf $(VENV) .node $(TOOLS_DIR) .demo build dist *.egg-info
