"""Beyond one machine: 2 training workers, and a tuning search over a chief and 2 workers.

Every process is real and on 127.0.0.1, CPU only: each gets the environment a cluster
launcher (Vertex AI, Kubeflow's training operator) would give it, TF_CONFIG for
training and KERASTUNER_* for tuning, and runs the project's own entry point (run_fn;
the Tuner executor) on test_training's tiny real Transform output.
"""

import csv
import json
import os
import socket
import subprocess
import sys
import textwrap
from typing import Dict, List, Optional

import numpy as np
import pytest

from music_rnn import checkpointing
from music_rnn import configs
from music_rnn import model as model_lib
from music_rnn import training
from music_rnn import tuning
from tests.conftest import PROJECT_ROOT
from tests.test_training import CONFIG, fn_args_kwargs, transformed  # noqa: F401  (fixture)

# One small LSTM layer, no dropout (replicas would draw different masks than one
# device), global batch 4: 2 sequences per worker.
HPARAMS = {'batch_size': 4, 'rnn_layer_sizes': [8], 'attn_length': 0,
           'dropout_keep_prob': 1.0}
GLOBAL_BATCH = 4
TRAIN_STEPS = 5
# Per weight tensor, |w_two_workers - w_one_machine| / |w_two_workers| (Frobenius norms)
# after TRAIN_STEPS: float32 sums in another order, and the one-machine train step is
# XLA-compiled (measured here: < 1e-7).
WEIGHTS_RTOL = 1e-5
PROCESS_TIMEOUT = 600
_ENV_SET_HERE = ('TF_CONFIG', 'KERASTUNER_TUNER_ID', 'KERASTUNER_ORACLE_IP',
                 'KERASTUNER_ORACLE_PORT', 'TMPDIR')


def _free_ports(n: int) -> List[int]:
  """n distinct ports free on 127.0.0.1 (held together while chosen)."""
  sockets = [socket.socket() for _ in range(n)]
  try:
    for s in sockets:
      s.bind(('127.0.0.1', 0))
    return [s.getsockname()[1] for s in sockets]
  finally:
    for s in sockets:
      s.close()


def _start(name: str, code: str, arg: str, logs, env: Dict[str, str]) -> subprocess.Popen:
  """A Python process running `code` with `arg`; stdout/stderr to logs/<name>.*."""
  base = {k: v for k, v in os.environ.items() if k not in _ENV_SET_HERE}
  base.update(PYTHONPATH=PROJECT_ROOT, TF_CPP_MIN_LOG_LEVEL='2', **env)
  return subprocess.Popen([sys.executable, '-c', code, arg], cwd=PROJECT_ROOT, env=base,
                          stdout=open(logs / f'{name}.out', 'w'),
                          stderr=open(logs / f'{name}.err', 'w'))


def _wait(procs: Dict[str, subprocess.Popen], logs) -> Dict[str, str]:
  """Waits for every process (killing them all if one hangs); returns their stdout.
  Fails with the stderr tails of those that did not exit 0."""
  try:
    for proc in procs.values():
      proc.wait(timeout=PROCESS_TIMEOUT)
  except subprocess.TimeoutExpired:
    for proc in procs.values():
      proc.kill()
    pytest.fail(f'timed out after {PROCESS_TIMEOUT} s: ' + _tails(procs, logs))
  failed = {n: p for n, p in procs.items() if p.returncode != 0}
  assert not failed, _tails(failed, logs)
  return {name: (logs / f'{name}.out').read_text() for name in procs}


def _tails(procs, logs) -> str:
  return '\n'.join(f'--- {name} (exit {proc.returncode}):\n'
                   f'{(logs / f"{name}.err").read_text()[-3000:]}'
                   for name, proc in procs.items())


# --- Which strategy, from TF_CONFIG. ------------------------------------------------


def test_tf_config_names_the_workers(monkeypatch):
  cluster = {'chief': ['a:1'], 'worker': ['b:2', 'c:3'], 'evaluator': ['d:4']}
  assert training.cluster_spec(json.dumps({'cluster': cluster})) == cluster
  assert training.num_workers(cluster) == 3  # the evaluator does not train
  assert training.cluster_spec('') == {}
  with pytest.raises(ValueError, match='TF_CONFIG is not a JSON object'):
    training.cluster_spec('{"cluster": ')
  monkeypatch.setenv('TF_CONFIG', json.dumps({'cluster': {'worker': ['a:1', 'b:2']},
                                              'task': {'type': 'worker', 'index': 0}}))
  with pytest.raises(ValueError, match="TF_CONFIG names 2 workers, and custom_config sets"):
    training.make_strategy({'replicas': 2})
  monkeypatch.setenv('TF_CONFIG', json.dumps({'cluster': {'worker': ['a:1'], 'ps': ['b:2']},
                                              'task': {'type': 'worker', 'index': 0}}))
  with pytest.raises(ValueError, match='parameter servers'):
    training.make_strategy({})


def test_a_worker_resumes_from_the_chiefs_checkpoints_and_writes_its_own(tmp_path):
  """A non-chief worker's Checkpointer: restores the run's (chief's) latest and best
  checkpoints, saves to its scratch dir, and never deletes the chief's files."""
  import tensorflow as tf
  config = configs.get_config(CONFIG)
  hparams = config.hparams.replace(rnn_layer_sizes=[4], attn_length=0)
  run_dir, scratch = tmp_path / 'run', tmp_path / 'scratch'
  chief_model = model_lib.build_model(config, hparams)
  chief = checkpointing.Checkpointer(str(run_dir), chief_model, keep_best=1)
  kernel = chief_model.logits_layer.kernel
  for step, loss in [(2, 3.0), (4, 2.0)]:
    chief_model.optimizer.iterations.assign(step)
    kernel.assign(tf.fill(kernel.shape, float(step)))
    chief.record_eval(loss)
    chief.save([{'step': step}])
  chief_files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob('*'))

  model = model_lib.build_model(config, hparams)
  worker = checkpointing.Checkpointer(str(run_dir), model, keep_best=1,
                                      write_directory=str(scratch))
  assert worker.restore() == 4 and worker.saved_step() == 4
  np.testing.assert_array_equal(model.logits_layer.kernel.numpy(), 4.0)
  assert [e['step'] for e in worker.best] == [4] and worker.history(4) == [{'step': 4}]
  model.optimizer.iterations.assign(6)
  model.logits_layer.kernel.assign(tf.fill(kernel.shape, 6.0))
  assert worker.record_eval(1.0)  # replaces the chief's best entry (keep_best=1) ...
  worker.save([])
  assert worker.best[0]['path'] == str(scratch / 'best' / 'step-6')
  assert worker.saved_step() == 6 and (scratch / 'latest' / 'ckpt-6.index').exists()
  # ... and leaves the chief's files as they were.
  assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob('*')) == chief_files


# --- Multi-worker training. --------------------------------------------------------

_TRAIN = textwrap.dedent('''
    import json, sys
    from music_rnn import export, training
    from tfx import v1 as tfx

    def export_stand_in(model, config, hparams, tf_transform_output, export_dir, **kwargs):
      """Says who exports where: the export itself (~40 s here) is the same code on one
      machine or several, and test_training checks it."""
      print(json.dumps({'exported_to': export_dir}), flush=True)

    export.export_serving_model = export_stand_in
    training.run_fn(tfx.components.FnArgs(**json.loads(sys.argv[1])))
''')


def _train_kwargs(root, out):
  kwargs = fn_args_kwargs(root, out, hparams=HPARAMS, train_steps=TRAIN_STEPS, num_evals=1,
                          global_batch_size=GLOBAL_BATCH,
                          checkpoint_dir=str(out / 'checkpoints'))
  kwargs['eval_steps'] = 1
  return kwargs


def _report(kwargs):
  with open(os.path.join(kwargs['model_run_dir'], training.METRICS_FILE)) as f:
    return json.load(f)


def _weights(run_dir: Optional[str] = None, scratch: Optional[str] = None,
             seed: int = 0) -> Dict[str, np.ndarray]:
  """The trainable weights of a run's latest checkpoint, restored as a non-chief worker
  restores them (Checkpointer with its own write directory); no run: initial weights."""
  import keras
  config = configs.get_config(CONFIG)
  keras.utils.set_random_seed(seed)
  model = model_lib.build_model(config, config.hparams.replace(**HPARAMS))
  if run_dir:
    ckpt = checkpointing.Checkpointer(run_dir, model, write_directory=scratch)
    assert ckpt.restore() == TRAIN_STEPS
  return {v.path: v.numpy() for v in model.trainable_variables}


def _relative_differences(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]):
  """Per weight tensor, |a - b| / |a| (a: trained weights, never all zero)."""
  assert sorted(a) == sorted(b)
  return {k: float(np.linalg.norm(a[k] - b[k]) / np.linalg.norm(a[k])) for k in a}


def test_two_workers_train_as_one_machine(transformed, tmp_path):  # noqa: F811
  """run_fn in 2 worker processes (TF_CONFIG: MultiWorkerMirroredStrategy) and in one
  (no TF_CONFIG: one machine), at the same global batch: the same weights after
  TRAIN_STEPS steps, the same metrics; only the chief keeps checkpoints, metrics and the
  export."""
  root, _ = transformed
  logs = tmp_path / 'logs'
  logs.mkdir()
  one, two = _train_kwargs(root, tmp_path / 'one'), _train_kwargs(root, tmp_path / 'two')
  cluster = {'worker': [f'127.0.0.1:{port}' for port in _free_ports(2)]}
  scratch = {i: tmp_path / f'tmp{i}' for i in range(2)}  # each worker's TMPDIR
  procs = {'one_machine': _start('one_machine', _TRAIN, json.dumps(one), logs, {})}
  for i in range(2):
    scratch[i].mkdir()
    tf_config = {'cluster': cluster, 'task': {'type': 'worker', 'index': i}}
    procs[f'worker{i}'] = _start(f'worker{i}', _TRAIN, json.dumps(two), logs, {
        'TF_CONFIG': json.dumps(tf_config), 'TMPDIR': str(scratch[i])})
  out = _wait(procs, logs)

  alone, chief = _report(one), _report(two)
  assert (alone['num_workers'], alone['num_replicas'], alone['per_replica_batch_size']) == (
      1, 1, 4)
  assert (chief['num_workers'], chief['num_replicas'], chief['per_replica_batch_size']) == (
      2, 2, 2)
  assert chief['global_batch_size'] == alone['global_batch_size'] == GLOBAL_BATCH
  assert chief['train_steps'] == alone['train_steps'] == TRAIN_STEPS
  assert chief['jit_compile'] is False  # no XLA collectives on CPU
  # Metrics are sums over both workers' halves of each batch: the one machine's.
  for split in ('train', 'eval'):
    for name in ('loss', 'accuracy', 'event_accuracy'):
      np.testing.assert_allclose(chief[split][name], alone[split][name], rtol=1e-5,
                                 err_msg=f'{split} {name}')

  # Weights, as every worker would resume from them (the chief's checkpoint).
  ones = _weights(alone['checkpoint_dir'], str(tmp_path / 'read1'))
  twos = _weights(chief['checkpoint_dir'], str(tmp_path / 'read2'))
  differences = _relative_differences(twos, ones)
  assert max(differences.values()) <= WEIGHTS_RTOL, differences
  # The tolerance is far below what training changed.
  initial = _weights(seed=one['custom_config']['seed'])
  moved = _relative_differences(twos, initial)
  print(f'two workers vs one machine: {max(differences.values()):.2e} at most; training '
        f'moved each weight by {min(moved.values()):.2e} at least')
  assert min(moved.values()) > 100 * WEIGHTS_RTOL

  # Only the chief (worker 0) exported; worker 1 left nothing behind.
  assert json.loads(out['worker0'].strip().splitlines()[-1]) == {
      'exported_to': two['serving_model_dir']}
  assert 'exported_to' not in out['worker1']
  assert os.listdir(scratch[1]) == []
  assert sorted(os.listdir(chief['checkpoint_dir'])) == sorted(os.listdir(
      alone['checkpoint_dir'])) == ['best', checkpointing.HISTORY, 'latest',
                                    checkpointing.RUN_SPEC]


# --- Distributed tuning. -----------------------------------------------------------

_TUNE = textwrap.dedent('''
    import json, sys
    from absl import logging
    from tfx.dsl.components.base import base_executor
    from tfx.types import standard_artifacts
    from music_rnn import tuning

    logging.set_verbosity(logging.INFO)  # 'Trial <id>: run by tuner <id>'
    spec = json.loads(sys.argv[1])
    examples = standard_artifacts.Examples()
    examples.uri, examples.split_names = spec['examples'], '["train", "eval"]'
    graph = standard_artifacts.TransformGraph()
    graph.uri = spec['transform_graph']
    best = standard_artifacts.HyperParameters()
    best.uri = spec['out'] + '/best_hyperparameters'
    results = standard_artifacts.TunerResults()
    results.uri = spec['out'] + '/tuner_results'
    context = base_executor.BaseExecutor.Context(tmp_dir=spec['out'] + '/tmp',
                                                 unique_id='1')
    tuning.ReportingTunerExecutor(context).Do(
        {'examples': [examples], 'transform_graph': [graph]},
        {'best_hyperparameters': [best], 'tuner_results': [results]},
        {'tuner_fn': 'music_rnn.tuning.tuner_fn', 'train_args': '{"num_steps": 2}',
         'eval_args': '{"num_steps": 1}', 'custom_config': json.dumps(spec['custom_config'])})
''')
MAX_TRIALS = 3
TUNERS = ('chief', 'tuner0', 'tuner1')


def _examples_artifact_dir(root, tmp_path) -> str:
  """Transform's splits as an Examples artifact lays them out (Split-<name>/)."""
  examples = tmp_path / 'examples'
  examples.mkdir()
  for split in ('train', 'eval'):
    os.symlink(root / split, examples / f'Split-{split}')
  return str(examples)


def test_a_chief_and_two_workers_search_once_and_the_chief_reports(transformed,  # noqa: F811
                                                                     tmp_path):
  """keras-tuner's chief/worker mode through the Tuner executor: every trial runs once,
  on some worker; the chief records them all and writes the only best_hyperparameters,
  which the Trainer resolves to the winning trial's values."""
  root, _ = transformed
  logs = tmp_path / 'logs'
  logs.mkdir()
  config = configs.get_config(CONFIG)
  base = config.hparams.replace(**HPARAMS)
  space = tuning.normalize_search_space(
      {'rnn_layer_sizes': [[4], [8]], 'learning_rate': {'min': 1e-3, 'max': 1e-1,
                                                         'sampling': 'log'}}, base)
  custom_config = {'config_name': CONFIG, 'hparams': HPARAMS, 'seed': 1, 'tuner': 'random',
                   'max_trials': MAX_TRIALS, 'search_space': space, 'trial_evals': 1,
                   'tuner_dir': str(tmp_path / 'state')}
  examples = _examples_artifact_dir(root, tmp_path)
  oracle = {'KERASTUNER_ORACLE_IP': '127.0.0.1',
            'KERASTUNER_ORACLE_PORT': str(_free_ports(1)[0])}
  procs = {}
  for tuner_id in TUNERS:
    spec = {'examples': examples, 'transform_graph': str(root / 'transform_output'),
            'out': str(tmp_path / tuner_id), 'custom_config': custom_config}
    procs[tuner_id] = _start(tuner_id, _TUNE, json.dumps(spec), logs,
                             {**oracle, 'KERASTUNER_TUNER_ID': tuner_id})
  _wait(procs, logs)

  # Every trial ran exactly once, each worker ran some.
  runs = {}
  for tuner_id in TUNERS:
    for line in (logs / f'{tuner_id}.err').read_text().splitlines():
      if ': run by tuner ' in line:
        trial, by = line.split('Trial ', 1)[1].split(': run by tuner ')
        runs.setdefault(trial, []).append(by.strip())
  assert sorted(runs) == [str(i) for i in range(MAX_TRIALS)], runs
  assert all(len(by) == 1 for by in runs.values()), runs
  assert {by[0] for by in runs.values()} == {'tuner0', 'tuner1'}, runs

  # The chief recorded them all, with their metrics; only it wrote outputs.
  with open(tmp_path / 'chief' / 'tuner_results' / tuning.REPORT_CSV) as f:
    rows = list(csv.DictReader(f))
  assert sorted(r['trial_id'] for r in rows) == sorted(runs)
  assert all(r['status'] == 'COMPLETED' and float(r['eval_loss']) > 0 for r in rows), rows
  for tuner_id in ('tuner0', 'tuner1'):
    assert not (tmp_path / tuner_id / 'best_hyperparameters').exists()
    assert not (tmp_path / tuner_id / 'tuner_results').exists()

  # The best hyperparameters reach the Trainer: the winning trial's values.
  _, best_config = tuning.read_best_hyperparameters(
      str(tmp_path / 'chief' / 'best_hyperparameters'))
  values = training.tuner_values(best_config)
  assert tuning.in_space(values, space)
  winner = min(rows, key=lambda r: float(r['eval_loss']))
  hparams = training.resolve_hparams(config, HPARAMS, best_config)
  assert list(hparams.rnn_layer_sizes) == json.loads(winner['rnn_layer_sizes'])
  np.testing.assert_allclose(hparams.learning_rate, float(winner['learning_rate']))
