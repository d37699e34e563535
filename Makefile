# Two commands: `make test` and `make demo`. Both set themselves up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The real Claude Code CLI, pinned, installed into a git-ignored folder.
CLAUDE_CODE_VERSION := 2.1.197
NODE_DIR := .node
CLAUDE_BIN := $(NODE_DIR)/node_modules/.bin/claude

.PHONY: test demo bench setup clean

setup: $(STAMP) $(CLAUDE_BIN)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

$(CLAUDE_BIN):
	mkdir -p $(NODE_DIR)
	npm install --prefix $(NODE_DIR) --no-audit --no-fund --loglevel=error \
		@anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION)
	test -x $@

test: setup
	CLAUDE_AUTH_TEST_CLAUDE=$(abspath $(CLAUDE_BIN)) $(PY) -m pytest

demo: setup
	CLAUDE_AUTH_DEMO_CLAUDE=$(abspath $(CLAUDE_BIN)) $(PY) demo/run_demo.py

bench: setup
	$(PY) bench/run_bench.py

clean:
	rm -rf $(VENV) $(NODE_DIR) .demo build *.egg-info
