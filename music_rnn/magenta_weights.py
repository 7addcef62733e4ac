"""Magenta's event-RNN variables <-> EventSequenceRnn's, both ways, and shape checks.

Magenta (events_rnn_graph.make_rnn_cell) names its variables
  rnn/multi_rnn_cell/cell_<i>/basic_lstm_cell/{kernel,bias}
  rnn/multi_rnn_cell/cell_0/attention_cell_wrapper/...   (the first layer, attn_length > 0)
  fully_connected/{weights,biases}                        (tf_slim's linear logits layer)
DropoutWrapper adds no variables. A BasicLSTMCell kernel is [input + units, 4 units]: it
multiplies [x; h], its gates are ordered (i, j, f, o), and forget_bias=1.0 is added to f
at every step. Ours (model.lstm_gates) are (i, f, j, o) with x and h kernels apart and the
1.0 inside the bias: the same function. AttentionCellWrapper's variables:
  kernel, bias                      the input projection of [x; attention] back to x's size
  attention/attn_w [1, 1, U, U]     the 1x1 conv over the window (our attn_w [U, U])
  attention/attn_v [U]
  attention/kernel, attention/bias  the query from the new state [c; h]
  attn_output_projection/kernel, /bias   the output from [cell output; attention]
exactly the layout of model.AttentionLSTMCell.
"""

import re
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from music_rnn import configs

FORGET_BIAS = 1.0  # BasicLSTMCell's default, which Magenta keeps
_PREFIX = 'rnn/multi_rnn_cell/cell_{}/'
_ATTENTION = 'attention_cell_wrapper/'
_LSTM = 'basic_lstm_cell/'
_LOGITS = 'fully_connected/'
# Older TensorFlow (< 1.2) named LSTM variables weights/biases: read those too.
_ALIASES = {'kernel': 'weights', 'bias': 'biases'}

Weights = Dict[str, np.ndarray]


def _lstm_prefix(layer: int, attention: bool) -> str:
  return _PREFIX.format(layer) + (_ATTENTION if attention and layer == 0 else '') + _LSTM


def expected_shapes(config: configs.ModelConfig,
                    hparams: configs.HParams) -> Dict[str, Tuple[int, ...]]:
  """Magenta's variable names and shapes for a config and hparams."""
  shapes = {}
  attention = hparams.attn_length > 0
  size_in = config.input_size
  for i, units in enumerate(hparams.rnn_layer_sizes):
    prefix = _lstm_prefix(i, attention)
    shapes[prefix + 'kernel'] = (size_in + units, 4 * units)
    shapes[prefix + 'bias'] = (4 * units,)
    if attention and i == 0:
      wrapper = _PREFIX.format(0) + _ATTENTION
      shapes.update({
          wrapper + 'kernel': (size_in + units, size_in), wrapper + 'bias': (size_in,),
          wrapper + 'attention/attn_w': (1, 1, units, units),
          wrapper + 'attention/attn_v': (units,),
          wrapper + 'attention/kernel': (2 * units, units),
          wrapper + 'attention/bias': (units,),
          wrapper + 'attn_output_projection/kernel': (2 * units, units),
          wrapper + 'attn_output_projection/bias': (units,)})
    size_in = units
  shapes[_LOGITS + 'weights'] = (size_in, config.num_classes)
  shapes[_LOGITS + 'biases'] = (config.num_classes,)
  return shapes


def select(checkpoint_shapes: Dict[str, Sequence[int]]) -> Dict[str, str]:
  """{canonical name: name in the checkpoint} of the model variables a checkpoint holds
  (Adam slots, global_step and other training state left out)."""
  found = {}
  for name in checkpoint_shapes:
    if 'Adam' in name or not (name.startswith(('rnn/', _LOGITS))):
      continue
    base, _, leaf = name.rpartition('/')
    if name.startswith('rnn/'):
      leaf = {v: k for k, v in _ALIASES.items()}.get(leaf, leaf)
    found[f'{base}/{leaf}'] = name
  return found


def layer_sizes(shapes: Dict[str, Sequence[int]]) -> Tuple[List[int], bool]:
  """(rnn_layer_sizes, has attention) that a checkpoint's canonical shapes imply."""
  sizes = {}
  attention = False
  for name, shape in shapes.items():
    match = re.match(r'rnn/multi_rnn_cell/cell_(\d+)/(attention_cell_wrapper/)?'
                     r'basic_lstm_cell/kernel$', name)
    if match:
      sizes[int(match.group(1))] = int(shape[1]) // 4
      attention = attention or bool(match.group(2))
  return [sizes[i] for i in sorted(sizes)], attention


def input_size_of(shapes: Dict[str, Sequence[int]]) -> Optional[int]:
  """The input vector size a checkpoint was trained on, None if it cannot tell."""
  sizes, attention = layer_sizes(shapes)
  if not sizes:
    return None
  if attention:
    projection = shapes.get(_PREFIX.format(0) + _ATTENTION + 'bias')
    return int(projection[0]) if projection else None
  return int(shapes[_lstm_prefix(0, False) + 'kernel'][0]) - sizes[0]


def mismatches(config: configs.ModelConfig, hparams: configs.HParams,
               shapes: Dict[str, Sequence[int]]) -> List[str]:
  """'name: checkpoint [..], flags [..]' for every variable that differs or is missing."""
  expected = expected_shapes(config, hparams)
  out = []
  for name in sorted(set(expected) | set(shapes)):
    have = tuple(shapes[name]) if name in shapes else None
    want = expected.get(name)
    if have != want:
      out.append(f'{name}: checkpoint {list(have) if have else "missing"}, '
                 f'flags {list(want) if want else "none"}')
  return out


# --- Gate order. ---------------------------------------------------------------------


def _magenta_to_keras_gates(x: np.ndarray) -> np.ndarray:
  """Columns (i, j, f, o) -> (i, f, j, o) along the last axis."""
  i, j, f, o = np.split(x, 4, axis=-1)
  return np.concatenate([i, f, j, o], axis=-1)


def _keras_to_magenta_gates(x: np.ndarray) -> np.ndarray:
  i, f, j, o = np.split(x, 4, axis=-1)
  return np.concatenate([i, j, f, o], axis=-1)


def _lstm_to_keras(kernel, bias, size_in):
  """Magenta's BasicLSTMCell (kernel [in + U, 4U], bias) -> Keras LSTMCell's
  (kernel, recurrent_kernel, bias), forget_bias folded into the bias."""
  kernel = _magenta_to_keras_gates(kernel)
  bias = _magenta_to_keras_gates(bias).copy()
  units = bias.shape[0] // 4
  bias[units:2 * units] += FORGET_BIAS
  return kernel[:size_in], kernel[size_in:], bias


def _lstm_to_magenta(kernel, recurrent, bias):
  bias = np.array(bias, copy=True)
  units = bias.shape[0] // 4
  bias[units:2 * units] -= FORGET_BIAS
  return (_keras_to_magenta_gates(np.concatenate([kernel, recurrent], 0)),
          _keras_to_magenta_gates(bias))


# --- Whole models. -----------------------------------------------------------------


def to_keras(weights: Weights, model) -> None:
  """Assigns Magenta's variables (canonical names, shapes already checked) to `model`."""
  size_in = model.input_size
  for i, layer in enumerate(model.rnn_layers):
    cell = layer.cell
    attention = hasattr(cell, 'attn_w')
    prefix = _lstm_prefix(i, attention)
    lstm = cell.lstm if attention else cell
    kernel, recurrent, bias = _lstm_to_keras(weights[prefix + 'kernel'],
                                             weights[prefix + 'bias'], size_in)
    lstm.kernel.assign(kernel)
    lstm.recurrent_kernel.assign(recurrent)
    lstm.bias.assign(bias)
    if attention:
      wrapper = _PREFIX.format(0) + _ATTENTION
      cell.input_projection.kernel.assign(weights[wrapper + 'kernel'])
      cell.input_projection.bias.assign(weights[wrapper + 'bias'])
      cell.attn_w.assign(weights[wrapper + 'attention/attn_w'][0, 0])
      cell.attn_v.assign(weights[wrapper + 'attention/attn_v'])
      cell.query_projection.kernel.assign(weights[wrapper + 'attention/kernel'])
      cell.query_projection.bias.assign(weights[wrapper + 'attention/bias'])
      cell.output_projection.kernel.assign(weights[wrapper + 'attn_output_projection/kernel'])
      cell.output_projection.bias.assign(weights[wrapper + 'attn_output_projection/bias'])
    size_in = lstm.units
  model.logits_layer.kernel.assign(weights[_LOGITS + 'weights'])
  model.logits_layer.bias.assign(weights[_LOGITS + 'biases'])


def from_keras(model) -> Weights:
  """`model`'s weights under Magenta's variable names (the inverse of to_keras)."""
  weights = {}
  value = lambda v: np.asarray(v.numpy(), np.float32)  # noqa: E731
  for i, layer in enumerate(model.rnn_layers):
    cell = layer.cell
    attention = hasattr(cell, 'attn_w')
    prefix = _lstm_prefix(i, attention)
    lstm = cell.lstm if attention else cell
    weights[prefix + 'kernel'], weights[prefix + 'bias'] = _lstm_to_magenta(
        value(lstm.kernel), value(lstm.recurrent_kernel), value(lstm.bias))
    if attention:
      wrapper = _PREFIX.format(0) + _ATTENTION
      weights.update({
          wrapper + 'kernel': value(cell.input_projection.kernel),
          wrapper + 'bias': value(cell.input_projection.bias),
          wrapper + 'attention/attn_w': value(cell.attn_w)[np.newaxis, np.newaxis],
          wrapper + 'attention/attn_v': value(cell.attn_v),
          wrapper + 'attention/kernel': value(cell.query_projection.kernel),
          wrapper + 'attention/bias': value(cell.query_projection.bias),
          wrapper + 'attn_output_projection/kernel': value(cell.output_projection.kernel),
          wrapper + 'attn_output_projection/bias': value(cell.output_projection.bias)})
  weights[_LOGITS + 'weights'] = value(model.logits_layer.kernel)
  weights[_LOGITS + 'biases'] = value(model.logits_layer.bias)
  return weights
