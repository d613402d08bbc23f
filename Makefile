# jacbench: `make bench` and `make test` set up .venv themselves when it is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.jacbench-installed

.PHONY: test bench setup clean peers pybench asv-machine asv-quick asv asv-history asv-compare asv-publish

setup: $(STAMP)

# Re-install when the declared dependencies change.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	@touch $(STAMP)

# Optional peer libraries (issue 7's side-by-side rows). --no-deps: backpack-for-pytorch asks for
# torchvision, whose PyPI build expects CUDA torch and breaks the import beside CPU torch 2.13;
# BackPACK only uses it in examples. Without them those strategies report "not installed".
peers: $(STAMP)
	$(PY) -m pip install --quiet --no-deps backpack-for-pytorch curvlinops-for-pytorch
	$(PY) -m pip install --quiet einops unfoldNd einconv linear_operator opt-einsum scipy tqdm
	$(MAKE) $(NT_STAMP)

# neural-tangents runs only on JAX 0.4.23 (Python 3.9-3.12 wheels), so it gets an environment
# of its own, run out of process by strategies/peer_neural_tangents.py. It pulls in TensorFlow
# (its experimental module imports it on `import neural_tangents`): about 2.6 GB.
NT_VENV  ?= .venv-nt
NT_STAMP := $(NT_VENV)/.jacbench-installed
$(NT_STAMP):
	@test -x $(NT_VENV)/bin/python || $(PYTHON) -m venv $(NT_VENV)
	$(NT_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(NT_VENV)/bin/python -m pip install --quiet neural-tangents==0.6.5 jax==0.4.23 \
		jaxlib==0.4.23 "numpy<2"
	@touch $(NT_STAMP)

# Two pytest-xdist workers, one test file each at a time (a file's module fixtures are built
# once): 7m45s from a fresh clone on an idle 2-core machine, venv included. TEST_ARGS= runs
# them one at a time.
TEST_ARGS ?= -n 2 --dist loadfile
test: $(STAMP)
	$(PY) -m pytest tests $(TEST_ARGS)

# The quick CPU sweep, then the HTML report. Rows are appended to $(RESULTS) (the newest row of
# a case wins); BENCH_ARGS adds run options, e.g. `make bench BENCH_ARGS=--resume`.
RESULTS    ?= results/results.jsonl
BENCH_ARGS ?=
bench: $(STAMP)
	$(PY) -m jacbench run --profile quick --device cpu --results $(RESULTS) $(BENCH_ARGS)
	$(PY) -m jacbench report $(RESULTS) --out reports/out/index.html

# pytest-benchmark over the asv suites' cases (tests/test_pybench.py), one group per quantity;
# `make test` runs the same file with benchmarking off. JSON goes to .benchmarks/ (autosave).
PYBENCH_ARGS ?= --benchmark-max-time=0.5
pybench: $(STAMP)
	$(PY) -m pytest tests/test_pybench.py -q --benchmark-enable \
		--benchmark-autosave --benchmark-columns=min,median,iqr,rounds \
		--benchmark-sort=name $(PYBENCH_ARGS)

# asv: history tracking of the same cases (bench/asv_suites, asv.conf.json; README section
# "History tracking"). Every target runs in this .venv (--python=same): no per-commit builds.
ASV         := $(PY) -m asv
ASV_MACHINE ?= $(shell uname -n)
ASV_ARGS    ?=
N           ?= 5
A           ?= HEAD~1
B           ?= HEAD
FACTOR      ?= 1.2

# asv refuses to run before the machine is described; --yes answers without a terminal (CI).
asv-machine: $(STAMP)
	@$(ASV) machine --yes --machine $(ASV_MACHINE) >/dev/null

# Smoke test: every benchmark once, tiny sizes, nothing saved; fails when a benchmark fails.
# JAX's compilation cache lets the four benchmark processes of one case share compiled code;
# the timings are thrown away here, so nothing measured depends on it.
asv-quick: asv-machine
	JACBENCH_ASV_LADDER=test JAX_COMPILATION_CACHE_DIR=$(CURDIR)/.asv/jax-cache \
	JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0 \
	$(ASV) run --python=same --quick --dry-run --show-stderr --machine $(ASV_MACHINE) $(ASV_ARGS)

# The working tree, measured and saved under HEAD's commit hash.
asv: asv-machine
	$(ASV) run --python=same --set-commit-hash $$(git rev-parse HEAD) --machine $(ASV_MACHINE) \
		$(ASV_ARGS)

# The last N commits of HEAD, each from its own git worktree (bench/asv_history.py).
asv-history: asv-machine
	$(PY) -m jacbench.bench.asv_history -n $(N) --machine $(ASV_MACHINE) -- $(ASV_ARGS)

# The benchmarks that changed by more than FACTOR from A to B (+ worse, - better); both commits
# need results (make asv / make asv-history).
asv-compare: $(STAMP)
	$(ASV) compare --only-changed --factor $(FACTOR) --machine $(ASV_MACHINE) $(A) $(B)

# The static site with a graph per benchmark, from the saved results, into .asv/html.
asv-publish: $(STAMP)
	$(ASV) publish
	@echo "open .asv/html/index.html (or: $(ASV) preview)"

clean:
	rm -rf $(VENV) $(NT_VENV) .pytest_cache results reports/out
