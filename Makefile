# Two commands: `make test` and `make demo`. Both set themselves up.
# Debian's interpreter when there is one: syncs run as each person's uid, in the
# tests and the demo too, and an interpreter under /root (pyenv, mode 0700) is
# out of their reach.
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The real Claude Code CLI, pinned, installed into a git-ignored folder.
CLAUDE_CODE_VERSION := 2.1.197
NODE_DIR := .node
CLAUDE_BIN := $(NODE_DIR)/node_modules/.bin/claude
# promtool (to unit-test the shipped alert rules), taken from Debian's prometheus
# package without installing the server or its service.
TOOLS_DIR := .tools
PROMTOOL := $(TOOLS_DIR)/promtool

.PHONY: test demo bench setup clean

setup: $(STAMP) $(CLAUDE_BIN) $(PROMTOOL)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

$(CLAUDE_BIN):
	mkdir -p $(NODE_DIR)
	npm install --prefix $(NODE_DIR) --no-audit --no-fund --loglevel=error \
		@anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION)
	test -x $@

$(PROMTOOL):
	rm -rf $(TOOLS_DIR)/deb && mkdir -p $(TOOLS_DIR)/deb
	cd $(TOOLS_DIR)/deb && { apt-get download prometheus 2>/dev/null || { apt-get update -qq && apt-get download prometheus; }; }
	dpkg-deb -x $(TOOLS_DIR)/deb/prometheus_*.deb $(TOOLS_DIR)/deb/root
	cp $(TOOLS_DIR)/deb/root/usr/bin/promtool $@
	rm -rf $(TOOLS_DIR)/deb
	$@ --version >/dev/null

test: setup
	$(PY) -m mypy reconcile
	CLAUDE_AUTH_TEST_CLAUDE=$(abspath $(CLAUDE_BIN)) CLAUDE_AUTH_PROMTOOL=$(abspath $(PROMTOOL)) \
		$(PY) -m pytest

demo: setup
	CLAUDE_AUTH_DEMO_CLAUDE=$(abspath $(CLAUDE_BIN)) $(PY) demo/run_demo.py

# Benchmarks print their figures as JSON; they are measurements, never tests.
bench: setup
	$(PY) bench/vault_bench.py --users 1000,10000 --rounds 3
	$(PY) bench/sync_bench.py --runs 15

clean:
	rm -rf $(VENV) $(NODE_DIR) $(TOOLS_DIR) .demo build *.egg-info
