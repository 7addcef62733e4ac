"""Tests for music_rnn.model: shapes, masking, metrics, attention, the fast core against
the Keras layers' own formulation, clipping, the NaN guard, replicas."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from music_rnn import compact
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
  """Random compact inputs {'hot', 'flags', 'lengths'}, labels, mask (1 on real steps)."""
  layout = compact.input_layout(config)
  rng = np.random.default_rng(seed)
  b, t = len(lengths), max(lengths)
  hot = np.stack([rng.integers(0, size + 1, (b, t)) + offset  # + 1: sometimes none set
                  for size, offset in zip(layout.block_sizes, layout.block_offsets)], -1)
  hot = np.minimum(hot, layout.num_hot)
  flags = rng.integers(0, 2 ** max(layout.num_flag_bits, 1), (b, t))
  labels = rng.integers(0, config.num_classes, (b, t))
  labels[:, ::3] = config.no_event_label  # make sure both kinds of step occur
  mask = np.arange(t)[None, :] < np.array(lengths)[:, None]
  inputs = {model_lib.HOT: hot, model_lib.FLAGS: flags,
            model_lib.LENGTHS: np.array(lengths, np.int32)}
  return inputs, labels, mask


def _randomize(model, seed=0, scale=0.3):
  """Random weights everywhere (biases too), so no term of the math is trivially 0."""
  rng = np.random.default_rng(seed)
  for v in model.trainable_variables:
    v.assign(rng.normal(size=v.shape).astype(np.float32) * scale)


@pytest.mark.parametrize('name', ['drum_kit', 'attention_rnn', 'basic_rnn'])
def test_output_shapes(name):
  config, hparams = _small(name)
  model = model_lib.build_model(config, hparams)
  inputs, _, _ = _batch(config, [6, 3])
  logits = model(inputs)
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


@pytest.mark.parametrize('name', ['drum_kit', 'basic_rnn', 'attention_rnn'])
def test_padding_changes_neither_outputs_nor_metrics(name):
  config, hparams = _small(name)
  model = model_lib.build_model(config, hparams)
  lengths = [7, 4, 2]
  inputs, labels, mask = _batch(config, lengths, seed=2)
  # Garbage in the padding (even out-of-range indices) must not leak anywhere.
  inputs[model_lib.HOT][~mask] = 10 ** 6
  inputs[model_lib.FLAGS][~mask] = -1
  padded = model(inputs).numpy()
  metrics = model_lib.make_metrics(config.no_event_label)
  for m in metrics:
    m.update_state(labels, padded, sample_weight=mask)
  singles = model_lib.make_metrics(config.no_event_label)
  for b, n in enumerate(lengths):
    alone = model({k: v[b:b + 1, :n] if v.ndim > 1 else v[b:b + 1]
                   for k, v in inputs.items()}).numpy()
    np.testing.assert_allclose(alone[0], padded[b, :n], atol=1e-5)
    for m in singles:
      m.update_state(labels[b:b + 1, :n], alone)
  for m, s in zip(metrics, singles):
    np.testing.assert_allclose(float(m.result()), float(s.result()), rtol=1e-5)
  # The model's own test_step agrees with the metrics above, and reports the padding.
  model.reset_metrics()
  logs = model.test_step((inputs, labels))
  for m in metrics:
    np.testing.assert_allclose(float(logs[m.name]), float(m.result()), rtol=1e-5)
  np.testing.assert_allclose(float(logs['padded_fraction']), (21 - 13) / 13, rtol=1e-6)


def _loss(model, fn, inputs, labels, mask):
  """Loss and gradients as training computes them (callers turn dropout off)."""
  with tf.GradientTape() as tape:
    loss = model_lib.sequence_loss(labels, fn(inputs, training=True), mask)
  return loss, tape.gradient(loss, model.trainable_variables)


@pytest.mark.parametrize('loop_jit', [False, True], ids=['tf_loop', 'xla_loop'])
@pytest.mark.parametrize('name', ['drum_kit', 'basic_rnn', 'lookback_rnn', 'attention_rnn'])
def test_fast_core_equals_keras_layers_formulation(name, loop_jit):
  """`call` (gathered rows, folded attention projection, carried keys, matmuls outside
  the loop) == keras.layers.LSTM and the attention cell on the full input rows, with
  the same variables: logits on real steps, loss and every gradient. Both loop kinds:
  TF while loops, and XLA clusters with their recomputing custom gradient."""
  config, hparams = _small(name, dropout_keep_prob=1.0)
  model = model_lib.build_model(config, hparams, jit_compile=False)
  model.loop_jit = loop_jit
  _randomize(model)
  inputs, labels, mask = _batch(config, [9, 6, 1], seed=7)
  rows = {model_lib.INPUTS: compact.expand_inputs(config, inputs[model_lib.HOT],
                                                  inputs[model_lib.FLAGS]),
          model_lib.LENGTHS: inputs[model_lib.LENGTHS]}
  fast = model(inputs).numpy()
  reference = model.reference_call(rows).numpy()
  assert np.abs(reference[mask]).max() > 0.1
  np.testing.assert_allclose(fast[mask], reference[mask], atol=1e-5)
  fast_loss, fast_grads = _loss(model, model, inputs, labels, mask)
  ref_loss, ref_grads = _loss(model, model.reference_call, rows, labels, mask)
  np.testing.assert_allclose(float(fast_loss), float(ref_loss), rtol=1e-6)
  for v, f, r in zip(model.trainable_variables, fast_grads, ref_grads):
    f, r = tf.convert_to_tensor(f).numpy(), tf.convert_to_tensor(r).numpy()
    assert np.abs(r).max() > 0, v.path
    np.testing.assert_allclose(f, r, atol=1e-5 * max(1., np.abs(r).max()), err_msg=v.path)


def _random_layer_weights(units, attn_length, seed):
  """Step weights of one layer (attention if attn_length), random, float32."""
  rng = np.random.default_rng(seed)
  normal = lambda *shape: tf.constant(rng.normal(size=shape).astype(np.float32) * 0.4)  # noqa: E731
  if not attn_length:
    return {'recurrent': normal(units, 4 * units)}
  return {'recurrent': normal(2 * units, 4 * units), 'query': normal(2 * units, units),
          'query_bias': normal(units), 'attn_w': normal(units, units),
          'attn_v': normal(units), 'out': normal(2 * units, units),
          'out_bias': normal(units), 'attn_length': attn_length}


def _stepped_layer(weights, zx):
  """The layer as generation runs it: layer_step one step at a time (window oldest
  first), differentiated by plain autodiff."""
  state = model_lib.zero_layer_state(weights, zx.shape[0], tf.float32)
  outputs = []
  for t in range(zx.shape[1]):
    out, state = model_lib.layer_step(weights)(zx[:, t], state, weights)
    outputs.append(out)
  return tf.stack(outputs, 1)


@pytest.mark.parametrize('num_steps', [3, 8], ids=['shorter_than_window', 'longer'])
@pytest.mark.parametrize('attn_length', [0, 5], ids=['lstm', 'attention'])
@pytest.mark.parametrize('jit_compile', [False, True], ids=['xla_loops', 'xla_step'])
def test_hand_written_layer_gradients_equal_autodiff(attn_length, num_steps, jit_compile):
  """run_layer's forward and hand-written backward == autodiff of the
  generation step run step by step, for the inputs and every loop weight; also when
  the run_layer call sits inside an XLA-compiled function (the whole train step)."""
  units, batch = 6, 3
  weights = _random_layer_weights(units, attn_length, seed=attn_length + num_steps)
  names = [k for k in model_lib.LOOP_WEIGHTS if k in weights]
  rng = np.random.default_rng(1)
  zx = tf.constant(rng.normal(size=(batch, num_steps, 4 * units)).astype(np.float32))
  d_out = tf.constant(rng.normal(size=(batch, num_steps, units)).astype(np.float32))

  def gradients(layer_fn, zx, tensors):
    with tf.GradientTape() as tape:
      tape.watch([zx, tensors])
      outputs = layer_fn({**weights, **tensors}, zx)
      loss = tf.reduce_sum(outputs * d_out)
    return [outputs] + tape.gradient(loss, [zx, [tensors[k] for k in names]])

  fast_fn = lambda w, zx: model_lib.run_layer(w, zx, jit_compile=not jit_compile)  # noqa: E731
  if jit_compile:
    fast_fn = tf.function(fast_fn, jit_compile=True)
  tensors = {k: weights[k] for k in names}
  fast = tf.nest.flatten(gradients(fast_fn, zx, tensors))
  reference = tf.nest.flatten(gradients(_stepped_layer, zx, tensors))
  for what, f, r in zip(['outputs', 'zx'] + names, fast, reference):
    r = r.numpy()
    assert np.abs(r).max() > 1e-3, what
    np.testing.assert_allclose(f.numpy(), r, atol=1e-5 * max(1., np.abs(r).max()),
                               err_msg=what)


def test_keras_layers_formulation_is_the_old_model():
  """reference_call is a plain Keras model: a separately built stack of
  keras.layers.LSTM / RNN(AttentionLSTMCell) with the weights copied in agrees."""
  config, hparams = _small('drum_kit', dropout_keep_prob=1.0)
  model = model_lib.build_model(config, hparams)
  _randomize(model, seed=1)
  inputs, _, mask = _batch(config, [5, 3], seed=8)
  x = tf.cast(compact.expand_inputs(config, inputs[model_lib.HOT], inputs[model_lib.FLAGS]),
              tf.float32)
  layers = [keras.layers.RNN(model_lib.AttentionLSTMCell(12, 5), return_sequences=True),
            keras.layers.LSTM(8, return_sequences=True),
            keras.layers.Dense(config.num_classes)]
  by_path = {v.path.split('/', 1)[1]: v for v in model.weights}
  keras_mask = tf.constant(mask)
  y = x
  for layer, ours in zip(layers, model.rnn_layers + [model.logits_layer]):
    y = layer(y, mask=keras_mask) if layer is not layers[-1] else layer(y)
    own = [v for v in ours.weights]
    assert len(own) == len(layer.weights)
    for theirs, mine in zip(layer.weights, own):
      theirs.assign(by_path[mine.path.split('/', 1)[1]])
  y = x
  for layer in layers[:-1]:
    y = layer(y, mask=keras_mask)
  old = layers[-1](y).numpy()
  np.testing.assert_allclose(model(inputs).numpy()[mask], old[mask], atol=1e-5)


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


@pytest.mark.parametrize('name', ['attention_rnn', 'drum_kit', 'lookback_rnn'])
def test_step_by_step_equals_full_sequence(name):
  config, hparams = _small(name)
  model = model_lib.build_model(config, hparams)
  _randomize(model, seed=3)
  inputs, _, _ = _batch(config, [8, 8], seed=4)
  full = model(inputs).numpy()
  dense = compact.expand_dense(model.layout, inputs[model_lib.FLAGS]).numpy()
  states = model.initial_state(2)
  weights = model.step_weights()
  for t in range(8):  # more steps than the attention window, so it wraps
    logits, states = model.step(inputs[model_lib.HOT][:, t], dense[:, t], states, weights)
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
  inputs, labels, mask = _batch(config, [5, 3], seed=5)
  with tf.GradientTape() as tape:
    loss = model_lib.sequence_loss(labels, model(inputs, training=True), mask)
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
    from music_rnn import compact, configs, model as model_lib

    config = configs.get_config('drum_kit')
    hparams = config.hparams.replace(rnn_layer_sizes=(8, 8), attn_length=3,
                                     dropout_keep_prob=1.0, clip_norm=0.05)
    rng = np.random.default_rng(0)
    lengths = np.array([9, 2, 4, 1, 6], np.int32)  # unequal work per replica
    hot = rng.integers(0, compact.input_layout(config).num_hot + 1, (5, 9, 1))
    labels = rng.integers(0, 4, (5, 9))
    ds = tf.data.Dataset.from_tensor_slices((
        {'hot': hot, 'flags': np.zeros((5, 9), np.int64), 'lengths': lengths}, labels))
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
  inputs, labels, mask = _batch(config, [6, 3], seed=6)
  logits = model(inputs)
  assert logits.dtype == tf.float32
  reference = model_lib.build_model(config, hparams)
  reference.set_weights(model.get_weights())
  full = reference(inputs).numpy()
  np.testing.assert_allclose(logits.numpy()[mask], full[mask], atol=0.05)  # bfloat16: ~3 digits
  dense = compact.expand_dense(model.layout, inputs[model_lib.FLAGS])
  state = model.initial_state(2)
  assert {s.dtype for s in state} == {tf.bfloat16}
  step_logits, _ = model.step(inputs[model_lib.HOT][:, 0], dense[:, 0], state)
  assert step_logits.dtype == tf.float32
  np.testing.assert_allclose(step_logits.numpy(), full[:, 0], atol=0.05)
  logs = model.train_step((inputs, labels))
  assert np.isfinite(float(logs['loss']))
  # Compiled: the whole step in XLA, and the attention loop alone as an XLA cluster.
  for jit_compile in (True, False):
    model.compile(optimizer=keras.optimizers.Adam(), jit_compile=jit_compile)
    history = model.fit(tf.data.Dataset.from_tensors((inputs, labels)).repeat(),
                        steps_per_epoch=2, epochs=1, verbose=0).history
    assert np.isfinite(history['loss'][-1])
  assert model.first_nonfinite_step.numpy() == -1


def test_mixed_float16_clips_the_unscaled_gradient():
  keras.utils.set_random_seed(0)
  clip = 1e-4  # far below every gradient's norm
  config, hparams = _small('basic_rnn', dropout_keep_prob=1.0, clip_norm=clip)
  model = model_lib.build_model(config, hparams, 'mixed_float16')
  model.compile(optimizer=keras.optimizers.SGD(learning_rate=1.0), jit_compile=False)
  assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
  inputs, labels, _ = _batch(config, [5, 3], seed=5)
  before = [v.numpy() for v in model.trainable_variables]
  model.train_step((inputs, labels))
  # Each tensor moves by exactly clip_norm: not by clip_norm / loss scale, which
  # clipping the scaled gradient would give, nor 0 (a step skipped as non-finite).
  norms = [np.linalg.norm(v.numpy() - b) for v, b in zip(model.trainable_variables, before)]
  np.testing.assert_allclose(norms, clip, rtol=1e-2)
  # The step count checkpoints and resume read: the LossScaleOptimizer's own
  # `iterations` stays 0 in Keras 3.6; the inner optimizer counts.
  assert int(model_lib.global_step(model.optimizer).numpy()) == 1


@pytest.mark.parametrize('jit_compile', [True, False], ids=['xla', 'no_xla'])
def test_nan_guard_skips_the_update_and_records_the_first_bad_step(jit_compile):
  config, hparams = _small('attention_rnn', dropout_keep_prob=1.0)
  model = model_lib.build_model(config, hparams, jit_compile=jit_compile)
  assert int(model.first_nonfinite_step.numpy()) == -1
  inputs, labels, _ = _batch(config, [5, 3], seed=9)
  data = tf.data.Dataset.from_tensors((inputs, labels)).repeat()
  model.fit(data, steps_per_epoch=2, epochs=1, verbose=0)
  assert int(model.first_nonfinite_step.numpy()) == -1
  assert int(model.optimizer.iterations.numpy()) == 2
  bias = model.logits_layer.bias
  bias.assign(np.where(np.arange(bias.shape[0]) == 1, np.nan, bias.numpy()).astype(np.float32))
  before = [v.numpy() for v in model.trainable_variables]
  model.fit(data, steps_per_epoch=3, epochs=1, verbose=0)
  # Steps 2, 3, 4 were skipped (nothing moved, not even Adam's step count); 2 is kept.
  assert int(model.first_nonfinite_step.numpy()) == 2
  assert int(model.optimizer.iterations.numpy()) == 2
  for v, b in zip(model.trainable_variables, before):
    np.testing.assert_array_equal(v.numpy(), b, err_msg=v.path)
  # Finite again: training resumes, the record stays.
  bias.assign(np.zeros(bias.shape, np.float32))
  model.fit(data, steps_per_epoch=1, epochs=1, verbose=0)
  assert int(model.optimizer.iterations.numpy()) == 3
  assert int(model.first_nonfinite_step.numpy()) == 2


def test_build_model_xla_defaults():
  """Measured (benchmarks/core_speed.py): whole-step XLA for small layers only."""
  config, hparams = _small('drum_kit')
  model = model_lib.build_model(config, hparams)
  assert model.jit_compile is True
  assert model.steps_per_execution == model_lib.DEFAULT_STEPS_PER_EXECUTION
  assert 'padded_fraction' in [m.name for m in model.metrics]
  assert model_lib.build_model(config, hparams.replace(rnn_layer_sizes=(256, 8))).jit_compile
  big = model_lib.build_model(config, hparams.replace(rnn_layer_sizes=(512, 8)))
  assert big.jit_compile is False
  assert big._loop_jit(big.step_weights()['layers'][0])  # pylint: disable=protected-access
  assert not big._loop_jit(big.step_weights()['layers'][1])  # pylint: disable=protected-access
  plain_config, plain_hparams = _small('basic_rnn')
  assert model_lib.build_model(plain_config, plain_hparams).jit_compile
  assert not model_lib.build_model(
      plain_config, plain_hparams.replace(rnn_layer_sizes=(128, 8))).jit_compile
