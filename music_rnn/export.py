"""Exports the trained model as one self-contained, self-describing SavedModel.

Signatures:
  serving_default(examples: tf.string [None]) -> {
      'probabilities': float32 [batch, max_length, num_classes],  softmax per step
      'lengths': int64 [batch], 'transpose_amount': int64 [batch]}
    Raw ExampleGen tf.Examples in (no labels needed: the embedded Transform graph
    encodes the events); probabilities[b, t] is the distribution of event t + 1
    given events 0..t, for t < lengths[b] (later steps are padding). Events out of
    range or drum counts that do not match the pitches fail with one
    InvalidArgumentError naming the feature (check_raw_events), here and in evaluate.
  model_config() -> {'config_json': tf.string scalar}: ModelConfig.to_json(hparams).
  evaluate(examples: tf.string [None]) -> per-example float32 [batch] sums over the real
    steps ('xent', 'steps', 'correct', 'events', ...: model.STAT_NAMES), which the
    Evaluator (TFMA) adds up into loss, perplexity and the accuracies, and
    'unigram_xent': the same steps' cross entropy under the training split's label
    frequencies (Transform's analyzer), the baseline the model's loss must beat.
  generate(primer, num_steps, temperature, seed) -> {'events', 'log_likelihood'},
  prime(primer) and extend(events, state, ...): sampling in the graph, see
    music_rnn/generation.py and serving/README.md.
The JSON is also written to <export>/assets.extra/model_config.json. Loading needs
only TensorFlow: tf.saved_model.load(path).signatures['serving_default'](examples=...).
"""

import json
import os
from typing import Any, Dict, List

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from music_rnn import compact
from music_rnn import configs
from music_rnn import events as events_lib
from music_rnn import features
from music_rnn import generation
from music_rnn import model as model_lib
from music_rnn import preprocessing

SERVING_SIGNATURE = 'serving_default'
CONFIG_SIGNATURE = 'model_config'
EVALUATE_SIGNATURE = 'evaluate'
GENERATE_SIGNATURE = 'generate'
PRIME_SIGNATURE = 'prime'
EXTEND_SIGNATURE = 'extend'
CONFIG_ASSET = os.path.join('assets.extra', 'model_config.json')
# [{'path', 'shape'}] of ServingModule.model_variables, in order: warm start matches by path.
VARIABLES_ASSET = os.path.join('assets.extra', 'variables.json')


def serving_feature_spec(raw_feature_spec: Dict[str, Any]) -> Dict[str, Any]:
  """The raw spec, with defaults for fixed-size features so requests may omit them.

  A caller that only has events (a primer to continue) need not invent a source
  id, a tempo or a start step; missing ones parse as zeros / empty strings.
  """
  spec = {}
  for name, feature in raw_feature_spec.items():
    if isinstance(feature, tf.io.FixedLenFeature) and feature.default_value is None:
      size = int(np.prod(feature.shape)) if feature.shape else 1
      zero = b'' if feature.dtype == tf.string else 0
      default = zero if not feature.shape else [zero] * size
      feature = tf.io.FixedLenFeature(feature.shape, feature.dtype, default_value=default)
    spec[name] = feature
  return spec


def to_dense(x) -> tf.Tensor:
  """A parsed/transformed feature (sparse, ragged or dense) as a dense tensor."""
  if isinstance(x, tf.SparseTensor):
    return tf.sparse.to_dense(x)
  if isinstance(x, tf.RaggedTensor):
    return x.to_tensor()
  return x


def _per_example(x, dtype=tf.int64) -> tf.Tensor:
  """A transformed scalar feature as [batch]."""
  x = to_dense(x)
  return tf.cast(tf.reshape(x, [tf.shape(x)[0]]), dtype)


def _fit_width(x: tf.Tensor, width) -> tf.Tensor:
  """x [B, W, ...] cropped or zero-padded to [B, width, ...]."""
  x = x[:, :width]
  pad = [[0, 0], [0, width - tf.shape(x)[1]]] + [[0, 0]] * (x.shape.rank - 2)
  return tf.pad(x, pad)


def ragged_rows(x) -> tf.RaggedTensor:
  """A parsed per-example list feature (VarLen sparse, ragged or dense) as [B, None],
  by the converter the Transform graph itself uses."""
  return preprocessing._to_ragged(x)  # pylint: disable=protected-access


def _check(fn: str, feature: str, ok: tf.Tensor, what: str, values,
           got: str = '{}') -> tf.Operation:
  """Fails with '<fn>: <feature> must <what>; got <got formatted with values>' unless ok."""
  return tf.debugging.Assert(ok, [tf.strings.format(
      f'{fn}: {feature} must {what}; got {got}', values, summarize=5)],
                             name=f'check_{feature}')


def _out_of_range(values: tf.Tensor, low: int, high: int) -> tf.Tensor:
  """The values outside [low, high]."""
  return tf.boolean_mask(values, (values < low) | (values > high))


def check_raw_events(fn: str, kind: str, parsed: Dict[str, Any]) -> List[tf.Operation]:
  """Raw event features of a request, checked before the Transform graph encodes them
  (which would quietly turn bad values into wrong inputs): one InvalidArgumentError
  naming the feature and the offending values (the checks run one after another).

  Melody: events in [-2, 127]. Drums: pitches in [0, 127], per-step counts >= 0 and,
  per example, adding up to the number of pitches.
  """
  top = events_lib.NUM_MIDI_PITCHES - 1
  if kind == configs.MELODY:
    bad = _out_of_range(ragged_rows(parsed[features.MELODY_EVENTS]).flat_values,
                        configs.MELODY_NO_EVENT, top)
    return [_check(fn, features.MELODY_EVENTS, tf.size(bad) == 0,
                   f'hold -2 (no event), -1 (note off) or MIDI pitches 0..{top}', [bad])]
  pitches = ragged_rows(parsed[features.DRUM_PITCHES])
  counts = ragged_rows(parsed[features.DRUM_PITCH_COUNTS])
  bad = _out_of_range(pitches.flat_values, 0, top)
  checks = [_check(fn, features.DRUM_PITCHES, tf.size(bad) == 0,
                   f'hold MIDI pitches 0..{top}', [bad])]
  with tf.control_dependencies(checks):
    negative = tf.boolean_mask(counts.flat_values, counts.flat_values < 0)
    checks.append(_check(fn, features.DRUM_PITCH_COUNTS, tf.size(negative) == 0,
                         'be >= 0', [negative]))
  with tf.control_dependencies(checks):
    batch = counts.nrows()
    added = tf.math.unsorted_segment_sum(counts.flat_values, counts.value_rowids(), batch)
    given = tf.math.unsorted_segment_sum(tf.ones_like(pitches.flat_values),
                                         pitches.value_rowids(), batch)
    first = tf.where(tf.not_equal(added, given))[:1, 0]  # the first inconsistent example
    checks.append(_check(
        fn, features.DRUM_PITCH_COUNTS, tf.size(first) == 0,
        f'add up to the number of {features.DRUM_PITCHES} of the example',
        [tf.reduce_sum(tf.gather(x, first)) for x in (added, given)] + [
            tf.reduce_sum(first)], got='{} for {} pitches in example {}'))
  return checks


def model_inputs(transformed: Dict[str, Any], num_blocks: int, all_steps: bool = False):
  """Transform's compact features of a batch -> (model inputs, labels int32 [B, S]).

  The one place that turns transformed examples into what the model takes, for
  training, evaluation and serving alike. Features may be sparse, ragged or dense, with
  a leading batch dimension. Inputs: {HOT int32 [B, S, H], FLAGS int64 [B, S],
  LENGTHS int32 [B]}, zero-padded after each sequence's steps. By default the steps the
  labels are predicted from: S = max(length) - 1 (at least 1), lengths = length - 1;
  `all_steps`: every step, S = max(length) (at least 1), lengths = length (serving).
  """
  length = _per_example(transformed[features.LENGTH], tf.int32)
  max_length = tf.reduce_max(tf.concat([length, [0]], 0))
  lengths = length if all_steps else tf.maximum(length - 1, 0)
  steps = tf.maximum(max_length if all_steps else max_length - 1, 1)
  hot = tf.cast(to_dense(transformed[features.HOT]), tf.int32)
  batch = tf.shape(hot)[0]
  hot = tf.reshape(_fit_width(hot, steps * num_blocks), [batch, steps, num_blocks])
  flags = _fit_width(tf.cast(to_dense(transformed[features.FLAGS]), tf.int64), steps)
  labels = _fit_width(tf.cast(to_dense(transformed[features.LABELS]), tf.int32), steps)
  x = {model_lib.HOT: hot, model_lib.FLAGS: flags, model_lib.LENGTHS: lengths}
  return x, labels


class ServingModule(tf.Module):
  """What gets saved: the model's variables, the Transform layer, two functions."""

  def __init__(self, model: model_lib.EventSequenceRnn, config: configs.ModelConfig,
               hparams: configs.HParams, tf_transform_output: tft.TFTransformOutput,
               jit_compile: bool = True):
    super().__init__(name='music_rnn')
    # Only variables are tracked (not the Keras object graph, not optimizer slots).
    self.model_variables = list(model.trainable_variables) + list(model.non_trainable_variables)
    self.tft_layer = tf_transform_output.transform_features_layer()
    self.generator = generation.Generator(model, config, jit_compile=jit_compile)
    self.config_json = config.to_json(hparams)
    spec = serving_feature_spec(tf_transform_output.raw_feature_spec())
    num_blocks = compact.input_layout(config).num_blocks
    tft_layer = self.tft_layer
    config_json = self.config_json
    no_event_label = config.no_event_label

    def parse(fn, examples):
      """Parsed raw features, their events checked (check_raw_events) first."""
      parsed = tf.io.parse_example(examples, spec)
      with tf.control_dependencies(check_raw_events(fn, config.kind, parsed)):
        return tf.nest.map_structure(tf.identity, parsed, expand_composites=True)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='examples')])
    def serve(examples):
      transformed = tft_layer(parse(SERVING_SIGNATURE, examples))
      x, _ = model_inputs(transformed, num_blocks, all_steps=True)
      logits = model(x, training=False)
      return {
          'probabilities': tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1),
          'lengths': tf.cast(x[model_lib.LENGTHS], tf.int64),
          'transpose_amount': _per_example(transformed[features.TRANSPOSE_AMOUNT]),
      }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='examples')])
    def evaluate(examples):
      """Per-example sums (model_lib.STAT_NAMES) on the labels Transform derives from
      the events, and their unigram baseline: TFMA adds them up into the Trainer's
      metrics (music_rnn/evaluation)."""
      transformed = tft_layer(parse(EVALUATE_SIGNATURE, examples))
      x, labels = model_inputs(transformed, num_blocks)
      logits = model(x, training=False)
      mask = model_lib.sequence_mask(x[model_lib.LENGTHS], tf.shape(labels)[1])
      stats = model_lib.example_stats(labels, logits, mask, no_event_label)
      stats[features.UNIGRAM_XENT] = _per_example(transformed[features.UNIGRAM_XENT], tf.float32)
      return stats

    @tf.function(input_signature=[])
    def model_config():
      return {'config_json': tf.constant(config_json)}

    self.serve = serve
    self.evaluate = evaluate
    self.model_config = model_config


def export_serving_model(model: model_lib.EventSequenceRnn, config: configs.ModelConfig,
                         hparams: configs.HParams, tf_transform_output: tft.TFTransformOutput,
                         export_dir: str, jit_compile: bool = True) -> str:
  """Saves the SavedModel (and assets.extra/model_config.json) to `export_dir`.

  `jit_compile`: the generation signatures' sampling loop is XLA-compiled.
  """
  module = ServingModule(model, config, hparams, tf_transform_output, jit_compile)
  tf.saved_model.save(module, export_dir, signatures={
      SERVING_SIGNATURE: module.serve.get_concrete_function(),
      CONFIG_SIGNATURE: module.model_config.get_concrete_function(),
      EVALUATE_SIGNATURE: module.evaluate.get_concrete_function(),
      GENERATE_SIGNATURE: module.generator.generate.get_concrete_function(),
      PRIME_SIGNATURE: module.generator.prime.get_concrete_function(),
      EXTEND_SIGNATURE: module.generator.extend.get_concrete_function(),
  }, options=tf.saved_model.SaveOptions(
      # The train step's hand-written layer gradient is not needed to serve, and tracing
      # it at save time costs seconds per export.
      experimental_custom_gradients=False))
  tf.io.gfile.makedirs(os.path.join(export_dir, 'assets.extra'))
  with tf.io.gfile.GFile(os.path.join(export_dir, CONFIG_ASSET), 'w') as f:
    f.write(module.config_json)
  with tf.io.gfile.GFile(os.path.join(export_dir, VARIABLES_ASSET), 'w') as f:
    f.write(json.dumps([{'path': v.path, 'shape': list(v.shape)}
                        for v in module.model_variables]))
  return export_dir
