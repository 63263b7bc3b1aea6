# make setup : create/update .venv in one pip command (pins in constraints.txt)
# make demo  : run every stage end to end on a generated synthetic world (local Ray, runs/demo)
# make test  : run the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-stamp

.PHONY: setup demo test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: setup
	RAY_AUTH_MODE=disabled $(PY) -m jobs.demo --output runs/demo

test: setup
	RAY_AUTH_MODE=disabled AWS_EC2_METADATA_DISABLED=true $(PY) -m pytest -q tests

test-fast: setup
	RAY_AUTH_MODE=disabled AWS_EC2_METADATA_DISABLED=true $(PY) -m pytest -q -m "not integration and not slow" tests

bench: setup
	$(PY) benchmarks/model_speed.py --quick

clean:
	rm -rf $(VENV) runs .pytest_cache
