"""Tests for music_rnn.model: shapes, masking, metrics, attention, clipping, replicas."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from music_rnn import configs
from music_rnn import model as model_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _small(name, **overrides):
  config = configs.get_config(name)
  hparams = config.hparams.replace(
      rnn_layer_sizes=(12, 8), **{'attn_length': min(config.hparams.attn_length, 5),
                                  **overrides})
  return config, hparams


def _batch(config, lengths, seed=0):
  rng = np.random.default_rng(seed)
  t = max(lengths)
  x = rng.random((len(lengths), t, config.input_size)).astype(np.float32)
  labels = rng.integers(0, config.num_classes, (len(lengths), t))
  labels[:, ::3] = config.no_event_label  # make sure both kinds of step occur
  mask = np.arange(t)[None, :] < np.array(lengths)[:, None]
  return x, np.array(lengths, np.int32), labels, mask


@pytest.mark.parametrize('name', ['drum_kit', 'attention_rnn', 'basic_rnn'])
def test_output_shapes(name):
  config, hparams = _small(name)
  model = model_lib.build_model(config, hparams)
  x, lengths, _, _ = _batch(config, [6, 3])
  logits = model({'inputs': x, 'lengths': lengths})
  assert tuple(logits.shape) == (2, 6, config.num_classes)
  first = model.rnn_layers[0]
  assert isinstance(first.cell, model_lib.AttentionLSTMCell) == bool(hparams.attn_length)


def _numpy_stats(labels, logits, mask, no_event):
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  xent = -np.take_along_axis(logp, labels[..., None], -1)[..., 0]
  correct = logits.argmax(-1) == labels
  m = mask.astype(bool)
  ev = m & (labels != no_event)
  nev = m & (labels == no_event)
  loss = xent[m].sum() / m.sum()
  return {
      'loss': loss, 'perplexity': np.exp(loss), 'accuracy': correct[m].mean(),
      'event_accuracy': correct[ev].mean(), 'no_event_accuracy': correct[nev].mean(),
  }


def test_metrics_match_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(4, 9, 6)).astype(np.float32) * 3
  labels = rng.integers(0, 6, (4, 9))
  labels[:, ::2] = 0
  mask = np.arange(9)[None, :] < np.array([9, 4, 1, 7])[:, None]
  # Make some predictions right so the accuracies are not trivially 0.
  logits[0, :5] += 10 * np.eye(6, dtype=np.float32)[labels[0, :5]]
  expected = _numpy_stats(labels, logits, mask, 0)
  for metric in model_lib.make_metrics(no_event_label=0):
    metric.update_state(labels[:2], logits[:2], sample_weight=mask[:2])
    metric.update_state(labels[2:], logits[2:], sample_weight=mask[2:])  # streaming
    np.testing.assert_allclose(float(metric.result()), expected[metric.name], rtol=1e-5)
  np.testing.assert_allclose(
      float(model_lib.sequence_loss(labels, logits, mask)), expected['loss'], rtol=1e-5)
  # Nothing real seen: NaN, not a misleading 0.
  empty = model_lib.SequenceAccuracy()
  empty.update_state(labels, logits, sample_weight=np.zeros_like(mask))
  assert np.isnan(float(empty.result()))


@pytest.mark.parametrize('name', ['drum_kit', 'basic_rnn'])
def test_padding_changes_neither_outputs_nor_metrics(name):
  config, hparams = _small(name)
  model = model_lib.build_model(config, hparams)
  lengths = [7, 4, 2]
  x, lens, labels, mask = _batch(config, lengths, seed=2)
  x[~mask] = 123.0  # garbage in the padding must not leak anywhere
  padded = model({'inputs': x, 'lengths': lens}).numpy()
  metrics = model_lib.make_metrics(config.no_event_label)
  for m in metrics:
    m.update_state(labels, padded, sample_weight=mask)
  singles = model_lib.make_metrics(config.no_event_label)
  for b, n in enumerate(lengths):
    alone = model({'inputs': x[b:b + 1, :n], 'lengths': lens[b:b + 1]}).numpy()
    np.testing.assert_allclose(alone[0], padded[b, :n], atol=1e-5)
    for m in singles:
      m.update_state(labels[b:b + 1, :n], alone)
  for m, s in zip(metrics, singles):
    np.testing.assert_allclose(float(m.result()), float(s.result()), rtol=1e-5)
  # The model's own test_step agrees with the metrics above.
  model.reset_metrics()
  logs = model.test_step(({'inputs': x, 'lengths': lens}, labels))
  for m in metrics:
    np.testing.assert_allclose(float(logs[m.name]), float(m.result()), rtol=1e-5)


def _sigmoid(z):
  return 1 / (1 + np.exp(-z))


def _reference_attention_step(cell, x, state):
  """contrib.rnn.AttentionCellWrapper(BasicLSTMCell) in numpy, with `cell`'s weights."""
  h, c, attns, window = state
  units, length = cell.units, cell.attn_length
  window = window.reshape(-1, length, units)
  w = lambda layer: [v.numpy() for v in layer.weights]  # noqa: E731
  k1, b1 = w(cell.input_projection)
  xp = np.concatenate([x, attns], -1) @ k1 + b1
  k, r, b = w(cell.lstm)
  z = xp @ k + h @ r + b
  i, f, g, o = np.split(z, 4, -1)  # Keras gate order
  c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
  h = _sigmoid(o) * np.tanh(c)
  kq, bq = w(cell.query_projection)
  y = np.concatenate([c, h], -1) @ kq + bq
  hidden = window @ cell.attn_w.numpy()
  s = (cell.attn_v.numpy() * np.tanh(hidden + y[:, None])).sum(-1)
  a = np.exp(s - s.max(-1, keepdims=True))
  a /= a.sum(-1, keepdims=True)
  attns = (a[..., None] * window).sum(1)
  ko, bo = w(cell.output_projection)
  out = np.concatenate([h, attns], -1) @ ko + bo
  window = np.concatenate([window[:, 1:], out[:, None]], 1).reshape(-1, length * units)
  return out, (h, c, attns, window)


def test_attention_cell_state_and_reference_semantics():
  cell = model_lib.AttentionLSTMCell(6, attn_length=3)
  cell.build((None, 5))
  state = cell.get_initial_state(batch_size=2)
  assert [tuple(s.shape) for s in state] == [(2, 6), (2, 6), (2, 6), (2, 18)]
  rng = np.random.default_rng(3)
  ref_state = tuple(s.numpy() for s in state)
  for _ in range(5):  # more steps than the window, so it wraps
    x = rng.normal(size=(2, 5)).astype(np.float32)
    out, state = cell(x, state)
    ref_out, ref_state = _reference_attention_step(cell, x, ref_state)
    np.testing.assert_allclose(out.numpy(), ref_out, atol=1e-5)
    for s, r in zip(state, ref_state):
      np.testing.assert_allclose(s.numpy(), r, atol=1e-5)
  # The window holds the last three outputs, oldest first.
  np.testing.assert_allclose(state[3].numpy()[:, -6:], out.numpy(), atol=1e-6)


@pytest.mark.parametrize('name', ['attention_rnn', 'drum_kit'])
def test_step_by_step_equals_full_sequence(name):
  config, hparams = _small(name)
  model = model_lib.build_model(config, hparams)
  x, lens, _, _ = _batch(config, [8, 8], seed=4)
  full = model({'inputs': x, 'lengths': lens}).numpy()
  states = model.initial_state(2)
  for t in range(8):
    logits, states = model.step(x[:, t], states)
    np.testing.assert_allclose(logits.numpy(), full[:, t], atol=1e-5)


def test_clip_gradients_is_per_tensor():
  big = tf.constant([3.0, 4.0])  # norm 5
  small = tf.constant([0.3, 0.4])  # norm 0.5
  clipped = model_lib.clip_gradients([big, small, None], 1.0)
  np.testing.assert_allclose(clipped[0].numpy(), [0.6, 0.8], rtol=1e-6)
  np.testing.assert_allclose(clipped[1].numpy(), small.numpy())  # not a global rescale
  assert clipped[2] is None


def test_keras_clipnorm_is_also_per_variable():
  """Keras's `clipnorm` matches tf_slim's per-tensor clipping on one device.

  The model still clips in train_step, because Keras 3.6 clips before summing the
  replicas' gradients.
  """
  a, b = tf.Variable([0.0, 0.0]), tf.Variable([0.0, 0.0])
  keras.optimizers.SGD(learning_rate=1.0, clipnorm=1.0).apply(
      [tf.constant([3.0, 4.0]), tf.constant([0.3, 0.4])], [a, b])
  np.testing.assert_allclose(a.numpy(), [-0.6, -0.8], rtol=1e-6)
  np.testing.assert_allclose(b.numpy(), [-0.3, -0.4], rtol=1e-6)


def test_train_step_applies_clipped_gradients():
  config, hparams = _small('basic_rnn', dropout_keep_prob=1.0, clip_norm=0.01)
  model = model_lib.build_model(config, hparams)
  model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), jit_compile=False)
  x, lens, labels, mask = _batch(config, [5, 3], seed=5)
  inputs = {'inputs': x, 'lengths': lens}
  with tf.GradientTape() as tape:
    loss = model_lib.sequence_loss(labels, model(inputs), mask)
  variables = model.trainable_variables
  grads = tape.gradient(loss, variables)
  assert max(float(tf.norm(g)) for g in grads) > 0.01  # clipping is active
  before = [v.numpy() for v in variables]
  logs = model.train_step((inputs, labels))
  np.testing.assert_allclose(float(logs['loss']), float(loss), rtol=1e-5)
  for v, b, g in zip(variables, before, grads):
    expected = b - tf.clip_by_norm(g, 0.01).numpy()
    np.testing.assert_allclose(v.numpy(), expected, atol=1e-6)


_MIRRORED = textwrap.dedent('''
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from music_rnn import configs, model as model_lib

    config = configs.get_config('drum_kit')
    hparams = config.hparams.replace(rnn_layer_sizes=(8, 8), attn_length=3,
                                     dropout_keep_prob=1.0, clip_norm=0.05)
    rng = np.random.default_rng(0)
    lengths = np.array([9, 2, 4, 1, 6], np.int32)  # unequal work per replica
    x = rng.random((5, 9, config.input_size)).astype(np.float32)
    labels = rng.integers(0, 4, (5, 9))
    ds = tf.data.Dataset.from_tensor_slices(({'inputs': x, 'lengths': lengths}, labels))
    # Every training batch is the same 4 sequences (11 + 5 real steps on the two
    # replicas): Keras 3.6 under a strategy eats one batch before training starts
    # (and needs it evenly split), so both runs only see the same data this way.
    train = ds.take(4).batch(4).cache().repeat()

    def run(strategy):
      keras.utils.set_random_seed(1)
      with strategy.scope():
        model = model_lib.build_model(config, hparams)
      hist = model.fit(train, steps_per_epoch=2, epochs=1, verbose=0)
      # eval batches of 4 and 1: the last leaves one replica with nothing.
      ev = model.evaluate(ds.batch(4), return_dict=True, verbose=0)
      return model, hist.history, ev

    mirrored = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    assert mirrored.num_replicas_in_sync == 2
    m2, h2, e2 = run(mirrored)
    m1, h1, e1 = run(tf.distribute.get_strategy())
    diff = max(float(np.abs(a - b).max())
               for a, b in zip(m1.get_weights(), m2.get_weights()))
    print(json.dumps({'h1': h1, 'h2': h2, 'e1': e1, 'e2': e2, 'diff': diff}))
''')


def test_mirrored_strategy_two_replicas_matches_one_device():
  env = {**os.environ, 'PYTHONPATH': REPO, 'TF_CPP_MIN_LOG_LEVEL': '2'}
  proc = subprocess.run([sys.executable, '-c', _MIRRORED], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  # Same weights after two clipped Adam steps, same streaming metrics.
  assert out['diff'] < 1e-5, out
  for name in model_lib.METRIC_NAMES:
    np.testing.assert_allclose(out['h2'][name], out['h1'][name], rtol=1e-5)
    np.testing.assert_allclose(out['e2'][name], out['e1'][name], rtol=1e-5)


def test_mixed_bfloat16_runs_the_rnn_low_and_the_softmax_float32():
  config, hparams = _small('drum_kit', dropout_keep_prob=1.0)
  model = model_lib.build_model(config, hparams, 'mixed_bfloat16')
  cell = model.rnn_layers[0].cell
  assert isinstance(cell, model_lib.AttentionLSTMCell)
  assert cell.compute_dtype == cell.lstm.compute_dtype == 'bfloat16'
  assert model.rnn_layers[1].cell.compute_dtype == 'bfloat16'
  assert {v.dtype for v in model.weights if v.trainable} == {'float32'}
  x, lens, labels, _ = _batch(config, [6, 3], seed=6)
  logits = model({'inputs': x, 'lengths': lens})
  assert logits.dtype == tf.float32
  reference = model_lib.build_model(config, hparams)
  reference.set_weights(model.get_weights())
  full = reference({'inputs': x, 'lengths': lens}).numpy()
  np.testing.assert_allclose(logits.numpy(), full, atol=0.05)  # bfloat16: ~3 digits
  step_logits, _ = model.step(x[:, 0], model.initial_state(2))
  assert step_logits.dtype == tf.float32
  logs = model.train_step(({'inputs': x, 'lengths': lens}, labels))
  assert np.isfinite(float(logs['loss']))


def test_mixed_float16_clips_the_unscaled_gradient():
  keras.utils.set_random_seed(0)
  clip = 1e-4  # far below every gradient's norm
  config, hparams = _small('basic_rnn', dropout_keep_prob=1.0, clip_norm=clip)
  model = model_lib.build_model(config, hparams, 'mixed_float16')
  model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), jit_compile=False)
  assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
  x, lens, labels, _ = _batch(config, [5, 3], seed=5)
  before = [v.numpy() for v in model.trainable_variables]
  model.train_step(({'inputs': x, 'lengths': lens}, labels))
  # Each tensor moves by exactly clip_norm: not by clip_norm / loss scale, which
  # clipping the scaled gradient would give, nor 0 (a step skipped as non-finite).
  norms = [np.linalg.norm(v.numpy() - b) for v, b in zip(model.trainable_variables, before)]
  np.testing.assert_allclose(norms, clip, rtol=1e-2)
