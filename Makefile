PYTHON ?= python3

.PHONY: install demo test

install:
	PYTHON=$(PYTHON) bash scripts/install.sh

# Install, then train the bundled tiny model on the bundled preference set (offline, CPU, ~1 min).
demo: install
	$(PYTHON) -m preftune orpo

# Install with the test tools (and Debian's chromium for the browser test), then run the whole test suite.
test:
	PYTHON=$(PYTHON) bash scripts/install.sh --test
	$(PYTHON) -m pytest tests
