"""Airflow DAGs: the one `create_pipeline(...)`, one DAG per model config, via AirflowDagRunner.

Airflow imports this file from its dags_folder (see airflow/README.md); each TFX
component becomes a task that runs the component in the Airflow worker. Settings come
from the environment so that the scheduler, the workers and `airflow dags test` all
build the same DAGs:

  MUSIC_RNN_AIRFLOW_CONFIGS      model configs, comma-separated (default: drum_kit,attention_rnn)
  MUSIC_RNN_AIRFLOW_DATA         NoteSequence TFRecord file, directory or glob for every
                                 config (default: the bundled data of the config's kind)
  MUSIC_RNN_AIRFLOW_TRAIN_STEPS  / MUSIC_RNN_AIRFLOW_EVAL_STEPS (default: pipeline/configs.py)
  MUSIC_RNN_AIRFLOW_HPARAMS      Magenta syntax, e.g. 'rnn_layer_sizes=[64,64]'
  MUSIC_RNN_AIRFLOW_BEAM_ARGS    one shell-quoted string (default: DirectRunner in-process)
  MUSIC_RNN_AIRFLOW_SERVING_DIR  Pusher root (default: serving/models)
  MUSIC_RNN_AIRFLOW_BLESSING     Evaluator thresholds, e.g. 'max_perplexity_fraction=0.8,
                                 unigram_margin=0.05,loss_tolerance=none' (default:
                                 pipeline/configs.py BLESSING)
  MUSIC_RNN_HOME                 pipeline roots and ML-Metadata go to $MUSIC_RNN_HOME/airflow/
"""

import datetime
import os
import shlex

from tfx import v1 as tfx
from tfx.orchestration.airflow import airflow_dag_runner

from music_rnn import configs as model_configs
from pipeline import configs
from pipeline import local_runner
from pipeline import pipeline as pipeline_lib

_ENV = 'MUSIC_RNN_AIRFLOW_'


def _setting(name: str, default=None):
  return os.environ.get(_ENV + name) or default


def build_dag(model_config: str):
  """The Airflow DAG (dag_id = pipeline name) for one model config."""
  config = model_configs.get_config(model_config)
  hparams = model_configs.parse_hparams(_setting('HPARAMS', ''))
  data_root, data_pattern = local_runner.split_data_path(
      _setting('DATA') or configs.default_data(config.kind))
  name = configs.pipeline_name(config.name)
  home = os.path.join(configs.OUTPUT_ROOT, 'airflow')
  metadata_path = os.path.join(home, 'metadata', name, 'metadata.db')
  os.makedirs(os.path.dirname(metadata_path), exist_ok=True)
  pipeline = pipeline_lib.create_pipeline(
      pipeline_name=name,
      pipeline_root=os.path.join(home, 'pipelines', name),
      data_root=data_root,
      data_pattern=data_pattern,
      model_config=config.name,
      serving_model_dir=os.path.join(
          _setting('SERVING_DIR', configs.SERVING_MODELS_DIR), config.name),
      preprocessing_fn=configs.PREPROCESSING_FN,
      run_fn=configs.RUN_FN,
      train_steps=int(_setting('TRAIN_STEPS', configs.TRAIN_STEPS)),
      eval_steps=int(_setting('EVAL_STEPS', configs.EVAL_STEPS)),
      hparams=hparams,
      metadata_connection_config=tfx.orchestration.metadata
      .sqlite_metadata_connection_config(metadata_path),
      beam_pipeline_args=shlex.split(_setting('BEAM_ARGS', ''))
      or list(configs.BEAM_PIPELINE_ARGS),
      blessing=configs.BLESSING.replace(_setting('BLESSING', '')))
  # Triggered by hand (UI, `airflow dags trigger`, `airflow dags test`), never backfilled.
  dag_config = {'schedule': None, 'start_date': datetime.datetime(2024, 1, 1),
                'catchup': False, 'tags': ['music-rnn', config.kind]}
  return airflow_dag_runner.AirflowDagRunner(
      airflow_dag_runner.AirflowPipelineConfig(dag_config)).run(pipeline)


# Airflow collects module-level DAG objects.
for _name in _setting('CONFIGS', 'drum_kit,attention_rnn').split(','):
  _dag = build_dag(_name.strip())
  globals()[_dag.dag_id] = _dag
