"""Exports the trained model as one self-contained, self-describing SavedModel.

Signatures:
  serving_default(examples: tf.string [None]) -> {
      'probabilities': float32 [batch, max_length, num_classes],  softmax per step
      'lengths': int64 [batch], 'transpose_amount': int64 [batch]}
    Raw ExampleGen tf.Examples in (no labels needed: the embedded Transform graph
    encodes the events); probabilities[b, t] is the distribution of event t + 1
    given events 0..t, for t < lengths[b] (later steps are padding).
  model_config() -> {'config_json': tf.string scalar}: ModelConfig.to_json(hparams).
  evaluate(examples: tf.string [None]) -> per-example float32 [batch] sums over the real
    steps ('xent', 'steps', 'correct', 'events', ...: model.STAT_NAMES), which the
    Evaluator (TFMA) adds up into loss, perplexity and the accuracies.
  generate(primer, num_steps, temperature, seed) -> {'events', 'log_likelihood'},
  prime(primer) and extend(events, state, ...): sampling in the graph, see
    music_rnn/generation.py and serving/README.md.
The JSON is also written to <export>/assets.extra/model_config.json. Loading needs
only TensorFlow: tf.saved_model.load(path).signatures['serving_default'](examples=...).
"""

import json
import os
from typing import Any, Dict

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from music_rnn import configs
from music_rnn import features
from music_rnn import generation
from music_rnn import model as model_lib

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


def _per_example(x) -> tf.Tensor:
  """A transformed scalar feature as int64 [batch]."""
  x = to_dense(x)
  return tf.cast(tf.reshape(x, [tf.shape(x)[0]]), tf.int64)


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
    input_size = config.input_size
    tft_layer = self.tft_layer
    config_json = self.config_json
    no_event_label = config.no_event_label

    def transformed_batch(examples):
      """Raw serialized examples -> (transformed features, inputs [B, T, D], lengths)."""
      raw = tf.io.parse_example(examples, spec)
      transformed = tft_layer(raw)
      lengths = _per_example(transformed[features.LENGTH])
      flat = tf.cast(to_dense(transformed[features.INPUTS]), tf.float32)  # [B, max_len * D]
      inputs = tf.reshape(flat, [tf.shape(flat)[0], -1, input_size])
      # At least one step, so a batch of empty sequences still runs.
      inputs = tf.pad(inputs, [[0, 0], [0, tf.maximum(1 - tf.shape(inputs)[1], 0)], [0, 0]])
      return transformed, inputs, lengths

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='examples')])
    def serve(examples):
      transformed, inputs, lengths = transformed_batch(examples)
      logits = model({model_lib.INPUTS: inputs, model_lib.LENGTHS: lengths}, training=False)
      return {
          'probabilities': tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1),
          'lengths': lengths,
          'transpose_amount': _per_example(transformed[features.TRANSPOSE_AMOUNT]),
      }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name='examples')])
    def evaluate(examples):
      """Per-example sums (model_lib.STAT_NAMES) on the labels Transform derives from
      the events: TFMA adds them up into the Trainer's metrics (music_rnn/evaluation)."""
      transformed, inputs, lengths = transformed_batch(examples)
      labels = tf.cast(to_dense(transformed[features.LABELS]), tf.int32)  # [B, max_len - 1]
      labels = tf.pad(labels, [[0, 0], [0, tf.maximum(1 - tf.shape(labels)[1], 0)]])
      steps = tf.shape(labels)[1]
      num_labels = tf.maximum(lengths - 1, 0)
      logits = model({model_lib.INPUTS: inputs[:, :steps], model_lib.LENGTHS: num_labels},
                     training=False)
      mask = model_lib.sequence_mask(num_labels, steps)
      return model_lib.example_stats(labels, logits, mask, no_event_label)

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
  })
  tf.io.gfile.makedirs(os.path.join(export_dir, 'assets.extra'))
  with tf.io.gfile.GFile(os.path.join(export_dir, CONFIG_ASSET), 'w') as f:
    f.write(module.config_json)
  with tf.io.gfile.GFile(os.path.join(export_dir, VARIABLES_ASSET), 'w') as f:
    f.write(json.dumps([{'path': v.path, 'shape': list(v.shape)}
                        for v in module.model_variables]))
  return export_dir
