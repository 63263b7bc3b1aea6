# make setup : create/update .venv in one pip command (pins: constraints.txt + infra/requirements.lock) and install Chromium where missing
# make demo  : run every stage end to end on a generated synthetic world (local Ray, runs/demo)
# make test  : run the test suite (without the `slow` tests; CI runs this)
# make test-all: every test, `slow` ones included (long training runs, torch.compile, the claim smoke run)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-stamp

.PHONY: setup chromium demo test test-all test-fast bench clean

setup: chromium $(STAMP)

# tests/test_browser.py opens the QA gallery and the evaluation report in a real headless browser: Debian's chromium
# (driven by the pinned Python playwright, never `playwright install`). Installed only where it is missing (needs
# root and apt, as on CI).
chromium:
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium)

$(STAMP): pyproject.toml constraints.txt infra/requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet -c constraints.txt -c infra/requirements.lock -e '.[dev]'
	touch $(STAMP)

demo: setup
	RAY_AUTH_MODE=disabled $(PY) -m jobs.demo --output runs/demo

test: setup
	RAY_AUTH_MODE=disabled AWS_EC2_METADATA_DISABLED=true $(PY) -m pytest -q -m "not slow" --durations=25 tests

test-all: setup
	RAY_AUTH_MODE=disabled AWS_EC2_METADATA_DISABLED=true $(PY) -m pytest -q --durations=25 tests

test-fast: setup
	RAY_AUTH_MODE=disabled AWS_EC2_METADATA_DISABLED=true $(PY) -m pytest -q -m "not integration and not slow" tests

bench: setup
	$(PY) benchmarks/model_speed.py --quick

clean:
	rm -rf $(VENV) runs .pytest_cache
