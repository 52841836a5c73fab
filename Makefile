# make demo: the whole pipeline on synthetic COCO-format data, then the report.
# make test: the test suite. Both create .venv first when it is missing.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
CORES ?= 2
export NO_ALBUMENTATIONS_UPDATE := 1
export WANDB_MODE ?= offline

.PHONY: demo test test-slurm lint clean-demo

$(BIN)/activate: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(BIN)/activate

demo: $(BIN)/activate
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml
	$(BIN)/snakemake --cores $(CORES) --configfile config/demo.yaml --report results/demo/report.html
	@echo "report: $(CURDIR)/results/demo/report.html"

# ruff first (seconds), with the rules in pyproject.toml; pytest exits 5 when it collected no test: that is a
# failure, said plainly.
test: $(BIN)/activate
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS) || { rc=$$?; [ $$rc -ne 5 ] || echo "pytest collected no tests" >&2; exit $$rc; }

# The Slurm path: a real single-node Slurm on this machine (root; installs Debian's Slurm 22.05 and munge
# if missing), and the profile's submissions through stand-ins for Slurm's commands. -rP prints what
# the tests report (job ids, exit states, sbatch arguments), --durations where the time goes.
test-slurm: $(BIN)/activate
	PATH="$$PATH:/usr/sbin:/sbin"; command -v slurmctld >/dev/null && command -v slurmd >/dev/null && \
		command -v munged >/dev/null && \
		command -v sbatch >/dev/null || \
		{ apt-get update -qq && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge; }
	PATH="$$PATH:/usr/sbin:/sbin" COCOSEG_REQUIRE_SLURM=1 \
		$(BIN)/python -m pytest -n0 -m slurm -rP --durations=8 tests/test_slurm.py tests/test_slurm_submission.py $(PYTEST_ARGS)

lint: $(BIN)/activate
	$(BIN)/snakemake --lint --configfile config/demo.yaml
	$(BIN)/snakemake --lint

clean-demo:
	rm -rf results/demo resources/synthetic-demo

# The suite without the tests marked slow (real Snakemake runs, multi-process training, benchmarks): under a minute.
.PHONY: test-fast
test-fast: $(BIN)/activate
	$(BIN)/python -m pytest -m 'not slow and not slurm' $(PYTEST_ARGS)
