# Two commands for users: `make demo` and `make test`. Each creates .venv and
# installs what is missing, once; a second call installs nothing.
#
# TORCH_SPEC picks the PyTorch build, installed before anything else so no other
# package can pull a different one (the default is the CPU build on this disk).
# GPU users: make test TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"

PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.medfm-installed

.PHONY: demo test test-all bench install clean FORCE

demo: $(STAMP)
	$(BIN)/medfm run pipelines/demo.yaml

test: $(STAMP)
	$(BIN)/ruff check medfm tests evaluation
	$(BIN)/python -m pytest -q

# Also runs the tests marked slow.
test-all: $(STAMP)
	$(BIN)/python -m pytest -q --runslow

bench: $(STAMP)
	$(BIN)/python evaluation/bench/run.py

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstalls only when pyproject.toml changes or TORCH_SPEC differs from the last install.
$(STAMP): FORCE | $(BIN)/python
	@if [ -f $@ ] && [ "$$(cat $@)" = "$(TORCH_SPEC)" ] && [ $@ -nt pyproject.toml ]; then exit 0; fi; \
	set -e; \
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH_SPEC); \
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test]"; \
	echo "$(TORCH_SPEC)" > $@

clean:
	rm -rf $(VENV) runs data build *.egg-info
