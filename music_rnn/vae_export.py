"""Exports a trained MusicVAE as one self-contained, self-describing SavedModel.

The same contract as the event RNNs' export (music_rnn/export.py): TensorFlow alone
loads it, `model_config` describes it, `serving_default` and `evaluate` take raw
ExampleGen tf.Examples through the embedded Transform graph. What a VAE adds is its
latent space, as Magenta's TrainedModel offers it (encode, decode, sample, interpolate),
on 2-bar slices of events in the serving format (serving/README.md): drums the
MultiDrumOneHotEncoding class index 0..511, melodies -2 no event, -1 note off, MIDI
pitches 21..108.

Signatures (every random draw is a stateless op keyed by `seed`: same inputs, same seed,
same outputs):
  encode(events int64 [B, 32], seed int64) -> mu, sigma, z float32 [B, z_size]
      (z = mu + sigma * eps, eps ~ N(0, I));
  decode(z float32 [B, z_size], temperature float32, seed int64) -> events int64 [B, 32];
  sample(n int32, temperature, seed) -> events int64 [n, 32] (z ~ N(0, I));
  interpolate(events_a [1 or B, 32], events_b [1 or B, 32], num_steps int32, temperature,
      seed) -> events int64 [B, num_steps, 32]: the decoded slerp of the two encodings'
      means, endpoints included (Magenta's TrainedModel.interpolate);
  serving_default(examples tf.string [B]) -> mu, sigma float32 [B, z_size],
      probabilities float32 [B, 32, num_classes] (each step's distribution, teacher-forced,
      decoding from z = mu), labels int64 [B, 32] (the classes the Transform derived);
  evaluate(examples) -> per-example float32 [B] sums for the Evaluator (vae_eval_stats);
  model_config() -> config_json.
A bad request fails with one InvalidArgumentError naming the signature and the problem
(wrong length, out-of-range events, n < 1, num_steps < 2, temperature <= 0, z of the
wrong width, the request bounds of music_rnn/limits.py).
"""

import json
import os
import re
from typing import Any, Dict, List

import tensorflow as tf
import tensorflow_transform as tft

from music_rnn import configs
from music_rnn import export
from music_rnn import features
from music_rnn import limits
from music_rnn import vae_encoding
from music_rnn import vae_model

ENCODE_SIGNATURE = 'encode'
DECODE_SIGNATURE = 'decode'
SAMPLE_SIGNATURE = 'sample'
INTERPOLATE_SIGNATURE = 'interpolate'

# Rows of 32 events a request may ask for in all (limits.MAX_TOTAL_STEPS events).
_EVENTS_SPEC = tf.TensorSpec([None, None], tf.int64, name='events')
_TEMPERATURE_SPEC = tf.TensorSpec([], tf.float32, name='temperature')
_SEED_SPEC = tf.TensorSpec([], tf.int64, name='seed')
# Second half of the stateless seed of each draw that is not the decoder's own, so the
# streams never coincide with the decoder's (which uses the seed itself).
_ENCODE_STREAM = -1
_SAMPLE_STREAM = -2


# --- Checks: one clear InvalidArgumentError per bad request. -----------------------


def _assert(ok, message: str, values, name: str) -> tf.Operation:
  """Fails with `message` ('{}' filled from `values`) unless ok."""
  return tf.debugging.Assert(ok, [tf.strings.format(message, values, summarize=5)],
                             name=re.sub(r'[^A-Za-z0-9_]+', '_', name))


def _chain(*make_checks) -> List[tf.Operation]:
  """Runs check makers one after another (each under the previous ones), so only the
  first failing check reports: one error per request."""
  done: List[tf.Operation] = []
  for make in make_checks:
    with tf.control_dependencies(done):
      made = make()
    done += made if isinstance(made, list) else [made]
  return done


def _check_rows(fn: str, name: str, rows) -> tf.Operation:
  """rows >= 1 and rows x 32 events within limits.MAX_TOTAL_STEPS."""
  rows = tf.cast(rows, tf.int64)
  return _assert(
      (rows >= 1) & (rows * _steps_per_slice() <= limits.MAX_TOTAL_STEPS),
      f'{fn}: {name} must be in [1, {limits.MAX_TOTAL_STEPS // _steps_per_slice()}] '
      f'(limits.MAX_TOTAL_STEPS events of {_steps_per_slice()} steps); got {{}}', [rows],
      f'check_{name}')


def _steps_per_slice() -> int:
  return configs.VaeHParams().max_seq_len


def _check_events(fn: str, name: str, events, config, num_steps: int):
  """Shape [B >= 1, num_steps] within the bounds, then the event values (vae_encoding)."""
  return _chain(
      lambda: _assert(tf.shape(events)[1] == num_steps,
                      f'{fn}: {name} must have {num_steps} events per row (a 2-bar slice); '
                      'got shape {}', [tf.shape(events)], f'check_{name}_length'),
      lambda: _check_rows(fn, f'the rows of {name}', tf.shape(events)[0]),
      lambda: vae_encoding.check_events(fn if name == 'events' else f'{fn} ({name})',
                                        events, config))


def _check_temperature(fn: str, temperature) -> tf.Operation:
  return _assert(temperature > 0, f'{fn}: temperature must be > 0; got {{}}', [temperature],
                 'check_temperature')


def _check_z(fn: str, z, z_size: int):
  return _chain(
      lambda: _assert(tf.shape(z)[1] == z_size,
                      f'{fn}: z must have {z_size} columns (z_size); got shape {{}}',
                      [tf.shape(z)], 'check_z_width'),
      lambda: _check_rows(fn, 'the rows of z', tf.shape(z)[0]),
      lambda: _assert(tf.reduce_all(tf.math.is_finite(z)), f'{fn}: z must be finite', [],
                      'check_z_finite'))


def _check_raw_slices(fn: str, config, parsed: Dict[str, Any]) -> List[tf.Operation]:
  """Raw request features: the RNNs' event checks (export.check_raw_events), then what a
  VAE adds: every example is one slice of 32 steps, melody pitches in the model's range."""
  steps = config.hparams.max_seq_len
  per_step = (features.MELODY_EVENTS if config.kind == configs.MELODY
              else features.DRUM_PITCH_COUNTS)
  checks = export.check_raw_events(fn, config.kind, parsed)
  with tf.control_dependencies(checks):
    lengths = export.ragged_rows(parsed[per_step]).row_lengths()
    wrong = tf.boolean_mask(lengths, tf.not_equal(lengths, steps))
    checks.append(_assert(tf.size(wrong) == 0,
                          f'{fn}: {per_step} must have {steps} steps per example (a 2-bar '
                          'slice); got {}', [wrong], f'check_{per_step}_steps'))
  if config.kind == configs.MELODY:
    low, high = config.converter.min_pitch, config.converter.max_pitch
    with tf.control_dependencies(checks):
      events = export.ragged_rows(parsed[per_step]).flat_values
      bad = tf.boolean_mask(events, (events >= 0) & ((events < low) | (events > high)))
      checks.append(_assert(tf.size(bad) == 0,
                            f'{fn}: {per_step} pitches must be in [{low}, {high}] (the '
                            'range of the model); got {}', [bad], f'check_{per_step}_pitches'))
  return checks


# --- Latent space helpers. --------------------------------------------------------


def _seed_pair(seed, stream: int) -> tf.Tensor:
  return tf.stack([seed, tf.constant(stream, tf.int64)])


def slerp_path(mu_a: tf.Tensor, mu_b: tf.Tensor, num_steps) -> tf.Tensor:
  """[B, Z] x2 -> [B, num_steps, Z]: vae_model.slerp at t = linspace(0, 1, num_steps),
  as Magenta's TrainedModel.interpolate (endpoints included)."""
  t = tf.linspace(0.0, 1.0, num_steps)  # [S]
  return vae_model.slerp(mu_a[:, tf.newaxis], mu_b[:, tf.newaxis], t[tf.newaxis, :, tf.newaxis])


def _broadcast_pair(fn: str, a, b):
  """events_a, events_b with [1 or B] rows -> both [B] rows (one error if B differs)."""
  rows_a, rows_b = tf.shape(a)[0], tf.shape(b)[0]
  ok = (rows_a == rows_b) | (rows_a == 1) | (rows_b == 1)
  check = _assert(ok, f'{fn}: events_a and events_b must have the same number of rows, '
                  'or one of them 1; got {} and {}', [rows_a, rows_b], 'check_rows_match')
  with tf.control_dependencies([check]):
    rows = tf.maximum(rows_a, rows_b)
    shape = tf.stack([rows, tf.shape(a)[1]])
    return tf.broadcast_to(a, shape), tf.broadcast_to(b, shape)


class _Untracked:
  """Attributes a tf.Module does not track (not a Trackable, not a list or dict)."""

  def __init__(self, **values):
    self.__dict__.update(values)


class VaeServingModule(tf.Module):
  """What gets saved: the model's variables, the Transform layer, the signatures."""

  def __init__(self, model: vae_model.MusicVae, config: configs.VaeConfig,
               hparams: configs.VaeHParams, tf_transform_output: tft.TFTransformOutput):
    super().__init__(name='music_vae')
    # Only variables are tracked (not the Keras object graph, not optimizer slots).
    self.model_variables = list(model.trainable_variables) + list(model.non_trainable_variables)
    self.tft_layer = tf_transform_output.transform_features_layer()
    self.config_json = config.to_json(hparams)
    # The Keras model object graph is not tracked (only its variables, as in
    # export.ServingModule): a plain holder keeps it out of the SavedModel.
    self._held = _Untracked(
        model=model, spec=export.serving_feature_spec(tf_transform_output.raw_feature_spec()))
    self._config = config
    self._steps = hparams.max_seq_len
    self._z_size = hparams.z_size
    # Graph code throughout (explicit tf.while_loops, Python loops over layers only): no
    # AutoGraph conversion, which also keeps tracing fast.
    function = lambda fn, *specs: tf.function(fn, input_signature=list(specs),  # noqa: E731
                                              autograph=False)
    self.serve = function(self._serve, _EXAMPLES_SPEC)
    self.evaluate = function(self._evaluate, _EXAMPLES_SPEC)
    self.model_config = function(self._model_config)
    self.encode = function(self._encode, _EVENTS_SPEC, _SEED_SPEC)
    self.decode = function(self._decode, tf.TensorSpec([None, None], tf.float32, name='z'),
                           _TEMPERATURE_SPEC, _SEED_SPEC)
    self.sample = function(self._sample, tf.TensorSpec([], tf.int32, name='n'),
                           _TEMPERATURE_SPEC, _SEED_SPEC)
    self.interpolate = function(
        self._interpolate, tf.TensorSpec([None, None], tf.int64, name='events_a'),
        tf.TensorSpec([None, None], tf.int64, name='events_b'),
        tf.TensorSpec([], tf.int32, name='num_steps'), _TEMPERATURE_SPEC, _SEED_SPEC)

  # --- Raw tf.Examples through the Transform layer.

  def _transformed(self, fn: str, examples):
    """Parsed (and checked) raw features -> (labels int32 [B, 32], lengths int32 [B],
    the transformed features)."""
    parsed = tf.io.parse_example(examples, self._held.spec)
    with tf.control_dependencies(_check_raw_slices(fn, self._config, parsed)):
      parsed = tf.nest.map_structure(tf.identity, parsed, expand_composites=True)
    transformed = self.tft_layer(parsed)
    labels = export.to_dense(transformed[features.LABELS])
    labels = tf.cast(tf.reshape(labels, [tf.shape(labels)[0], self._steps]), tf.int32)
    lengths = tf.cast(tf.reshape(export.to_dense(transformed[features.LENGTH]), [-1]),
                      tf.int32)
    return labels, lengths, transformed

  def _serve(self, examples):
    labels, lengths, _ = self._transformed(export.SERVING_SIGNATURE, examples)
    mu, sigma = self._held.model.encode(labels, lengths)
    logits = self._held.model.teacher_forced_logits(labels, lengths, mu)
    return {'mu': mu, 'sigma': sigma,
            'probabilities': tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1),
            'labels': tf.cast(labels, tf.int64)}

  def _evaluate(self, examples):
    """Per-example float32 [B] sums over the real steps that TFMA adds up into the
    Evaluator's metrics (music_rnn/evaluation.py): MusicVae.example_stats (model.STAT_NAMES
    teacher-forced from z = mu, 'sampled_correct' greedy from mu, 'kl' in nats) and
    'unigram_xent', the same steps under the training split's label frequencies."""
    labels, lengths, transformed = self._transformed(export.EVALUATE_SIGNATURE, examples)
    stats = self._held.model.example_stats(labels, lengths)
    unigram = export.to_dense(transformed[features.UNIGRAM_XENT])
    stats[features.UNIGRAM_XENT] = tf.cast(tf.reshape(unigram, [-1]), tf.float32)
    return stats

  def _model_config(self):
    return {'config_json': tf.constant(self.config_json)}

  # --- The latent space, on events in the serving format.

  def _encode_events(self, events):
    labels = tf.cast(vae_encoding.events_to_labels(events, self._config), tf.int32)
    lengths = tf.fill([tf.shape(events)[0]], self._steps)
    return self._held.model.encode(labels, lengths)

  def _decode_z(self, z, temperature, seed):
    labels = self._held.model.decode(z, temperature, seed, num_steps=self._steps)
    return tf.cast(vae_encoding.labels_to_events(labels, self._config), tf.int64)

  def _encode(self, events, seed):
    checks = _check_events(ENCODE_SIGNATURE, 'events', events, self._config, self._steps)
    with tf.control_dependencies(checks):
      mu, sigma = self._encode_events(events)
    eps = tf.random.stateless_normal(tf.shape(mu), _seed_pair(seed, _ENCODE_STREAM))
    return {'mu': mu, 'sigma': sigma, 'z': mu + sigma * eps}

  def _decode(self, z, temperature, seed):
    checks = _chain(lambda: _check_z(DECODE_SIGNATURE, z, self._z_size),
                    lambda: _check_temperature(DECODE_SIGNATURE, temperature))
    with tf.control_dependencies(checks):
      return {'events': self._decode_z(z, temperature, seed)}

  def _sample(self, n, temperature, seed):
    checks = _chain(lambda: _check_rows(SAMPLE_SIGNATURE, 'n', n),
                    lambda: _check_temperature(SAMPLE_SIGNATURE, temperature))
    with tf.control_dependencies(checks):
      z = tf.random.stateless_normal(tf.stack([n, self._z_size]),
                                     _seed_pair(seed, _SAMPLE_STREAM))
      return {'events': self._decode_z(z, temperature, seed)}

  def _interpolate(self, events_a, events_b, num_steps, temperature, seed):
    fn = INTERPOLATE_SIGNATURE
    checks = _chain(
        lambda: _check_events(fn, 'events_a', events_a, self._config, self._steps),
        lambda: _check_events(fn, 'events_b', events_b, self._config, self._steps),
        lambda: _assert(num_steps >= 2, f'{fn}: num_steps must be >= 2 (the two endpoints '
                        'included); got {}', [num_steps], 'check_num_steps'))
    with tf.control_dependencies(checks):
      events_a, events_b = _broadcast_pair(fn, events_a, events_b)
      rows = tf.shape(events_a)[0]
    checks = _chain(
        lambda: _check_rows(fn, 'rows x num_steps', tf.cast(rows, tf.int64) *
                            tf.cast(num_steps, tf.int64)),
        lambda: _check_temperature(fn, temperature))
    with tf.control_dependencies(checks):
      mu_a, _ = self._encode_events(events_a)
      mu_b, _ = self._encode_events(events_b)
      z = tf.reshape(slerp_path(mu_a, mu_b, num_steps), [-1, self._z_size])
      events = self._decode_z(z, temperature, seed)
      return {'events': tf.reshape(events, tf.stack([rows, num_steps, self._steps]))}


_EXAMPLES_SPEC = tf.TensorSpec([None], tf.string, name='examples')


def export_vae_model(model: vae_model.MusicVae, config: configs.VaeConfig,
                     hparams: configs.VaeHParams, tf_transform_output: tft.TFTransformOutput,
                     export_dir: str) -> str:
  """Saves the SavedModel (and assets.extra/model_config.json, variables.json, as
  export.export_serving_model) to `export_dir`."""
  module = VaeServingModule(model, config, hparams, tf_transform_output)
  tf.saved_model.save(module, export_dir, signatures={
      export.SERVING_SIGNATURE: module.serve.get_concrete_function(),
      export.EVALUATE_SIGNATURE: module.evaluate.get_concrete_function(),
      export.CONFIG_SIGNATURE: module.model_config.get_concrete_function(),
      ENCODE_SIGNATURE: module.encode.get_concrete_function(),
      DECODE_SIGNATURE: module.decode.get_concrete_function(),
      SAMPLE_SIGNATURE: module.sample.get_concrete_function(),
      INTERPOLATE_SIGNATURE: module.interpolate.get_concrete_function(),
  }, options=tf.saved_model.SaveOptions(experimental_custom_gradients=False))
  tf.io.gfile.makedirs(os.path.join(export_dir, 'assets.extra'))
  with tf.io.gfile.GFile(os.path.join(export_dir, export.CONFIG_ASSET), 'w') as f:
    f.write(module.config_json)
  with tf.io.gfile.GFile(os.path.join(export_dir, export.VARIABLES_ASSET), 'w') as f:
    f.write(json.dumps([{'path': v.path, 'shape': list(v.shape)}
                        for v in module.model_variables]))
  return export_dir
