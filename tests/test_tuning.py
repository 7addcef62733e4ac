"""Tuning: the search space, each keras-tuner kind, resuming, and a real tuned pipeline.

The pipeline tests run LocalDagRunner with the Tuner on a small slice of the bundled
drums; the resume test kills a search process midway and runs it again.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import keras
import pytest

from music_rnn import configs as model_configs
from music_rnn import training
from music_rnn import tuning
from pipeline import local_runner
from pipeline import mlmd_results
from tests.conftest import PROJECT_ROOT, bundled, write_slice_with_eval

CONFIG = 'drum_kit'
HPARAMS = {'batch_size': 4, 'rnn_layer_sizes': [8], 'attn_length': 2}
SEARCH_SPACE_YAML = textwrap.dedent('''\
    # tiny layers; learning_rate and clip_norm keep their default ranges
    rnn_layer_sizes: [[8], [12]]
    attn_length: [2, 3]
    dropout_keep_prob: null  # not searched: keeps the config's value
''')


# --- Search space. --------------------------------------------------------------


def test_default_search_space_follows_the_config():
  drums = model_configs.get_config('drum_kit')
  space = tuning.resolve_search_space(drums, drums.hparams)
  assert set(space) == {'rnn_layer_sizes', 'learning_rate', 'clip_norm',
                        'dropout_keep_prob', 'attn_length'}
  assert [128, 128, 128] in space['rnn_layer_sizes']['values']
  assert space['learning_rate'] == {'type': 'float', 'min': 1e-4, 'max': 1e-2,
                                    'sampling': 'log'}
  assert (space['clip_norm']['min'], space['clip_norm']['max']) == (1.0, 5.0)
  assert drums.hparams.attn_length in space['attn_length']['values']
  basic = model_configs.get_config('basic_rnn')
  assert 'attn_length' not in tuning.resolve_search_space(basic, basic.hparams)


def test_vae_search_space_is_its_own():
  """MusicVAEs search their own names (the issue's), ranked by the eval ELBO; an event
  RNN's names are no VAE hparams, and the other way round."""
  for name in ('cat-drums_2bar_small', 'cat-mel_2bar_small'):
    config = model_configs.get_config(name)
    space = tuning.resolve_search_space(config, config.hparams)
    assert set(space) == {'z_size', 'free_bits', 'max_beta', 'learning_rate', 'dec_rnn_size'}
    assert config.hparams.z_size in space['z_size']['values']
    assert list(config.hparams.dec_rnn_size) in space['dec_rnn_size']['values']
    assert config.hparams.free_bits in space['free_bits']['values']
    assert tuning.objective(config) == 'val_elbo'
    with pytest.raises(ValueError, match='cannot search'):
      tuning.normalize_search_space({'rnn_layer_sizes': [[8]]}, config.hparams)
    with pytest.raises(ValueError, match='a range is'):
      tuning.normalize_search_space({'dec_rnn_size': {'min': 8, 'max': 16}}, config.hparams)
  drums = model_configs.get_config('drum_kit')
  with pytest.raises(ValueError, match='cannot search'):
    tuning.normalize_search_space({'z_size': [8]}, drums.hparams)
  # A tuner's choice of decoder sizes is a string; the Trainer splits it back.
  vae = model_configs.get_config('cat-drums_2bar_small')
  hparams = training.resolve_hparams(vae, {'batch_size': 8},
                                     {'values': {'dec_rnn_size': '16,16', 'z_size': 8}})
  assert hparams.dec_rnn_size == (16, 16) and hparams.z_size == 8 and hparams.batch_size == 8


def test_search_space_file_overrides_and_rejects(tmp_path):
  config = model_configs.get_config(CONFIG)
  base = config.hparams.replace(**HPARAMS)
  path = tmp_path / 'space.yaml'
  path.write_text(SEARCH_SPACE_YAML)
  space = tuning.resolve_search_space(config, base, str(path))
  assert space['rnn_layer_sizes'] == {'type': 'choice', 'values': [[8], [12]]}
  assert 'dropout_keep_prob' not in space
  assert space['learning_rate']['sampling'] == 'log'  # the default, kept
  as_json = tmp_path / 'space.json'
  as_json.write_text(json.dumps({'clip_norm': 2.5, 'attn_length': {'min': 2, 'max': 6}}))
  space = tuning.resolve_search_space(config, base, str(as_json))
  assert space['clip_norm'] == {'type': 'fixed', 'value': 2.5}
  assert space['attn_length'] == {'type': 'int', 'min': 2, 'max': 6, 'sampling': 'linear'}
  for bad, message in [({'batch_size': [8, 16]}, 'cannot search'),
                       ({'dropout_keep_prob': [0.5, 1.5]}, 'not a valid value'),
                       ({'learning_rate': {'min': 0, 'max': 1, 'sampling': 'log'}}, 'min > 0'),
                       ({'clip_norm': {'min': 5, 'max': 1}}, 'min > max'),
                       ({'rnn_layer_sizes': []}, 'empty')]:
    with pytest.raises(ValueError, match=message):
      tuning.normalize_search_space(bad, base)


# --- A real tuned pipeline. -----------------------------------------------------


def _run(root, **kwargs):
  data = str(root / 'data' / 'drums.tfrecord')
  if not os.path.exists(data):
    write_slice_with_eval(bundled('drums'), data, 10)
  space = root / 'space.yaml'
  space.write_text(SEARCH_SPACE_YAML)
  args = dict(model_config=CONFIG, data=data, train_steps=2, eval_steps=1, hparams=HPARAMS,
              seed=5, output_root=str(root / 'out'), serving_dir=str(root / 'serving'))
  if kwargs.get('tune'):
    args.update(tuner='random', trial_steps=2, search_space=str(space))
  args.update(kwargs)
  return local_runner.run(**args)


def _outputs(summary, component, key):
  results = mlmd_results.latest_results(summary.metadata_path, summary.pipeline_name)
  return results[component].outputs[key][0]


def _exported_hparams(summary):
  # The Trainer's export (pushed only if blessed; these 2-step models are not).
  export_dir = os.path.join(summary.trainer_model, 'Format-Serving')
  with open(os.path.join(export_dir, 'assets.extra', 'model_config.json')) as f:
    return json.load(f)['hparams']


def _sidecar_mtimes(state_dir):
  out = {}
  for name in sorted(os.listdir(state_dir)):
    path = os.path.join(state_dir, name, tuning.TRIAL_SIDECAR)
    if name.startswith('trial_') and os.path.exists(path):
      out[name] = os.stat(path).st_mtime_ns
  return out


def _report_rows(summary):
  import csv
  with open(summary.tuning['report_csv']) as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope='module')
def tuned(tmp_path_factory):
  """A first tuned run: 2 random trials of 2 steps, then the Trainer with the best."""
  root = tmp_path_factory.mktemp('tuned')
  return root, _run(root, tune=True, max_trials=2)


def test_tuned_pipeline_end_to_end(tuned):
  root, summary = tuned
  config = model_configs.get_config(CONFIG)
  base = config.hparams.replace(**HPARAMS)
  space = tuning.resolve_search_space(config, base, str(root / 'space.yaml'))

  # The Tuner ran between Transform and the Trainer.
  assert summary.component_states.get('Tuner') == 'COMPLETE', summary.component_states
  assert all(s == 'COMPLETE' for s in summary.component_states.values())
  best = _outputs(summary, 'Tuner', 'best_hyperparameters')
  assert summary.tuning['source'] == 'Tuner' and summary.tuning['uri'] == best.uri
  values = training.tuner_values(tuning.read_best_hyperparameters(best.uri)[1])
  assert tuning.in_space(values, space), (values, space)

  # The final model was trained with the best trial's hparams, and says so.
  expected = training.resolve_hparams(config, HPARAMS, values).to_dict()
  assert _exported_hparams(summary) == expected
  assert summary.metrics['hparams'] == expected

  # The report: one row per trial with metrics and time, the winner marked; the plot.
  rows = _report_rows(summary)
  assert [r['trial_id'] for r in rows] == ['0', '1']
  for row in rows:
    assert float(row['eval_loss']) > 0 and float(row['eval_perplexity']) > 1
    assert 0 <= float(row['eval_accuracy']) <= 1 and float(row['seconds']) > 0
  winner = [r for r in rows if r['best'] == '1']
  assert len(winner) == 1
  assert json.loads(winner[0]['rnn_layer_sizes']) == values['rnn_layer_sizes']
  assert float(winner[0]['learning_rate']) == pytest.approx(values['learning_rate'])
  assert float(winner[0]['eval_loss']) == min(float(r['eval_loss']) for r in rows)
  with open(summary.tuning['report_png'], 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  assert summary.tuning['best_trial'].startswith(
      f'Best of 2 completed trial(s) (random): trial {winner[0]["trial_id"]}')

  # The search state lives outside the execution: <output_root>/tuner/<pipeline>/<hash>/.
  states = os.listdir(root / 'out' / 'tuner' / summary.pipeline_name)
  assert len(states) == 1
  state_dir = root / 'out' / 'tuner' / summary.pipeline_name / states[0] / tuning.PROJECT_NAME
  before = _sidecar_mtimes(state_dir)
  assert list(before) == ['trial_0', 'trial_1']

  # More trials: the same search goes on; finished trials are not run again.
  more = _run(root, tune=True, max_trials=3)
  assert more.component_states['Tuner'] == 'COMPLETE'
  assert more.component_states['Transform'] == 'CACHED'
  after = _sidecar_mtimes(state_dir)
  assert list(after) == ['trial_0', 'trial_1', 'trial_2']
  assert {k: after[k] for k in before} == before
  assert [r['trial_id'] for r in _report_rows(more)] == ['0', '1', '2']
  assert more.tuning['best_trial'].startswith('Best of 3 completed trial(s)')

  # A later run without --tune trains with that result (Importer): no new search.
  chosen = root / 'chosen_hparams'
  shutil.copytree(more.tuning['uri'], chosen)
  reuse = _run(root, hyperparameters=str(chosen / os.listdir(chosen)[0]))
  assert reuse.component_states['hyperparameters_importer'] == 'COMPLETE'
  assert reuse.component_states['Trainer'] == 'COMPLETE'
  assert reuse.tuning['source'] == 'Importer' and reuse.tuning['uri'] == str(chosen)
  assert reuse.tuning['values'] == more.tuning['values']
  assert _exported_hparams(reuse) == training.resolve_hparams(
      config, HPARAMS, more.tuning['values']).to_dict()
  assert _sidecar_mtimes(state_dir) == after


@pytest.mark.parametrize('kind', tuning.TUNERS)
def test_each_tuner_kind_searches_real_data(tuned, tmp_path, kind):
  """tuner_fn as the Tuner calls it, on the pipeline's Transform output."""
  from tfx import v1 as tfx
  _, summary = tuned
  examples = _outputs(summary, 'Transform', 'transformed_examples').uri
  graph = _outputs(summary, 'Transform', 'transform_graph').uri
  config = model_configs.get_config(CONFIG)
  base = config.hparams.replace(**HPARAMS)
  space = tuning.normalize_search_space(
      {'rnn_layer_sizes': [[8], [12]], 'learning_rate': {'min': 1e-3, 'max': 1e-1,
                                                           'sampling': 'log'}}, base)
  fn_args = tfx.components.FnArgs(
      working_dir=str(tmp_path / 'work'),
      train_files=[os.path.join(examples, 'Split-train', '*')],
      eval_files=[os.path.join(examples, 'Split-eval', '*')],
      train_steps=2, eval_steps=1, transform_graph_path=graph,
      custom_config={'config_name': CONFIG, 'hparams': HPARAMS, 'seed': 1, 'tuner': kind,
                     'max_trials': 1, 'search_space': space, 'trial_evals': 1,
                     'tuner_dir': str(tmp_path / 'state')})
  result = tuning.tuner_fn(fn_args)
  assert isinstance(result.tuner, {'random': tuning.RandomSearch,
                                   'bayesian': tuning.BayesianOptimization,
                                   'hyperband': tuning.Hyperband}[kind])
  assert result.tuner.distribution_strategy is not None
  result.tuner.search(**result.fit_kwargs)
  rows = tuning.trial_rows(result.tuner)
  assert len(rows) == 1 and rows[0]['status'] == 'COMPLETED', rows
  best = training.tuner_values(result.tuner.get_best_hyperparameters()[0])
  assert tuning.in_space(best, space)
  # Trials stop early on eval loss: the callback reaches fit.
  assert any(isinstance(c, keras.callbacks.EarlyStopping)
             for c in result.fit_kwargs['callbacks'])


# --- Resuming an interrupted search. --------------------------------------------

_SEARCH = textwrap.dedent('''
    import json, os, signal, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices('CPU')[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from music_rnn import compact, configs, tuning

    directory, max_trials, kill_at_fit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    config = configs.get_config('basic_rnn')
    overrides = {'batch_size': 2, 'rnn_layer_sizes': [4]}
    space = tuning.normalize_search_space(
        {'rnn_layer_sizes': [[4], [6]], 'learning_rate': {'min': 1e-3, 'max': 1e-1}},
        config.hparams.replace(**overrides))
    fits = []

    class Killable(keras.callbacks.Callback):
      def on_train_batch_end(self, batch, logs=None):
        os.kill(os.getpid(), signal.SIGKILL)  # a hard stop in the middle of a trial

    class HyperModel(tuning.EventRnnHyperModel):
      def fit(self, hp, model, *args, **kwargs):
        fits.append(model.distribute_strategy.num_replicas_in_sync)
        if len(fits) == kill_at_fit:
          kwargs['callbacks'] = kwargs['callbacks'] + [Killable()]
        return super().fit(hp, model, *args, **kwargs)

    rng = np.random.default_rng(0)
    layout = compact.input_layout(config)
    def data(n):  # compact inputs (basic_rnn: one one-hot block, no dense columns)
      hot = rng.integers(0, layout.num_hot, (n, 5, layout.num_blocks)).astype('int32')
      y = rng.integers(0, config.num_classes, (n, 5)).astype('int32')
      return tf.data.Dataset.from_tensor_slices(
          ({'hot': hot, 'flags': np.zeros((n, 5), 'int64'),
            'lengths': np.full((n,), 5, 'int32')}, y))
    strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
    tuner = tuning.make_tuner('hyperband', HyperModel(config, overrides, space, seed=2),
                              directory, max_trials=max_trials, max_epochs=3, seed=2,
                              strategy=strategy)
    tuner.search(x=data(8).repeat().batch(4), validation_data=data(4).batch(4), epochs=3,
                 steps_per_epoch=1, callbacks=[keras.callbacks.EarlyStopping(patience=2)],
                 verbose=0)
    print(json.dumps({'fits': fits, 'trials': {
        t.trial_id: {'status': t.status, 'values': t.hyperparameters.values}
        for t in tuner.oracle.trials.values()}}))
''')


def _search(directory, max_trials, kill_at_fit=0):
  env = dict(os.environ, PYTHONPATH=PROJECT_ROOT, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run(
      [sys.executable, '-c', _SEARCH, str(directory), str(max_trials), str(kill_at_fit)],
      env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=400)


def test_killed_search_resumes_without_rerunning_finished_trials(tmp_path):
  """Hyperband on 2 replicas, killed in its second trial, then run again."""
  killed = _search(tmp_path, max_trials=4, kill_at_fit=2)
  assert killed.returncode == -9, killed.stderr[-3000:]
  project = tmp_path / tuning.PROJECT_NAME
  with open(project / 'trial_1' / 'trial.json') as f:
    assert json.load(f)['status'] == 'RUNNING'  # cut off midway
  done = _sidecar_mtimes(project)
  assert list(done) == ['trial_0']

  resumed = _search(tmp_path, max_trials=4)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  out = json.loads(resumed.stdout.strip().splitlines()[-1])
  # Trial 0 is kept; 1 is run again, 2 is new, 3 continues the best of them (Hyperband).
  assert len(out['fits']) == 3 and set(out['fits']) == {2}, out
  assert _sidecar_mtimes(project)['trial_0'] == done['trial_0']
  assert sorted(out['trials']) == ['0', '1', '2', '3']
  assert all(t['status'] == 'COMPLETED' for t in out['trials'].values()), out
  assert out['trials']['3']['values']['tuner/trial_id'] in ('0', '1', '2')


def test_cli_rejects_bad_tuning_flags(tmp_path, capsys):
  from music_rnn import cli
  out = ['--output-root', str(tmp_path / 'out')]
  assert cli.main(['run', '--config', CONFIG, '--max-trials', '3'] + out) == 2
  assert '--max-trials: need --tune' in capsys.readouterr().err
  assert cli.main(['run', '--config', CONFIG, '--tune', '--tuner', 'grid'] + out) == 2
  assert "Unknown tuner 'grid'" in capsys.readouterr().err
  assert cli.main(['run', '--config', CONFIG, '--hyperparameters', str(tmp_path)] + out) == 2
  assert 'exactly one file' in capsys.readouterr().err
  (tmp_path / 'hp').mkdir()
  (tmp_path / 'hp' / 'best_hyperparameters.txt').write_text(
      json.dumps({'values': {'rnn_layer_sizes': '8', 'dropout_keep_prob': 2.0}}))
  assert cli.main(['run', '--config', CONFIG, '--hyperparameters',
                   str(tmp_path / 'hp')] + out) == 2
  assert 'dropout_keep_prob' in capsys.readouterr().err
  bad_space = tmp_path / 'space.yaml'
  bad_space.write_text('rnn_layer_sizes: [[0]]\n')
  assert cli.main(['run', '--config', CONFIG, '--tune', '--search-space', str(bad_space)]
                  + out) == 2
  assert 'rnn_layer_sizes' in capsys.readouterr().err
