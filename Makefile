# PYTHON: the Python to install with. Inside an active environment (venv, virtualenv, conda)
# that environment is used; otherwise preftune goes into the project's .venv (VENV=DIR for
# another folder), so an externally managed system Python (PEP 668) is never pip-installed into.
PYTHON ?= python3
VENV ?= $(CURDIR)/.venv
INSTALL = PYTHON="$(PYTHON)" VENV="$(VENV)" bash scripts/install.sh
# The Python that runs preftune after `make install` (the environment's, or VENV's).
RUN = "$$($(INSTALL) --which)"

.PHONY: install demo test lint

install:
	$(INSTALL)

# Install, then train the bundled tiny model on the bundled preference set (offline, CPU, ~1 min).
demo: install
	$(RUN) -m preftune orpo

# Install with the test tools (and Debian's chromium for the browser test), then lint, import every module
# (and check the layout), and run the whole test suite.
test:
	$(INSTALL) --test
	$(RUN) -m ruff check preftune tests benchmarks scripts
	$(RUN) -m pytest -q tests/test_imports.py
	$(RUN) -m pytest tests

lint:
	$(RUN) -m ruff check preftune tests benchmarks scripts
