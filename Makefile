# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create or reuse .venv and install from envs/ (skipped when nothing changed).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CORES ?= all

.PHONY: demo demo-seeds test test-fast lint install clean-results

$(STAMP): envs/requirements.txt envs/requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r envs/requirements-dev.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) --profile profiles/default
	$(PY) -m lgkd_core report print results/*/compare.csv
	@echo "every table and figure: results/report.html"

# The README's mean +- std: LGKD, FT and MiB+LGKD on the embedded 15-1 over seeds 1, 2, 3.
SEEDS := synthetic_15-1_seeds synthetic_15-1_ft_seeds synthetic_15-1_mib-lgkd_seeds
demo-seeds: $(STAMP)
	$(VENV)/bin/snakemake --cores $(CORES) --profile profiles/default $(SEEDS:%=results/%/table.csv)
	$(PY) -m lgkd_core report summary --out results/seeds_summary.csv \
		--table $(foreach s,$(SEEDS),$(s)=results/$(s)/table.csv)
	$(PY) -m lgkd_core report print results/seeds_summary.csv

test: $(STAMP)
	$(PY) -m pytest -q -ra

# The inner loop: everything but the end-to-end runs marked slow (a few minutes on 2 cores).
test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
	$(VENV)/bin/snakefmt --check Snakefile workflow/
	$(VENV)/bin/snakemake --lint
