"""Training that survives: kill and resume, best weights, NaN guard, replicas, warm start.

Runs run_fn on test_training's tiny real Transform output; one test runs the whole
pipeline with `music-rnn run --fast-dev-run`.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from music_rnn import checkpointing
from music_rnn import configs
from music_rnn import model as model_lib
from music_rnn import training
from tests.conftest import bundled, write_slice_with_eval
from tests.test_training import CONFIG, fn_args_kwargs, transformed  # noqa: F401  (fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One small LSTM layer: the behaviour under test does not depend on the cell, and
# tracing it is what these tests mostly pay for.
HPARAMS = {'batch_size': 4, 'rnn_layer_sizes': [8], 'attn_length': 0}


def _fn_args_kwargs(root, out, train_steps=10, **kwargs):
  return fn_args_kwargs(root, out, hparams=HPARAMS, train_steps=train_steps, num_evals=5,
                        **kwargs)


def _fn_args(**kwargs):
  from tfx import v1 as tfx
  return tfx.components.FnArgs(**kwargs)


def _report(kwargs):
  with open(os.path.join(kwargs['model_run_dir'], training.METRICS_FILE)) as f:
    return json.load(f)


# --- Pure logic: no training. ---------------------------------------------------


def test_epoch_plan_puts_evals_and_checkpoints_on_epoch_ends():
  # 10 steps, eval every 4, checkpoint every 2: epochs of 2, evals at 4, 8 and the end.
  assert training.epoch_plan(0, 10, 4, 2) == (2, 5, [2, 4, 5])
  # Resumed at step 4 of the same plan.
  assert training.epoch_plan(4, 10, 4, 2) == (2, 3, [2, 3])
  # Intervals that do not nest: epochs of gcd(6, 4) = 2 steps.
  assert training.epoch_plan(0, 12, 6, 4) == (2, 6, [3, 6])
  # 10 steps in epochs of 4: the third is cut to 2 steps (by _StepLimit, host-counted),
  # so a Keras execution may span at most 2 steps there.
  assert training.epoch_plan(0, 10, 4, 4) == (4, 3, [1, 2, 3])
  assert training.last_epoch_steps(0, 10, 4) == 2
  assert training.last_epoch_steps(4, 10, 2) == 2
  assert training.steps_per_execution(8, 4, 2) == 2
  assert training.steps_per_execution(4, 8, 8) == 4
  assert training.steps_per_execution(0, 8, 8) == 1


def test_global_batch_must_divide_over_replicas():
  hparams = configs.get_config(CONFIG).hparams
  assert training.split_batch(hparams, 4, 64).batch_size == 16
  assert training.split_batch(hparams, 2, None) is hparams  # batch_size is per replica
  with pytest.raises(ValueError, match=r'Global batch size 10 does not divide over 4 '
                                       r'replicas; use a multiple of 4 \(e.g. 8 or 12\)'):
    training.split_batch(hparams, 4, 10)
  assert training.dtype_policy('auto') == 'mixed_bfloat16'  # no GPU here
  assert training.dtype_policy(None) is None
  with pytest.raises(ValueError, match='mixed_precision'):
    training.dtype_policy('float8')


def test_checkpointer_keeps_the_k_best_and_counts_evals_since_best(tmp_path):
  config = configs.get_config(CONFIG)
  model = model_lib.build_model(config, config.hparams.replace(rnn_layer_sizes=[4],
                                                               attn_length=0))
  ckpt = checkpointing.Checkpointer(str(tmp_path), model, keep_best=2)
  kernel = model.logits_layer.kernel
  for step, loss in [(2, 3.0), (4, 2.0), (6, 2.5), (8, 1.5), (10, 2.2)]:
    model.optimizer.iterations.assign(step)
    kernel.assign(tf.fill(kernel.shape, float(step)))
    ckpt.record_eval(loss)
    if step == 6:
      ckpt.save([])
  assert [(e['step'], e['eval_loss']) for e in ckpt.best] == [(8, 1.5), (4, 2.0)]
  assert sorted(os.listdir(tmp_path / 'best')) == sorted(
      ['index.json', 'step-4.index', 'step-4.data-00000-of-00001',
       'step-8.index', 'step-8.data-00000-of-00001'])
  assert int(ckpt.state.evals_since_best.numpy()) == 1
  assert int(ckpt.state.best_step.numpy()) == 8
  assert ckpt.restore_best()['step'] == 8
  np.testing.assert_array_equal(kernel.numpy(), 8.0)

  # A fresh process resumes from the checkpoint at step 6: the best entry from step 8
  # (written after it) is dropped, and the early-stopping state is as it was at step 6.
  again = model_lib.build_model(config, config.hparams.replace(rnn_layer_sizes=[4],
                                                               attn_length=0))
  resumed = checkpointing.Checkpointer(str(tmp_path), again, keep_best=2)
  assert resumed.restore() == 6
  assert [e['step'] for e in resumed.best] == [4]
  assert int(resumed.state.evals_since_best.numpy()) == 1  # 2.5 after 2.0
  np.testing.assert_array_equal(again.logits_layer.kernel.numpy(), 6.0)


def test_pipeline_passes_a_stable_checkpoint_dir_and_the_base_model(tmp_path):
  from pipeline import pipeline as pipeline_lib
  from pipeline.settings import PipelineSettings
  settings = PipelineSettings(CONFIG, data=str(tmp_path), output_root=str(tmp_path / 'root'),
                              train_steps=5, eval_steps=1)
  p = pipeline_lib.create_pipeline(settings.replace(
      checkpoint_dir='/ckpt', warm_start_from='/models/drum_kit/1', checkpoint_every=2,
      mixed_precision='auto'))
  nodes = {c.id: c for c in p.components}
  custom = nodes['Trainer'].exec_properties['custom_config']
  custom = json.loads(custom) if isinstance(custom, str) else custom
  assert custom['checkpoint_dir'] == '/ckpt'
  assert custom['checkpoint_every'] == 2 and custom['mixed_precision'] == 'auto'
  assert nodes['base_model_importer'].exec_properties['artifact_uri'] == '/models/drum_kit/1'
  assert nodes['Trainer'].inputs['base_model'].producer_component_id == 'base_model_importer'
  # Without one, a root outside any execution (stable across executions) holds them.
  trainer, = [c for c in pipeline_lib.create_pipeline(settings).components if c.id == 'Trainer']
  custom = trainer.exec_properties['custom_config']
  custom = json.loads(custom) if isinstance(custom, str) else custom
  assert custom['checkpoint_dir'] == str(tmp_path / 'root' / 'checkpoints' /
                                       settings.pipeline_name)
  with pytest.raises(ValueError, match='mixed_precision must be one of'):
    settings.replace(mixed_precision='fp8')


def test_data_fingerprint_follows_the_input_files(tmp_path):
  data = tmp_path / 'a.tfrecord'
  data.write_bytes(b'x')
  first = checkpointing.data_fingerprint(str(tmp_path), '*.tfrecord', eval_ratio=0.1)
  assert checkpointing.data_fingerprint(str(tmp_path), '*.tfrecord', eval_ratio=0.1) == first
  assert checkpointing.data_fingerprint(str(tmp_path), '*.tfrecord', eval_ratio=0.2) != first
  data.write_bytes(b'xy')
  assert checkpointing.data_fingerprint(str(tmp_path), '*.tfrecord', eval_ratio=0.1) != first


# --- run_fn. --------------------------------------------------------------------


_CHILD = '''
import json, os, sys, time
from music_rnn import checkpointing, training
from tfx import v1 as tfx
kwargs, marker = json.loads(sys.argv[1]), sys.argv[2]
save = checkpointing.Checkpointer.save

def save_then_hang(self, history):
  path = save(self, history)
  if self.step >= 4:  # the parent kills us here, mid-run
    with open(marker, 'w') as f:
      f.write(str(self.step))
    time.sleep(600)
  return path

checkpointing.Checkpointer.save = save_then_hang
training.run_fn(tfx.components.FnArgs(**kwargs))
'''


@pytest.fixture(scope='module')
def resumed(transformed, tmp_path_factory):  # noqa: F811
  """A run SIGKILLed after its step-4 checkpoint, then re-run as a new execution."""
  root, _ = transformed
  tmp_path = tmp_path_factory.mktemp('resume')
  checkpoint_root = str(tmp_path / 'checkpoints')
  first = _fn_args_kwargs(root, tmp_path / 'first', checkpoint_dir=checkpoint_root,
                          checkpoint_every=2, keep_best=2)
  marker = tmp_path / 'killed_at'
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='2')
  child = subprocess.Popen([sys.executable, '-c', _CHILD, json.dumps(first), str(marker)],
                           env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 400
    while not marker.exists():
      assert child.poll() is None, child.stderr.read()[-3000:]
      assert time.time() < deadline, 'the child never reached step 4'
      time.sleep(0.5)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
  finally:
    if child.poll() is None:
      child.kill()
    child.stderr.close()
  assert child.returncode == -signal.SIGKILL
  assert marker.read_text() == '4'
  assert not os.path.exists(os.path.join(first['model_run_dir'], training.METRICS_FILE))

  # The re-run is a new Trainer execution (new scratch dirs), same inputs and settings.
  second = _fn_args_kwargs(root, tmp_path / 'second', checkpoint_dir=checkpoint_root,
                           checkpoint_every=2, keep_best=2)
  training.run_fn(_fn_args(**second))
  return tmp_path, second


def _no_export(monkeypatch):
  """For runs whose export is not under test (an export takes ~40 s here)."""
  from music_rnn import export
  monkeypatch.setattr(export, 'export_serving_model', lambda *args, **kwargs: None)


def test_killed_run_resumes_to_the_configured_step_count(transformed, resumed,  # noqa: F811
                                                         monkeypatch):
  root, _ = transformed
  tmp_path, second = resumed
  checkpoint_root = second['custom_config']['checkpoint_dir']
  report = _report(second)
  assert report['resumed_from_step'] == 4
  assert report['train_steps'] == report['configured_train_steps'] == 10
  assert report['steps_this_run'] == 6
  # The curve spans both executions; the exported weights are the best evaluated.
  steps = [r['step'] for r in report['history']]
  assert steps == [2, 4, 6, 8, 10]
  losses = {r['step']: r['val_loss'] for r in report['history']}
  best_step = min(losses, key=losses.get)
  assert report['exported'] == {'weights': 'best', 'step': best_step,
                                'eval_loss': pytest.approx(losses[best_step])}
  assert len(report['best_checkpoints']) == 2
  assert report['checkpoint_dir'].startswith(checkpoint_root)
  latest = tf.train.latest_checkpoint(os.path.join(report['checkpoint_dir'], 'latest'))
  assert latest.endswith('ckpt-10')
  assert os.path.getsize(os.path.join(second['model_run_dir'], training.LOSS_CURVE_FILE)) > 1000

  # The exported variables are the best checkpoint's, not the last step's.
  best = tf.train.load_checkpoint(os.path.join(report['checkpoint_dir'], 'best',
                                               f'step-{best_step}'))
  exported = tf.saved_model.load(second['serving_model_dir'])
  np.testing.assert_allclose(exported.model_variables[0].numpy(),
                             best.get_tensor('weights/0/.ATTRIBUTES/VARIABLE_VALUE'))

  # A changed run (here: the learning rate) starts afresh, never from stale weights.
  # Its rate is too small to move a float32 weight, so the eval loss never improves
  # after the first evaluation and patience 2 stops it at the third (step 6).
  _no_export(monkeypatch)
  other = _fn_args_kwargs(root, tmp_path / 'other', checkpoint_dir=checkpoint_root,
                          early_stopping_patience=2)
  other['custom_config']['hparams'] = {**HPARAMS, 'learning_rate': 1e-12}
  training.run_fn(_fn_args(**other))
  other = _report(other)
  assert other['resumed_from_step'] is None
  assert other['checkpoint_dir'] != report['checkpoint_dir']
  assert other['stopped_early_at_step'] == other['train_steps'] == 6
  assert other['exported']['step'] == 2


def test_non_finite_loss_stops_with_magenta_advice(transformed, tmp_path):  # noqa: F811
  root, _ = transformed
  kwargs = _fn_args_kwargs(root, tmp_path, train_steps=6,
                           checkpoint_dir=str(tmp_path / 'checkpoints'))
  kwargs['custom_config']['hparams'] = {**HPARAMS, 'learning_rate': 1e38}  # weights -> inf
  with pytest.raises(training.DivergenceError,
                     match=r'(?s)diverged: the loss or its gradients were not finite at step 2 '
                     r'of 6.*lower learning_rate '
                     r'\(now 1e\+38; try 1e\+37\).*lower clip_norm.*smaller rnn_layer_sizes'):
    training.run_fn(_fn_args(**kwargs))
  assert not os.path.exists(os.path.join(kwargs['serving_model_dir'], 'saved_model.pb'))


def test_warm_start_copies_weights_and_rejects_other_shapes(transformed, resumed,  # noqa: F811
                                                          tmp_path):
  root, _ = transformed
  base_export = resumed[1]['serving_model_dir']
  config = configs.get_config(CONFIG)
  hparams = config.hparams.replace(**HPARAMS)
  model = model_lib.build_model(config, hparams)
  assert training.warm_start(model, config, hparams, base_export) == base_export
  base = [v for v in tf.saved_model.load(base_export).model_variables if v.trainable]
  assert len(base) == len(model.trainable_variables)
  for ours, theirs in zip(model.trainable_variables, base):
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())

  # Through run_fn, as TFX passes it: <model URI>/Format-Serving (a pushed model has none).
  wrong = _fn_args_kwargs(root, tmp_path / 'wrong', train_steps=1,
                          base_model=os.path.join(base_export, 'Format-Serving'))
  wrong['custom_config']['hparams'] = {**HPARAMS, 'rnn_layer_sizes': [4]}
  with pytest.raises(ValueError, match=r'Cannot warm-start from .*weights differ in shape.*'
                                       r'same rnn_layer_sizes and attn_length'):
    training.run_fn(_fn_args(**wrong))


_TWO_REPLICAS = '''
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from music_rnn import export, training
from tfx import v1 as tfx
export.export_serving_model = lambda *args, **kwargs: None  # ~40 s; not under test here
kwargs = json.loads(sys.argv[1])
try:  # a global batch of 5 cannot be split over 2 replicas
  training.run_fn(tfx.components.FnArgs(**{**kwargs, 'custom_config': {
      **kwargs['custom_config'], 'global_batch_size': 5}}))
  print('no error')
except ValueError as e:
  print(json.dumps({'error': str(e)}))
training.run_fn(tfx.components.FnArgs(**kwargs))
'''


def test_two_replicas_with_mixed_precision(transformed, tmp_path):  # noqa: F811
  root, _ = transformed
  kwargs = _fn_args_kwargs(root, tmp_path, train_steps=4, replicas=2, global_batch_size=4,
                           mixed_precision='auto')
  env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run([sys.executable, '-c', _TWO_REPLICAS, json.dumps(kwargs)], env=env,
                        cwd=REPO, capture_output=True, text=True, timeout=400)
  assert proc.returncode == 0, proc.stderr[-3000:]
  error = json.loads(proc.stdout.strip().splitlines()[0])['error']
  assert 'Global batch size 5 does not divide over 2 replicas' in error
  report = _report(kwargs)
  assert report['num_replicas'] == 2
  assert report['per_replica_batch_size'] == 2 and report['global_batch_size'] == 4
  assert report['mixed_precision'] == 'mixed_bfloat16'
  assert report['train_steps'] == 4
  assert report['eval']['loss'] > 0 and np.isfinite(report['eval']['loss'])


# --- The pipeline. --------------------------------------------------------------


def test_fast_dev_run_pushes_a_few_batches_through_every_component(tmp_path, capsys):
  from music_rnn import cli
  data = write_slice_with_eval(bundled('drums'), str(tmp_path / 'data' / 'drums.tfrecord'), 6)
  start = time.time()
  code = cli.main(['run', '--config', 'drum_kit', '--data', data, '--fast-dev-run',
                   '--hparams', 'rnn_layer_sizes=[8],attn_length=0',
                   '--output-root', str(tmp_path / 'out')])
  out = capsys.readouterr().out
  assert code == 0, out
  assert 'pipeline music-rnn-drum-kit-fast-dev-run finished' in out
  for component in ('NoteSequenceExampleGen', 'Transform', 'Trainer', 'Pusher'):
    assert f'{component}' in out
  assert 'CACHED' not in out and 'FAILED' not in out
  assert 'training:       3 steps' in out
  # Pushed under the output root, never to the real serving dir.
  pushed = os.path.join(str(tmp_path / 'out'), 'fast-dev-run', 'serving', 'drum_kit')
  assert os.listdir(pushed), out
  print(f'fast-dev-run pipeline: {time.time() - start:.0f}s')
