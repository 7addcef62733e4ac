"""The event-sequence RNN (Magenta's events_rnn_graph) as a Keras 3 model.

Magenta builds a MultiRNNCell of BasicLSTMCells, wraps the first one in
tf.contrib's AttentionCellWrapper when `attn_length > 0`, applies
DropoutWrapper(output_keep_prob) to every layer, and puts a linear layer on top.
The loss is the softmax cross entropy summed over the real (unpadded) steps of
the batch and divided by their number; the metrics are perplexity = exp(loss),
accuracy, and accuracy restricted to steps whose label is / is not the
no-event label. Gradients are clipped tensor by tensor (tf_slim's
`clip_gradient_norm`) before Adam.

Inputs are compact (music_rnn/compact.py): per step the one-hot column indices and a
bit field; the model gathers kernel rows instead of multiplying by one-hot rows, runs
every input-side matmul for all steps outside the recurrent loop, and uses one step
implementation (`lstm_step`, `attention_step`, `rnn_step`) for training and for
generation (generation.py). See EventSequenceRnn.

Differences from Magenta, all deliberate:
- Keras LSTM gates: forget bias is initialised to 1 (`unit_forget_bias`) rather
  than a constant 1 added at every step; equivalent at initialisation, and it
  keeps the cuDNN kernel usable for the non-attention layers on GPUs.
- Under tf.distribute the loss is normalised by the GLOBAL number of real steps,
  and gradients are summed across replicas BEFORE the per-tensor clipping, so a
  run on N devices computes the single-device update. (Keras 3.6's own train step
  sums the replicas' mean-loss gradients, N times too large, and its `clipnorm`
  clips each replica's part before that sum; see `train_step`.)
- A step whose loss or gradients are not finite is skipped, and the first such
  step is recorded in `model.first_nonfinite_step` (no per-step host read).
- Mixed precision (`build_model(..., dtype_policy='mixed_bfloat16')`): the RNNs run in
  the low precision, the logits layer, softmax and loss in float32, variables stay
  float32. float16 gets dynamic loss scaling; clipping at clip_norm * scale on the
  scaled gradients equals clipping the true ones (clip_by_norm is scale-equivariant).
"""

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

import keras
from keras import ops
import tensorflow as tf

from music_rnn import compact
from music_rnn import configs

HOT = 'hot'  # model input key: int [batch, time, H], one-hot column indices (compact.py)
FLAGS = 'flags'  # model input key: int64 [batch, time], dense-column bits (compact.py)
LENGTHS = 'lengths'  # model input key: int [batch], real steps per sequence
INPUTS = 'inputs'  # full float rows [batch, time, input_size]: reference_call only


def sequence_mask(lengths, max_time):
  """float32 [batch, max_time]: 1 on the first `lengths[b]` steps, 0 on padding."""
  lengths = ops.cast(lengths, 'int32')
  return ops.cast(ops.arange(max_time)[None, :] < lengths[:, None], 'float32')


# Input kernels start at glorot_uniform x sqrt(10) (variance x 10): glorot counts all
# 500-odd columns of a one-hot input as fan-in, but at most a handful are non-zero, so
# the input reaches the output ~50x too weakly and the model sits at the label-frequency
# table for hundreds of steps. Measured on MMA drum grooves (drum_kit, [64, 64], batch 32,
# lr 0.005, dropout 0.5): eval loss after 300 steps 1.80 with this, 2.44 (the unigram
# table: 2.45) without. Recurrent, attention, projection-out and logits kernels keep
# Keras's defaults. Magenta's graph (glorot everywhere) shows the same plateau.
INPUT_KERNEL_VARIANCE_SCALE = 10.0


def input_kernel_initializer():
  return keras.initializers.VarianceScaling(INPUT_KERNEL_VARIANCE_SCALE, 'fan_avg', 'uniform')


# --- Attention cell. -----------------------------------------------------------


@keras.saving.register_keras_serializable(package='music_rnn')
class AttentionLSTMCell(keras.layers.Layer):
  """LSTM cell with attention over its last `attn_length` outputs (reference formulation).

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

  The model itself runs `attention_step` (the same math, reordered for speed); this
  Keras cell is the straightforward formulation `reference_call` and the tests check
  it against.

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
    self.lstm = keras.layers.LSTMCell(self.units, name='lstm', dtype=dtype,
                                      kernel_initializer=input_kernel_initializer())
    self.input_projection = None  # sized from the input in build()
    self.query_projection = keras.layers.Dense(self.units, name='attn_query', dtype=dtype)
    self.output_projection = keras.layers.Dense(self.units, name='attn_output_projection',
                                                dtype=dtype)

  def build(self, input_shape):
    input_size = int(input_shape[-1])
    self.input_projection = keras.layers.Dense(input_size, name='input_projection',
                                               dtype=self.dtype_policy,
                                               kernel_initializer=input_kernel_initializer())
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


# --- The recurrent core: one step implementation, for training and generation. -------
#
# Weights for a step ("step weights") are plain tensors derived from the layers'
# variables by `layer_step_weights`: computed per call from the live variables when
# training (so gradients reach the original variables), once at export for generation.
# Per layer a dict:
#   first layer: 'hot' [num_hot + 1, 4U] (input kernel rows of the one-hot columns and a
#     zero row at index num_hot), 'dense' [D, 4U], 'bias' [4U], 'recurrent' [U, 4U], or
#     for the attention cell [2U, 4U] acting on [attention vector; h], plus 'query',
#     'query_bias', 'attn_w', 'attn_v', 'out', 'out_bias';
#   other layers: 'kernel' [U_in, 4U], 'recurrent' [U, 4U], 'bias' [4U].
# State: per layer (h, c); the attention layer also (attention vector [B, U],
# window [B, L, U] oldest first, keys [B, L, U] = window @ attn_w).


def lstm_gates(z, c):
  """Keras LSTMCell's gates (order i, f, c, o) on the summed pre-activations z."""
  i, f, g, o = tf.split(z, 4, axis=-1)
  c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
  return tf.sigmoid(o) * tf.tanh(c), c


def lstm_cell(zx, state, weights):
  """lstm_step, also returning what the backward pass keeps: (z,)."""
  h, c = state
  z = zx + tf.matmul(h, weights['recurrent'])
  h, c = lstm_gates(z, c)
  return h, (h, c), (z,)


def attention_cell(zx, state, weights, push=None):
  """attention_step, also returning what the backward pass keeps: (z, query, softmax
  weights). `push(window, vector)` stores the new output and key (default `_push`:
  oldest first); the training loop writes them in place instead (`_ring_writer`): the
  attention read is the same whatever the slots' order."""
  push = push or _push
  h, c, attn, window, keys = state
  w = weights
  z = zx + tf.matmul(tf.concat([attn, h], 1), w['recurrent'])
  h, c = lstm_gates(z, c)
  query = tf.matmul(tf.concat([c, h], 1), w['query']) + w['query_bias']
  scores = tf.reduce_sum(w['attn_v'] * tf.tanh(keys + query[:, tf.newaxis]), 2)
  probs = tf.nn.softmax(scores)
  attn = tf.einsum('bl,blu->bu', probs, window)
  out = tf.matmul(tf.concat([h, attn], 1), w['out']) + w['out_bias']
  window = push(window, out)
  keys = push(keys, tf.matmul(out, w['attn_w']))
  return out, (h, c, attn, window, keys), (z, query, probs)


def _push(window, vector):
  """window [B, L, N] oldest first, with `vector` [B, N] in and the oldest out."""
  return tf.concat([window[:, 1:], vector[:, tf.newaxis]], 1)


def _ring_writer(t, length):
  """push for attention_cell at step t of a training loop: the window is a ring, the
  vector goes to slot t mod L (where step t - L's was), in place under XLA."""
  def write(window, vector):
    rows = tf.range(tf.shape(vector)[0])
    slots = tf.fill(tf.shape(rows), tf.math.floormod(t, length))
    return tf.tensor_scatter_nd_update(window, tf.stack([rows, slots], 1), vector)
  return write


def lstm_step(zx, state, weights):
  """zx = x W + b for this step [B, 4U]; state (h, c) -> (output, new state)."""
  return lstm_cell(zx, state, weights)[:2]


def attention_step(zx, state, weights):
  """Magenta's AttentionCellWrapper(BasicLSTMCell) step (see AttentionLSTMCell).

  zx: x (Wp_x Wx) + bp Wx + b for this step, the input projection folded in, so only
  the attention vector's part, a (Wp_a Wx), is left for the loop. Keys of the window
  are carried: each output is multiplied by attn_w once, when it enters the window.
  """
  return attention_cell(zx, state, weights)[:2]


def is_attention(weights) -> bool:
  return 'attn_w' in weights


def layer_step(weights):
  return attention_step if is_attention(weights) else lstm_step


def input_preactivations(weights, hot, dense):
  """First layer's x W + b from (hot [..., H], dense [..., D]): gathered kernel rows.

  Exactly one_hot(hot) W + dense W_dense + b: index num_hot reads the zero row.
  Works for one step ([B, H], [B, D]) and for all steps ([B, T, H], [B, T, D]).
  """
  rows = tf.gather(weights['hot'], hot)  # [..., H, 4U]
  z = rows[..., 0, :] if rows.shape[-2] == 1 else tf.reduce_sum(rows, -2)
  if dense.shape[-1]:
    z += _matmul_last(tf.cast(dense, z.dtype), weights['dense'])
  return z + weights['bias']


def _matmul_last(x, kernel):
  """x [..., K] @ kernel [K, N] as one 2-D matmul."""
  if x.shape.rank == 2:
    return tf.matmul(x, kernel)
  shape = tf.shape(x)
  out = tf.matmul(tf.reshape(x, [-1, shape[-1]]), kernel)
  return tf.reshape(out, tf.concat([shape[:-1], tf.shape(kernel)[-1:]], 0))


def layer_preactivations(weights, x):
  """A later layer's x W + b for all steps at once: x [B, T, U_in] -> [B, T, 4U]."""
  return _matmul_last(x, weights['kernel']) + weights['bias']


def zero_layer_state(weights, batch, dtype):
  """(h, c) zeros, plus (attention, window, keys) zeros for the attention layer."""
  units = weights['recurrent'].shape[-1] // 4
  state = [tf.zeros([batch, units], dtype)] * 2
  if is_attention(weights):
    length = weights['attn_length']
    state += [tf.zeros([batch, units], dtype), tf.zeros([batch, length, units], dtype),
              tf.zeros([batch, length, units], dtype)]
  return tuple(state)


# --- Training: the layer loops, with a hand-written backward pass. ----------------
#
# Autodiff of a tf.while_loop pushes every intermediate the backward needs onto a stack
# at every step (for attention the whole window, its keys and tanh(keys + query), each
# [B, L, U]) and accumulates the weight gradients step by step in small matmuls. Here
# the forward loop keeps only per-step vectors (pre-activations z, cell c, output,
# attention vector, query, softmax weights); the backward loop carries the state
# gradients and rebuilds the window from the kept outputs; every weight gradient is one
# matmul over all steps after it. The window and keys are a ring in both loops (step
# t's output in slot t mod L, written in place; softmax weights are kept in slot
# order): no copy of the [B, L, U] window per step (measured: the attention layer's
# forward + backward at 256 units, batch 128 takes ~19% less CPU time; 5% at 64 units,
# batch 32). All tensors below are time-major [T, B, ...].

# The loop's own weights (the rest of a layer's weights act outside it, through zx).
LOOP_WEIGHTS = ('recurrent', 'query', 'query_bias', 'attn_w', 'attn_v', 'out', 'out_bias')


def _loop(body, inputs, carry, shapes, reverse=False):
  """carry, outputs_t = body(t, inputs_t, carry) for every step (last to first if
  `reverse`) in one tf.while_loop. inputs: time-major tensors; shapes: each output's
  per-step shape. Returns (final carry, time-major stacked outputs)."""
  num_steps = tf.shape(inputs[0])[0]
  reads = [tf.TensorArray(x.dtype, size=num_steps, element_shape=x.shape[1:]).unstack(x)
           for x in inputs]
  writes = [tf.TensorArray(inputs[0].dtype, size=num_steps, element_shape=shape)
            for shape in shapes]

  def step(i, carry, writes):
    t = num_steps - 1 - i if reverse else i
    carry, outputs = body(t, [r.read(t) for r in reads], carry)
    return i + 1, carry, [w.write(t, o) for w, o in zip(writes, outputs)]

  # parallel_iterations (as Keras's RNN loop): lets TF overlap independent work of
  # nearby iterations; XLA ignores it.
  _, carry, writes = tf.while_loop(lambda i, *_: i < num_steps, step,
                                   (tf.constant(0), carry, writes),
                                   maximum_iterations=num_steps, parallel_iterations=32)
  return carry, [w.stack() for w in writes]


def _shift_down(x):
  """x_{t-1} for every t (zeros at t = 0): [T, ...] -> [T, ...]."""
  return tf.concat([tf.zeros_like(x[:1]), x[:-1]], 0)


def _lagged(x, lag):
  """x_{t-lag} for every t (zeros for t < lag)."""
  return tf.pad(x, [[lag, 0]] + [[0, 0]] * (x.shape.rank - 1))[:tf.shape(x)[0]]


def _outer_sum(a, b):
  """sum over t and b of a[t, b]^T b[t, b]: [T, B, M], [T, B, N] -> [M, N], one matmul."""
  return tf.matmul(tf.reshape(a, [-1, a.shape[-1]]), tf.reshape(b, [-1, b.shape[-1]]),
                   transpose_a=True)


def _split2(x):
  return tf.split(x, 2, axis=-1)


def layer_forward(weights, zx):
  """The layer over all steps from the zero state: (outputs [T, B, U], kept tensors)."""
  attention = is_attention(weights)
  cell = attention_cell if attention else lstm_cell
  units = weights['recurrent'].shape[-1] // 4
  batch = zx.shape[1]
  shapes = [[batch, units]] * 2 + [[batch, 4 * units]]  # out, c, z
  if attention:  # h, attention vector, query, softmax weights
    shapes += [[batch, units]] * 3 + [[batch, weights['attn_length']]]

  def body(t, inputs, state):
    if attention:  # the window as a ring: no copy of it per step
      out, state, (z, *rest) = cell(inputs[0], state, weights,
                                    push=_ring_writer(t, weights['attn_length']))
    else:
      out, state, (z, *rest) = cell(inputs[0], state, weights)
    kept = [out, state[1], z] + ([state[0], state[2]] + rest if attention else [])
    return state, kept

  state = zero_layer_state(weights, tf.shape(zx)[1], zx.dtype)
  state, kept = _loop(body, [zx], state, shapes)
  if attention:
    kept += list(state[3:])  # the final window and keys, for the backward to rewind
  return kept[0], kept


def _gate_factors(z, c):
  """Per-step factors of the LSTM backward, from the kept z and c (all steps at once):
  dz = [dc, dc, dc, dh] * factors, dc += dh * out_factor, dc_prev = dc * forget."""
  i, f, g, o = tf.split(z, 4, axis=-1)
  i, f, g, o = tf.sigmoid(i), tf.sigmoid(f), tf.tanh(g), tf.sigmoid(o)
  tanh_c = tf.tanh(c)
  factors = tf.concat([g * i * (1 - i), _shift_down(c) * f * (1 - f), i * (1 - g * g),
                       tanh_c * o * (1 - o)], -1)
  return factors, o * (1 - tanh_c * tanh_c), f


def _lstm_dz(dh, dc, factors, out_factor):
  """dz_t and dc_t from the step's full dh and the dc coming back from step t + 1."""
  dc = dc + dh * out_factor
  return tf.concat([dc, dc, dc, dh], -1) * factors, dc


def lstm_backward(weights, kept, d_outputs):
  """Gradients of a plain LSTM layer's outputs: (d zx, {'recurrent': ...})."""
  outputs, c, z = kept
  recurrent = weights['recurrent']

  def body(t, inputs, carry):
    d_out, factors, out_factor, forget = inputs
    del t  # unused
    dh, dc = carry
    dz, dc = _lstm_dz(d_out + dh, dc, factors, out_factor)
    return (tf.matmul(dz, recurrent, transpose_b=True), dc * forget), [dz]

  zeros = tf.zeros_like(d_outputs[0])
  _, (dz,) = _loop(body, [d_outputs, *_gate_factors(z, c)], (zeros, zeros),
                   [z.shape[1:]], reverse=True)
  return dz, {'recurrent': _outer_sum(_shift_down(outputs), dz)}


def _attention_scores_backward(weights, d_attn, probs, query, window, keys):
  """Gradients of attn = softmax(v . tanh(keys + query)) @ window w.r.t. window slots
  [B, L, U], keys [B, L, U] and query [B, U], and the step's part of d attn_v."""
  tanh = tf.tanh(keys + query[:, tf.newaxis])
  d_probs = tf.einsum('blu,bu->bl', window, d_attn)
  d_scores = probs * (d_probs - tf.reduce_sum(probs * d_probs, 1, keepdims=True))
  d_keys = d_scores[..., tf.newaxis] * weights['attn_v'] * (1 - tanh * tanh)
  d_window = probs[..., tf.newaxis] * d_attn[:, tf.newaxis]
  d_v = tf.reduce_sum(d_scores[..., tf.newaxis] * tanh, [0, 1])
  return d_window, d_keys, tf.reduce_sum(d_keys, 1), d_v


def _attention_backward_loop(weights, kept, d_outputs):
  """The reverse loop of attention_backward: per step dz, d query, d out (all of it:
  the loss's and the later steps' attention reads) and the keys' gradient."""
  outputs, c, z, _, _, query, probs, window, keys = kept
  w = weights
  length = w['attn_length']

  def body(t, inputs, carry):
    d_out, factors, out_factor, forget, query, probs, old_out, old_key = inputs
    dh, dc, d_attn, d_window, d_keys, d_v, window, keys = carry
    # The window is the forward's ring: step t's output is in slot t mod L, and got
    # its window gradients there from the L steps after it.
    slot = tf.math.floormod(t, length)
    d_key = tf.gather(d_keys, slot, axis=1)
    d_out += (tf.gather(d_window, slot, axis=1)
              + tf.matmul(d_key, w['attn_w'], transpose_b=True))
    dh_out, d_attn_out = _split2(tf.matmul(d_out, w['out'], transpose_b=True))
    # The window as step t saw it: the output L steps back returns to its slot.
    write = _ring_writer(t, length)
    window, keys = write(window, old_out), write(keys, old_key)
    step_window, step_keys, d_query, d_v_step = _attention_scores_backward(
        w, d_attn + d_attn_out, probs, query, window, keys)
    dc_query, dh_query = _split2(tf.matmul(d_query, w['query'], transpose_b=True))
    dz, dc = _lstm_dz(dh + dh_out + dh_query, dc + dc_query, factors, out_factor)
    d_attn, dh = _split2(tf.matmul(dz, w['recurrent'], transpose_b=True))
    # That slot's gradient starts afresh for the output L steps back.
    keep = 1 - tf.one_hot(slot, length, dtype=d_out.dtype)[:, None]
    carry = (dh, dc * forget, d_attn, d_window * keep + step_window,
             d_keys * keep + step_keys, d_v + tf.cast(d_v_step, tf.float32),
             window, keys)
    return carry, [dz, d_query, d_out, d_key]

  zeros = tf.zeros_like(d_outputs[0])
  # d attn_v sums over every step: in float32 also under mixed precision.
  carry = (zeros, zeros, zeros, tf.zeros_like(window), tf.zeros_like(keys),
           tf.zeros(w['attn_v'].shape, tf.float32), window, keys)
  inputs = [d_outputs, *_gate_factors(z, c), query, probs, _lagged(outputs, length),
            _lagged(_matmul_last(outputs, w['attn_w']), length)]
  shapes = [z.shape[1:]] + [outputs.shape[1:]] * 3
  carry, grads = _loop(body, inputs, carry, shapes, reverse=True)
  return grads, carry[5]


def attention_backward(weights, kept, d_outputs):
  """Gradients of the attention layer's outputs: (d zx, loop weights' gradients)."""
  outputs, c, _, h, attn = kept[:5]
  (dz, d_query, d_out, d_key), d_v = _attention_backward_loop(weights, kept, d_outputs)
  return dz, {
      'recurrent': _outer_sum(_shift_down(tf.concat([attn, h], -1)), dz),
      'query': _outer_sum(tf.concat([c, h], -1), d_query),
      'query_bias': tf.reduce_sum(d_query, [0, 1]),
      'out': _outer_sum(tf.concat([h, attn], -1), d_out),
      'out_bias': tf.reduce_sum(d_out, [0, 1]),
      'attn_w': _outer_sum(outputs, d_key),
      'attn_v': tf.cast(d_v, dz.dtype),
  }


def _layer_backward(weights, kept, d_outputs):
  backward = attention_backward if is_attention(weights) else lstm_backward
  return backward(weights, kept, d_outputs)


@tf.function(jit_compile=True, autograph=False)
def _xla_forward(weights, zx):
  return layer_forward(weights, zx)


@tf.function(jit_compile=True, autograph=False)
def _xla_backward(weights, kept, d_outputs):
  return _layer_backward(weights, kept, d_outputs)


def run_layer(weights, zx, jit_compile: bool = False, differentiable: bool = True):
  """Runs a layer over zx [B, T, 4U] from the zero state: outputs [B, T, U].

  Forward: a tf.while_loop whose iterations are the layer's step (`lstm_cell`,
  `attention_cell`: the recurrent matmul(s) and gates only); backward: the hand-written
  loop above. `jit_compile`: forward and backward each as an XLA cluster, for a train
  step that is not XLA-compiled itself. `differentiable=False` (inference): the forward
  loop alone, without the custom gradient, which a SavedModel cannot hold (loading an
  export that traced it warns of "unsaved custom gradients"); gradients, if asked for,
  are then TensorFlow's own through the loop.
  """
  forward, backward = ((_xla_forward, _xla_backward) if jit_compile else
                       (layer_forward, _layer_backward))
  if not differentiable:
    return tf.transpose(forward(weights, tf.transpose(zx, [1, 0, 2]))[0], [1, 0, 2])
  names = [k for k in LOOP_WEIGHTS if k in weights]
  static = {k: v for k, v in weights.items() if not isinstance(v, tf.Tensor)}

  @tf.custom_gradient
  def layer(zx, *tensors):
    # stop_gradient: no tape records the loops themselves (it would make TF keep their
    # intermediates for autodiff); `grad` is the gradient.
    w = {**static, **{k: tf.stop_gradient(v) for k, v in zip(names, tensors)}}
    outputs, kept = forward(w, tf.transpose(tf.stop_gradient(zx), [1, 0, 2]))

    def grad(d_outputs):
      dz, d_w = backward(w, kept, tf.transpose(d_outputs, [1, 0, 2]))
      return [tf.transpose(dz, [1, 0, 2])] + [d_w[k] for k in names]

    return tf.transpose(outputs, [1, 0, 2]), grad

  return layer(zx, *[weights[k] for k in names])


def rnn_step(weights, hot, dense, state):
  """One event through all layers and the logits: (logits [B, C] float32, new state).

  weights: `EventSequenceRnn.step_weights()`; hot [B, H], dense [B, D]; state: the flat
  tuple of all layers' states (`EventSequenceRnn.initial_state`).
  """
  state, new_state = list(state), []
  x = None
  for i, layer in enumerate(weights['layers']):
    zx = (input_preactivations(layer, hot, dense) if i == 0 else
          layer_preactivations(layer, x))
    size = 5 if is_attention(layer) else 2
    x, layer_state = layer_step(layer)(zx, tuple(state[:size]), layer)
    state = state[size:]
    new_state += list(layer_state)
  kernel, bias = weights['logits']
  return tf.matmul(tf.cast(x, kernel.dtype), kernel) + bias, tuple(new_state)


def layer_step_weights(layer, first: bool, num_hot: int, dtype) -> dict:
  """A Keras layer's step weights (see above), from its live variables, in `dtype`."""
  cell = layer.cell
  cast = lambda v: tf.cast(tf.convert_to_tensor(v), dtype)  # noqa: E731
  if isinstance(cell, AttentionLSTMCell):
    wp, bp = cast(cell.input_projection.kernel), cast(cell.input_projection.bias)
    wx, b = cast(cell.lstm.kernel), cast(cell.lstm.bias)
    d = wp.shape[1]  # input size
    # ([x; a] Wp + bp) Wx + b = x (Wp_x Wx) + a (Wp_a Wx) + (bp Wx + b)
    w_in = tf.matmul(wp[:d], wx)
    weights = dict(
        hot=tf.concat([w_in[:num_hot], tf.zeros_like(w_in[:1])], 0), dense=w_in[num_hot:],
        bias=tf.linalg.matvec(wx, bp, transpose_a=True) + b,
        recurrent=tf.concat([tf.matmul(wp[d:], wx), cast(cell.lstm.recurrent_kernel)], 0),
        query=cast(cell.query_projection.kernel), query_bias=cast(cell.query_projection.bias),
        attn_w=cast(cell.attn_w), attn_v=cast(cell.attn_v),
        out=cast(cell.output_projection.kernel), out_bias=cast(cell.output_projection.bias))
    weights['attn_length'] = cell.attn_length
    return weights
  wx, b = cast(cell.kernel), cast(cell.bias)
  weights = dict(recurrent=cast(cell.recurrent_kernel), bias=b)
  if first:
    weights.update(hot=tf.concat([wx[:num_hot], tf.zeros_like(wx[:1])], 0),
                   dense=wx[num_hot:])
  else:
    weights['kernel'] = wx
  return weights


def _gpu_available() -> bool:
  return bool(tf.config.list_logical_devices('GPU'))
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




class PaddedFraction(_SequenceRatio):
  """Padded steps / real steps of the batches seen (the cost of padding)."""
  numerator, denominator = 'padded', 'steps'

  def __init__(self, name='padded_fraction', **kwargs):
    super().__init__(name=name, **kwargs)


# --- Model. --------------------------------------------------------------------


def global_step(optimizer):
  """The optimizer's step count, the run's global step. Keras 3.6's LossScaleOptimizer
  (mixed_float16) counts in its inner optimizer: its own `iterations` stays 0."""
  return getattr(optimizer, 'inner_optimizer', optimizer).iterations


def _replica_sum(values):
  """Sums a (nested) value over replicas; identity with a single replica."""
  ctx = tf.distribute.get_replica_context()
  if ctx is None or ctx.num_replicas_in_sync == 1:
    return values
  return ctx.all_reduce(tf.distribute.ReduceOp.SUM, values)


def _all_finite(tensors):
  return tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in tensors if t is not None])


def _apply_if(optimizer, ok, grads, variables):
  """optimizer.apply(grads, variables) only where `ok` (same on every replica).

  Strategies that need merge_call cannot branch around it in a replica context, so
  there the branch is taken in the cross-replica context (as Keras's
  LossScaleOptimizer does).
  """
  def apply():
    optimizer.apply(grads, variables)

  ctx = tf.distribute.get_replica_context()
  if ctx is None or tf.__internal__.distribute.strategy_supports_no_merge_call():
    tf.cond(ok, apply, lambda: None)
    return

  def cross_replica(distribution, ok, grads):
    ok = distribution.experimental_local_results(ok)[0]

    def apply_all():
      distribution.extended.call_for_each_replica(
          lambda g: optimizer.apply(g, variables), args=(grads,))

    tf.cond(ok, apply_all, lambda: None)

  ctx.merge_call(cross_replica, args=(ok, grads))


class EventSequenceRnn(keras.Model):
  """Inputs {'hot', 'flags', 'lengths'} -> logits [B, T, num_classes].

  hot: int [B, T, H] one-hot column indices (compact.py); flags: int [B, T] bits of the
  dense columns; lengths: int [B]. Steps at or beyond `lengths[b]` are padding: their
  outputs are ignored by the loss and metrics. Fit it on (inputs dict, labels [B, T])
  batches; the train/test steps below implement Magenta's objective exactly, on one
  device or many.

  Speed (CPU): the first layer's input pre-activations for all steps are gathered
  kernel rows (`input_preactivations`), every later layer's x W for all steps is one
  matmul, and the tf.while_loop over time only does the recurrent matmul(s) and gates
  (`run_layer`), with a hand-written backward loop (weight gradients as one matmul over
  all steps after it). The attention layer folds its input projection into the LSTM
  kernel and carries its keys. The variables are the Keras layers' (`rnn_layers`), so
  `reference_call` (the layers' own Keras call, the straightforward formulation)
  checks the fast one on the same weights.
  `loop_jit`: 'auto' (attention layers), True or False: run a layer's loop as its own
  XLA cluster when the train step itself is not XLA-compiled (build_model).
  Padding: the loop does not freeze the state on padded steps; padding only ever
  follows a sequence's real steps, so this changes nothing but the (ignored) padded
  outputs, and padded `hot` entries are redirected to the zero row.
  On a GPU (not available where this was written, so untested) plain LSTM layers run
  Keras's cuDNN kernel instead of the loop.
  """

  def __init__(self, layout: compact.InputLayout, num_classes: int,
               rnn_layer_sizes: Sequence[int], dropout_keep_prob: float, attn_length: int,
               clip_norm: float, no_event_label: int = 0, loop_jit='auto', **kwargs):
    super().__init__(**kwargs)
    self.loop_jit = loop_jit
    if isinstance(layout, dict):  # from get_config
      layout = compact.InputLayout(
          num_hot=layout['num_hot'], block_sizes=tuple(layout['block_sizes']),
          dense=tuple(tuple(d) for d in layout['dense']))
    self.layout = layout
    self.input_size = layout.input_size
    self.num_classes = int(num_classes)
    self.rnn_layer_sizes = tuple(int(s) for s in rnn_layer_sizes)
    self.dropout_keep_prob = float(dropout_keep_prob)
    self.attn_length = int(attn_length)
    self.clip_norm = float(clip_norm)
    self.no_event_label = int(no_event_label)
    self.rnn_layers = []
    self.dropouts = []
    dtype = self.dtype_policy  # `dtype=` kwarg: e.g. 'mixed_bfloat16'; default float32
    input_size = self.input_size
    for i, size in enumerate(self.rnn_layer_sizes):
      if i == 0 and self.attn_length:
        # Named, so variable paths do not depend on how many models the process built.
        cell = AttentionLSTMCell(size, self.attn_length, dtype=dtype, name='attention_lstm_cell')
        layer = keras.layers.RNN(cell, return_sequences=True, name=f'rnn_{i}', dtype=dtype)
      else:
        layer = keras.layers.LSTM(size, return_sequences=True, name=f'rnn_{i}', dtype=dtype,
                                  kernel_initializer=input_kernel_initializer())
      layer.build((None, None, input_size))
      input_size = size
      self.rnn_layers.append(layer)
      self.dropouts.append(keras.layers.Dropout(1.0 - self.dropout_keep_prob,
                                                name=f'dropout_{i}', dtype=dtype))
    # float32 logits under any policy: a low-precision softmax/loss loses the tail.
    self.logits_layer = keras.layers.Dense(self.num_classes, name='logits', dtype='float32')
    self.logits_layer.build((None, None, input_size))
    self.sequence_metrics = make_metrics(self.no_event_label)
    self.padded_fraction = PaddedFraction()
    # The first train step (optimizer.iterations) whose loss or gradients were not
    # finite, -1 if none: that step's update was skipped. Read it now and then.
    self.first_nonfinite_step = self.add_weight(
        shape=(), dtype='int64', initializer=keras.initializers.Constant(-1),
        trainable=False, aggregation='only_first_replica', name='first_nonfinite_step')

  @property
  def metrics(self):
    # Only ours: Keras's own loss tracker would not be replica-exact.
    return list(self.sequence_metrics) + [self.padded_fraction]

  # --- The fast formulation.

  def step_weights(self, dtype=None) -> dict:
    """{'layers': per-layer step weights, 'logits': (kernel, bias) float32} from the
    live variables (see `layer_step_weights`); `dtype` defaults to the compute dtype."""
    dtype = dtype or self.compute_dtype
    layers = [layer_step_weights(layer, i == 0, self.layout.num_hot, dtype)
              for i, layer in enumerate(self.rnn_layers)]
    logits = (tf.convert_to_tensor(self.logits_layer.kernel),
              tf.convert_to_tensor(self.logits_layer.bias))
    return {'layers': layers, 'logits': logits}

  def call(self, inputs, training=False):
    hot, flags = inputs[HOT], inputs[FLAGS]
    num_steps = tf.shape(flags)[1]
    mask = sequence_mask(inputs[LENGTHS], num_steps) > 0
    # Padding reads the zero row, whatever the batcher padded with.
    hot = tf.where(mask[..., tf.newaxis], tf.cast(hot, tf.int32), self.layout.num_hot)
    dense = compact.expand_dense(self.layout, flags, num_steps)
    weights = self.step_weights()
    cudnn = _gpu_available()
    x = None
    for i, (layer, dropout, w) in enumerate(zip(self.rnn_layers, self.dropouts,
                                                weights['layers'])):
      if cudnn and not is_attention(w):  # Keras's cuDNN kernel (GPU only)
        if x is None:
          x = tf.cast(self._rows(hot, dense), self.compute_dtype)
        x = layer(x, mask=mask, training=training)
      else:
        zx = input_preactivations(w, hot, dense) if i == 0 else layer_preactivations(w, x)
        x = run_layer(w, zx, self._loop_jit(w), differentiable=bool(training))
      x = dropout(x, training=training)
    return self.logits_layer(x)

  def _loop_jit(self, weights) -> bool:
    """Whether a layer's loop runs as its own XLA cluster (see `loop_jit`)."""
    if self.jit_compile:  # already in one (and nesting them crashes TF 2.16)
      return False
    if self.loop_jit == 'auto':
      return is_attention(weights)
    return bool(self.loop_jit)

  def _rows(self, hot, dense):
    """The full note-seq input rows [B, T, input_size] (compact.expand_inputs)."""
    one_hot = tf.reduce_sum(tf.one_hot(hot, self.layout.num_hot + 1), -2)
    return tf.concat([one_hot[..., :self.layout.num_hot], dense], -1)

  # --- The straightforward formulation, on the same variables (tests, benchmarks).

  def reference_call(self, inputs, training=False):
    """What `call` computes, by the Keras layers' own masked RNN calls on full rows:
    keras.layers.LSTM and the AttentionLSTMCell port. inputs: {'inputs': [B, T,
    input_size] rows, 'lengths'} or the compact form."""
    if INPUTS in inputs:
      x = inputs[INPUTS]
    else:
      hot, flags = tf.cast(inputs[HOT], tf.int32), inputs[FLAGS]
      x = self._rows(hot, compact.expand_dense(self.layout, flags, tf.shape(flags)[1]))
    x = ops.cast(x, self.compute_dtype)
    mask = ops.cast(sequence_mask(inputs[LENGTHS], ops.shape(x)[1]), 'bool')
    for rnn, dropout in zip(self.rnn_layers, self.dropouts):
      x = rnn(x, mask=mask, training=training)
      x = dropout(x, training=training)
    return self.logits_layer(x)

  # --- One step at a time (generation): the same step functions as `call`.

  def initial_state(self, batch_size) -> Tuple[tf.Tensor, ...]:
    """Zero state, flat: per layer (h, c), the attention layer also (attention vector,
    window [B, L, U], keys [B, L, U])."""
    state = ()
    for w in self.step_weights()['layers']:
      state += zero_layer_state(w, batch_size, self.compute_dtype)
    return state

  def step(self, hot, dense, state, weights=None):
    """One event: hot [B, H], dense [B, D] (expand_dense's columns), state ->
    (logits [B, C], new state). Inference only (no dropout); `weights`: step_weights(),
    computed here if not given. Running it over a sequence equals `call`."""
    weights = weights or self.step_weights()
    return rnn_step(weights, tf.cast(hot, tf.int32), tf.cast(dense, self.compute_dtype),
                    state)

  # --- Training.

  def _split(self, data):
    x, labels = data[0], data[1]
    labels = ops.cast(labels, 'int32')
    mask = sequence_mask(x[LENGTHS], ops.shape(labels)[1])
    return x, labels, mask

  def _update_metrics(self, labels, logits, mask):
    stats = sequence_stats(labels, tf.stop_gradient(logits), mask, self.no_event_label)
    stats['padded'] = tf.cast(tf.size(mask), tf.float32) - stats['steps']
    stats = _replica_sum(stats)
    for metric in self.metrics:
      metric.update_from_stats(stats)
    return {m.name: m.result() for m in self.metrics}

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
    grads, global_loss = _replica_sum((grads, loss))
    grads = clip_gradients(grads, self.clip_norm * self._loss_scale())
    num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if num_replicas > 1:
      # The Keras optimizer sums gradients over replicas again.
      grads = [None if g is None else g / num_replicas for g in grads]
    self._guarded_apply(global_loss, grads, variables)
    return self._update_metrics(labels, logits, mask)

  def _guarded_apply(self, loss, grads, variables):
    """Applies the update only if the loss and gradients are finite; else records the
    step in first_nonfinite_step (once). Under loss scaling, non-finite scaled
    gradients are the LossScaleOptimizer's business (it skips and lowers the scale)."""
    scaling = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
    ok = _all_finite([loss] if scaling else [loss] + list(grads))
    first = self.first_nonfinite_step
    first.assign(tf.where(ok | (first >= 0), first,
                          tf.cast(global_step(self.optimizer), 'int64')))
    _apply_if(self.optimizer, ok, grads, variables)

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
        'layout': dataclasses.asdict(self.layout), 'num_classes': self.num_classes,
        'rnn_layer_sizes': list(self.rnn_layer_sizes),
        'dropout_keep_prob': self.dropout_keep_prob, 'attn_length': self.attn_length,
        'clip_norm': self.clip_norm, 'no_event_label': self.no_event_label,
        'loop_jit': self.loop_jit,
    }


# Measured on a 2-core CPU (benchmarks/core_speed.py): see build_model.
DEFAULT_JIT_COMPILE = 'auto'
DEFAULT_STEPS_PER_EXECUTION = 1
# 'auto': whole-step XLA for layers up to this size (with attention: the larger one).
XLA_TRAIN_STEP_MAX_UNITS = 64
XLA_TRAIN_STEP_MAX_UNITS_ATTENTION = 256


def build_model(config: configs.ModelConfig, hparams: configs.HParams,
                dtype_policy: Optional[str] = None, jit_compile=DEFAULT_JIT_COMPILE,
                steps_per_execution: int = DEFAULT_STEPS_PER_EXECUTION) -> EventSequenceRnn:
  """Builds and compiles the model; call inside a strategy scope to distribute it.

  Variables, optimizer slots and metric state are all created here, in the
  caller's tf.distribute scope. Gradient clipping is done by the model's
  train_step (see the module docstring), so the optimizer is a plain Adam
  (wrapped in a LossScaleOptimizer by compile() under 'mixed_float16').
  `dtype_policy`: None (float32), 'mixed_float16' or 'mixed_bfloat16'.
  `jit_compile`: XLA for the whole train/test step. Off, the attention layer's loop
  still runs as an XLA cluster (`loop_jit`) and plain LSTM loops run as TF while loops.
  'auto' (measured on 2 CPU cores, benchmarks/core_speed.py, examples per CPU-second):
  whole-step XLA when every layer has <= 64 units, or <= 256 with attention (its fused
  small ops win: drum_kit [256]*3 b128 9.4 vs 7.8, attention_rnn [128, 128] b128 54 vs
  52), off for larger plain LSTMs (basic_rnn [128, 128] b128: 135 vs 143; and off
  keeps the cuDNN path), with several replicas (XLA cannot compile merge_call
  all-reduces) and on GPUs (cuDNN kernels are not XLA ops; untested here, no GPU).
  `steps_per_execution`: train steps per tf.function call; default 1 (not benchmarked:
  a train step takes >= 0.1 s here, so Keras's per-call overhead of ~ms is < a few %).
  """
  hparams.validate()
  model = EventSequenceRnn(
      layout=compact.input_layout(config),
      num_classes=config.num_classes,
      rnn_layer_sizes=hparams.rnn_layer_sizes,
      dropout_keep_prob=hparams.dropout_keep_prob,
      attn_length=hparams.attn_length,
      clip_norm=hparams.clip_norm,
      no_event_label=config.no_event_label,
      name=f'{config.name}_rnn',
      dtype=dtype_policy)
  layout = model.layout
  model({HOT: tf.fill([1, 1, layout.num_blocks], layout.num_hot),
         FLAGS: tf.zeros([1, 1], tf.int64), LENGTHS: tf.ones([1], tf.int32)})
  if jit_compile == 'auto':
    limit = (XLA_TRAIN_STEP_MAX_UNITS_ATTENTION if hparams.attn_length else
             XLA_TRAIN_STEP_MAX_UNITS)
    jit_compile = (max(hparams.rnn_layer_sizes) <= limit and
                   tf.distribute.get_strategy().num_replicas_in_sync == 1 and
                   not _gpu_available())
  model.compile(optimizer=keras.optimizers.Adam(learning_rate=hparams.learning_rate),
                jit_compile=bool(jit_compile), steps_per_execution=steps_per_execution)
  model.optimizer.build(model.trainable_variables)
  return model
