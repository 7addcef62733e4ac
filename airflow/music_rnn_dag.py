"""Airflow DAGs: the one `create_pipeline(settings)`, one DAG per model config (AirflowDagRunner).

Airflow imports this file from its dags_folder (see airflow/README.md); each TFX
component becomes a task that runs the component in the Airflow worker. Settings come
from the environment so that the scheduler, the workers and `airflow dags test` all
build the same DAGs:

  MUSIC_RNN_AIRFLOW_CONFIGS   model configs, comma-separated (default: drum_kit,
                              attention_rnn, cat-drums_2bar_small, cat-mel_2bar_small)
  MUSIC_RNN_AIRFLOW_<FIELD>   any pipeline/settings.py PipelineSettings field in capitals,
                              written as on `music-rnn run`, e.g. DATA, TRAIN_STEPS=3,
                              HPARAMS='rnn_layer_sizes=[64,64]', SEED=7, TUNE=1,
                              MAX_TRIALS=5, MIXED_PRECISION=auto, CHECKPOINT_EVERY=none,
                              BLESSING='unigram_margin=0.05', BEAM_PIPELINE_ARGS='--...',
                              ENABLE_CACHE=0 (airflow/README.md lists them all)
  MUSIC_RNN_AIRFLOW_<CONFIG>__<FIELD>
                              the same, for one DAG only (its config in capitals, '-' as
                              '_': CAT_DRUMS_2BAR_SMALL__HPARAMS='z_size=32'); wins over
                              the shared one (an RNN's hparams are not a MusicVAE's)
  MUSIC_RNN_HOME              OUTPUT_ROOT defaults to $MUSIC_RNN_HOME/airflow/

Without Airflow installed (tests, tools) the file imports and `dag_settings` says what a
DAG would run; the DAGs themselves are built only where Airflow is.
"""

import datetime
import importlib.util
import os
import re
from typing import Mapping, Optional

from tfx import v1 as tfx

from pipeline import configs
from pipeline import pipeline as pipeline_lib
from pipeline.settings import PipelineSettings

ENV_PREFIX = 'MUSIC_RNN_AIRFLOW_'
DEFAULT_CONFIGS = 'drum_kit,attention_rnn,cat-drums_2bar_small,cat-mel_2bar_small'


def dag_prefix(model_config: str) -> str:
  """The prefix of one DAG's own variables: MUSIC_RNN_AIRFLOW_CAT_DRUMS_2BAR_SMALL__."""
  return ENV_PREFIX + re.sub(r'[^A-Z0-9]', '_', model_config.upper()) + '__'


def dag_settings(model_config: str,
                 environ: Optional[Mapping[str, str]] = None) -> PipelineSettings:
  """The settings of the DAG for `model_config`, from MUSIC_RNN_AIRFLOW_* variables, its
  own MUSIC_RNN_AIRFLOW_<CONFIG>__* ones winning."""
  environ = os.environ if environ is None else environ
  own = dag_prefix(model_config)
  merged = {**environ, **{ENV_PREFIX + name[len(own):]: value
                          for name, value in environ.items() if name.startswith(own)}}
  try:
    return PipelineSettings.from_env(
        ENV_PREFIX, {'output_root': os.path.join(configs.OUTPUT_ROOT, 'airflow')}, merged,
        model_config=model_config)
  except ValueError as e:
    raise ValueError(f'DAG {model_config}: {e} (variables for this DAG only: '
                     f'{own}<FIELD>)') from None


def build_dag(model_config: str):
  """The Airflow DAG (dag_id = pipeline name) for one model config."""
  from tfx.orchestration.airflow import airflow_dag_runner  # pylint: disable=g-import-not-at-top
  settings = dag_settings(model_config).with_local_files_checked()
  resolved = settings.resolved()
  os.makedirs(os.path.dirname(resolved.metadata_path), exist_ok=True)
  pipeline = pipeline_lib.create_pipeline(
      resolved, tfx.orchestration.metadata.sqlite_metadata_connection_config(
          resolved.metadata_path))
  # Triggered by hand (UI, `airflow dags trigger`, `airflow dags test`), never backfilled.
  dag_config = {'schedule': None, 'start_date': datetime.datetime(2024, 1, 1),
                'catchup': False,
                'tags': ['music-rnn', settings.config.family, settings.config.kind]}
  return airflow_dag_runner.AirflowDagRunner(
      airflow_dag_runner.AirflowPipelineConfig(dag_config)).run(pipeline)


def _airflow_installed() -> bool:
  """Airflow itself, not this repository's airflow/ folder seen as a namespace package."""
  try:
    return importlib.util.find_spec('airflow.models') is not None
  except ModuleNotFoundError:
    return False


# Airflow collects module-level DAG objects.
if _airflow_installed():
  for _name in (os.environ.get(ENV_PREFIX + 'CONFIGS') or DEFAULT_CONFIGS).split(','):
    _dag = build_dag(_name.strip())
    globals()[_dag.dag_id] = _dag
