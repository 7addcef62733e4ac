"""convert.py on real files: Freedoom MIDI, music21-corpus ABC and MusicXML, junk."""

import collections
import os
import shutil

from note_seq.protobuf import music_pb2
import pytest

from music_rnn import convert
from music_rnn import extraction
from music_rnn import io_utils

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures')
MIDI_FILES = ('freedoom1_D_E1M8.mid', 'freedoom1_D_VICTOR.mid')

music21 = pytest.importorskip('music21')
CORPUS = os.path.join(os.path.dirname(music21.__file__), 'corpus')
TUNEBOOK = os.path.join(CORPUS, 'essenFolksong', 'testd.abc')  # 8 Essen tunes
MUSICXML = os.path.join(CORPUS, 'bach', 'bwv66.6.mxl')  # a 4-part chorale


def _read(path):
  stats = collections.Counter()
  return list(extraction.read_note_sequences(path, stats)), stats


@pytest.fixture
def inputs(tmp_path):
  """A folder of mixed inputs, as a user would have it."""
  root = tmp_path / 'in'
  (root / 'midi').mkdir(parents=True)
  for name in MIDI_FILES:
    shutil.copy(os.path.join(FIXTURES, 'midi', name), root / 'midi' / name)
  (root / 'abc').mkdir()
  shutil.copy(TUNEBOOK, root / 'abc' / 'testd.abc')
  shutil.copy(MUSICXML, root / 'bwv66.6.mxl')
  (root / 'midi' / 'broken.mid').write_bytes(os.urandom(3000))
  (root / 'notes.txt').write_text('not music')
  return root


def test_converts_a_folder_of_mixed_inputs(inputs, tmp_path):
  out = str(tmp_path / 'out.tfrecord')
  stats = convert.convert(str(inputs), out, progress=False)
  sequences, read_stats = _read(out)
  assert read_stats['records_read'] == stats.counts['sequences_written'] == 2 + 8 + 1
  ids = [ns.id for ns in sequences]
  # Sorted by relative path; tunes numbered within their book.
  assert ids == ([f'abc/testd.abc#{i}' for i in range(1, 9)] + ['bwv66.6.mxl'] +
                 [f'midi/{name}' for name in MIDI_FILES])
  assert all(ns.filename == ns.id.split('#')[0] for ns in sequences)
  assert stats.counts['files_found'] == 5 and stats.counts['files_converted'] == 4
  assert stats.counts['files_skipped_unsupported'] == 1
  assert stats.counts['failed_midi_unreadable'] == 1 and stats.counts['files_failed'] == 1
  assert [(f[0], f[1]) for f in stats.failures] == [('midi/broken.mid', 'midi_unreadable')]
  assert 'midi/broken.mid' in convert.format_stats(stats)


def test_midi_matches_the_bundled_corpus(inputs, tmp_path):
  """The MIDI path yields what data/build_freedoom.py bundles for the same lump."""
  out = str(tmp_path / 'midi.tfrecord')
  convert.convert(str(inputs / 'midi' / '*.mid'), out, progress=False)
  ours = {ns.id: ns for ns in _read(out)[0]}
  bundled = {ns.id: ns for ns in _read(os.path.join(
      os.path.dirname(FIXTURES), '..', 'data', 'drums', 'freedoom.tfrecord.gz'))[0]}
  for name in MIDI_FILES:
    mine = ours[name]
    theirs = bundled[name[:-4].replace('_', '/', 1)]
    assert [(n.pitch, n.start_time, n.is_drum) for n in mine.notes] == [
        (n.pitch, n.start_time, n.is_drum) for n in theirs.notes]
  assert any(n.is_drum for n in ours['freedoom1_D_E1M8.mid'].notes)


def test_abc_tunebook_uses_both_parsers_and_holds_accidentals(tmp_path):
  out = str(tmp_path / 'abc.tfrecord')
  stats = convert.convert(TUNEBOOK, out, progress=False)
  sequences, _ = _read(out)
  assert len(sequences) == 8 == stats.counts['tunes_found']
  parsers = collections.Counter(ns.source_info.parser for ns in sequences)
  # note_seq's ABC parser has no rests, so music21 takes the tunes that have them.
  assert parsers[music_pb2.NoteSequence.SourceInfo.MUSIC21] > 0
  assert stats.counts['tunes_parsed_by_music21'] == parsers[
      music_pb2.NoteSequence.SourceInfo.MUSIC21]
  assert all(ns.source_info.encoding_type == music_pb2.NoteSequence.SourceInfo.ABC
             for ns in sequences)
  # Tune 1 is 6/8 ('M: 6/8'), declared once; music21's per-bar meters are not kept.
  assert [(t.numerator, t.denominator) for t in sequences[0].time_signatures] == [(6, 8)]


def test_music21_fallback_matches_note_seq_on_a_tune_both_read():
  lines = ['X:1', 'T:t', 'M:3/8', 'L:1/16', 'K:G', 'GA | _B2d2c2 | _B2B2AA | G4-G2 |']
  from note_seq import abc_parser  # pylint: disable=g-import-not-at-top
  expected = abc_parser.ABCTune(lines).note_sequence
  got = convert.music21_to_note_sequence(
      convert._music21_parse('\n'.join(lines), 'abc'),  # pylint: disable=protected-access
      music_pb2.NoteSequence.SourceInfo.ABC, convert.abc_declared_meters(lines))
  # Same pitches, including the flat held through its bar (B2 after _B2 is B flat).
  assert [n.pitch for n in got.notes][:7] == [n.pitch for n in expected.notes][:7]
  assert [n.pitch for n in got.notes][5:7] == [70, 70]
  assert [(n.start_time, n.end_time) for n in got.notes][:7] == [
      (n.start_time, n.end_time) for n in expected.notes][:7]
  # music21 merges the tie (G4-G2) into one note.
  assert got.notes[-1].end_time - got.notes[-1].start_time == pytest.approx(0.75)


def test_musicxml(tmp_path):
  out = str(tmp_path / 'xml.tfrecord')
  stats = convert.convert(MUSICXML, out, progress=False)
  (ns,), _ = _read(out)
  assert ns.id == 'bwv66.6.mxl' and stats.counts['files_converted'] == 1
  assert len({n.part for n in ns.notes}) == 4 and len(ns.notes) > 100


def test_output_is_deterministic_and_gzip_by_suffix(inputs, tmp_path):
  a, b = str(tmp_path / 'a.tfrecord.gz'), str(tmp_path / 'b.tfrecord.gz')
  convert.convert(str(inputs), a, progress=True)
  convert.convert(str(inputs), b, progress=False)
  assert io_utils.is_gzip_file(a)
  assert open(a, 'rb').read() == open(b, 'rb').read()


def test_missing_input_is_an_error(tmp_path):
  with pytest.raises(FileNotFoundError):
    convert.convert(str(tmp_path / 'nothing-here'), str(tmp_path / 'x.tfrecord'))
