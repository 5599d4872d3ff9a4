# Two commands on a fresh machine: `make demo` (the main demo) and `make test` (every test).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90

.PHONY: install demo test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/provision demo

lint: install
	$(PY) -m ruff check .
	$(PY) -m mypy provisioning providers tasks flows deployments

test: lint
	$(PY) -m pytest -q

clean:
	rm -rf .provisioning .demo
