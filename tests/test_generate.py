"""Generation: the incremental encoders and RNN step against the full-sequence ones, the
`generate` / `prime` / `extend` functions, and (slow) a real pipeline's export used from
a fresh process and from the `music-rnn generate` command."""

import json
import os
import random
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from music_rnn import configs
from music_rnn import encoding
from music_rnn import generation
from music_rnn import model as model_lib

ALL_CONFIGS = ['drum_kit', 'basic_rnn', 'lookback_rnn', 'attention_rnn']


def _small(name):
  config = configs.get_config(name)
  hparams = config.hparams.replace(rnn_layer_sizes=(12, 8),
                                   attn_length=min(config.hparams.attn_length, 5))
  return config, hparams


def _model(name, seed=0):
  import keras  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(seed)
  config, hparams = _small(name)
  return config, model_lib.build_model(config, hparams)


def _random_events(config, rng, length):
  """Model-space events with repeats 1 and 2 bars back, so lookback inputs fire."""
  if config.kind == configs.DRUMS:
    pool = [0, 0, 1, 5, 4, 511, 36]
  else:
    pool = [-2, -2, -1] + list(range(config.min_note, config.max_note))
  events = [rng.choice([-2, config.min_note]) if config.kind == configs.MELODY
            else rng.choice(pool)]
  while len(events) < length:
    if len(events) >= 32 and rng.random() < 0.3:
      events.append(events[-rng.choice([16, 32])])
    else:
      events.append(rng.choice(pool))
  if config.kind == configs.MELODY:  # no note-off before the first note (as Melody())
    events = encoding.clean_leading_note_offs(tf.constant([events], tf.int64))[0].numpy()
  return np.asarray(events, np.int64)


def _encoder_step(encoder, state, events, hist, t):
  back = generation.read_lookbacks(hist, tf.constant(t), encoder.lookbacks,
                                   encoder.default_event)
  return encoder.step(state, tf.constant(events[:, t]), tf.constant(t), back)


def _step_rows(encoder, events):
  """Runs the incremental encoder over [B, T] events; rows [B, T, input_size]."""
  hist = tf.TensorArray(tf.int64, size=events.shape[1], clear_after_read=False,
                        element_shape=tf.TensorShape([None]))
  hist = hist.unstack(tf.transpose(events))
  state = encoder.initial_state(events.shape[0])
  rows = []
  for t in range(events.shape[1]):
    state, hot, dense, _ = _encoder_step(encoder, state, events, hist, t)
    rows.append(generation.dense_rows(encoder, hot, dense))
  return tf.stack(rows, 1).numpy()


@pytest.mark.parametrize('name', ALL_CONFIGS)
def test_step_encoder_matches_encode_batch(name):
  config = configs.get_config(name)
  rng = random.Random(name)
  events = np.stack([_random_events(config, rng, 70) for _ in range(3)])
  expected, _, _ = encoding.encode_batch(config, events, squash=False)
  got = _step_rows(generation.step_encoder(config), events)
  np.testing.assert_array_equal(got, expected.numpy())


@pytest.mark.parametrize('name', ALL_CONFIGS)
def test_decode_inverts_labels(name):
  """Every label note-seq would give an event decodes back to that event."""
  config = configs.get_config(name)
  encoder = generation.step_encoder(config)
  rng = random.Random(1)
  events = np.stack([_random_events(config, rng, 70) for _ in range(2)])
  _, labels, _ = encoding.encode_batch(config, events, squash=False)
  hist = tf.TensorArray(tf.int64, size=70, clear_after_read=False,
                        element_shape=tf.TensorShape([None])).unstack(tf.transpose(events))
  state = encoder.initial_state(2)
  for t in range(69):
    state, _, _, upcoming = _encoder_step(encoder, state, events, hist, t)
    decoded = encoder.decode(tf.constant(labels[:, t].numpy(), tf.int32), upcoming)
    np.testing.assert_array_equal(decoded.numpy(), events[:, t + 1], err_msg=f'position {t}')


@pytest.mark.parametrize('name', ['drum_kit', 'attention_rnn', 'lookback_rnn'])
def test_stepper_matches_model(name):
  config, model = _model(name)
  gen = generation.Generator(model, config)
  rng = random.Random(2)
  events = np.stack([_random_events(config, rng, 12) for _ in range(2)])
  inputs, _, _ = encoding.encode_batch(config, events, squash=False)
  full = model({model_lib.INPUTS: inputs, model_lib.LENGTHS: tf.constant([12, 12])}).numpy()
  hist = tf.TensorArray(tf.int64, size=12, clear_after_read=False,
                        element_shape=tf.TensorShape([None])).unstack(tf.transpose(events))
  enc_state, rnn_state = gen.encoder.initial_state(2), gen.stepper.zero_state(2)
  for t in range(12):
    enc_state, hot, dense, _ = _encoder_step(gen.encoder, enc_state, events, hist, t)
    logits, rnn_state = gen.stepper.step(hot, dense, rnn_state)
    np.testing.assert_allclose(logits.numpy(), full[:, t], atol=2e-5, err_msg=f'step {t}')
  # The packed state (RNN and encoder) round-trips exactly.
  packed = gen._pack(rnn_state, enc_state)  # pylint: disable=protected-access
  assert packed.shape == (2, gen.state_size)
  rnn_back, enc_back = gen._unpack(packed)  # pylint: disable=protected-access
  for a, b in zip(rnn_back + enc_back, tuple(rnn_state) + tuple(enc_state)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def _primer(config, batch=2):
  if config.kind == configs.DRUMS:
    return np.array([[1, 0, 4, 0, 5]] * batch, np.int64)
  return np.array([[60, -2, 60, -2, 67, -2, 67, -2]] * batch, np.int64)


@pytest.mark.parametrize('name', ['drum_kit', 'attention_rnn'])
def test_generate_and_extend_agree(name):
  config, model = _model(name)
  gen = generation.Generator(model, config)
  primer = _primer(config, batch=3)
  args = dict(temperature=tf.constant(1.0), seed=tf.constant(5, tf.int64))
  out = gen.generate(primer, tf.constant(20), **args)
  events = out['events'].numpy()
  assert events.shape == (3, primer.shape[1] + 20)
  np.testing.assert_array_equal(events[:, :primer.shape[1]], primer)
  assert len({tuple(r) for r in events}) > 1, 'rows should differ'
  again = gen.generate(primer, tf.constant(20), **args)['events'].numpy()
  np.testing.assert_array_equal(events, again)
  other = gen.generate(primer, tf.constant(20), temperature=tf.constant(1.0),
                       seed=tf.constant(6, tf.int64))['events'].numpy()
  assert not np.array_equal(events, other)

  # prime + extend in pieces == one generate call (in model space).
  primed = gen.prime(primer)
  ev, state, ll = primed['events'], primed['state'], 0.
  for n in (7, 1, 12):
    step = gen.extend(ev, state, tf.constant(n), **args)
    ev, state, ll = step['events'], step['state'], ll + step['log_likelihood'].numpy()
  amount = primed['transpose_amount'].numpy()[:, None]
  ev = ev.numpy()
  if config.kind == configs.MELODY:
    ev = np.where(ev >= 0, ev - amount, ev)  # the primer here is within range
  np.testing.assert_array_equal(ev, events)
  np.testing.assert_allclose(ll, out['log_likelihood'].numpy(), rtol=1e-5)
  assert np.all(out['log_likelihood'].numpy() < 0)


def test_melody_primer_out_of_range_is_transposed_in_and_back():
  config, model = _model('basic_rnn')
  gen = generation.Generator(model, config)
  # Two octaves above the model's range, in D major.
  primer = np.array([[98, -2, 100, -2, 102, -1, 105, -2]], np.int64)
  primed = gen.prime(primer)
  amount = int(primed['transpose_amount'].numpy()[0])
  assert amount % 12 == 10 and amount < 0  # D -> C, and down into [48, 84)
  notes = primed['events'].numpy()[primed['events'].numpy() >= 0]
  assert notes.min() >= config.min_note and notes.max() < config.max_note
  out = gen.generate(primer, tf.constant(64), tf.constant(1.5),
                     tf.constant(0, tf.int64))['events'].numpy()
  np.testing.assert_array_equal(out[:, :8], primer)
  new_notes = out[:, 8:][out[:, 8:] >= 0]
  assert new_notes.size
  # Back in the primer's key and register: the model range shifted by -amount.
  assert new_notes.min() >= config.min_note - amount
  assert new_notes.max() < config.max_note - amount


@pytest.mark.parametrize('name', ['drum_kit', 'attention_rnn'])
def test_bad_arguments_fail_clearly(name):
  config, model = _model(name)
  gen = generation.Generator(model, config)
  ok = dict(primer=_primer(config), num_steps=tf.constant(4),
            temperature=tf.constant(1.0), seed=tf.constant(0, tf.int64))
  bad_event = 512 if config.kind == configs.DRUMS else 128
  cases = [
      (dict(primer=np.zeros([2, 0], np.int64)), 'primer must have at least one event'),
      (dict(primer=np.array([[0, bad_event]], np.int64)), f'must hold'),
      (dict(primer=np.array([[-3, 0]], np.int64)), 'must hold'),
      (dict(num_steps=tf.constant(0)), 'num_steps must be >= 1; got 0'),
      (dict(temperature=tf.constant(0.0)), 'temperature must be > 0; got 0'),
      (dict(temperature=tf.constant(float('nan'))), 'temperature must be > 0'),
  ]
  for override, message in cases:
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
      gen.generate(**{**ok, **override})
