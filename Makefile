# The two commands a new user needs (see README):
#   make demo   - create .venv, install everything pinned (CPU torch), run the main job
#   make test   - the same install, then the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2
STAMP := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install system-deps demo test test-fast lint format lock clean-results

# Runtime (lock-cpu.txt), tests and lint (lock-dev.txt), benchmarks (lock-bench.txt):
# one resolve, so the three sets are installed consistently. `pip install .` alone gets
# only the runtime dependencies.
LOCKS := requirements/lock-cpu.txt requirements/lock-dev.txt requirements/lock-bench.txt
SMK_FILES := Snakefile $(wildcard workflow/rules/*.smk)

$(STAMP): pyproject.toml $(LOCKS) requirements/lock-nodeps.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(addprefix -r ,$(LOCKS))
	$(BIN)/python -m pip install --quiet --no-deps -r requirements/lock-nodeps.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

install: $(STAMP)

system-deps:
	bash scripts/install-system-deps.sh

# --max-jobs-per-timespan: Snakemake's default rate limit (100/1s) re-runs its scheduler
# every second while jobs wait for a free core, checking every waiting job's inputs each
# time: on 2 cores that cost the main process about a third of a core (docs/hpc.md).
# Every 10 s is enough locally (a finished job wakes the scheduler at once); Snakemake
# may wait up to that long before it exits.
demo: install
	$(BIN)/snakemake --configfile config/demo.yaml --cores $(CORES) --rerun-incomplete \
		--printshellcmds --max-jobs-per-timespan 100/10s

test: install system-deps
	$(BIN)/python -m pytest tests --durations=40

test-fast: install
	$(BIN)/python -m pytest tests -m "not slow and not slurm"

# Every side-by-side benchmark, one after the other -> docs/performance.md (long: the
# report states how long its run took). Refuses uncommitted changes to tracked files: the
# report records the commit it measured (tests/unit/test_bench_freshness.py checks it).
# Smoke test: make bench BENCH_ARGS=--quick (writes under benchmarks/results/ only).
.PHONY: bench
bench: install
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

# The GPU check (benchmarks/gpu_check.py): fast kernels vs their twins, a bf16 training step
# of every model at paper width, DDP over NCCL; exits 1 on any disagreement. CPU: GPU_CHECK_ARGS=--cpu
.PHONY: gpu-check
gpu-check: install
	$(BIN)/python benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check $(SMK_FILES)
	$(BIN)/snakemake --lint
	$(BIN)/lint-imports

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	$(BIN)/snakefmt $(SMK_FILES)

# Freeze .venv and split it by what needs each pin (scripts/split_lock.py): runtime ->
# lock-cpu.txt, extra dev -> lock-dev.txt, extra bench -> lock-bench.txt.
lock: install
	$(BIN)/python -m pip freeze --exclude-editable | grep -v -e '^brainharmony' -e '^deepbet[= ]' \
	  | sed 's/^torch==\([0-9.]*\)+cpu/torch==\1/' | $(BIN)/python scripts/split_lock.py

clean-results:
	rm -rf results logs .snakemake
	# keep the benchmark report's JSON (committed) and the ANTs side environment
	find benchmarks/results -mindepth 1 -maxdepth 1 ! -name report ! -name venv-ants -exec rm -rf {} + 2>/dev/null || true
