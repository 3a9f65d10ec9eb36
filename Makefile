# Two commands for people: `make demo` and `make test`. Everything else supports them.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: demo test lint typecheck unit chaos services tools slurm-up slurm-down clean

$(PY):
	python3.11 -m venv $(VENV) || python3 -m venv $(VENV)

$(VENV)/.demo-installed: pyproject.toml | $(PY)
	$(PIP) -e '.[demo,train]'
	touch $@

$(VENV)/.dev-installed: pyproject.toml | $(PY)
	$(PIP) -e '.[dev]'
	touch $@ $(VENV)/.demo-installed

demo: $(VENV)/.demo-installed
	$(VENV)/bin/trainwarden demo

services:
	bash tests/infra/ensure-services.sh

# command-line tools the suite checks the shipped files with (promtool), and Slurm before
# the suite is collected (the hostlist tests compare with scontrol and skip without it)
tools:
	bash tests/infra/install-tools.sh
	bash tests/infra/slurm/install.sh || echo "tools: Slurm not installed; the tests that need it say so"

lint: $(VENV)/.dev-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.dev-installed
	$(VENV)/bin/mypy

test: $(VENV)/.dev-installed services tools
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -q -ra --durations=25

unit: $(VENV)/.dev-installed
	$(VENV)/bin/pytest -q -m "not integration and not slurm and not e2e"

# the chaos cases (also part of `make test`) as one table: docs/chaos.md
chaos: $(VENV)/.dev-installed services
	$(PY) bench/chaos.py --markdown docs/chaos.md

slurm-up:
	bash tests/infra/slurm/start.sh

slurm-down:
	bash tests/infra/slurm/stop.sh

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache build *.egg-info
