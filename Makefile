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

.PHONY: demo test test-all bench install system-packages report-packages clean FORCE

# The demo ends with the validation report, printed to PDF by headless Chromium.
demo: $(STAMP) report-packages
	$(BIN)/medfm run pipelines/demo.yaml

test: $(STAMP) system-packages
	$(BIN)/ruff check medfm tests evaluation
	$(BIN)/python -m pytest -q

# Also runs the tests marked slow.
test-all: $(STAMP) system-packages
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

# What the tests start: a DICOMweb server (Orthanc) for ingest, a headless browser for the
# search page. Installed with apt-get (as root, or through sudo) only when missing.
SYSTEM_PACKAGES := orthanc orthanc-dicomweb chromium chromium-driver
APT_INSTALL = set -e; SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); $$SUDO apt-get update -qq; \
	DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends
system-packages:
	@if command -v Orthanc >/dev/null && [ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] \
		&& command -v chromium >/dev/null; then exit 0; fi; \
	$(APT_INSTALL) $(SYSTEM_PACKAGES)

report-packages:
	@if command -v chromium >/dev/null; then exit 0; fi; \
	$(APT_INSTALL) chromium

clean:
	rm -rf $(VENV) runs data build *.egg-info
