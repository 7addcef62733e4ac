"""Sampling in the graph: Magenta's generation loop as SavedModel functions.

Why in the graph: a served model must generate with TensorFlow alone, and must not
re-run the whole sequence for every new event. Magenta's loop
(events_rnn_model._generate_events) primes the RNN with the primer, then repeats:
encode the newest input row from the events so far, advance the RNN one step from its
carried state, sample a label from softmax(logits / temperature), decode it into an
event (lookback labels repeat the event 1 or 2 bars back). We run exactly that in
tf.while_loops:

  - `_StepEncoder`s are note-seq's encoder-decoders made incremental: each consumes one
    event and returns that position's input row, carrying what the row depends on (key
    histograms, last notes, ...) and reading older events from the event buffer. The
    tests check every row against `encoding.encode_batch`.
  - `_Stepper` advances the trained RNN one step with the model's own step function
    (model.rnn_step, the one training's loop runs) on weights prepared once at export;
    the tests check its logits against the Keras model's.
  - Sampling is Gumbel-max with stateless uniforms keyed by (seed, position): the same
    seed gives the same events, and a sequence continued in several `extend` calls
    equals one `generate` call.
  - The sampling loop is XLA-compiled by default (`jit_compile`): per step it fuses
    the ~100 small ops whose fixed cost dominates at batch 1.

Requests are bounded (music_rnn/limits.py: events per row and in all rows), checked
in the graph with the other arguments: a bad request is one InvalidArgumentError that
says what is wrong, never a loop that runs until it is killed.

Event values are Magenta's: melodies -2 no event, -1 note off, 0..127 note on; drums
the MultiDrumOneHotEncoding class index 0..511. Melody primers are squashed into the
model's range (transpose_to_key) and the continuation is transposed back, as Magenta's
melody generator does; the returned primer prefix is the caller's, unchanged.
"""

from typing import List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from music_rnn import configs
from music_rnn import encoding
from music_rnn import events as events_lib
from music_rnn import limits
from music_rnn import model as model_lib

NO_EVENT = configs.MELODY_NO_EVENT
NOTE_OFF = configs.MELODY_NOTE_OFF
_OCTAVE = configs.NOTES_PER_OCTAVE
_NUM_PITCHES = events_lib.NUM_MIDI_PITCHES
_NUM_DRUM_CLASSES = 2 ** configs.NUM_DRUM_CLASSES


# --- Incremental encoders. -------------------------------------------------------
#
# An input row is split into its leading one-hot blocks (`hot`: [B, H] column indices,
# `num_hot` meaning "no column") and the dense rest (`dense`: [B, D]), so the first
# layer can gather weight rows instead of multiplying by a mostly-zero vector.


def _read_back(read, index, default) -> tf.Tensor:
  """read(index) ([B] int64), or `default` where index < 0."""
  value = read(tf.maximum(index, 0))
  return tf.where(index >= 0, value, tf.cast(default, tf.int64))


def read_lookbacks(read, t, lookbacks: Sequence[int], default):
  """Per lookback distance d: (events[t - d], events[t + 1 - d]), `default` before 0.

  `read(position)` returns the events at a position ([B] int64). The first tells
  whether event t repeats; the second is what a lookback label repeats.
  """
  return [(_read_back(read, t - d, default), _read_back(read, t + 1 - d, default))
          for d in lookbacks]


def _per_row(column, batch) -> tf.Tensor:
  """A row of position columns for scalar t ([D]) repeated for every row: [B, D]."""
  return tf.broadcast_to(column[tf.newaxis], tf.stack([batch, tf.shape(column)[0]]))


class _StepEncoder:
  """One event in, that position's input row out (note-seq's events_to_input)."""
  num_hot: int  # leading one-hot columns of the input row
  num_blocks: int  # H: one-hot blocks among them
  num_dense: int  # D: the other columns
  default_event: int  # what a lookback before the start repeats

  def initial_state(self, batch) -> Tuple[tf.Tensor, ...]:
    return ()

  def step(self, state, event, t, back):
    """Consumes events[t]: (state, hot, dense, lookback events).

    back: `read_lookbacks` at t. lookback events: events[t + 1 - d] per lookback
    distance d, what `decode` repeats.
    """
    raise NotImplementedError

  def decode(self, label, lookback_events) -> tf.Tensor:
    """Sampled labels [B] -> events [B] (note-seq's class_index_to_event)."""
    raise NotImplementedError


class _LookbackEncoder(_StepEncoder):
  """LookbackEventSequenceEncoderDecoder over a one-hot encoding (also plain one-hot:
  no lookbacks and no counters leave just the one-hot block)."""

  def __init__(self, config: configs.ModelConfig):
    self.drums = config.kind == configs.DRUMS
    self.min_note = config.min_note
    if self.drums:
      self.one_hot_size = _NUM_DRUM_CLASSES
      self.default_event = 0
    else:
      self.one_hot_size = (config.max_note - config.min_note +
                           configs.NUM_SPECIAL_MELODY_EVENTS)
      self.default_event = NO_EVENT
    self.lookbacks = tuple(config.lookback_distances)
    self.bits = config.binary_counter_bits
    self.num_blocks = 1 + len(self.lookbacks)
    self.num_hot = self.num_blocks * self.one_hot_size
    self.num_dense = self.bits + len(self.lookbacks)

  def _class(self, event):
    event = tf.cast(event, tf.int32)
    return event if self.drums else encoding.melody_class(event, self.min_note)

  def _event(self, label):
    label = tf.cast(label, tf.int64)
    return label if self.drums else encoding.melody_class_to_event(label, self.min_note)

  def step(self, state, event, t, back):
    batch = tf.shape(event)[0]
    hot = [self._class(event)]
    dense = []
    upcoming, repeats = [], []
    for i, (d, (previous, next_repeat)) in enumerate(zip(self.lookbacks, back)):
      # The event that would repeat next, and whether this one repeats.
      upcoming.append(next_repeat)
      hot.append(self._class(next_repeat) + (i + 1) * self.one_hot_size)
      repeats.append((t >= d) & tf.equal(event, previous))
    if self.bits:
      dense.append(_per_row(encoding.binary_counters(t, self.bits), batch))
    dense.extend(tf.cast(r, tf.float32)[:, tf.newaxis] for r in repeats)
    dense = tf.concat(dense, 1) if dense else tf.zeros([batch, 0])
    return state, tf.stack(hot, 1), dense, upcoming

  def decode(self, label, lookback_events):
    event = self._event(tf.minimum(label, self.one_hot_size - 1))
    for i, repeated in enumerate(lookback_events):
      event = tf.where(tf.equal(label, self.one_hot_size + i), repeated, event)
    return event


class _KeyMelodyEncoder(_StepEncoder):
  """KeyMelodyEncoderDecoder, its per-melody state carried from step to step.

  State: last sounding event (latest that is not NO_EVENT), attack flag, ascending
  (+1/-1/0), last note, the last 3 distinct notes (oldest first, -1 empty), and the
  pitch-class histogram of every note so far.
  """

  def __init__(self, config: configs.ModelConfig):
    self.min_note = config.min_note
    self.note_range = config.max_note - config.min_note
    self.lookbacks = tuple(config.lookback_distances)
    self.bits = config.binary_counter_bits
    self.default_event = NO_EVENT
    self.num_blocks = 1
    self.num_hot = self.note_range
    self.num_dense = config.input_size - self.note_range

  def initial_state(self, batch):
    minus_one = tf.fill([batch], tf.constant(-1, tf.int64))
    return (tf.fill([batch], tf.constant(NO_EVENT, tf.int64)),  # last sounding event
            tf.zeros([batch], tf.bool),  # attack
            tf.zeros([batch], tf.float32),  # ascending
            minus_one,  # last note
            tf.fill([batch, 3], tf.constant(-1, tf.int64)),  # last 3 distinct notes
            tf.zeros([batch, _OCTAVE], tf.float32))  # pitch-class histogram

  def step(self, state, event, t, back):
    last_sound, attack, ascending, last_note, recent, histogram = state
    batch = tf.shape(event)[0]
    is_note = event >= 0
    last_sound = tf.where(tf.equal(event, NO_EVENT), last_sound, event)
    attack = tf.where(tf.equal(event, NO_EVENT), False, is_note | attack)
    moved = is_note & (last_note >= 0) & tf.not_equal(event, last_note)
    ascending = tf.where(moved, tf.cast(tf.sign(event - last_note), tf.float32), ascending)
    last_note = tf.where(is_note, event, last_note)
    # Move the note to the newest slot: drop its old slot, or the oldest if it is new.
    found = tf.equal(recent, event[:, tf.newaxis])
    slot = tf.reduce_max(tf.where(found, tf.range(3)[tf.newaxis], 0), 1)
    shifted = tf.stack([tf.where(slot > 0, recent[:, 0], recent[:, 1]),
                        tf.where(slot > 1, recent[:, 1], recent[:, 2]), event], 1)
    recent = tf.where(is_note[:, tf.newaxis], shifted, recent)
    histogram += encoding.note_pitch_classes(event)

    # note-seq tests `if current_note:`, so pitch 0 counts as silence.
    playing = last_sound > 0
    hot = tf.where(playing, tf.cast(last_sound, tf.int32) - self.min_note, self.note_range)
    upcoming, dense = [], [tf.cast(playing, tf.float32)[:, tf.newaxis],
                           tf.cast(~playing, tf.float32)[:, tf.newaxis],
                           tf.cast(attack, tf.float32)[:, tf.newaxis],
                           ascending[:, tf.newaxis]]
    for d, (previous, next_repeat) in zip(self.lookbacks, back):
      upcoming.append(next_repeat)
      repeat = (t >= d) & tf.equal(event, previous)
      dense.append(tf.cast(repeat, tf.float32)[:, tf.newaxis])
    if self.bits:
      dense.append(_per_row(encoding.binary_counters(t, self.bits), batch))
    dense.append(_per_row(encoding.bar_end(t), batch))
    dense.append(encoding.key_flags(histogram))
    dense.append(encoding.key_flags(tf.reduce_sum(encoding.note_pitch_classes(recent), 1)))
    state = (last_sound, attack, ascending, last_note, recent, histogram)
    return state, hot[:, tf.newaxis], tf.concat(dense, 1), upcoming

  def decode(self, label, lookback_events):
    label = tf.cast(label, tf.int64)
    r = self.note_range
    event = tf.where(label < r, label + self.min_note,
                     tf.where(tf.equal(label, r), tf.constant(NO_EVENT, tf.int64),
                              tf.constant(NOTE_OFF, tf.int64)))
    for i, repeated in enumerate(lookback_events):
      event = tf.where(tf.equal(label, r + 2 + i), repeated, event)
    return event


def step_encoder(config: configs.ModelConfig) -> _StepEncoder:
  if config.encoding in (configs.ENCODING_MULTI_DRUM_LOOKBACK, configs.ENCODING_MELODY_ONE_HOT,
                         configs.ENCODING_MELODY_LOOKBACK):
    encoder = _LookbackEncoder(config)
  elif config.encoding == configs.ENCODING_KEY_MELODY:
    encoder = _KeyMelodyEncoder(config)
  else:
    raise ValueError(f'No step encoder for encoding {config.encoding!r}')
  if encoder.num_hot + encoder.num_dense != config.input_size:
    raise ValueError(f'{config.name}: step encoder makes {encoder.num_hot + encoder.num_dense}'
                     f' inputs, configs says {config.input_size}')
  return encoder


def dense_rows(encoder: _StepEncoder, hot, dense) -> tf.Tensor:
  """(hot, dense) -> the full input rows [B, input_size] (for tests and checks)."""
  one_hot = tf.reduce_sum(tf.one_hot(hot, encoder.num_hot + 1), 1)[:, :encoder.num_hot]
  return tf.concat([one_hot, dense], 1)


# --- The RNN, one step at a time. -----------------------------------------------------


class _Stepper(tf.Module):
  """EventSequenceRnn.step with its weights fixed at export: the model's own step
  (`model_lib.rnn_step`) on `step_weights()` computed once (first layer's kernel rows
  for gathering, attention input projection folded in) and kept as tf.Variables, so
  the sampling loop does no per-call weight preparation."""

  def __init__(self, model: model_lib.EventSequenceRnn, num_hot: int):
    super().__init__(name='stepper')
    if num_hot != model.layout.num_hot:
      raise ValueError(f'encoder has {num_hot} one-hot columns, model {model.layout.num_hot}')
    weights = model.step_weights(tf.float32)
    names = iter(range(10 ** 6))

    def var(value):
      if not isinstance(value, tf.Tensor):
        return value  # attn_length
      return tf.Variable(value, trainable=False, name=f'w{next(names)}')

    self.weights = tf.nest.map_structure(var, weights)
    self.num_dense = int(weights['layers'][0]['dense'].shape[0])

  def state_shapes(self) -> List[Tuple[int, ...]]:
    return [tuple(s.shape[1:]) for s in self.zero_state(1)]

  def zero_state(self, batch) -> Tuple[tf.Tensor, ...]:
    state = ()
    for layer in self.weights['layers']:
      state += model_lib.zero_layer_state(layer, batch, tf.float32)
    return state

  def step(self, hot, dense, state):
    """(hot [B, H], dense [B, D], state) -> (logits [B, C], state)."""
    return model_lib.rnn_step(self.weights, tf.cast(hot, tf.int32), dense, state)


# --- Sampling. ------------------------------------------------------------------------


def _sample(logits, temperature, seed, position):
  """Gumbel-max draw from softmax(logits / temperature): (labels [B], log-probs [B]).

  Uniforms are keyed by (seed, position), so a row's draws depend only on the seed, the
  position and its row index.
  """
  logits = logits / temperature
  key = tf.stack([seed, tf.cast(position, tf.int64)])
  u = tf.random.stateless_uniform(tf.shape(logits), key, minval=np.finfo(np.float32).tiny,
                                  maxval=1.)
  labels = tf.argmax(logits - tf.math.log(-tf.math.log(u)), 1, output_type=tf.int32)
  log_probs = tf.gather(tf.nn.log_softmax(logits), labels, axis=1, batch_dims=1)
  return labels, log_probs


# --- The module. ----------------------------------------------------------------------

PRIMER_SPEC = tf.TensorSpec([None, None], tf.int64, name='primer')
EVENTS_SPEC = tf.TensorSpec([None, None], tf.int64, name='events')
NUM_STEPS_SPEC = tf.TensorSpec([], tf.int32, name='num_steps')
TEMPERATURE_SPEC = tf.TensorSpec([], tf.float32, name='temperature')
SEED_SPEC = tf.TensorSpec([], tf.int64, name='seed')
SAMPLE_BUCKET = 64  # sampling buffers are sized in multiples of this many steps


class Generator(tf.Module):
  """The generation functions of one trained model (saved inside the SavedModel).

  generate(primer, num_steps, temperature, seed) -> events, log_likelihood
  prime(primer) -> events (model space), transpose_amount, state
  extend(events, state, num_steps, temperature, seed) -> events, state, log_likelihood
  `prime` + `extend` let a caller continue sequences in pieces (progress, beam search);
  extend(prime(p)) continued to n steps equals generate(p, n) in model space.
  """

  def __init__(self, model: model_lib.EventSequenceRnn, config: configs.ModelConfig,
               jit_compile: bool = True):
    super().__init__(name='generator')
    self.config = config
    self.encoder = step_encoder(config)
    self.stepper = _Stepper(model, self.encoder.num_hot)
    if self.stepper.num_dense != self.encoder.num_dense:
      raise ValueError(f'model input size does not match the {config.name} encoding')
    self.melody = config.kind == configs.MELODY
    # Known events sampling reads: the current one and those lookbacks reach.
    self.window = max((0,) + tuple(self.encoder.lookbacks)) + 1
    # The sampling loop compiled by XLA: one fused program per step instead of ~100
    # small TensorFlow ops (whose per-op cost dominates at batch 1). Its uniforms come
    # from XLA's own generator, so the same seed gives other events than with
    # jit_compile=False; each is deterministic. See serving/README.md.
    self._sample_fn = (tf.function(self._sample_loop, jit_compile=True) if jit_compile
                       else self._sample_loop)
    self.generate = tf.function(self._generate, input_signature=[
        PRIMER_SPEC, NUM_STEPS_SPEC, TEMPERATURE_SPEC, SEED_SPEC])
    self.prime = tf.function(self._prime, input_signature=[PRIMER_SPEC])
    self.extend = tf.function(self._extend, input_signature=[
        EVENTS_SPEC, tf.TensorSpec([None, None], tf.float32, name='state'), NUM_STEPS_SPEC,
        TEMPERATURE_SPEC, SEED_SPEC])

  # --- Checks that fail with one clear message instead of graph errors downstream.

  def _event_range(self, model_space: bool) -> Tuple[int, int, str]:
    if not self.melody:
      return 0, _NUM_DRUM_CLASSES - 1, (
          'drum class indices in [0, 511] (bit i set = drum class i)')
    if model_space:
      lo, hi = self.config.min_note, self.config.max_note - 1
      return NO_EVENT, hi, (f'model-space melody events: -2, -1 or notes in [{lo}, {hi}] '
                            '(as returned by prime/extend)')
    return NO_EVENT, _NUM_PITCHES - 1, (
        'melody events in [-2, 127] (-2 no event, -1 note off, 0..127 note on)')

  def _check_events(self, fn: str, name: str, events, model_space: bool):
    lo, hi, what = self._event_range(model_space)
    length = tf.shape(events)[1]
    checks = [tf.debugging.Assert(length >= 1, [tf.strings.format(
        f'{fn}: {name} must have at least one event per row; got shape {{}}',
        [tf.shape(events)])], name=f'check_{name}_length')]
    with tf.control_dependencies(checks):
      valid = (events >= lo) & (events <= hi)
      if model_space and self.melody:
        valid &= (events < 0) | (events >= self.config.min_note)
      bad = tf.boolean_mask(events, ~valid)
      checks.append(tf.debugging.Assert(tf.size(bad) == 0, [tf.strings.format(
          f'{fn}: {name} must hold {what}; got {{}}', [bad[:5]])],
          name=f'check_{name}_values'))
    return checks

  def _check_size(self, fn: str, name: str, events, num_steps):
    """The request bounds (limits.py), so a huge request fails at once instead of
    running until it is killed: events per row (the given ones included), then in all
    rows. int64 sums: an int32 num_steps near 2**31 must not wrap around."""
    rows = tf.cast(tf.shape(events)[0], tf.int64)
    given = tf.cast(tf.shape(events)[1], tf.int64)
    length = given + tf.cast(num_steps, tf.int64)
    per_row = tf.debugging.Assert(length <= limits.MAX_NUM_STEPS, [tf.strings.format(
        f'{fn}: a sequence may have at most {limits.MAX_NUM_STEPS} events '
        f'(limits.MAX_NUM_STEPS), {name} included; got {{}} + num_steps {{}}',
        [given, num_steps])], name='check_max_length')
    with tf.control_dependencies([per_row]):
      in_all_rows = tf.debugging.Assert(rows * length <= limits.MAX_TOTAL_STEPS, [
          tf.strings.format(
              f'{fn}: a request may have at most {limits.MAX_TOTAL_STEPS} events in all '
              f'rows (limits.MAX_TOTAL_STEPS); got {{}} rows x {{}} events', [rows, length])],
          name='check_max_total')
    return [per_row, in_all_rows]

  def _check_args(self, fn: str, name: str, events, num_steps, temperature):
    """num_steps in [1, MAX_NUM_STEPS] (checked in that order: one error), the size
    bounds, temperature > 0."""
    at_least_one = tf.debugging.Assert(num_steps >= 1, [tf.strings.format(
        f'{fn}: num_steps must be >= 1; got {{}}', [num_steps])], name='check_num_steps')
    with tf.control_dependencies([at_least_one]):
      at_most = tf.debugging.Assert(num_steps <= limits.MAX_NUM_STEPS, [tf.strings.format(
          f'{fn}: num_steps must be <= {limits.MAX_NUM_STEPS} (limits.MAX_NUM_STEPS); '
          'got {}', [num_steps])], name='check_max_num_steps')
    with tf.control_dependencies([at_most]):
      size = self._check_size(fn, name, events, num_steps)
    return [at_least_one, at_most] + size + [
        tf.debugging.Assert(temperature > 0, [tf.strings.format(
            f'{fn}: temperature must be > 0; got {{}}', [temperature])],
                            name='check_temperature'),
    ]

  # --- State: the RNN's and the encoder's, packed into one float32 [B, S] so callers
  # can carry (and reorder, for beam search) it between `extend` calls. The encoder's
  # integers are small, so float32 holds them exactly.

  def _state_specs(self):
    specs = [(tuple(s.shape[1:]), s.dtype) for s in self.encoder.initial_state(1)]
    return [(s, tf.float32) for s in self.stepper.state_shapes()] + specs

  @property
  def state_size(self) -> int:
    return int(sum(np.prod(shape) for shape, _ in self._state_specs()))

  def _pack(self, rnn_state, enc_state) -> tf.Tensor:
    parts = list(rnn_state) + list(enc_state)
    batch = tf.shape(parts[0])[0]
    return tf.concat([tf.reshape(tf.cast(p, tf.float32), [batch, -1]) for p in parts], 1)

  def _unpack(self, packed):
    specs = self._state_specs()
    batch = tf.shape(packed)[0]
    parts = tf.split(packed, [int(np.prod(shape)) for shape, _ in specs], axis=1)
    state = []
    for part, (shape, dtype) in zip(parts, specs):
      part = tf.reshape(part, tf.concat([[batch], tf.constant(shape, tf.int32)], 0))
      state.append(tf.not_equal(part, 0) if dtype == tf.bool else tf.cast(part, dtype))
    num_rnn = len(self.stepper.state_shapes())
    return tuple(state[:num_rnn]), tuple(state[num_rnn:])

  # --- Loops.
  #
  # Priming runs the known events through the RNN (no sampling). Sampling then needs
  # only the newest `window` known events (the current one and what lookbacks reach)
  # plus the new ones, so its buffer's shape depends on the batch and on num_steps
  # rounded up to SAMPLE_BUCKET, not on how long the sequence already is: with XLA,
  # each such shape is compiled once per process and reused (extend calls in chunks,
  # beam search).

  def _advance(self, read, t, enc_state, rnn_state):
    """Encodes event t (read(position) -> [B] events) and steps the RNN:
    (enc_state, rnn_state, logits, upcoming lookback events)."""
    back = read_lookbacks(read, t, self.encoder.lookbacks, self.encoder.default_event)
    enc_state, hot, dense, upcoming = self.encoder.step(enc_state, read(t), t, back)
    logits, rnn_state = self.stepper.step(hot, dense, rnn_state)
    return enc_state, rnn_state, logits, upcoming

  def _prime_loop(self, events, stop, enc_state, rnn_state):
    """Steps positions [0, stop) of events [B, T]."""
    def read(position):
      return tf.gather(events, position, axis=1)

    def body(t, enc_state, rnn_state):
      enc_state, rnn_state, _, _ = self._advance(read, t, enc_state, rnn_state)
      return t + 1, enc_state, rnn_state

    _, enc_state, rnn_state = tf.while_loop(lambda t, *_: t < stop, body,
                                            (0, enc_state, rnn_state))
    return enc_state, rnn_state

  def _sample_loop(self, buffer, first, num_steps, enc_state, rnn_state, temperature, seed):
    """Samples `num_steps` events after position `first`.

    buffer [B, window + n >= num_steps]: column c holds position first - window + 1 + c;
    the first `window` columns are known (columns before position 0 are ignored), the
    sampled events go to columns window, window + 1, ...
    Returns (buffer, enc_state, rnn_state, log_likelihood [B]).
    """
    batch = tf.shape(buffer)[0]
    rows = tf.range(batch)
    offset = first - self.window + 1

    def body(i, buffer, enc_state, rnn_state, log_likelihood):
      t = first + i

      def read(position):
        return tf.gather(buffer, position - offset, axis=1)

      enc_state, rnn_state, logits, upcoming = self._advance(read, t, enc_state, rnn_state)
      labels, log_probs = _sample(logits, temperature, seed, t + 1)
      column = tf.fill([batch], self.window + i)
      buffer = tf.tensor_scatter_nd_update(buffer, tf.stack([rows, column], 1),
                                           self.encoder.decode(labels, upcoming))
      return i + 1, buffer, enc_state, rnn_state, log_likelihood + log_probs

    _, buffer, enc_state, rnn_state, log_likelihood = tf.while_loop(
        lambda i, *_: i < num_steps, body,
        (0, buffer, enc_state, rnn_state, tf.zeros([batch])))
    return buffer, enc_state, rnn_state, log_likelihood

  def _run(self, events, state, num_steps, temperature, seed):
    """Runs events [B, T] through the RNN (all but the last, which the state does not
    include yet) unless a packed `state` is given, then samples `num_steps` more.

    Returns (events [B, T + num_steps], packed state, log_likelihood of the new events).
    """
    batch, length = tf.shape(events)[0], tf.shape(events)[1]
    if state is None:  # priming
      enc_state, rnn_state = self._prime_loop(events, length - 1,
                                              self.encoder.initial_state(batch),
                                              self.stepper.zero_state(batch))
    else:
      rnn_state, enc_state = self._unpack(state)
    if temperature is None:
      return events, self._pack(rnn_state, enc_state), tf.zeros([batch])
    known = events[:, tf.maximum(length - self.window, 0):]
    room = (num_steps + SAMPLE_BUCKET - 1) // SAMPLE_BUCKET * SAMPLE_BUCKET
    buffer = tf.pad(known, [[0, 0], [self.window - tf.shape(known)[1], room]])
    buffer, enc_state, rnn_state, log_likelihood = self._sample_fn(
        buffer, length - 1, num_steps, enc_state, rnn_state, temperature, seed)
    new = buffer[:, self.window:self.window + num_steps]
    return tf.concat([events, new], 1), self._pack(rnn_state, enc_state), log_likelihood

  def _to_model_space(self, primer):
    """Magenta's melody squash (drums pass through): (events, transpose_amount [B])."""
    if not self.melody:
      return primer, tf.zeros(tf.shape(primer)[:1], tf.int64)
    events = encoding.clean_leading_note_offs(primer)
    return encoding.squash_melodies(events, self.config.min_note, self.config.max_note,
                                    self.config.transpose_to_key)

  # --- The public functions (wrapped in tf.function in __init__).

  def _generate(self, primer, num_steps, temperature, seed):
    """primer [B, T] -> {'events': [B, T + num_steps], 'log_likelihood': [B]}.

    log_likelihood: sum of the log-probabilities (at `temperature`) of the sampled events.
    """
    checks = self._check_events('generate', 'primer', primer, model_space=False)
    checks += self._check_args('generate', 'primer', primer, num_steps, temperature)
    with tf.control_dependencies(checks):
      primer, num_steps, temperature = (tf.identity(x) for x in (primer, num_steps,
                                                                  temperature))
    events, amount = self._to_model_space(primer)
    out, _, log_likelihood = self._run(events, None, num_steps, temperature, seed)
    new = out[:, tf.shape(primer)[1]:]
    if self.melody:  # back to the primer's key and octave (Melody.transpose(-amount))
      new = encoding.transpose_melodies(new, -amount)
    return {'events': tf.concat([primer, new], 1), 'log_likelihood': log_likelihood}

  def _prime(self, primer):
    """primer [B, T] -> {'events': model-space [B, T], 'transpose_amount': [B],
    'state': [B, S]}: the state after all but the last primer event."""
    checks = self._check_events('prime', 'primer', primer, model_space=False)
    checks += self._check_size('prime', 'primer', primer, 0)
    with tf.control_dependencies(checks):
      primer = tf.identity(primer)
    events, amount = self._to_model_space(primer)
    _, state, _ = self._run(events, None, 0, None, None)
    return {'events': events, 'transpose_amount': amount, 'state': state}

  def _extend(self, events, state, num_steps, temperature, seed):
    """Model-space events [B, T] and their state -> {'events': [B, T + num_steps],
    'state', 'log_likelihood': [B] of the new events}."""
    checks = self._check_events('extend', 'events', events, model_space=True)
    checks += self._check_args('extend', 'events', events, num_steps, temperature)
    checks.append(tf.debugging.Assert(
        tf.reduce_all(tf.equal(tf.shape(state), [tf.shape(events)[0], self.state_size])),
        [tf.strings.format(f'extend: state must have shape [batch, {self.state_size}] (from '
                           'prime or extend); got {}', [tf.shape(state)])],
        name='check_state'))
    with tf.control_dependencies(checks):
      events, state, num_steps, temperature = (
          tf.identity(x) for x in (events, state, num_steps, temperature))
    out, state, log_likelihood = self._run(events, state, num_steps, temperature, seed)
    return {'events': out, 'state': state, 'log_likelihood': log_likelihood}
