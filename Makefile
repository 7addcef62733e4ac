# music-rnn-tfx: `make run` (install + local pipeline on bundled data), `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements/tfx-1.16-py311.lock
STAMP := $(VENV)/.installed
MELODY_SUBSET := data/melody/essen_subset.tfrecord
PYTEST_ARGS ?=
# `make run` trains CPU-sized models (Magenta's layer sizes are far slower on 2 cores):
# [64,64] layers, batch 32, 300 steps at learning rate 0.005 (Magenta's 0.001 needs more
# steps than a 20-minute budget holds). Magenta's defaults: `make run RUN_ARGS='--train-steps 20000'`.
RUN_ARGS ?= --train-steps 300 --batch-size 32 --hparams 'rnn_layer_sizes=[64,64],learning_rate=0.005'
# `make run-vae`: the two MusicVAEs at CPU sizes (Magenta's: enc [512], dec [256,256], z 256,
# batch 512, ~50k steps), 600 steps at learning rate 0.003.
VAE_RUN_ARGS ?= --train-steps 600 --batch-size 64 \
  --hparams 'enc_rnn_size=[128],dec_rnn_size=[128,128],z_size=64,learning_rate=0.003'
# Appended to RUN_ARGS (benchmarks/pipeline_walltime.py puts outputs elsewhere with it).
RUN_EXTRA ?=

.PHONY: venv data data-full run run-vae test oracle benchmarks clean airflow-venv kubeflow-spec image

venv: $(STAMP)

# TFX 1.16 declares Requires-Python <3.11 in its two pure-Python packages only: install
# every pinned dependency normally, then those two with --no-deps (see requirements/README.md).
$(STAMP): $(LOCK) setup.py
	$(PYTHON) -m venv $(VENV)
	grep -vE '^(tfx|ml-pipelines-sdk)==' $(LOCK) > $(VENV)/deps.txt
	$(BIN)/pip install -q -r $(VENV)/deps.txt
	$(BIN)/pip install -q --no-deps --ignore-requires-python \
	  $$(grep -E '^(tfx|ml-pipelines-sdk)==' $(LOCK))
	$(BIN)/pip install -q --no-deps --no-build-isolation --config-settings editable_mode=compat -e .
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

# tf-slim for Magenta's own training graphs (benchmarks/train_vs_magenta.py), kept apart too;
# tensorflow-probability and dm-tree for its MusicVAE (benchmarks/vae_train_vs_magenta.py).
ORACLE_EXTRA_STAMP := .oracle-extra/.installed
$(ORACLE_EXTRA_STAMP): $(STAMP)
	$(BIN)/pip install -q --no-deps --no-compile --target .oracle-extra tf-slim==1.1.0 \
	  tensorflow-probability==0.24.0 dm-tree==0.1.8
	touch $(ORACLE_EXTRA_STAMP)

oracle: $(ORACLE_STAMP) $(ORACLE_EXTRA_STAMP)

data-full: $(STAMP)
	$(BIN)/python data/build_essen.py --full --output data/melody/essen_full.tfrecord
	$(BIN)/python data/build_mma.py --output data/drums/mma_grooves.tfrecord

run: data
	$(BIN)/music-rnn run --config drum_kit $(RUN_ARGS) $(RUN_EXTRA)
	$(BIN)/music-rnn run --config attention_rnn $(RUN_ARGS) $(RUN_EXTRA)

run-vae: data
	$(BIN)/music-rnn run --config cat-drums_2bar_small $(VAE_RUN_ARGS) $(RUN_EXTRA)
	$(BIN)/music-rnn run --config cat-mel_2bar_small $(VAE_RUN_ARGS) $(RUN_EXTRA)

# Airflow 2.10 needs Werkzeug < 3, the main lock has 3.1: .venv-airflow holds only Airflow's
# packages (its lock, --no-deps) and reaches everything else (TFX, this package) through a
# .pth that adds .venv's site-packages after its own. See airflow/README.md.
AIRFLOW_VENV := .venv-airflow
AIRFLOW_LOCK := requirements/airflow-2.10-py311.lock
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed
$(AIRFLOW_STAMP): $(STAMP) $(AIRFLOW_LOCK)
	rm -rf $(AIRFLOW_VENV)
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	echo "import site; site.addsitedir('$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')')" \
	  > "$$($(AIRFLOW_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz_music_rnn_main_venv.pth"
	$(AIRFLOW_VENV)/bin/pip install -q --no-deps -r $(AIRFLOW_LOCK)
	$(AIRFLOW_VENV)/bin/pip check | grep -v 'tensorflow-hub' | grep . && exit 1 || true
	touch $(AIRFLOW_STAMP)

airflow-venv: $(AIRFLOW_STAMP)

# Kubeflow: compile both specs (no cluster needed); build/push the image (needs Docker or gcloud).
# make kubeflow-spec PIPELINE_ROOT=gs://B/music-rnn DATA_DRUMS=gs://B/drums DATA_MELODY=gs://B/melody IMAGE=...
KUBEFLOW_OUT ?= build/kubeflow
kubeflow-spec: $(STAMP)
	@test -n "$(PIPELINE_ROOT)" -a -n "$(DATA_DRUMS)" -a -n "$(DATA_MELODY)" -a -n "$(IMAGE)" || \
	  { echo 'usage: make kubeflow-spec PIPELINE_ROOT=gs://... DATA_DRUMS=gs://... DATA_MELODY=gs://... IMAGE=...'; exit 2; }
	$(BIN)/python kubeflow/kubeflow_v2_runner.py --config drum_kit --pipeline-root $(PIPELINE_ROOT) \
	  --data $(DATA_DRUMS) --image $(IMAGE) --output $(KUBEFLOW_OUT)/drum_kit.json $(KUBEFLOW_ARGS)
	$(BIN)/python kubeflow/kubeflow_v2_runner.py --config attention_rnn --pipeline-root $(PIPELINE_ROOT) \
	  --data $(DATA_MELODY) --image $(IMAGE) --output $(KUBEFLOW_OUT)/attention_rnn.json $(KUBEFLOW_ARGS)
	$(BIN)/python kubeflow/kubeflow_v2_runner.py --config cat-drums_2bar_small --pipeline-root $(PIPELINE_ROOT) \
	  --data $(DATA_DRUMS) --image $(IMAGE) --output $(KUBEFLOW_OUT)/cat-drums_2bar_small.json $(KUBEFLOW_VAE_ARGS)
	$(BIN)/python kubeflow/kubeflow_v2_runner.py --config cat-mel_2bar_small --pipeline-root $(PIPELINE_ROOT) \
	  --data $(DATA_MELODY) --image $(IMAGE) --output $(KUBEFLOW_OUT)/cat-mel_2bar_small.json $(KUBEFLOW_VAE_ARGS)

image:
	@test -n "$(IMAGE)" || { echo 'usage: make image IMAGE=REGISTRY/PATH:TAG [IMAGE_ARGS=--push|--cloud]'; exit 2; }
	kubeflow/build_image.sh $(IMAGE) $(IMAGE_ARGS)

test: data oracle airflow-venv
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) tests

benchmarks: data oracle
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf build serving/models
