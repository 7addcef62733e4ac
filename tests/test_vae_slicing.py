"""vae_slicing.py against Magenta's own MusicVAE converters, and the ExampleGen's VAE splits.

The oracle (tests/magenta_oracle.py, kinds vae-drums / vae-melody) runs Magenta 2.1.4's
DrumsConverter and OneHotMelodyConverter from .oracle-site in a subprocess, in eval mode
with no per-piece limit, on a fixed selection of the bundled pieces (Freedoom's mixed
meters, tempo changes and General MIDI programs; MMA's grooves; Essen's folk melodies)
plus random corner-case pieces. Those tests skip, saying how to install it, when absent.
"""

import collections
import dataclasses
import json
import os
import random

from note_seq import drums_encoder_decoder
from note_seq import sequences_lib
from note_seq.protobuf import music_pb2
import pytest

from components.note_sequence_example_gen import executor as example_gen_executor
from components.note_sequence_example_gen import splitting
from music_rnn import configs
from music_rnn import extraction
from music_rnn import features
from music_rnn import io_utils
from music_rnn import vae_slicing
from tests.conftest import MagentaOracle, write_slice
# pylint: disable=g-bad-import-order; the RNN extraction tests' piece builders
from tests.test_extraction import FREEDOOM, ORACLE_INSTALL, ORACLE_SITE, ROOT, SAMPLE_IDS
from tests.test_extraction import _drum_notes, _melody_notes, _piece, _random_piece
from tests.test_extraction import run_example_gen

DRUMS = configs.get_config('cat-drums_2bar_small')
MELODY = configs.get_config('cat-mel_2bar_small')
CONFIG_BY_KIND = {'vae-drums': DRUMS, 'vae-melody': MELODY}
MMA = os.path.join(ROOT, 'data', 'drums', 'mma_drums.tfrecord.gz')
ESSEN = os.path.join(ROOT, 'data', 'melody', 'essen_subset.tfrecord')
_DRUM_CLASS = {pitch: i for i, pitches in enumerate(
    drums_encoder_decoder.DEFAULT_DRUM_TYPE_PITCHES) for pitch in pitches}


def _every(path, step):
  """Every `step`-th piece of a bundled file: a fixed, varied selection."""
  stats = collections.Counter()
  return [ns for i, ns in enumerate(extraction.read_note_sequences(path, stats))
          if i % step == 0]


@pytest.fixture(scope='module')
def pieces():
  freedoom = {ns.id: ns for ns in _every(FREEDOOM, 1)}
  rng = random.Random(11)
  return ([freedoom[i] for i in SAMPLE_IDS] + _every(MMA, 60) + _every(ESSEN, 4) +
          [_random_piece(rng, i) for i in range(40)])


def _labels(seq, config):
  """A slice as Magenta's output labels: the class set's bits (drums), or the melody
  event's one-hot index over pitches min_pitch..max_pitch."""
  if config.kind == configs.DRUMS:
    return tuple(sum(1 << _DRUM_CLASS[p] for p in step) for step in seq.events)
  no_event, note_off = configs.MELODY_NO_EVENT, configs.MELODY_NOTE_OFF
  return tuple(0 if e == no_event else 1 if e == note_off else
               e - config.converter.min_pitch + configs.NUM_SPECIAL_MELODY_EVENTS
               for e in seq.events)


@pytest.fixture(scope='module', autouse=True)
def oracle(tmp_path_factory, pieces):
  """Starts the oracle first thing (autouse) so it overlaps with the other tests."""
  if not os.path.isdir(os.path.join(ORACLE_SITE, 'magenta')):
    yield None
    return
  running = MagentaOracle(str(tmp_path_factory.mktemp('vae_oracle')), pieces,
                          CONFIG_BY_KIND)
  yield running
  running.stop()


# --- Magenta's converters as the oracle ---------------------------------------------


@pytest.mark.parametrize('kind', list(CONFIG_BY_KIND))
def test_same_slices_as_magenta_converters(oracle, pieces, kind):
  if oracle is None:
    pytest.skip(f'Magenta oracle not installed; from the project root run: {ORACLE_INSTALL}')
  config = CONFIG_BY_KIND[kind]
  by_id = {ns.id: ns for ns in pieces}
  lines = oracle.lines(kind)
  assert len(lines) == len(pieces)
  compared = collections.Counter()
  for line in lines:
    stats = collections.Counter()
    ours = extraction.extract_sequences(by_id[line['id']], config, stats)
    # The same slices, each as often (unique per time-change segment, as Magenta).
    assert (collections.Counter(_labels(s, config) for s in ours) ==
            collections.Counter(tuple(s) for s in line['slices'])), (kind, line['id'])
    assert stats['slices_extracted'] == len(ours)
    assert all(s.num_steps == config.converter.slice_steps and
               s.start_step % config.converter.steps_per_bar == 0 for s in ours)
    compared['slices'] += len(ours)
    compared['pieces with slices'] += bool(ours)
  assert compared['slices'] >= 300 and compared['pieces with slices'] >= 25, compared


# --- The seeded training sample -----------------------------------------------------


@pytest.mark.parametrize('config', [DRUMS, MELODY], ids=lambda c: c.name)
def test_training_sample_is_seeded_and_at_most_five(pieces, config):
  limit = config.converter.max_tensors_per_notesequence
  assert limit == 5
  many = 0
  for ns in pieces:
    slices = extraction.extract_sequences(ns, config, collections.Counter())
    flags = [s.in_training_sample for s in slices]
    assert sum(flags) == min(limit, len(slices)), ns.id
    again = extraction.extract_sequences(ns, config, collections.Counter())
    assert [s.in_training_sample for s in again] == flags  # stable across runs
    if len(slices) > 2 * limit:
      many += 1
      reseeded = extraction.extract_sequences(ns, config, collections.Counter(),
                                              sample_seed=7)
      assert sum(s.in_training_sample for s in reseeded) == limit
  assert many >= 10


def test_training_sample_draws_like_maybe_sample_items_twice():
  # Magenta samples <= 5 per time-change segment, then <= 5 of those: a slice alone in
  # its segment survives the first draw, so it is kept 5 times in 6 (not 5 in 31).
  kept_alone = kept_other = 0
  trials = 3000
  for i in range(trials):
    flags = vae_slicing.training_sample([1, 30], 5, seed=0, source_id=f'piece{i}')
    assert sum(flags) == 5 and sum(flags[1:]) >= 4
    kept_alone += flags[0]
    kept_other += flags[1]
  assert abs(kept_alone / trials - 5 / 6) < 0.03
  assert abs(kept_other / trials - (1 / 6 * 5 / 30 + 5 / 6 * 4 / 30)) < 0.03
  assert vae_slicing.training_sample([3, 1], 5, 0, 'p') == [True] * 4
  assert vae_slicing.training_sample([9], None, 0, 'p') == [True] * 9
  assert (vae_slicing.training_sample([9, 9], 5, 0, 'p') ==
          vae_slicing.training_sample([9, 9], 5, 0, 'p') !=
          vae_slicing.training_sample([9, 9], 5, 1, 'p'))


# --- Bad and unusable input: counted, never raised -----------------------------------


def _two_bar_drums(**kwargs):
  return _piece(_drum_notes(64, step=0.125), **kwargs)


@pytest.mark.parametrize('config, ns, reason', [
    (DRUMS, music_pb2.NoteSequence(), 'sequences_empty'),
    (DRUMS, _piece(_melody_notes(64)), 'no_drums'),
    (MELODY, _two_bar_drums(), 'no_pitched_notes'),
    (DRUMS, _two_bar_drums(time_signatures=((0, 3, 4),)), 'segments_discarded_bar_length'),
    (DRUMS, _two_bar_drums(time_signatures=((0, 7, 8),)), 'segments_discarded_bar_length'),
    (DRUMS, _two_bar_drums(time_signatures=((0, 4, 3),)),
     'sequences_discarded_because_bad_time_signature'),
    (DRUMS, _two_bar_drums(time_signatures=((0, -4, 4),)), 'segments_discarded_bar_length'),
    (DRUMS, _piece(_drum_notes(64, step=0.125, pitches=(20, 90))),
     'drum_notes_outside_pitch_classes'),
    (DRUMS, _piece(_drum_notes(10, step=0.125)), 'tracks_shorter_than_slice'),
    (MELODY, _piece([(p + 60, s, e) for p, s, e in _melody_notes(64)]),
     'notes_outside_pitch_range'),
    (MELODY, _piece(_melody_notes(64) + [(70, 10.1, 9.0)]), 'segments_discarded_bad_note'),
])
def test_bad_input_is_counted_not_raised(config, ns, reason):
  stats = collections.Counter()
  assert extraction.extract_sequences(ns, config, stats) == []
  assert stats[reason] >= 1, stats


def test_programs_outside_mel_programs_are_dropped():
  def melody(program):
    ns = _piece(_melody_notes(64, step=0.25))
    for note in ns.notes:
      note.program = program
    return ns
  stats = collections.Counter()
  assert extraction.extract_sequences(melody(40), MELODY, stats) == []  # strings
  assert stats['notes_outside_valid_programs'] == 64
  assert extraction.extract_sequences(melody(31), MELODY, collections.Counter())


def test_already_quantized_input_is_counted():
  quantized = sequences_lib.quantize_note_sequence(_two_bar_drums(), 4)
  stats = collections.Counter()
  assert extraction.extract_sequences(quantized, DRUMS, stats) == []
  assert stats['split_failed'] == 1


def test_slices_and_duplicates_of_a_simple_groove():
  # 4 identical bars of a 16th-note groove: 3 two-bar windows, all the same slice.
  stats = collections.Counter()
  seqs = extraction.extract_sequences(_piece(_drum_notes(64, step=0.125)), DRUMS, stats)
  assert len(seqs) == 1 and stats['slices_duplicate'] == 2
  assert seqs[0].events[:4] == [(36,), (42,), (38,), (42,)]
  # A kick on 35 (Acoustic Bass Drum) is the kick class: written as its first pitch, 36.
  seqs = extraction.extract_sequences(
      _piece(_drum_notes(32, step=0.125, pitches=(35, 44))), DRUMS, collections.Counter())
  assert seqs[0].events[:2] == [(36,), (42,)]


# --- Records and the extract command -------------------------------------------------


def test_tf_example_has_the_training_flag(pieces):
  seq = next(seq for ns in pieces
             for seq in extraction.extract_sequences(ns, DRUMS, collections.Counter())
             if seq.qpm != 120.0)
  example = extraction.to_tf_example(seq, DRUMS)
  assert example.features.feature[features.IN_TRAINING_SAMPLE].int64_list.value == [
      int(seq.in_training_sample)]
  back = extraction.from_tf_example(example.SerializeToString(), DRUMS)
  assert back.qpm == pytest.approx(seq.qpm, rel=1e-6)  # a float32 feature
  assert dataclasses.replace(back, qpm=seq.qpm) == seq
  assert features.IN_TRAINING_SAMPLE not in features.statistics_features(DRUMS.kind)
  rnn = extraction.to_tf_example(seq, configs.get_config('drum_kit'))
  assert features.IN_TRAINING_SAMPLE not in rnn.features.feature


def test_extract_command_and_nothing_extracted(tmp_path, capsys):
  from music_rnn import cli  # pylint: disable=g-import-not-at-top
  data = write_slice(ESSEN, str(tmp_path / 'essen.tfrecord'), 40)
  out = tmp_path / 'slices.jsonl'
  assert cli.main(['extract', '--config', MELODY.name, '--input', data,
                   '--events-out', str(out)]) == 0
  printed = capsys.readouterr().out.splitlines()
  records = [json.loads(line) for line in out.read_text().splitlines()]
  kept = next(line for line in printed if line.startswith('slices_extracted'))
  assert int(kept.split()[-1].replace(',', '')) == len(records) > 0
  assert all(len(r['events']) == 32 and 'in_training_sample' in r for r in records)
  three_four = tmp_path / 'waltz.tfrecord'
  io_utils.write_tfrecords(str(three_four), [
      _two_bar_drums(time_signatures=((0, 3, 4),)).SerializeToString()])
  with pytest.raises(extraction.NothingExtractedError, match='segments_discarded_bar_length'):
    stats = extraction.run_extraction(str(three_four), DRUMS)
    extraction.check_extracted(stats, DRUMS, str(three_four))


# --- The ExampleGen ------------------------------------------------------------------


def test_example_gen_writes_sampled_train_and_whole_eval(tmp_path):
  data = write_slice(MMA, str(tmp_path / 'data' / 'mma.tfrecord'), 30, skip=100)
  records, examples, split = run_example_gen(tmp_path, data, DRUMS.name, split_seed=3)
  # What the executor wrote is what vae_slicing gives with the same seed.
  expected = collections.defaultdict(list)
  stats = collections.Counter()
  for ns in extraction.read_note_sequences(data, stats):
    for seq in extraction.extract_sequences(ns, DRUMS, stats, sample_seed=3):
      expected[seq.source_id].append(seq)
  eval_ids = splitting.eval_pieces(expected, DRUMS.extractor.eval_ratio, seed=3)
  assert sorted(eval_ids) == split['eval_source_ids'] and eval_ids

  def written(split_name):
    by_piece = collections.defaultdict(list)
    for record in records[split_name]:
      seq = extraction.from_tf_example(record, DRUMS)
      by_piece[seq.source_id].append(seq)
    return by_piece

  train, evals = written('train'), written('eval')
  assert set(evals) == eval_ids and set(train) == set(expected) - eval_ids
  for source_id, seqs in evals.items():  # eval: every slice
    assert _by_index(seqs) == _by_index(expected[source_id])
  for source_id, seqs in train.items():  # train: the piece's sample only
    assert _by_index(seqs) == _by_index(
        [s for s in expected[source_id] if s.in_training_sample])
    assert len(seqs) == min(5, len(expected[source_id]))
  left_out = sum(len(expected[i]) for i in train) - sum(len(s) for s in train.values())
  assert left_out > 0
  recorded = json.loads(examples.custom_properties['extraction_stats'].string_value)
  assert recorded['train_slices_not_in_sample'] == left_out
  assert recorded['slices_extracted'] == sum(len(s) for s in expected.values())
  assert example_gen_executor.read_stats(examples.uri) == recorded


def _by_index(seqs):
  return sorted((s.track_index, s.start_step, s.events) for s in seqs)
