"""TFX Trainer logic: `run_fn` trains the event RNN on Transform's output and exports it.

custom_config: {'config_name': str, 'hparams': {overrides}, 'seed': int,
                'num_evals': int (how many times to evaluate during training, default 10),
                'devices': [str] (MirroredStrategy devices; default all GPUs, else the CPU)}.
Hyperparameters from a Tuner (fn_args.hyperparameters, a keras-tuner config dict)
override custom_config['hparams'], which override the config's defaults.
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

from music_rnn import configs
from music_rnn import export
from music_rnn import features
from music_rnn import model as model_lib

DEFAULT_SEED = 0
DEFAULT_NUM_EVALS = 10
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


def _dense(x) -> tf.Tensor:
  if isinstance(x, tf.SparseTensor):
    return tf.sparse.to_dense(x)
  if isinstance(x, tf.RaggedTensor):
    return x.to_tensor()
  return x


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
  flat = tf.cast(_dense(parsed[features.INPUTS]), tf.float32)
  labels = tf.cast(tf.reshape(_dense(parsed[features.LABELS]), [-1]), tf.int32)
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
                 seed: int = DEFAULT_SEED) -> tf.data.Dataset:
  """Transformed gzipped TFRecords -> ({'inputs', 'lengths'}, labels) padded batches.

  The model sees inputs[:length-1], aligned with labels[i] = event i+1; sequences
  with fewer than 2 steps (nothing to predict) are dropped. `global_batch_size`
  is the batch over all replicas; the distribution strategy splits it.
  Training: shuffled with `seed`, repeated forever. Eval: one pass, in order,
  every batch padded to the full size.
  """
  input_size = config.input_size
  # Serialized drum examples are up to ~1 MB (512 steps x 518 floats): bound memory.
  shuffle_buffer = max(256, 2 * global_batch_size) if training else 0
  ds = _sequences(file_patterns, tf_transform_output, input_size, shuffle_buffer, seed)
  ds = ds.map(lambda inputs, labels, length: (
      {model_lib.INPUTS: inputs[:length - 1], model_lib.LENGTHS: length - 1}, labels))
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


# --- Callbacks. -----------------------------------------------------------------


class _StepLimit(keras.callbacks.Callback):
  """Stops exactly after `train_steps` steps (the last 'epoch' may be short)."""

  def __init__(self, train_steps: int, steps_per_epoch: int):
    super().__init__()
    self.train_steps, self.steps_per_epoch, self.epoch = train_steps, steps_per_epoch, 0

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch = epoch

  def on_train_batch_end(self, batch, logs=None):
    if self.epoch * self.steps_per_epoch + batch + 1 >= self.train_steps:
      self.model.stop_training = True


class _Recorder(keras.callbacks.Callback):
  """Per-interval train/eval metrics against the global step: TensorBoard + history."""

  def __init__(self, log_dir: str, global_batch_size: int):
    super().__init__()
    self.train_writer = tf.summary.create_file_writer(os.path.join(log_dir, 'train'))
    self.eval_writer = tf.summary.create_file_writer(os.path.join(log_dir, 'eval'))
    self.global_batch_size = global_batch_size
    self.history: List[Dict[str, Any]] = []
    self._start = self._end = 0.0
    self._start_step = 0
    self.train_seconds = 0.0

  def _step(self) -> int:
    return int(self.model.optimizer.iterations.numpy())

  def on_epoch_begin(self, epoch, logs=None):
    self._start, self._start_step = time.perf_counter(), self._step()

  def on_train_batch_end(self, batch, logs=None):
    self._end = time.perf_counter()  # before validation starts

  def on_epoch_end(self, epoch, logs=None):
    logs = logs or {}
    step = self._step()
    seconds = self._end - self._start
    self.train_seconds += seconds
    steps_per_sec = (step - self._start_step) / seconds if seconds > 0 else float('nan')
    record = {'step': step, 'steps_per_sec': steps_per_sec,
              'examples_per_sec': steps_per_sec * self.global_batch_size}
    with self.train_writer.as_default(step=step):
      for name in model_lib.METRIC_NAMES:
        if name in logs:
          record[name] = float(logs[name])
          tf.summary.scalar(name, logs[name])
      tf.summary.scalar('steps_per_sec', steps_per_sec)
      tf.summary.scalar('examples_per_sec', record['examples_per_sec'])
    with self.eval_writer.as_default(step=step):
      for name in model_lib.METRIC_NAMES:
        if 'val_' + name in logs:
          record['val_' + name] = float(logs['val_' + name])
          tf.summary.scalar(name, logs['val_' + name])
    self.train_writer.flush()
    self.eval_writer.flush()
    self.history.append(record)
    logging.info('step %d: %s', step, record)


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


def _plot_loss_curve(history: List[Dict[str, Any]], path: str, title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4))
  steps = [r['step'] for r in history]
  ax.plot(steps, [r.get('loss', np.nan) for r in history], 'o-',
          label='train (mean over interval, dropout on)')
  if any('val_loss' in r for r in history):
    ax.plot(steps, [r.get('val_loss', np.nan) for r in history], 's-', label='eval')
  ax.set_xlabel('step')
  ax.set_ylabel('loss (xent per step)')
  ax.set_title(title)
  ax.grid(True, alpha=0.3)
  ax.legend()
  fig.tight_layout()
  with tf.io.gfile.GFile(path, 'wb') as f:
    fig.savefig(f, format='png', dpi=100)
  plt.close(fig)


# --- run_fn. --------------------------------------------------------------------


def run_fn(fn_args) -> None:
  """Trains on fn_args.train_files, evaluates, writes metrics, exports the SavedModel."""
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
  keras.utils.set_random_seed(seed)

  strategy = tf.distribute.MirroredStrategy(custom_config.get('devices'))
  replicas = strategy.num_replicas_in_sync
  global_batch = hparams.batch_size * replicas
  logging.info('Config %s, hparams %s', config.name, hparams.to_dict())
  logging.info('Batch: %d per replica x %d replica(s) = global batch %d',
               hparams.batch_size, replicas, global_batch)

  tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
  if not has_sequences(fn_args.train_files, tf_transform_output, config.input_size):
    raise ValueError(f'No training sequence with >= 2 steps in {fn_args.train_files}')
  train_ds = make_dataset(fn_args.train_files, tf_transform_output, config, global_batch,
                          training=True, seed=seed)
  try:
    has_eval = has_sequences(fn_args.eval_files, tf_transform_output, config.input_size)
    eval_status = 'ok' if has_eval else 'empty: the eval split has no sequence with >= 2 steps'
  except FileNotFoundError as e:
    has_eval, eval_status = False, f'empty: {e}'
  if has_eval:
    eval_ds = make_dataset(fn_args.eval_files, tf_transform_output, config, global_batch,
                           training=False)
    if eval_steps:
      eval_ds = eval_ds.take(eval_steps)
  else:
    eval_ds = None
    logging.warning('No eval metrics: %s (%s)', eval_status, fn_args.eval_files)

  with strategy.scope():
    model = model_lib.build_model(config, hparams)

  num_evals = max(1, int(custom_config.get('num_evals', DEFAULT_NUM_EVALS)))
  steps_per_epoch = math.ceil(train_steps / min(num_evals, train_steps))
  epochs = math.ceil(train_steps / steps_per_epoch)
  recorder = _Recorder(fn_args.model_run_dir, global_batch)
  with warnings.catch_warnings():
    # Keras 3.6 says this at the end of every pass over a dataset of unknown size
    # (ours: the filter); the training data repeats forever, so it is only noise.
    warnings.filterwarnings('ignore', message='Your input ran out of data')
    model.fit(train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch,
              validation_data=eval_ds,
              callbacks=[_StepLimit(train_steps, steps_per_epoch), recorder], verbose=2)
    # Final metrics in inference mode: eval split, and as many train batches.
    eval_metrics = model.evaluate(eval_ds, return_dict=True, verbose=0) if has_eval else None
    train_sample = make_dataset(fn_args.train_files, tf_transform_output, config,
                                global_batch, training=False).take(eval_steps or 10)
    train_metrics = model.evaluate(train_sample, return_dict=True, verbose=0)
  steps_done = int(model.optimizer.iterations.numpy())
  report = {
      'config_name': config.name,
      'hparams': hparams.to_dict(),
      'seed': seed,
      'num_replicas': replicas,
      'per_replica_batch_size': hparams.batch_size,
      'global_batch_size': global_batch,
      'train_steps': steps_done,
      'eval_steps': eval_steps,
      'train': _clean(train_metrics),
      'eval': _clean(eval_metrics),
      'eval_status': eval_status,
      'train_last_interval': _clean(recorder.history[-1]) if recorder.history else None,
      'train_steps_per_sec': steps_done / recorder.train_seconds if recorder.train_seconds else None,
      'train_examples_per_sec': (steps_done * global_batch / recorder.train_seconds
                                 if recorder.train_seconds else None),
      'history': recorder.history,
  }
  tf.io.gfile.makedirs(fn_args.model_run_dir)
  with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, METRICS_FILE), 'w') as f:
    f.write(json.dumps(_json_safe(report), indent=2, sort_keys=True, allow_nan=False))
  _plot_loss_curve(recorder.history, os.path.join(fn_args.model_run_dir, LOSS_CURVE_FILE),
                   f'{config.name}: {steps_done} steps, global batch {global_batch}')
  logging.info('Final train metrics %s; eval metrics %s', report['train'], report['eval'])

  export.export_serving_model(model, config, hparams, tf_transform_output,
                              fn_args.serving_model_dir)
