"""extraction.py against note_seq and against Magenta's own pipeline code.

Real data: the bundled Freedoom soundtrack (data/drums/freedoom.tfrecord.gz). The
Magenta oracle (tests/magenta_oracle.py) runs in a subprocess with Magenta 2.1.4 from
.oracle-site; those tests skip, saying how to install it, when it is absent.
"""

import collections
import dataclasses
import gzip
import hashlib
import json
import math
import os
import random
import time

import note_seq
from note_seq import sequences_lib
from note_seq.protobuf import music_pb2
import pytest
import tensorflow as tf

from components.note_sequence_example_gen import splitting
from music_rnn import configs
from music_rnn import extraction
from music_rnn import features
from music_rnn import io_utils
from tests.conftest import MagentaOracle, hundred_thousand_notes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FREEDOOM = os.path.join(ROOT, 'data', 'drums', 'freedoom.tfrecord.gz')
ORACLE_SITE = os.path.join(ROOT, '.oracle-site')
ORACLE_INSTALL = 'pip install --no-deps --no-compile --target .oracle-site magenta==2.1.4'

DRUMS = configs.get_config('drum_kit')
MELODY = configs.get_config('attention_rnn')
MELODY_IGNORE_POLY = dataclasses.replace(
    MELODY, extractor=dataclasses.replace(MELODY.extractor, ignore_polyphonic_notes=True))

# Freedoom pieces used where all 66 would be slow; chosen for variety (tempo and
# meter changes, several drum tracks, truncation, a piece without drums).
SAMPLE_IDS = ('freedoom1/D_E2M1', 'freedoom1/D_INTER', 'freedoom1/D_E3M8', 'freedoom1/D_E3M9',
              'freedoom2/D_READ_M', 'freedoom2/D_BETWEE', 'freedoom2/D_MESSAG')


@pytest.fixture(scope='module')
def freedoom():
  stats = collections.Counter()
  pieces = list(extraction.read_note_sequences(FREEDOOM, stats))
  assert stats['records_read'] == len(pieces) == 66
  return {ns.id: ns for ns in pieces}


@pytest.fixture(scope='module')
def sample(freedoom):
  missing = [i for i in SAMPLE_IDS if i not in freedoom]
  assert not missing, missing
  return [freedoom[i] for i in SAMPLE_IDS]


# --- Helpers ------------------------------------------------------------------------


def _piece(notes, tempos=((0.0, 120.0),), time_signatures=(), total_time=None,
           piece_id='test'):
  """A NoteSequence from (pitch, start, end[, is_drum, instrument, velocity]) tuples."""
  ns = music_pb2.NoteSequence(id=piece_id, ticks_per_quarter=220)
  for time_, qpm in tempos:
    ns.tempos.add(time=time_, qpm=qpm)
  for time_, num, den in time_signatures:
    ns.time_signatures.add(time=time_, numerator=num, denominator=den)
  for n in notes:
    pitch, start, end = n[:3]
    is_drum = n[3] if len(n) > 3 else False
    ns.notes.add(pitch=pitch, start_time=start, end_time=end, is_drum=is_drum,
                 instrument=n[4] if len(n) > 4 else (9 if is_drum else 0),
                 velocity=n[5] if len(n) > 5 else 100)
  ns.total_time = total_time if total_time is not None else max(
      [n.end_time for n in ns.notes], default=0.0)
  return ns


def _melody_notes(n, start=0.0, step=0.5, base=60):
  scale = [0, 2, 4, 5, 7, 9, 11, 12]
  return [(base + scale[i % 8], start + i * step, start + i * step + step * 0.9)
          for i in range(n)]


def _drum_notes(n, start=0.0, step=0.25, pitches=(36, 42, 38, 42)):
  return [(pitches[i % len(pitches)], start + i * step, start + i * step + 0.1, True)
          for i in range(n)]


def _segments_quantized(ns):
  return [sequences_lib.quantize_note_sequence(s, 4)
          for s in sequences_lib.split_note_sequence_on_time_changes(ns)]


# --- Against note_seq's DrumTrack / Melody ------------------------------------------


def test_drum_tracks_equal_note_seq_drum_track(sample):
  checked = 0
  for ns in sample:
    for segment in sequences_lib.split_note_sequence_on_time_changes(ns):
      quantized = sequences_lib.quantize_note_sequence(segment, 4)
      for seq in extraction.extract_sequences(segment, DRUMS, collections.Counter()):
        track = note_seq.DrumTrack()
        track.from_quantized_sequence(quantized, search_start_step=seq.start_step,
                                      gap_bars=1.0)
        track.set_length(min(len(track), 512))
        assert track.start_step == seq.start_step
        assert track.steps_per_bar == seq.steps_per_bar
        assert [tuple(sorted(e)) for e in track] == seq.events
        checked += 1
  assert checked >= 10


def test_melodies_equal_note_seq_melody(sample):
  checked = 0
  for ns in sample:
    for segment in sequences_lib.split_note_sequence_on_time_changes(ns):
      quantized = sequences_lib.quantize_note_sequence(segment, 4)
      instruments = sorted({n.instrument for n in quantized.notes})
      for seq in extraction.extract_sequences(segment, MELODY, collections.Counter()):
        candidates = []
        for instrument in instruments:
          melody = note_seq.Melody()
          try:
            melody.from_quantized_sequence(
                quantized, search_start_step=seq.start_step, instrument=instrument,
                gap_bars=1.0, ignore_polyphonic_notes=False)
          except note_seq.PolyphonicMelodyError:
            continue
          melody.set_length(min(len(melody), 512))
          candidates.append((melody.start_step, list(melody)))
        assert (seq.start_step, seq.events) in candidates
        checked += 1
  assert checked >= 10


def test_whole_piece_equals_segment_by_segment(freedoom):
  """Splitting is Magenta's TimeChangeSplitter: a piece = its segments, in order."""
  ns = freedoom['freedoom2/D_MESSAG']
  segments = sequences_lib.split_note_sequence_on_time_changes(ns)
  assert len(segments) > 1  # this piece has tempo changes
  whole = extraction.extract_sequences(ns, DRUMS, collections.Counter())
  parts = [s for seg in segments
           for s in extraction.extract_sequences(seg, DRUMS, collections.Counter())]
  assert [(s.start_step, s.qpm, s.events) for s in whole] == [
      (s.start_step, s.qpm, s.events) for s in parts]
  assert [s.track_index for s in whole] == list(range(len(whole)))


def test_freedoom_counts(freedoom):
  """Regression numbers for the bundled corpus (also checked by the Magenta oracle)."""
  drums, melody = collections.Counter(), collections.Counter()
  n_drums = sum(len(extraction.extract_sequences(ns, DRUMS, drums))
                for ns in freedoom.values())
  n_melody = sum(len(extraction.extract_sequences(ns, MELODY, melody))
                 for ns in freedoom.values())
  assert n_drums == drums['drum_tracks_extracted'] == 81
  assert drums['drum_tracks_discarded_too_short'] == 156
  assert drums['drum_tracks_truncated'] == 57
  assert drums['no_drums'] == 3
  assert n_melody == melody['melodies_extracted'] == 208
  assert melody['polyphonic_tracks_discarded'] == 571
  for stats in (drums, melody):
    assert stats['sequences_processed'] == 66


# --- Edge cases ---------------------------------------------------------------------


def test_empty_tiny_and_drumless_pieces():
  stats = collections.Counter()
  assert extraction.extract_sequences(music_pb2.NoteSequence(), DRUMS, stats) == []
  assert stats['sequences_empty'] == 1
  stats = collections.Counter()
  assert extraction.extract_sequences(_piece([(36, 0, 0.1, True)]), DRUMS, stats) == []
  assert stats['drum_tracks_discarded_too_short'] == 1
  stats = collections.Counter()
  assert extraction.extract_sequences(_piece(_melody_notes(64)), DRUMS, stats) == []
  assert stats['no_drums'] == 1
  stats = collections.Counter()  # silent (velocity 0) drums are not drums
  silent = _piece([n + (9, 0) for n in _drum_notes(200)])
  assert extraction.extract_sequences(silent, DRUMS, stats) == []
  assert stats['no_drums'] == 1
  stats = collections.Counter()
  assert extraction.extract_sequences(_piece(_drum_notes(200)), MELODY, stats) == []
  assert stats['no_pitched_notes'] == 1


def test_drum_track_gaps_and_truncation():
  # 8 bars of 16ths (at 120 qpm a 16th is 0.125 s), a 1-bar gap, then 20 bars.
  notes = _drum_notes(128, step=0.125) + _drum_notes(320, start=16 * 0.125 * 9, step=0.125)
  stats = collections.Counter()
  seqs = extraction.extract_sequences(_piece(notes), DRUMS, stats)
  assert [(s.start_step, s.num_steps) for s in seqs] == [(0, 128), (144, 320)]
  assert seqs[0].events[:2] == [(36,), (42,)]
  # Less than a bar of silence does not split; the long track is truncated to 512.
  notes = _drum_notes(300, step=0.125) + _drum_notes(300, start=0.125 * 315, step=0.125)
  stats = collections.Counter()
  seqs = extraction.extract_sequences(_piece(notes), DRUMS, stats)
  assert [(s.start_step, s.num_steps) for s in seqs] == [(0, 512)]
  assert stats['drum_tracks_truncated'] == 1
  assert seqs[0].events[300:315] == [()] * 15


def test_tempo_and_time_signature_changes():
  # 4/4 at 120 qpm for 16 s, then 3/4 at 90 qpm.
  first = _melody_notes(64, step=0.25)
  second = _melody_notes(64, start=16.0, step=1 / 3)
  ns = _piece(first + second, tempos=((0, 120.0), (16.0, 90.0)),
              time_signatures=((0, 4, 4), (16.0, 3, 4)))
  stats = collections.Counter()
  seqs = extraction.extract_sequences(ns, MELODY, stats)
  assert stats['time_change_segments'] == 2
  assert [(s.steps_per_bar, s.qpm, s.start_step) for s in seqs] == [
      (16, 120.0, 0), (12, 90.0, 0)]
  assert [s.track_index for s in seqs] == [0, 1]


@pytest.mark.parametrize('time_signatures, reason', [
    (((0, 4, 3),), 'sequences_discarded_because_bad_time_signature'),
    (((0, 7, 32),), 'non_integer_steps_per_bar'),
])
def test_bad_time_signatures_are_counted(time_signatures, reason):
  ns = _piece(_drum_notes(200), time_signatures=time_signatures)
  stats = collections.Counter()
  assert extraction.extract_sequences(ns, DRUMS, stats) == []
  assert stats[reason] == 1


def test_bad_notes_are_counted():
  # (Magenta's multiple-tempo / multiple-meter Quantizer skips cannot happen after the
  # time-change split, which leaves one tempo and one meter per segment.)
  # A note ending before it starts: note_seq raises (and Magenta crashes); we count.
  ns = _piece(_melody_notes(64) + [(70, 10.1, 9.0)])
  stats = collections.Counter()
  assert extraction.extract_sequences(ns, MELODY, stats) == []
  assert stats['segments_discarded_bad_note'] == 1
  ns = _piece(_melody_notes(64) + [(200, 1.0, 2.0)])  # pitch out of MIDI range
  stats = collections.Counter()
  assert extraction.extract_sequences(ns, MELODY, stats) == []
  assert stats['skipped_due_to_range_exceeded'] == 1


def test_polyphonic_melodies_are_counted_or_reduced():
  notes = _melody_notes(64) + [(48, 0.0, 0.4)]  # a second note at the first onset
  stats = collections.Counter()
  assert extraction.extract_sequences(_piece(notes), MELODY, stats) == []
  assert stats['polyphonic_tracks_discarded'] == 1
  stats = collections.Counter()
  seqs = extraction.extract_sequences(_piece(notes), MELODY_IGNORE_POLY, stats)
  assert len(seqs) == 1 and seqs[0].events[0] == 60  # the higher pitch wins
  # Other instruments still count: instrument 1 is monophonic.
  other = [(p, s, e, False, 1) for p, s, e in _melody_notes(64)]
  stats = collections.Counter()
  assert len(extraction.extract_sequences(_piece(notes + other), MELODY, stats)) == 1
  assert stats['polyphonic_tracks_discarded'] == 1


def test_melody_filters():
  stats = collections.Counter()
  few = [(60 + 2 * (i % 4), i * 0.5, i * 0.5 + 0.4) for i in range(64)]  # 4 pitch classes
  assert extraction.extract_sequences(_piece(few), MELODY, stats) == []
  assert stats['melodies_discarded_too_few_pitches'] == 1
  stats = collections.Counter()
  assert extraction.extract_sequences(_piece(_melody_notes(20)), MELODY, stats) == []
  assert stats['melodies_discarded_too_short'] == 1
  stats = collections.Counter()
  seqs = extraction.extract_sequences(_piece(_melody_notes(400)), MELODY, stats)
  assert [s.num_steps for s in seqs] == [512] and stats['melodies_truncated'] == 1
  assert seqs[0].events[:5] == [60, -2, -2, -2, 62]


def test_hundred_thousand_notes_in_reasonable_time():
  ns = _piece(hundred_thousand_notes())
  assert len(ns.notes) == 100_000
  for config, kind in ((DRUMS, 'drum_tracks'), (MELODY, 'melodies')):
    stats = collections.Counter()
    start = time.time()
    seqs = extraction.extract_sequences(ns, config, stats)
    assert time.time() - start < 30
    # One per 2000-onset stretch (each ends in a long gap), truncated to 512 steps.
    assert len(seqs) == stats[kind + '_extracted'] == stats[kind + '_truncated'] == 25


# --- Reading damaged input ----------------------------------------------------------


def _records(n):
  return [_piece(_drum_notes(10), piece_id=f'p{i}').SerializeToString() for i in range(n)]


def _ids(path, stats):
  return [ns.id for ns in extraction.read_note_sequences(path, stats)]


@pytest.mark.parametrize('compress', [False, True])
def test_truncated_file_keeps_records_before_the_damage(tmp_path, compress):
  path = str(tmp_path / ('x.tfrecord' + ('.gz' if compress else '')))
  records = _records(5)
  io_utils.write_tfrecords(path, records, compress=compress)
  # TensorFlow reads what we write.
  tf_records = list(tf.data.TFRecordDataset(path, 'GZIP' if compress else '')
                    .as_numpy_iterator())
  assert tf_records == records
  with open(path, 'rb') as f:
    data = f.read()
  if compress:
    raw = gzip.decompress(data)
    cut = sum(len(io_utils.encode_record(r)) for r in records[:3]) + 20
    data = gzip.compress(raw[:cut], mtime=0)
    data = data[:len(data) - 8]  # no gzip trailer either: a truncated download
  else:
    data = data[:len(data) - len(io_utils.encode_record(records[-1])) // 2 - 40]
  with open(path, 'wb') as f:
    f.write(data)
  stats = collections.Counter()
  ids = _ids(path, stats)
  assert ids == ['p0', 'p1', 'p2'] or (not compress and ids == ['p0', 'p1', 'p2', 'p3'])
  assert stats['records_corrupt'] == 1


def test_corrupt_record_in_the_middle_is_skipped(tmp_path):
  path = str(tmp_path / 'x.tfrecord')
  records = _records(5)
  io_utils.write_tfrecords(path, records)
  data = bytearray(open(path, 'rb').read())
  offset = sum(len(io_utils.encode_record(r)) for r in records[:2]) + 12 + 5
  data[offset] ^= 0xFF  # inside record 2's payload: its checksum fails, framing holds
  open(path, 'wb').write(bytes(data))
  stats = collections.Counter()
  assert _ids(path, stats) == ['p0', 'p1', 'p3', 'p4']
  assert stats['records_corrupt'] == 1
  # A damaged length header loses the rest of the file, but not what came before.
  data = bytearray(open(path, 'rb').read())
  data[offset - 17] ^= 0xFF  # record 2's length field
  open(path, 'wb').write(bytes(data))
  stats = collections.Counter()
  assert _ids(path, stats) == ['p0', 'p1']
  assert stats['records_corrupt'] == 1


def test_records_that_are_not_note_sequences(tmp_path):
  path = str(tmp_path / 'mixed.tfrecord')
  example = extraction.to_tf_example(extraction.ExtractedSequence(
      'x', 0, 0, 16, 4, 120.0, [60, -2, -1]), MELODY).SerializeToString()
  records = _records(2)
  io_utils.write_tfrecords(path, [records[0], b'\xff\xfe not a proto \x00\x01', example,
                                  music_pb2.NoteSequence(id='empty').SerializeToString(),
                                  records[1]])
  stats = collections.Counter()
  assert _ids(path, stats) == ['p0', 'p1']
  assert stats['records_not_note_sequence'] == 2
  assert stats['sequences_empty'] == 1
  assert stats['records_read'] == 5


def test_no_matching_files_is_an_error(tmp_path):
  with pytest.raises(FileNotFoundError):
    list(extraction.read_note_sequences(str(tmp_path / '*.tfrecord'), collections.Counter()))


# --- Encoding, ids, the extract command ---------------------------------------------


def test_tf_example_round_trip_and_stable_schema(sample):
  for config, keys in ((DRUMS, {features.DRUM_PITCHES, features.DRUM_PITCH_COUNTS}),
                       (MELODY, {features.MELODY_EVENTS})):
    seqs = [s for ns in sample[:3]
            for s in extraction.extract_sequences(ns, config, collections.Counter())]
    assert seqs
    for seq in seqs:
      example = extraction.to_tf_example(seq, config)
      assert set(example.features.feature) == set(features.METADATA_FEATURES) | keys
      decoded = extraction.from_tf_example(example.SerializeToString(), config)
      assert decoded.qpm == pytest.approx(seq.qpm)  # stored as float32
      assert dataclasses.replace(decoded, qpm=seq.qpm) == seq
      assert example.features.feature[features.NUM_STEPS].int64_list.value[0] == len(
          seq.events)


def test_source_id_of():
  ns = _piece(_drum_notes(4))
  assert extraction.source_id_of(ns) == 'test'
  ns.id = ''
  ns.filename = 'a/b.mid'
  assert extraction.source_id_of(ns) == 'a/b.mid'
  ns.filename = ''
  hashed = extraction.source_id_of(ns)
  assert hashed.startswith('sha1:') and hashed == extraction.source_id_of(
      music_pb2.NoteSequence.FromString(ns.SerializeToString()))


def test_run_extraction_writes_jsonl(tmp_path, sample):
  path = str(tmp_path / 'few.tfrecord')
  io_utils.write_tfrecords(path, [ns.SerializeToString() for ns in sample[:2]])
  out = str(tmp_path / 'events.jsonl')
  stats = extraction.run_extraction(path, DRUMS, events_out=out)
  lines = [json.loads(line) for line in open(out)]
  assert len(lines) == stats['drum_tracks_extracted'] > 0
  assert lines[0]['source_id'] == sample[0].id
  assert all(isinstance(step, list) for step in lines[0]['events'])
  table = extraction.format_stats(stats)
  assert 'drum_tracks_extracted' in table and 'records_read' in table


# --- The train/eval split by piece -------------------------------------------------


def _piece_ids(n, prefix='piece'):
  return [f'{prefix}/{i:05d}' for i in range(n)]


@pytest.mark.parametrize('n', [1, 2, 3, 10, 19, 20, 21, 66, 200, 3000])
@pytest.mark.parametrize('ratio', [0.05, 0.1, 0.3])
def test_split_eval_pieces_ratio_and_minimum(n, ratio):
  ids = _piece_ids(n)
  chosen = splitting.eval_pieces(ids, ratio, seed=3)
  assert chosen <= set(ids)
  if n >= 2:
    assert len(chosen) < n, 'training keeps at least one piece'
    assert len(chosen) >= min(n - 1, math.ceil(ratio * n))
  if n >= 20:
    assert len(chosen) >= 5
  hashes = {i: splitting.piece_hash(i, 3) for i in ids}
  below = {i for i in ids if hashes[i] < ratio}
  assert below <= chosen or len(chosen) == n - 1
  # The top-up follows hash order: every eval piece sorts before every train piece.
  if chosen and len(chosen) < n:
    assert max(hashes[i] for i in chosen) < min(hashes[i] for i in set(ids) - chosen)
  # Nothing beyond the threshold and the minimum is taken.
  assert len(chosen) == min(max(len(below), splitting.min_eval_pieces(n, ratio)),
                            max(n - 1, 0))


def test_split_eval_pieces_is_deterministic_and_seeded():
  ids = _piece_ids(66)
  chosen = splitting.eval_pieces(ids, 0.1, seed=0)
  shuffled = list(ids)
  random.Random(1).shuffle(shuffled)
  assert splitting.eval_pieces(shuffled + ids[:5], 0.1, seed=0) == chosen
  others = {splitting.eval_pieces(ids, 0.1, seed=s) for s in range(1, 6)}
  assert chosen not in others and len(others) > 1
  # The salted hash is part of the data's contract: the same id, the same place.
  assert splitting.piece_hash('freedoom1/D_E1M1', 0) == pytest.approx(
      int(hashlib.sha256(b'0\0freedoom1/D_E1M1').hexdigest()[:16], 16) / 2.0 ** 64)
  with pytest.raises(ValueError, match='eval_ratio'):
    splitting.eval_pieces(ids, 1.0)


def test_split_is_stable_when_pieces_are_added():
  for n, added in ((66, 30), (25, 200), (3000, 500)):
    old = _piece_ids(n)
    new = old + _piece_ids(added, prefix='new')
    before = splitting.eval_pieces(old, 0.1, seed=0)
    after = splitting.eval_pieces(new, 0.1, seed=0)
    below = {i for i in old if splitting.piece_hash(i, 0) < 0.1}
    assert below <= before and below <= after, 'a hashed-in eval piece left eval'
    # Eval is a prefix of one fixed hash order, so old pieces change split only between
    # the threshold and the top-up's cut, and no more than the top-ups hold.
    hashes = {i: splitting.piece_hash(i, 0) for i in new}
    cut = max(hashes[i] for i in before | after)
    moved = (before ^ after) & set(old)
    assert all(0.1 <= hashes[i] <= cut for i in moved)
    assert len(moved) <= len(before - below) + len(after - below)
    assert len(moved) <= 0.02 * n + 5
    if len(below) >= splitting.min_eval_pieces(n, 0.1) and len(
        {i for i in new if hashes[i] < 0.1}) >= splitting.min_eval_pieces(n + added, 0.1):
      assert after & set(old) == before, 'no top-up: old pieces keep their split'


def _example_gen_splits(tmp_path, data, config_name, split_seed=0):
  """Runs the real NoteSequenceExampleGen alone; {split: {source_id: examples}}."""
  records, examples, split = run_example_gen(tmp_path, data, config_name, split_seed)
  splits = {}
  for name, serialized in records.items():
    splits[name] = collections.Counter(
        tf.train.Example.FromString(r).features.feature[
            features.SOURCE_ID].bytes_list.value[0].decode() for r in serialized)
  return splits, examples, split


def run_example_gen(tmp_path, data, config_name, split_seed=0):
  """Runs the real NoteSequenceExampleGen alone (LocalDagRunner, Beam in process).

  Returns ({split: [serialized tf.Example]}, the Examples artifact, its split record).
  """
  from tfx import v1 as tfx
  from components.note_sequence_example_gen import NoteSequenceExampleGen
  from components.note_sequence_example_gen import executor as example_gen_executor
  from pipeline import mlmd_results
  name = f'split-{config_name}-{split_seed}'
  metadata = str(tmp_path / 'metadata.db')
  gen = NoteSequenceExampleGen(input_base=os.path.dirname(data),
                               input_pattern=os.path.basename(data),
                               model_config=config_name, split_seed=split_seed)
  tfx.orchestration.LocalDagRunner().run(tfx.dsl.Pipeline(
      pipeline_name=name, pipeline_root=str(tmp_path / 'root'), components=[gen],
      metadata_connection_config=tfx.orchestration.metadata
      .sqlite_metadata_connection_config(metadata)))
  results = mlmd_results.latest_results(metadata, name)
  examples = results['NoteSequenceExampleGen'].outputs['examples'][0]
  assert json.loads(examples.properties['split_names'].string_value) == ['train', 'eval']
  records = {}
  for split in ('train', 'eval'):
    files = tf.io.gfile.glob(os.path.join(examples.uri, f'Split-{split}', '*.gz'))
    records[split] = list(
        tf.data.TFRecordDataset(files, compression_type='GZIP').as_numpy_iterator())
  return records, examples, example_gen_executor.read_split(examples.uri)


def test_split_freedoom_example_gen_by_piece(tmp_path, freedoom):
  splits, examples, recorded = _example_gen_splits(tmp_path, FREEDOOM, 'drum_kit')
  train, evals = set(splits['train']), set(splits['eval'])
  assert not train & evals, 'a piece in both splits'
  with_drums = {i for i, ns in freedoom.items()
                if extraction.extract_sequences(ns, DRUMS, collections.Counter())}
  assert train | evals == with_drums and len(with_drums) == 61
  assert len(evals) >= 7, f'{len(evals)} of 66 pieces in eval'
  # The executor chose exactly what the pure function chooses (as `music-rnn extract` can).
  assert evals == splitting.eval_pieces(with_drums, DRUMS.extractor.eval_ratio, seed=0)
  assert sum(splits['eval'].values()) + sum(splits['train'].values()) == 81
  assert recorded['eval_pieces'] == len(evals) and recorded['train_pieces'] == len(train)
  assert sorted(evals) == recorded['eval_source_ids']
  assert json.loads(examples.custom_properties['split_pieces'].string_value)[
      'eval_pieces'] == len(evals)


# --- Magenta itself as the oracle ---------------------------------------------------


def _random_piece(rng, index):
  """A small random piece that exercises the extractors' corner cases.

  A few independent voices (drum kit, pitched instruments) with gaps around a bar,
  overlapping and same-onset notes, silent notes, drums on a pitched channel, and
  tempo and meter changes.
  """
  qpm = rng.choice((60.0, 90.0, 120.0, 150.0))
  sixteenth = 15.0 / qpm
  notes, end = [], 0.0
  for instrument in rng.sample((0, 1, 2, 9, 9), rng.randrange(1, 4)):
    clean = rng.random() < 0.6  # else onsets may collide: polyphony
    t = sixteenth * rng.choice((0, 0, 3, 16, 21))
    for _ in range(rng.randrange(30, 500)):
      is_drum = instrument == 9 or (not clean and rng.random() < 0.03)
      pitch = rng.choice((35, 36, 38, 42, 46, 49)) if is_drum else rng.randrange(40, 90)
      length = sixteenth * rng.choice((0.3, 1, 1, 2, 3, 4, 8, 20))
      velocity = 0 if rng.random() < 0.02 else 90
      notes.append((pitch, t, t + length, is_drum, instrument, velocity))
      if not clean and rng.random() < 0.03:  # a second note at the same onset
        notes.append((pitch + 3, t, t + length, is_drum, instrument, velocity))
      if rng.random() < 0.04:
        t += sixteenth * rng.choice((15, 16, 17, 24, 40))  # gaps around a bar
      else:
        t += sixteenth * rng.choice((1, 1, 2, 2, 4) if clean else (1, 2, 0.4))
      end = max(end, t)
  tempos = [(0.0, qpm)]
  signatures = [(0.0, *rng.choice(((4, 4), (3, 4), (6, 8), (2, 4))))]
  if rng.random() < 0.3:
    tempos.append((round(end * rng.random(), 3), rng.choice((100.0, 132.0))))
  if rng.random() < 0.3:
    signatures.append((round(end * rng.random(), 3),
                       *rng.choice(((3, 4), (7, 8), (5, 4), (7, 32)))))
  if rng.random() < 0.05:
    signatures.append((0.0, 2, 4))  # two meters at once
  return _piece(notes, tempos=tempos, time_signatures=signatures, piece_id=f'random{index}')


def _assert_same_as_oracle(pieces, oracle_lines, config_by_kind):
  by_id = {ns.id: ns for ns in pieces}
  compared = collections.Counter()
  for line in oracle_lines:
    config = config_by_kind[line['kind']]
    stats = collections.Counter()
    ours = extraction.extract_sequences(by_id[line['id']], config, stats)
    got = [{'start_step': s.start_step, 'steps_per_bar': s.steps_per_bar, 'qpm': s.qpm,
            'events': [list(e) for e in s.events] if line['kind'] == 'drums' else s.events}
           for s in ours]
    assert got == line['sequences'], (line['kind'], line['id'])
    for name, count in line['stats'].items():
      assert stats[name] == count, (line['kind'], line['id'], name)
    compared[line['kind']] += len(got)
  return compared


ORACLE_KINDS = {'drums': DRUMS, 'melody': MELODY, 'melody-ignore-polyphonic': MELODY_IGNORE_POLY}


def _oracle_pieces(sample):
  """The sample plus 60 random corner-case pieces, what the oracle and we both read."""
  rng = random.Random(1234)
  return list(sample) + [_random_piece(rng, i) for i in range(60)]


@pytest.fixture(scope='module', autouse=True)
def oracle(tmp_path_factory, sample):
  """Starts the oracle first thing (autouse) so it overlaps with the other tests."""
  if not os.path.isdir(os.path.join(ORACLE_SITE, 'magenta')):
    yield None
    return
  pieces = _oracle_pieces(sample)
  running = MagentaOracle(str(tmp_path_factory.mktemp('oracle')), pieces, ORACLE_KINDS)
  running.pieces = pieces
  yield running
  running.stop()


@pytest.mark.parametrize('kind', list(ORACLE_KINDS))
def test_same_as_magenta_pipelines(oracle, kind):
  if oracle is None:
    pytest.skip(f'Magenta oracle not installed; from the project root run: {ORACLE_INSTALL}')
  compared = _assert_same_as_oracle(oracle.pieces, oracle.lines(kind), ORACLE_KINDS)
  assert compared[kind] >= 20
