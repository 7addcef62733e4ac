"""Every runner at parity: the same options, given through each runner's own surface, give
the same PipelineSettings and the same compiled pipeline.

The surfaces are the real ones: `music-rnn run` argv through cli.main (the settings it hands
its orchestrator are recorded instead of run), MUSIC_RNN_AIRFLOW_* variables through the DAG
file's dag_settings (what build_dag builds from), the Kubeflow compiler's argv through its
main() (which compiles the spec), and the notebook's settings cell executed with
MUSIC_RNN_NB_* variables. Two scenarios between them set every field to a non-default
value, so a runner that drops an option fails here; a new field fails until it is added.
A third runs a MusicVAE config through the same surfaces (the notebook's MusicVAE section
has its own settings cell, MUSIC_RNN_NB_VAE_*): a new config needs no runner of its own.
"""

import dataclasses
import importlib.util
import json
import os

import nbformat
import pytest
from tfx.dsl.compiler import compiler

from music_rnn import cli
from pipeline import configs
from pipeline import local_runner
from pipeline import pipeline as pipeline_lib
from pipeline import settings as settings_lib
from tests.conftest import PROJECT_ROOT, bundled, write_slice

IMAGE = 'europe-west4-docker.pkg.dev/p/music/music-rnn-tfx:test'
NOTEBOOK = os.path.join(PROJECT_ROOT, 'notebooks', 'music_rnn_walkthrough.ipynb')


def _load(name, path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


dag_file = _load('music_rnn_dag', os.path.join(PROJECT_ROOT, 'airflow', 'music_rnn_dag.py'))
kfp_runner = _load('kubeflow_v2_runner',
                   os.path.join(PROJECT_ROOT, 'kubeflow', 'kubeflow_v2_runner.py'))


def _scenarios(tmp):
  """Two runs' options as {field: (value, CLI/KFP flags, env text)}; between them every
  field differs from its default (tune and hyperparameters exclude each other, so do
  fast_dev_run and train_steps)."""
  melody = write_slice(bundled('melody'), str(tmp / 'data' / 'melody.tfrecord'), 2)
  drums = write_slice(bundled('drums'), str(tmp / 'data' / 'drums.tfrecord'), 2)
  space = tmp / 'space.yaml'
  space.write_text('learning_rate: [0.001, 0.01]\n')
  out, serving = str(tmp / 'out'), str(tmp / 'serving')
  beam = '--direct_running_mode=multi_threading --direct_num_workers=2'
  blessing = 'max_perplexity_fraction=0.9,unigram_margin=none,loss_tolerance=0.5'
  common = {
      'output_root': (out, None, out),  # each runner's own flag: see _argv
      'serving_dir': (serving, ['--serving-dir', serving], serving),
      'beam_pipeline_args': (tuple(beam.split()), ['--beam-pipeline-args=' + beam], beam),
  }
  tuned = {
      **common,
      'model_config': ('attention_rnn', None, 'attention_rnn'),
      'data': (melody, ['--data', melody], melody),
      'eval_ratio': (0.3, ['--eval-ratio', '0.3'], '0.3'),
      'split_seed': (5, ['--split-seed', '5'], '5'),
      'train_steps': (7, ['--train-steps', '7'], '7'),
      'eval_steps': (3, ['--eval-steps', '3'], '3'),
      'hparams': ({'rnn_layer_sizes': [8], 'attn_length': 4},
                  ['--hparams', 'rnn_layer_sizes=[8],attn_length=4'],
                  'rnn_layer_sizes=[8],attn_length=4'),
      'seed': (11, ['--seed', '11'], '11'),
      'checkpoint_dir': (str(tmp / 'ckpt'), ['--checkpoint-dir', str(tmp / 'ckpt')],
                         str(tmp / 'ckpt')),
      'checkpoint_every': (None, ['--checkpoint-every', 'none'], 'none'),
      'keep_best': (2, ['--keep-best', '2'], '2'),
      'early_stopping_patience': (4, ['--early-stopping-patience', '4'], '4'),
      'warm_start_from': (str(tmp / 'base'), ['--warm-start-from', str(tmp / 'base')],
                          str(tmp / 'base')),
      'mixed_precision': ('mixed_bfloat16', ['--mixed-precision', 'mixed_bfloat16'],
                          'mixed_bfloat16'),
      'replicas': (2, ['--replicas', '2'], '2'),
      'global_batch_size': (8, ['--global-batch-size', '8'], '8'),
      'xla_generation': (False, ['--no-xla-generation'], '0'),
      'tune': (True, ['--tune'], '1'),
      'tuner': ('bayesian', ['--tuner', 'bayesian'], 'bayesian'),
      'max_trials': (4, ['--max-trials', '4'], '4'),
      'trial_steps': (5, ['--trial-steps', '5'], '5'),
      'search_space': (str(space), ['--search-space', str(space)], str(space)),
      'blessing': (configs.BLESSING.replace(blessing), ['--blessing', blessing],
                   blessing),
      'enable_cache': (False, ['--no-cache'], '0'),
  }
  reused = {
      **common,
      'model_config': ('drum_kit', None, 'drum_kit'),
      'data': (drums, ['--data', drums], drums),
      'hparams': ({'rnn_layer_sizes': [8], 'batch_size': 4},
                  ['--hparams', 'rnn_layer_sizes=[8]', '--batch-size', '4'],
                  'rnn_layer_sizes=[8],batch_size=4'),
      'fast_dev_run': (True, ['--fast-dev-run'], '1'),
      'tune': (False, [], '0'),  # the default; the notebook's own default tunes
      'hyperparameters': (str(tmp / 'hp'), ['--hyperparameters', str(tmp / 'hp')],
                          str(tmp / 'hp')),
  }
  vae = {
      **common,
      'model_config': ('cat-mel_2bar_small', None, 'cat-mel_2bar_small'),
      'data': (melody, ['--data', melody], melody),
      'eval_ratio': (0.3, ['--eval-ratio', '0.3'], '0.3'),
      'eval_steps': (3, ['--eval-steps', '3'], '3'),
      # No batch size: fast_dev_run cuts the config's own (Magenta's 512).
      'hparams': ({'z_size': 8, 'enc_rnn_size': [8], 'dec_rnn_size': [8, 8], 'free_bits': 2.0},
                  ['--hparams', 'z_size=8,enc_rnn_size=[8],dec_rnn_size=[8,8],free_bits=2.0'],
                  'z_size=8,enc_rnn_size=[8],dec_rnn_size=[8,8],free_bits=2.0'),
      'fast_dev_run': (True, ['--fast-dev-run'], '1'),
      'seed': (11, ['--seed', '11'], '11'),
      'checkpoint_every': (None, ['--checkpoint-every', 'none'], 'none'),
      'mixed_precision': ('mixed_bfloat16', ['--mixed-precision', 'mixed_bfloat16'],
                          'mixed_bfloat16'),
      'blessing': (configs.BLESSING.replace(blessing), ['--blessing', blessing],
                   blessing),
      # The config's own search space (z_size, free_bits, max_beta, ...) in the Tuner.
      'tune': (True, ['--tune'], '1'),
      'max_trials': (4, ['--max-trials', '4'], '4'),
  }
  return {'tuned': tuned, 'reused': reused, 'vae': vae}


def _expected(options):
  return settings_lib.PipelineSettings(**{k: v for k, (v, _, _) in options.items()})


def _flags(options):
  return [flag for _, flags, _ in options.values() if flags for flag in flags]


def _env(prefix, options, skip=()):
  return {prefix + k.upper(): text for k, (_, _, text) in options.items() if k not in skip}


def _from_cli(options, monkeypatch):
  recorded = []

  def record(settings):
    recorded.append(settings)
    raise ValueError('recorded')  # the CLI reports it as an error: nothing runs

  monkeypatch.setattr(local_runner, 'run', record)
  model_config, out = options['model_config'][0], options['output_root'][0]
  assert cli.main(['run', '--config', model_config, '--output-root', out]
                  + _flags(options)) != 0
  [settings] = recorded
  return settings


def _from_airflow(options, per_dag=False):
  """The DAG's settings from the shared MUSIC_RNN_AIRFLOW_* variables or (per_dag) from its
  own MUSIC_RNN_AIRFLOW_<CONFIG>__* ones, over shared ones that must lose."""
  model_config = options['model_config'][0]
  if not per_dag:
    return dag_file.dag_settings(model_config, _env(dag_file.ENV_PREFIX, options,
                                                    skip=('model_config',)))
  environ = {**_env(dag_file.dag_prefix(model_config), options, skip=('model_config',)),
             dag_file.ENV_PREFIX + 'HPARAMS': 'rnn_layer_sizes=[8]',  # another DAG's
             dag_file.ENV_PREFIX + 'SEED': '99'}
  return dag_file.dag_settings(model_config, environ)


def _from_kubeflow(options, tmp_path, monkeypatch):
  compiled = []
  real = kfp_runner.compile_pipeline

  def record(settings, output):
    compiled.append(settings)
    return real(settings, output)

  monkeypatch.setattr(kfp_runner, 'compile_pipeline', record)
  output = str(tmp_path / 'spec.json')
  assert kfp_runner.main(['--config', options['model_config'][0], '--pipeline-root',
                          options['output_root'][0], '--image', IMAGE, '--output', output]
                         + _flags(options)) == 0
  assert os.path.getsize(output) > 0
  return compiled[0]


def _from_notebook(options, monkeypatch, prefix='MUSIC_RNN_NB_', name='settings'):
  """The settings cells (the walkthrough's, then the MusicVAE section's) run in order with
  `prefix` variables; returns the one the cell that reads `prefix` names `name`."""
  for variable, value in _env(prefix, options).items():
    monkeypatch.setenv(variable, value)
  nb = nbformat.read(NOTEBOOK, as_version=4)
  cells = [c for c in nb.cells
           if c.cell_type == 'code' and 'PipelineSettings.from_env(' in c.source]
  namespace = {}
  for cell in cells:
    exec(compile(cell.source, NOTEBOOK, 'exec'), namespace)  # pylint: disable=exec-used
    if f"from_env('{prefix}'" in cell.source:
      return namespace[name]
  raise AssertionError(f'no notebook cell reads {prefix}* variables')


def _runner_independent(settings):
  """Settings without what only the Kubeflow compiler sets (image, resources)."""
  defaults = settings_lib.PipelineSettings(settings.model_config)
  return dataclasses.replace(
      settings, **{name: getattr(defaults, name) for name in settings_lib.KUBEFLOW_ONLY})


def _ir(settings):
  """The compiled pipeline IR, without the orchestrator's deployment config."""
  ir = compiler.Compiler().compile(pipeline_lib.create_pipeline(settings))
  ir.ClearField('deployment_config')
  return ir


def test_scenarios_cover_every_field(tmp_path):
  scenarios = _scenarios(tmp_path).values()
  for options in scenarios:
    assert set(options) <= set(settings_lib.ENV_PARSERS)
  covered = set()
  for options in scenarios:
    expected = _expected(options)
    defaults = settings_lib.PipelineSettings(expected.model_config)
    covered |= {f for f in options if getattr(expected, f) != getattr(defaults, f)}
  covered.add('model_config')  # required: no default, differs between the scenarios
  missing = set(settings_lib.FIELD_NAMES) - set(settings_lib.KUBEFLOW_ONLY) - covered
  assert not missing, f'give these fields a non-default value in a scenario: {missing}'


@pytest.mark.parametrize('scenario', ['tuned', 'reused', 'vae'])
def test_every_runner_builds_the_same_settings_and_pipeline(scenario, tmp_path, monkeypatch):
  options = _scenarios(tmp_path)[scenario]
  expected = _expected(options)
  built = {
      'music-rnn run': _from_cli(options, monkeypatch),
      'airflow': _from_airflow(options),
      'kubeflow': _from_kubeflow(options, tmp_path, monkeypatch),
      'notebook': _from_notebook(options, monkeypatch),
  }
  if scenario == 'vae':  # the notebook's MusicVAE section, and a DAG's own variables
    built['notebook MusicVAE section'] = _from_notebook(
        options, monkeypatch, prefix='MUSIC_RNN_NB_VAE_', name='vae_settings')
    built['airflow, per-DAG variables'] = _from_airflow(options, per_dag=True)
  for runner, settings in built.items():
    # As runs use them: fast_dev_run overrides the steps a surface may default (the
    # notebook's own defaults are a shorter run than music-rnn run's).
    assert _runner_independent(settings).resolved() == expected.resolved(), runner
  assert built['kubeflow'].image == IMAGE

  reference = _ir(expected)
  trainer = [n.pipeline_node for n in reference.nodes
             if n.pipeline_node.node_info.id == 'Trainer'][0]
  custom = json.loads(trainer.parameters.parameters['custom_config'].field_value.string_value)
  assert custom['seed'] == expected.seed and custom['hparams'] == expected.resolved().hparams
  if scenario == 'vae':
    assert custom['hparams']['batch_size'] == configs.FAST_DEV_RUN_BATCH_SIZE
    tuner = [n.pipeline_node for n in reference.nodes
             if n.pipeline_node.node_info.id == 'Tuner'][0]
    search = json.loads(tuner.parameters.parameters['custom_config'].field_value.string_value)
    assert {'z_size', 'free_bits', 'max_beta', 'dec_rnn_size'} <= set(search['search_space'])
  for runner, settings in built.items():
    assert _ir(settings) == reference, runner


def test_a_dropped_option_is_noticed(tmp_path, monkeypatch):
  """The comparison above is sharp: one option left out of a surface changes the result."""
  options = _scenarios(tmp_path)['tuned']
  environ = _env(dag_file.ENV_PREFIX, options, skip=('model_config', 'seed'))
  dropped = dag_file.dag_settings('attention_rnn', environ)
  assert dropped != _expected(options)
  assert _ir(dropped) != _ir(_expected(options))
