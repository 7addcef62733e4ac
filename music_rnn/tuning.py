"""TFX Tuner logic: `tuner_fn` searches hparams with keras-tuner over the Trainer's builder.

A trial builds its model exactly as the Trainer does (`training.resolve_hparams`, then
`model.build_model` in the MirroredStrategy scope) and fits it on `training.make_dataset`'s
batches, so the winning values mean the same thing to both. Every trial starts from the
same seed, so trials differ by their hparams only.

custom_config: the Trainer's (config_name, hparams, seed, devices/replicas,
global_batch_size, mixed_precision, early_stopping_patience), plus:
  'tuner': 'random' | 'bayesian' | 'hyperband'
  'max_trials': int (hyperband: a cap on its bracket plan)
  'search_space': normalized space (see `normalize_search_space`); default per config
  'tuner_dir': where keras-tuner keeps its state; a stable path makes a re-run resume
  'trial_evals': evaluations per trial (= epochs; hyperband's max_epochs)
  'early_stopping_patience': evaluations without a better eval loss before a trial stops
The trial length is the Tuner's train_args.num_steps, its eval batches eval_args.num_steps.

Distributed search, keras-tuner's chief/worker mode: start the Tuner's executor in N+1
processes sharing `tuner_dir`, each with KERASTUNER_ORACLE_IP / KERASTUNER_ORACLE_PORT
(where the chief serves the oracle) and its own KERASTUNER_TUNER_ID: 'chief' for the
one that serves the oracle and records every trial, distinct ids ('tuner0', 'tuner1',
...) for the workers, which ask it for trials and run them. The chief writes the
Tuner's outputs once the last trial ends; the workers write none. Every process builds
its trials on its own devices (MirroredStrategy; TF_CONFIG is not read here).
"""

import csv
import functools
import json
import math
import os
import time
import warnings
from typing import Any, Dict, List, Optional, Tuple

from absl import logging
import keras
import keras_tuner
import tensorflow as tf
import tensorflow_transform as tft
from tfx import v1 as tfx
from tfx.components.tuner import executor as tuner_executor
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact_utils
from tfx.types import standard_component_specs
from tfx.utils import json_utils

from music_rnn import checkpointing
from music_rnn import configs
from music_rnn import training

TUNERS = ('random', 'bayesian', 'hyperband')
DEFAULT_TUNER = 'random'
DEFAULT_MAX_TRIALS = 10
DEFAULT_TRIAL_EVALS = 5
DEFAULT_PATIENCE = 2
OBJECTIVE = 'val_loss'  # eval loss, minimized
# MusicVAE trials differ in max_beta and free_bits, which change Magenta's loss itself:
# they are ranked by the eval ELBO bound (reconstruction + KL, nats per sequence).
VAE_OBJECTIVE = 'val_elbo'
PROJECT_NAME = 'search'
TRIAL_SIDECAR = 'music_rnn_trial.json'
REPORT_CSV = 'trial_report.csv'
REPORT_PNG = 'trial_report.png'
BEST_TRIAL_PROPERTY = 'best_trial'

# Trainer options (training.TRAINER_OPTIONS) that shape a trial the same way.
TRIAL_OPTIONS = ('devices', 'replicas', 'global_batch_size', 'mixed_precision',
                 'early_stopping_patience')

# Names a search may vary, per model family (the issue's). batch_size is not one: it
# shapes the dataset, not the model.
SEARCHABLE = {
    configs.EVENT_RNN: ('rnn_layer_sizes', 'learning_rate', 'clip_norm', 'dropout_keep_prob',
                        'attn_length'),
    configs.MUSIC_VAE: ('z_size', 'free_bits', 'max_beta', 'learning_rate', 'dec_rnn_size'),
}
_INT_NAMES = ('attn_length', 'z_size')
_SIZES_NAMES = training.LAYER_SIZE_HPARAMS  # lists of layer sizes: choices only


def searchable(base) -> Tuple[str, ...]:
  """The names a search may vary for hparams like `base` (HParams or VaeHParams)."""
  vae = isinstance(base, configs.VaeHParams)
  return SEARCHABLE[configs.MUSIC_VAE if vae else configs.EVENT_RNN]

# --- Search space. --------------------------------------------------------------


def default_search_space(config, hparams=None) -> Dict[str, Any]:
  """The issue's space in the file syntax, for the config's family; attn_length only for
  models with attention."""
  hparams = hparams or config.hparams
  if configs.is_vae(config):
    return vae_search_space(config, hparams)
  space = {
      'rnn_layer_sizes': [[64, 64], [128, 128], [256, 256], [128, 128, 128],
                          [256, 256, 256]],
      'learning_rate': {'min': 1e-4, 'max': 1e-2, 'sampling': 'log'},
      'clip_norm': {'min': 1.0, 'max': 5.0},
      'dropout_keep_prob': {'min': 0.5, 'max': 1.0},
  }
  if hparams.attn_length:
    space['attn_length'] = sorted({16, 32, 64, hparams.attn_length})
  return space


def vae_search_space(config, hparams: configs.VaeHParams) -> Dict[str, Any]:
  """MusicVAE: latent size, free bits and KL weight (around the config's: drums keep 48
  free bits, melodies 0), learning rate, decoder sizes (Magenta's small and big ones)."""
  free_bits = sorted({0.0, 16.0, 48.0, 64.0, float(hparams.free_bits)})
  return {
      'z_size': sorted({64, 128, 256, 512, hparams.z_size}),
      'free_bits': free_bits if config.kind == configs.DRUMS else sorted({0.0, 16.0, 48.0}),
      'max_beta': {'min': 0.05, 'max': 1.0, 'sampling': 'log'},
      'learning_rate': {'min': 1e-4, 'max': 1e-2, 'sampling': 'log'},
      'dec_rnn_size': [[128, 128], [256, 256], [512, 512], list(hparams.dec_rnn_size)],
  }


def objective(config) -> str:
  """The eval metric trials are ranked by (minimized)."""
  return VAE_OBJECTIVE if configs.is_vae(config) else OBJECTIVE


def load_search_space_file(path: str) -> Dict[str, Any]:
  """Reads a YAML or JSON search-space file (file syntax, not yet normalized)."""
  import yaml  # pylint: disable=g-import-not-at-top
  with tf.io.gfile.GFile(path) as f:
    text = f.read()
  try:
    raw = json.loads(text) if path.endswith('.json') else yaml.safe_load(text)
  except (ValueError, yaml.YAMLError) as e:
    raise ValueError(f'Search space {path}: cannot parse: {e}') from None
  if raw is None:
    return {}
  if not isinstance(raw, dict):
    raise ValueError(f'Search space {path}: expected a mapping of hparam names, got '
                     f'{type(raw).__name__}')
  return raw


def normalize_search_space(raw: Dict[str, Any], base) -> Dict[str, Any]:
  """File syntax -> {'name': {'type': 'choice'|'float'|'int'|'fixed', ...}}, validated.

  File syntax per name: a list (choices), {min, max[, sampling: linear|log][, step]}
  (a range) or one value (fixed); `null` drops the name (it keeps its config value).
  Every value a trial could draw is checked against HParams (VaeHParams) through
  `base`, so a bad file fails when the pipeline is built, not in trial 7.
  """
  space = {}
  names = searchable(base)
  for name, spec in raw.items():
    if name not in names:
      raise ValueError(f'Search space: cannot search {name!r}; searchable: {list(names)}')
    if spec is None:
      continue
    if isinstance(spec, dict):
      unknown = sorted(set(spec) - {'min', 'max', 'sampling', 'step'})
      if unknown or 'min' not in spec or 'max' not in spec or name in _SIZES_NAMES:
        raise ValueError(f'Search space {name}: a range is {{min, max[, sampling][, step]}}'
                         f' of numbers, got {spec!r}')
      sampling = spec.get('sampling', 'linear')
      if sampling not in ('linear', 'log'):
        raise ValueError(f"Search space {name}: sampling is 'linear' or 'log', got {sampling!r}")
      is_int = name in _INT_NAMES
      cast = int if is_int else float
      entry = {'type': 'int' if is_int else 'float', 'min': cast(spec['min']),
               'max': cast(spec['max']), 'sampling': sampling}
      if spec.get('step') is not None:
        entry['step'] = cast(spec['step'])
      if entry['min'] > entry['max']:
        raise ValueError(f'Search space {name}: min > max in {spec!r}')
      if sampling == 'log' and entry['min'] <= 0:
        raise ValueError(f'Search space {name}: log sampling needs min > 0, got {spec!r}')
      candidates = [entry['min'], entry['max']]
    elif isinstance(spec, list):
      if not spec:
        raise ValueError(f'Search space {name}: empty list of choices')
      if name in _SIZES_NAMES:
        values = [[int(s) for s in v] if isinstance(v, (list, tuple)) else [int(v)]
                  for v in spec]
      else:
        values = [int(v) if name in _INT_NAMES else float(v) for v in spec]
      entry = {'type': 'choice', 'values': values}
      candidates = values
    else:
      entry = {'type': 'fixed', 'value': spec}
      candidates = [spec]
    for value in candidates:
      try:
        base.replace(**{name: value})
      except (ValueError, TypeError) as e:
        raise ValueError(f'Search space {name}: {value!r} is not a valid value: {e}') from None
    space[name] = entry
  if not space:
    raise ValueError('Search space: nothing to search')
  return space


def resolve_search_space(config, base, path: Optional[str] = None) -> Dict[str, Any]:
  """The config's default space, with a file's entries replacing or dropping names."""
  raw = default_search_space(config, base)
  if path:
    raw.update(load_search_space_file(path))
  return normalize_search_space(raw, base)


def _sizes_key(sizes) -> str:
  """keras-tuner choices are scalars: [128, 128] <-> '128,128' (training.tuner_values splits)."""
  return ','.join(str(int(s)) for s in sizes)


def declare(hp: keras_tuner.HyperParameters, space: Dict[str, Any]) -> None:
  """Declares `space` on `hp` (idempotent: keras-tuner returns known values)."""
  for name, entry in space.items():
    kind = entry['type']
    if kind == 'choice':
      values = entry['values']
      if name in _SIZES_NAMES:
        values = [_sizes_key(v) for v in values]
      hp.Choice(name, values)
    elif kind == 'float':
      hp.Float(name, entry['min'], entry['max'], step=entry.get('step'),
               sampling=entry['sampling'])
    elif kind == 'int':
      hp.Int(name, entry['min'], entry['max'], step=entry.get('step') or 1,
             sampling=entry['sampling'])
    else:
      value = entry['value']
      hp.Fixed(name, _sizes_key(value) if name in _SIZES_NAMES else value)


def in_space(values: Dict[str, Any], space: Dict[str, Any]) -> bool:
  """Whether tuner values (as `training.tuner_values` returns them) lie in `space`."""
  for name, entry in space.items():
    if name not in values:
      return False
    value = values[name]
    if entry['type'] == 'choice':
      if value not in entry['values']:
        return False
    elif entry['type'] == 'fixed':
      if value != entry['value']:
        return False
    elif not entry['min'] - 1e-12 <= value <= entry['max'] + 1e-12:
      return False
  return True


def state_dir(root: str, spec: Dict[str, Any]) -> str:
  """<root>/<fingerprint of spec>: one keras-tuner project per (data, config, search).

  A re-run with the same spec finds the finished trials there and runs only the
  missing ones; a changed spec gets a fresh directory, never a stale search. Leave
  max_trials out of `spec`, so raising it extends a search.
  """
  return os.path.join(root, checkpointing.fingerprint(spec))


# --- The hypermodel and tuners. -------------------------------------------------


class EventRnnHyperModel(keras_tuner.HyperModel):
  """Declares the space, then builds with the Trainer's own hparam resolution and builder
  (training.build_model: an event RNN or a MusicVAE, by the config's family)."""

  def __init__(self, config, overrides: Optional[Dict[str, Any]],
               space: Dict[str, Any], seed: int = training.DEFAULT_SEED,
               dtype_policy: Optional[str] = None):
    super().__init__(name=f'{config.name}_hypermodel')
    self.config, self.overrides, self.space = config, dict(overrides or {}), space
    self.seed, self.dtype_policy = seed, dtype_policy

  def hparams(self, hp: keras_tuner.HyperParameters):
    declare(hp, self.space)
    return training.resolve_hparams(self.config, self.overrides, hp)

  def build(self, hp):
    hparams = self.hparams(hp)
    keras.utils.set_random_seed(self.seed)  # same start for every trial
    # keras-tuner calls this inside the tuner's distribution strategy scope.
    return training.build_model(self.config, hparams, self.dtype_policy, seed=self.seed)

  def fit(self, hp, model, *args, **kwargs):
    with warnings.catch_warnings():
      # As in run_fn: the training data repeats forever; Keras's warning is noise.
      warnings.filterwarnings('ignore', message='Your input ran out of data')
      return model.fit(*args, **kwargs)


class _Recorded:
  """Mixin: per-trial wall time, eval-loss curve and the tuner that ran it (one of a
  distributed search's workers) in <trial dir>/music_rnn_trial.json."""

  def _populate_initial_space(self):
    # Our space has no conditions: declare it, without building a throwaway model.
    hp = self.oracle.get_space()
    declare(hp, self.hypermodel.space)
    self.oracle.update_space(hp)

  def on_epoch_end(self, trial, model, epoch, logs=None):
    super().on_epoch_end(trial, model, epoch, logs)
    value = (logs or {}).get(objective(self.hypermodel.config))
    self._curves.setdefault(trial.trial_id, []).append(
        [int(epoch) + 1, None if value is None else float(value)])

  def run_trial(self, trial, *args, **kwargs):
    if not hasattr(self, '_curves'):
      self._curves = {}
    self._curves[trial.trial_id] = []
    logging.info('Trial %s: run by tuner %s', trial.trial_id, self.tuner_id)
    start = time.perf_counter()
    results = super().run_trial(trial, *args, **kwargs)
    record = {'seconds': time.perf_counter() - start, 'tuner_id': self.tuner_id,
              'eval_loss_curve': self._curves.pop(trial.trial_id, [])}
    with tf.io.gfile.GFile(os.path.join(self.get_trial_dir(trial.trial_id), TRIAL_SIDECAR),
                           'w') as f:
      f.write(json.dumps(record))
    return results


class RandomSearch(_Recorded, keras_tuner.RandomSearch):
  pass


class BayesianOptimization(_Recorded, keras_tuner.BayesianOptimization):
  pass


class Hyperband(_Recorded, keras_tuner.Hyperband):
  pass


def make_tuner(kind: str, hypermodel: EventRnnHyperModel, directory: str, max_trials: int,
               max_epochs: int, seed: int = 0,
               strategy: Optional[tf.distribute.Strategy] = None) -> keras_tuner.Tuner:
  """A keras-tuner tuner of `kind`, resuming whatever project `directory` holds."""
  common = dict(hypermodel=hypermodel,
                objective=keras_tuner.Objective(objective(hypermodel.config), direction='min'),
                seed=seed, distribution_strategy=strategy, directory=directory,
                project_name=PROJECT_NAME, overwrite=False)
  if kind == 'random':
    return RandomSearch(max_trials=max_trials, **common)
  if kind == 'bayesian':
    # keras-tuner's default (3 random trials per hparam) would leave a 10-trial search
    # all random; a third of the budget explores, the rest follows the model.
    return BayesianOptimization(max_trials=max_trials,
                                num_initial_points=max(2, max_trials // 3), **common)
  if kind == 'hyperband':
    tuner = Hyperband(max_epochs=max(2, max_epochs), factor=3, **common)
    # Hyperband sizes its own brackets; max_trials caps them (the base Oracle's check).
    tuner.oracle.max_trials = max_trials
    return tuner
  raise ValueError(f'Unknown tuner {kind!r}; choose one of {list(TUNERS)}')


def tuner_fn(fn_args) -> tfx.components.TunerFnResult:
  """Builds the tuner and the trial fit arguments from the Tuner's inputs."""
  custom_config = dict(fn_args.custom_config or {})
  if 'config_name' not in custom_config:
    raise ValueError("Tuner custom_config needs 'config_name'; one of "
                     f'{sorted(configs.CONFIGS)}')
  config = configs.get_config(custom_config['config_name'])
  overrides = custom_config.get('hparams') or {}
  space = custom_config.get('search_space') or normalize_search_space(
      default_search_space(config, config.hparams.replace(**overrides)),
      config.hparams.replace(**overrides))
  seed = int(custom_config.get('seed', training.DEFAULT_SEED))
  kind = custom_config.get('tuner', DEFAULT_TUNER)
  max_trials = int(custom_config.get('max_trials', DEFAULT_MAX_TRIALS))
  trial_steps = int(fn_args.train_steps or 0)
  if trial_steps < 1:
    raise ValueError(f'Tuner train_args.num_steps (steps per trial) must be >= 1, '
                     f'got {fn_args.train_steps}')
  eval_steps = int(fn_args.eval_steps) if fn_args.eval_steps else None
  evals = max(1, min(int(custom_config.get('trial_evals', DEFAULT_TRIAL_EVALS)), trial_steps))
  steps_per_epoch = math.ceil(trial_steps / evals)
  epochs = math.ceil(trial_steps / steps_per_epoch)
  directory = custom_config.get('tuner_dir')
  if not directory:
    directory = os.path.join(fn_args.working_dir, 'tuner')
    logging.warning('No tuner_dir in custom_config: the search state goes to %s and an '
                    'interrupted search will start over.', directory)

  # Devices, batch split and precision exactly as the Trainer sets them up.
  policy = training.dtype_policy(custom_config.get('mixed_precision'))
  strategy = tf.distribute.MirroredStrategy(training.select_devices(custom_config))
  replicas = strategy.num_replicas_in_sync
  base = training.split_batch(config.hparams.replace(**overrides), replicas,
                              custom_config.get('global_batch_size'))
  overrides = {**overrides, 'batch_size': base.batch_size}
  global_batch = base.batch_size * replicas
  # The Tuner's FnArgs name it transform_graph_path (the Trainer's add transform_output).
  tf_transform_output = tft.TFTransformOutput(fn_args.transform_graph_path)
  if not training.has_sequences(fn_args.train_files, tf_transform_output, config):
    raise ValueError(f'No training sequence in {fn_args.train_files}')
  try:
    has_eval = training.has_sequences(fn_args.eval_files, tf_transform_output, config)
  except FileNotFoundError:
    has_eval = False
  if not has_eval:
    raise ValueError('The Tuner ranks trials by eval loss, but the eval split has no '
                     f'sequence with >= 2 steps ({fn_args.eval_files})')
  # Batches exactly as the Trainer's.
  batches = functools.partial(training.make_dataset, tf_transform_output=tf_transform_output,
                              config=config, global_batch_size=global_batch, replicas=replicas,
                              step_multiple=training.XLA_STEP_MULTIPLE)
  train_ds = batches(fn_args.train_files, training=True, seed=seed)
  eval_ds = batches(fn_args.eval_files, training=False)
  if eval_steps:
    eval_ds = eval_ds.take(eval_steps)

  hypermodel = EventRnnHyperModel(config, overrides, space, seed, policy)
  tuner = make_tuner(kind, hypermodel, directory, max_trials, epochs, seed, strategy)
  logging.info('Tuner %s over %s in %s: %d trial(s) max, %d steps each (%d evals)',
               kind, sorted(space), directory, max_trials, trial_steps, epochs)
  early_stopping = keras.callbacks.EarlyStopping(
      monitor=objective(config), mode='min',
      patience=int(custom_config.get('early_stopping_patience', DEFAULT_PATIENCE)))
  return tfx.components.TunerFnResult(
      tuner=tuner,
      fit_kwargs=dict(x=train_ds, validation_data=eval_ds, epochs=epochs,
                      steps_per_epoch=steps_per_epoch, callbacks=[early_stopping],
                      verbose=2))


# --- Report. --------------------------------------------------------------------


def _metric(trial, name):
  if trial.metrics.exists(name):
    value = trial.metrics.get_last_value(name)
    if value is not None and math.isfinite(value):
      return float(value)
  return None


def trial_rows(tuner: keras_tuner.Tuner) -> List[Dict[str, Any]]:
  """One row per trial, in the order they started: hparams, eval metrics, seconds."""
  oracle = tuner.oracle
  rows = []
  for trial_id in oracle.start_order:
    trial = oracle.trials[trial_id]
    sidecar = os.path.join(tuner.get_trial_dir(trial_id), TRIAL_SIDECAR)
    record = {}
    if tf.io.gfile.exists(sidecar):
      with tf.io.gfile.GFile(sidecar) as f:
        record = json.load(f)
    values = training.tuner_values(trial.hyperparameters.values)
    row = {'trial_id': trial_id, 'status': trial.status}
    row.update({k: json.dumps(v) if isinstance(v, list) else v for k, v in values.items()})
    if 'tuner/epochs' in trial.hyperparameters.values:
      row['hyperband_epochs'] = trial.hyperparameters.values['tuner/epochs']
    ranked_by = objective(tuner.hypermodel.config)
    row.update({
        'objective': ranked_by,  # what eval_loss holds: the eval loss, or a VAE's ELBO
        'eval_loss': _metric(trial, ranked_by),
        'eval_perplexity': _metric(trial, 'val_perplexity'),
        'eval_accuracy': _metric(trial, 'val_accuracy'),
        'eval_event_accuracy': _metric(trial, 'val_event_accuracy'),
        'best_eval': None if trial.best_step is None else int(trial.best_step) + 1,
        'evals_run': len(record.get('eval_loss_curve', [])) or None,
        'seconds': record.get('seconds'),
    })
    row['_curve'] = record.get('eval_loss_curve', [])
    rows.append(row)
  return rows


def best_summary(rows: List[Dict[str, Any]], kind: str = '') -> str:
  """One line: the winner, its metrics and values, and its margin over the runner-up."""
  done = sorted((r for r in rows if r['eval_loss'] is not None), key=lambda r: r['eval_loss'])
  if not done:
    return f'No completed trial out of {len(rows)}.'
  best = done[0]
  hparams = ' '.join(f'{k}={best[k]:.3g}' if isinstance(best[k], float) else f'{k}={best[k]}'
                     for k in dict.fromkeys(sum(SEARCHABLE.values(), ())) if k in best)
  ranked_by = 'ELBO' if best.get('objective') == VAE_OBJECTIVE else 'loss'
  line = (f'Best of {len(done)} completed trial(s){f" ({kind})" if kind else ""}: trial '
          f'{best["trial_id"]}, eval {ranked_by} {best["eval_loss"]:.4f}')
  extras = [f'{name} {best[key]:.4f}' for name, key in (
      ('perplexity', 'eval_perplexity'), ('accuracy', 'eval_accuracy'))
            if best[key] is not None]
  if extras:
    line += f' ({", ".join(extras)})'
  line += f' with {hparams}'
  if len(done) > 1:
    line += (f'; runner-up trial {done[1]["trial_id"]} at {done[1]["eval_loss"]:.4f} '
             f'(+{done[1]["eval_loss"] - best["eval_loss"]:.4f})')
  return line


def write_report(rows: List[Dict[str, Any]], out_dir: str, title: str = '') -> Dict[str, str]:
  """trial_report.csv (a row per trial) and trial_report.png (eval loss per trial)."""
  tf.io.gfile.makedirs(out_dir)
  columns = []
  for row in rows:
    columns += [k for k in row if not k.startswith('_') and k not in columns]
  best_id = None
  scored = [r for r in rows if r['eval_loss'] is not None]
  if scored:
    best_id = min(scored, key=lambda r: r['eval_loss'])['trial_id']
  csv_path = os.path.join(out_dir, REPORT_CSV)
  with tf.io.gfile.GFile(csv_path, 'w') as f:
    writer = csv.DictWriter(f, fieldnames=columns + ['best'], extrasaction='ignore')
    writer.writeheader()
    for row in rows:
      writer.writerow({**{k: '' if row.get(k) is None else row.get(k) for k in columns},
                       'best': int(row['trial_id'] == best_id)})
  png_path = os.path.join(out_dir, REPORT_PNG)
  _plot(rows, best_id, png_path, title)
  return {'csv': csv_path, 'png': png_path}


def _plot(rows, best_id, path, title):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, (per_trial, curves) = plt.subplots(1, 2, figsize=(11, 4))
  ids = [r['trial_id'] for r in rows]
  losses = [r['eval_loss'] if r['eval_loss'] is not None else float('nan') for r in rows]
  xs = range(len(ids))
  per_trial.plot(xs, losses, '-', color='0.7', zorder=1)
  per_trial.scatter(xs, losses, zorder=2, s=40,
               c=['tab:green' if i == best_id else 'tab:blue' for i in ids])
  per_trial.set_xticks(list(xs), ids)
  per_trial.set_xlabel('trial, in run order (green: best)')
  per_trial.set_ylabel('best eval loss (xent per step)')
  per_trial.set_title(title or 'eval loss per trial')
  per_trial.grid(True, alpha=0.3)
  curves.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  for row in rows:
    points = [(e, v) for e, v in row['_curve'] if v is not None]
    if points:
      curves.plot(*zip(*points), 'o-', label=f'trial {row["trial_id"]}',
                  linewidth=2.5 if row['trial_id'] == best_id else 1)
  curves.set_xlabel('evaluation (within the trial)')
  curves.set_ylabel('eval loss')
  curves.set_title('eval loss during each trial')
  curves.grid(True, alpha=0.3)
  if len(rows) <= 12 and any(r['_curve'] for r in rows):
    curves.legend(fontsize='small')
  fig.tight_layout()
  with tf.io.gfile.GFile(path, 'wb') as f:
    fig.savefig(f, format='png', dpi=100)
  plt.close(fig)


# --- The TFX component: TFX's Tuner, plus the report. ---------------------------


def tuner_role() -> str:
  """'alone', or in keras-tuner's distributed mode 'chief' (serves the oracle) or
  'worker' (runs trials), from the environment keras-tuner reads."""
  if 'KERASTUNER_ORACLE_IP' not in os.environ:
    return 'alone'
  missing = [name for name in ('KERASTUNER_ORACLE_PORT', 'KERASTUNER_TUNER_ID')
             if not os.environ.get(name)]
  if missing:
    raise ValueError(f'KERASTUNER_ORACLE_IP is set (distributed tuning), but not '
                     f'{" or ".join(missing)}: set the oracle port, and a tuner id per '
                     "process ('chief' for the oracle's, distinct ones for workers).")
  return 'chief' if 'chief' in os.environ['KERASTUNER_TUNER_ID'] else 'worker'


class ReportingTunerExecutor(tuner_executor.Executor):
  """TFX's Tuner executor; also writes the trial report beside tuner_results.

  In distributed mode (`tuner_role`), the chief's search returns once every trial has
  ended, and only the chief writes the outputs; a worker runs trials and returns."""

  def Do(self, input_dict, output_dict, exec_properties) -> None:
    if tuner_executor.get_tune_args(exec_properties):
      raise ValueError("TuneArgs is not supported by this Tuner's Executor.")
    role = tuner_role()
    # A worker's summaries would ask the chief, which stops once the last trial ends.
    tuner = tuner_executor.search(input_dict, exec_properties, self._get_tmp_dir(),
                                  print_tuning_summary=role != 'worker')
    if role == 'worker':
      logging.info('Tuner %s: no trial left; the chief at %s:%s writes the results.',
                   tuner.tuner_id, os.environ['KERASTUNER_ORACLE_IP'],
                   os.environ['KERASTUNER_ORACLE_PORT'])
      return
    rows = trial_rows(tuner)
    if not any(r['eval_loss'] is not None for r in rows):
      raise RuntimeError(f'No trial completed out of {len(rows)}; see the trial messages in '
                         f'{tuner.project_dir}')
    tuner_executor.write_best_hyperparameters(tuner, output_dict)
    results = output_dict[standard_component_specs.TUNER_RESULTS_KEY]
    custom_config = json_utils.loads(exec_properties.get('custom_config') or 'null') or {}
    kind = custom_config.get('tuner', DEFAULT_TUNER)
    paths = write_report(rows, artifact_utils.get_single_uri(results),
                         f'{custom_config.get("config_name", "")} ({kind})')
    line = best_summary(rows, kind)
    for artifact in results:
      artifact.set_string_custom_property(BEST_TRIAL_PROPERTY, line)
    logging.info('%s', line)
    logging.info('Trial report: %s, %s (tuner state: %s)', paths['csv'], paths['png'],
                 tuner.project_dir)


class Tuner(tfx.components.Tuner):
  """tfx.components.Tuner with ReportingTunerExecutor; same spec, inputs and outputs."""
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(ReportingTunerExecutor)


def read_best_hyperparameters(uri: str) -> Tuple[str, Dict[str, Any]]:
  """(artifact dir, keras-tuner config) of a best_hyperparameters dir or the file in it.

  The Trainer reads the only file of the dir it is given, so the dir must hold one.
  """
  if not tf.io.gfile.exists(uri):
    raise FileNotFoundError(f'--hyperparameters: {uri} does not exist')
  directory = uri if tf.io.gfile.isdir(uri) else os.path.dirname(uri)
  entries = tf.io.gfile.listdir(directory)
  path = os.path.join(directory, entries[0]) if len(entries) == 1 else None
  if path is None or tf.io.gfile.isdir(path):
    raise ValueError(f"--hyperparameters: {directory} must hold exactly one file (a Tuner's "
                     f'best_hyperparameters output), found {sorted(entries)}')
  with tf.io.gfile.GFile(path) as f:
    try:
      config = json.loads(f.read())
    except ValueError:
      config = None
  if not isinstance(config, dict) or not isinstance(config.get('values', {}), dict):
    raise ValueError(f'--hyperparameters: {path} is not a keras-tuner HyperParameters config')
  return directory, config
