# meas_extensions_deepdisc: the two commands a newcomer needs are `make demo` and `make test`.
# Both bootstrap .venv through `make setup` (idempotent: a second run takes about a second).

VENV ?= .venv
PY := $(VENV)/bin/python
BUTLER_CONFIG_DIR := $(CURDIR)/python/lsst/meas/extensions/deepdisc/butler/configs
# Our storage classes and formatters reach the Butler (and pipetask's child processes) through this path,
# exactly as ups/meas_extensions_deepdisc.table sets it inside the Rubin stack.
export DAF_BUTLER_CONFIG_PATH := $(BUTLER_CONFIG_DIR)$(if $(DAF_BUTLER_CONFIG_PATH),:$(DAF_BUTLER_CONFIG_PATH))
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export MEAS_EXTENSIONS_DEEPDISC_DIR := $(CURDIR)
# Two cores: keep torch from oversubscribing when pytest runs two workers.
PYTEST_WORKERS ?= 2
DEMO_DIR ?= demo_output

.PHONY: setup test lint demo smoke clean distclean

setup:
	@bin/setup-venv.sh

lint: setup
	$(PY) -m ruff check python tests bench config
	$(PY) -m ruff format --check python tests bench config

test: setup
	$(PY) -m ruff check python tests bench config
	OMP_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

demo: setup
	$(PY) -m lsst.meas.extensions.deepdisc.cli.demo --output $(DEMO_DIR)

smoke: setup
	$(PY) -m lsst.meas.extensions.deepdisc.cli.smoke

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .ruff_cache .hypothesis
	find python tests bench -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
