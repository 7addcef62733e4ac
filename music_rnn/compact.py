"""The compact form of note-seq input rows: one-hot indices + a bit field per step.

Why: a drum_kit input row is 518 floats of which 7 carry information (one class index
and 6 counter bits that follow from the position). Transform writes, per step, the
column index of each leading one-hot block (`hot`) and one int64 of bits (`flags`) for
the dense columns that do not follow from the position; the model gathers kernel rows
for `hot` and rebuilds the dense columns with `expand_dense` inside its graph.

This module is the one place that knows how a config's input row is laid out.
"""

import dataclasses
from typing import Optional, Tuple

import tensorflow as tf

from music_rnn import configs

COUNTER = 'counter'  # note-seq binary counter bit i of (t + 1) as +1/-1
BAR_END = 'bar_end'  # 1.0 where (t + 1) % 16 == 0 (KeyMelodyEncoderDecoder)
FLAG = 'flag'  # 0/1: bit j of flags
SIGNED = 'signed'  # +1 if bit j, -1 if bit j + 1, else 0 (key melody 'ascending')


@dataclasses.dataclass(frozen=True)
class InputLayout:
  """A config's input row: H one-hot blocks, then the dense columns in row order."""
  num_hot: int  # leading one-hot columns (sum of block sizes); also the "no column" index
  block_sizes: Tuple[int, ...]
  dense: Tuple[Tuple[str, int], ...]  # (kind, index) per dense column, kinds above

  @property
  def num_blocks(self) -> int:
    return len(self.block_sizes)

  @property
  def num_dense(self) -> int:
    return len(self.dense)

  @property
  def input_size(self) -> int:
    return self.num_hot + self.num_dense

  @property
  def num_flag_bits(self) -> int:
    """Bits used in `flags` (a SIGNED column takes two)."""
    ends = [j + (2 if kind == SIGNED else 1) for kind, j in self.dense if kind in (FLAG, SIGNED)]
    return max(ends + [0])

  @property
  def block_offsets(self) -> Tuple[int, ...]:
    offsets, total = [], 0
    for size in self.block_sizes:
      offsets.append(total)
      total += size
    return tuple(offsets)


class _Bits:
  """Hands out consecutive flag bits, in row order."""

  def __init__(self):
    self.next = 0

  def take(self, kind: str):
    column = (kind, self.next)
    self.next += 2 if kind == SIGNED else 1
    return column


def input_layout(config: configs.ModelConfig) -> InputLayout:
  """The layout of note-seq's events_to_input row for `config` (encoding.py's order)."""
  bits = _Bits()
  lookbacks = len(config.lookback_distances)
  counters = tuple((COUNTER, i) for i in range(config.binary_counter_bits))
  if config.encoding in (configs.ENCODING_MULTI_DRUM_LOOKBACK, configs.ENCODING_MELODY_ONE_HOT,
                         configs.ENCODING_MELODY_LOOKBACK):
    # (Lookback)EventSequenceEncoderDecoder: one-hot of the event and of each lookback,
    # binary counters, then one repeat flag per lookback.
    if config.kind == configs.DRUMS:
      one_hot = 2 ** configs.NUM_DRUM_CLASSES
    else:
      one_hot = config.max_note - config.min_note + configs.NUM_SPECIAL_MELODY_EVENTS
    blocks = (one_hot,) * (1 + lookbacks)
    dense = counters + tuple(bits.take(FLAG) for _ in range(lookbacks))
  elif config.encoding == configs.ENCODING_KEY_MELODY:
    # KeyMelodyEncoderDecoder: current note; playing, not playing, attack; ascending;
    # repeat flags; counters; bar end; 12 key flags; 12 recent-notes key flags.
    blocks = (config.max_note - config.min_note,)
    dense = (tuple(bits.take(FLAG) for _ in range(3)) + (bits.take(SIGNED),) +
             tuple(bits.take(FLAG) for _ in range(lookbacks)) + counters + ((BAR_END, 0),) +
             tuple(bits.take(FLAG) for _ in range(2 * configs.NOTES_PER_OCTAVE)))
  else:
    raise ValueError(f'No compact layout for encoding {config.encoding!r}')
  layout = InputLayout(num_hot=sum(blocks), block_sizes=blocks, dense=dense)
  if layout.input_size != config.input_size:
    raise ValueError(f'{config.name}: compact layout has {layout.input_size} columns, configs '
                     f'says input_size={config.input_size}')
  if layout.num_flag_bits > 63:
    raise ValueError(f'{config.name}: {layout.num_flag_bits} flag bits do not fit an int64')
  return layout


def compact_batch(config: configs.ModelConfig, inputs: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
  """Full rows [B, T, input_size] -> (hot int64 [B, T, H], flags int64 [B, T]).

  hot: per block, the index of its set column (block offset included), or num_hot when
  none is set. Position columns (counters, bar end) are dropped: expand_dense rebuilds them.
  """
  layout = input_layout(config)
  inputs = tf.convert_to_tensor(inputs, tf.float32)
  hot = []
  for offset, size in zip(layout.block_offsets, layout.block_sizes):
    block = inputs[..., offset:offset + size]
    index = tf.argmax(block, -1, output_type=tf.int64) + offset
    hot.append(tf.where(tf.reduce_max(block, -1) > 0.5, index, layout.num_hot))
  flags = tf.zeros(tf.shape(inputs)[:-1], tf.int64)
  for column, (kind, j) in enumerate(layout.dense):
    value = inputs[..., layout.num_hot + column]
    if kind in (FLAG, SIGNED):
      flags += tf.cast(value > 0.5, tf.int64) * (1 << j)
    if kind == SIGNED:
      flags += tf.cast(value < -0.5, tf.int64) * (1 << (j + 1))
  hot = tf.stack(hot, -1) if hot else tf.zeros(tf.concat([tf.shape(flags), [0]], 0), tf.int64)
  return hot, flags


def _flag_columns(layout: InputLayout, flags: tf.Tensor) -> tf.Tensor:
  """Every dense column read from flags, [B, T, num_dense] (others 0): column c takes
  x = (flags >> j) & mask (mask 1 for FLAG, 3 for SIGNED) and is (x & 1) - (x >> 1)."""
  shifts = [j if kind in (FLAG, SIGNED) else 0 for kind, j in layout.dense]
  masks = [1 if kind == FLAG else 3 if kind == SIGNED else 0 for kind, _ in layout.dense]
  x = tf.bitwise.bitwise_and(tf.bitwise.right_shift(flags[..., tf.newaxis], shifts), masks)
  return tf.cast(tf.bitwise.bitwise_and(x, 1) - tf.bitwise.right_shift(x, 1), tf.float32)


def _position_columns(layout: InputLayout, positions: tf.Tensor) -> tf.Tensor:
  """Every dense column that follows from the position, [..., num_dense] (others junk)."""
  n = (positions + 1)[..., tf.newaxis]
  shifts = [j if kind == COUNTER else 0 for kind, j in layout.dense]
  counters = tf.cast(tf.bitwise.bitwise_and(tf.bitwise.right_shift(n, shifts), 1),
                     tf.float32) * 2. - 1.
  bar_end = tf.cast(tf.equal(n % configs.DEFAULT_STEPS_PER_BAR, 0), tf.float32)
  return tf.where([kind == BAR_END for kind, _ in layout.dense], bar_end, counters)


def expand_dense(layout: InputLayout, flags: tf.Tensor, num_steps=None,
                 positions: Optional[tf.Tensor] = None) -> tf.Tensor:
  """flags [B, T] -> the dense columns float32 [B, T, num_dense], in row order.

  positions: the step index of each column, broadcastable to [B, T] (e.g. a scalar t when
  generating one step); default 0..num_steps-1 (num_steps defaults to T). A fixed handful
  of elementwise TF ops whatever the layout (position columns computed once per step,
  not per row), so it is cheap step by step, runs in graph mode and under XLA with any
  (or unknown) B and T, including T = 0.
  """
  # int32 when the bits fit (every bundled config): half the memory traffic of int64.
  dtype = tf.int32 if layout.num_flag_bits <= 31 else tf.int64
  flags = tf.cast(flags, dtype)
  shape = tf.concat([tf.shape(flags), [layout.num_dense]], 0)
  kinds = [kind for kind, _ in layout.dense]
  unknown = set(kinds) - {COUNTER, BAR_END, FLAG, SIGNED}
  if unknown:
    raise ValueError(f'Unknown dense column kinds {sorted(unknown)}')
  if not kinds:
    return tf.zeros(shape, tf.float32)
  from_flags = [kind in (FLAG, SIGNED) for kind in kinds]
  if all(from_flags):
    return _flag_columns(layout, flags)
  if positions is None:
    steps = tf.shape(flags)[1] if num_steps is None else num_steps
    positions = tf.range(tf.cast(steps, tf.int32))[tf.newaxis, :]
  by_position = _position_columns(layout, tf.cast(positions, tf.int32))
  if not any(from_flags):
    return tf.broadcast_to(by_position, shape)
  return tf.where(from_flags, _flag_columns(layout, flags), by_position)


def expand_inputs(config: configs.ModelConfig, hot: tf.Tensor, flags: tf.Tensor,
                  positions: Optional[tf.Tensor] = None) -> tf.Tensor:
  """(hot [B, T, H], flags [B, T]) -> the full note-seq rows [B, T, input_size] (checks)."""
  layout = input_layout(config)
  one_hot = tf.reduce_sum(tf.one_hot(tf.cast(hot, tf.int64), layout.num_hot + 1), -2)
  return tf.concat([one_hot[..., :layout.num_hot],
                    expand_dense(layout, flags, positions=positions)], -1)
