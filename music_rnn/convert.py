"""MIDI / MusicXML / ABC files -> one TFRecord of NoteSequence protos.

The pipeline's input is NoteSequences; this is how a folder of scores becomes one.
Parsing uses note_seq's readers; for ABC tunes (note_seq's parser knows no rests, so
it rejects most real tunebooks) and MusicXML it can reject, music21 is the fallback
when installed. Unreadable files and tunes are counted by reason with their names and
skipped; conversion never stops on bad input. Inputs are processed in sorted order
and each sequence gets a stable id (its relative path, plus '#<n>' for the n-th tune
of a tunebook), so the output is reproducible.
"""

import collections
import dataclasses
import glob as glob_lib
import logging
import os
import re
import warnings
from typing import Callable, Iterator, List, Optional, Set, Tuple

from note_seq import abc_parser
from note_seq import midi_io
from note_seq import musicxml_reader
from note_seq.protobuf import music_pb2

from music_rnn import io_utils

MIDI_EXTENSIONS = ('.mid', '.midi')
MUSICXML_EXTENSIONS = ('.xml', '.mxl', '.musicxml')
ABC_EXTENSIONS = ('.abc',)
SUPPORTED_EXTENSIONS = MIDI_EXTENSIONS + MUSICXML_EXTENSIONS + ABC_EXTENSIONS

_SourceInfo = music_pb2.NoteSequence.SourceInfo
_DEFAULT_QPM = 120.0
_DEFAULT_VELOCITY = 90  # note_seq's ABC default (!mf!)

# (relative path, tune number) -> whether to convert that tune; see convert().
TuneFilter = Callable[[str, int], bool]


@dataclasses.dataclass
class ConvertStats:
  """What a conversion did: counts, and every failure with its file and reason."""
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  failures: List[Tuple[str, str, str]] = dataclasses.field(default_factory=list)

  def fail(self, name: str, reason: str, message: str) -> None:
    self.counts['failed_' + reason] += 1
    self.failures.append((name, reason, message))
    logging.info('Skipped %s (%s): %s', name, reason, message)

  def summary(self, max_failures: int = 20) -> str:
    lines = [f'{k:<32} {v:>8,d}' for k, v in sorted(self.counts.items())]
    if self.failures:
      lines.append(f'failures ({len(self.failures)}):')
      lines += [f'  {name}: {reason}: {message}'
                for name, reason, message in self.failures[:max_failures]]
      if len(self.failures) > max_failures:
        lines.append(f'  ... and {len(self.failures) - max_failures} more')
    return '\n'.join(lines)


# ---------------------------------------------------------------------------------
# Finding inputs.


def find_inputs(inputs: str) -> Tuple[str, List[str]]:
  """(root, sorted files) for a directory (recursive), a glob, or one file.

  Ids are paths relative to `root`: the directory itself, the part of a glob before
  its first wildcard, or the file's directory.
  """
  if os.path.isdir(inputs):
    root = inputs
    files = [os.path.join(d, f) for d, _, names in os.walk(inputs) for f in names]
  elif glob_lib.has_magic(inputs):
    prefix = re.split(r'[*?\[]', inputs, maxsplit=1)[0]
    root = prefix if prefix.endswith(os.sep) else os.path.dirname(prefix)
    files = [f for f in glob_lib.glob(inputs, recursive=True) if os.path.isfile(f)]
  elif os.path.isfile(inputs):
    root = os.path.dirname(inputs)
    files = [inputs]
  else:
    raise FileNotFoundError(f'No such file, directory or matching glob: {inputs!r}')
  root = root or '.'
  return root, sorted(files, key=lambda f: _relative(f, root))


def _relative(path: str, root: str) -> str:
  return os.path.relpath(path, root).replace(os.sep, '/')


# ---------------------------------------------------------------------------------
# music21 fallback.


def _music21():
  try:
    import music21  # pylint: disable=g-import-not-at-top
    return music21
  except ImportError:
    return None


def music21_to_note_sequence(score, encoding_type: int,
                             declared_meters: Optional[Set[Tuple[int, int]]] = None
                             ) -> music_pb2.NoteSequence:
  """A music21 score as a NoteSequence: parts become instruments, ties are merged.

  Written against the score tree rather than via music21's MIDI writer, which trips
  over some parsed ABC tunes (duplicate time-signature objects). For ABC
  (`declared_meters` given) it fixes two things so the result matches what
  note_seq's ABC parser would produce: an accidental holds to the end of its bar
  (music21 applies it to one note only), and only time signatures the tune declares
  are kept (music21 invents one for every irregular bar, which would split the tune).
  """
  music21 = _music21()
  abc = declared_meters is not None
  ns = music_pb2.NoteSequence()
  ns.source_info.source_type = _SourceInfo.SCORE_BASED
  ns.source_info.encoding_type = encoding_type
  ns.source_info.parser = _SourceInfo.MUSIC21
  marks = list(score.recurse().getElementsByClass(music21.tempo.MetronomeMark))
  qpm = (marks[0].getQuarterBPM() if marks else None) or _DEFAULT_QPM
  ns.tempos.add(time=0.0, qpm=qpm)
  seconds_per_quarter = 60.0 / qpm
  signatures = set()
  for ts in score.recurse().getElementsByClass(music21.meter.TimeSignature):
    if abc and (ts.numerator, ts.denominator) not in declared_meters:
      continue
    signatures.add((float(ts.getOffsetInHierarchy(score)), ts.numerator, ts.denominator))
  previous = None
  for offset, numerator, denominator in sorted(signatures):
    if (numerator, denominator) == previous:
      continue  # a restatement, not a change
    previous = (numerator, denominator)
    ns.time_signatures.add(time=offset * seconds_per_quarter, numerator=numerator,
                           denominator=denominator)
  parts = list(score.parts) or [score]
  for instrument, part in enumerate(parts):
    measures = list(part.getElementsByClass(music21.stream.Measure)) or [part]
    tied = {}  # (step, octave) -> the note a tie continues
    for measure in measures:
      bar_alters = {}  # (step, octave) -> alteration written earlier in this bar
      for element in measure.recurse().notes:
        length = float(element.duration.quarterLength)
        if element.duration.isGrace or length <= 0:
          continue
        start = float(element.getOffsetInHierarchy(part))
        end_time = (start + length) * seconds_per_quarter
        tie = element.tie.type if element.tie is not None else None
        for pitch in element.pitches:
          name = (pitch.step, pitch.octave)
          midi = pitch.midi
          if abc:
            accidental = pitch.accidental
            if accidental is not None and accidental.displayStatus:
              bar_alters[name] = accidental.alter  # written: holds for the bar
            elif name in bar_alters:
              midi += int(bar_alters[name] - (accidental.alter if accidental else 0))
          if tie in ('continue', 'stop') and name in tied:
            tied[name].end_time = end_time  # a tie keeps the pitch it started with
            if tie == 'stop':
              del tied[name]
            continue
          note = ns.notes.add(pitch=midi, velocity=_DEFAULT_VELOCITY, instrument=instrument,
                              start_time=start * seconds_per_quarter, end_time=end_time)
          if tie == 'start':
            tied[name] = note
  ns.total_time = max((n.end_time for n in ns.notes), default=0.0)
  return ns


_METER_FIELD = re.compile(r'(?:^|\[)M:\s*([^\]%]*)')


def abc_declared_meters(lines: List[str]) -> Set[Tuple[int, int]]:
  """The meters a tune declares in M: fields (header, body or inline [M:...])."""
  meters = set()
  for line in lines:
    for field in _METER_FIELD.findall(line):
      field = field.strip()
      if field.upper() == 'C':
        meters.add((4, 4))
      elif field.upper() == 'C|':
        meters.add((2, 2))
      else:
        match = re.match(r'(\d+)\s*/\s*(\d+)', field)
        if match:
          meters.add((int(match.group(1)), int(match.group(2))))
  return meters


def _music21_parse(text_or_path: str, fmt: Optional[str] = None):
  music21 = _music21()
  if music21 is None:
    raise ImportError('music21 is not installed (no fallback parser)')
  if fmt:
    parsed = music21.converter.parse(text_or_path, format=fmt)
  else:
    parsed = music21.converter.parse(text_or_path)
  if isinstance(parsed, music21.stream.Opus):
    scores = list(parsed.scores)
    if not scores:
      raise ValueError('music21 found no score')
    parsed = scores[0]
  return parsed


# ---------------------------------------------------------------------------------
# Per-format readers.


def abc_tunes(text: str) -> Iterator[Tuple[int, List[str]]]:
  """(tune number from 1, lines) per tune of a tunebook, header lines prepended.

  Splits exactly as note_seq's parse_abc_tunebook does (blank-line sections; a
  first section without an X: field is a header for every tune), so tune numbers
  line up with that parser's view of the book.
  """
  sections, current = [], []
  for line in text.splitlines():
    line = line.strip()
    if not line:
      if current:
        sections.append(current)
        current = []
    else:
      current.append(line)
  if current:
    sections.append(current)
  header = []
  if len(sections) > 1 and not any(line.startswith('X:') for line in sections[0]):
    header = sections.pop(0)
  for number, section in enumerate(sections, start=1):
    yield number, header + section


def _read_text(path: str) -> str:
  with open(path, 'rb') as f:
    raw = f.read()
  try:
    return raw.decode('utf-8')
  except UnicodeDecodeError:
    return raw.decode('latin-1')  # older tunebooks; every byte decodes


def _abc_sequences(path: str, rel: str, stats: ConvertStats,
                   tune_filter: Optional[TuneFilter]) -> Iterator[music_pb2.NoteSequence]:
  try:
    text = _read_text(path)
  except OSError as e:
    stats.fail(rel, 'unreadable', str(e))
    return
  for number, lines in abc_tunes(text):
    if tune_filter is not None and not tune_filter(rel, number):
      continue
    name = f'{rel}#{number}'
    stats.counts['tunes_found'] += 1
    try:
      ns = abc_parser.ABCTune(lines).note_sequence
      parser = 'note_seq'
    except Exception as note_seq_error:  # pylint: disable=broad-except; ABCParseError and bugs
      try:
        ns = music21_to_note_sequence(_music21_parse('\n'.join(lines), 'abc'),
                                      _SourceInfo.ABC, abc_declared_meters(lines))
        parser = 'music21'
      except Exception as e:  # pylint: disable=broad-except
        stats.fail(name, 'abc_tune_unparseable',
                   f'note_seq: {note_seq_error!r}; music21: {e!r}'[:300])
        continue
    if not ns.notes:
      stats.fail(name, 'empty', 'no notes')
      continue
    stats.counts[f'tunes_parsed_by_{parser}'] += 1
    ns.id = name
    yield ns


def _midi_sequence(path: str) -> music_pb2.NoteSequence:
  return midi_io.midi_file_to_note_sequence(path)


def _musicxml_sequence(path: str) -> music_pb2.NoteSequence:
  try:
    return musicxml_reader.musicxml_file_to_sequence_proto(path)
  except Exception as note_seq_error:  # pylint: disable=broad-except
    try:
      return music21_to_note_sequence(_music21_parse(path), _SourceInfo.MUSIC_XML)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'note_seq: {note_seq_error!r}; music21: {e!r}') from None


def file_sequences(path: str, rel: str, stats: ConvertStats,
                   tune_filter: Optional[TuneFilter] = None
                   ) -> Iterator[music_pb2.NoteSequence]:
  """The NoteSequences of one file, with ids and filenames set; failures counted."""
  ext = os.path.splitext(path)[1].lower()
  found, failures_before = 0, len(stats.failures)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # pretty_midi and music21 warn about odd files
    if ext in ABC_EXTENSIONS:
      sequences = _abc_sequences(path, rel, stats, tune_filter)
    else:
      reader, reason = ((_midi_sequence, 'midi_unreadable') if ext in MIDI_EXTENSIONS
                        else (_musicxml_sequence, 'musicxml_unreadable'))
      try:
        ns = reader(path)
      except Exception as e:  # pylint: disable=broad-except; any parser error skips the file
        stats.fail(rel, reason, f'{type(e).__name__}: {e}'[:300])
        ns = None
      if ns is not None and not ns.notes:
        stats.fail(rel, 'empty', 'no notes')
        ns = None
      if ns is not None:
        ns.id = rel
      sequences = [ns] if ns is not None else []
    for ns in sequences:
      ns.filename = rel
      found += 1
      yield ns
  if found:
    stats.counts['files_converted'] += 1
  elif len(stats.failures) > failures_before:
    stats.counts['files_failed'] += 1


def convert(inputs: str, output: str, progress: bool = True,
            tune_filter: Optional[TuneFilter] = None,
            collection_name: str = '') -> ConvertStats:
  """Converts every supported file under `inputs` (dir, glob or file) into `output`.

  `output` is one TFRecord of NoteSequences (gzip-compressed if it ends in '.gz'),
  written to a temporary name and renamed at the end. `tune_filter(rel_path, n)`
  picks tunes of tunebooks (data/build_essen.py uses it to take a subset).
  """
  root, files = find_inputs(inputs)
  stats = ConvertStats()
  supported = [f for f in files if os.path.splitext(f)[1].lower() in SUPPORTED_EXTENSIONS]
  stats.counts['files_found'] = len(supported)
  if len(files) > len(supported):
    stats.counts['files_skipped_unsupported'] = len(files) - len(supported)

  def sequences():
    bar = None
    if progress:
      from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
      bar = tqdm.tqdm(total=len(supported), unit='file', desc='convert')
    try:
      for path in supported:
        rel = _relative(path, root)
        for ns in file_sequences(path, rel, stats, tune_filter):
          if collection_name:
            ns.collection_name = collection_name
          stats.counts['sequences_written'] += 1
          yield ns.SerializeToString(deterministic=True)
        if bar is not None:
          bar.update(1)
          bar.set_postfix(written=stats.counts['sequences_written'],
                          failed=len(stats.failures), refresh=False)
    finally:
      if bar is not None:
        bar.close()

  tmp = output + '.tmp'
  io_utils.write_tfrecords(tmp, sequences(), compress=output.endswith('.gz'))
  os.replace(tmp, output)
  return stats


def format_stats(stats: ConvertStats) -> str:
  """Human-readable counts and failures (the CLI prints this)."""
  return stats.summary()
