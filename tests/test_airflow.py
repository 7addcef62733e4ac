"""Airflow: the DAG file run for real by Apache Airflow 2.10 (`airflow dags test`).

Airflow lives in .venv-airflow (`make airflow-venv`): it needs Werkzeug < 3, the main lock
has 3.1. Its metadata database is SQLite in a temporary AIRFLOW_HOME; the data is a tiny
real slice of the bundled drums. Every model config must load as a DAG shaped like
create_pipeline; one event-RNN DAG and one MusicVAE DAG run: every task must succeed and the
model must be pushed.
"""

import importlib.util
import json
import os
import sqlite3
import subprocess

import pytest
from ml_metadata.proto import metadata_store_pb2

from music_rnn import configs as configs_lib
from pipeline import configs
from pipeline import mlmd_results
from pipeline import pipeline as pipeline_lib
from pipeline.settings import PipelineSettings
from tests.conftest import PROJECT_ROOT, bundled, write_slice_with_eval

AIRFLOW_BIN = os.path.join(PROJECT_ROOT, '.venv-airflow', 'bin')
DAG_FOLDER = os.path.join(PROJECT_ROOT, 'airflow')


def _load_dag_file():
  """The DAG file as a module (without Airflow installed it builds no DAGs)."""
  spec = importlib.util.spec_from_file_location(
      'music_rnn_dag', os.path.join(DAG_FOLDER, 'music_rnn_dag.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


dag_file = _load_dag_file()
LOGICAL_DATE = '2024-01-01'

_DAG_SHAPES = '''
import json
from airflow.models import DagBag
bag = DagBag(dag_folder=%r, include_examples=False)
print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()},
                  'dags': {d: {t.task_id: sorted(t.upstream_task_ids) for t in dag.tasks}
                           for d, dag in bag.dags.items()}}))
'''


# Tiny models bless below twice the uniform guess, without having to beat the unigram
# guess; the default loss_tolerance keeps the latest-blessed-model resolver in the DAG, so
# Airflow runs a Resolver task too.
BLESSING = 'max_perplexity_fraction=2,unigram_margin=none,min_vae_event_accuracy=none'


def _expected_graph(config_name):
  """{component id: sorted upstream ids} of the one create_pipeline, for comparison."""
  p = pipeline_lib.create_pipeline(PipelineSettings(
      config_name, output_root='/tmp/x', blessing=configs.BLESSING.replace(BLESSING)))
  return {c.id: sorted(u.id for u in c.upstream_nodes) for c in p.components}


# The DAGs the test builds (all four default ones) and the ones it runs for real: an event
# RNN and a MusicVAE, through the same DAG file (~2 min each on this machine).
DAG_CONFIGS = ('drum_kit', 'attention_rnn', 'cat-drums_2bar_small', 'cat-mel_2bar_small')
RUN_CONFIGS = ('drum_kit', 'cat-drums_2bar_small')
TINY_HPARAMS = {'drum_kit': 'rnn_layer_sizes=[32,32],attn_length=8,batch_size=4',
                'cat-drums_2bar_small': 'z_size=8,enc_rnn_size=[16],dec_rnn_size=[16],'
                                        'batch_size=4'}


def dag_id(config_name):
  return 'music-rnn-' + config_name.replace('_', '-')


@pytest.fixture(scope='module')
def airflow_home(tmp_path_factory):
  """(env, DAG shapes): a migrated Airflow database and the DagBag of the DAG file, shared
  by the tests (a migration alone takes ~20 s here)."""
  if not os.path.exists(os.path.join(AIRFLOW_BIN, 'airflow')):
    pytest.fail('.venv-airflow is missing: run `make airflow-venv` (make test builds it).')
  tmp = tmp_path_factory.mktemp('airflow')
  home = tmp / 'airflow_home'
  os.makedirs(home)
  data = write_slice_with_eval(bundled('drums'), str(tmp / 'data' / 'drums.tfrecord'), 10)
  env = dict(
      os.environ,
      AIRFLOW_HOME=str(home),
      AIRFLOW__CORE__DAGS_FOLDER=DAG_FOLDER,
      AIRFLOW__CORE__LOAD_EXAMPLES='False',
      # The DAG file imports TensorFlow: on a busy machine that exceeds the 30 s default.
      AIRFLOW__CORE__DAGBAG_IMPORT_TIMEOUT='600',
      AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f'sqlite:///{home}/airflow.db',
      MUSIC_RNN_HOME=str(tmp / 'out'),
      MUSIC_RNN_AIRFLOW_CONFIGS=','.join(DAG_CONFIGS),
      MUSIC_RNN_AIRFLOW_DATA=data,
      MUSIC_RNN_AIRFLOW_TRAIN_STEPS='3',
      MUSIC_RNN_AIRFLOW_EVAL_STEPS='2',
      MUSIC_RNN_AIRFLOW_SERVING_DIR=str(tmp / 'serving'),
      MUSIC_RNN_AIRFLOW_BLESSING=BLESSING,
      # Options beyond the basics reach the DAG too (all of them: test_settings_parity.py).
      MUSIC_RNN_AIRFLOW_SEED='7',
      MUSIC_RNN_AIRFLOW_CHECKPOINT_EVERY='2',
      TF_CPP_MIN_LOG_LEVEL='2')
  # An RNN's hparams for the RNN DAGs; each MusicVAE DAG its own (its hparams differ).
  env['MUSIC_RNN_AIRFLOW_HPARAMS'] = TINY_HPARAMS['drum_kit']
  for config_name in DAG_CONFIGS:
    if config_name.startswith('cat-'):
      env[dag_file.dag_prefix(config_name) + 'HPARAMS'] = TINY_HPARAMS['cat-drums_2bar_small']
  _run('db_migrate', [os.path.join(AIRFLOW_BIN, 'airflow'), 'db', 'migrate'], env, 600)
  proc = _run('dagbag', [os.path.join(AIRFLOW_BIN, 'python'), '-c', _DAG_SHAPES % DAG_FOLDER],
              env, 600)
  return env, json.loads(proc.stdout.strip().splitlines()[-1])


def _run(name, args, env, timeout):
  """Runs an Airflow command; on failure shows its errors (the full log stays in AIRFLOW_HOME)."""
  proc = subprocess.run(args, env=env, cwd=env['AIRFLOW_HOME'], capture_output=True, text=True,
                        timeout=timeout)
  log = os.path.join(env['AIRFLOW_HOME'], name + '.log')
  with open(log, 'w') as f:
    f.write(proc.stdout + proc.stderr)
  if proc.returncode != 0:
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [l for i, l in enumerate(lines) if 'ERROR' in l or 'Error' in l or 'failed' in l]
    pytest.fail(f'{name} exited {proc.returncode} (log: {log}):\n' +
                '\n'.join(errors[-40:] or lines[-60:]))
  return proc


def test_every_config_is_a_dag_shaped_like_create_pipeline(airflow_home):
  """Every model config, event RNN or MusicVAE, becomes a DAG whose tasks and edges are
  create_pipeline's."""
  _, shapes = airflow_home
  assert shapes['errors'] == {}
  assert sorted(shapes['dags']) == sorted(dag_id(c) for c in DAG_CONFIGS)
  for config_name in DAG_CONFIGS:
    assert shapes['dags'][dag_id(config_name)] == _expected_graph(config_name), config_name


def test_a_dag_setting_that_does_not_fit_names_the_dag():
  """The shared variables hold an RNN's hparams: a MusicVAE DAG says which of its own to set."""
  with pytest.raises(ValueError) as e:
    dag_file.dag_settings('cat-mel_2bar_small',
                          {'MUSIC_RNN_AIRFLOW_HPARAMS': 'rnn_layer_sizes=[8]'})
  assert 'DAG cat-mel_2bar_small' in str(e.value) and 'rnn_layer_sizes' in str(e.value)
  assert 'MUSIC_RNN_AIRFLOW_CAT_MEL_2BAR_SMALL__<FIELD>' in str(e.value)


@pytest.mark.parametrize('config_name', RUN_CONFIGS)
def test_airflow_runs_the_pipeline(airflow_home, config_name):
  """`airflow dags test` of one DAG: every task succeeds and the model is pushed."""
  env, shapes = airflow_home
  name = dag_id(config_name)
  # Only this DAG is built (small and quick).
  env = dict(env, MUSIC_RNN_AIRFLOW_CONFIGS=config_name)
  _run(f'dags_test_{config_name}', [os.path.join(AIRFLOW_BIN, 'airflow'), 'dags', 'test', name,
                                    LOGICAL_DATE], env, 1800)

  # Airflow's own record: every task instance succeeded.
  with sqlite3.connect(os.path.join(env['AIRFLOW_HOME'], 'airflow.db')) as db:
    states = dict(db.execute('SELECT task_id, state FROM task_instance WHERE dag_id = ?',
                             (name,)).fetchall())
    runs = db.execute('SELECT state FROM dag_run WHERE dag_id = ?', (name,)).fetchall()
  assert set(states) == set(shapes['dags'][name])
  assert all(s == 'success' for s in states.values()), states
  assert runs == [('success',)]

  # TFX's record (ML-Metadata; Airflow uses TFX's component launchers, one execution per
  # task with `component_id` and `state` properties) agrees, and the model was pushed.
  store = mlmd_results.open_store(os.path.join(
      env['MUSIC_RNN_HOME'], 'airflow', 'metadata', name, 'metadata.db'))
  executions = {e.properties['component_id'].string_value: e for e in store.get_executions()}
  recorded = {k: e.properties['state'].string_value for k, e in executions.items()}
  # TFX's legacy launcher records a resolver's query as a 'cached' execution.
  assert recorded.pop('latest_blessed_model_resolver') in ('complete', 'cached')
  assert recorded == {k: 'complete' for k in states if k != 'latest_blessed_model_resolver'}
  trainer_config = json.loads(executions['Trainer'].properties['custom_config'].string_value)
  assert trainer_config['seed'] == 7 and trainer_config['checkpoint_every'] == 2
  assert trainer_config['hparams'] == configs_lib.parse_hparams(TINY_HPARAMS[config_name])
  events = store.get_events_by_execution_ids([executions['Pusher'].id])
  [pushed] = store.get_artifacts_by_id(
      [ev.artifact_id for ev in events if ev.type == metadata_store_pb2.Event.OUTPUT])
  destination = pushed.custom_properties['pushed_destination'].string_value
  assert os.path.dirname(destination) == os.path.join(
      env['MUSIC_RNN_AIRFLOW_SERVING_DIR'], config_name)
  assert os.path.exists(os.path.join(destination, 'saved_model.pb'))
