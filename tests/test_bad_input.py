"""Bad input on the data side: damaged files are counted by reason, never fatal.

Each test writes real malformed files next to a few good Freedoom (drums) and Essen
(melody) records and runs what a user runs: `music-rnn convert` and `music-rnn extract`
as subprocesses, and NoteSequenceExampleGen in a real TFX pipeline (LocalDagRunner,
SQLite ML-Metadata, Beam DirectRunner). Both must keep exactly the good sequences and
count the rest by reason, with the same counts; when nothing usable is left, both stop
with one error that lists the reasons and counts.
"""

import collections
import functools
import gzip
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys

from note_seq.protobuf import music_pb2
import pytest
import tensorflow as tf

from music_rnn import configs
from music_rnn import extraction
from music_rnn import features
from music_rnn import io_utils
from tests.conftest import (PROJECT_ROOT, bundled, bundled_raw_splits,
                            hundred_thousand_notes, run_transform)

CONFIGS = ('drum_kit', 'attention_rnn')
MIDI_FIXTURES = os.path.join(PROJECT_ROOT, 'tests', 'fixtures', 'midi')
NOTHING_USABLE = 'No usable sequences were extracted'


# --- Malformed inputs ---------------------------------------------------------------


def _piece(piece_id, notes, tempos=((0.0, 120.0),), time_signatures=((0.0, 4, 4),)):
  """A NoteSequence from (pitch, start, end[, is_drum]) tuples."""
  ns = music_pb2.NoteSequence(id=piece_id, ticks_per_quarter=220)
  for time_, qpm in tempos:
    ns.tempos.add(time=time_, qpm=qpm)
  for time_, numerator, denominator in time_signatures:
    ns.time_signatures.add(time=time_, numerator=numerator, denominator=denominator)
  for pitch, start, end, *drum in notes:
    is_drum = bool(drum and drum[0])
    ns.notes.add(pitch=pitch, start_time=start, end_time=end, is_drum=is_drum,
                 instrument=9 if is_drum else 0, velocity=100)
  ns.total_time = max(n.end_time for n in ns.notes)
  return ns


def _melody(n, start=0.0, step=0.5):
  scale = (60, 62, 64, 65, 67, 69, 71, 72)
  return [(scale[i % 8], start + i * step, start + (i + 0.9) * step) for i in range(n)]


def _drums(n, start=0.0, step=0.25):
  return [((36, 42, 38, 42)[i % 4], start + i * step, start + i * step + 0.1, True)
          for i in range(n)]


def _hundred_thousand_notes():
  return _piece('hundred_thousand_notes', hundred_thousand_notes())


@functools.lru_cache(maxsize=None)
def unusual_pieces():
  """Musically odd NoteSequences, with what each config's extraction must count.

  Cached (building 10^5 notes takes a while): treat the result as read-only.
  """
  # 4/4 at 120 qpm, then 3/4 at 90 qpm, then 5/3 (not a meter): three segments.
  changes = _piece(
      'tempo_and_meter_changes',
      _melody(64, step=0.25) + _drums(64) + _melody(64, 16.0, 1 / 3) +
      _drums(64, 16.0, 1 / 3) + _melody(32, 40.0) + _drums(32, 40.0),
      tempos=((0.0, 120.0), (16.0, 90.0)),
      time_signatures=((0.0, 4, 4), (16.0, 3, 4), (40.0, 5, 3)))
  triads = [(p + d, s, e) for p, s, e in _melody(64) for d in (0, 4, 7)]
  pieces = [
      (_piece('melody_without_drums', _melody(64)),
       {'drum_kit': {'no_drums': 1},
        'attention_rnn': {'melodies_extracted': 1}}),
      (_piece('drums_without_melody', _drums(128)),
       {'drum_kit': {'drum_tracks_extracted': 1},
        'attention_rnn': {'no_pitched_notes': 1}}),
      (_piece('polyphonic', triads),
       {'drum_kit': {'no_drums': 1},
        'attention_rnn': {'polyphonic_tracks_discarded': 1}}),
      (changes,
       {'drum_kit': {'time_change_segments': 3, 'drum_tracks_extracted': 2,
                     'sequences_discarded_because_bad_time_signature': 1},
        'attention_rnn': {'time_change_segments': 3, 'melodies_extracted': 2,
                          'sequences_discarded_because_bad_time_signature': 1}}),
      # note_seq accepts a negative numerator; Magenta's extractors then never end.
      (_piece('negative_meter', _melody(64) + _drums(128), time_signatures=((0.0, -4, 4),)),
       {config: {'sequences_discarded_because_bad_time_signature': 1} for config in CONFIGS}),
      # A last note of 10^9 s (8 * 10^9 steps): a naive melody would need 64 GB.
      (_piece('endless_note', _melody(63) + [(74, 31.5, 1e9)]),
       {'drum_kit': {'no_drums': 1},
        'attention_rnn': {'melodies_extracted': 1, 'melodies_truncated': 1}}),
      (_hundred_thousand_notes(),
       {'drum_kit': {'drum_tracks_extracted': 25, 'drum_tracks_truncated': 25},
        'attention_rnn': {'melodies_extracted': 25, 'melodies_truncated': 25}}),
  ]
  for _, expected in pieces:
    for counts in expected.values():
      counts['sequences_processed'] = 1
      counts.setdefault('time_change_segments', 1)
  return tuple(pieces)


def _frames(records):
  return b''.join(io_utils.encode_record(r) for r in records)


def _not_note_sequences():
  """Well-framed records that are something else: tf.Examples, random bytes."""
  seq = extraction.ExtractedSequence('x', 0, 0, 16, 4, 120.0, [60, -2, -1])
  example = extraction.to_tf_example(seq, configs.get_config('attention_rnn'))
  # All UTF-8, so it also parses as a NoteSequence with an odd id and no notes.
  text = tf.train.Example(features=tf.train.Features(feature={'text': tf.train.Feature(
      bytes_list=tf.train.BytesList(value=[b'not music']))}))
  return [example.SerializeToString(), random.Random(1).randbytes(300),
          text.SerializeToString()]


def write_bad_files(root, good_drums, good_melodies):
  """Writes one file per kind of damage into `root`; returns the reading-stage counts.

  The good records are spread over the damaged files, before the damage, so every
  one of them must survive.
  """
  os.makedirs(root, exist_ok=True)

  def write(name, data):
    with open(os.path.join(root, name), 'wb') as f:
      f.write(data)

  # Truncated mid-record (a half-copied file), plain and gzip (no gzip trailer).
  d0, d1, d2, d3 = good_drums
  write('truncated.tfrecord', _frames([d0, d1]) + _frames([d2])[:-300])
  write('truncated.tfrecord.gz',
        gzip.compress(_frames([d2, d3]) + _frames([d0])[:100], mtime=0)[:-8])
  # A flipped byte in the middle record's payload: its checksum fails.
  m0, m1, m2, m3 = good_melodies
  data = bytearray(_frames([m0, m1, m2, m3]))
  data[len(_frames([m0])) + 12 + len(m1) // 2] ^= 0x40
  write('bit_flip.tfrecord', bytes(data))
  write('random_bytes.tfrecord', random.Random(0).randbytes(4096))
  os.makedirs(os.path.join(root, 'a_directory.tfrecord'))  # matches the pattern: skipped
  write('zero_bytes.tfrecord', b'')
  write('not_note_sequences.tfrecord', _frames(_not_note_sequences()))
  no_notes = _piece('no_notes', _melody(1))
  del no_notes.notes[:]
  write('empty_note_sequences.tfrecord',
        _frames([music_pb2.NoteSequence().SerializeToString(),
                 no_notes.SerializeToString()]))
  write('unusual.tfrecord',
        _frames([ns.SerializeToString() for ns, _ in unusual_pieces()]))
  return collections.Counter(
      files_read=8, records_read=4 + 3 + 3 + 2 + len(unusual_pieces()),
      records_corrupt=4, records_not_note_sequence=3, sequences_empty=2)


def _first_records(path, n):
  records = []
  for data in io_utils.iter_tfrecords(path):
    records.append(data)
    if len(records) == n:
      return records
  raise AssertionError(f'{path} has fewer than {n} records')


@pytest.fixture(scope='module')
def corpus(tmp_path_factory):
  """Damaged files around 4 Freedoom and 4 Essen pieces, and what each config counts.

  Expected counts: the surviving good pieces' own (from a clean copy of them; one Essen
  piece is lost to a flipped byte) plus those of the damage and the odd pieces.
  """
  root = tmp_path_factory.mktemp('bad_input')
  good = _first_records(bundled('drums'), 4), _first_records(bundled('melody'), 4)
  reading = write_bad_files(str(root / 'data'), *good)
  clean = str(root / 'clean.tfrecord')
  drums, melodies = good
  io_utils.write_tfrecords(clean, drums + [melodies[0]] + melodies[2:])  # as they survive
  expected, good_lines = {}, {}
  for name in CONFIGS:
    out = io.StringIO()
    stats = extraction.run_extraction(clean, configs.get_config(name), out)
    assert stats[extraction.kept_stat(configs.get_config(name))] > 0, stats
    for key in ('files_read', 'records_read'):
      del stats[key]
    stats.update(reading)
    for _, counts in unusual_pieces():
      stats.update(counts[name])
    expected[name] = +stats
    good_lines[name] = [json.loads(line) for line in out.getvalue().splitlines()]
  return dict(dir=str(root / 'data'), pattern=str(root / 'data' / '*.tfrecord*'),
              expected=expected, good_lines=good_lines, root=root)


# --- Running the tools --------------------------------------------------------------


class _Cli:
  """`python -m music_rnn.cli ARGS`, started at once (a few run side by side); .result()."""

  def __init__(self, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
    self._args = [sys.executable, '-m', 'music_rnn.cli', *args]
    self._result = None
    self._proc = subprocess.Popen(self._args, cwd=PROJECT_ROOT, env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)

  def result(self, timeout=240) -> subprocess.CompletedProcess:
    if self._result is None:
      try:
        out, err = self._proc.communicate(timeout=timeout)
      except subprocess.TimeoutExpired:
        self._proc.kill()
        self._proc.communicate()
        raise
      self._result = subprocess.CompletedProcess(self._args, self._proc.returncode, out, err)
    return self._result

  def stop(self):
    if self._proc.poll() is None:
      self._proc.kill()
      self._proc.communicate()


def _table(text):
  """The `name  count` lines of a stats table."""
  return {m[1]: int(m[2].replace(',', ''))
          for m in re.finditer(r'^(\w+) +([\d,]+)$', text, re.MULTILINE)}


def _key(line):
  return line['source_id'], line['track_index']


def _error_lines(stderr):
  return [l for l in stderr.splitlines() if re.match(r'music-rnn \w+: error:', l)]


def _run_example_gens(root, data_dir, config_names):
  """A TFX pipeline of NoteSequenceExampleGens only; returns {config: (results, error)}."""
  from tfx import v1 as tfx
  from components.note_sequence_example_gen import NoteSequenceExampleGen
  from pipeline import configs as pipeline_configs
  from pipeline import mlmd_results
  name = 'bad-input-' + os.path.basename(root)
  metadata_path = os.path.join(root, 'metadata.db')
  components = [NoteSequenceExampleGen(input_base=data_dir, model_config=c).with_id(c)
                for c in config_names]
  p = tfx.dsl.Pipeline(
      pipeline_name=name, pipeline_root=os.path.join(root, 'pipeline'),
      components=components, enable_cache=False,
      metadata_connection_config=(
          tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata_path)),
      beam_pipeline_args=list(pipeline_configs.BEAM_PIPELINE_ARGS))
  tfx.orchestration.LocalDagRunner().run(p)
  return mlmd_results.latest_results(metadata_path, name)


def _examples(artifact):
  files = tf.io.gfile.glob(os.path.join(artifact.uri, 'Split-*', '*.gz'))
  return [tf.train.Example.FromString(r) for r in
          tf.data.TFRecordDataset(files, compression_type='GZIP').as_numpy_iterator()]


# --- Tests --------------------------------------------------------------------------


def test_unusual_pieces_are_counted_each_by_its_reason():
  """The per-piece expectations the file tests below add up (in-process).

  Without the 10^5-note piece, which the file tests count (test_extraction times it).
  An alarm stops the endless loops and memory growth these pieces used to cause.
  """

  def too_slow(*_):
    raise TimeoutError('extraction of an odd piece did not finish in 30 s')

  previous = signal.signal(signal.SIGALRM, too_slow)
  signal.alarm(30)
  try:
    for ns, expected in unusual_pieces()[:-1]:
      for name in CONFIGS:
        stats = collections.Counter()
        extraction.extract_sequences(ns, configs.get_config(name), stats)
        assert +stats == expected[name], (ns.id, name, dict(stats))
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_an_unforeseen_error_drops_the_piece_not_the_run(monkeypatch):
  def boom(*args):
    raise RuntimeError('a bug the input found')
  monkeypatch.setattr(extraction, 'extract_drum_tracks', boom)
  stats = collections.Counter()
  ns = _piece('p', _drums(128))
  assert extraction.extract_sequences(ns, configs.get_config('drum_kit'), stats) == []
  assert stats['extraction_failed'] == 1


@pytest.fixture(scope='module')
def extracted(corpus):
  """`music-rnn extract` on the damaged files, for both configs: {config: (_Cli, jsonl)}.

  Started here and awaited by the tests, so the ExampleGen test's pipeline runs
  while the commands do.
  """
  events = {name: str(corpus['root'] / f'{name}.jsonl') for name in CONFIGS}
  runs = {name: (_Cli('extract', '--config', name, '--input', corpus['pattern'],
                      '--events-out', events[name]), events[name]) for name in CONFIGS}
  yield runs
  for run, _ in runs.values():
    run.stop()


def test_example_gen_survives_with_the_same_counts_as_extract(corpus, extracted, tmp_path):
  # The melody config (its reasons include polyphony); the drum config's ExampleGen
  # counts missing drums in the nothing-usable test below.
  results = _run_example_gens(str(tmp_path), corpus['dir'], ['attention_rnn'])
  for name in ['attention_rnn']:
    assert results[name].state == 'COMPLETE'
    artifact = results[name].outputs['examples'][0]
    stats = json.loads(artifact.custom_properties['extraction_stats'].string_value)
    assert stats == _table(extracted[name][0].result().stdout)
    assert +collections.Counter(stats) == corpus['expected'][name]
    examples = _examples(artifact)
    with open(extracted[name][1], encoding='utf-8') as f:
      lines = [json.loads(line) for line in f]
    config = configs.get_config(name)
    from_examples = []
    for ex in examples:
      seq = extraction.from_tf_example(ex, config)
      events = ([list(step) for step in seq.events] if config.kind == configs.DRUMS
                else seq.events)
      from_examples.append(dict(source_id=seq.source_id, track_index=seq.track_index,
                                start_step=seq.start_step, steps_per_bar=seq.steps_per_bar,
                                events=events))
    assert sorted(from_examples, key=_key) == sorted(lines, key=_key)
    assert all(ex.features.feature[features.NUM_STEPS].int64_list.value[0] <= 512
               for ex in examples)


@pytest.mark.parametrize('config_name', CONFIGS)
def test_extract_survives_and_counts_every_reason(corpus, extracted, config_name):
  proc, events = extracted[config_name][0].result(), extracted[config_name][1]
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert +collections.Counter(_table(proc.stdout)) == corpus['expected'][config_name], \
      proc.stdout
  with open(events, encoding='utf-8') as f:
    lines = [json.loads(line) for line in f]
  assert len(lines) == corpus['expected'][config_name][
      extraction.kept_stat(configs.get_config(config_name))]
  # Every good piece's sequences, exactly as from a clean copy of the good records.
  good = corpus['good_lines'][config_name]
  good_ids = {line['source_id'] for line in good}
  assert sorted((l for l in lines if l['source_id'] in good_ids), key=_key) == \
      sorted(good, key=_key)


def _only_bad_files(root):
  """Damaged files with nothing the drum config can use."""
  os.makedirs(root)
  good = [_piece('short', _melody(8) + _drums(8)).SerializeToString()]
  write_bad_files(root, good * 4, good * 4)
  with open(os.path.join(root, 'unusual.tfrecord'), 'wb') as f:
    f.write(_frames([_piece('melody_without_drums', _melody(64)).SerializeToString()]))
  return os.path.join(root, '*.tfrecord*')


def test_nothing_usable_is_one_clear_error_from_extract_and_example_gen(tmp_path):
  pattern = _only_bad_files(str(tmp_path / 'data'))
  extract = _Cli('extract', '--config', 'drum_kit', '--input', pattern,
                 '--events-out', str(tmp_path / 'events.jsonl'))
  with pytest.raises(ValueError) as exc:  # meanwhile
    _run_example_gens(str(tmp_path), str(tmp_path / 'data'), ['drum_kit'])

  proc = extract.result()
  assert proc.returncode == 2, (proc.stdout, proc.stderr[-3000:])
  assert proc.stdout == ''
  assert len(_error_lines(proc.stderr)) == 1, proc.stderr
  message = proc.stderr[proc.stderr.index(NOTHING_USABLE):].rstrip('\n')
  assert message.startswith(f"{NOTHING_USABLE} for config 'drum_kit' from {pattern}.")
  counts = _table(message)
  # 4 damaged spots (the cut-off records hold the only pieces), 3 foreign records, 2
  # empty sequences; the surviving pieces are too short for a drum track, or have none.
  assert counts == {'files_read': 8, 'records_read': 4 + 3 + 3 + 2 + 1,
                    'records_corrupt': 4, 'records_not_note_sequence': 3,
                    'sequences_empty': 2, 'sequences_processed': 8, 'no_drums': 1,
                    'time_change_segments': 8, 'drum_tracks_discarded_too_short': 7,
                    'drum_tracks_extracted': 0}
  # The ExampleGen stops with the very same message.
  assert str(exc.value) == message


def _unreadable_midi(folder):
  os.makedirs(folder)
  with open(os.path.join(MIDI_FIXTURES, 'freedoom1_D_E1M8.mid'), 'rb') as f:
    real = f.read()
  with open(os.path.join(folder, 'garbage.mid'), 'wb') as f:
    f.write(random.Random(0).randbytes(3000))
  with open(os.path.join(folder, 'truncated.mid'), 'wb') as f:
    f.write(real[:len(real) // 2])
  with open(os.path.join(folder, 'zero_bytes.mid'), 'wb') as f:
    f.write(b'')


def test_convert_survives_unreadable_midi(tmp_path):
  src, bad_only = tmp_path / 'midi', tmp_path / 'bad_midi'
  _unreadable_midi(src)
  for name in sorted(os.listdir(MIDI_FIXTURES)):
    shutil.copy(os.path.join(MIDI_FIXTURES, name), src / name)
  _unreadable_midi(bad_only)
  out, bad_out = str(tmp_path / 'out.tfrecord'), str(tmp_path / 'bad_out.tfrecord')
  runs = (_Cli('convert', '--input', str(src), '--output', out),
          _Cli('convert', '--input', str(bad_only), '--output', bad_out))
  proc, bad_proc = (run.result() for run in runs)

  assert proc.returncode == 0, proc.stderr[-3000:]
  counts = _table(proc.stdout)
  assert counts['failed_midi_unreadable'] == counts['files_failed'] == 3, proc.stdout
  assert counts['sequences_written'] == counts['files_converted'] == 2
  for name in ('garbage.mid', 'truncated.mid', 'zero_bytes.mid'):
    assert f'{name}: midi_unreadable' in proc.stdout
  stats = collections.Counter()
  ids = [ns.id for ns in extraction.read_note_sequences(out, stats)]
  assert ids == ['freedoom1_D_E1M8.mid', 'freedoom1_D_VICTOR.mid'] and +stats == {
      'files_read': 1, 'records_read': 2}

  # Nothing readable: one error listing the reasons, and no output file.
  assert bad_proc.returncode == 2, (bad_proc.stdout, bad_proc.stderr[-3000:])
  assert len(_error_lines(bad_proc.stderr)) == 1, bad_proc.stderr
  message = bad_proc.stderr[bad_proc.stderr.index('error:'):]
  assert f'No NoteSequences were converted from {bad_only}' in message
  assert _table(message)['failed_midi_unreadable'] == 3
  assert 'garbage.mid: midi_unreadable' in message
  assert not os.path.exists(bad_out)


# --- Bad input on the generation side ------------------------------------------------
# A real SavedModel per kind: an untrained tiny model exported as the Trainer exports
# it, with the Transform graph of a few bundled pieces (no pipeline run: a minute, not
# several). Plain-TF sampling (jit_compile=False): nothing here needs XLA's speed.

GENERATE_BAD = 'music-rnn generate: error:'


@pytest.fixture(scope='module')
def tiny_exports(tmp_path_factory):
  """{config name: exported SavedModel dir} for drum_kit and attention_rnn."""
  import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top
  from music_rnn import export  # pylint: disable=g-import-not-at-top
  from music_rnn import model as model_lib  # pylint: disable=g-import-not-at-top
  dirs = {}
  for name in CONFIGS:
    root = tmp_path_factory.mktemp(name)
    raw = bundled_raw_splits(name, max_pieces=2)
    run_transform(root, name, {'train': (raw['train'] + raw['eval'])[:4]})
    config = configs.get_config(name)
    hparams = config.hparams.replace(rnn_layer_sizes=(8,),
                                     attn_length=min(config.hparams.attn_length, 4))
    dirs[name] = export.export_serving_model(
        model_lib.build_model(config, hparams), config, hparams,
        tft.TFTransformOutput(str(root / 'transform_output')), str(root / 'export'),
        jit_compile=False)
  return dirs


def _generate_error(capsys, argv):
  """`music-rnn generate ARGV` in-process: (exit code, stderr lines)."""
  from music_rnn import cli  # pylint: disable=g-import-not-at-top
  capsys.readouterr()
  try:
    code = cli.main(['generate'] + argv)
  except SystemExit as e:  # argparse's usage errors
    code = e.code
  err = capsys.readouterr().err
  assert 'Traceback' not in err, err
  return code, [line for line in err.splitlines() if line.strip()]


def _bad_primer_files(folder):
  """{case: path}: MIDI primers a user might give by mistake, real files."""
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(MIDI_FIXTURES, 'freedoom1_D_E1M8.mid'), 'rb') as f:
    real = f.read()
  files = {'empty': b'', 'random_bytes': random.Random(2).randbytes(3000),
           'text': b'[(36,), (), (42,)]\n', 'header_only': real[:14]}
  paths = {}
  for case, data in files.items():
    paths[case] = os.path.join(folder, f'{case}.mid')
    with open(paths[case], 'wb') as f:
      f.write(data)
  return paths


def test_generate_refuses_bad_primers_and_models_in_one_line(tiny_exports, tmp_path, capsys):
  drums = tiny_exports['drum_kit']
  out = ['--output-dir', str(tmp_path / 'out')]
  primers = _bad_primer_files(str(tmp_path / 'primers'))
  (tmp_path / 'not_a_model').mkdir()
  cases = [
      (['--model-dir', drums, '--primer-midi', primers['empty']], 'the file is empty'),
      (['--model-dir', drums, '--primer-midi', primers['random_bytes']],
       'not a readable MIDI file'),
      (['--model-dir', drums, '--primer-midi', primers['text']], 'not a readable MIDI file'),
      (['--model-dir', drums, '--primer-midi', primers['header_only']],
       'not a readable MIDI file'),
      (['--model-dir', drums, '--primer-midi', str(tmp_path / 'missing.mid')], 'no such file'),
      (['--model-dir', str(tmp_path / 'missing_model')], 'is not a directory'),
      (['--model-dir', str(tmp_path / 'not_a_model')], 'is not a SavedModel'),
      # True is an int in Python: it must not pass as pitch 1.
      (['--model-dir', drums, '--primer-drums', '[(36,True)]'],
       'each step must be a tuple of int MIDI pitches 0..127, got (36, True)'),
      (['--model-dir', drums, '--primer-drums', '[(36,), 200]'], 'got (200,)'),
      (['--model-dir', drums, '--primer-drums', '[(36,'], 'cannot parse'),
      (['--model-dir', tiny_exports['attention_rnn'], '--primer-melody', '[60, True]'],
       'a MIDI pitch 0..127, got True'),
      (['--model-dir', drums, '--primer-melody', '[60]'],
       'drum_kit is a drums model: use --primer-drums'),
      (['--model-dir', drums, '--num-outputs', '100', '--num-steps', '16384'],
       f'1638400 events; at most {2 ** 20} in all (limits.MAX_TOTAL_STEPS)'),
  ]
  for argv, message in cases:
    code, lines = _generate_error(capsys, argv + out)
    assert code == 2, (argv, lines)
    assert len(lines) == 1 and lines[0].startswith(GENERATE_BAD), (argv, lines)
    assert message in lines[0], (argv, lines)
  assert not (tmp_path / 'out').exists()

  # argparse names the bound (and prints its usage first).
  code, lines = _generate_error(capsys, ['--model-dir', drums, '--num-steps', '100000000'] + out)
  assert code == 2
  assert lines[-1] == ('music-rnn generate: error: argument --num-steps: expected an integer '
                       'in [2, 16384] (limits.MAX_NUM_STEPS), got 100000000')


def test_a_damaged_model_is_a_failed_run_with_a_traceback_only_on_debug(tiny_exports,
                                                                         tmp_path):
  """Exit 1 (the flags were fine, the run failed), one line; --debug adds the traceback."""
  damaged = str(tmp_path / 'damaged')
  shutil.copytree(tiny_exports['drum_kit'], damaged)
  (data,) = [os.path.join(damaged, 'variables', f)
             for f in os.listdir(os.path.join(damaged, 'variables')) if '.data-' in f]
  with open(data, 'r+b') as f:
    f.truncate(100)
  argv = ('generate', '--model-dir', damaged, '--output-dir', str(tmp_path / 'out'))
  plain, debug = _Cli(*argv), _Cli(*argv, '--debug')
  for run, traceback_shown in ((plain, False), (debug, True)):
    proc = run.result()
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = _error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr[-3000:]
    assert f'{damaged}: cannot load the SavedModel' in errors[0]
    assert ('Traceback (most recent call last)' in proc.stderr) == traceback_shown
    assert ('run again with --debug' in errors[0]) != traceback_shown
  assert not (tmp_path / 'out').exists()


def _generate(loaded, primer, num_steps):
  return loaded.signatures['generate'](
      primer=tf.constant(primer, tf.int64), num_steps=tf.constant(num_steps, tf.int32),
      temperature=tf.constant(1.0), seed=tf.constant(0, tf.int64))


def test_generation_signatures_refuse_requests_beyond_the_bounds(tiny_exports):
  from music_rnn import limits  # pylint: disable=g-import-not-at-top
  loaded = _load(tiny_exports['drum_kit'])
  primer = [[1, 0]]
  cases = [
      (dict(primer=primer, num_steps=100_000_000),
       'generate: num_steps must be <= 16384 (limits.MAX_NUM_STEPS); got 100000000'),
      (dict(primer=primer, num_steps=2 ** 31 - 1), 'got 2147483647'),  # no int32 wrap
      (dict(primer=primer, num_steps=limits.MAX_NUM_STEPS - 1),
       'generate: a sequence may have at most 16384 events (limits.MAX_NUM_STEPS), primer '
       'included; got 2 + num_steps 16383'),
      (dict(primer=[[1, 0]] * 65, num_steps=limits.MAX_NUM_STEPS - 2),
       'generate: a request may have at most 1048576 events in all rows '
       '(limits.MAX_TOTAL_STEPS); got 65 rows x 16384 events'),
  ]
  for kwargs, message in cases:
    with pytest.raises(tf.errors.InvalidArgumentError) as exc:
      _generate(loaded, **kwargs)
    assert message in exc.value.message, exc.value.message
  with pytest.raises(tf.errors.InvalidArgumentError, match='prime: a sequence may have at '
                     r'most 16384 events .*got 16385 \+ num_steps 0'):
    loaded.signatures['prime'](primer=tf.zeros([1, limits.MAX_NUM_STEPS + 1], tf.int64))
  primed = loaded.signatures['prime'](primer=tf.constant(primer, tf.int64))
  with pytest.raises(tf.errors.InvalidArgumentError, match='extend: num_steps must be <= '
                     '16384'):
    loaded.signatures['extend'](
        events=primed['events'], state=primed['state'], num_steps=tf.constant(20_000),
        temperature=tf.constant(1.0), seed=tf.constant(0, tf.int64))
  # At the bounds it is fine.
  assert _generate(loaded, primer, 3)['events'].shape == (1, 5)


@functools.lru_cache(maxsize=None)
def _load(path):
  return tf.saved_model.load(path)


def _raw_example(**int_features):
  feature = {k: tf.train.Feature(int64_list=tf.train.Int64List(value=v))
             for k, v in int_features.items()}
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


GOOD_DRUMS = dict(drum_pitches=[36, 42, 38], drum_pitch_counts=[2, 0, 1])
BAD_RAW_EVENTS = [
    ('attention_rnn', dict(melody_events=[60, -3, 62]),
     'melody_events must hold -2 (no event), -1 (note off) or MIDI pitches 0..127; got [-3]'),
    ('attention_rnn', dict(melody_events=[60, 128, 300]),
     'melody_events must hold -2 (no event), -1 (note off) or MIDI pitches 0..127; got '
     '[128 300]'),
    ('drum_kit', dict(drum_pitches=[36, 200], drum_pitch_counts=[1, 1]),
     'drum_pitches must hold MIDI pitches 0..127; got [200]'),
    ('drum_kit', dict(drum_pitches=[36], drum_pitch_counts=[2, -1]),
     'drum_pitch_counts must be >= 0; got [-1]'),
    ('drum_kit', dict(drum_pitches=[36, 42, 38], drum_pitch_counts=[1, 0, 1]),
     'drum_pitch_counts must add up to the number of drum_pitches of the example; got 2 '
     'for 3 pitches in example 1'),
    ('drum_kit', dict(drum_pitches=[36], drum_pitch_counts=[1, 1]),
     'drum_pitch_counts must add up to the number of drum_pitches of the example; got 2 '
     'for 1 pitches in example 1'),
]


@pytest.mark.parametrize('name, features_, message', BAD_RAW_EVENTS,
                         ids=[f'{c[0]}-{i}' for i, c in enumerate(BAD_RAW_EVENTS)])
def test_serving_and_evaluate_refuse_bad_raw_events(tiny_exports, name, features_, message):
  """One InvalidArgumentError naming the feature and the value, from both signatures;
  the good example before the bad one changes nothing."""
  loaded = _load(tiny_exports[name])
  good = (_raw_example(melody_events=[60, -2, 62]) if name == 'attention_rnn'
          else _raw_example(**GOOD_DRUMS))
  for signature in ('serving_default', 'evaluate'):
    call = loaded.signatures[signature]
    assert call(examples=tf.constant([good, good]))  # the good ones pass
    with pytest.raises(tf.errors.InvalidArgumentError) as exc:
      call(examples=tf.constant([good, _raw_example(**features_)]))
    failed = [l for l in exc.value.message.splitlines() if 'assertion failed' in l]
    assert failed == [f'assertion failed: [{signature}: {message}]'], exc.value.message
