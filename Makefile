# towerflow: the two commands a newcomer needs are `make run` and `make test`.
# Each installs what it needs first (virtualenv, pinned packages, data).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA_DIR ?= data
RUN_DIR ?= runs/local
STAMP := $(VENV)/.installed

.PHONY: setup data services run test test-fast test-e2e lint clean

# tfx 1.16.0 declares Requires-Python <3.11 although every compiled dependency
# of the 1.16 line ships cp311 wheels and the stack works on 3.11 (see
# docs/design.md, "Stack"); newer TFX lines have no Linux wheels for
# ml-metadata/TFDV. So pip must be told to ignore that one declaration. The
# constraints file pins the whole resolved set, so the install needs no backtracking.
$(STAMP): setup.py constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24" wheel "setuptools>=69,<75"
	$(BIN)/python -m pip install --ignore-requires-python -c constraints.txt -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

$(DATA_DIR)/ml-100k/MANIFEST.json: | $(STAMP)
	$(BIN)/towerflow data fetch --dataset ml-100k --data-dir $(DATA_DIR)

data: $(DATA_DIR)/ml-100k/MANIFEST.json

# System services the online side and its tests use: a real redis-server (the feature store), Prometheus
# (scraping the service in a test) and Chromium (the web page's browser test). Debian packages, installed
# once when missing; without apt-get (not Debian, not root) the make stops and says what to install.
SYSTEM_PACKAGES := redis-server:redis-server prometheus:prometheus chromium:chromium
services:
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ]; then \
	  echo "Installing system packages:$$missing"; \
	  if ! command -v apt-get >/dev/null 2>&1; then echo "apt-get not found: install$$missing yourself"; exit 1; fi; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# The main job: the pipeline on the embedded default data (MovieLens-100K), the
# offline evaluation, then the recommender service until Ctrl-C: it starts the
# embedded model server on the pushed models and the run's feature store (a
# real redis-server), and answers on http://127.0.0.1:8080 (README, "The
# recommender service").
run: setup data services
	$(BIN)/towerflow run --data-dir $(DATA_DIR)/ml-100k --output-dir $(RUN_DIR)
	$(BIN)/towerflow evaluate --output-dir $(RUN_DIR)
	$(BIN)/towerflow service --run-dir $(RUN_DIR)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test-fast: setup data services
	$(BIN)/pytest -m "not e2e" -q

test-e2e: setup data services
	$(BIN)/pytest -m e2e -q

# Everything CI runs: lint, the fast suite, then the end-to-end suite.
test: lint test-fast test-e2e

clean:
	rm -rf $(RUN_DIR) build *.egg-info
