"""One object for everything a pipeline run can set, built by every runner from its surface.

`music-rnn run` (CLI flags), the Airflow DAG (MUSIC_RNN_AIRFLOW_* variables), the Kubeflow
compiler (its flags) and the notebook (a cell, MUSIC_RNN_NB_* variables) each build a
PipelineSettings and hand it to `create_pipeline(settings)`: an option is added here and on
the surfaces, never to four copies of the wiring. The flags (`add_arguments`) and the
environment variables (`from_env`) share one parser per field. Defaults are
pipeline/configs.py's; names, roots and the fast-dev-run reductions are derived here once.
"""

import argparse
import dataclasses
import os
import posixpath
import shlex
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from music_rnn import blessing as blessing_lib
from music_rnn import configs as model_configs
from pipeline import configs

MIXED_PRECISION = ('auto', 'mixed_float16', 'mixed_bfloat16', 'off')
# Vertex AI machine for a training job's pools when only accelerators or replicas are given.
DEFAULT_MACHINE_TYPE = 'n1-standard-8'


@dataclasses.dataclass(frozen=True)
class ComputeResources:
  """What a Trainer or Tuner runs on under Kubeflow / Vertex AI (the compiler's flags).

  Accelerators alone are a KFP v2 container request (the task's pod gets them); a
  machine type or more than one replica runs the component as a Vertex AI training job
  (worker pools of that machine: the Trainer's run_fn sees them in TF_CONFIG, the Tuner
  runs one trial per replica in parallel).
  """
  machine_type: Optional[str] = None  # e.g. 'n1-standard-8', 'a2-highgpu-1g'
  accelerator_type: Optional[str] = None  # e.g. 'NVIDIA_TESLA_T4', 'TPU_V3'
  accelerator_count: int = 0
  replica_count: int = 1

  def __post_init__(self):
    if self.accelerator_count < 0 or self.replica_count < 1:
      raise ValueError(f'resources: accelerator_count must be >= 0 and replica_count >= 1, '
                       f'got {self}')
    if bool(self.accelerator_type) != bool(self.accelerator_count):
      raise ValueError('resources: give an accelerator type and a count >= 1 together, got '
                       f'type {self.accelerator_type!r}, count {self.accelerator_count}')

  @property
  def requested(self) -> bool:
    return self != ComputeResources()

  @property
  def needs_training_job(self) -> bool:
    """A machine type or several replicas: only a Vertex AI training job provides them."""
    return bool(self.machine_type) or self.replica_count > 1


@dataclasses.dataclass(frozen=True)
class PipelineSettings:
  """Everything a run can set; see pipeline/configs.py for what the defaults mean."""
  model_config: str
  # Data: NoteSequence TFRecords (file, directory or file glob; None: the bundled data).
  data: Optional[str] = None
  eval_ratio: Optional[float] = None  # None: the config's
  split_seed: int = 0
  # Where things go: pipelines/, metadata/, checkpoints/, tuner/ under output_root.
  output_root: str = configs.OUTPUT_ROOT
  serving_dir: Optional[str] = None  # Pusher root (None: configs.SERVING_MODELS_DIR)
  # Training.
  train_steps: int = configs.TRAIN_STEPS
  eval_steps: int = configs.EVAL_STEPS
  hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  seed: int = 0
  checkpoint_dir: Optional[str] = None  # None: <output_root>/checkpoints/<name>
  checkpoint_every: Optional[int] = configs.CHECKPOINT_EVERY
  keep_best: int = configs.KEEP_BEST
  early_stopping_patience: Optional[int] = configs.EARLY_STOPPING_PATIENCE
  warm_start_from: Optional[str] = None
  mixed_precision: Optional[str] = None
  replicas: Optional[int] = None
  global_batch_size: Optional[int] = None
  xla_generation: bool = True
  fast_dev_run: bool = False
  # Tuning.
  tune: bool = False
  tuner: str = configs.TUNER
  max_trials: int = configs.MAX_TRIALS
  trial_steps: int = configs.TRIAL_STEPS
  search_space: Optional[str] = None
  hyperparameters: Optional[str] = None  # an earlier search's best_hyperparameters
  # Evaluator.
  blessing: blessing_lib.BlessingThresholds = configs.BLESSING
  # Execution.
  beam_pipeline_args: Tuple[str, ...] = tuple(configs.BEAM_PIPELINE_ARGS)
  enable_cache: bool = True
  # Kubeflow / Vertex AI only (KUBEFLOW_ONLY): the image and what Trainer and Tuner run on.
  image: Optional[str] = None
  trainer_resources: ComputeResources = ComputeResources()
  tuner_resources: ComputeResources = ComputeResources()
  vertex_project: Optional[str] = None
  vertex_region: Optional[str] = None

  def __post_init__(self):
    object.__setattr__(self, 'hparams', dict(self.hparams or {}))
    object.__setattr__(self, 'beam_pipeline_args', tuple(self.beam_pipeline_args))
    _check(self)

  def replace(self, **changes) -> 'PipelineSettings':
    return dataclasses.replace(self, **changes)

  # --- Derived values, written once. ---

  @property
  def config(self) -> model_configs.ModelConfig:
    return model_configs.get_config(self.model_config)

  @property
  def pipeline_name(self) -> str:
    name = configs.pipeline_name(self.model_config)
    return name + configs.FAST_DEV_RUN_SUFFIX if self.fast_dev_run else name

  @property
  def pipeline_root(self) -> str:
    return join_path(self.output_root, 'pipelines', self.pipeline_name)

  @property
  def metadata_path(self) -> str:
    """The SQLite ML-Metadata of the local runner, Airflow and the notebook."""
    return join_path(self.output_root, 'metadata', self.pipeline_name, 'metadata.db')

  @property
  def checkpoint_root(self) -> str:
    """Outlives any one Trainer execution, so a re-run after a kill resumes."""
    return self.checkpoint_dir or join_path(self.output_root, 'checkpoints', self.pipeline_name)

  @property
  def tuner_state_root(self) -> str:
    return join_path(self.output_root, 'tuner', self.pipeline_name)

  @property
  def serving_model_dir(self) -> str:
    """The Pusher's destination."""
    return join_path(self.serving_dir or configs.SERVING_MODELS_DIR, self.model_config)

  @property
  def data_location(self) -> Tuple[str, str]:
    """(data_root, file pattern) of the input TFRecords."""
    return split_data_path(self.data or configs.default_data(self.config.kind))

  @property
  def is_remote_data(self) -> bool:
    return '://' in self.data_location[0]

  def data_fingerprint(self) -> Optional[str]:
    """The input files and split, hashed (None for remote data: nothing is read to compile)."""
    if self.is_remote_data:
      return None
    from music_rnn import checkpointing  # pylint: disable=g-import-not-at-top
    return checkpointing.data_fingerprint(
        *self.data_location, eval_ratio=self.eval_ratio or self.config.extractor.eval_ratio,
        split_seed=self.split_seed)

  def resolved(self) -> 'PipelineSettings':
    """The settings a run uses: with fast_dev_run, a handful of small batches through every
    component, two trials, a serving dir of its own and a blessing that passes anything (a
    smoke test checks wiring, not quality). Idempotent."""
    if not self.fast_dev_run:
      return self
    hparams = dict(self.hparams)
    if 'batch_size' not in hparams and not self.global_batch_size:
      hparams['batch_size'] = min(self.config.hparams.batch_size,
                                  configs.FAST_DEV_RUN_BATCH_SIZE)
    return self.replace(
        train_steps=configs.FAST_DEV_RUN_TRAIN_STEPS,
        eval_steps=min(self.eval_steps, configs.FAST_DEV_RUN_EVAL_STEPS),
        hparams=hparams, checkpoint_every=None, early_stopping_patience=None,
        trial_steps=configs.FAST_DEV_RUN_TRAIN_STEPS, max_trials=min(self.max_trials, 2),
        serving_dir=self.serving_dir or join_path(self.output_root, 'fast-dev-run', 'serving'),
        blessing=blessing_lib.BlessingThresholds(
            max_perplexity_fraction=None, loss_tolerance=None, unigram_margin=None))

  def trainer_options(self) -> Dict[str, Any]:
    """run_fn's custom_config options (training.TRAINER_OPTIONS), Nones dropped."""
    options = {
        'checkpoint_every': self.checkpoint_every,
        'early_stopping_patience': self.early_stopping_patience,
        'keep_best': self.keep_best,
        'mixed_precision': self.mixed_precision,
        'xla_generation': None if self.xla_generation else False,  # default on in run_fn
        'replicas': self.replicas,
        'global_batch_size': self.global_batch_size,
        'data_fingerprint': self.data_fingerprint(),
    }
    if self.fast_dev_run:
      options.update(fast_dev_run=True, num_evals=1)
    return {k: v for k, v in options.items() if v is not None}

  def with_local_files_checked(self) -> 'PipelineSettings':
    """Fails before anything runs when a local input is missing or does not fit; returns
    the settings with `hyperparameters` resolved to its artifact dir. For the runners that
    run here (local, Airflow, notebook); the Kubeflow compiler cannot see the bucket."""
    from music_rnn import training  # pylint: disable=g-import-not-at-top
    from music_rnn import tuning  # pylint: disable=g-import-not-at-top
    defaults = PipelineSettings(self.model_config)
    kubeflow_only = [name for name in KUBEFLOW_ONLY
                     if getattr(self, name) != getattr(defaults, name)]
    if kubeflow_only:
      raise ValueError(f'{", ".join(kubeflow_only)}: only the Kubeflow compiler '
                       '(kubeflow/kubeflow_v2_runner.py) runs on other machines')
    self.data_location  # pylint: disable=pointless-statement  # raises if the dir is missing
    if self.search_space and not os.path.isfile(self.search_space):
      raise FileNotFoundError(f'--search-space: {self.search_space} is not a file')
    if self.warm_start_from:
      training.find_export(self.warm_start_from)
    if not self.hyperparameters:
      return self
    directory, hp_config = tuning.read_best_hyperparameters(self.hyperparameters)
    training.resolve_hparams(self.config, self.hparams, hp_config)  # must fit this config
    return self.replace(hyperparameters=directory)

  # --- Surfaces. ---

  @classmethod
  def from_env(cls, prefix: str, defaults: Mapping[str, Any],
               environ: Optional[Mapping[str, str]] = None, **fixed) -> 'PipelineSettings':
    """Settings from <prefix><FIELD> variables (e.g. MUSIC_RNN_AIRFLOW_TRAIN_STEPS=3) over
    `defaults`; `fixed` values are the runner's own (e.g. each Airflow DAG's config)."""
    environ = os.environ if environ is None else environ
    values = dict(defaults)
    for name, parse in ENV_PARSERS.items():
      text = environ.get(prefix + name.upper())
      if text and name not in fixed:
        try:
          values[name] = parse(text)
        except ValueError as e:
          raise ValueError(f'{prefix}{name.upper()}: {e}') from None
    return cls(**values, **fixed)

  @classmethod
  def from_args(cls, args: argparse.Namespace, **runner_values) -> 'PipelineSettings':
    """Settings from add_arguments' flags (only those given) over `runner_values`."""
    given = {k: v for k, v in vars(args).items() if k in FIELD_NAMES}
    batch_size = getattr(args, 'batch_size', None)
    if batch_size:
      given['hparams'] = {**given.get('hparams', {}), 'batch_size': batch_size}
    search_flags = [flag for flag, name in (('--tuner', 'tuner'), ('--max-trials', 'max_trials'),
                                            ('--trial-steps', 'trial_steps'),
                                            ('--search-space', 'search_space'))
                    if name in given]
    if search_flags and not given.get('tune'):
      raise ValueError(f'{", ".join(search_flags)}: need --tune')
    if given.get('fast_dev_run') and 'train_steps' in given:
      raise ValueError('--fast-dev-run sets the train steps; drop --train-steps')
    return cls(**{**runner_values, **given})


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(PipelineSettings))
# Only the Kubeflow compiler can honour these: the other runners run components here.
KUBEFLOW_ONLY = ('image', 'trainer_resources', 'tuner_resources', 'vertex_project',
                 'vertex_region')


def _check(s: PipelineSettings) -> None:
  """One clear error for settings that cannot run, before anything is built."""
  config = s.config  # raises on an unknown config
  config.hparams.replace(**s.hparams)  # validates names and values
  for name in ('train_steps', 'eval_steps', 'max_trials', 'trial_steps', 'keep_best'):
    if getattr(s, name) < 1:
      raise ValueError(f'{name} must be >= 1, got {getattr(s, name)}')
  if s.eval_ratio is not None and not 0 < s.eval_ratio < 1:
    raise ValueError(f'eval_ratio must be in (0, 1), got {s.eval_ratio}')
  if s.tune and s.hyperparameters:
    raise ValueError('--hyperparameters trains with an earlier search; drop --tune')
  if s.tune:
    from music_rnn import tuning  # pylint: disable=g-import-not-at-top
    if s.tuner not in tuning.TUNERS:
      raise ValueError(f'Unknown tuner {s.tuner!r}; choose one of {list(tuning.TUNERS)}')
  if s.mixed_precision not in (None,) + MIXED_PRECISION:
    raise ValueError(f'mixed_precision must be one of {list(MIXED_PRECISION)}, '
                     f'got {s.mixed_precision!r}')
  if s.global_batch_size and 'batch_size' in s.hparams:
    raise ValueError('--global-batch-size and a per-replica batch size: give one of them')
  if s.global_batch_size:
    from music_rnn import training  # pylint: disable=g-import-not-at-top
    training.split_batch(config.hparams, s.replicas or 1, s.global_batch_size)  # divides
  if not isinstance(s.blessing, blessing_lib.BlessingThresholds):
    raise ValueError(f'blessing must be a BlessingThresholds, got {s.blessing!r}')
  for role in ('trainer', 'tuner'):
    resources = getattr(s, f'{role}_resources')
    if resources.needs_training_job and not (s.vertex_project and s.vertex_region and s.image):
      raise ValueError(f'--{role}-machine-type / --{role}-replica-count run a Vertex AI '
                       'training job: give --vertex-project, --vertex-region and --image')


def join_path(root: str, *parts: str) -> str:
  """os.path.join for local roots, '/'-joined for gs:// and other URLs."""
  return (posixpath if '://' in root else os.path).join(root.rstrip('/') or root, *parts)


def split_data_path(data: str) -> Tuple[str, str]:
  """'dir' -> (dir, '*.tfrecord*'); 'dir/x*.tfrecord' or a file -> (dir, basename pattern).

  Remote paths (gs://...) are split by their text alone: compiling for Kubeflow must not
  need access to the bucket; a local directory must exist.
  """
  if '://' in data:
    data = data.rstrip('/')
    base = posixpath.basename(data)
    if not (any(c in base for c in '*?[') or '.tfrecord' in base):
      return data, '*.tfrecord*'
    root, pattern = posixpath.dirname(data), base
  else:
    data = os.path.abspath(data)
    if os.path.isdir(data):
      return data, '*.tfrecord*'
    root, pattern = os.path.dirname(data), os.path.basename(data)
  if any(c in root for c in '*?['):
    raise ValueError(f'--data: wildcards are supported in the file name only, got {data!r}')
  if '://' not in root and not os.path.isdir(root):
    raise FileNotFoundError(f'--data: directory {root!r} does not exist')
  return root, pattern


# --- Parsers: one per field, shared by flags and environment variables. ---


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise ValueError(f'expected {what}, got {text!r}') from None
    if value < minimum:
      raise ValueError(f'expected {what}, got {value}')
    return value
  return parse


_positive_int = _int_at_least(1, 'a positive integer')
_non_negative_int = _int_at_least(0, 'an integer >= 0')


def _optional(parse: Callable[[str], Any]) -> Callable[[str], Any]:
  """'none' (any case) -> None, else `parse`: turns a default-on option off."""
  return lambda text: None if text.strip().lower() == 'none' else parse(text)


def _ratio(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise ValueError(f'expected a number in (0, 1), got {text!r}') from None
  if not 0 < value < 1:
    raise ValueError(f'expected a number in (0, 1), got {value}')
  return value


def _bool(text: str) -> bool:
  lowered = text.strip().lower()
  if lowered in ('1', 'true', 'yes', 'on'):
    return True
  if lowered in ('0', 'false', 'no', 'off'):
    return False
  raise ValueError(f'expected 1/true/yes or 0/false/no, got {text!r}')


def _choice(choices) -> Callable[[str], str]:
  def parse(text: str) -> str:
    if text not in choices:
      raise ValueError(f'expected one of {list(choices)}, got {text!r}')
    return text
  return parse


def _text(text: str) -> str:
  return text


ENV_PARSERS: Dict[str, Callable[[str], Any]] = {
    'model_config': _choice(sorted(model_configs.CONFIGS)),
    'data': _text,
    'eval_ratio': _ratio,
    'split_seed': _non_negative_int,
    'output_root': _text,
    'serving_dir': _text,
    'train_steps': _positive_int,
    'eval_steps': _positive_int,
    'hparams': model_configs.parse_hparams,
    'seed': _non_negative_int,
    'checkpoint_dir': _text,
    'checkpoint_every': _optional(_positive_int),
    'keep_best': _positive_int,
    'early_stopping_patience': _optional(_positive_int),
    'warm_start_from': _text,
    'mixed_precision': _choice(MIXED_PRECISION),
    'replicas': _positive_int,
    'global_batch_size': _positive_int,
    'xla_generation': _bool,
    'fast_dev_run': _bool,
    'tune': _bool,
    'tuner': _text,
    'max_trials': _positive_int,
    'trial_steps': _positive_int,
    'search_space': _text,
    'hyperparameters': _text,
    'blessing': configs.BLESSING.replace,
    'beam_pipeline_args': lambda text: tuple(shlex.split(text)),
    'enable_cache': _bool,
}
assert set(ENV_PARSERS) == set(FIELD_NAMES) - set(KUBEFLOW_ONLY)


def _flag_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
  """A parser as an argparse type: its ValueError becomes argparse's usage error."""
  def flag_type(text: str):
    try:
      return parse(text)
    except ValueError as e:
      raise argparse.ArgumentTypeError(str(e)) from None
  return flag_type


def add_arguments(parser: argparse.ArgumentParser) -> None:
  """The pipeline's flags, the same on `music-rnn run` and the Kubeflow compiler.

  Each flag's dest is its PipelineSettings field; a flag not given is absent from the
  namespace (from_args then keeps the default).
  """
  p = ENV_PARSERS
  add = parser.add_argument
  keep = argparse.SUPPRESS
  add('--config', dest='model_config', required=True, choices=sorted(model_configs.CONFIGS))
  add('--data', default=keep, help='NoteSequence TFRecord file, directory or file glob '
      '(default: the bundled data for the config kind).')
  add('--eval-ratio', type=_flag_type(p['eval_ratio']), default=keep,
      help="At least this fraction of the pieces in eval (default: the config's).")
  add('--split-seed', type=_flag_type(p['split_seed']), default=keep,
      help='Salt of the train/eval split by piece (default 0; independent of --seed).')
  add('--serving-dir', default=keep, help='Pusher destination root (default serving/models; '
      'Kubeflow: <pipeline-root>/serving).')
  add('--train-steps', type=_flag_type(p['train_steps']), default=keep)
  add('--eval-steps', '--limit-eval-batches', dest='eval_steps', default=keep,
      type=_flag_type(p['eval_steps']),
      help='Eval batches per evaluation (Lightning: limit_val_batches).')
  add('--batch-size', type=_flag_type(_positive_int), default=keep,
      help='Per-replica batch size.')
  add('--hparams', type=_flag_type(p['hparams']), default=keep,
      help="Magenta syntax, the config's names: e.g. 'rnn_layer_sizes=[64,64],"
      "learning_rate=0.01' (event RNNs), 'z_size=64,dec_rnn_size=[64,64]' (MusicVAE).")
  add('--seed', type=_flag_type(p['seed']), default=keep)
  add('--beam-pipeline-args', type=_flag_type(p['beam_pipeline_args']), default=keep,
      help='Beam options for ExampleGen, StatisticsGen, Transform and Evaluator as one '
      'quoted string, given with "=": --beam-pipeline-args="--runner=FlinkRunner ..." '
      '(README, "Beam at scale").')
  add('--no-cache', dest='enable_cache', action='store_false', default=keep,
      help="Disable TFX's execution cache.")
  add('--no-xla-generation', dest='xla_generation', action='store_false', default=keep,
      help="Export the event RNNs' generate/prime/extend signatures as plain TensorFlow "
      'ops instead of an XLA-compiled sampling loop (slower at small batches; for servers '
      'without XLA, e.g. TF Serving without --xla_cpu_compilation_enabled).')
  add('--blessing', type=_flag_type(p['blessing']), default=keep, metavar='NAME=VALUE,...',
      help='Evaluator thresholds, only blessed models are pushed: max_perplexity_fraction '
      '(eval perplexity must be below this times the number of classes), unigram_margin '
      "(eval loss at most 1 - this times the loss of the train split's label frequencies) "
      "and loss_tolerance (eval loss at most this above the latest blessed model's); "
      '"none" turns one off. Default: max_perplexity_fraction=0.5,unigram_margin=0.1,'
      'loss_tolerance=0.01.')
  _add_tuning_arguments(parser)
  _add_training_arguments(parser)


def _add_tuning_arguments(parser: argparse.ArgumentParser) -> None:
  keep = argparse.SUPPRESS
  t = parser.add_argument_group('tuning', "Search the config's default space (event RNNs: "
                                'rnn_layer_sizes, learning_rate, clip_norm, ...; MusicVAE: '
                                'z_size, free_bits, max_beta, learning_rate, dec_rnn_size) '
                                'with a TFX Tuner and train the final model with the best.')
  t.add_argument('--tune', action='store_true', default=keep,
                 help='Add the Tuner before the Trainer.')
  t.add_argument('--tuner', default=keep,
                 help=f'random, bayesian or hyperband (default {configs.TUNER}).')
  t.add_argument('--max-trials', type=_flag_type(_positive_int), default=keep,
                 help=f'Trials to run (default {configs.MAX_TRIALS}); re-running with more '
                 'extends the search.')
  t.add_argument('--trial-steps', type=_flag_type(_positive_int), default=keep,
                 help=f'Training steps per trial (default {configs.TRIAL_STEPS}).')
  t.add_argument('--search-space', default=keep, help='YAML/JSON file replacing entries of '
                 'the default search space (see README, "Tuning").')
  t.add_argument('--hyperparameters', default=keep, help="Without --tune: train with an "
                 "earlier run's best_hyperparameters (its artifact dir, or the file in it).")


def _add_training_arguments(parser: argparse.ArgumentParser) -> None:
  keep = argparse.SUPPRESS
  p = ENV_PARSERS
  r = parser.add_argument_group('training that survives', 'Checkpoints, resume, best model, '
                                'devices, precision, debugging (README, "Training that '
                                'survives").')
  r.add_argument('--fast-dev-run', action='store_true', default=keep,
                 help=f'Smoke test: every component, {configs.FAST_DEV_RUN_TRAIN_STEPS} train '
                 f'and <= {configs.FAST_DEV_RUN_EVAL_STEPS} eval batches of <= '
                 f'{configs.FAST_DEV_RUN_BATCH_SIZE}, as pipeline <name>'
                 f'{configs.FAST_DEV_RUN_SUFFIX}; nothing is resumed or pushed to the real '
                 'serving dir.')
  r.add_argument('--checkpoint-every', type=_flag_type(p['checkpoint_every']), default=keep,
                 help=f'Steps between checkpoints (default {configs.CHECKPOINT_EVERY}; also '
                 'at every evaluation; none: only there).')
  r.add_argument('--keep-best', type=_flag_type(p['keep_best']), default=keep,
                 help=f'Lowest-eval-loss checkpoints kept (default {configs.KEEP_BEST}).')
  r.add_argument('--checkpoint-dir', default=keep, help='Stable checkpoint root (default '
                 '<output root>/checkpoints/<pipeline name>).')
  r.add_argument('--early-stopping-patience', type=_flag_type(p['early_stopping_patience']),
                 default=keep,
                 help='Stop after N evaluations without a lower eval loss (default: off).')
  r.add_argument('--warm-start-from', default=keep, help='Fine-tune from a previous model: a '
                 "pushed SavedModel dir or a Trainer's Model artifact (same config and layer "
                 'sizes).')
  r.add_argument('--mixed-precision', nargs='?', const='auto', choices=MIXED_PRECISION,
                 default=keep, help='auto: mixed_float16 on GPU, mixed_bfloat16 on CPU; the '
                 'softmax stays float32.')
  r.add_argument('--replicas', type=_flag_type(p['replicas']), default=keep,
                 help='MirroredStrategy replicas: the first N GPUs, or on a CPU-only machine '
                 'N logical CPU devices.')
  r.add_argument('--global-batch-size', type=_flag_type(p['global_batch_size']), default=keep,
                 help='Batch over all replicas (must divide by --replicas); instead of the '
                 'per-replica --batch-size.')


def add_resource_arguments(parser: argparse.ArgumentParser) -> None:
  """--{trainer,tuner}-{machine-type,accelerator-type,accelerator-count,replica-count}
  and the Vertex AI project/region a training job needs (the Kubeflow compiler's)."""
  g = parser.add_argument_group('resources', 'What the Trainer and Tuner run on (Kubeflow / '
                                'Vertex AI; kubeflow/README.md, "Accelerators").')
  for role in ('trainer', 'tuner'):
    g.add_argument(f'--{role}-machine-type', help='Vertex AI machine type, e.g. '
                   'n1-standard-8 (runs a Vertex AI training job).')
    g.add_argument(f'--{role}-accelerator-type', help='e.g. NVIDIA_TESLA_T4, NVIDIA_L4, '
                   'TPU_V3.')
    g.add_argument(f'--{role}-accelerator-count', type=_flag_type(_non_negative_int),
                   default=0)
    g.add_argument(f'--{role}-replica-count', type=_flag_type(_positive_int), default=1,
                   help='Machines (Trainer: multi-worker training; Tuner: parallel trials); '
                   '> 1 runs a Vertex AI training job.')
  g.add_argument('--vertex-project', help='GCP project of the Vertex AI training jobs.')
  g.add_argument('--vertex-region', help='Region of the Vertex AI training jobs.')


def resources_from_args(args: argparse.Namespace, role: str) -> ComputeResources:
  return ComputeResources(
      machine_type=getattr(args, f'{role}_machine_type'),
      accelerator_type=getattr(args, f'{role}_accelerator_type'),
      accelerator_count=getattr(args, f'{role}_accelerator_count'),
      replica_count=getattr(args, f'{role}_replica_count'))
