# music-rnn-tfx: `make run` (install + local pipeline on bundled data), `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements/tfx-1.16-py311.lock
STAMP := $(VENV)/.installed
MELODY_SUBSET := data/melody/essen_subset.tfrecord
PYTEST_ARGS ?=
# `make run` trains CPU-sized models (Magenta's layer sizes take ~100 s/step for drum_kit on
# 2 cores). Override for Magenta's defaults, e.g. `make run RUN_ARGS='--train-steps 20000'`.
RUN_ARGS ?= --train-steps 100 --batch-size 32 --hparams 'rnn_layer_sizes=[64,64]'

.PHONY: venv data data-full run test oracle benchmarks clean

venv: $(STAMP)

# TFX 1.16 declares Requires-Python <3.11 in its two pure-Python packages only: install
# every pinned dependency normally, then those two with --no-deps (see requirements/README.md).
$(STAMP): $(LOCK) setup.py
	$(PYTHON) -m venv $(VENV)
	grep -vE '^(tfx|ml-pipelines-sdk)==' $(LOCK) > $(VENV)/deps.txt
	$(BIN)/pip install -q -r $(VENV)/deps.txt
	$(BIN)/pip install -q --no-deps --ignore-requires-python \
	  $$(grep -E '^(tfx|ml-pipelines-sdk)==' $(LOCK))
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip check | grep -v 'tensorflow-hub' | grep . && exit 1 || true
	touch $(STAMP)

$(MELODY_SUBSET): $(STAMP) data/build_essen.py
	$(BIN)/python data/build_essen.py --subset --output $(MELODY_SUBSET)

data: $(MELODY_SUBSET)

# Magenta 2.1.4 itself, outside the product's environment: a test oracle for extraction.
ORACLE_STAMP := .oracle-site/.installed
$(ORACLE_STAMP): $(STAMP)
	$(BIN)/pip install -q --no-deps --no-compile --target .oracle-site magenta==2.1.4
	touch $(ORACLE_STAMP)

oracle: $(ORACLE_STAMP)

data-full: $(STAMP)
	$(BIN)/python data/build_essen.py --full --output data/melody/essen_full.tfrecord
	$(BIN)/python data/build_mma.py --output data/drums/mma_grooves.tfrecord

run: data
	$(BIN)/music-rnn run --config drum_kit $(RUN_ARGS)
	$(BIN)/music-rnn run --config attention_rnn $(RUN_ARGS)

test: data oracle
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests

benchmarks: data
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf build serving/models
