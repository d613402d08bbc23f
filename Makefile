# jacbench: `make bench` and `make test` set up .venv themselves when it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.jacbench-installed

.PHONY: test bench setup clean

setup: $(STAMP)

# Re-install when the declared dependencies change.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests

bench: $(STAMP)
	@echo "make bench: the runner is not built yet (issue: harness, runner and command line)" >&2
	@exit 1

clean:
	rm -rf $(VENV) .pytest_cache results reports/out
