"""The `music-rnn` command line: bad flags fail fast with a clear message."""

import json
import subprocess
import sys

import pytest

from music_rnn import cli
from music_rnn import configs
from tests.conftest import bundled, write_slice


@pytest.mark.parametrize('argv, message', [
    (['run', '--config', 'no_such_rnn'], "invalid choice: 'no_such_rnn'"),
    (['run', '--config', 'drum_kit', '--train-steps', '0'], 'expected a positive integer'),
    (['run', '--config', 'drum_kit', '--train-steps', 'ten'], "got 'ten'"),
    (['run', '--config', 'drum_kit', '--hparams', 'rnn_sizes=[1]'], "Unknown hparam 'rnn_sizes'"),
    (['run', '--config', 'drum_kit', '--hparams', 'learning_rate=-1'], 'learning_rate must be > 0'),
    (['run', '--config', 'drum_kit', '--hparams', 'batch_size'], 'expected name=value'),
    (['run', '--config', 'drum_kit', '--workers', '-1'], 'expected an integer >= 0'),
    (['run', '--config', 'drum_kit', '--blessing', 'max_perplexity=1'],
     "unknown threshold 'max_perplexity'"),
    (['run', '--config', 'drum_kit', '--blessing', 'loss_tolerance=-1'],
     'loss_tolerance must be >= 0'),
    (['run', '--config', 'drum_kit', '--blessing', 'max_perplexity_fraction=lots'],
     'max_perplexity_fraction must be a number or none'),
    (['run', '--config', 'drum_kit', '--blessing', 'loss_tolerance'], 'expected name=value'),
    (['run', '--config', 'drum_kit', '--blessing', 'unigram_margin=1'],
     'unigram_margin must be in [0, 1)'),
    (['run', '--config', 'drum_kit', '--blessing', 'unigram_margin=-0.1'],
     'unigram_margin must be in [0, 1)'),
    (['extract', '--input', 'x.tfrecord'], 'the following arguments are required: --config'),
    (['frobnicate'], "invalid choice: 'frobnicate'"),
])
def test_bad_flags_exit_2_with_message(capsys, argv, message):
  with pytest.raises(SystemExit) as exc:
    cli.main(argv)
  assert exc.value.code == 2
  assert message in capsys.readouterr().err


def test_missing_data_directory_is_a_clear_error(capsys, tmp_path):
  code = cli.main(['run', '--config', 'drum_kit', '--data', str(tmp_path / 'nope' / '*.tfrecord'),
                   '--output-root', str(tmp_path / 'out')])
  assert code == 2
  assert 'does not exist' in capsys.readouterr().err


def test_hparams_parse_magenta_syntax():
  assert configs.parse_hparams('batch_size=64,rnn_layer_sizes=[64,64],clip_norm=3') == {
      'batch_size': 64, 'rnn_layer_sizes': [64, 64], 'clip_norm': 3}
  hp = configs.get_config('drum_kit').hparams.replace(rnn_layer_sizes=[64, 64])
  assert hp.rnn_layer_sizes == (64, 64) and hp.attn_length == 32


def test_extract_command_prints_stats_and_writes_jsonl(tmp_path):
  data = write_slice(bundled('drums'), str(tmp_path / 'd.tfrecord'), 3)
  out = tmp_path / 'events.jsonl'
  proc = subprocess.run([sys.executable, '-m', 'music_rnn.cli', 'extract', '--config',
                         'drum_kit', '--input', data, '--events-out', str(out)],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'drum_tracks_extracted' in proc.stdout
  lines = [json.loads(l) for l in out.read_text().splitlines()]
  assert lines, 'no drum tracks extracted from 3 Freedoom songs'
  for line in lines:
    assert {'source_id', 'events'} <= set(line)
    assert all(isinstance(step, list) and step == sorted(step) for step in line['events'])
    assert 7 * 16 <= len(line['events']) <= 512


def test_console_script_runs_outside_the_tree(tmp_path):
  """The installed `music-rnn` entry point works from any directory (no pkg_resources pins)."""
  import os
  script = os.path.join(os.path.dirname(sys.executable), 'music-rnn')
  proc = subprocess.run([script, 'run', '--config', 'drum_kit', '--data',
                         str(tmp_path / 'missing' / 'x.tfrecord')],
                        cwd=str(tmp_path), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert 'does not exist' in proc.stderr


def test_blessing_overrides_keep_the_other_defaults():
  from pipeline import configs as pipeline_configs  # pylint: disable=g-import-not-at-top
  default = pipeline_configs.BLESSING
  changed = default.replace('loss_tolerance=none')
  assert changed.loss_tolerance is None and not changed.compare_to_baseline
  assert changed.max_perplexity_fraction == default.max_perplexity_fraction
  assert default.replace(' max_perplexity_fraction = 0.8 ,').max_perplexity_fraction == 0.8
  assert default.replace('') == default
  assert default.unigram_margin == 0.1 and default.max_loss_vs_unigram == pytest.approx(0.9)
  off = default.replace('unigram_margin=none')
  assert off.unigram_margin is None and off.max_loss_vs_unigram is None
  assert off.loss_tolerance == default.loss_tolerance
  assert default.replace('unigram_margin=0.25').max_loss_vs_unigram == pytest.approx(0.75)
