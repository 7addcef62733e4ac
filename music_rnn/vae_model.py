"""MusicVAE (Magenta's cat-drums_2bar_small / cat-mel_2bar_small) as a Keras 3 model.

Magenta's model (magenta/models/music_vae: base_model.py, lstm_models.py, lstm_utils.py):
- BidirectionalLstmEncoder: per layer a forward and a backward LSTM of enc_rnn_size[i]
  units over the real steps (the backward one reads them last to first); the next
  layer reads both outputs concatenated; the encoding is the final h of the last
  layer's two directions concatenated (lstm_models.py: `states_fw[-1][-1].h`).
- q(z|x) = N(mu, diag(sigma^2)), mu = dense(encoding), sigma = softplus(dense(encoding)),
  both kernels ~ N(0, 0.001^2) (base_model.encode); z = mu + sigma * eps in training.
- CategoricalLstmDecoder: LSTMs of dec_rnn_size; their initial (c, h) = split(tanh(
  dense(z))) (lstm_utils.initial_cell_state_from_embedding, flat order c0, h0, c1, h1,
  ...); each step's input is [previous step's one-hot label; z], zeros instead of the
  label at step 0 (base_model._compute_model_loss: `x_input = pad(output_sequence[:,
  :-1])`); output projection to num_classes.
- Scheduled sampling in training (lstm_utils.get_sampling_probability,
  contrib seq2seq ScheduledOutputTrainingHelper): for each example and step t >= 1,
  with probability p the input is a sample from the softmax of step t-1's logits
  (temperature 1) instead of the label; no gradient flows through the sample.
- Loss per sequence: r = softmax cross entropy summed over its real steps, KL(q || N(0,
  I)) in nats, kl_cost = max(KL - free_bits * ln 2, 0); loss = mean(r) + beta *
  mean(kl_cost), beta = (1 - beta_rate^step) * max_beta (base_model.py:257-262).
- Adam (epsilon 1e-8 as tf.train.AdamOptimizer) at (lr - min_lr) * decay_rate^step +
  min_lr; gradients clipped to global norm grad_clip, and ZERO gradients applied when
  the global norm is >= grad_norm_clip_to_zero (music_vae_train.py:179-184: Adam's
  moments still decay and the step counts).

Differences, deliberate:
- LSTM cells are Keras's (gate order i, f, c, o, `model.lstm_gates`), with the forget
  bias initialised to 1 (unit_forget_bias) instead of LSTMBlockCell's constant 1 added
  at every step: the same at initialisation; the recurrent kernel starts orthogonal.
- The kernel rows that multiply one-hot / roll inputs (the encoder's first layer, the
  decoder first layer's previous-label part; not z's) start at the event RNN's scale
  (model.input_kernel_initializer: glorot x sqrt(10)), not glorot: glorot counts all
  512 or 90 one-hot columns (plus z) as fan-in, but only one is non-zero. Measured on 6 two-bar drum
  grooves (tests/test_vae_model.py's learning test, 300 steps): teacher-forced accuracy
  0.94 with it, 0.61 without (majority class 0.34).
- Padded rows (length 0, as the Trainer pads short batches under several replicas) are
  left out of every loss and metric, and per-sequence means are over the real rows of
  the global batch; the gradient is summed over replicas before the global-norm
  clipping, so N replicas compute the single-device update (see model.py).
- A step whose loss or gradient norm is not finite is skipped and recorded in
  `first_nonfinite_step` (Magenta would apply zeros), as for the event RNNs.
- test_step is teacher-forced (z sampled from q, seeded); Magenta's eval job instead
  samples every decoder input (get_sampling_probability: constant 1 when not training).
- Randomness (eps, scheduled sampling, dropout, transposition) is stateless, keyed by
  (seed, optimizer step, stream) and the row's place in the GLOBAL batch
  (`global_rows_uniform`), so a resumed run repeats the same draws and N replicas
  draw what one device would.
- Melody transposition is drawn per example in train_step (`_augment`); see there.

Speed (CPU): the encoder's input matmuls for all steps run outside the recurrent loop
and each direction runs `model.run_layer` (a tf.while_loop with a hand-written
backward). The decoder needs its previous output at every step (scheduled sampling),
so all its layers and the projection run in one tf.while_loop with autodiff; the
label rows of its first kernel are gathered, z's part is one matmul per sequence.
On GPUs (untested here: no GPU on this machine) the same loops run; there is no cuDNN
path.
"""

import math
from typing import Dict, Optional

import keras
from keras import ops
import tensorflow as tf

from music_rnn import configs
from music_rnn import model as model_lib
from music_rnn import vae_encoding

LABELS = 'labels'  # model input key: int [B, T], the class of every step
LENGTHS = model_lib.LENGTHS  # model input key: int [B], real steps per sequence
LN2 = math.log(2.0)

# Logged by fit/evaluate (train_step / test_step), in this order.
METRIC_NAMES = ('loss', 'reconstruction_loss', 'accuracy', 'kl_bits', 'elbo', 'r_loss',
                'kl_loss', 'beta', 'sampling_probability')

# Streams of the stateless randomness (folded into the seed with the step).
(_EPS_STREAM, _SAMPLING_STREAM, _DECIDE_STREAM, _DROPOUT_STREAM, _TRANSPOSE_STREAM,
 _DECODER_DROPOUT_STREAM) = range(6)


# --- Schedules and formulas (Magenta's), as functions of the global step. ------------
# Computed in float64 (Magenta: float32, where 0.9999 ** step is off by ~1e-4 relative
# after a few thousand steps: 0.9999 itself rounds by 3e-8), returned as float32.


def kl_beta(step, hparams: configs.VaeHParams) -> tf.Tensor:
  """(1 - beta_rate^step) * max_beta (base_model.py:260)."""
  step = tf.cast(step, tf.float64)
  beta = (1.0 - tf.pow(tf.constant(hparams.beta_rate, tf.float64), step)) * hparams.max_beta
  return tf.cast(beta, tf.float32)


def check_sampling_schedule(hparams: configs.VaeHParams) -> None:
  """Magenta's limits on sampling_rate per schedule (lstm_utils.get_sampling_probability)."""
  schedule, rate = hparams.sampling_schedule, hparams.sampling_rate
  if schedule == 'constant' and not 0 <= rate <= 1:
    raise ValueError(f'constant sampling_rate must be in [0, 1], got {rate}')
  if schedule == 'inverse_sigmoid' and rate < 1:
    raise ValueError(f'inverse_sigmoid sampling_rate must be >= 1, got {rate}')
  if schedule == 'exponential' and not 0 < rate < 1:
    raise ValueError(f'exponential sampling_rate must be in (0, 1), got {rate}')


def uses_sampling(hparams: configs.VaeHParams) -> bool:
  """False when the schedule is constant 0: plain teacher forcing (lstm_utils.py:129)."""
  return not (hparams.sampling_schedule == 'constant' and hparams.sampling_rate == 0)


def sampling_probability(step, hparams: configs.VaeHParams) -> tf.Tensor:
  """Probability that a decoder input is sampled in training (lstm_utils.py:147-166):
  constant: rate; inverse_sigmoid: 1 - k / (k + exp(step / k)); exponential: 1 - k^step."""
  step = tf.cast(step, tf.float64)
  k = tf.constant(hparams.sampling_rate, tf.float64)
  if hparams.sampling_schedule == 'constant':
    p = k
  elif hparams.sampling_schedule == 'inverse_sigmoid':
    p = 1.0 - k / (k + tf.exp(step / k))
  elif hparams.sampling_schedule == 'exponential':
    p = 1.0 - tf.pow(k, step)
  else:
    raise ValueError(f'Unknown sampling_schedule {hparams.sampling_schedule!r}')
  return tf.cast(p, tf.float32)


def learning_rate(step, hparams: configs.VaeHParams) -> tf.Tensor:
  """(learning_rate - min_learning_rate) * decay_rate^step + min_learning_rate
  (base_model.py:294)."""
  step = tf.cast(step, tf.float64)
  rate = ((hparams.learning_rate - hparams.min_learning_rate) *
          tf.pow(tf.constant(hparams.decay_rate, tf.float64), step) +
          hparams.min_learning_rate)
  return tf.cast(rate, tf.float32)


@keras.saving.register_keras_serializable(package='music_rnn')
class MagentaLearningRate(keras.optimizers.schedules.LearningRateSchedule):
  """`learning_rate` as a Keras schedule (the optimizer passes its iterations)."""

  def __init__(self, learning_rate: float, decay_rate: float, min_learning_rate: float):
    self.learning_rate = float(learning_rate)
    self.decay_rate = float(decay_rate)
    self.min_learning_rate = float(min_learning_rate)

  def __call__(self, step):
    hparams = configs.VaeHParams(learning_rate=self.learning_rate, decay_rate=self.decay_rate,
                                 min_learning_rate=self.min_learning_rate)
    return learning_rate(step, hparams)

  def get_config(self):
    return {'learning_rate': self.learning_rate, 'decay_rate': self.decay_rate,
            'min_learning_rate': self.min_learning_rate}


def kl_divergence(mu, sigma) -> tf.Tensor:
  """KL(N(mu, diag sigma^2) || N(0, I)) in nats per sequence: [B, Z] -> float32 [B]."""
  mu, sigma = tf.cast(mu, tf.float32), tf.cast(sigma, tf.float32)
  return tf.reduce_sum(0.5 * (tf.square(mu) + tf.square(sigma) - 1.0) - tf.math.log(sigma),
                       axis=-1)


def kl_cost(kl, free_bits: float) -> tf.Tensor:
  """max(KL - free_bits * ln 2, 0) (base_model.py:257-258): the penalised part."""
  return tf.maximum(kl - free_bits * LN2, 0.0)


def slerp(a, b, t) -> tf.Tensor:
  """Spherical interpolation from a (t = 0) to b (t = 1) along the last axis, as
  Magenta's TrainedModel.interpolate `_slerp` (the angle of the normalised vectors,
  the unnormalised vectors mixed). Broadcasts a, b [..., Z] with t [..., 1]. Where a
  and b are (anti)parallel, where Magenta's divides by sin(0) = 0, this falls back to
  linear interpolation."""
  a, b = tf.convert_to_tensor(a, tf.float32), tf.convert_to_tensor(b, tf.float32)
  t = tf.cast(t, tf.float32)
  unit = lambda v: v / tf.norm(v, axis=-1, keepdims=True)  # noqa: E731
  cos = tf.clip_by_value(tf.reduce_sum(unit(a) * unit(b), -1, keepdims=True), -1.0, 1.0)
  omega = tf.acos(cos)
  sin = tf.sin(omega)
  safe = sin > 1e-6
  sin = tf.where(safe, sin, 1.0)
  wa = tf.where(safe, tf.sin((1.0 - t) * omega) / sin, 1.0 - t)
  wb = tf.where(safe, tf.sin(t * omega) / sin, t)
  return wa * a + wb * b


# Every tensor branch and loop here is an explicit tf op: autograph's conversion (which
# Keras's and the export's tf.functions would apply) only costs tracing time (~10 s).
_plain_tf = tf.autograph.experimental.do_not_convert


global_step = model_lib.global_step

def _seed(base, *data) -> tf.Tensor:
  """A stateless-random seed [2] from `base` [2] and ints folded in."""
  seed = tf.cast(base, tf.int64)
  for d in data:
    seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(d, tf.int64))
  return seed


def global_rows_uniform(shape, seed, batch_axis: int = 0, minval=0.0) -> tf.Tensor:
  """stateless_uniform(shape, seed) for this replica's rows of the global batch.

  Under tf.distribute each replica holds a contiguous slice of the global batch; the
  numbers are drawn for all replicas' rows and sliced, so a row gets the same draw on
  one device or on N (and the N-replica update equals the single-device one).
  """
  ctx = tf.distribute.get_replica_context()
  replicas = ctx.num_replicas_in_sync if ctx is not None else 1
  if replicas == 1:
    return tf.random.stateless_uniform(shape, seed, minval=minval)
  shape = tf.unstack(tf.convert_to_tensor(shape, tf.int32))
  rows = shape[batch_axis]
  full = list(shape)
  full[batch_axis] = rows * replicas
  draws = tf.random.stateless_uniform(tf.stack(full), seed, minval=minval)
  start = tf.cast(ctx.replica_id_in_sync_group, tf.int32) * rows
  return tf.gather(draws, tf.range(start, start + rows), axis=batch_axis)


def global_rows_normal(shape, seed) -> tf.Tensor:
  """N(0, 1) draws [B, ...] keyed by the global row (as global_rows_uniform)."""
  u = global_rows_uniform(shape, seed, minval=1e-7)  # Box-Muller
  v = global_rows_uniform(shape, _seed(seed, 1))
  return tf.sqrt(-2.0 * tf.math.log(u)) * tf.cos(2.0 * math.pi * v)


def dropout_mask(shape, keep: float, seed, dtype, batch_axis: int = 0) -> tf.Tensor:
  """0 or 1 / keep per entry (inverted dropout), keyed by the global row."""
  kept = global_rows_uniform(shape, seed, batch_axis) < keep
  return tf.cast(kept, dtype) / tf.cast(keep, dtype)


def sample_categorical(logits, seed) -> tf.Tensor:
  """One draw per row from softmax(logits [B, C]): int32 [B]. The Gumbel-max trick
  (argmax of logits + Gumbel noise), an exact sampler that XLA compiles (unlike
  tf.random.stateless_categorical); rows keyed by their global row."""
  logits = tf.cast(logits, tf.float32)
  u = global_rows_uniform(tf.shape(logits), seed, minval=1e-20)
  return tf.argmax(logits - tf.math.log(-tf.math.log(u)), -1, output_type=tf.int32)


# --- Metrics: ratios of replica-summed sums. ------------------------------------------


class _Ratio(keras.metrics.Metric):
  """Streaming sum(stats[numerator]) / sum(stats[denominator]); NaN if empty."""

  def __init__(self, name: str, numerator: str, denominator: str, **kwargs):
    super().__init__(name=name, **kwargs)
    self.numerator, self.denominator = numerator, denominator
    self.total = self.add_variable(shape=(), initializer='zeros', name='total')
    self.count = self.add_variable(shape=(), initializer='zeros', name='count')

  def update_state(self, stats):
    self.total.assign_add(stats[self.numerator])
    self.count.assign_add(stats[self.denominator])

  def result(self):
    return ops.where(self.count > 0, self.total / ops.maximum(self.count, 1.0), float('nan'))


class _Latest(keras.metrics.Metric):
  """The last value of a schedule (beta, sampling probability)."""

  def __init__(self, name: str, **kwargs):
    super().__init__(name=name, **kwargs)
    self.value = self.add_variable(shape=(), initializer='zeros', name='value')

  def update_state(self, stats):
    self.value.assign(stats[self.name])

  def result(self):
    return self.value + 0.0  # a tensor (not the variable) in every context


# name -> (numerator, denominator) of the sums in `_batch_stats`.
_RATIOS = {
    'loss': ('objective', 'rows'),  # Magenta's loss: mean over sequences
    'reconstruction_loss': ('xent', 'steps'),  # nats per real step
    'accuracy': ('correct', 'steps'),
    'kl_bits': ('kl_bits', 'rows'),  # per sequence
    'elbo': ('elbo', 'rows'),  # r + KL, nats per sequence (the negative ELBO)
    'r_loss': ('xent', 'rows'),  # Magenta's losses/r_loss: nats per sequence
    'kl_loss': ('kl_cost', 'rows'),  # Magenta's losses/kl_loss: max(KL - free, 0)
}


def _make_metrics():
  return [_Ratio(name, *_RATIOS[name]) if name in _RATIOS else _Latest(name)
          for name in METRIC_NAMES]


def _partly_scaled_initializer(rows: int):
  """model.input_kernel_initializer() for the first `rows` rows of a kernel, glorot
  (Keras's default) for the others."""
  scaled, plain = model_lib.input_kernel_initializer(), keras.initializers.GlorotUniform()

  def initializer(shape, dtype=None):
    return ops.concatenate([scaled(shape, dtype)[:rows], plain(shape, dtype)[rows:]], 0)

  return initializer


# --- The model. ------------------------------------------------------------------------


class MusicVae(keras.Model):
  """Inputs {'labels': int [B, T], 'lengths': int [B]}; fit on (inputs, labels) batches.

  `call` returns the teacher-forced logits [B, T, num_classes] at z = mu. The latent
  space (all tf-traceable, used by the export): `encode`, `decode`, `greedy_decode`,
  `teacher_forced_logits`, `example_stats`. `seed` keys all training randomness.
  """

  def __init__(self, config: configs.VaeConfig, hparams: configs.VaeHParams, seed: int = 0,
               **kwargs):
    super().__init__(**kwargs)
    hparams.validate()
    check_sampling_schedule(hparams)
    self.config, self.hparams, self.seed = config, hparams, int(seed)
    self.num_classes = config.num_classes
    self.z_size = hparams.z_size
    dtype = self.dtype_policy
    self.encoder_cells = []  # per layer (forward, backward)
    input_size = config.input_size
    for i, units in enumerate(hparams.enc_rnn_size):
      pair = tuple(self._cell(units, input_size, f'encoder_{d}_{i}', dtype,
                              scaled_rows=input_size if i == 0 else 0)
                   for d in ('fw', 'bw'))
      self.encoder_cells.append(pair)
      input_size = 2 * units
    small = keras.initializers.RandomNormal(stddev=0.001)
    # float32: mu, sigma and the KL are sensitive to rounding.
    self.mu_layer = self._dense(hparams.z_size, input_size, 'encoder_mu', 'float32', small)
    self.sigma_layer = self._dense(hparams.z_size, input_size, 'encoder_sigma', 'float32',
                                   small, activation='softplus')
    self.initial_state_layer = self._dense(
        2 * sum(hparams.dec_rnn_size), hparams.z_size, 'z_to_initial_state', 'float32',
        small, activation='tanh')
    self.decoder_cells = []
    input_size = self.num_classes + hparams.z_size
    for i, units in enumerate(hparams.dec_rnn_size):
      # Only the label rows of the first kernel are scaled up: z is dense, N(0, I)-like.
      self.decoder_cells.append(self._cell(units, input_size, f'decoder_{i}', dtype,
                                           scaled_rows=self.num_classes if i == 0 else 0))
      input_size = units
    self.output_layer = self._dense(self.num_classes, input_size, 'output_projection',
                                    'float32')
    self.vae_metrics = _make_metrics()
    # As EventSequenceRnn: the first step (optimizer.iterations) whose loss or gradients
    # were not finite (that update was skipped), -1 if none.
    self.first_nonfinite_step = self.add_weight(
        shape=(), dtype='int64', initializer=keras.initializers.Constant(-1),
        trainable=False, aggregation='only_first_replica', name='first_nonfinite_step')

  @staticmethod
  def _cell(units, input_size, name, dtype, scaled_rows=0):
    """An LSTM cell whose first `scaled_rows` input-kernel rows (one-hot / roll inputs)
    start at the event RNN's scale (model.input_kernel_initializer), the rest glorot."""
    init = 'glorot_uniform'
    if scaled_rows:
      init = _partly_scaled_initializer(scaled_rows)
    cell = keras.layers.LSTMCell(units, name=name, dtype=dtype, kernel_initializer=init)
    cell.build((None, input_size))
    return cell

  @staticmethod
  def _dense(units, input_size, name, dtype, kernel_initializer='glorot_uniform',
             activation=None):
    layer = keras.layers.Dense(units, name=name, dtype=dtype, activation=activation,
                               kernel_initializer=kernel_initializer)
    layer.build((None, input_size))
    return layer

  @property
  def metrics(self):
    return list(self.vae_metrics)

  # --- Weights as plain tensors (from the live variables, so gradients reach them).

  def _tensor(self, variable, dtype=None):
    return tf.cast(tf.convert_to_tensor(variable), dtype or self.compute_dtype)

  def _encoder_weights(self):
    """Per layer: 'kernel' [in, 8U] (forward | backward), 'bias' [8U], 'recurrent' x2."""
    layers = []
    for fw, bw in self.encoder_cells:
      layers.append({
          'kernel': tf.concat([self._tensor(fw.kernel), self._tensor(bw.kernel)], 1),
          'bias': tf.concat([self._tensor(fw.bias), self._tensor(bw.bias)], 0),
          'recurrent': (self._tensor(fw.recurrent_kernel), self._tensor(bw.recurrent_kernel)),
      })
    return layers

  def decoder_weights(self) -> dict:
    """The decoder's step weights: 'hot' [C + 1, 4U0] (label rows of the first kernel
    and a zero row, the step-0 input), 'z_kernel' [Z, 4U0], 'bias' [4U0], 'recurrent'
    [U0, 4U0]; 'fused' per later layer [U_in + U, 4U] ([input; h] kernels stacked) and
    'fused_bias'; 'out' (kernel, bias) float32."""
    first = self.decoder_cells[0]
    kernel = self._tensor(first.kernel)
    c = self.num_classes
    weights = {
        'hot': tf.concat([kernel[:c], tf.zeros_like(kernel[:1])], 0),
        'z_kernel': kernel[c:], 'bias': self._tensor(first.bias),
        'recurrent': self._tensor(first.recurrent_kernel),
        'fused': [tf.concat([self._tensor(cell.kernel), self._tensor(cell.recurrent_kernel)], 0)
                  for cell in self.decoder_cells[1:]],
        'fused_bias': [self._tensor(cell.bias) for cell in self.decoder_cells[1:]],
        'out': (tf.convert_to_tensor(self.output_layer.kernel),
                tf.convert_to_tensor(self.output_layer.bias)),
    }
    return weights

  # --- Encoder.

  @_plain_tf
  def encode(self, labels, lengths, training=False, seed=None):
    """q(z | x): labels int [B, T], lengths int [B] -> (mu, sigma) float32 [B, Z].

    `seed` [2] (training with dropout only): the dropout masks' seed."""
    lengths = tf.cast(lengths, tf.int32)
    x = vae_encoding.encoder_inputs(labels, self.config, self.compute_dtype)
    finals = None
    for i, w in enumerate(self._encoder_weights()):
      x = self._dropout(x, training, seed, i)
      outputs_fw, outputs_bw = self._bidirectional_layer(w, x, lengths, training)
      x = tf.concat([outputs_fw, tf.reverse_sequence(outputs_bw, lengths, 1, 0)], -1)
      finals = (outputs_fw, outputs_bw)
    # The backward direction's last step over the reversed sequence is its final state.
    last = tf.maximum(lengths - 1, 0)
    encoding = tf.concat([tf.gather(o, last, axis=1, batch_dims=1) for o in finals], -1)
    encoding *= tf.cast(lengths > 0, encoding.dtype)[:, tf.newaxis]  # dynamic_rnn: zeros
    encoding = tf.cast(encoding, tf.float32)
    return self.mu_layer(encoding), self.sigma_layer(encoding)

  def _bidirectional_layer(self, w, x, lengths, training):
    """x [B, T, D] -> forward outputs, backward outputs over the reversed real steps."""
    zx = model_lib.layer_preactivations(w, x)  # both directions' x W + b, all steps
    zx_fw, zx_bw = tf.split(zx, 2, axis=-1)
    zx_bw = tf.reverse_sequence(zx_bw, lengths, 1, 0)
    jit = self._loop_jit()
    return tuple(model_lib.run_layer({'recurrent': r}, z, jit, differentiable=bool(training))
                 for r, z in zip(w['recurrent'], (zx_fw, zx_bw)))

  def _loop_jit(self) -> bool:
    """Whether each encoder direction's loop runs as its own XLA cluster: no. Measured
    (2 loaded CPU cores, default sizes, batch 64): the encoder alone 0.74 s with, 1.00 s
    without, but the whole train step 0.487 steps/s either way (interleaved runs)."""
    return False

  def _dropout(self, x, training, seed, layer):
    """DropoutWrapper(input_keep_prob) on a layer's inputs (lstm_utils.rnn_cell)."""
    keep = self.hparams.dropout_keep_prob
    if not training or keep >= 1.0 or seed is None:
      return x
    return x * dropout_mask(tf.shape(x), keep, _seed(seed, layer), x.dtype)

  # --- Decoder.

  def _initial_state(self, z):
    """[(h, c)] per decoder layer from tanh(dense(z)) (flat order c0, h0, c1, h1, ...)."""
    flat = tf.cast(self.initial_state_layer(tf.cast(z, tf.float32)), self.compute_dtype)
    sizes = [u for units in self.hparams.dec_rnn_size for u in (units, units)]
    parts = tf.split(flat, sizes, axis=-1)
    return tuple((parts[2 * i + 1], parts[2 * i]) for i in range(len(sizes) // 2))

  def _z_preactivations(self, w, z):
    """z's part of the first layer's x W + b: [B, 4U0], the same at every step."""
    return tf.matmul(tf.cast(z, w['z_kernel'].dtype), w['z_kernel']) + w['bias']

  @staticmethod
  def _decoder_cell(w, zx, state, input_masks=()):
    """One step of the decoder's LSTMs from the first layer's x W + b: (top h, state).
    `input_masks`: dropout masks of the later layers' inputs (training)."""
    h, layer_state, _ = model_lib.lstm_cell(zx, state[0], {'recurrent': w['recurrent']})
    new_state = [layer_state]
    masks = list(input_masks) or [None] * len(w['fused'])
    for fused, bias, mask, (h_prev, c_prev) in zip(w['fused'], w['fused_bias'], masks,
                                                   state[1:]):
      if mask is not None:
        h *= mask
      h, c = model_lib.lstm_gates(tf.matmul(tf.concat([h, h_prev], 1), fused) + bias, c_prev)
      new_state.append((h, c))
    return h, tuple(new_state)

  @staticmethod
  def _logits(w, h):
    kernel, bias = w['out']
    return tf.matmul(tf.cast(h, kernel.dtype), kernel) + bias

  @_plain_tf
  def teacher_forced_logits(self, labels, lengths, z) -> tf.Tensor:
    """Logits float32 [B, T, C] with the true previous labels as decoder inputs."""
    del lengths  # padded steps' outputs are ignored by every caller
    return self._decode_train(labels, z, probability=None, seed=None)

  def _previous_labels(self, labels):
    """Decoder inputs: label t-1 at step t, the zero row (index C) at step 0."""
    labels = tf.cast(labels, tf.int32)
    start = tf.fill([tf.shape(labels)[0], 1], self.num_classes)
    return tf.concat([start, labels[:, :-1]], 1)

  def _decode_train(self, labels, z, probability, seed, dropout_seed=None):
    """Logits float32 [B, T, C]; with `probability` (scalar) each step t >= 1 of each
    example reads a sample of step t-1's softmax instead of label t-1 with that
    probability (ScheduledOutputTrainingHelper); `seed` [2] keys those draws.
    `dropout_seed` [2]: training with dropout_keep_prob < 1 (`_decoder_dropout`)."""
    w = self.decoder_weights()
    inputs = tf.transpose(self._previous_labels(labels))  # [T, B]
    num_steps, batch = tf.shape(inputs)[0], tf.shape(inputs)[1]
    z_part, hot_scale, masks = self._decoder_dropout(w, z, num_steps, dropout_seed)
    sampling = probability is not None
    if sampling:
      draws = global_rows_uniform([num_steps, batch], _seed(seed, _DECIDE_STREAM), 1)
      decide = (draws < probability) & (tf.range(num_steps)[:, tf.newaxis] > 0)
    outputs = tf.TensorArray(tf.float32 if sampling else self.compute_dtype, size=num_steps)

    def step(t, previous, state, outputs):
      index = tf.where(decide[t], previous, inputs[t]) if sampling else inputs[t]
      zx = tf.gather(w['hot'], index)
      if hot_scale is not None:
        zx *= hot_scale[t][:, tf.newaxis]
      zx += z_part if z_part.shape.rank == 2 else z_part[t]
      h, state = self._decoder_cell(w, zx, state, [m[t] for m in masks])
      if not sampling:
        return t + 1, previous, state, outputs.write(t, h)
      logits = self._logits(w, h)
      sample = sample_categorical(tf.stop_gradient(logits), _seed(seed, _SAMPLING_STREAM, t))
      return t + 1, sample, state, outputs.write(t, logits)

    _, _, _, outputs = tf.while_loop(
        lambda t, *_: t < num_steps, step,
        (tf.constant(0), inputs[0], self._initial_state(z), outputs),
        maximum_iterations=num_steps)
    outputs = tf.transpose(outputs.stack(), [1, 0, 2])
    return outputs if sampling else self._logits_all(w, outputs)

  def _decoder_dropout(self, w, z, num_steps, seed):
    """DropoutWrapper(input_keep_prob) on every decoder layer's input, a new mask per
    step: (z's part of the first layer's x W + b, [B, 4U0] or per step [T, B, 4U0]; the
    scale of the label's kernel row per step [T, B] or None; the later layers' input
    masks [T, B, U_in]). The label input is one-hot, so dropping its one non-zero
    entry (scale 0 or 1 / keep) is all its mask can do."""
    keep = self.hparams.dropout_keep_prob
    if seed is None or keep >= 1.0:
      return self._z_preactivations(w, z), None, []
    batch = tf.shape(z)[0]
    dtype = w['z_kernel'].dtype
    mask = lambda shape, i: dropout_mask(shape, keep, _seed(seed, i), dtype, 1)  # noqa: E731
    z_steps = tf.cast(z, dtype) * mask([num_steps, batch, self.z_size], 0)
    z_part = tf.einsum('tbz,zu->tbu', z_steps, w['z_kernel']) + w['bias']
    hot_scale = mask([num_steps, batch], 1)
    masks = [mask([num_steps, batch, units], 2 + i)
             for i, units in enumerate(self.hparams.dec_rnn_size[:-1])]
    return z_part, hot_scale, masks

  def _logits_all(self, w, h):
    kernel, bias = w['out']
    return tf.einsum('btu,uc->btc', tf.cast(h, kernel.dtype), kernel) + bias

  def _free_run(self, z, num_steps, pick):
    """Decodes from z [B, Z] feeding each step's pick(logits, t) back: labels int32 [B, T]."""
    w = self.decoder_weights()
    z_part = self._z_preactivations(w, z)
    batch = tf.shape(z)[0]
    num_steps = tf.convert_to_tensor(num_steps, tf.int32)
    labels = tf.TensorArray(tf.int32, size=num_steps)

    def step(t, previous, state, labels):
      h, state = self._decoder_cell(w, tf.gather(w['hot'], previous) + z_part, state)
      label = tf.cast(pick(self._logits(w, h), t), tf.int32)
      return t + 1, label, state, labels.write(t, label)

    _, _, _, labels = tf.while_loop(
        lambda t, *_: t < num_steps, step,
        (tf.constant(0), tf.fill([batch], self.num_classes), self._initial_state(z), labels),
        maximum_iterations=num_steps)
    return tf.transpose(labels.stack())

  @_plain_tf
  def decode(self, z, temperature, seed, num_steps: int = 32) -> tf.Tensor:
    """Samples labels int32 [B, num_steps] from z [B, Z]: each step from
    softmax(logits / temperature), fed back (Magenta's CategoricalLstmDecoder.sample).
    Stateless: the draw of step t is keyed by (seed, t), so a seed repeats its output."""
    base = tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])
    temperature = tf.cast(temperature, tf.float32)

    def pick(logits, t):
      return sample_categorical(logits / temperature, _seed(base, t))

    return self._free_run(z, num_steps, pick)

  @_plain_tf
  def greedy_decode(self, z, num_steps: int = 32) -> tf.Tensor:
    """The most likely label at every step, fed back: labels int32 [B, num_steps]."""
    return self._free_run(z, num_steps, lambda logits, t: tf.argmax(logits, -1))

  @_plain_tf
  def call(self, inputs, training=False):
    labels, lengths = inputs[LABELS], inputs[LENGTHS]
    mu, _ = self.encode(labels, lengths)
    return self.teacher_forced_logits(labels, lengths, mu)

  @_plain_tf
  def example_stats(self, labels, lengths) -> Dict[str, tf.Tensor]:
    """Per-example sums float32 [B] for the Evaluator (/tmp/design/vae_eval.md):
    model.STAT_NAMES of the teacher-forced logits at z = mu, 'sampled_correct' (real
    steps where greedy_decode(mu) is right) and 'kl' (nats; 0 for a zero-length row)."""
    labels = tf.cast(labels, tf.int32)
    mask = model_lib.sequence_mask(lengths, tf.shape(labels)[1])
    mu, sigma = self.encode(labels, lengths)
    logits = self.teacher_forced_logits(labels, lengths, mu)
    stats = model_lib.example_stats(labels, logits, mask, self.config.no_event_label)
    greedy = self.greedy_decode(mu, tf.shape(labels)[1])
    stats['sampled_correct'] = tf.reduce_sum(
        tf.cast(tf.equal(greedy, labels), tf.float32) * mask, 1)
    stats['kl'] = kl_divergence(mu, sigma) * tf.cast(tf.reshape(lengths, [-1]) > 0, tf.float32)
    return stats

  # --- Training.

  def _step_seed(self, stream):
    return _seed(tf.constant([self.seed, 0], tf.int64), global_step(self.optimizer), stream)

  def _augment(self, labels, mask):
    """Melody transposition (config.converter.transpose_range), per example: a shift
    uniform over the shifts in the range that keep every note of the slice within
    [min_pitch, max_pitch]. Magenta instead transposes the whole NoteSequence before
    slicing by one shift uniform in the range, deleting notes that leave the MIDI range
    (NoteSequenceAugmenter, delete_out_of_range_notes=True), and its converter then
    extracts from what is left; here the slices are already extracted, so the shifts
    are restricted instead and no note is ever lost."""
    low, high = self.config.converter.transpose_range
    if self.config.kind != configs.MELODY or low == high == 0:
      return labels
    low, high = vae_encoding.transpose_limits(labels, self.config, mask)
    u = global_rows_uniform(tf.shape(low), self._step_seed(_TRANSPOSE_STREAM))
    amounts = vae_encoding.transpose_amounts(low, high, u)
    return vae_encoding.transpose_labels(labels, amounts, self.config)

  def _split(self, data):
    x, labels = data[0], data[1]
    labels = tf.cast(labels, tf.int32)
    lengths = tf.cast(x[LENGTHS], tf.int32)
    mask = model_lib.sequence_mask(lengths, tf.shape(labels)[1])
    return labels, lengths, mask

  def _forward(self, labels, lengths, mask, training):
    """Per-sequence terms float32 [B] and the logits (z sampled from q)."""
    step = global_step(self.optimizer)
    mu, sigma = self.encode(labels, lengths, training, self._step_seed(_DROPOUT_STREAM))
    eps = global_rows_normal(tf.shape(mu), self._step_seed(_EPS_STREAM))
    z = mu + sigma * eps
    probability = None
    if training and uses_sampling(self.hparams):
      probability = sampling_probability(step, self.hparams)
    dropout_seed = self._step_seed(_DECODER_DROPOUT_STREAM) if training else None
    logits = self._decode_train(labels, z, probability, self._step_seed(_SAMPLING_STREAM),
                                dropout_seed)
    xent = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    rows = tf.cast(lengths > 0, tf.float32)  # zero-length rows: padding, left out
    kl = kl_divergence(mu, sigma) * rows
    beta = kl_beta(step, self.hparams)
    terms = {'xent': tf.reduce_sum(xent * mask, 1), 'kl': kl, 'rows': rows,
             'kl_cost': kl_cost(kl, self.hparams.free_bits) * rows, 'beta': beta,
             'sampling_probability': (tf.constant(0.0) if probability is None
                                      else probability)}
    terms['objective'] = terms['xent'] + beta * terms['kl_cost']
    return terms, logits

  def _batch_stats(self, terms, labels, logits, mask):
    """Replica-summed sums for the metrics (see _RATIOS)."""
    correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels),
                      tf.float32)
    sums = {k: tf.reduce_sum(terms[k]) for k in ('xent', 'kl', 'rows', 'kl_cost', 'objective')}
    sums.update(steps=tf.reduce_sum(mask), correct=tf.reduce_sum(correct * mask))
    sums = model_lib._replica_sum(sums)
    sums['kl_bits'] = sums['kl'] / LN2
    sums['elbo'] = sums['xent'] + sums['kl']
    sums['beta'] = terms['beta']
    sums['sampling_probability'] = terms['sampling_probability']
    return sums

  def _update_metrics(self, terms, labels, logits, mask):
    sums = self._batch_stats(terms, labels, tf.stop_gradient(logits), mask)
    for metric in self.vae_metrics:
      metric.update_state(sums)
    return {m.name: m.result() for m in self.vae_metrics}

  @_plain_tf
  def train_step(self, data):
    labels, lengths, mask = self._split(data)
    labels = self._augment(labels, mask)
    global_rows = model_lib._replica_sum(tf.reduce_sum(tf.cast(lengths > 0, tf.float32)))
    with tf.GradientTape() as tape:
      terms, logits = self._forward(labels, lengths, mask, training=True)
      # This replica's share of the mean over the global batch's real sequences.
      loss = tf.reduce_sum(terms['objective']) / tf.maximum(global_rows, 1.0)
      scaled_loss = self.optimizer.scale_loss(loss)
    variables = self.trainable_variables
    grads = tape.gradient(scaled_loss, variables)
    grads, global_loss = model_lib._replica_sum((grads, loss))
    grads, norm = self._clip(grads)
    num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
    if num_replicas > 1:  # the Keras optimizer sums over replicas again
      grads = [None if g is None else g / num_replicas for g in grads]
    self._guarded_apply(global_loss, norm, grads, variables)
    return self._update_metrics(terms, labels, logits, mask)

  def _clip(self, grads):
    """Magenta's global_norm clip_mode (music_vae_train.py:172-184): clipped to
    grad_clip, or all zeros when the norm is >= grad_norm_clip_to_zero. Returns the
    gradients and the true (unscaled) global norm."""
    scale = self._loss_scale()
    norm = tf.linalg.global_norm([g for g in grads if g is not None]) / scale
    factor = tf.where(norm < self.hparams.grad_norm_clip_to_zero,
                      tf.minimum(1.0, self.hparams.grad_clip / tf.maximum(norm, 1e-30)), 0.0)
    return [None if g is None else g * tf.cast(factor, g.dtype) for g in grads], norm

  def _loss_scale(self):
    opt = self.optimizer
    if isinstance(opt, keras.optimizers.LossScaleOptimizer):
      return tf.cast(opt.dynamic_scale if opt.built else opt.initial_scale, tf.float32)
    return tf.constant(1.0)

  def _guarded_apply(self, loss, norm, grads, variables):
    """Applies the update only if the loss and the gradient norm are finite; else
    records the step in first_nonfinite_step (once). Under loss scaling non-finite
    gradients are the LossScaleOptimizer's business (it skips and lowers the scale)."""
    scaling = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
    ok = model_lib._all_finite([loss] if scaling else [loss, norm])
    first = self.first_nonfinite_step
    first.assign(tf.where(ok | (first >= 0), first,
                          tf.cast(global_step(self.optimizer), 'int64')))
    model_lib._apply_if(self.optimizer, ok, grads, variables)

  @_plain_tf
  def test_step(self, data):
    labels, lengths, mask = self._split(data)
    terms, logits = self._forward(labels, lengths, mask, training=False)
    return self._update_metrics(terms, labels, logits, mask)

  def get_config(self):
    return {'config': self.config.name, 'hparams': self.hparams.to_dict(), 'seed': self.seed}

  @classmethod
  def from_config(cls, config):
    hparams = configs.VaeHParams().replace(**config.pop('hparams'))
    return cls(configs.get_config(config.pop('config')), hparams, **config)


def build_model(config: configs.VaeConfig, hparams: configs.VaeHParams,
                dtype_policy: Optional[str] = None, jit_compile='auto',
                seed: int = 0) -> MusicVae:
  """Builds and compiles the model (variables, Adam slots on Magenta's learning-rate
  schedule, metrics) in the caller's tf.distribute scope. `dtype_policy`: None,
  'mixed_float16' or 'mixed_bfloat16' (LSTMs in low precision; mu, sigma, KL, logits
  and loss in float32). `jit_compile`: XLA for the whole train/test step; 'auto': off
  (see README: measured slower on CPU for these sizes) and off with several replicas
  or on GPUs."""
  model = MusicVae(config, hparams, seed=seed, name=f'{config.name}_vae', dtype=dtype_policy)
  steps = hparams.max_seq_len
  model({LABELS: tf.zeros([1, steps], tf.int32), LENGTHS: tf.fill([1], steps)})
  if jit_compile == 'auto':
    jit_compile = False
  schedule = MagentaLearningRate(hparams.learning_rate, hparams.decay_rate,
                                 hparams.min_learning_rate)
  model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule, epsilon=1e-8),
                jit_compile=bool(jit_compile))
  model.optimizer.build(model.trainable_variables)
  return model
