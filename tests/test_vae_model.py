"""MusicVAE model and encoding: the math against numpy, Magenta's schedules, training.

Tiny sizes throughout (the formulas do not depend on them); one test trains a small
model to reconstruct a handful of 2-bar drum patterns.
"""

import json
import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from music_rnn import configs
from music_rnn import vae_encoding
from music_rnn import vae_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DRUMS = configs.get_config('cat-drums_2bar_small')
MELODY = configs.get_config('cat-mel_2bar_small')
TINY = dict(enc_rnn_size=[6], dec_rnn_size=[5, 7], z_size=4, batch_size=4)


def _build(config, **overrides):
  keras.utils.set_random_seed(0)  # the same initial weights in every run
  hparams = config.hparams.replace(**{**TINY, **overrides})
  return vae_model.build_model(config, hparams, seed=3)


def _batch(labels, lengths=None):
  labels = tf.constant(labels, tf.int32)
  if lengths is None:
    lengths = [labels.shape[1]] * labels.shape[0]
  return {vae_model.LABELS: labels, vae_model.LENGTHS: tf.constant(lengths, tf.int32)}, labels


def _random_labels(config, rows, seed=0, steps=32):
  return np.random.RandomState(seed).randint(0, config.num_classes, size=(rows, steps))


def _train(model, x, y, steps=1):
  """fit (train_on_batch would retrace its step function on every call)."""
  model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(), steps_per_epoch=steps, epochs=1,
            verbose=0)


def _weights(model):
  return [v.numpy().copy() for v in model.trainable_variables]


# --- numpy reference of the network (Keras LSTM gate order i, f, c, o). ----------------


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def _np_lstm(zx, h, c, recurrent):
  """zx [T, B, 4U] (x W + b) from (h, c): outputs [T, B, U]."""
  outputs = []
  for z in zx:
    i, f, g, o = np.split(z + h @ recurrent, 4, axis=-1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    h = _sigmoid(o) * np.tanh(c)
    outputs.append(h)
  return np.stack(outputs)


def _np_encode(model, labels, lengths):
  """BidirectionalLstmEncoder + mu/sigma on the real steps of each row, one row at a time."""
  x_all = vae_encoding.encoder_inputs(labels, model.config).numpy()
  mus, sigmas = [], []
  for x, length in zip(x_all, lengths):
    x = x[:length, np.newaxis]  # [T, 1, D]
    for fw, bw in model.encoder_cells:
      outs = []
      for cell, seq in ((fw, x), (bw, x[::-1])):
        units = cell.units
        zx = seq @ cell.kernel.numpy() + cell.bias.numpy()
        outs.append(_np_lstm(zx, np.zeros((1, units)), np.zeros((1, units)),
                             cell.recurrent_kernel.numpy()))
      x = np.concatenate([outs[0], outs[1][::-1]], -1)
    encoding = np.concatenate([outs[0][-1], outs[1][-1]], -1)
    mus.append(encoding @ model.mu_layer.kernel.numpy() + model.mu_layer.bias.numpy())
    pre = encoding @ model.sigma_layer.kernel.numpy() + model.sigma_layer.bias.numpy()
    sigmas.append(np.log1p(np.exp(pre)))
  return np.concatenate(mus), np.concatenate(sigmas)


def _np_teacher_forced_logits(model, labels, z):
  """CategoricalLstmDecoder with teacher forcing: input [previous one-hot (zeros at step
  0); z], initial (c, h) per layer from tanh(dense(z)) split c0, h0, c1, h1, ..."""
  c = model.num_classes
  batch, steps = labels.shape
  prev = np.zeros((steps, batch, c))
  for t in range(1, steps):
    prev[t, np.arange(batch), labels[:, t - 1]] = 1
  x = np.concatenate([prev, np.broadcast_to(z, (steps,) + z.shape)], -1)
  layer = model.initial_state_layer
  flat = np.tanh(z @ layer.kernel.numpy() + layer.bias.numpy())
  offset = 0
  for cell in model.decoder_cells:
    u = cell.units
    c0, h0 = flat[:, offset:offset + u], flat[:, offset + u:offset + 2 * u]
    offset += 2 * u
    x = _np_lstm(x @ cell.kernel.numpy() + cell.bias.numpy(), h0, c0,
                 cell.recurrent_kernel.numpy())
  logits = x @ model.output_layer.kernel.numpy() + model.output_layer.bias.numpy()
  return logits.transpose(1, 0, 2)


def _np_log_softmax(logits):
  m = logits.max(-1, keepdims=True)
  return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


# --- Encoding. -------------------------------------------------------------------------


def test_melody_events_labels_round_trip():
  events = tf.constant([[-2, -1, 21, 60, 108, -2]], tf.int64)
  labels = vae_encoding.events_to_labels(events, MELODY)
  np.testing.assert_array_equal(labels, [[0, 1, 2, 41, 89, 0]])
  np.testing.assert_array_equal(vae_encoding.labels_to_events(labels, MELODY), events)
  drums = tf.constant([[0, 5, 511]], tf.int64)
  np.testing.assert_array_equal(vae_encoding.events_to_labels(drums, DRUMS), drums)
  np.testing.assert_array_equal(vae_encoding.labels_to_events(drums, DRUMS), drums)


def test_encoder_inputs_equal_numpy_one_hot_and_roll():
  labels = _random_labels(DRUMS, 3)
  labels[0, :4] = 0  # steps without hits
  roll = (labels[..., np.newaxis] >> np.arange(9)) & 1
  expected = np.concatenate([roll, (roll.sum(-1, keepdims=True) == 0)], -1)
  got = vae_encoding.encoder_inputs(labels, DRUMS).numpy()
  assert got.shape == (3, 32, DRUMS.input_size) == (3, 32, 10)
  np.testing.assert_array_equal(got, expected)
  labels = _random_labels(MELODY, 2)
  np.testing.assert_array_equal(vae_encoding.encoder_inputs(labels, MELODY),
                                np.eye(90)[labels])


def test_check_events_names_the_function_and_the_bad_values():
  good = tf.constant([[-2, -1, 21, 108]], tf.int64)
  for op in vae_encoding.check_events('encode', good, MELODY):
    op  # eager: passed  # noqa: B018
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r'encode: events must be -2 \(no event\).*got \[20 109\]'):
    vae_encoding.check_events('encode', tf.constant([[20, 60, 109]]), MELODY)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r'decode: .*0, 511.*got \[512 -1\]'):
    vae_encoding.check_events('decode', tf.constant([[3, 512, -1]]), DRUMS)


def test_transposition_keeps_notes_in_range_and_is_seeded():
  # Lowest note 23 (label 4), highest 105 (label 86): shifts in [-2, 3]; no notes: all.
  labels = np.zeros((3, 32), np.int32)
  labels[0, :3] = [4, 1, 86]
  labels[1, 5] = 50
  low, high = vae_encoding.transpose_limits(labels, MELODY)
  np.testing.assert_array_equal(low, [-2, -5, -5])
  np.testing.assert_array_equal(high, [3, 5, 5])
  shifted = vae_encoding.transpose_labels(tf.constant(labels), tf.constant([3, -5, 2]), MELODY)
  np.testing.assert_array_equal(shifted[0, :3], [7, 1, 89])  # note-off stays
  assert shifted[1, 5] == 45 and shifted[2].numpy().sum() == 0
  seed = tf.constant([1, 2], tf.int64)
  many = np.repeat(labels[:1], 400, 0)
  amounts = vae_encoding.random_transpose_amounts(many, MELODY, seed).numpy()
  assert set(amounts) == set(range(-2, 4))  # every allowed shift, nothing else
  np.testing.assert_array_equal(
      amounts, vae_encoding.random_transpose_amounts(many, MELODY, seed))
  np.testing.assert_array_equal(vae_encoding.transpose_labels(labels, [5] * 3, DRUMS), labels)


# --- Schedules and formulas. ------------------------------------------------------------


def test_schedules_match_magentas_formulas():
  hp = configs.VaeHParams()
  for step in (0, 1000, 6907, 20000):
    k = 1000.0
    np.testing.assert_allclose(vae_model.sampling_probability(step, hp),
                               1 - k / (k + math.exp(step / k)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(vae_model.learning_rate(step, hp),
                               (1e-3 - 1e-5) * 0.9999 ** step + 1e-5, rtol=1e-6)
  np.testing.assert_allclose(vae_model.sampling_probability(6907, hp), 0.5, atol=1e-3)
  exp = hp.replace(sampling_schedule='exponential', sampling_rate=0.99)
  np.testing.assert_allclose(vae_model.sampling_probability(100, exp), 1 - 0.99 ** 100,
                             rtol=1e-6)
  const = hp.replace(sampling_schedule='constant', sampling_rate=0.25)
  np.testing.assert_allclose(vae_model.sampling_probability(100, const), 0.25)
  assert not vae_model.uses_sampling(hp.replace(sampling_schedule='constant', sampling_rate=0))
  with pytest.raises(ValueError, match='inverse_sigmoid sampling_rate must be >= 1'):
    vae_model.check_sampling_schedule(hp.replace(sampling_rate=0.5))
  mel = MELODY.hparams  # beta_rate 0.99999, max_beta 0.2
  np.testing.assert_allclose(vae_model.kl_beta(10000, mel), (1 - 0.99999 ** 10000) * 0.2,
                             rtol=1e-6)
  # beta_rate 0: 0^0 = 1 at step 0 (as Magenta's tf.pow), max_beta from step 1 on.
  assert vae_model.kl_beta(0, DRUMS.hparams) == 0
  np.testing.assert_allclose(vae_model.kl_beta(1, DRUMS.hparams), 0.2)
  # The optimizer runs on that learning-rate schedule.
  model = _build(DRUMS)
  model.optimizer.iterations.assign(5000)
  np.testing.assert_allclose(model.optimizer.learning_rate.numpy(),
                             (1e-3 - 1e-5) * 0.9999 ** 5000 + 1e-5, rtol=1e-6)


def test_kl_and_free_bits_against_numpy():
  rng = np.random.RandomState(0)
  mu, sigma = rng.randn(5, 4), np.exp(rng.randn(5, 4))
  expected = np.sum(0.5 * (mu ** 2 + sigma ** 2 - 1) - np.log(sigma), -1)
  kl = vae_model.kl_divergence(mu, sigma).numpy()
  np.testing.assert_allclose(kl, expected, rtol=1e-5)
  np.testing.assert_allclose(vae_model.kl_cost(kl, 2.0), np.maximum(kl - 2 * np.log(2), 0),
                             rtol=1e-5)


def test_network_equals_numpy_reference_on_fixed_weights():
  model = _build(MELODY, enc_rnn_size=[6, 5])  # two encoder layers
  labels = _random_labels(MELODY, 3, seed=1)
  lengths = np.array([32, 20, 9])
  mu, sigma = model.encode(labels, lengths)
  np_mu, np_sigma = _np_encode(model, labels, lengths)
  np.testing.assert_allclose(mu, np_mu, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(sigma, np_sigma, rtol=1e-4, atol=1e-6)
  # Padded steps do not reach the encoding.
  changed = labels.copy()
  changed[1, 20:] = 7
  np.testing.assert_allclose(model.encode(changed, lengths)[0], mu, atol=1e-6)
  z = np.random.RandomState(2).randn(3, 4).astype(np.float32)
  logits = model.teacher_forced_logits(labels, lengths, z)
  np.testing.assert_allclose(logits, _np_teacher_forced_logits(model, labels, z),
                             rtol=1e-4, atol=1e-5)


def test_loss_and_metrics_against_numpy_reference():
  model = _build(MELODY, free_bits=0.5, max_beta=0.5, beta_rate=0.9)
  model.optimizer.iterations.assign(7)
  labels = _random_labels(MELODY, 4, seed=3)
  lengths = np.array([32, 17, 32, 0])  # the last row is padding: left out of everything
  x, y = _batch(labels, lengths)
  logs = model.evaluate(tf.data.Dataset.from_tensors((x, y)), return_dict=True, verbose=0)
  # The same z as test_step: mu + sigma * eps, eps keyed by (seed, step).
  mu, sigma = (t.numpy() for t in model.encode(labels, lengths))
  eps = vae_model.global_rows_normal(mu.shape, model._step_seed(vae_model._EPS_STREAM)).numpy()
  z = mu + sigma * eps
  logits = model.teacher_forced_logits(labels, lengths, z).numpy()
  log_p = _np_log_softmax(logits)
  mask = np.arange(32)[np.newaxis] < lengths[:, np.newaxis]
  xent = -np.take_along_axis(log_p, labels[..., np.newaxis], -1)[..., 0]
  r = (xent * mask).sum(1)[:3]
  kl = np.sum(0.5 * (mu ** 2 + sigma ** 2 - 1) - np.log(sigma), -1)[:3]
  beta = (1 - 0.9 ** 7) * 0.5
  kl_cost = np.maximum(kl - 0.5 * np.log(2), 0)
  correct = (logits.argmax(-1) == labels) & mask
  expected = {
      'loss': np.mean(r + beta * kl_cost), 'r_loss': r.mean(), 'kl_loss': kl_cost.mean(),
      'reconstruction_loss': r.sum() / mask.sum(), 'accuracy': correct.sum() / mask.sum(),
      'kl_bits': np.mean(kl) / np.log(2), 'elbo': np.mean(r + kl), 'beta': beta,
      'sampling_probability': 0.0}
  assert set(logs) == set(vae_model.METRIC_NAMES)
  for name, value in expected.items():
    np.testing.assert_allclose(logs[name], value, rtol=1e-4, err_msg=name)
  assert 0 < kl_cost.min() < kl.min()  # free bits took effect but did not zero it


def test_scheduled_sampling_changes_inputs_only_where_drawn():
  model = _build(MELODY)
  labels = _random_labels(MELODY, 4, seed=4)
  z = np.random.RandomState(5).randn(4, 4).astype(np.float32)
  seed = tf.constant([4, 5], tf.int64)
  teacher = model.teacher_forced_logits(labels, None, z)
  never = model._decode_train(labels, z, tf.constant(0.0), seed)
  always = model._decode_train(labels, z, tf.constant(1.0), seed)
  np.testing.assert_allclose(never, teacher, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(always[:, 0], teacher[:, 0], rtol=1e-5, atol=1e-6)
  assert np.abs(always[:, 1:] - teacher[:, 1:]).max() > 1e-3


# --- Training steps. --------------------------------------------------------------------


def test_gradient_clip_to_zero_skips_the_update():
  x, y = _batch(_random_labels(DRUMS, 4))
  model = _build(DRUMS, grad_norm_clip_to_zero=1e-6)
  before = _weights(model)
  _train(model, x, y)
  assert model.optimizer.iterations.numpy() == 1  # counted, as Magenta's zero step
  for old, new in zip(before, _weights(model)):
    np.testing.assert_array_equal(old, new)
  assert model.first_nonfinite_step.numpy() == -1


def test_global_norm_clipping():
  model = _build(DRUMS, grad_clip=1.0, grad_norm_clip_to_zero=100.0)
  grads = [tf.constant([3.0, 0.0]), None, tf.constant([[4.0]])]  # global norm 5
  clipped, norm = model._clip(grads)
  assert norm.numpy() == pytest.approx(5.0)
  np.testing.assert_allclose(clipped[0], [0.6, 0.0], rtol=1e-6)
  np.testing.assert_allclose(clipped[2], [[0.8]], rtol=1e-6)
  assert clipped[1] is None
  small = [tf.constant([0.3, 0.4])]
  np.testing.assert_allclose(model._clip(small)[0][0], [0.3, 0.4], rtol=1e-6)
  huge = [tf.constant([300.0, 400.0])]
  np.testing.assert_array_equal(model._clip(huge)[0][0], [0.0, 0.0])


def test_nonfinite_step_is_skipped_and_recorded():
  x, y = _batch(_random_labels(DRUMS, 4))
  model = _build(DRUMS)
  bias = model.output_layer.bias
  bias.assign(np.full(bias.shape, np.nan, np.float32))
  before = _weights(model)
  _train(model, x, y)
  assert model.first_nonfinite_step.numpy() == 0
  assert model.optimizer.iterations.numpy() == 0
  for old, new in zip(before, _weights(model)):
    np.testing.assert_array_equal(old, new)
  bias.assign(np.zeros(bias.shape, np.float32))
  before = _weights(model)
  _train(model, x, y)
  assert model.optimizer.iterations.numpy() == 1
  assert all(np.abs(a - b).max() > 0 for a, b in zip(before, _weights(model)))
  assert model.first_nonfinite_step.numpy() == 0  # the first one stays


def test_mixed_float16_steps_count():
  """Keras 3.6's LossScaleOptimizer keeps its own `iterations` at 0; the schedules and
  seeds must follow the inner optimizer's count (vae_model.global_step)."""
  keras.utils.set_random_seed(0)
  hparams = MELODY.hparams.replace(**TINY)
  model = vae_model.build_model(MELODY, hparams, dtype_policy='mixed_float16', seed=3)
  assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
  x, y = _batch(_random_labels(MELODY, 4))
  _train(model, x, y, steps=2)
  assert int(vae_model.global_step(model.optimizer)) == 2
  logs = model.evaluate(tf.data.Dataset.from_tensors((x, y)), return_dict=True, verbose=0)
  np.testing.assert_allclose(logs['beta'], (1 - 0.99999 ** 2) * 0.2, rtol=1e-3)
  assert np.isfinite(logs['loss'])


# --- Generation. --------------------------------------------------------------------------


def test_decode_is_seeded_and_greedy_at_low_temperature():
  model = _build(MELODY)
  # Logits far apart (an untrained model's are nearly tied), so a very low temperature
  # picks the argmax.
  model.output_layer.kernel.assign(model.output_layer.kernel * 30)
  z = tf.constant(np.random.RandomState(6).randn(3, 4) * 3, tf.float32)
  a = model.decode(z, 1.0, 5).numpy()
  assert a.shape == (3, 32) and a.dtype == np.int32
  np.testing.assert_array_equal(a, model.decode(z, 1.0, 5))
  assert (a != model.decode(z, 1.0, 6).numpy()).any()
  greedy = model.greedy_decode(z).numpy()
  np.testing.assert_array_equal(model.decode(z, 1e-6, 7), greedy)
  np.testing.assert_array_equal(model.greedy_decode(z, 8), greedy[:, :8])
  # Traced with tensors, as the export calls it.
  traced = tf.function(lambda z, t, s: model.decode(z, t, s))
  np.testing.assert_array_equal(traced(z, tf.constant(1.0), tf.constant(5, tf.int64)), a)


def test_sample_categorical_follows_the_softmax():
  logits = tf.math.log(tf.constant([[0.2, 0.5, 0.3]] * 20000))
  draws = vae_model.sample_categorical(logits, tf.constant([1, 1], tf.int64)).numpy()
  np.testing.assert_allclose(np.bincount(draws, minlength=3) / 20000, [0.2, 0.5, 0.3],
                             atol=0.015)


def test_slerp_as_magentas():
  rng = np.random.RandomState(7)
  p0, p1 = rng.randn(4), rng.randn(4)
  omega = np.arccos(np.dot(p0 / np.linalg.norm(p0), p1 / np.linalg.norm(p1)))
  for t in (0.0, 0.3, 1.0):
    expected = (np.sin((1 - t) * omega) * p0 + np.sin(t * omega) * p1) / np.sin(omega)
    np.testing.assert_allclose(vae_model.slerp(p0, p1, [t]), expected, rtol=1e-5, atol=1e-6)
  path = vae_model.slerp(p0[np.newaxis, np.newaxis], p1[np.newaxis, np.newaxis],
                         np.linspace(0, 1, 5)[np.newaxis, :, np.newaxis])
  assert path.shape == (1, 5, 4)
  np.testing.assert_allclose(vae_model.slerp(p0, p0, [0.5]), p0, rtol=1e-6)  # no NaN


# --- Learning. -----------------------------------------------------------------------------


def _drum_patterns(rng, count):
  """`count` distinct 2-bar grooves: kick/snare/hat patterns over 16 steps, repeated."""
  patterns = []
  while len(patterns) < count:
    bar = rng.choice([0, 1, 2, 4, 5, 9, 20], size=16, p=[.4, .15, .1, .15, .1, .05, .05])
    groove = np.tile(bar, 2)
    if not any((groove == p).all() for p in patterns):
      patterns.append(groove)
  return np.stack(patterns)


def test_learns_to_reconstruct_a_few_patterns():
  rng = np.random.RandomState(8)
  patterns = _drum_patterns(rng, 6)
  model = _build(DRUMS, enc_rnn_size=[32], dec_rnn_size=[32], z_size=8, batch_size=12,
                 learning_rate=0.01, min_learning_rate=0.001, free_bits=0, max_beta=0.01)
  x, y = _batch(np.concatenate([patterns, patterns]))
  _train(model, x, y, steps=300)
  logs = model.evaluate(tf.data.Dataset.from_tensors((x, y)), return_dict=True, verbose=0)
  majority = np.bincount(patterns.ravel()).max() / patterns.size
  assert logs['accuracy'] > majority + 0.4, (logs, majority)  # measured: 0.94 vs 0.34
  # The latent code carries the pattern: free-running reconstruction from mu.
  mu, _ = model.encode(patterns, [32] * len(patterns))
  greedy = model.greedy_decode(mu).numpy()
  assert (greedy == patterns).mean() > majority + 0.2  # measured: 0.78


# --- Several replicas. ------------------------------------------------------------------

_MIRRORED = textwrap.dedent('''
    import json
    import tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from music_rnn import configs, vae_model

    config = configs.get_config('cat-mel_2bar_small')  # transposition augmentation on
    hparams = config.hparams.replace(
        enc_rnn_size=[6], dec_rnn_size=[5, 7], z_size=4, sampling_schedule='constant',
        sampling_rate=0.5, dropout_keep_prob=0.7, free_bits=0.1, max_beta=0.5)
    labels = np.random.RandomState(0).randint(2, 60, size=(4, 32)).astype(np.int32)
    lengths = np.array([32, 20, 32, 0], np.int32)  # a padding row on the 2nd replica
    data = tf.data.Dataset.from_tensors(({'labels': labels, 'lengths': lengths}, labels))

    def run(strategy):
      keras.utils.set_random_seed(1)
      with strategy.scope():
        model = vae_model.build_model(config, hparams, seed=2)
      logs = model.fit(data.repeat(), steps_per_epoch=2, epochs=1, verbose=0).history
      return [v.numpy() for v in model.trainable_variables], logs

    w1, h1 = run(tf.distribute.get_strategy())
    w2, h2 = run(tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1']))
    diff = max(float(np.abs(a - b).max()) for a, b in zip(w1, w2))
    print(json.dumps({'h1': h1, 'h2': h2, 'diff': diff}))
''')


def test_two_replicas_compute_the_single_device_update():
  """Replica-summed gradient before the global-norm clip, per-sequence means over the
  global batch's real rows, and every random draw (z, scheduled sampling, dropout,
  transposition) keyed by the global row: 2 replicas == 1 device."""
  env = {**os.environ, 'PYTHONPATH': REPO, 'TF_CPP_MIN_LOG_LEVEL': '2',
         'CUDA_VISIBLE_DEVICES': ''}
  proc = subprocess.run([sys.executable, '-c', _MIRRORED], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result['diff'] < 1e-6
  for name in vae_model.METRIC_NAMES:
    np.testing.assert_allclose(result['h2'][name], result['h1'][name], rtol=1e-5,
                               err_msg=name)
  assert result['h1']['sampling_probability'] == [0.5]
