# The two set-up commands: `make run` and `make test`. Both install first if needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install run test bench soak clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: install
	$(BIN)/python -m portal.launcher

test: install
	$(BIN)/pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m benchmarks $(BENCHMARKS)

# Concurrent senders with aborts and killed workers for SOAK_SECONDS (default 60).
soak: install
	$(BIN)/python -m benchmarks.soak

clean:
	rm -rf $(VENV) build *.egg-info
