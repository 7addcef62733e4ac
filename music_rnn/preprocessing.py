"""TFX Transform `preprocessing_fn`: raw drum/melody tf.Examples -> model inputs and labels.

The same function runs in Beam (Transform) and, through tft's TransformFeaturesLayer,
inside the exported SavedModel on parsed serving requests, so it accepts whatever shape
the raw schema gives a feature (VarLen SparseTensor, inferred dense [B, n], RaggedTensor)
and copes with a batch of one, one-step and empty sequences.
"""

from typing import Any, Dict, Optional

import tensorflow as tf

from music_rnn import configs
from music_rnn import encoding
from music_rnn import features


def _to_ragged(x) -> tf.RaggedTensor:
  """Any per-example list feature -> [B, None] RaggedTensor."""
  if isinstance(x, tf.RaggedTensor):
    while x.ragged_rank > 1:  # [B, None, None] -> [B, None]
      x = x.merge_dims(1, 2)
    if x.flat_values.shape.rank != 1:  # uniform inner dims: fold them into the row
      width = tf.cast(tf.reduce_prod(tf.shape(x.values)[1:]), x.row_splits.dtype)
      x = tf.RaggedTensor.from_row_splits(tf.reshape(x.values, [-1]), x.row_splits * width)
    return x
  if isinstance(x, tf.SparseTensor):
    if x.shape.rank == 1:  # [B] with gaps: one value per present example
      x = tf.sparse.expand_dims(x, 1)
    elif x.shape.rank != 2:
      x = tf.sparse.reshape(x, tf.stack([x.dense_shape[0], -1]))
    return tf.RaggedTensor.from_sparse(tf.sparse.reorder(x))
  x = tf.convert_to_tensor(x)
  if x.shape.rank == 1:
    x = x[:, tf.newaxis]
  elif x.shape.rank != 2:
    x = tf.reshape(x, tf.stack([tf.shape(x)[0], -1]))
  return tf.RaggedTensor.from_tensor(x)


def _scalar_per_example(x, default) -> tf.Tensor:
  """First value of a per-example feature as [B] (default where missing)."""
  return _to_ragged(x).to_tensor(default_value=default, shape=[None, 1])[:, 0]


def _config_name(custom_config: Optional[Dict[str, Any]]) -> str:
  if not custom_config or 'config_name' not in custom_config:
    raise ValueError("preprocessing_fn needs custom_config={'config_name': ...}; one of "
                     f'{sorted(configs.CONFIGS)}')
  return custom_config['config_name']


def preprocessing_fn(inputs: Dict[str, Any],
                     custom_config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """Encodes each example's events with its config's note-seq encoding.

  Outputs: INPUTS float32 VarLen ([length * input_size] per example, row-major steps),
  LABELS int64 VarLen ([length - 1]), LENGTH and TRANSPOSE_AMOUNT int64 scalars, and
  SOURCE_ID passed through as a bytes scalar if the raw schema has it.
  """
  config = configs.get_config(_config_name(custom_config))
  if config.kind == configs.DRUMS:
    pitches = _to_ragged(inputs[features.DRUM_PITCHES])
    counts = _to_ragged(inputs[features.DRUM_PITCH_COUNTS])
    lengths = tf.cast(counts.row_lengths(), tf.int64)
    events = encoding.drum_pitches_to_class_indices(pitches, counts)
  else:
    melody = _to_ragged(inputs[features.MELODY_EVENTS])
    lengths = tf.cast(melody.row_lengths(), tf.int64)
    events = melody.to_tensor(default_value=tf.cast(encoding.pad_value(config), melody.dtype))
  step_inputs, labels, transpose_amount = encoding.encode_batch(config, events)

  num_steps = tf.shape(step_inputs)[1]
  steps = tf.boolean_mask(step_inputs, tf.sequence_mask(lengths, num_steps))  # [sum(len), D]
  flat_inputs = tf.RaggedTensor.from_row_lengths(
      tf.reshape(steps, [-1]), lengths * config.input_size, validate=False)
  flat_labels = tf.RaggedTensor.from_tensor(labels, lengths=tf.maximum(lengths - 1, 0))
  outputs = {
      features.INPUTS: flat_inputs.to_sparse(),
      features.LABELS: flat_labels.to_sparse(),
      features.LENGTH: lengths,
      features.TRANSPOSE_AMOUNT: transpose_amount,
  }
  # Only when the schema has it: features.statistics_features() may leave it out, and
  # serving requests need not carry it.
  if features.SOURCE_ID in inputs:
    outputs[features.SOURCE_ID] = _scalar_per_example(inputs[features.SOURCE_ID], b'')
  return outputs
