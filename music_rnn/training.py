"""TFX Trainer logic: `run_fn` trains the config's model on Transform's output and exports it.

One run_fn for both families: the event RNNs and the MusicVAEs differ only where the
small dispatch functions below say (make_dataset / make_vae_dataset, build_model,
export_model, metric_names, warm_start's checks); the run machinery is shared.

Training that survives: checkpoints in a stable directory (resume after a kill), the
best eval-loss weights exported (not the last), early stopping, a stop with advice at
the first non-finite loss, MirroredStrategy over N devices, mixed precision, warm start.
Fast: compact transformed examples, length-bucketed batches (make_dataset), and no host
read of device values per step (the NaN guard is in-graph, the step limit host-counted).
metrics.json reports the eval loss beside the unigram baseline's (the training split's
label frequencies, from Transform) on the same batches, and the padded fraction.

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
  'jit_compile': XLA for the train/eval steps (default model.DEFAULT_JIT_COMPILE; off
      with several workers)
  'steps_per_execution': train steps per tf.function call (default STEPS_PER_EXECUTION;
      lowered to divide the epochs)
Hyperparameters from a Tuner (fn_args.hyperparameters, a keras-tuner config dict)
override custom_config['hparams'], which override the config's defaults.
fn_args.base_model (the Trainer's base_model channel): warm start from that export.

Several workers: when TF_CONFIG names more than one training task, every worker runs
run_fn under MultiWorkerMirroredStrategy (`make_strategy`); the chief keeps the
checkpoints, metrics and export, the others write to scratch and restore from the
chief's checkpoints.
"""

import contextlib
import dataclasses
import functools
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import logging
import keras
import numpy as np
import tensorflow as tf
import tensorflow_transform as tft

from music_rnn import checkpointing
from music_rnn import compact
from music_rnn import configs
from music_rnn import export
from music_rnn import features
from music_rnn import model as model_lib
from music_rnn import vae_export
from music_rnn import vae_model

DEFAULT_SEED = 0
DEFAULT_NUM_EVALS = 10
FAST_DEV_RUN_MAX_STEPS = 64  # fast-dev-run crops sequences (drums run to 512 steps)
MIXED_PRECISION_POLICIES = ('mixed_float16', 'mixed_bfloat16')
# custom_config keys beyond config_name/hparams/seed/checkpoint_dir (module docstring).
TRAINER_OPTIONS = ('num_evals', 'devices', 'replicas', 'global_batch_size', 'data_fingerprint',
                   'checkpoint_every', 'keep_best', 'early_stopping_patience',
                   'mixed_precision', 'fast_dev_run', 'xla_generation', 'jit_compile',
                   'steps_per_execution')
METRICS_FILE = 'metrics.json'
# Train logs: the model's metrics and padded_fraction (padded / real steps of the batches).
PADDED_FRACTION = 'padded_fraction'
TRAIN_METRIC_NAMES = model_lib.METRIC_NAMES + (PADDED_FRACTION,)
EVAL_METRIC_NAMES = model_lib.METRIC_NAMES
UNIGRAM_LOSS = 'unigram_loss'  # the label-frequency baseline's loss on the same batches
NAN_CHECK_EVERY = 100  # steps between reads of the in-graph NaN guard (and epoch ends)
# Train steps per tf.function call (Keras steps_per_execution), where the epochs allow.
STEPS_PER_EXECUTION = 1
LOSS_CURVE_FILE = 'loss_curve.png'
# Hparams that are lists of layer sizes (a tuner holds them as 'a,b' strings).
LAYER_SIZE_HPARAMS = ('rnn_layer_sizes', 'enc_rnn_size', 'dec_rnn_size')
# MusicVAE logs (vae_model.MusicVae): Magenta's objective per sequence ('loss'), the
# reconstruction per step, KL in bits and r + KL per sequence, beta, ...
VAE_METRIC_NAMES = vae_model.METRIC_NAMES


# --- Hyperparameters. -----------------------------------------------------------


def tuner_values(hyperparameters: Any) -> Dict[str, Any]:
  """Hparam values from a keras-tuner HyperParameters (object or get_config() dict).

  keras-tuner's bookkeeping entries ('tuner/epochs', ...) are dropped; a
  comma-separated string for layer sizes (tuners only choose scalars) is split.
  """
  if not hyperparameters:
    return {}
  if isinstance(hyperparameters, dict):
    values = hyperparameters.get('values', hyperparameters)
  else:
    values = hyperparameters.values
  values = {k: v for k, v in values.items() if not k.startswith('tuner/')}
  for name in LAYER_SIZE_HPARAMS:
    sizes = values.get(name)
    if isinstance(sizes, str):
      values[name] = [int(s) for s in sizes.replace('[', '').replace(']', '').split(',')]
  return values


def resolve_hparams(config, overrides: Optional[Dict[str, Any]] = None,
                    hyperparameters: Any = None):
  """config defaults <- custom_config['hparams'] <- tuner values."""
  return config.hparams.replace(**(overrides or {})).replace(**tuner_values(hyperparameters))


# --- Input pipeline. ------------------------------------------------------------

# Length bucketing: each pass is shuffled, cut into windows of BUCKET_WINDOW global
# batches, each window sorted by length and cut into batches. A window of 16 batches
# holds a whole pass of the bundled data at batch 32 (melodies: ~330 sequences), which
# keeps padded steps at 10-12% of real steps on both bundled datasets (unsorted: 17% on
# drums, 166% on melodies).
BUCKET_WINDOW = 16
# Sequences (compact: a few KB each) shuffled together per pass: all of them, up to this.
SHUFFLE_SEQUENCES = 1 << 16
PARSE_BATCH = 64  # records parsed per parse_example call
# The Trainer pads batch steps to a multiple of this: XLA (whole train step, or the
# model's loop clusters) compiles once per shape, and this bounds the shapes (costs ~1.5%
# padding on the bundled melodies, ~0.3% on drums).
XLA_STEP_MULTIPLE = 8
# The transformed features the Trainer reads (others, e.g. source_id, are not parsed).
_TRAINER_FEATURES = (features.HOT, features.FLAGS, features.LABELS, features.LENGTH,
                     features.UNIGRAM_XENT)


def _glob(file_patterns: Sequence[str]) -> List[str]:
  if isinstance(file_patterns, str):
    file_patterns = [file_patterns]
  files = sorted(f for pattern in file_patterns for f in tf.io.gfile.glob(pattern))
  if not files:
    raise FileNotFoundError(f'No files match {list(file_patterns)}')
  return files


def parse_transformed(serialized, feature_spec: Dict[str, Any], num_blocks: int):
  """Serialized transformed tf.Examples [N] -> (model inputs, labels, unigram_xent [N]).

  Batched (export.model_inputs: the same conversion the exported model makes), with
  the row sizes checked: hot holds length * H values, flags length, labels length - 1.
  """
  parsed = tf.io.parse_example(serialized, feature_spec)
  length = tf.cast(tf.reshape(export.to_dense(parsed[features.LENGTH]), [-1]), tf.int64)
  checks = []
  for name, size in ((features.HOT, length * num_blocks), (features.FLAGS, length),
                     (features.LABELS, tf.maximum(length - 1, 0))):
    rows = tf.RaggedTensor.from_sparse(parsed[name]).row_lengths()
    checks.append(tf.debugging.assert_equal(
        rows, size, message=f'transformed {name} size does not match length'))
  with tf.control_dependencies(checks):
    x, labels = export.model_inputs(parsed, num_blocks)
  unigram = tf.reshape(export.to_dense(parsed[features.UNIGRAM_XENT]), [-1])
  return x, labels, tf.cast(unigram, tf.float32)


def _crop(x, labels, unigram, max_steps: Optional[int]):
  """One sequence's padded row -> its own steps (at most `max_steps`: fast-dev-run).

  A cropped sequence's unigram baseline is scaled to its kept steps (the per-step
  mean of the whole sequence's)."""
  n = x[model_lib.LENGTHS]
  kept = tf.minimum(n, max_steps) if max_steps else n
  unigram = unigram * tf.cast(kept, tf.float32) / tf.cast(tf.maximum(n, 1), tf.float32)
  x = {model_lib.HOT: x[model_lib.HOT][:kept], model_lib.FLAGS: x[model_lib.FLAGS][:kept],
       model_lib.LENGTHS: kept}
  return x, labels[:kept], unigram


def _sequences(file_patterns: Sequence[str], tf_transform_output: tft.TFTransformOutput,
               num_blocks: int, max_steps: Optional[int] = None) -> tf.data.Dataset:
  """(inputs, labels [n], unigram_xent) per sequence with n >= 1 labels, in file order."""
  ds = _parsed_records(file_patterns, tf_transform_output, _TRAINER_FEATURES,
                       lambda s, spec: parse_transformed(s, spec, num_blocks))
  ds = ds.map(lambda x, labels, u: _crop(x, labels, u, max_steps))
  return ds.filter(lambda x, labels, u: x[model_lib.LENGTHS] >= 1)


def _parsed_records(file_patterns: Sequence[str], tf_transform_output: tft.TFTransformOutput,
                    names: Sequence[str], parse) -> tf.data.Dataset:
  """Transformed gzipped TFRecords, in file order, through `parse(serialized [N], spec)`
  (a batch at a time, then one element per record); `spec` holds only `names`."""
  spec = tf_transform_output.transformed_feature_spec()
  spec = {name: spec[name] for name in names}
  files = _glob(file_patterns)
  ds = tf.data.TFRecordDataset(files, compression_type='GZIP',
                               num_parallel_reads=min(len(files), 4))
  ds = ds.batch(PARSE_BATCH).map(lambda s: parse(s, spec),
                                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return ds.unbatch()


def _config_sequences(file_patterns: Sequence[str], tf_transform_output: tft.TFTransformOutput,
                      config) -> tf.data.Dataset:
  """The config family's per-sequence dataset (what one pass of training sees)."""
  if configs.is_vae(config):
    return _vae_sequences(file_patterns, tf_transform_output)
  return _sequences(file_patterns, tf_transform_output, compact.input_layout(config).num_blocks)


def has_sequences(file_patterns: Sequence[str], tf_transform_output: tft.TFTransformOutput,
                  config) -> bool:
  """Whether the files hold at least one sequence with something to predict."""
  return any(True for _ in _config_sequences(file_patterns, tf_transform_output,
                                             config).take(1))


def _padded_shapes(num_blocks: int):
  return ({model_lib.HOT: [None, num_blocks], model_lib.FLAGS: [None], model_lib.LENGTHS: []},
          [None], [])


def _pad_rows(replicas: int):
  """Pads a batch with zero-length rows to a multiple of `replicas`.

  A batch that does not divide would be split unevenly over the replicas (or leave
  some empty), which Keras 3.6's first-batch build step cannot handle; zero-length
  rows are masked out of every metric."""
  def pad(x, labels, unigram):
    missing = -tf.shape(labels)[0] % replicas
    rows = lambda t: tf.pad(t, [[0, missing]] + [[0, 0]] * (t.shape.rank - 1))
    return tf.nest.map_structure(rows, (x, labels, unigram))
  return pad


def _round_steps(multiple: int):
  """Pads a batch's steps up to a multiple of `multiple`: XLA compiles one program per
  shape, so this bounds how many a run compiles (512 / multiple lengths at most)."""
  def pad(x, labels, unigram):
    missing = -tf.shape(labels)[1] % multiple
    steps = lambda t: tf.pad(t, [[0, 0], [0, missing]] + [[0, 0]] * (t.shape.rank - 2))
    x = {**x, model_lib.HOT: steps(x[model_lib.HOT]), model_lib.FLAGS: steps(x[model_lib.FLAGS])}
    return x, steps(labels), unigram
  return pad


def _sorted_batches(batch_size: int):
  """A window of sequences -> its batches, longest sequences first, each cropped to
  its own longest sequence; only the last (shortest sequences) may be short."""
  def cut(x, labels, unigram):
    lengths = x[model_lib.LENGTHS]
    order = tf.argsort(lengths, direction='DESCENDING', stable=True)
    window = tf.shape(lengths)[0]

    def batch(i):
      i = tf.cast(i, tf.int32)
      rows = order[i * batch_size:tf.minimum((i + 1) * batch_size, window)]
      steps = tf.reduce_max(tf.gather(lengths, rows))
      take = lambda t: tf.gather(t, rows)[:, :steps] if t.shape.rank > 1 else tf.gather(t, rows)
      return tf.nest.map_structure(take, (x, labels, unigram))

    num_batches = (tf.cast(window, tf.int64) + batch_size - 1) // batch_size
    return tf.data.Dataset.range(num_batches).map(batch)
  return cut


def _bucketed(sequences: tf.data.Dataset, batch_size: int, num_blocks: int,
              seed: int) -> tf.data.Dataset:
  """One pass, length-bucketed: shuffled, windows sorted, batches shuffled."""
  window = BUCKET_WINDOW * batch_size
  ds = sequences.shuffle(SHUFFLE_SEQUENCES, seed=seed, reshuffle_each_iteration=True)
  ds = ds.padded_batch(window, padded_shapes=_padded_shapes(num_blocks))
  ds = ds.flat_map(_sorted_batches(batch_size))
  batches = -(-SHUFFLE_SEQUENCES // batch_size) + 1
  return ds.shuffle(batches, seed=seed + 1, reshuffle_each_iteration=True)


def make_dataset(file_patterns: Sequence[str], tf_transform_output: tft.TFTransformOutput,
                 config: configs.ModelConfig, global_batch_size: int, *, training: bool,
                 seed: int = DEFAULT_SEED, max_steps: Optional[int] = None,
                 replicas: int = 1, unigram: bool = False,
                 step_multiple: int = 1) -> tf.data.Dataset:
  """Transformed gzipped TFRecords -> ({'hot', 'flags', 'lengths'}, labels) batches.

  The model sees the first length-1 steps, aligned with labels[i] = event i+1;
  sequences with fewer than 2 steps (nothing to predict) are dropped. Batches are
  `global_batch_size` sequences over all replicas (the strategy splits them), padded to
  their longest sequence. Training: length-bucketed passes (`_bucketed`), each sequence
  exactly once per pass, reshuffled with `seed` every pass, repeated forever; only a
  pass's last batch may be short. Eval: one pass, in file order. With `replicas` > 1, a
  short batch gets zero-length rows up to a multiple of `replicas`; `step_multiple`
  pads every batch's steps up to a multiple (run_fn: XLA_STEP_MULTIPLE). `max_steps`
  crops every sequence (fast-dev-run). `unigram`: elements are (inputs, labels,
  unigram_xent [B]), for the unigram baseline of exactly these batches.
  MusicVAE configs: make_vae_dataset's fixed-length batches, with the same arguments.
  """
  if configs.is_vae(config):
    return make_vae_dataset(file_patterns, tf_transform_output, global_batch_size,
                            training=training, seed=seed, replicas=replicas, unigram=unigram)
  num_blocks = compact.input_layout(config).num_blocks
  ds = _sequences(file_patterns, tf_transform_output, num_blocks, max_steps)
  if training:
    ds = _bucketed(ds, global_batch_size, num_blocks, seed)
  else:
    ds = ds.padded_batch(global_batch_size, padded_shapes=_padded_shapes(num_blocks))
  if replicas > 1:
    ds = ds.map(_pad_rows(replicas))
  if step_multiple > 1:
    ds = ds.map(_round_steps(step_multiple))
  if training:
    ds = ds.repeat()
  return _finish(ds, unigram)


def _finish(ds: tf.data.Dataset, unigram: bool) -> tf.data.Dataset:
  """(inputs, labels[, unigram_xent]) batches, sharded by data over workers, prefetched."""
  if not unigram:
    ds = ds.map(lambda x, labels, u: (x, labels))
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def unigram_loss(dataset: tf.data.Dataset) -> Optional[float]:
  """Sum of unigram_xent / real label steps over a (unigram=True) dataset: the loss of
  the training split's smoothed label frequencies on the same batches; None if empty."""
  sums = dataset.map(lambda x, labels, unigram: (
      tf.reduce_sum(tf.cast(unigram, tf.float64)),
      tf.reduce_sum(tf.cast(x[model_lib.LENGTHS], tf.float64))))
  xent, steps = sums.reduce((tf.constant(0., tf.float64), tf.constant(0., tf.float64)),
                            lambda a, b: (a[0] + b[0], a[1] + b[1]))
  return float(xent / steps) if steps > 0 else None


# --- MusicVAE input pipeline: fixed-length slices, one label per step. ------------

_VAE_TRAINER_FEATURES = (features.LABELS, features.LENGTH, features.UNIGRAM_XENT)


def parse_vae_transformed(serialized, feature_spec: Dict[str, Any]):
  """Serialized transformed tf.Examples [N] -> ({'labels' int32 [N, T], 'lengths' int32
  [N]}, labels, unigram_xent [N]): the VAE reconstructs every step of its input."""
  parsed = tf.io.parse_example(serialized, feature_spec)
  labels = tf.cast(export.to_dense(parsed[features.LABELS]), tf.int32)
  lengths = tf.cast(tf.reshape(export.to_dense(parsed[features.LENGTH]), [-1]), tf.int32)
  unigram = tf.reshape(export.to_dense(parsed[features.UNIGRAM_XENT]), [-1])
  x = {vae_model.LABELS: labels, vae_model.LENGTHS: lengths}
  return x, labels, tf.cast(unigram, tf.float32)



def _vae_sequences(file_patterns: Sequence[str],
                   tf_transform_output: tft.TFTransformOutput) -> tf.data.Dataset:
  """(inputs, labels [T], unigram_xent) per slice with >= 1 step, in file order."""
  ds = _parsed_records(file_patterns, tf_transform_output, _VAE_TRAINER_FEATURES,
                       parse_vae_transformed)
  return ds.filter(lambda x, labels, u: x[model_lib.LENGTHS] >= 1)


def make_vae_dataset(file_patterns: Sequence[str], tf_transform_output: tft.TFTransformOutput,
                     global_batch_size: int, *, training: bool,
                     seed: int = DEFAULT_SEED, replicas: int = 1,
                     unigram: bool = False) -> tf.data.Dataset:
  """Transformed slices -> ({'labels' [B, T], 'lengths' [B]}, labels) batches.

  Training: each pass shuffled with `seed` (reshuffled every pass), every slice exactly
  once per pass, only a pass's last batch short, repeated forever (the model's
  train_step transposes melodies: Magenta's augmentation). Eval: one pass, in file
  order. `replicas` > 1: a short batch gets zero-length rows (which the model leaves
  out) up to a multiple of `replicas`; `unigram` as make_dataset.
  """
  ds = _vae_sequences(file_patterns, tf_transform_output)
  if training:
    ds = ds.shuffle(SHUFFLE_SEQUENCES, seed=seed, reshuffle_each_iteration=True)
  ds = ds.batch(global_batch_size)
  if replicas > 1:
    ds = ds.map(_pad_rows(replicas))
  if training:
    ds = ds.repeat()
  return _finish(ds, unigram)


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


# --- One machine or several. ----------------------------------------------------


def cluster_spec(tf_config: Optional[str] = None) -> Dict[str, List[str]]:
  """TF_CONFIG's cluster ({'chief': [host:port], 'worker': [...]}); {} when unset.

  Vertex AI training and Kubeflow's training operator (TFJob) set TF_CONFIG in every
  replica they start, each with its own task."""
  text = os.environ.get('TF_CONFIG', '') if tf_config is None else tf_config
  if not text.strip():
    return {}
  try:
    cluster = json.loads(text).get('cluster') or {}
  except (ValueError, AttributeError):
    raise ValueError(f'TF_CONFIG is not a JSON object with a "cluster": {text[:200]!r}') from None
  return {str(k): list(v) for k, v in cluster.items()}


def num_workers(cluster: Dict[str, List[str]]) -> int:
  """The training processes a cluster names: its chief plus its workers."""
  return len(cluster.get('chief', [])) + len(cluster.get('worker', []))


def make_strategy(custom_config: Dict[str, Any]) -> tf.distribute.Strategy:
  """MultiWorkerMirroredStrategy when TF_CONFIG names several workers, else
  MirroredStrategy over `select_devices`.

  Every worker runs run_fn; each takes its replicas' share of every global batch, and
  the model's train step sums over all of them (model._replica_sum: collectives), so
  the update is the single-machine one. Call it before any other TensorFlow work:
  collectives are configured when TensorFlow starts.
  """
  cluster = cluster_spec()
  if cluster.get('ps'):
    raise ValueError('TF_CONFIG names parameter servers ("ps"): this Trainer trains with '
                     'all-reduce (MultiWorkerMirroredStrategy) only; use chief/worker tasks.')
  if num_workers(cluster) <= 1:
    return tf.distribute.MirroredStrategy(select_devices(custom_config))
  if custom_config.get('devices') or custom_config.get('replicas'):
    raise ValueError(
        f'TF_CONFIG names {num_workers(cluster)} workers, and custom_config sets '
        "'devices'/'replicas' (one machine's choice): with several workers each trains on "
        'all its GPUs (or its CPU); drop those options, or TF_CONFIG.')
  strategy = tf.distribute.MultiWorkerMirroredStrategy()
  resolver = strategy.cluster_resolver
  logging.info('MultiWorkerMirroredStrategy: %s %d of %d workers, %d replicas in sync',
               resolver.task_type, resolver.task_id, num_workers(cluster),
               strategy.num_replicas_in_sync)
  return strategy


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
  return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
      num_workers(strategy.cluster_resolver.cluster_spec().as_dict()) > 1)


def worker_count(strategy: tf.distribute.Strategy) -> int:
  return (num_workers(strategy.cluster_resolver.cluster_spec().as_dict())
          if is_multi_worker(strategy) else 1)


def jit_compile_setting(custom_config: Dict[str, Any], strategy: tf.distribute.Strategy):
  """custom_config 'jit_compile', off under several workers: XLA cannot compile the
  train step's cross-worker all-reduce on CPU ("Collectives are not yet implemented for
  CPU devices when compiling with XLA", TF 2.16); GPU workers were not tried."""
  setting = custom_config.get('jit_compile', model_lib.DEFAULT_JIT_COMPILE)
  if setting and setting != 'auto' and is_multi_worker(strategy):
    logging.warning('jit_compile=%r ignored: a multi-worker train step runs without XLA.',
                    setting)
    return False
  return setting


# --- Warm start. ----------------------------------------------------------------


def find_export(path: str) -> str:
  """The SavedModel dir in `path`: itself, its Format-Serving/ (a Trainer Model artifact),
  or its parent (TFX appends Format-Serving/ to an imported pushed model's URI); or a
  Magenta .mag bundle file, `path` or its parent (checked readable). A URL or hub handle
  is resolved first (model_handles)."""
  from music_rnn import magenta_interop, model_handles  # pylint: disable=g-import-not-at-top
  if model_handles.is_remote(path):
    path = model_handles.resolve(path)
  for candidate in (path, os.path.dirname(path)):
    if magenta_interop.is_bundle(candidate):
      magenta_interop.read_bundle(candidate)  # a clear error now, not in the Trainer
      return candidate
  for candidate in (path, os.path.join(path, 'Format-Serving'), os.path.dirname(path)):
    if tf.io.gfile.exists(os.path.join(candidate, 'saved_model.pb')):
      return candidate
  raise FileNotFoundError(f'No SavedModel (saved_model.pb) or .mag bundle in {path} or its '
                          'Format-Serving/')


def _warm_start_from_bundle(model: model_lib.EventSequenceRnn, config: configs.ModelConfig,
                            hparams: configs.HParams, bundle: str) -> str:
  """Magenta's weights from a .mag (magenta_interop's import mapping) into `model`."""
  from music_rnn import magenta_interop, magenta_weights  # pylint: disable=g-import-not-at-top
  magenta = magenta_interop.load_bundle(bundle)
  if magenta.config.name != config.name:
    raise ValueError(f'Cannot warm-start {config.name} from {bundle}: it is a '
                     f'{magenta.config.name} bundle.')
  magenta_interop.check_shapes(config, hparams, magenta.weights, f'the bundle {bundle}',
                               magenta.hparams.attn_length)
  if hparams.attn_length != magenta.hparams.attn_length:
    raise ValueError(f'Cannot warm-start from {bundle}: its attn_length is '
                     f'{magenta.hparams.attn_length}, this run has {hparams.attn_length}.')
  magenta_weights.to_keras(magenta.weights, model)
  logging.info('Warm start: Magenta bundle %s', bundle)
  return bundle


def warm_start(model: keras.Model, config, hparams, base_model: str) -> str:
  """Copies a previous export's weights into `model`, matched by variable path, or a
  Magenta .mag bundle's (mapped as `music-rnn import-magenta` maps them).

  Fine-tuning (e.g. drums of one style adapted to another) needs the same config and
  layer shapes; anything else fails here, naming what differs. Returns the export dir
  (or the bundle). MusicVAEs: from a VAE export (a pushed model or a Trainer's), whose
  vae_export module records its variables the same way; Magenta has no VAE bundle.
  """
  export_dir = find_export(base_model)
  if not tf.io.gfile.isdir(export_dir):
    return _warm_start_from_bundle(model, config, hparams, export_dir)
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
    shaping = ('z_size, enc_rnn_size and dec_rnn_size' if configs.is_vae(config)
               else 'rnn_layer_sizes and attn_length')
    raise ValueError(
        f'Cannot warm-start from {export_dir}: {len(differ)} of {len(targets)} weights differ '
        f'in shape ({"; ".join(differ[:3])}). Warm start needs the same {shaping}: base '
        f'{base.get("hparams", "unknown")}, this run {hparams.to_dict()}.')
  for target, source in pairs:
    target.assign(tf.cast(source, target.dtype))
  logging.info('Warm start: %d weights from %s', len(pairs), export_dir)
  return export_dir


# --- Schedule and callbacks. ----------------------------------------------------


class DivergenceError(FloatingPointError):
  """Training produced a non-finite loss or weights."""


def divergence_message(what: str, step: int, train_steps: int, hparams,
                       checkpoint_dir: str) -> str:
  lr = hparams.learning_rate
  if isinstance(hparams, configs.VaeHParams):
    clip, layers = ('grad_clip', hparams.grad_clip), ('dec_rnn_size', hparams.dec_rnn_size)
  else:
    clip, layers = ('clip_norm', hparams.clip_norm), ('rnn_layer_sizes', hparams.rnn_layer_sizes)
  return (f'Training diverged: {what} at step {step} of {train_steps}. Magenta\'s remedies: '
          f'lower learning_rate (now {lr:g}; try {lr / 10:g}), lower {clip[0]} (now '
          f'{clip[1]:g}), or smaller {layers[0]} (now {list(layers[1])}), e.g. --hparams '
          f'"learning_rate={lr / 10:g}". Checkpoints up to the last finite step are in '
          f'{checkpoint_dir}; changed hparams start a fresh run there.')


def epoch_plan(start: int, total: int, eval_every: int, checkpoint_every: int):
  """Keras epochs from `start` to `total`: (steps_per_epoch, epochs, eval epochs 1-based).

  An epoch is the largest step count that both intervals are multiples of, so every
  checkpoint and evaluation falls on an epoch end (Keras's only hook for validation);
  an epoch evaluates when it crosses a multiple of `eval_every`, and the last one always.
  The last epoch may be short: `last_epoch_steps` says how short, _StepLimit stops it.
  """
  length = math.gcd(eval_every, checkpoint_every)
  epochs = math.ceil((total - start) / length)
  evals = []
  for i in range(epochs):
    begin, end = start + i * length, min(start + (i + 1) * length, total)
    if end // eval_every > begin // eval_every or end == total:
      evals.append(i + 1)
  return length, epochs, evals


def last_epoch_steps(start: int, total: int, steps_per_epoch: int) -> int:
  """Steps in the plan's last epoch (steps_per_epoch unless the run ends mid-epoch)."""
  return (total - start) - (math.ceil((total - start) / steps_per_epoch) - 1) * steps_per_epoch


def steps_per_execution(requested: int, steps_per_epoch: int, last_steps: int) -> int:
  """The largest count <= `requested` that divides every epoch, the short last one too:
  Keras runs whole executions, so one that did not divide would overrun an epoch."""
  return math.gcd(max(1, int(requested)), math.gcd(steps_per_epoch, last_steps))


class _NanGuard(keras.callbacks.Callback):
  """Raises DivergenceError naming the first step whose loss or gradients were not finite.

  The train step checks in-graph: it skips that update and records the step in
  model.first_nonfinite_step (optimizer.iterations then, so step number + 1). This only
  reads that variable every `every` steps and at epoch ends: no per-step host read.
  """

  def __init__(self, message, every: int = NAN_CHECK_EVERY):
    super().__init__()
    self.message, self.every = message, every
    self._steps = 0

  def on_train_batch_begin(self, batch, logs=None):
    self._steps += self.model.steps_per_execution
    if self._steps >= self.every:
      self._steps = 0
      self.check()

  def on_epoch_end(self, epoch, logs=None):
    self.check()

  def check(self):
    first = int(self.model.first_nonfinite_step.numpy())
    if first >= 0:
      raise DivergenceError(self.message('the loss or its gradients were not finite',
                                         first + 1))


class _StepLimit(keras.callbacks.Callback):
  """Ends the last epoch after `last_steps` steps (the run's total), counted on the
  host: no device read. Keras stops after the batch that sets stop_training."""

  def __init__(self, last_epoch: int, last_steps: int):
    super().__init__()
    self.last_epoch, self.last_steps = last_epoch, last_steps
    self._epoch = 0

  def on_epoch_begin(self, epoch, logs=None):
    self._epoch = epoch

  def on_train_batch_begin(self, batch, logs=None):
    if self._epoch == self.last_epoch and batch + self.model.steps_per_execution >= self.last_steps:
      self.model.stop_training = True


def _as_float(value) -> float:
  """A Keras log value as a float: a number, an array, or a metric's variable (a
  schedule's last value, e.g. the VAE's beta, may be logged as one)."""
  return float(value.numpy()) if hasattr(value, 'numpy') else float(value)


class _Recorder(keras.callbacks.Callback):
  """One record per evaluation, against the global step: TensorBoard + history.

  Train metrics are the step-weighted mean of the epochs since the last record. Times
  come from epoch begin to the start of validation (or the epoch end): no batch hook, so
  Keras dispatches batches without waiting for their logs.
  """

  def __init__(self, log_dir: str, global_batch_size: int, eval_epochs: Sequence[int],
               history: List[Dict[str, Any]], names: 'MetricNames'):
    super().__init__()
    self.names = names
    self.train_writer = tf.summary.create_file_writer(os.path.join(log_dir, 'train'))
    self.eval_writer = tf.summary.create_file_writer(os.path.join(log_dir, 'eval'))
    self.global_batch_size = global_batch_size
    self.eval_epochs = set(eval_epochs)
    self.history = list(history)
    self.train_seconds = 0.0
    self._sums: Dict[str, float] = {}
    self._steps = 0
    self._seconds = 0.0
    self._start = 0.0
    self._end: Optional[float] = None
    self._start_step = 0
    for record in self.history:  # a resumed run's curves start where the last one did
      self._write(record)

  def _step(self) -> int:
    return int(model_lib.global_step(self.model.optimizer).numpy())

  def on_epoch_begin(self, epoch, logs=None):
    self._start, self._end, self._start_step = time.perf_counter(), None, self._step()

  def on_test_begin(self, logs=None):
    if self._end is None:  # validation starts after the epoch's last train step
      self._end = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    logs = logs or {}
    end = self._end if self._end is not None else time.perf_counter()
    step = self._step()
    steps, seconds = step - self._start_step, max(end - self._start, 0.0)
    self.train_seconds += seconds
    self._seconds += seconds
    self._steps += steps
    for name in self.names.train:
      if name in logs:
        self._sums[name] = self._sums.get(name, 0.0) + _as_float(logs[name]) * steps
    if epoch + 1 not in self.eval_epochs and not self.model.stop_training:
      return
    rate = self._steps / self._seconds if self._seconds > 0 else float('nan')
    record = {'step': step, 'steps_per_sec': rate,
              'examples_per_sec': rate * self.global_batch_size}
    for name, total in self._sums.items():
      record[name] = total / max(self._steps, 1)
    if 'loss' in record and self.names.per_step_loss:
      record['perplexity'] = math.exp(min(record['loss'], 700.0))
    for name in self.names.eval:
      if 'val_' + name in logs:
        record['val_' + name] = _as_float(logs['val_' + name])
    self._sums, self._steps, self._seconds = {}, 0, 0.0
    self.history.append(record)
    self._write(record)
    logging.info('step %d: %s', step, record)

  def _write(self, record):
    step = record['step']
    with self.train_writer.as_default(step=step):
      for name in self.names.train + ('steps_per_sec', 'examples_per_sec'):
        if record.get(name) is not None:
          tf.summary.scalar(name, record[name])
    with self.eval_writer.as_default(step=step):
      for name in self.names.eval:
        if record.get('val_' + name) is not None:
          tf.summary.scalar(name, record['val_' + name])
    self.train_writer.flush()
    self.eval_writer.flush()


class _Checkpointing(keras.callbacks.Callback):
  """At epoch ends: track the best eval loss, stop early, checkpoint.

  Non-finite weights cannot happen: the train step skips non-finite updates and
  _NanGuard (before this callback) raises at the epoch end that saw one."""

  def __init__(self, checkpointer: checkpointing.Checkpointer, recorder: _Recorder,
               checkpoint_every: int, patience: Optional[int], message):
    super().__init__()
    self.checkpointer, self.recorder = checkpointer, recorder
    self.checkpoint_every, self.patience, self.message = checkpoint_every, patience, message
    self.last_saved = checkpointer.step

  def on_epoch_end(self, epoch, logs=None):
    logs = logs or {}
    step = self.checkpointer.step
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


def _clean(metrics: Optional[Dict[str, Any]], unigram: Optional[float] = None,
           names: Sequence[str] = EVAL_METRIC_NAMES) -> Optional[Dict[str, Optional[float]]]:
  """Keeps `names` (and the unigram baseline's loss); NaN (no real step) becomes null."""
  if metrics is None:
    return None
  out = {}
  for name in names:
    value = _as_float(metrics[name]) if name in metrics else float('nan')
    out[name] = None if math.isnan(value) else value
  out[UNIGRAM_LOSS] = unigram
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
                     best_step: Optional[int] = None,
                     ylabel: str = 'loss (xent per step)') -> None:
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
  ax.set_ylabel(ylabel)
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


# --- What differs per model family (configs.EVENT_RNN / configs.MUSIC_VAE). --------


@dataclasses.dataclass(frozen=True)
class MetricNames:
  """A family's Keras logs: in training, in evaluation, the loss set beside the unigram
  baseline's, and whether `loss` is per step (then perplexity = exp(loss))."""
  train: Tuple[str, ...]
  eval: Tuple[str, ...]
  vs_unigram: str
  per_step_loss: bool


def metric_names(config) -> MetricNames:
  if configs.is_vae(config):
    return MetricNames(VAE_METRIC_NAMES, VAE_METRIC_NAMES, 'reconstruction_loss',
                       per_step_loss=False)
  return MetricNames(TRAIN_METRIC_NAMES, EVAL_METRIC_NAMES, 'loss', per_step_loss=True)


def build_model(config, hparams, dtype_policy: Optional[str] = None,
                jit_compile=model_lib.DEFAULT_JIT_COMPILE, seed: int = DEFAULT_SEED):
  """The config family's model, built and compiled; call inside a strategy scope."""
  if configs.is_vae(config):
    return vae_model.build_model(config, hparams, dtype_policy, jit_compile=jit_compile,
                                 seed=seed)
  return model_lib.build_model(config, hparams, dtype_policy, jit_compile=jit_compile)


def export_model(model, config, hparams, tf_transform_output: tft.TFTransformOutput,
                 export_dir: str, custom_config: Dict[str, Any]) -> None:
  """The family's self-contained SavedModel (export.py / vae_export.py).

  RNNs: XLA-compiled sampling (default) is fastest; TF Serving runs it only with
  --xla_cpu_compilation_enabled, so xla_generation=False exports plain TensorFlow ops."""
  if configs.is_vae(config):
    vae_export.export_vae_model(model, config, hparams, tf_transform_output, export_dir)
    return
  export.export_serving_model(model, config, hparams, tf_transform_output, export_dir,
                              jit_compile=bool(custom_config.get('xla_generation', True)))


# --- run_fn helpers. ------------------------------------------------------------


def _eval_dataset(fn_args, tf_transform_output, config, batches):
  """(eval batches or None, eval_status): `batches(unigram=False)` gives the eval split,
  complete (or its first eval_steps batches) and in order; None when it has no sequence
  with something to predict. `batches`: make_dataset with the run's settings."""
  try:
    has_eval = has_sequences(fn_args.eval_files, tf_transform_output, config)
    status = 'ok' if has_eval else 'empty: the eval split has no sequence with >= 2 steps'
  except FileNotFoundError as e:
    has_eval, status = False, f'empty: {e}'
  if not has_eval:
    logging.warning('No eval metrics: %s (%s); the last weights are exported.', status,
                    fn_args.eval_files)
    return None, status
  return (lambda unigram=False: _take(
      batches(fn_args.eval_files, training=False, unigram=unigram), fn_args.eval_steps)), status


def _take(ds: tf.data.Dataset, steps) -> tf.data.Dataset:
  return ds.take(int(steps)) if steps else ds


def count_sequences(file_patterns: Sequence[str], tf_transform_output: tft.TFTransformOutput,
                    config) -> int:
  """Training sequences (RNN: >= 2 steps; VAE: >= 1) in the files: one pass."""
  ds = _config_sequences(file_patterns, tf_transform_output, config)
  return int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


def batches_per_pass(num_sequences: int, global_batch: int) -> int:
  """Training batches in one pass (make_dataset's bucketing: whole windows of
  BUCKET_WINDOW batches, then the rest; only the pass's last batch may be short)."""
  return math.ceil(num_sequences / global_batch)


def _final_metrics(model, eval_ds, batches, fn_args, names: Sequence[str] = EVAL_METRIC_NAMES):
  """Metrics (`names`) in inference mode of the exported weights, and the unigram
  baseline on the same batches: the eval split, and as many train batches (eval_steps,
  or 10)."""
  train_sample = lambda unigram=False: batches(
      fn_args.train_files, training=False, unigram=unigram).take(fn_args.eval_steps or 10)
  with warnings.catch_warnings():
    warnings.filterwarnings('ignore', message='Your input ran out of data')  # one pass
    train = _clean(model.evaluate(train_sample(), return_dict=True, verbose=0),
                   unigram_loss(train_sample(unigram=True)), names)
    if eval_ds is None:
      return train, None
    return train, _clean(model.evaluate(eval_ds(), return_dict=True, verbose=0),
                         unigram_loss(eval_ds(unigram=True)), names)


def _checkpoint_dir(custom_config, fn_args, run_key: str) -> str:
  root = custom_config.get('checkpoint_dir')
  if custom_config.get('fast_dev_run'):
    root = os.path.join(fn_args.model_run_dir, 'checkpoints')  # a smoke test: never resumed
  if not root:
    root = os.path.join(fn_args.model_run_dir, 'checkpoints')
    logging.warning("No stable checkpoint_dir: checkpoints go to this execution's %s, "
                    'and a re-run will not resume from them.', root)
  return os.path.join(root, run_key)


def _run_spec(config, hparams, global_batch, seed, train_steps, policy, fn_args,
              custom_config) -> Dict[str, Any]:
  """What makes a re-run "the same run": then it resumes instead of starting over."""
  train_files = fn_args.train_files
  return {
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


def _interval_mean(history: List[Dict[str, Any]], name: str, since_step: int):
  """Step-weighted mean of a train-log metric over the records after `since_step`."""
  total = weight = 0.0
  previous = since_step
  for record in history:
    if record['step'] > since_step and record.get(name) is not None:
      total += record[name] * (record['step'] - previous)
      weight += record['step'] - previous
    previous = max(previous, record['step'])
  return total / weight if weight else None


def _fit(model, train_ds, eval_ds, plan, callbacks) -> None:
  steps_per_epoch, epochs, eval_epochs = plan
  with warnings.catch_warnings():
    # Keras 3.6 says this at the end of every pass over a dataset of unknown size
    # (ours: the filter); the training data repeats forever, so it is only noise.
    warnings.filterwarnings('ignore', message='Your input ran out of data')
    model.fit(train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch,
              validation_data=eval_ds() if eval_ds else None, validation_freq=eval_epochs,
              callbacks=callbacks, verbose=2)


# --- run_fn, step by step. ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Settings:
  """What custom_config, the Tuner's values and FnArgs ask of this run."""
  config: Any  # configs.ModelConfig or configs.VaeConfig
  hparams: Any  # HParams / VaeHParams; batch_size per replica once split over the strategy
  seed: int
  train_steps: int
  policy: Optional[str]  # a mixed-precision dtype policy, None: float32
  custom_config: Dict[str, Any]


@dataclasses.dataclass(frozen=True)
class _Outputs:
  """Where this process writes. A multi-worker run's other workers write to scratch
  (TF's pattern: every worker makes the same saves, only the chief's are kept)."""
  model_run_dir: str  # TensorBoard logs, metrics.json, the loss curve
  serving_model_dir: Optional[str]  # None: no export (not the chief)
  checkpoint_scratch: Optional[str]  # None: the run's checkpoint dir itself


@dataclasses.dataclass(frozen=True)
class _Data:
  """Transform's output, the training split's size, and the run's batches."""
  tf_transform_output: tft.TFTransformOutput
  num_sequences: int
  pass_batches: int
  batches: Any  # make_dataset with the run's settings: (files, training=..., ...)
  eval_ds: Any  # (unigram=False) -> eval batches, or None: no eval split
  eval_status: str


@dataclasses.dataclass(frozen=True)
class _Schedule:
  """Steps between evaluations and checkpoints, early stopping, and the Keras epochs."""
  eval_every: int
  checkpoint_every: int
  patience: Optional[int]
  plan: Any  # epoch_plan(...): (steps_per_epoch, epochs, eval epochs)


def _read_settings(fn_args) -> _Settings:
  custom_config = dict(fn_args.custom_config or {})
  if 'config_name' not in custom_config:
    raise ValueError("Trainer custom_config needs 'config_name'; one of "
                     f'{sorted(configs.CONFIGS)}')
  config = configs.get_config(custom_config['config_name'])
  train_steps = int(fn_args.train_steps or 0)
  if train_steps < 1:
    raise ValueError(f'train_steps must be >= 1, got {fn_args.train_steps}')
  return _Settings(
      config=config,
      hparams=resolve_hparams(config, custom_config.get('hparams'), fn_args.hyperparameters),
      seed=int(custom_config.get('seed', DEFAULT_SEED)), train_steps=train_steps,
      policy=dtype_policy(custom_config.get('mixed_precision')), custom_config=custom_config)


def _split_over_replicas(settings: _Settings, strategy: tf.distribute.Strategy) -> _Settings:
  """The per-replica batch size, from the global one if custom_config gives it."""
  replicas = strategy.num_replicas_in_sync
  hparams = split_batch(settings.hparams, replicas,
                        settings.custom_config.get('global_batch_size'))
  logging.info('Config %s, hparams %s, precision %s', settings.config.name, hparams.to_dict(),
               settings.policy or 'float32')
  logging.info('Batch: %d per replica x %d replica(s) = global batch %d',
               hparams.batch_size, replicas, hparams.batch_size * replicas)
  return dataclasses.replace(settings, hparams=hparams)


@contextlib.contextmanager
def _worker_outputs(fn_args, strategy: tf.distribute.Strategy):
  """The chief (or the only worker) writes the Trainer's outputs. Another worker writes
  its checkpoints and logs to a scratch dir, deleted at the end, and does not export:
  every variable is mirrored (synchronized on write), so saving needs no other worker."""
  if strategy.extended.should_checkpoint:
    yield _Outputs(fn_args.model_run_dir, fn_args.serving_model_dir, None)
    return
  resolver = strategy.cluster_resolver
  scratch = tempfile.mkdtemp(prefix=f'music_rnn_{resolver.task_type}{resolver.task_id}_')
  try:
    yield _Outputs(os.path.join(scratch, 'model_run'), None, os.path.join(scratch, 'checkpoints'))
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def _prepare_data(fn_args, settings: _Settings, replicas: int) -> _Data:
  tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
  num_sequences = count_sequences(fn_args.train_files, tf_transform_output, settings.config)
  if not num_sequences:
    what = 'slice' if configs.is_vae(settings.config) else 'sequence with >= 2 steps'
    raise ValueError(f'No training {what} in {fn_args.train_files}')
  global_batch = settings.hparams.batch_size * replicas
  batches = functools.partial(
      make_dataset, tf_transform_output=tf_transform_output, config=settings.config,
      global_batch_size=global_batch, replicas=replicas,
      max_steps=FAST_DEV_RUN_MAX_STEPS if settings.custom_config.get('fast_dev_run') else None,
      step_multiple=XLA_STEP_MULTIPLE)
  eval_ds, eval_status = _eval_dataset(fn_args, tf_transform_output, settings.config, batches)
  return _Data(tf_transform_output, num_sequences, batches_per_pass(num_sequences, global_batch),
               batches, eval_ds, eval_status)


def _build_model(settings: _Settings, strategy: tf.distribute.Strategy):
  with strategy.scope():
    model = build_model(settings.config, settings.hparams, settings.policy,
                        jit_compile=jit_compile_setting(settings.custom_config, strategy),
                        seed=settings.seed)
  if is_multi_worker(strategy):
    _adapt_keras_to_multi_worker(model)
  return model


def _adapt_keras_to_multi_worker(model) -> None:
  """Works around two Keras 3.6 steps that fail under MultiWorkerMirroredStrategy;
  the training itself is unchanged. (Model-side, these would be EventSequenceRnn
  overrides.)

  - Its train/test functions MEAN-reduce each step's logs over the workers along axis
    0, which scalar logs lack (tensorflow#72388): here the steps return them as [1]
    vectors. The model's metrics are sums over every replica already
    (model._replica_sum), so that mean is the global value itself.
  - fit and evaluate first take a batch from their iterator and all-reduce it to build
    an unbuilt model, and a collective reduce cannot take the nested inputs. build_model
    has built everything: here that batch is taken the same way (so every worker sees
    the batches a one-machine run sees) without the reduce.
  """
  train_step, test_step = model.train_step, model.test_step

  def as_vectors(logs):
    return {name: tf.reshape(value, [1]) for name, value in logs.items()}

  def take_first_batch(iterator=None, data_batch=None):
    del data_batch  # the model is built
    if iterator is not None:
      for _, batches in iterator.enumerate_epoch():
        next(batches)
        break

  model.train_step = lambda data: as_vectors(train_step(data))
  model.test_step = lambda data: as_vectors(test_step(data))
  model._maybe_symbolic_build = take_first_batch  # pylint: disable=protected-access


def _restore_or_warm_start(fn_args, settings: _Settings, global_batch: int, model,
                           outputs: _Outputs):
  """(checkpointer, step restored (0: none), warm-start export or None).

  A run with the same spec resumes from its latest checkpoint; a new one starts from
  fn_args.base_model if given. Every worker restores from the run's (the chief's) dir."""
  spec = _run_spec(settings.config, settings.hparams, global_batch, settings.seed,
                   settings.train_steps, settings.policy, fn_args, settings.custom_config)
  checkpoint_dir = _checkpoint_dir(settings.custom_config, fn_args, checkpointing.fingerprint(spec))
  ckpt = checkpointing.Checkpointer(
      checkpoint_dir, model,
      int(settings.custom_config.get('keep_best', checkpointing.DEFAULT_KEEP_BEST)),
      write_directory=outputs.checkpoint_scratch)
  ckpt.write_spec(spec)
  start_step = ckpt.restore()
  if start_step:
    logging.info('Resuming from the checkpoint at step %d of %d in %s', start_step,
                 settings.train_steps, checkpoint_dir)
    return ckpt, start_step, None
  logging.info('Checkpoints: %s', checkpoint_dir)
  warm_from = None
  if fn_args.base_model:
    warm_from = warm_start(model, settings.config, settings.hparams, fn_args.base_model)
  return ckpt, 0, warm_from


def _schedule(settings: _Settings, start_step: int, has_eval: bool) -> _Schedule:
  custom_config, train_steps = settings.custom_config, settings.train_steps
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
  return _Schedule(eval_every, checkpoint_every, patience,
                   epoch_plan(start_step, train_steps, eval_every, checkpoint_every))


def _train(fn_args, settings: _Settings, model, data: _Data, ckpt, start_step: int,
           schedule: _Schedule, recorder: '_Recorder') -> None:
  """Fits from `start_step` to the configured steps, unless early stopping has ended
  the run already; then saves the last step if no checkpoint holds it."""
  def message(what, step):
    return divergence_message(what, step, settings.train_steps, settings.hparams,
                              ckpt.directory)

  stopped = (bool(schedule.patience) and
             int(ckpt.state.evals_since_best.numpy()) >= schedule.patience)
  if start_step < settings.train_steps and not stopped:
    ckpt.state.stopped_at.assign(-1)  # e.g. stopped before, now with more patience
    steps_per_epoch, epochs, _ = schedule.plan
    last_steps = last_epoch_steps(start_step, settings.train_steps, steps_per_epoch)
    model.steps_per_execution = steps_per_execution(
        settings.custom_config.get('steps_per_execution', STEPS_PER_EXECUTION),
        steps_per_epoch, last_steps)
    # A resumed run draws a fresh shuffle rather than replaying the first batches.
    train_ds = data.batches(fn_args.train_files, training=True, seed=settings.seed + start_step)
    _fit(model, train_ds, data.eval_ds, schedule.plan, [
        _NanGuard(message), _StepLimit(epochs - 1, last_steps), recorder,
        _Checkpointing(ckpt, recorder, schedule.checkpoint_every, schedule.patience, message)])
  if ckpt.step > ckpt.saved_step():
    ckpt.save(recorder.history)


def _report(fn_args, settings: _Settings, model, data: _Data, ckpt, start_step: int,
            schedule: _Schedule, recorder: '_Recorder', best, warm_from) -> Dict[str, Any]:
  """metrics.json: the run's settings, what it did, and the exported weights' metrics."""
  hparams, replicas = settings.hparams, model.distribute_strategy.num_replicas_in_sync
  steps_done = ckpt.step
  names = metric_names(settings.config)
  train_metrics, eval_metrics = _final_metrics(model, data.eval_ds, data.batches, fn_args,
                                               names.eval)
  stopped_at = int(ckpt.state.stopped_at.numpy())
  seconds = recorder.train_seconds
  examples = (steps_done - start_step) * data.num_sequences / data.pass_batches  # real ones
  return {
      'config_name': settings.config.name,
      'hparams': hparams.to_dict(),
      'seed': settings.seed,
      'num_replicas': replicas,
      'num_workers': worker_count(model.distribute_strategy),
      'per_replica_batch_size': hparams.batch_size,
      'global_batch_size': hparams.batch_size * replicas,
      'mixed_precision': settings.policy,
      'train_steps': steps_done,
      'configured_train_steps': settings.train_steps,
      'steps_this_run': steps_done - start_step,
      'resumed_from_step': start_step or None,
      'stopped_early_at_step': stopped_at if stopped_at >= 0 else None,
      'early_stopping_patience': schedule.patience,
      'eval_steps': fn_args.eval_steps or None,
      'exported': ({'weights': 'best', 'step': best['step'], 'eval_loss': best['eval_loss']}
                   if best else {'weights': 'last', 'step': steps_done}),
      'best_checkpoints': [{k: e[k] for k in ('step', 'eval_loss')} for e in ckpt.best],
      'checkpoint_dir': ckpt.directory,
      'warm_start_from': warm_from or (fn_args.base_model if start_step else None),
      'fast_dev_run': bool(settings.custom_config.get('fast_dev_run')),
      'train': train_metrics,
      'eval': eval_metrics,
      'eval_status': data.eval_status,
      'train_last_interval': (_clean(recorder.history[-1], names=names.train)
                              if recorder.history else None),
      # Training batches: padded steps / real steps over this execution's training.
      PADDED_FRACTION: _interval_mean(recorder.history, PADDED_FRACTION, start_step),
      'train_sequences': data.num_sequences,
      'batches_per_pass': data.pass_batches,
      # Wall time of this execution's training intervals (validation excluded).
      'train_steps_per_sec': (steps_done - start_step) / seconds if seconds else None,
      'train_examples_per_sec': examples / seconds if seconds else None,
      'steps_per_execution': model.steps_per_execution,
      'jit_compile': bool(model.jit_compile),
      'history': recorder.history,
  }


def _write_report(report: Dict[str, Any], model_run_dir: str, best) -> None:
  """metrics.json and loss_curve.png in model_run_dir, and the summary in the log."""
  tf.io.gfile.makedirs(model_run_dir)
  with tf.io.gfile.GFile(os.path.join(model_run_dir, METRICS_FILE), 'w') as f:
    f.write(json.dumps(_json_safe(report), indent=2, sort_keys=True, allow_nan=False))
  per_step = metric_names(configs.get_config(report['config_name'])).per_step_loss
  _plot_loss_curve(report['history'], os.path.join(model_run_dir, LOSS_CURVE_FILE),
                   f'{report["config_name"]}: {report["train_steps"]} steps, global batch '
                   f'{report["global_batch_size"]}', best['step'] if best else None,
                   'loss (xent per step)' if per_step else 'loss (nats per sequence)')
  _log_final(report)


def run_fn(fn_args) -> None:
  """Trains (resuming if a checkpoint exists), writes metrics and curves, exports the best.

  Under a multi-worker TF_CONFIG every worker calls it (make_strategy); the chief
  writes metrics, curves, checkpoints and the export, the others only train.
  """
  settings = _read_settings(fn_args)
  keras.utils.set_random_seed(settings.seed)
  strategy = make_strategy(settings.custom_config)  # before TensorFlow starts (collectives)
  settings = _split_over_replicas(settings, strategy)
  replicas = strategy.num_replicas_in_sync
  global_batch = settings.hparams.batch_size * replicas
  with _worker_outputs(fn_args, strategy) as outputs:
    data = _prepare_data(fn_args, settings, replicas)
    model = _build_model(settings, strategy)
    ckpt, start_step, warm_from = _restore_or_warm_start(fn_args, settings, global_batch,
                                                         model, outputs)
    schedule = _schedule(settings, start_step, data.eval_ds is not None)
    recorder = _Recorder(outputs.model_run_dir, global_batch, schedule.plan[2],
                         ckpt.history(start_step), metric_names(settings.config))
    _write_hparams_summary(outputs.model_run_dir, os.path.basename(ckpt.directory),
                           settings.hparams, {
                               'config_name': settings.config.name,
                               'global_batch_size': global_batch, 'seed': settings.seed,
                               'train_steps': settings.train_steps,
                               'mixed_precision': settings.policy or 'float32'})
    _train(fn_args, settings, model, data, ckpt, start_step, schedule, recorder)
    best = ckpt.restore_best() if data.eval_ds is not None else None
    report = _report(fn_args, settings, model, data, ckpt, start_step, schedule, recorder,
                     best, warm_from)
    _write_report(report, outputs.model_run_dir, best)
    if outputs.serving_model_dir:
      export_model(model, settings.config, settings.hparams, data.tf_transform_output,
                   outputs.serving_model_dir, settings.custom_config)


def _log_final(report: Dict[str, Any]) -> None:
  logging.info('Final train metrics %s; eval metrics %s (%s weights, step %d)',
               report['train'], report['eval'], report['exported']['weights'],
               report['exported']['step'])
  name = metric_names(configs.get_config(report['config_name'])).vs_unigram
  for split in ('eval', 'train'):
    m = report[split]
    if m and m.get(name) is not None and m.get(UNIGRAM_LOSS):
      logging.info('%s %s %.4f vs unigram %.4f nats/step (label frequencies): %.1f%% %s',
                   split, name, m[name], m[UNIGRAM_LOSS],
                   100 * abs(1 - m[name] / m[UNIGRAM_LOSS]),
                   'better' if m[name] < m[UNIGRAM_LOSS] else 'WORSE')
