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

# The quick CPU sweep, then the HTML report. Rows are appended to $(RESULTS) (the newest row of
# a case wins); BENCH_ARGS adds run options, e.g. `make bench BENCH_ARGS=--resume`.
RESULTS    ?= results/results.jsonl
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) -m bench run --profile quick --device cpu --results $(RESULTS) $(BENCH_ARGS)
	$(PY) -m bench report $(RESULTS) --out reports/out/index.html

clean:
	rm -rf $(VENV) .pytest_cache results reports/out
