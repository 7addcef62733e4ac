"""The event-sequence RNN (Magenta's events_rnn_graph) as a Keras 3 model.

Magenta builds a MultiRNNCell of BasicLSTMCells, wraps the first one in
tf.contrib's AttentionCellWrapper when `attn_length > 0`, applies
DropoutWrapper(output_keep_prob) to every layer, and puts a linear layer on top.
The loss is the softmax cross entropy summed over the real (unpadded) steps of
the batch and divided by their number; the metrics are perplexity = exp(loss),
accuracy, and accuracy restricted to steps whose label is / is not the
no-event label. Gradients are clipped tensor by tensor (tf_slim's
`clip_gradient_norm`) before Adam.

Differences from Magenta, all deliberate:
- Keras LSTM gates: forget bias is initialised to 1 (`unit_forget_bias`) rather
  than a constant 1 added at every step; equivalent at initialisation, and it
  keeps the cuDNN kernel usable for the non-attention layers on GPUs.
- Under tf.distribute the loss is normalised by the GLOBAL number of real steps,
  and gradients are summed across replicas BEFORE the per-tensor clipping, so a
  run on N devices computes the single-device update. (Keras 3.6's own train step
  sums the replicas' mean-loss gradients, N times too large, and its `clipnorm`
  clips each replica's part before that sum; see `train_step`.)
- Mixed precision (`build_model(..., dtype_policy='mixed_bfloat16')`): the RNNs run in
  the low precision, the logits layer, softmax and loss in float32, variables stay
  float32. float16 gets dynamic loss scaling; clipping at clip_norm * scale on the
  scaled gradients equals clipping the true ones (clip_by_norm is scale-equivariant).
"""

import math
from typing import Dict, List, Optional, Sequence

import keras
from keras import ops
import tensorflow as tf

from music_rnn import configs

INPUTS = 'inputs'  # model input key: float32 [batch, time, input_size]
LENGTHS = 'lengths'  # model input key: int [batch], real steps per sequence


def sequence_mask(lengths, max_time):
  """float32 [batch, max_time]: 1 on the first `lengths[b]` steps, 0 on padding."""
  lengths = ops.cast(lengths, 'int32')
  return ops.cast(ops.arange(max_time)[None, :] < lengths[:, None], 'float32')


# --- Attention cell. -----------------------------------------------------------


@keras.saving.register_keras_serializable(package='music_rnn')
class AttentionLSTMCell(keras.layers.Layer):
  """LSTM cell with attention over its last `attn_length` outputs.

  Port of tf.contrib.rnn.AttentionCellWrapper(BasicLSTMCell, attn_length,
  state_is_tuple=True) (https://arxiv.org/abs/1601.06733), which Magenta puts on
  the first layer. At every step:
    x' = W1 [x; a_prev] + b1                      (projection back to input size)
    out_cell, (h, c) = LSTM(x', (h_prev, c_prev))
    s_j = v . tanh(W_k w_j + W_q [c; h] + b_q)     for each stored vector w_j
    a = sum_j softmax(s)_j w_j                    (the new attention vector)
    out = W2 [out_cell; a] + b2                   (the cell output)
    window <- window[1:] + [out]                  (drop the oldest, keep out)
  The window starts as zeros, and the softmax runs over all its slots, zeros
  included, exactly as in the contrib cell.

  State: [h, c, attention vector, window], shapes [B, units], [B, units],
  [B, units], [B, attn_length * units] (the window flattened oldest first, as in
  contrib), so the cell can be stepped one event at a time during generation.
  """

  def __init__(self, units: int, attn_length: int, **kwargs):
    super().__init__(**kwargs)
    if attn_length < 1:
      raise ValueError(f'attn_length must be >= 1, got {attn_length}')
    self.units = int(units)
    self.attn_length = int(attn_length)
    self.state_size = [self.units, self.units, self.units, self.attn_length * self.units]
    self.output_size = self.units
    # Sublayers follow this cell's dtype policy (mixed precision), not the global one.
    dtype = self.dtype_policy
    self.lstm = keras.layers.LSTMCell(self.units, name='lstm', dtype=dtype)
    self.input_projection = None  # sized from the input in build()
    self.query_projection = keras.layers.Dense(self.units, name='attn_query', dtype=dtype)
    self.output_projection = keras.layers.Dense(self.units, name='attn_output_projection',
                                                dtype=dtype)

  def build(self, input_shape):
    input_size = int(input_shape[-1])
    self.input_projection = keras.layers.Dense(input_size, name='input_projection',
                                               dtype=self.dtype_policy)
    self.input_projection.build((None, input_size + self.units))
    self.lstm.build((None, input_size))
    self.query_projection.build((None, 2 * self.units))
    self.output_projection.build((None, 2 * self.units))
    # contrib's 1x1 conv kernel over the stored vectors, and the score vector.
    self.attn_w = self.add_weight(
        shape=(self.units, self.units), initializer='glorot_uniform', name='attn_w')
    self.attn_v = self.add_weight(
        shape=(self.units,), initializer='glorot_uniform', name='attn_v')
    self.built = True

  def call(self, inputs, states, training=False):
    h, c, attns, window = states
    window = ops.reshape(window, (-1, self.attn_length, self.units))
    x = self.input_projection(ops.concatenate([inputs, attns], axis=-1))
    cell_output, (new_h, new_c) = self.lstm(x, [h, c], training=training)
    # contrib queries with the flattened LSTMStateTuple, which is (c, h).
    query = self.query_projection(ops.concatenate([new_c, new_h], axis=-1))
    keys = ops.einsum('blu,uv->blv', window, self.attn_w)
    scores = ops.sum(self.attn_v * ops.tanh(keys + query[:, None, :]), axis=-1)
    weights = ops.softmax(scores, axis=-1)
    new_attns = ops.sum(weights[:, :, None] * window, axis=1)
    output = self.output_projection(ops.concatenate([cell_output, new_attns], axis=-1))
    new_window = ops.concatenate([window[:, 1:], output[:, None, :]], axis=1)
    new_window = ops.reshape(new_window, (-1, self.attn_length * self.units))
    return output, [new_h, new_c, new_attns, new_window]

  def get_initial_state(self, batch_size=None):
    return [ops.zeros((batch_size, size), dtype=self.compute_dtype)
            for size in self.state_size]

  def get_config(self):
    return {**super().get_config(), 'units': self.units, 'attn_length': self.attn_length}


# --- Metrics. ------------------------------------------------------------------


STAT_NAMES = ('xent', 'steps', 'correct', 'events', 'correct_events', 'no_events',
              'correct_no_events')


def example_stats(labels, logits, mask, no_event_label: int) -> Dict[str, tf.Tensor]:
  """Per-sequence sums over its real steps, float32 [B] each (keys: STAT_NAMES).

  labels int [B, T], logits [B, T, C], mask [B, T] (1 on real steps). Every metric is a
  ratio of two of these sums, so the Trainer (batch sums) and the exported `evaluate`
  signature (one row per example, summed by TFMA) compute the same numbers.
  """
  labels = ops.cast(labels, 'int32')
  mask = ops.cast(mask, 'float32')
  xent = ops.sparse_categorical_crossentropy(labels, ops.cast(logits, 'float32'),
                                             from_logits=True)
  correct = ops.cast(ops.equal(ops.cast(ops.argmax(logits, axis=-1), 'int32'), labels),
                     'float32')
  is_no_event = ops.cast(ops.equal(labels, no_event_label), 'float32') * mask
  is_event = mask - is_no_event
  return {
      'xent': ops.sum(xent * mask, axis=1),
      'steps': ops.sum(mask, axis=1),
      'correct': ops.sum(correct * mask, axis=1),
      'events': ops.sum(is_event, axis=1),
      'correct_events': ops.sum(correct * is_event, axis=1),
      'no_events': ops.sum(is_no_event, axis=1),
      'correct_no_events': ops.sum(correct * is_no_event, axis=1),
  }


def sequence_stats(labels, logits, mask, no_event_label: int) -> Dict[str, tf.Tensor]:
  """`example_stats` summed over the batch: scalars."""
  return {k: ops.sum(v) for k, v in example_stats(labels, logits, mask,
                                                  no_event_label).items()}


class _SequenceRatio(keras.metrics.Metric):
  """Streaming sum(numerator) / sum(denominator) over real steps; NaN if empty.

  `update_state(labels, logits, sample_weight=mask)` is the usual Keras API;
  the model's train/test steps call `update_from_stats` with sums that are
  already reduced over replicas, because Keras 3.6 metric variables are not
  synchronised across replicas.
  """
  numerator = ''
  denominator = ''
  exponentiate = False  # Perplexity: exp of the ratio

  def __init__(self, name: str, no_event_label: int = 0, **kwargs):
    super().__init__(name=name, **kwargs)
    self.no_event_label = no_event_label
    self.total = self.add_variable(shape=(), initializer='zeros', name='total')
    self.count = self.add_variable(shape=(), initializer='zeros', name='count')

  def update_state(self, y_true, y_pred, sample_weight=None):
    if sample_weight is None:
      sample_weight = ops.ones(ops.shape(y_true), 'float32')
    self.update_from_stats(sequence_stats(y_true, y_pred, sample_weight, self.no_event_label))

  def update_from_stats(self, stats: Dict[str, tf.Tensor]) -> None:
    self.total.assign_add(stats[self.numerator])
    self.count.assign_add(stats[self.denominator])

  def ratio(self):
    return ops.where(self.count > 0, self.total / ops.maximum(self.count, 1.0), float('nan'))

  def result(self):
    return ops.exp(self.ratio()) if self.exponentiate else self.ratio()

  def get_config(self):
    return {'name': self.name, 'no_event_label': self.no_event_label}


class SequenceLoss(_SequenceRatio):
  """Mean softmax cross entropy per real step (Magenta's `loss`)."""
  numerator, denominator = 'xent', 'steps'

  def __init__(self, name='loss', **kwargs):
    super().__init__(name=name, **kwargs)


class Perplexity(_SequenceRatio):
  """exp(loss)."""
  numerator, denominator = 'xent', 'steps'
  exponentiate = True

  def __init__(self, name='perplexity', **kwargs):
    super().__init__(name=name, **kwargs)


class SequenceAccuracy(_SequenceRatio):
  """Fraction of real steps whose argmax is the label."""
  numerator, denominator = 'correct', 'steps'

  def __init__(self, name='accuracy', **kwargs):
    super().__init__(name=name, **kwargs)


class EventAccuracy(_SequenceRatio):
  """Accuracy on the real steps whose label is not the no-event label."""
  numerator, denominator = 'correct_events', 'events'

  def __init__(self, name='event_accuracy', **kwargs):
    super().__init__(name=name, **kwargs)


class NoEventAccuracy(_SequenceRatio):
  """Accuracy on the real steps whose label is the no-event label."""
  numerator, denominator = 'correct_no_events', 'no_events'

  def __init__(self, name='no_event_accuracy', **kwargs):
    super().__init__(name=name, **kwargs)


METRIC_NAMES = ('loss', 'perplexity', 'accuracy', 'event_accuracy', 'no_event_accuracy')


METRIC_CLASSES = dict(zip(METRIC_NAMES, (
    SequenceLoss, Perplexity, SequenceAccuracy, EventAccuracy, NoEventAccuracy)))


def make_metrics(no_event_label: int) -> List[_SequenceRatio]:
  """The five metrics, in METRIC_NAMES order."""
  return [cls(no_event_label=no_event_label) for cls in METRIC_CLASSES.values()]


def metric_from_sums(name: str, sums: Dict[str, float]) -> float:
  """A metric's value from STAT_NAMES sums (outside Keras, e.g. in TFMA); NaN if empty."""
  cls = METRIC_CLASSES[name]
  count = float(sums.get(cls.denominator, 0.0))
  if count <= 0:
    return float('nan')
  ratio = float(sums[cls.numerator]) / count
  return math.exp(ratio) if cls.exponentiate else ratio


def sequence_loss(labels, logits, mask):
  """Sum of the cross entropy over real steps / number of real steps."""
  stats = sequence_stats(labels, logits, mask, no_event_label=0)
  return stats['xent'] / ops.maximum(stats['steps'], 1.0)


def clip_gradients(grads: Sequence, clip_norm: float) -> List:
  """Clips every gradient tensor to L2 norm <= clip_norm, independently.

  tf_slim's clip_gradient_norms, i.e. Keras's `clipnorm` (per variable), not
  `global_clipnorm`.
  """
  return [None if g is None else tf.clip_by_norm(g, clip_norm) for g in grads]


# --- Model. --------------------------------------------------------------------


def _replica_sum(values):
  """Sums a (nested) value over replicas; identity with a single replica."""
  ctx = tf.distribute.get_replica_context()
  if ctx is None or ctx.num_replicas_in_sync == 1:
    return values
  return ctx.all_reduce(tf.distribute.ReduceOp.SUM, values)


class EventSequenceRnn(keras.Model):
  """Inputs {'inputs': [B, T, input_size], 'lengths': [B]} -> logits [B, T, num_classes].

  Steps at or beyond `lengths[b]` are padding: the RNNs carry their state over
  them and the loss/metrics ignore them. Fit it on (inputs dict, labels [B, T])
  batches; the train/test steps below implement Magenta's objective exactly,
  on one device or many.
  """

  def __init__(self, input_size: int, num_classes: int, rnn_layer_sizes: Sequence[int],
               dropout_keep_prob: float, attn_length: int, clip_norm: float,
               no_event_label: int = 0, **kwargs):
    super().__init__(**kwargs)
    self.input_size = int(input_size)
    self.num_classes = int(num_classes)
    self.rnn_layer_sizes = tuple(int(s) for s in rnn_layer_sizes)
    self.dropout_keep_prob = float(dropout_keep_prob)
    self.attn_length = int(attn_length)
    self.clip_norm = float(clip_norm)
    self.no_event_label = int(no_event_label)
    self.rnn_layers = []
    self.dropouts = []
    dtype = self.dtype_policy  # `dtype=` kwarg: e.g. 'mixed_bfloat16'; default float32
    for i, size in enumerate(self.rnn_layer_sizes):
      if i == 0 and self.attn_length:
        # Named, so variable paths do not depend on how many models the process built.
        cell = AttentionLSTMCell(size, self.attn_length, dtype=dtype, name='attention_lstm_cell')
        layer = keras.layers.RNN(cell, return_sequences=True, name=f'rnn_{i}', dtype=dtype)
      else:
        layer = keras.layers.LSTM(size, return_sequences=True, name=f'rnn_{i}', dtype=dtype)
      self.rnn_layers.append(layer)
      self.dropouts.append(keras.layers.Dropout(1.0 - self.dropout_keep_prob,
                                                name=f'dropout_{i}', dtype=dtype))
    # float32 logits under any policy: a low-precision softmax/loss loses the tail.
    self.logits_layer = keras.layers.Dense(self.num_classes, name='logits', dtype='float32')
    self.sequence_metrics = make_metrics(self.no_event_label)

  @property
  def metrics(self):
    # Only ours: Keras's own loss tracker would not be replica-exact.
    return list(self.sequence_metrics)

  def call(self, inputs, training=False):
    x = ops.cast(inputs[INPUTS], self.compute_dtype)
    mask = ops.cast(sequence_mask(inputs[LENGTHS], ops.shape(x)[1]), 'bool')
    for rnn, dropout in zip(self.rnn_layers, self.dropouts):
      x = rnn(x, mask=mask, training=training)
      x = dropout(x, training=training)
    return self.logits_layer(x)

  # --- One step at a time (generation). ---

  def initial_state(self, batch_size) -> List[List[tf.Tensor]]:
    """Zero state, one list per layer: [h, c] or the attention cell's 4 tensors."""
    states = []
    for layer in self.rnn_layers:
      if isinstance(layer.cell, AttentionLSTMCell):
        states.append(layer.cell.get_initial_state(batch_size))
      else:
        states.append([ops.zeros((batch_size, layer.cell.units),
                                 dtype=layer.cell.compute_dtype)] * 2)
    return states

  def step(self, inputs, states):
    """One event: inputs [B, input_size], states -> (logits [B, C], new states).

    Inference only (no dropout); running it over a sequence equals `call`.
    """
    x = ops.cast(inputs, self.compute_dtype)
    new_states = []
    for layer, state in zip(self.rnn_layers, states):
      x, state = layer.cell(x, list(state), training=False)
      new_states.append(list(state))
    return self.logits_layer(x), new_states

  # --- Training. ---

  def _split(self, data):
    x, labels = data[0], data[1]
    labels = ops.cast(labels, 'int32')
    mask = sequence_mask(x[LENGTHS], ops.shape(labels)[1])
    return x, labels, mask

  def _update_metrics(self, labels, logits, mask):
    stats = sequence_stats(labels, tf.stop_gradient(logits), mask, self.no_event_label)
    stats = _replica_sum(stats)
    for metric in self.sequence_metrics:
      metric.update_from_stats(stats)
    return {m.name: m.result() for m in self.sequence_metrics}

  def train_step(self, data):
    x, labels, mask = self._split(data)
    global_steps = _replica_sum(ops.sum(mask))
    with tf.GradientTape() as tape:
      logits = self(x, training=True)
      xent = ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)
      # This replica's share of sum(xent) / (real steps in the global batch).
      loss = ops.sum(xent * mask) / ops.maximum(global_steps, 1.0)
      # float16: scaled up so small gradients survive; the optimizer unscales.
      scaled_loss = self.optimizer.scale_loss(loss)
    variables = self.trainable_variables
    grads = tape.gradient(scaled_loss, variables)
    # Clip the full-batch gradient, not each replica's part of it.
    grads = _replica_sum(grads)
    grads = clip_gradients(grads, self.clip_norm * self._loss_scale())
    num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if num_replicas > 1:
      # The Keras optimizer sums gradients over replicas again.
      grads = [None if g is None else g / num_replicas for g in grads]
    self.optimizer.apply(grads, variables)
    return self._update_metrics(labels, logits, mask)

  def _loss_scale(self):
    """The factor optimizer.scale_loss applied (1 without loss scaling)."""
    opt = self.optimizer
    if isinstance(opt, keras.optimizers.LossScaleOptimizer):
      return ops.cast(opt.dynamic_scale if opt.built else opt.initial_scale, 'float32')
    return 1.0

  def test_step(self, data):
    x, labels, mask = self._split(data)
    logits = self(x, training=False)
    return self._update_metrics(labels, logits, mask)

  def get_config(self):
    return {
        'input_size': self.input_size, 'num_classes': self.num_classes,
        'rnn_layer_sizes': list(self.rnn_layer_sizes),
        'dropout_keep_prob': self.dropout_keep_prob, 'attn_length': self.attn_length,
        'clip_norm': self.clip_norm, 'no_event_label': self.no_event_label,
    }


def build_model(config: configs.ModelConfig, hparams: configs.HParams,
                dtype_policy: Optional[str] = None) -> EventSequenceRnn:
  """Builds and compiles the model; call inside a strategy scope to distribute it.

  Variables, optimizer slots and metric state are all created here, in the
  caller's tf.distribute scope. Gradient clipping is done by the model's
  train_step (see the module docstring), so the optimizer is a plain Adam
  (wrapped in a LossScaleOptimizer by compile() under 'mixed_float16').
  `dtype_policy`: None (float32), 'mixed_float16' or 'mixed_bfloat16'.
  """
  hparams.validate()
  model = EventSequenceRnn(
      input_size=config.input_size,
      num_classes=config.num_classes,
      rnn_layer_sizes=hparams.rnn_layer_sizes,
      dropout_keep_prob=hparams.dropout_keep_prob,
      attn_length=hparams.attn_length,
      clip_norm=hparams.clip_norm,
      no_event_label=config.no_event_label,
      name=f'{config.name}_rnn',
      dtype=dtype_policy)
  model({INPUTS: ops.zeros((1, 1, config.input_size)), LENGTHS: ops.ones((1,), 'int32')})
  # XLA off: cuDNN LSTM kernels and cross-replica all-reduces are not XLA ops.
  model.compile(optimizer=keras.optimizers.Adam(learning_rate=hparams.learning_rate),
                jit_compile=False)
  model.optimizer.build(model.trainable_variables)
  return model
