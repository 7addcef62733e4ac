"""Magenta's event encodings (note-seq's encoder-decoders) as TensorFlow ops.

Why TF: Transform runs these in Beam to make the training data, and the same graph ships
inside the exported SavedModel, so training and serving encode identically (no
tf.py_function, no numpy at graph time).

Why batches are easy: every input/label at position t depends only on events[:t+1] (the
melody squash looks at the whole melody but ignores MELODY_NO_EVENT). So a batch padded
at the end with the no-event value (MELODY_NO_EVENT for melodies, class 0 for drums)
encodes each row exactly; callers slice each row back to its own length.

Event representation: melody events as in note-seq (-2 no event, -1 note off, 0..127 note
on); drum steps as MultiDrumOneHotEncoding class indices in [0, 512) (see events.py and
`drum_pitches_to_class_indices`). Drum lookback comparisons therefore compare classes,
not raw pitch sets; drum_kit has no lookbacks, so it is exact there.
"""

from typing import Optional, Sequence, Tuple

import tensorflow as tf

from music_rnn import configs
from music_rnn import events as events_lib

NO_EVENT = configs.MELODY_NO_EVENT
NOTE_OFF = configs.MELODY_NOTE_OFF
_OCTAVE = configs.NOTES_PER_OCTAVE
_NUM_PITCHES = events_lib.NUM_MIDI_PITCHES
_RECENT_NOTES = 3  # KeyMelodyEncoderDecoder's deque of the last 3 distinct notes


def pad_value(config: configs.ModelConfig) -> int:
  """The event to pad a batch with: one that changes nothing before it."""
  return 0 if config.kind == configs.DRUMS else NO_EVENT


# --- Building blocks, shared with generation's per-step encoders (which pass a scalar
# position t or [B] events where the batch encoders below pass [B, T]). -------------


def binary_counters(positions: tf.Tensor, bits: int) -> tf.Tensor:
  """note-seq's time counters for the *next* step: bit i of (t + 1) as +1/-1.

  positions: int32, any shape; returns float32 [..., bits].
  """
  n = positions + 1
  out = [tf.cast(tf.bitwise.bitwise_and(tf.bitwise.right_shift(n, i), 1), tf.float32) * 2. - 1.
         for i in range(bits)]
  return tf.stack(out, -1) if out else tf.zeros(tf.concat([tf.shape(n), [0]], 0))


def bar_end(positions: tf.Tensor) -> tf.Tensor:
  """KeyMelodyEncoderDecoder's bar flag: 1.0 where t + 1 ends a bar, float32 [..., 1]."""
  return tf.cast(tf.equal((positions + 1) % configs.DEFAULT_STEPS_PER_BAR, 0),
                 tf.float32)[..., tf.newaxis]


def _key_matrix() -> tf.Tensor:
  """[12 pitch classes, 12 major keys]: 1 where the key contains the pitch class."""
  rows = [[1. if k in keys else 0. for k in range(_OCTAVE)] for keys in events_lib.NOTE_KEYS]
  return tf.constant(rows, tf.float32)


def note_pitch_classes(events: tf.Tensor) -> tf.Tensor:
  """One-hot pitch class of every note (events >= 0), zeros elsewhere: float32 [..., 12]."""
  return tf.one_hot(tf.math.floormod(events, _OCTAVE), _OCTAVE) * tf.cast(
      events >= 0, tf.float32)[..., tf.newaxis]


def key_flags(pitch_class_hist: tf.Tensor) -> tf.Tensor:
  """[..., 12] pitch-class counts -> 1.0 for every major key tied for most notes (all
  1.0 when there are no notes), float32 [..., 12]."""
  key_hist = tf.tensordot(pitch_class_hist, _key_matrix(), 1)
  return tf.cast(tf.equal(key_hist, tf.reduce_max(key_hist, -1, keepdims=True)), tf.float32)


def melody_class(events: tf.Tensor, min_note: int) -> tf.Tensor:
  """MelodyOneHotEncoding.encode_event: 0 no event, 1 note off, 2 + note - min_note."""
  return tf.where(events < 0, events + configs.NUM_SPECIAL_MELODY_EVENTS,
                  events - min_note + configs.NUM_SPECIAL_MELODY_EVENTS)


def melody_class_to_event(classes: tf.Tensor, min_note: int) -> tf.Tensor:
  """MelodyOneHotEncoding.decode_event, the inverse of melody_class."""
  return tf.where(classes < configs.NUM_SPECIAL_MELODY_EVENTS,
                  classes - configs.NUM_SPECIAL_MELODY_EVENTS,
                  classes - configs.NUM_SPECIAL_MELODY_EVENTS + min_note)


def fold_notes(notes: tf.Tensor, min_note: int, max_note: int) -> tf.Tensor:
  """Octave-shifts notes into [min_note, max_note) (note-seq's Melody.transpose)."""
  return tf.where(
      notes < min_note, min_note + tf.math.floormod(notes - min_note, _OCTAVE),
      tf.where(notes >= max_note,
               max_note - _OCTAVE + tf.math.floormod(notes - max_note, _OCTAVE), notes))


def transpose_melodies(events: tf.Tensor, amount: tf.Tensor, min_note: int = 0,
                       max_note: int = _NUM_PITCHES) -> tf.Tensor:
  """Melody.transpose on [B, T]: notes moved by amount [B] and folded into
  [min_note, max_note); no-event and note-off stay. transpose_melodies(e, -amount)
  takes squashed events back to the caller's key and register (within 0..127)."""
  moved = events + tf.cast(amount, events.dtype)[:, tf.newaxis]
  return tf.where(events >= 0, fold_notes(moved, min_note, max_note), events)


# --- Vectorised running state (TF has cumsum but no cummax / forward fill). ---------


def _last_true_index(mask: tf.Tensor) -> tf.Tensor:
  """Index along the last axis of the latest True at or before each position, or -1.

  One global cumsum over the flattened tensor picks the latest True overall; it belongs
  to the same row iff it is not before the row start. O(n), any leading shape.
  """
  mask = tf.convert_to_tensor(mask, tf.bool)
  shape = tf.shape(mask)
  flat = tf.reshape(mask, [-1])
  flat_idx = tf.range(tf.size(flat))
  count = tf.cumsum(tf.cast(flat, tf.int32))
  true_idx = tf.concat([[-1], tf.boolean_mask(flat_idx, flat)], 0)
  last = tf.gather(true_idx, count)
  row_start = flat_idx - flat_idx % tf.maximum(shape[-1], 1)
  return tf.reshape(tf.where(last >= row_start, last - row_start, -1), shape)


def _forward_fill(mask: tf.Tensor, values: tf.Tensor, default) -> tf.Tensor:
  """values at the latest True of mask at or before each position, else default."""
  idx = _last_true_index(mask)
  got = tf.gather(values, tf.maximum(idx, 0), axis=-1, batch_dims=values.shape.rank - 1)
  return tf.where(idx >= 0, got, tf.cast(default, values.dtype))


def _shift_right(x: tf.Tensor, n: int, fill) -> tf.Tensor:
  """x[:, t - n] (fill where t < n) for a [B, T] tensor."""
  if n == 0:
    return x
  return tf.pad(x, [[0, 0], [n, 0]], constant_values=tf.cast(fill, x.dtype))[:, :tf.shape(x)[1]]


def _positions(events: tf.Tensor) -> tf.Tensor:
  """[B, T] int32 position index."""
  shape = tf.shape(events)
  return tf.broadcast_to(tf.range(shape[1])[tf.newaxis, :], shape)


def _repeats(events: tf.Tensor, positions: tf.Tensor, distance: int) -> tf.Tensor:
  """events[t] == events[t - distance] (False where t < distance)."""
  return (positions >= distance) & tf.equal(events, _shift_right(events, distance, 0))


# --- Drums. -------------------------------------------------------------------------


def drum_pitches_to_class_indices(pitches: tf.RaggedTensor,
                                  pitch_counts: tf.RaggedTensor) -> tf.Tensor:
  """[B, None] flat pitches + [B, None] per-step counts -> [B, T] class indices (0-padded).

  Works per row (searchsorted into each row's cumulative counts), so a row whose counts
  do not add up only loses its own stray pitches instead of shifting the whole batch.
  """
  counts = tf.cast(pitch_counts.to_tensor(0), tf.int32)
  num_steps = tf.shape(counts)[1]
  flat_pitches = tf.cast(pitches.to_tensor(-1), tf.int32)
  batch, width = tf.shape(flat_pitches)[0], tf.shape(flat_pitches)[1]
  pitch_pos = tf.broadcast_to(tf.range(width)[tf.newaxis, :], [batch, width])
  ends = tf.cumsum(counts, axis=1)
  # searchsorted needs a non-empty sequence; a sentinel column never matches (t == T).
  big = tf.fill([batch, 1], tf.int32.max)
  step = tf.searchsorted(tf.concat([ends, big], 1), pitch_pos, side='right')
  drum_type = tf.gather(tf.constant(events_lib.PITCH_TO_DRUM_TYPE, tf.int32),
                        tf.clip_by_value(flat_pitches, 0, _NUM_PITCHES - 1))
  valid = ((flat_pitches >= 0) & (flat_pitches < _NUM_PITCHES) & (drum_type >= 0) &
           (step < num_steps) & (pitch_pos < tf.cast(pitches.row_lengths(), tf.int32)[:, None]))
  present = tf.one_hot(drum_type, configs.NUM_DRUM_CLASSES, dtype=tf.int32) * tf.cast(
      valid, tf.int32)[..., None]
  segment = tf.where(valid, tf.range(batch)[:, None] * num_steps + step, batch * num_steps)
  per_step = tf.math.unsorted_segment_max(
      tf.reshape(present, [-1, configs.NUM_DRUM_CLASSES]), tf.reshape(segment, [-1]),
      batch * num_steps + 1)[:-1]
  per_step = tf.reshape(tf.maximum(per_step, 0), [batch, num_steps, configs.NUM_DRUM_CLASSES])
  bit_values = tf.constant([2 ** i for i in range(configs.NUM_DRUM_CLASSES)], tf.int32)
  return tf.cast(tf.reduce_sum(per_step * bit_values, -1), tf.int64)


# --- Melody squash. -----------------------------------------------------------------


def clean_leading_note_offs(events: tf.Tensor) -> tf.Tensor:
  """NOTE_OFFs before a melody's first note become NO_EVENT, as note_seq.Melody() does."""
  before_first_note = tf.equal(tf.cumsum(tf.cast(events >= 0, tf.int32), axis=1), 0)
  return tf.where(before_first_note & tf.equal(events, NOTE_OFF),
                  tf.cast(NO_EVENT, events.dtype), events)


def squash_melodies(events: tf.Tensor, min_note: int, max_note: int,
                    transpose_to_key: Optional[int]) -> Tuple[tf.Tensor, tf.Tensor]:
  """note-seq's Melody.squash on a [B, T] batch: returns (events, transpose_amount [B]).

  Transposes each melody to `transpose_to_key` (major-key estimate, lowest key on ties),
  shifts it by octaves to centre it in [min_note, max_note), then folds stray notes into
  the range by octaves. Melodies without notes are left alone (amount 0).
  """
  events = tf.cast(events, tf.int64)
  is_note = events >= 0
  if transpose_to_key is None:
    amount = tf.zeros(tf.shape(events)[:1], tf.int64)
  else:
    key_hist = tf.tensordot(tf.reduce_sum(note_pitch_classes(events), 1), _key_matrix(),
                            1)  # [B, 12]
    is_max = tf.equal(key_hist, tf.reduce_max(key_hist, -1, keepdims=True))
    keys = tf.range(_OCTAVE, dtype=tf.int64)
    key = tf.reduce_min(tf.where(is_max, keys, tf.constant(_OCTAVE, tf.int64)), -1)
    key_diff = transpose_to_key - key
    lowest = tf.reduce_min(tf.where(is_note, events, tf.constant(_NUM_PITCHES, tf.int64)), 1)
    highest = tf.reduce_max(tf.where(is_note, events, tf.constant(-1, tf.int64)), 1)
    centre = tf.cast(lowest + highest, tf.float64) / 2.
    centre_diff = (min_note + max_note - 1) / 2. - (centre + tf.cast(key_diff, tf.float64))
    # tf.round is round-half-to-even, like python's round().
    octaves = tf.cast(tf.round(centre_diff / _OCTAVE), tf.int64)
    amount = tf.where(tf.reduce_any(is_note, 1), key_diff + _OCTAVE * octaves,
                      tf.constant(0, tf.int64))
  return transpose_melodies(events, amount, min_note, max_note), amount


# --- Encoders on a padded [B, T] batch. Each returns (inputs [B, T, D], all_labels [B, T])
# where all_labels[:, t] = events_to_label(events, t); encode() drops position 0. -----------


def _one_hot_encode(classes: tf.Tensor, num_classes: int) -> Tuple[tf.Tensor, tf.Tensor]:
  return tf.one_hot(classes, num_classes, dtype=tf.float32), classes


def _lookback_encode(events: tf.Tensor, classes: tf.Tensor, num_classes: int,
                     default_event: int, default_class: int,
                     lookback_distances: Sequence[int],
                     binary_counter_bits: int) -> Tuple[tf.Tensor, tf.Tensor]:
  """LookbackEventSequenceEncoderDecoder over any one-hot event encoding."""
  positions = _positions(events)
  parts = [tf.one_hot(classes, num_classes, dtype=tf.float32)]
  for distance in lookback_distances:  # the event that would repeat next
    parts.append(tf.one_hot(_shift_right(classes, distance - 1, default_class), num_classes,
                            dtype=tf.float32))
  parts.append(binary_counters(positions, binary_counter_bits))
  repeats = [_repeats(events, positions, d) for d in lookback_distances]
  parts.extend(tf.cast(r, tf.float32)[..., None] for r in repeats)

  labels = classes
  for i, repeat in enumerate(repeats):  # the most distant repeat wins
    labels = tf.where(repeat, tf.cast(num_classes + i, labels.dtype), labels)
  if lookback_distances:  # silence before the longest lookback counts as its repeat
    early_silence = (positions < lookback_distances[-1]) & tf.equal(events, default_event)
    labels = tf.where(early_silence,
                      tf.cast(num_classes + len(lookback_distances) - 1, labels.dtype), labels)
  return tf.concat(parts, -1), labels


def _key_melody_encode(events: tf.Tensor, min_note: int, max_note: int,
                       lookback_distances: Sequence[int],
                       binary_counter_bits: int) -> Tuple[tf.Tensor, tf.Tensor]:
  """KeyMelodyEncoderDecoder, with its running state as forward fills / cumsums."""
  note_range = max_note - min_note
  positions = _positions(events)
  is_note = events >= 0

  # Current note: the latest event that is not NO_EVENT, if it is a note (note-seq tests
  # `if current_note:`, so pitch 0 counts as silence).
  last_sound = _forward_fill(events != NO_EVENT, events, NO_EVENT)
  playing = last_sound > 0
  # Attack: the latest event that is not NOTE_OFF is a note (note off keeps the flag).
  is_attack = _forward_fill(events != NOTE_OFF, events, NO_EVENT) >= 0
  # Ascending: sign of the latest non-zero step between consecutive notes (0 if none).
  last_note = _forward_fill(is_note, events, -1)
  previous_note = _shift_right(last_note, 1, -1)
  direction = tf.where(is_note & (previous_note >= 0), tf.sign(events - previous_note),
                       tf.zeros_like(events))
  ascending = _forward_fill(direction != 0, direction, 0)

  current = tf.where(playing, last_sound - min_note, tf.constant(-1, last_sound.dtype))
  parts = [
      tf.one_hot(current, note_range, dtype=tf.float32),
      tf.cast(playing, tf.float32)[..., None],
      tf.cast(~playing, tf.float32)[..., None],
      tf.cast(is_attack, tf.float32)[..., None],
      tf.cast(ascending, tf.float32)[..., None],
  ]
  repeats = [_repeats(events, positions, d) for d in lookback_distances]
  parts.extend(tf.cast(r, tf.float32)[..., None] for r in repeats)
  parts.append(binary_counters(positions, binary_counter_bits))
  parts.append(bar_end(positions))

  # Key of everything so far: cumulative pitch-class counts.
  parts.append(key_flags(tf.cumsum(note_pitch_classes(events), axis=1)))
  # Key of the last 3 distinct notes: per pitch, its latest position; the 3 latest win.
  # Only the pitches that occur in the batch get a column (tf.unique), 3 spare never win.
  pitches, pitch_id = tf.unique(tf.reshape(events, [-1]))
  occurs = tf.equal(tf.reshape(pitch_id, tf.shape(events))[:, tf.newaxis, :],
                    tf.range(tf.size(pitches))[tf.newaxis, :, tf.newaxis]) & is_note[:, tf.newaxis]
  last_seen = tf.transpose(_last_true_index(occurs), [0, 2, 1])  # [B, T, pitches]
  spare = -tf.ones(tf.concat([tf.shape(events), [_RECENT_NOTES]], 0), tf.int32)
  latest, column = tf.math.top_k(tf.concat([last_seen, spare], -1), _RECENT_NOTES)
  recent_notes = tf.gather(tf.concat([pitches, -tf.ones([_RECENT_NOTES], pitches.dtype)], 0),
                           column)
  recent_notes = tf.where(latest >= 0, recent_notes, tf.constant(-1, pitches.dtype))
  parts.append(key_flags(tf.reduce_sum(note_pitch_classes(recent_notes), 2)))

  labels = tf.where(events == NOTE_OFF, tf.constant(note_range + 1, events.dtype),
                    tf.where(events == NO_EVENT, tf.constant(note_range, events.dtype),
                             events - min_note))
  for i, repeat in enumerate(repeats):  # the most distant repeat wins
    labels = tf.where(repeat, tf.cast(note_range + 2 + i, labels.dtype), labels)
  if lookback_distances:
    early_silence = (positions < lookback_distances[-1]) & (events == NO_EVENT)
    labels = tf.where(early_silence,
                      tf.cast(note_range + len(lookback_distances) + 1, labels.dtype), labels)
  return tf.concat(parts, -1), labels


def encode_batch(config: configs.ModelConfig, events: tf.Tensor,
                 squash: bool = True) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Encodes a [B, T] batch padded at the end with `pad_value(config)`.

  Returns inputs [B, T, input_size] float32 (events_to_input at every position),
  labels [B, max(T - 1, 0)] int64 (events_to_label at positions 1..T-1) and
  transpose_amount [B] int64 (the melody squash; 0 for drums or squash=False).
  Row b is exact for its first length_b positions; the padded tail is junk to drop.
  """
  events = tf.cast(events, tf.int64)
  amount = tf.zeros(tf.shape(events)[:1], tf.int64)
  if config.kind == configs.DRUMS:
    if config.encoding != configs.ENCODING_MULTI_DRUM_LOOKBACK:
      raise ValueError(f'Unknown drum encoding {config.encoding!r}')
    inputs, labels = _lookback_encode(
        events, events, 2 ** configs.NUM_DRUM_CLASSES, 0, 0, config.lookback_distances,
        config.binary_counter_bits)
  else:
    events = clean_leading_note_offs(events)
    if squash:
      events, amount = squash_melodies(events, config.min_note, config.max_note,
                                       config.transpose_to_key)
    classes = melody_class(events, config.min_note)
    one_hot_size = config.max_note - config.min_note + configs.NUM_SPECIAL_MELODY_EVENTS
    if config.encoding == configs.ENCODING_MELODY_ONE_HOT:
      inputs, labels = _one_hot_encode(classes, one_hot_size)
    elif config.encoding == configs.ENCODING_MELODY_LOOKBACK:
      inputs, labels = _lookback_encode(
          events, classes, one_hot_size, NO_EVENT, 0, config.lookback_distances,
          config.binary_counter_bits)
    elif config.encoding == configs.ENCODING_KEY_MELODY:
      inputs, labels = _key_melody_encode(
          events, config.min_note, config.max_note, config.lookback_distances,
          config.binary_counter_bits)
    else:
      raise ValueError(f'Unknown melody encoding {config.encoding!r}')
  if inputs.shape[-1] != config.input_size:
    raise ValueError(f'{config.name}: encoder makes {inputs.shape[-1]} inputs per step but '
                     f'configs says input_size={config.input_size}')
  return inputs, tf.cast(labels[:, 1:], tf.int64), amount


def encode_sequence(config: configs.ModelConfig, events,
                    squash: bool = True) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """One sequence [T] -> (inputs [T, input_size], labels [T - 1], transpose_amount []).

  events: melody events, or drum class indices (events.drum_events_to_class_indices).
  (inputs[:T-1], labels) is note-seq's encode(events) (after squash for melodies) and
  inputs[T-1] is the last row of get_inputs_batch([events], full_length=True). For
  step-by-step generation pass already-squashed events with squash=False.
  """
  events = tf.convert_to_tensor(events, tf.int64)
  inputs, labels, amount = encode_batch(config, events[tf.newaxis], squash=squash)
  return inputs[0], labels[0], amount[0]
