"""The `music-rnn` command line: bad flags fail fast with a clear message."""

import argparse
import json
import subprocess
import sys

import pytest

from music_rnn import cli
from music_rnn import configs
from tests.conftest import PROJECT_ROOT, bundled, write_slice


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


# --- Every command: one line per mistake, exit 2 usage / 1 failed run, --debug. ---------


@pytest.mark.parametrize('argv, message', [
    (['--num-steps', '100000000'],
     'argument --num-steps: expected an integer in [2, 16384] (limits.MAX_NUM_STEPS), '
     'got 100000000'),
    (['--num-steps', '1'], 'expected an integer in [2, 16384]'),
    (['--num-outputs', '0'], 'expected a positive integer, got 0'),
    (['--temperature', 'hot'], "expected a number > 0, got 'hot'"),
])
def test_generate_flags_name_their_bounds(capsys, argv, message):
  with pytest.raises(SystemExit) as exc:
    cli.main(['generate', '--output-dir', 'out'] + argv)
  assert exc.value.code == 2
  assert message in capsys.readouterr().err


def test_every_command_runs_under_the_error_handler_and_takes_debug():
  parser = cli.build_parser()
  # pylint: disable-next=protected-access; argparse keeps its subcommands there
  (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
  assert set(sub.choices) == set(cli.COMMANDS)
  for command, command_parser in sub.choices.items():
    assert '[--debug]' in command_parser.format_usage(), command
  generate = ['generate', '--output-dir', 'o']
  assert parser.parse_args(['--debug'] + generate).debug
  assert parser.parse_args(generate + ['--debug']).debug
  assert not parser.parse_args(generate).debug


def _generate(tmp_path, *args, debug=False):
  """`music-rnn generate` in a fresh process (these fail before TensorFlow loads)."""
  argv = [sys.executable, '-m', 'music_rnn.cli', 'generate', '--model-dir',
          str(tmp_path / 'no_model'), '--output-dir', str(tmp_path / 'out'), *args]
  return subprocess.run(argv + (['--debug'] if debug else []), capture_output=True,
                        text=True, timeout=300, cwd=PROJECT_ROOT)


def test_generate_checks_flags_before_loading_anything(tmp_path):
  """Primer text and the size bound fail at once (the model dir does not even exist);
  --debug adds the traceback, without it there is one line."""
  cases = [
      (('--primer-drums', '[(36,True)]'),
       '--primer-drums: each step must be a tuple of int MIDI pitches 0..127, got (36, True)'),
      (('--primer-melody', '[60, -3]'), '--primer-melody: events must be -2 (no event)'),
      (('--num-outputs', '1000', '--num-steps', '2000'),
       '--num-outputs x --beam-size x --branch-factor x --num-steps: 1000 sequences x 2000 '
       'events = 2000000 events; at most 1048576 in all (limits.MAX_TOTAL_STEPS)'),
      # Every beam is a row.
      (('--num-steps', '512', '--beam-size', '8', '--branch-factor', '8', '--num-outputs',
        '40'), '2560 sequences x 512 events = 1310720 events; at most 1048576 in all'),
  ]
  for args, message in cases:
    proc = _generate(tmp_path, *args)
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith('music-rnn generate: error: ') and message in line, line
  debug = _generate(tmp_path, *cases[0][0], debug=True)
  assert debug.returncode == 2
  assert 'Traceback (most recent call last)' in debug.stderr
  assert debug.stderr.splitlines()[-1] == f'music-rnn generate: error: {cases[0][1]}'
  assert not (tmp_path / 'out').exists()


# --- MusicVAE commands: the family is checked before anything loads. ---------------------


@pytest.mark.parametrize('argv, message', [
    (['generate', '--config', 'cat-drums_2bar_small'],
     'cat-drums_2bar_small is a MusicVAE config: it samples and interpolates 2-bar phrases; '
     'use `music-rnn sample` or `music-rnn interpolate`'),
    (['sample', '--config', 'drum_kit'],
     'drum_kit is an event RNN config: it continues primers; use `music-rnn generate`'),
    (['interpolate', '--config', 'basic_rnn', '--input-a', '[60]', '--input-b', '[62]'],
     'basic_rnn is an event RNN config'),
    (['interpolate', '--config', 'cat-mel_2bar_small', '--input-a', '[60, 10]',
      '--input-b', '[62]'],
     '--input-a: cat-mel_2bar_small melodies hold pitches 21..108'),
    (['interpolate', '--config', 'cat-drums_2bar_small', '--input-a', '[(36,)]',
      '--input-b', str([(36,)] * 33)],
     '--input-b: a cat-drums_2bar_small input is one 2-bar slice of at most 32 events; got 33'),
    (['interpolate', '--config', 'cat-drums_2bar_small', '--input-a', '[(36, True)]',
      '--input-b', '[(36,)]'], '--input-a: each step must be a tuple of int MIDI pitches'),
    (['interpolate', '--config', 'cat-drums_2bar_small', '--input-a', 'missing.mid',
      '--input-b', '[(36,)]'], '--input-a missing.mid: no such file'),
])
def test_vae_commands_check_the_family_and_inputs_first(capsys, tmp_path, argv, message):
  """One line, exit 2, before any model is looked for (there is none) or TensorFlow loads."""
  code = cli.main(argv + ['--serving-dir', str(tmp_path / 'none'), '--output-dir',
                          str(tmp_path / 'out')])
  assert code == 2
  (line,) = capsys.readouterr().err.strip().splitlines()
  assert message in line, line
  assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('argv, message', [
    (['sample', '--num-outputs', '0'], 'expected an integer in [1, 32768]'),
    (['sample', '--num-outputs', '40000'], 'expected an integer in [1, 32768]'),
    (['sample', '--temperature', '0'], 'expected a number > 0, got 0.0'),
    (['interpolate', '--input-a', 'a.mid', '--input-b', 'b.mid', '--num-steps', '1'],
     'expected an integer in [2, 32768]'),
    (['interpolate', '--input-a', 'a.mid'], 'the following arguments are required: --input-b'),
])
def test_vae_flags_name_their_bounds(capsys, argv, message):
  with pytest.raises(SystemExit) as exc:
    cli.main(argv + ['--output-dir', 'out'])
  assert exc.value.code == 2
  assert message in capsys.readouterr().err
