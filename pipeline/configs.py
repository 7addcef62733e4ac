"""Pipeline settings a user changes, in one place (TFX template style).

Model numbers (encodings, hparams) live in music_rnn/configs.py, looked up by MODEL_CONFIG.
These are the defaults of pipeline/settings.py's PipelineSettings: every value can be
overridden per run from `music-rnn run`, the Airflow DAG, the Kubeflow compiler or the notebook.
"""

import os

from music_rnn import blessing

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Default data per model kind (see data/README.md), for both families: drum_kit and
# cat-drums_2bar_small read the drums, the melody RNNs and cat-mel_2bar_small the melodies.
# Drums are the Freedoom soundtrack and the drum parts of MMA's groove library (81 + 1,800
# drum tracks), both committed.
DRUMS_DATA = os.path.join(PROJECT_ROOT, 'data', 'drums', '*.tfrecord.gz')
MELODY_DATA = os.path.join(PROJECT_ROOT, 'data', 'melody', 'essen_subset.tfrecord')

# Where pipelines, ML-Metadata and pushed models go (override with MUSIC_RNN_HOME).
OUTPUT_ROOT = os.environ.get('MUSIC_RNN_HOME', os.path.join(PROJECT_ROOT, 'build'))
SERVING_MODELS_DIR = os.path.join(PROJECT_ROOT, 'serving', 'models')

PIPELINE_NAME_PREFIX = 'music-rnn'

# User code, reached by module path (module_file.py is the door TFX knocks on).
PREPROCESSING_FN = 'module_file.preprocessing_fn'
RUN_FN = 'module_file.run_fn'
TUNER_FN = 'module_file.tuner_fn'

# Training length; hparams (batch size, layer sizes, ...) default to Magenta's config.
TRAIN_STEPS = 200
EVAL_STEPS = 20

# Tuning (`--tune`): trials and steps per trial; the search state goes to
# <OUTPUT_ROOT>/tuner/<pipeline name>/<fingerprint>/ and survives interrupted runs.
TUNER = 'random'
MAX_TRIALS = 10
TRIAL_STEPS = 100

# Training that survives (README): checkpoints every CHECKPOINT_EVERY steps and at each
# evaluation, under <OUTPUT_ROOT>/checkpoints/<pipeline name>/<run key>/, so a killed run
# resumes when re-run; the KEEP_BEST lowest-eval-loss weights are kept, the best exported.
CHECKPOINT_EVERY = 100
KEEP_BEST = 3
EARLY_STOPPING_PATIENCE = None  # evaluations without a lower eval loss; None: off

# `--fast-dev-run`: a handful of batches through every component, under its own pipeline
# name (never the real run's cache, checkpoints or pushed models).
FAST_DEV_RUN_TRAIN_STEPS = 3
FAST_DEV_RUN_EVAL_STEPS = 2
FAST_DEV_RUN_BATCH_SIZE = 8
FAST_DEV_RUN_SUFFIX = '-fast-dev-run'

# Blessing (the Evaluator, on the eval split): perplexity below this fraction of the
# number of classes (a uniform guess scores exactly that); an eval loss at most 1 - margin
# times the unigram loss (the train split's label frequencies, a context-free guess); and,
# once a blessed model of the pipeline exists, an eval loss at most LOSS_TOLERANCE
# nats/step above that model's. Only blessed models are pushed. None turns a check off;
# `--blessing 'max_perplexity_fraction=0.8,unigram_margin=0.05,loss_tolerance=none'`
# overrides per run.
BLESSING = blessing.BlessingThresholds()  # 0.5, 0.1 and 0.01 (music_rnn/blessing.py)

# Beam: DirectRunner in-process by default; `--workers N` switches to multi-processing.
BEAM_PIPELINE_ARGS = ['--direct_running_mode=in_memory', '--direct_num_workers=1']


def pipeline_name(model_config: str) -> str:
  return f'{PIPELINE_NAME_PREFIX}-{model_config.replace("_", "-")}'


def default_data(kind: str) -> str:
  """The bundled data of a config's `kind` (drums or melody), whatever its family."""
  from music_rnn import configs as model_configs  # pylint: disable=g-import-not-at-top
  return {model_configs.DRUMS: DRUMS_DATA, model_configs.MELODY: MELODY_DATA}[kind]


def beam_args_for_workers(workers: int) -> list:
  """DirectRunner args: in-process for 1 worker, multi-processing otherwise (0 = all cores)."""
  if workers == 1:
    return list(BEAM_PIPELINE_ARGS)
  return ['--direct_running_mode=multi_processing', f'--direct_num_workers={workers}']
