"""The walkthrough notebook, executed headless (nbclient) with tiny settings.

Any cell error fails the test; the outputs a new user is meant to see (TFDV statistics,
schema, anomalies, TensorBoard, the pushed model; in the MusicVAE section the pushed VAE,
its samples and the interpolation strip) must be there.
"""

import importlib.util
import os
import signal

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import PROJECT_ROOT, SMOKE_BLESSING, bundled, write_slice_with_eval

NOTEBOOK = os.path.join(PROJECT_ROOT, 'notebooks', 'music_rnn_walkthrough.ipynb')


def _stop_tensorboards_under(root: str) -> None:
  """Stops TensorBoard servers the notebook's %tensorboard started (by pid, ours only)."""
  from tensorboard import manager  # pylint: disable=g-import-not-at-top
  for info in manager.get_all():
    if root in info.logdir:
      try:
        os.kill(info.pid, signal.SIGTERM)
      except ProcessLookupError:
        pass


def _text(cell) -> str:
  parts = []
  for out in cell.get('outputs', []):
    parts.append(out.get('text', ''))
    for mime, value in out.get('data', {}).items():
      if mime.startswith('text/'):
        parts.append(value if isinstance(value, str) else ''.join(value))
  return '\n'.join(parts)


def _cell(nb, needle):
  matches = [c for c in nb.cells if c.cell_type == 'code' and needle in c.source]
  assert len(matches) == 1, needle
  return matches[0]


def test_notebook_runs_headless(tmp_path, monkeypatch):
  data = write_slice_with_eval(bundled('drums'), str(tmp_path / 'data' / 'drums.tfrecord'), 10)
  out = str(tmp_path / 'out')
  for key, value in {
      'MODEL_CONFIG': 'drum_kit', 'DATA': data, 'TRAIN_STEPS': '3', 'EVAL_STEPS': '2',
      'HPARAMS': 'rnn_layer_sizes=[32,32],attn_length=8,batch_size=4',
      'TUNE': '1', 'MAX_TRIALS': '2', 'TRIAL_STEPS': '2', 'TENSORBOARD': '1',
      'GENERATE_STEPS': '16', 'OUTPUT_ROOT': out, 'BLESSING': SMOKE_BLESSING,
      # The MusicVAE section: the drum VAE on the same slice, tiny.
      'VAE_DATA': data, 'VAE_TRAIN_STEPS': '3', 'VAE_EVAL_STEPS': '2',
      'VAE_HPARAMS': 'z_size=8,enc_rnn_size=[16],dec_rnn_size=[16],batch_size=4',
      'VAE_BLESSING': SMOKE_BLESSING, 'VAE_SAMPLES': '3', 'VAE_INTERPOLATION_STEPS': '4',
      }.items():
    monkeypatch.setenv('MUSIC_RNN_NB_' + key, value)
  monkeypatch.setenv('TF_CPP_MIN_LOG_LEVEL', '2')
  # The kernel imports the working tree, like pytest (pythonpath = .), not whatever an older
  # editable install of the package maps.
  monkeypatch.setenv('PYTHONPATH', PROJECT_ROOT)

  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = NotebookClient(nb, timeout=900, kernel_name='python3',
                          resources={'metadata': {'path': str(tmp_path)}})
  try:
    client.execute()  # raises CellExecutionError on the first failing cell
  finally:
    _stop_tensorboards_under(str(tmp_path))

  # Every component of the one create_pipeline ran, in order.
  order = _text(_cell(nb, 'components = {c.id: c for c in pipeline.components}'))
  ids = order.strip().splitlines()[-1].split(' -> ')
  assert ids[0] == 'NoteSequenceExampleGen'
  assert ids[-3:] == ['Trainer', 'Evaluator', 'Pusher']  # no baseline: no resolver

  stats = _text(_cell(nb, 'stats = example_gen_executor.read_stats('))
  assert 'drum_tracks_extracted' in stats
  # TFDV's visualisations: Facets Overview for statistics, tables for schema and anomalies.
  assert 'facets-overview' in _text(_cell(nb, "outputs['statistics']"))
  assert 'drum_pitches' in _text(_cell(nb, "outputs['schema']"))
  assert 'No anomalies found' in _text(_cell(nb, "outputs['anomalies']"))
  tuner = _cell(nb, "if 'Tuner' in components:")
  if importlib.util.find_spec('music_rnn.tuning') is not None:  # tuning is in this tree
    assert ids[-4:] == ['Tuner', 'Trainer', 'Evaluator', 'Pusher']
    assert 'eval_loss' in _text(tuner)  # the trial report table
    assert any('image/png' in o.get('data', {}) for o in tuner.outputs)
  else:
    assert 'No Tuner in this pipeline' in _text(tuner)
  trainer = _text(_cell(nb, "run_through('Trainer')"))
  assert 'perplexity' in trainer
  assert 'tensorboard-frame-' in _text(_cell(nb, '%tensorboard'))  # the server answered
  evaluated = _text(_cell(nb, "run_through('Evaluator')"))
  assert 'BLESSED' in evaluated and 'NOT blessed' not in evaluated
  assert 'perplexity' in evaluated and 'no_event_accuracy' in evaluated
  pushed = _text(_cell(nb, "run_through('Pusher')"))
  assert 'serving_default' in pushed and os.path.join(out, 'serving', 'drum_kit') in pushed
  assert os.listdir(os.path.join(out, 'serving', 'drum_kit'))
  roll = _cell(nb, "if have('serving.client')")
  if 'generate' in pushed:  # the export has generation: a MIDI file and its piano roll
    assert 'MIDI:' in _text(roll)
    assert any('image/png' in o.get('data', {}) for o in roll.outputs)
  else:
    assert 'Generation is not in this checkout' in _text(roll)

  _check_music_vae_section(nb, out)


def _images(cell):
  return [o for o in cell.outputs if 'image/png' in o.get('data', {})]


def _check_music_vae_section(nb, out):
  """The VAE pipeline ran through every component, was pushed, sampled and interpolated."""
  vae = 'cat-drums_2bar_small'
  ran = _cell(nb, 'run_vae_through(vae_pipeline.components[-1].id)')
  ids = [line for line in _text(ran).splitlines() if ' -> ' in line][-1].split(' -> ')
  assert ids[0] == 'NoteSequenceExampleGen' and ids[-3:] == ['Trainer', 'Evaluator', 'Pusher']
  assert 'slices_extracted' in _text(ran)  # ExampleGen's counters: 2-bar slices
  evaluated = _cell(nb, "vae_components['Evaluator']")
  assert 'BLESSED' in _text(evaluated) and 'NOT blessed' not in _text(evaluated)
  assert 'kl_bits' in _text(evaluated) and len(_images(evaluated)) == 1  # the loss curve
  [version] = os.listdir(os.path.join(out, 'serving', vae))  # pushed, and sampled from
  sampled = _cell(nb, 'vae_model.sample(')
  assert f'from {os.path.join(out, "serving", vae, version)}' in _text(sampled)
  assert len(_images(sampled)) == 1
  strip = _cell(nb, 'vae_model.interpolate(')
  assert len(_images(strip)) == 1
  assert '4 steps of 32 events' in _text(strip)
  written = os.path.join(out, 'music_vae', vae)
  assert sorted(os.listdir(written)) == ['interpolation.png', 'samples.png']
