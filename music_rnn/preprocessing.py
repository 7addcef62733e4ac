"""TFX Transform `preprocessing_fn`: raw drum/melody tf.Examples -> model inputs and labels.

Event RNNs get note-seq's encoding in compact form (below); MusicVAEs a label per step
of their fixed-length slice (encode_vae_features, vae_encoding's classes). Both get the
same unigram baseline.

The same function runs in Beam (Transform) and, through tft's TransformFeaturesLayer,
inside the exported SavedModel on parsed serving requests, so it accepts whatever shape
the raw schema gives a feature (VarLen SparseTensor, inferred dense [B, n], RaggedTensor)
and copes with a batch of one, one-step and empty sequences.

Input rows are written in compact form (compact.py): a drum example shrinks from
~900 kB of floats to ~1.6 kB (benchmarks/transformed_size.py). The unigram baseline is
a full-pass analyzer; TFX's Transform analyzes the train split only (its default
splits_config), so eval examples are scored against train label frequencies.
"""

from typing import Any, Dict, Optional

import tensorflow as tf
import tensorflow_transform as tft

from music_rnn import compact
from music_rnn import configs
from music_rnn import encoding
from music_rnn import features
from music_rnn import vae_encoding


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


def _events(config: configs.ModelConfig, inputs: Dict[str, Any]):
  """Raw features -> (events [B, T] padded with pad_value, lengths [B] int64)."""
  if config.kind == configs.DRUMS:
    pitches = _to_ragged(inputs[features.DRUM_PITCHES])
    counts = _to_ragged(inputs[features.DRUM_PITCH_COUNTS])
    return (encoding.drum_pitches_to_class_indices(pitches, counts),
            tf.cast(counts.row_lengths(), tf.int64))
  melody = _to_ragged(inputs[features.MELODY_EVENTS])
  events = melody.to_tensor(default_value=tf.cast(encoding.pad_value(config), melody.dtype))
  return events, tf.cast(melody.row_lengths(), tf.int64)


def _unigram_xent(labels: tf.SparseTensor, num_classes: int) -> tf.Tensor:
  """Per example: sum over its labels of -log p(label), p the add-one-smoothed label
  frequencies of the analyzed (train) data. A full-pass analyzer, so the table is a
  constant of the transform graph and serving requests get the same baseline."""
  labels = tf.RaggedTensor.from_sparse(labels)
  row_ids = tf.cast(labels.value_rowids(), tf.int64)
  batch = tf.cast(labels.nrows(), tf.int64)
  # Per-example label counts [B, C] (one scatter, no [B, T, C] one-hot). Labels outside
  # [0, C) (only from malformed raw events) go to a spare column that is dropped.
  valid = (labels.values >= 0) & (labels.values < num_classes)
  column = tf.where(valid, labels.values, num_classes)
  counts = tf.scatter_nd(tf.stack([row_ids, column], 1), tf.ones_like(column),
                         tf.stack([batch, num_classes + 1]))[:, :num_classes]
  totals = tft.sum(counts, reduce_instance_dims=False)  # [C] over the whole dataset
  smoothed = tf.cast(totals, tf.float64) + 1.
  log_p = tf.math.log(smoothed) - tf.math.log(tf.reduce_sum(smoothed))
  per_label = -tf.gather(log_p, tf.clip_by_value(labels.values, 0, num_classes - 1))
  return tf.cast(tf.math.unsorted_segment_sum(per_label, row_ids, batch), tf.float32)


def encode_features(inputs: Dict[str, Any], config_name: str) -> Dict[str, Any]:
  """preprocessing_fn's instance-level part (everything but UNIGRAM_XENT): plain TF, so
  it also runs eagerly outside tft.

  Outputs (features.py): HOT int64 VarLen ([length * H], row-major), FLAGS int64 VarLen
  ([length]), LABELS int64 VarLen ([length - 1]), LENGTH and TRANSPOSE_AMOUNT int64
  scalars, and SOURCE_ID passed through as a bytes scalar if the raw schema has it.
  compact.expand_inputs(hot, flags) gives encode_batch's rows.
  """
  config = configs.get_config(config_name)
  events, lengths = _events(config, inputs)
  step_inputs, labels, transpose_amount = encoding.encode_batch(config, events)
  hot, flags = compact.compact_batch(config, step_inputs)  # [B, T, H], [B, T]

  num_blocks = compact.input_layout(config).num_blocks
  mask = tf.sequence_mask(lengths, tf.shape(flags)[1])
  flat_hot = tf.RaggedTensor.from_row_lengths(
      tf.reshape(tf.boolean_mask(hot, mask), [-1]), lengths * num_blocks, validate=False)
  flat_flags = tf.RaggedTensor.from_row_lengths(tf.boolean_mask(flags, mask), lengths,
                                                validate=False)
  flat_labels = tf.RaggedTensor.from_tensor(labels, lengths=tf.maximum(lengths - 1, 0))
  outputs = {
      features.HOT: flat_hot.to_sparse(),
      features.FLAGS: flat_flags.to_sparse(),
      features.LABELS: flat_labels.to_sparse(),
      features.LENGTH: lengths,
      features.TRANSPOSE_AMOUNT: transpose_amount,
  }
  # Only when the schema has it: features.statistics_features() may leave it out, and
  # serving requests need not carry it.
  if features.SOURCE_ID in inputs:
    outputs[features.SOURCE_ID] = _scalar_per_example(inputs[features.SOURCE_ID], b'')
  return outputs


def encode_vae_features(inputs: Dict[str, Any], config_name: str) -> Dict[str, Any]:
  """The MusicVAE configs' instance-level part: LABELS int64 [B, max_seq_len] (dense: a
  FixedLen feature), the class of every step (vae_encoding.events_to_labels of the
  serving events: drum class index, or melody 0 no-event, 1 note-off, 2 + pitch - min);
  LENGTH int64 [B], the real steps (a slice has all of them); SOURCE_ID as for the RNNs.

  Rows longer than max_seq_len are cropped and shorter ones padded with the no-event
  label (their LENGTH says so); the exported signatures reject both before this.
  """
  config = configs.get_config(config_name)
  events, lengths = _events(config, inputs)
  num_steps = config.hparams.max_seq_len
  events = _fit_steps(events, num_steps, encoding.pad_value(config))
  labels = tf.cast(vae_encoding.events_to_labels(events, config), tf.int64)
  outputs = {
      features.LABELS: tf.ensure_shape(labels, [None, num_steps]),
      features.LENGTH: tf.minimum(lengths, num_steps),
  }
  if features.SOURCE_ID in inputs:
    outputs[features.SOURCE_ID] = _scalar_per_example(inputs[features.SOURCE_ID], b'')
  return outputs


def _fit_steps(events: tf.Tensor, num_steps: int, pad) -> tf.Tensor:
  """[B, T] events cropped or padded (with `pad`) to [B, num_steps]."""
  events = events[:, :num_steps]
  missing = num_steps - tf.shape(events)[1]
  events = tf.pad(events, [[0, 0], [0, missing]], constant_values=tf.cast(pad, events.dtype))
  return tf.reshape(events, [-1, num_steps])


def _real_labels(labels: tf.Tensor, lengths: tf.Tensor) -> tf.SparseTensor:
  """Dense [B, T] labels -> the real steps' labels, sparse (what _unigram_xent counts)."""
  return tf.RaggedTensor.from_tensor(labels, lengths=lengths).to_sparse()


def preprocessing_fn(inputs: Dict[str, Any],
                     custom_config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """Encodes each example's events for its config (event RNNs: the note-seq encoding,
  compactly, encode_features; MusicVAEs: a label per step, encode_vae_features), plus
  UNIGRAM_XENT float32 scalar: the example's loss under the analyzed data's smoothed
  label frequencies (the same full-pass analyzer for both families)."""
  config = configs.get_config(_config_name(custom_config))
  if configs.is_vae(config):
    outputs = encode_vae_features(inputs, config.name)
    labels = _real_labels(outputs[features.LABELS], outputs[features.LENGTH])
  else:
    outputs = encode_features(inputs, config.name)
    labels = outputs[features.LABELS]
  outputs[features.UNIGRAM_XENT] = _unigram_xent(labels, config.num_classes)
  return outputs
