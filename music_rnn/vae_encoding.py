"""MusicVAE's one encoding: serving events <-> class labels -> encoder inputs.

One implementation used by Transform (labels), the Trainer (encoder inputs, melody
transposition) and the export (events in and out, their checks). The numbers are
Magenta's converters' (magenta/models/music_vae/data.py):
- Drums (DrumsConverter, roll_input=True): the label of a step is note-seq's
  MultiDrumOneHotEncoding index, bit i set when drum class i is hit (0..511); the
  encoder input is the roll, those 9 bits, plus a final "no hits" bit (data.py:
  `np.all(roll == 0, axis=1)` appended). The decoder predicts the label. Serving events
  are the labels themselves.
- Melody (OneHotMelodyConverter): MelodyOneHotEncoding(min_pitch, max_pitch + 1):
  label 0 no event (-2), 1 note off (-1), 2 + (pitch - min_pitch) a note; the encoder
  input is the one-hot label.
All functions take int tensors [B, T] (any int dtype) and are tf-traceable.
"""

from typing import List, Tuple

import tensorflow as tf

from music_rnn import configs


def _melody_range(config: configs.VaeConfig) -> Tuple[int, int]:
  return config.converter.min_pitch, config.converter.max_pitch


def events_to_labels(events, config: configs.VaeConfig) -> tf.Tensor:
  """Serving events int [B, T] -> labels int64 [B, T] (check_events them first).

  Drums: the class index is the label. Melody: -2 -> 0, -1 -> 1, pitch -> 2 + pitch -
  min_pitch.
  """
  events = tf.cast(events, tf.int64)
  if config.kind == configs.DRUMS:
    return events
  min_pitch, _ = _melody_range(config)
  special = events - configs.MELODY_NO_EVENT  # -2 -> 0, -1 -> 1
  return tf.where(events < 0, special,
                  events - min_pitch + configs.NUM_SPECIAL_MELODY_EVENTS)


def labels_to_events(labels, config: configs.VaeConfig) -> tf.Tensor:
  """events_to_labels inverted: labels int [B, T] -> serving events int64 [B, T]."""
  labels = tf.cast(labels, tf.int64)
  if config.kind == configs.DRUMS:
    return labels
  min_pitch, _ = _melody_range(config)
  specials = configs.NUM_SPECIAL_MELODY_EVENTS
  return tf.where(labels < specials, labels + configs.MELODY_NO_EVENT,
                  labels - specials + min_pitch)


def encoder_inputs(labels, config: configs.VaeConfig, dtype=tf.float32) -> tf.Tensor:
  """labels int [B, T] -> the encoder's inputs [B, T, config.input_size].

  Drums (roll input): bit i of the label per drum class, then 1 where no drum is hit.
  Melody (and drums without roll input): the one-hot label.
  """
  labels = tf.cast(labels, tf.int32)
  if config.kind == configs.DRUMS and config.converter.roll_input:
    bits = tf.bitwise.right_shift(labels[..., tf.newaxis],
                                  tf.range(configs.NUM_DRUM_CLASSES, dtype=tf.int32))
    roll = tf.cast(tf.bitwise.bitwise_and(bits, 1), dtype)
    no_hits = tf.cast(tf.equal(labels, 0), dtype)[..., tf.newaxis]
    return tf.concat([roll, no_hits], -1)
  return tf.one_hot(labels, config.num_classes, dtype=dtype)


def transpose_limits(labels, config: configs.VaeConfig,
                     mask=None) -> Tuple[tf.Tensor, tf.Tensor]:
  """Per example, the (lowest, highest) shift in config.converter.transpose_range that
  keeps every note of the slice in [min_pitch, max_pitch]: int32 [B] each.

  `mask` [B, T] (1 on real steps) ignores padded steps. A slice without notes gets the
  whole range; so does every drums slice (drums are never transposed). When a slice
  spans more than the range allows (it cannot, coming from the converter), its limits
  cross and `transpose_labels` is given 0 by `random_transpose_amounts`.
  """
  low, high = (int(v) for v in config.converter.transpose_range)
  labels = tf.cast(labels, tf.int32)
  batch = tf.shape(labels)[0]
  if config.kind == configs.DRUMS:
    return tf.fill([batch], low), tf.fill([batch], high)
  specials = configs.NUM_SPECIAL_MELODY_EVENTS
  is_note = labels >= specials
  if mask is not None:
    is_note &= tf.cast(mask, tf.bool)
  top = config.num_classes - 1
  lowest = tf.reduce_min(tf.where(is_note, labels, top), axis=1)
  highest = tf.reduce_max(tf.where(is_note, labels, specials), axis=1)
  return tf.maximum(low, specials - lowest), tf.minimum(high, top - highest)


def random_transpose_amounts(labels, config: configs.VaeConfig, seed,
                             mask=None) -> tf.Tensor:
  """A shift per example, uniform over its `transpose_limits` (int32 [B]); `seed`: a
  stateless-random seed [2]. 0 where the limits cross."""
  low, high = transpose_limits(labels, config, mask)
  return transpose_amounts(low, high, tf.random.stateless_uniform(tf.shape(low), seed))


def transpose_amounts(low, high, u) -> tf.Tensor:
  """The integer shift in [low, high] (int [B]) that u in [0, 1) (float [B]) picks,
  uniformly; 0 where low > high."""
  span = tf.maximum(high - low + 1, 1)
  amounts = low + tf.minimum(tf.cast(tf.floor(u * tf.cast(span, tf.float32)), tf.int32),
                             span - 1)
  return tf.where(high >= low, amounts, 0)


def transpose_labels(labels, amounts, config: configs.VaeConfig) -> tf.Tensor:
  """Shifts every note label of example b by amounts[b] semitones (melody; drums and the
  special events are left as they are). Same dtype as `labels`. The caller keeps notes
  in range (`transpose_limits`); out-of-range results are clipped to the range ends."""
  if config.kind == configs.DRUMS:
    return labels
  dtype = labels.dtype
  labels = tf.cast(labels, tf.int32)
  shifted = tf.clip_by_value(labels + tf.cast(amounts, tf.int32)[:, tf.newaxis],
                             configs.NUM_SPECIAL_MELODY_EVENTS, config.num_classes - 1)
  return tf.cast(tf.where(labels >= configs.NUM_SPECIAL_MELODY_EVENTS, shifted, labels),
                 dtype)


def event_range_text(config: configs.VaeConfig) -> str:
  """What a valid serving event is, for error messages and docs."""
  if config.kind == configs.DRUMS:
    return f'drum class indices in [0, {config.num_classes - 1}] (bit i: drum class i)'
  low, high = _melody_range(config)
  return f'-2 (no event), -1 (note off) or pitches in [{low}, {high}]'


def check_events(fn_name: str, events, config: configs.VaeConfig) -> List[tf.Operation]:
  """Assert ops on serving events int [B, T]: one InvalidArgumentError naming `fn_name`,
  what is allowed and (up to 5 of) the offending values. Use as control dependencies."""
  events = tf.cast(events, tf.int64)
  if config.kind == configs.DRUMS:
    valid = (events >= 0) & (events < config.num_classes)
  else:
    low, high = _melody_range(config)
    valid = (((events >= configs.MELODY_NO_EVENT) & (events < 0)) |
             ((events >= low) & (events <= high)))
  bad = tf.boolean_mask(events, ~valid)
  return [tf.debugging.Assert(tf.size(bad) == 0, [tf.strings.format(
      f'{fn_name}: events must be {event_range_text(config)}; got {{}}', [bad[:5]],
      summarize=5)],
      name='check_event_values')]
