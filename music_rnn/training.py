"""TFX Trainer logic: `run_fn` trains the event RNN on Transform's output and exports it.

Training that survives: checkpoints in a stable directory (resume after a kill), the
best eval-loss weights exported (not the last), early stopping, a stop with advice at
the first non-finite loss, MirroredStrategy over N devices, mixed precision, warm start.

custom_config (only 'config_name' is required):
  'config_name': str; 'hparams': {overrides}; 'seed': int
  'num_evals': evaluations over the run (default 10; also at the last step)
  'devices': [str] MirroredStrategy devices, or 'replicas': N (first N GPUs, else N
      logical CPUs); default all GPUs, else the CPU
  'global_batch_size': split over the replicas, must divide; otherwise
      hparams.batch_size is per replica and the global batch is it times the replicas
  'checkpoint_dir': a stable root; the run's checkpoints go to <root>/<run key>
      (default <model_run_dir>/checkpoints: no resume across executions)
  'data_fingerprint': identifies the input data in the run key (default: the
      transformed examples' paths, stable while Transform is served from cache)
  'checkpoint_every': steps between checkpoints (default: the evaluation interval)
  'keep_best': best checkpoints kept (default 3)
  'early_stopping_patience': evaluations without a lower eval loss before stopping
  'mixed_precision': 'auto' (mixed_float16 on GPU, mixed_bfloat16 on CPU),
      'mixed_float16', 'mixed_bfloat16', or off (default)
  'fast_dev_run': bool: sequences cropped to FAST_DEV_RUN_MAX_STEPS, checkpoints kept in
      the execution (never resumed); the pipeline shrinks the steps and batch
Hyperparameters from a Tuner (fn_args.hyperparameters, a keras-tuner config dict)
override custom_config['hparams'], which override the config's defaults.
fn_args.base_model (the Trainer's base_model channel): warm start from that export.
"""

import json
import math
import os
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence

from absl import logging
import keras
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from music_rnn import checkpointing
from music_rnn import configs
from music_rnn import export
from music_rnn import features
from music_rnn import model as model_lib

DEFAULT_SEED = 0
DEFAULT_NUM_EVALS = 10
FAST_DEV_RUN_MAX_STEPS = 64  # fast-dev-run crops sequences (drums run to 512 steps)
MIXED_PRECISION_POLICIES = ('mixed_float16', 'mixed_bfloat16')
# custom_config keys beyond config_name/hparams/seed/checkpoint_dir (module docstring).
TRAINER_OPTIONS = ('num_evals', 'devices', 'replicas', 'global_batch_size', 'data_fingerprint',
                   'checkpoint_every', 'keep_best', 'early_stopping_patience',
                   'mixed_precision', 'fast_dev_run', 'xla_generation')
METRICS_FILE = 'metrics.json'
LOSS_CURVE_FILE = 'loss_curve.png'


# --- Hyperparameters. -----------------------------------------------------------


def tuner_values(hyperparameters: Any) -> Dict[str, Any]:
  """Hparam values from a keras-tuner HyperParameters (object or get_config() dict).

  keras-tuner's bookkeeping entries ('tuner/epochs', ...) are dropped; a
  comma-separated string for rnn_layer_sizes (tuners only choose scalars) is split.
  """
  if not hyperparameters:
    return {}
  if isinstance(hyperparameters, dict):
    values = hyperparameters.get('values', hyperparameters)
  else:
    values = hyperparameters.values
  values = {k: v for k, v in values.items() if not k.startswith('tuner/')}
  sizes = values.get('rnn_layer_sizes')
  if isinstance(sizes, str):
    values['rnn_layer_sizes'] = [int(s) for s in sizes.replace('[', '').replace(']', '').split(',')]
  return values


def resolve_hparams(config: configs.ModelConfig, overrides: Optional[Dict[str, Any]] = None,
                    hyperparameters: Any = None) -> configs.HParams:
  """config defaults <- custom_config['hparams'] <- tuner values."""
  return config.hparams.replace(**(overrides or {})).replace(**tuner_values(hyperparameters))


# --- Input pipeline. ------------------------------------------------------------


def _glob(file_patterns: Sequence[str]) -> List[str]:
  if isinstance(file_patterns, str):
    file_patterns = [file_patterns]
  files = sorted(f for pattern in file_patterns for f in tf.io.gfile.glob(pattern))
  if not files:
    raise FileNotFoundError(f'No files match {list(file_patterns)}')
  return files


def parse_transformed(serialized, feature_spec: Dict[str, Any], input_size: int):
  """One transformed tf.Example -> (inputs [length, input_size] float32, labels, length)."""
  parsed = tf.io.parse_single_example(serialized, feature_spec)
  length = tf.cast(tf.reshape(parsed[features.LENGTH], []), tf.int32)
  flat = tf.cast(export.to_dense(parsed[features.INPUTS]), tf.float32)
  labels = tf.cast(tf.reshape(export.to_dense(parsed[features.LABELS]), [-1]), tf.int32)
  with tf.control_dependencies([
      tf.debugging.assert_equal(tf.size(flat), length * input_size,
                                message='inputs size != length * input_size'),
      tf.debugging.assert_equal(tf.size(labels), tf.maximum(length - 1, 0),
                                message='labels size != length - 1'),
  ]):
    inputs = tf.reshape(flat, [-1, input_size])
  return inputs, labels, length


def _pad_rows(batch_size: int):
  """Pads a batch to exactly `batch_size` rows with zero-length sequences.

  A short final batch would otherwise be split unevenly over replicas (or leave
  some empty), which Keras 3.6's first-batch build step cannot handle; the
  zero-length rows are masked out of every metric.
  """
  def pad(x, labels):
    missing = batch_size - tf.shape(labels)[0]
    x = {model_lib.INPUTS: tf.pad(x[model_lib.INPUTS], [[0, missing], [0, 0], [0, 0]]),
         model_lib.LENGTHS: tf.pad(x[model_lib.LENGTHS], [[0, missing]])}
    return x, tf.pad(labels, [[0, missing], [0, 0]])
  return pad


def _sequences(file_patterns: Sequence[str], tf_transform_output: tft.TFTransformOutput,
               input_size: int, shuffle_buffer: int = 0, seed: int = DEFAULT_SEED):
  """(inputs [length, input_size], labels [length - 1], length) of sequences with >= 2 steps."""
  feature_spec = tf_transform_output.transformed_feature_spec()
  files = _glob(file_patterns)
  ds = tf.data.TFRecordDataset(files, compression_type='GZIP',
                               num_parallel_reads=min(len(files), 4))
  if shuffle_buffer:
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  ds = ds.map(lambda s: parse_transformed(s, feature_spec, input_size),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.filter(lambda inputs, labels, length: length >= 2)


def has_sequences(file_patterns: Sequence[str],
                  tf_transform_output: tft.TFTransformOutput, input_size: int) -> bool:
  """Whether the files hold at least one sequence with something to predict."""
  return any(True for _ in _sequences(file_patterns, tf_transform_output, input_size).take(1))


def make_dataset(file_patterns: Sequence[str], tf_transform_output: tft.TFTransformOutput,
                 config: configs.ModelConfig, global_batch_size: int, *, training: bool,
                 seed: int = DEFAULT_SEED, max_steps: Optional[int] = None) -> tf.data.Dataset:
  """Transformed gzipped TFRecords -> ({'inputs', 'lengths'}, labels) padded batches.

  The model sees inputs[:length-1], aligned with labels[i] = event i+1; sequences
  with fewer than 2 steps (nothing to predict) are dropped. `global_batch_size`
  is the batch over all replicas; the distribution strategy splits it.
  Training: shuffled with `seed`, repeated forever. Eval: one pass, in order,
  every batch padded to the full size. `max_steps` crops every sequence (fast-dev-run).
  """
  input_size = config.input_size
  # Serialized drum examples are up to ~1 MB (512 steps x 518 floats): bound memory.
  shuffle_buffer = max(256, 2 * global_batch_size) if training else 0
  ds = _sequences(file_patterns, tf_transform_output, input_size, shuffle_buffer, seed)
  ds = ds.map(lambda inputs, labels, length: (
      {model_lib.INPUTS: inputs[:length - 1], model_lib.LENGTHS: length - 1}, labels))
  if max_steps:
    ds = ds.map(lambda x, labels: (
        {model_lib.INPUTS: x[model_lib.INPUTS][:max_steps],
         model_lib.LENGTHS: tf.minimum(x[model_lib.LENGTHS], max_steps)}, labels[:max_steps]))
  if training:
    ds = ds.repeat()
  ds = ds.padded_batch(
      global_batch_size,
      padded_shapes=({model_lib.INPUTS: [None, input_size], model_lib.LENGTHS: []}, [None]))
  if not training:
    ds = ds.map(_pad_rows(global_batch_size))
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


# --- Devices, batch, precision. -------------------------------------------------


def use_logical_cpus(replicas: int) -> None:
  """Splits the CPU into `replicas` logical devices when there is no GPU.

  Lets MirroredStrategy run N replicas on a CPU-only machine (tests, debugging the
  multi-device path). Only possible before TensorFlow initializes its devices: the
  CLI calls it first thing; later calls leave the devices as they are.
  """
  if replicas <= 1 or tf.config.list_physical_devices('GPU'):
    return
  cpu = tf.config.list_physical_devices('CPU')[0]
  if len(tf.config.get_logical_device_configuration(cpu) or []) >= replicas:
    return
  try:
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
  except RuntimeError:
    pass  # already initialized; select_devices reports what is missing


def select_devices(custom_config: Dict[str, Any]) -> Optional[List[str]]:
  """custom_config 'devices' or 'replicas' -> MirroredStrategy's devices (None: default)."""
  devices = custom_config.get('devices')
  replicas = custom_config.get('replicas')
  if devices:
    if replicas and int(replicas) != len(devices):
      raise ValueError(f'replicas={replicas} but {len(devices)} devices given: {devices}')
    return list(devices)
  if not replicas:
    return None
  replicas = int(replicas)
  use_logical_cpus(replicas)
  gpus = tf.config.list_logical_devices('GPU')
  if len(gpus) >= replicas:
    return [d.name for d in gpus[:replicas]]
  cpus = tf.config.list_logical_devices('CPU')
  if not gpus and len(cpus) >= replicas:
    return [d.name for d in cpus[:replicas]]
  raise ValueError(
      f'replicas={replicas}, but this process has {len(gpus)} GPU(s) and {len(cpus)} CPU '
      'device(s). On a CPU-only machine, `music-rnn run --replicas N` splits the CPU into '
      'N logical devices before TensorFlow starts.')


def split_batch(hparams: configs.HParams, replicas: int,
                global_batch_size: Optional[int] = None) -> configs.HParams:
  """hparams with the per-replica batch_size: global // replicas when a global is given."""
  if not global_batch_size:
    return hparams
  global_batch_size = int(global_batch_size)
  if global_batch_size < replicas or global_batch_size % replicas:
    lower = max(replicas, global_batch_size // replicas * replicas)
    raise ValueError(
        f'Global batch size {global_batch_size} does not divide over {replicas} replicas; '
        f'use a multiple of {replicas} (e.g. {lower} or {lower + replicas}), or give the '
        f'per-replica batch size (hparams batch_size) instead.')
  return hparams.replace(batch_size=global_batch_size // replicas)


def dtype_policy(setting: Any) -> Optional[str]:
  """custom_config 'mixed_precision' -> a Keras dtype policy name (None: float32)."""
  if setting in (None, False, '', 'off', 'none', 'float32'):
    return None
  if setting in (True, 'auto', 'on'):
    return 'mixed_float16' if tf.config.list_physical_devices('GPU') else 'mixed_bfloat16'
  if setting in MIXED_PRECISION_POLICIES:
    return setting
  raise ValueError(f"mixed_precision must be 'auto', 'off' or one of "
                   f'{list(MIXED_PRECISION_POLICIES)}, got {setting!r}')


# --- Warm start. ----------------------------------------------------------------


def find_export(path: str) -> str:
  """The SavedModel dir in `path`: itself, its Format-Serving/ (a Trainer Model artifact),
  or its parent (TFX appends Format-Serving/ to an imported pushed model's URI)."""
  for candidate in (path, os.path.join(path, 'Format-Serving'), os.path.dirname(path)):
    if tf.io.gfile.exists(os.path.join(candidate, 'saved_model.pb')):
      return candidate
  raise FileNotFoundError(f'No SavedModel (saved_model.pb) in {path} or its Format-Serving/')


def warm_start(model: model_lib.EventSequenceRnn, config: configs.ModelConfig,
               hparams: configs.HParams, base_model: str) -> str:
  """Copies a previous export's weights into `model`, matched by variable path.

  Fine-tuning (e.g. drums of one style adapted to another) needs the same config and
  layer shapes; anything else fails here, naming what differs. Returns the export dir.
  """
  export_dir = find_export(base_model)
  config_path = os.path.join(export_dir, export.CONFIG_ASSET)
  base = {}
  if tf.io.gfile.exists(config_path):
    with tf.io.gfile.GFile(config_path) as f:
      base = json.loads(f.read())
    for key, ours in (('name', config.name), ('input_size', config.input_size),
                      ('num_classes', config.num_classes)):
      if base.get(key) != ours:
        raise ValueError(f'Cannot warm-start {config.name} from {export_dir}: its {key} is '
                         f'{base.get(key)!r}, this run needs {ours!r}.')
  loaded = tf.saved_model.load(export_dir)
  saved = list(getattr(loaded, 'model_variables', []))
  targets = list(model.trainable_variables)
  if not saved:
    raise ValueError(f'{export_dir} is not a music_rnn export (no model_variables)')
  paths_file = os.path.join(export_dir, export.VARIABLES_ASSET)
  if tf.io.gfile.exists(paths_file):
    with tf.io.gfile.GFile(paths_file) as f:
      by_path = dict(zip((e['path'] for e in json.loads(f.read())), saved))
    pairs = [(t, by_path.get(t.path)) for t in targets]
  else:  # an export without the list: same class, same order
    pairs = list(zip(targets, saved + [None] * max(0, len(targets) - len(saved))))
  differ = [f'{t.path}: this model {tuple(t.shape)}, base '
            f'{"missing" if s is None else tuple(s.shape)}'
            for t, s in pairs if s is None or tuple(s.shape) != tuple(t.shape)]
  if differ:
    raise ValueError(
        f'Cannot warm-start from {export_dir}: {len(differ)} of {len(targets)} weights differ '
        f'in shape ({"; ".join(differ[:3])}). Warm start needs the same rnn_layer_sizes and '
        f'attn_length: base {base.get("hparams", "unknown")}, this run {hparams.to_dict()}.')
  for target, source in pairs:
    target.assign(tf.cast(source, target.dtype))
  logging.info('Warm start: %d weights from %s', len(pairs), export_dir)
  return export_dir


# --- Schedule and callbacks. ----------------------------------------------------


class DivergenceError(FloatingPointError):
  """Training produced a non-finite loss or weights."""


def divergence_message(what: str, step: int, train_steps: int,
                       hparams: configs.HParams, checkpoint_dir: str) -> str:
  lr = hparams.learning_rate
  return (f'Training diverged: {what} at step {step} of {train_steps}. Magenta\'s remedies: '
          f'lower learning_rate (now {lr:g}; try {lr / 10:g}), lower clip_norm (now '
          f'{hparams.clip_norm:g}), or smaller rnn_layer_sizes (now '
          f'{list(hparams.rnn_layer_sizes)}), e.g. --hparams "learning_rate={lr / 10:g}". '
          f'Checkpoints up to the last finite step are in {checkpoint_dir}; changed hparams '
          'start a fresh run there.')


def epoch_plan(start: int, total: int, eval_every: int, checkpoint_every: int):
  """Keras epochs from `start` to `total`: (steps_per_epoch, epochs, eval epochs 1-based).

  An epoch is the largest step count that both intervals are multiples of, so every
  checkpoint and evaluation falls on an epoch end (Keras's only hook for validation);
  an epoch evaluates when it crosses a multiple of `eval_every`, and the last one always.
  """
  length = math.gcd(eval_every, checkpoint_every)
  epochs = math.ceil((total - start) / length)
  evals = []
  for i in range(epochs):
    begin, end = start + i * length, min(start + (i + 1) * length, total)
    if end // eval_every > begin // eval_every or end == total:
      evals.append(i + 1)
  return length, epochs, evals


class _NanGuard(keras.callbacks.Callback):
  """Raises DivergenceError at the first step whose loss is not finite."""

  def __init__(self, message):
    super().__init__()
    self.message = message

  def on_train_batch_end(self, batch, logs=None):
    loss = float(np.asarray((logs or {}).get('loss', 0.0)))
    if not math.isfinite(loss):
      # The running mean turns non-finite at the first bad step, and stays so.
      raise DivergenceError(self.message(f'the loss is {loss}',
                                         int(self.model.optimizer.iterations.numpy())))


class _StepLimit(keras.callbacks.Callback):
  """Stops exactly at the global step `train_steps` (the last epoch may be short)."""

  def __init__(self, train_steps: int):
    super().__init__()
    self.train_steps = train_steps

  def on_train_batch_end(self, batch, logs=None):
    if int(self.model.optimizer.iterations.numpy()) >= self.train_steps:
      self.model.stop_training = True


class _Recorder(keras.callbacks.Callback):
  """One record per evaluation, against the global step: TensorBoard + history.

  Train metrics are the step-weighted mean of the epochs since the last record.
  """

  def __init__(self, log_dir: str, global_batch_size: int, eval_epochs: Sequence[int],
               history: List[Dict[str, Any]]):
    super().__init__()
    self.train_writer = tf.summary.create_file_writer(os.path.join(log_dir, 'train'))
    self.eval_writer = tf.summary.create_file_writer(os.path.join(log_dir, 'eval'))
    self.global_batch_size = global_batch_size
    self.eval_epochs = set(eval_epochs)
    self.history = list(history)
    self.train_seconds = 0.0
    self._sums: Dict[str, float] = {}
    self._steps = 0
    self._seconds = 0.0
    self._start = self._end = 0.0
    self._start_step = 0
    for record in self.history:  # a resumed run's curves start where the last one did
      self._write(record)

  def _step(self) -> int:
    return int(self.model.optimizer.iterations.numpy())

  def on_epoch_begin(self, epoch, logs=None):
    self._start, self._start_step = time.perf_counter(), self._step()

  def on_train_batch_end(self, batch, logs=None):
    self._end = time.perf_counter()  # before validation starts

  def on_epoch_end(self, epoch, logs=None):
    logs = logs or {}
    step = self._step()
    steps, seconds = step - self._start_step, max(self._end - self._start, 0.0)
    self.train_seconds += seconds
    self._seconds += seconds
    self._steps += steps
    for name in model_lib.METRIC_NAMES:
      if name in logs:
        self._sums[name] = self._sums.get(name, 0.0) + float(logs[name]) * steps
    if epoch + 1 not in self.eval_epochs and not self.model.stop_training:
      return
    rate = self._steps / self._seconds if self._seconds > 0 else float('nan')
    record = {'step': step, 'steps_per_sec': rate,
              'examples_per_sec': rate * self.global_batch_size}
    for name, total in self._sums.items():
      record[name] = total / max(self._steps, 1)
    if 'loss' in record:
      record['perplexity'] = math.exp(min(record['loss'], 700.0))
    for name in model_lib.METRIC_NAMES:
      if 'val_' + name in logs:
        record['val_' + name] = float(logs['val_' + name])
    self._sums, self._steps, self._seconds = {}, 0, 0.0
    self.history.append(record)
    self._write(record)
    logging.info('step %d: %s', step, record)

  def _write(self, record):
    step = record['step']
    with self.train_writer.as_default(step=step):
      for name in model_lib.METRIC_NAMES + ('steps_per_sec', 'examples_per_sec'):
        if record.get(name) is not None:
          tf.summary.scalar(name, record[name])
    with self.eval_writer.as_default(step=step):
      for name in model_lib.METRIC_NAMES:
        if record.get('val_' + name) is not None:
          tf.summary.scalar(name, record['val_' + name])
    self.train_writer.flush()
    self.eval_writer.flush()


class _Checkpointing(keras.callbacks.Callback):
  """At epoch ends: refuse non-finite weights, track the best, stop early, checkpoint."""

  def __init__(self, checkpointer: checkpointing.Checkpointer, recorder: _Recorder,
               checkpoint_every: int, patience: Optional[int], message):
    super().__init__()
    self.checkpointer, self.recorder = checkpointer, recorder
    self.checkpoint_every, self.patience, self.message = checkpoint_every, patience, message
    self.last_saved = checkpointer.step

  def on_epoch_end(self, epoch, logs=None):
    logs = logs or {}
    step = self.checkpointer.step
    if not all(bool(tf.reduce_all(tf.math.is_finite(v))) for v in self.model.trainable_variables):
      raise DivergenceError(self.message('the weights are not finite', step))
    evaluated = 'val_loss' in logs
    if evaluated:
      val_loss = float(logs['val_loss'])
      if not math.isfinite(val_loss):
        raise DivergenceError(self.message(f'the eval loss is {val_loss}', step))
      self.checkpointer.record_eval(val_loss)
      state = self.checkpointer.state
      if self.patience and int(state.evals_since_best.numpy()) >= self.patience:
        state.stopped_at.assign(step)
        self.model.stop_training = True
        logging.info('Early stopping at step %d: no lower eval loss for %d evaluations '
                     '(best %.4f at step %d)', step, self.patience,
                     float(state.best_loss.numpy()), int(state.best_step.numpy()))
    if (evaluated or self.model.stop_training
        or step // self.checkpoint_every > self.last_saved // self.checkpoint_every):
      self.checkpointer.save(self.recorder.history)
      self.last_saved = step


# --- Reporting. -----------------------------------------------------------------


def _clean(metrics: Optional[Dict[str, Any]]) -> Optional[Dict[str, Optional[float]]]:
  """Keeps the five metrics; NaN (no real step seen) becomes null."""
  if metrics is None:
    return None
  out = {}
  for name in model_lib.METRIC_NAMES:
    value = float(metrics[name]) if name in metrics else float('nan')
    out[name] = None if math.isnan(value) else value
  return out


def _json_safe(value):
  """NaN/inf -> None, numpy scalars -> Python, recursively (strict JSON)."""
  if isinstance(value, dict):
    return {k: _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  return value


def _plot_loss_curve(history: List[Dict[str, Any]], path: str, title: str,
                     best_step: Optional[int] = None) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4))
  steps = [r['step'] for r in history]
  ax.plot(steps, [r.get('loss', np.nan) for r in history], 'o-',
          label='train (mean over interval, dropout on)')
  if any('val_loss' in r for r in history):
    ax.plot(steps, [r.get('val_loss', np.nan) for r in history], 's-', label='eval')
  if best_step is not None:
    ax.axvline(best_step, color='tab:green', linestyle=':', label=f'exported (step {best_step})')
  ax.set_xlabel('step')
  ax.set_ylabel('loss (xent per step)')
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  ax.legend()
  fig.tight_layout()
  with tf.io.gfile.GFile(path, 'wb') as f:
    fig.savefig(f, format='png', dpi=100)
  plt.close(fig)


def _write_hparams_summary(log_dir: str, run_key: str, hparams: configs.HParams,
                           extra: Dict[str, Any]) -> None:
  """TensorBoard's HParams tab: this run's values, comparable across runs."""
  from tensorboard.plugins.hparams import api as hp_api  # pylint: disable=g-import-not-at-top
  values = {k: (str(v) if isinstance(v, (list, tuple)) else v)
            for k, v in {**hparams.to_dict(), **extra}.items() if v is not None}
  with tf.summary.create_file_writer(log_dir).as_default():
    hp_api.hparams(values, trial_id=run_key)


# --- run_fn. --------------------------------------------------------------------


def run_fn(fn_args) -> None:
  """Trains (resuming if a checkpoint exists), writes metrics and curves, exports the best."""
  custom_config = dict(fn_args.custom_config or {})
  if 'config_name' not in custom_config:
    raise ValueError("Trainer custom_config needs 'config_name'; one of "
                     f'{sorted(configs.CONFIGS)}')
  config = configs.get_config(custom_config['config_name'])
  hparams = resolve_hparams(config, custom_config.get('hparams'), fn_args.hyperparameters)
  seed = int(custom_config.get('seed', DEFAULT_SEED))
  train_steps = int(fn_args.train_steps or 0)
  if train_steps < 1:
    raise ValueError(f'train_steps must be >= 1, got {fn_args.train_steps}')
  eval_steps = int(fn_args.eval_steps) if fn_args.eval_steps else None
  policy = dtype_policy(custom_config.get('mixed_precision'))
  keras.utils.set_random_seed(seed)

  strategy = tf.distribute.MirroredStrategy(select_devices(custom_config))
  replicas = strategy.num_replicas_in_sync
  hparams = split_batch(hparams, replicas, custom_config.get('global_batch_size'))
  global_batch = hparams.batch_size * replicas
  logging.info('Config %s, hparams %s, precision %s', config.name, hparams.to_dict(),
               policy or 'float32')
  logging.info('Batch: %d per replica x %d replica(s) = global batch %d',
               hparams.batch_size, replicas, global_batch)

  tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
  if not has_sequences(fn_args.train_files, tf_transform_output, config.input_size):
    raise ValueError(f'No training sequence with >= 2 steps in {fn_args.train_files}')
  try:
    has_eval = has_sequences(fn_args.eval_files, tf_transform_output, config.input_size)
    eval_status = 'ok' if has_eval else 'empty: the eval split has no sequence with >= 2 steps'
  except FileNotFoundError as e:
    has_eval, eval_status = False, f'empty: {e}'
  max_steps = FAST_DEV_RUN_MAX_STEPS if custom_config.get('fast_dev_run') else None
  if has_eval:
    eval_ds = make_dataset(fn_args.eval_files, tf_transform_output, config, global_batch,
                           training=False, max_steps=max_steps)
    if eval_steps:
      eval_ds = eval_ds.take(eval_steps)
  else:
    eval_ds = None
    logging.warning('No eval metrics: %s (%s); the last weights are exported.', eval_status,
                    fn_args.eval_files)

  with strategy.scope():
    model = model_lib.build_model(config, hparams, policy)

  # What makes a re-run "the same run": then it resumes instead of starting over.
  train_files = fn_args.train_files
  spec = {
      'config_name': config.name,
      'hparams': {k: v for k, v in hparams.to_dict().items() if k != 'batch_size'},
      'global_batch_size': global_batch,
      'seed': seed,
      'train_steps': train_steps,
      'mixed_precision': policy,
      'base_model': fn_args.base_model or None,
      'data': custom_config.get('data_fingerprint') or sorted(
          [train_files] if isinstance(train_files, str) else train_files),
  }
  run_key = checkpointing.fingerprint(spec)
  root = custom_config.get('checkpoint_dir')
  if custom_config.get('fast_dev_run'):
    root = os.path.join(fn_args.model_run_dir, 'checkpoints')  # a smoke test: never resumed
  if not root:
    root = os.path.join(fn_args.model_run_dir, 'checkpoints')
    logging.warning("No stable checkpoint_dir: checkpoints go to this execution's %s, "
                    'and a re-run will not resume from them.', root)
  checkpoint_dir = os.path.join(root, run_key)
  ckpt = checkpointing.Checkpointer(
      checkpoint_dir, model, int(custom_config.get('keep_best', checkpointing.DEFAULT_KEEP_BEST)))
  ckpt.write_spec(spec)
  start_step = ckpt.restore()
  warm_from = None
  if start_step:
    logging.info('Resuming from the checkpoint at step %d of %d in %s', start_step,
                 train_steps, checkpoint_dir)
  else:
    logging.info('Checkpoints: %s', checkpoint_dir)
    if fn_args.base_model:
      warm_from = warm_start(model, config, hparams, fn_args.base_model)

  num_evals = max(1, int(custom_config.get('num_evals', DEFAULT_NUM_EVALS)))
  eval_every = math.ceil(train_steps / min(num_evals, train_steps))
  checkpoint_every = int(custom_config.get('checkpoint_every') or eval_every)
  if checkpoint_every < 1:
    raise ValueError(f'checkpoint_every must be >= 1, got {checkpoint_every}')
  patience = custom_config.get('early_stopping_patience')
  patience = int(patience) if patience else None
  if patience and not has_eval:
    logging.warning('Early stopping needs eval metrics; the eval split has none: ignored.')
    patience = None

  def message(what, step):
    return divergence_message(what, step, train_steps, hparams, checkpoint_dir)

  history = ckpt.history(start_step)
  steps_per_epoch, epochs, eval_epochs = epoch_plan(start_step, train_steps, eval_every,
                                                    checkpoint_every)
  recorder = _Recorder(fn_args.model_run_dir, global_batch, eval_epochs, history)
  _write_hparams_summary(fn_args.model_run_dir, run_key, hparams, {
      'config_name': config.name, 'global_batch_size': global_batch, 'seed': seed,
      'train_steps': train_steps, 'mixed_precision': policy or 'float32'})
  stopped = bool(patience) and int(ckpt.state.evals_since_best.numpy()) >= patience
  with warnings.catch_warnings():
    # Keras 3.6 says this at the end of every pass over a dataset of unknown size
    # (ours: the filter); the training data repeats forever, so it is only noise.
    warnings.filterwarnings('ignore', message='Your input ran out of data')
    if start_step < train_steps and not stopped:
      ckpt.state.stopped_at.assign(-1)  # e.g. stopped before, now with more patience
      # A resumed run draws a fresh shuffle rather than replaying the first batches.
      train_ds = make_dataset(fn_args.train_files, tf_transform_output, config, global_batch,
                              training=True, seed=seed + start_step, max_steps=max_steps)
      callbacks = [_NanGuard(message), _StepLimit(train_steps), recorder,
                   _Checkpointing(ckpt, recorder, checkpoint_every, patience, message)]
      model.fit(train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch,
                validation_data=eval_ds, validation_freq=eval_epochs, callbacks=callbacks,
                verbose=2)
    steps_done = ckpt.step
    if steps_done > ckpt.saved_step():
      ckpt.save(recorder.history)
    best = ckpt.restore_best() if has_eval else None
    # Final metrics in inference mode, of the exported weights: eval split, and as
    # many train batches.
    eval_metrics = model.evaluate(eval_ds, return_dict=True, verbose=0) if has_eval else None
    train_sample = make_dataset(fn_args.train_files, tf_transform_output, config,
                                global_batch, training=False,
                                max_steps=max_steps).take(eval_steps or 10)
    train_metrics = model.evaluate(train_sample, return_dict=True, verbose=0)
  stopped_at = int(ckpt.state.stopped_at.numpy())
  report = {
      'config_name': config.name,
      'hparams': hparams.to_dict(),
      'seed': seed,
      'num_replicas': replicas,
      'per_replica_batch_size': hparams.batch_size,
      'global_batch_size': global_batch,
      'mixed_precision': policy,
      'train_steps': steps_done,
      'configured_train_steps': train_steps,
      'steps_this_run': steps_done - start_step,
      'resumed_from_step': start_step or None,
      'stopped_early_at_step': stopped_at if stopped_at >= 0 else None,
      'early_stopping_patience': patience,
      'eval_steps': eval_steps,
      'exported': ({'weights': 'best', 'step': best['step'], 'eval_loss': best['eval_loss']}
                   if best else {'weights': 'last', 'step': steps_done}),
      'best_checkpoints': [{k: e[k] for k in ('step', 'eval_loss')} for e in ckpt.best],
      'checkpoint_dir': checkpoint_dir,
      'warm_start_from': warm_from or (fn_args.base_model if start_step else None),
      'fast_dev_run': bool(custom_config.get('fast_dev_run')),
      'train': _clean(train_metrics),
      'eval': _clean(eval_metrics),
      'eval_status': eval_status,
      'train_last_interval': _clean(recorder.history[-1]) if recorder.history else None,
      # Wall time of this execution's training intervals (validation excluded).
      'train_steps_per_sec': ((steps_done - start_step) / recorder.train_seconds
                              if recorder.train_seconds else None),
      'train_examples_per_sec': ((steps_done - start_step) * global_batch
                                 / recorder.train_seconds if recorder.train_seconds else None),
      'history': recorder.history,
  }
  tf.io.gfile.makedirs(fn_args.model_run_dir)
  with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, METRICS_FILE), 'w') as f:
    f.write(json.dumps(_json_safe(report), indent=2, sort_keys=True, allow_nan=False))
  _plot_loss_curve(recorder.history, os.path.join(fn_args.model_run_dir, LOSS_CURVE_FILE),
                   f'{config.name}: {steps_done} steps, global batch {global_batch}',
                   best['step'] if best else None)
  logging.info('Final train metrics %s; eval metrics %s (%s weights, step %d)',
               report['train'], report['eval'], report['exported']['weights'],
               report['exported']['step'])

  # XLA-compiled sampling (default): fastest; TF Serving runs it only with
  # --xla_cpu_compilation_enabled. xla_generation=False exports plain TensorFlow ops.
  export.export_serving_model(model, config, hparams, tf_transform_output,
                              fn_args.serving_model_dir,
                              jit_compile=bool(custom_config.get('xla_generation', True)))
