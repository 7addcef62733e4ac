"""NoteSequence -> drum tracks / melodies, exactly as Magenta's dataset pipelines do.

Magenta's drums_rnn and melody_rnn dataset pipelines run, per piece:
TimeChangeSplitter -> Quantizer -> [TranspositionPipeline(0), melodies only] ->
DrumsExtractor / MelodyExtractor. We follow the same stages and the same loops
(extract_drum_tracks / extract_melodies with DrumTrack / Melody.from_quantized_sequence
semantics), so the events equal Magenta's, with differences that only add
robustness: nothing raises on bad input (every dropped piece, segment or track is
counted in `stats` under a reason, Magenta's stat name where it has one); notes are
indexed once per segment so very long pieces stay linear rather than quadratic; no
more than max_steps events per sequence are ever stored, so absurd times or tempos
cannot exhaust memory; and a negative time-signature numerator (where Magenta loops
forever) is a bad time signature.

Stat names (counts; Magenta's names where Magenta has the stat):
  reading:    files_read, records_read, records_corrupt, records_not_note_sequence,
              sequences_empty
  per piece:  sequences_processed, no_drums / no_pitched_notes (informational),
              split_failed, time_change_segments, extraction_failed (any other
              error: the piece is dropped, not the job)
  per segment (Magenta's Quantizer etc.):
              sequences_discarded_because_multiple_time_signatures,
              sequences_discarded_because_multiple_tempos,
              sequences_discarded_because_bad_time_signature, quantization_failed,
              skipped_due_to_range_exceeded (melodies), non_integer_steps_per_bar,
              segments_discarded_bad_note (melodies; Magenta would crash)
  per track:  drum_tracks_discarded_too_short, drum_tracks_truncated,
              drum_tracks_extracted; polyphonic_tracks_discarded,
              melodies_discarded_too_short, melodies_truncated,
              melodies_discarded_too_few_pitches, melodies_extracted
  MusicVAE configs: vae_slicing.py's docstring (2-bar slices, built on these stages).
"""

import bisect
import collections
import dataclasses
import hashlib
import io
import json
import logging
import os
from typing import Iterator, List, Optional, Sequence, TextIO, Tuple, Union

from note_seq import sequences_lib
from note_seq.protobuf import music_pb2
import tensorflow as tf

from music_rnn import configs
from music_rnn import features
from music_rnn import io_utils

_MIN_MIDI_PITCH = 0
_MAX_MIDI_PITCH = 127


@dataclasses.dataclass
class ExtractedSequence:
  """One extracted drum track or melody, with where it came from."""
  source_id: str
  track_index: int  # index among the sequences extracted from the same piece
  start_step: int  # first quantized step, within its time-change segment
  steps_per_bar: int
  steps_per_quarter: int
  qpm: float
  # melody: ints (-2 no event, -1 note off, 0..127 note on);
  # drums: one tuple of sorted MIDI pitches per step (empty tuple: no drums).
  events: list
  # MusicVAE slices only: one of the <= max_tensors_per_notesequence slices of its piece
  # drawn for training (vae_slicing.training_sample); None for the event RNNs.
  in_training_sample: Optional[bool] = None

  @property
  def num_steps(self) -> int:
    return len(self.events)


class BadNoteError(Exception):
  """A note that ends before it starts (note_seq's BadNoteError; Magenta crashes)."""


# ---------------------------------------------------------------------------------
# Piece ids and reading.


def source_id_of(note_sequence: music_pb2.NoteSequence) -> str:
  """The piece's stable id (train/eval split key, so a piece never straddles splits)."""
  if note_sequence.id:
    return note_sequence.id
  if note_sequence.filename:
    return note_sequence.filename
  digest = hashlib.sha1(note_sequence.SerializeToString(deterministic=True)).hexdigest()
  return 'sha1:' + digest[:20]


def read_note_sequences(file_pattern: Union[str, Sequence[str]],
                        stats: collections.Counter) -> Iterator[music_pb2.NoteSequence]:
  """Yields the NoteSequences in the TFRecord files matching `file_pattern`.

  Gzip is detected per file. Damaged records ('records_corrupt'), records that are not
  NoteSequences ('records_not_note_sequence') and NoteSequences without notes
  ('sequences_empty') are counted and skipped; good records before a damaged spot are
  kept. Raises FileNotFoundError only when nothing matches, which is a usage error.
  """
  files = io_utils.glob_files(file_pattern)
  if not files:
    raise FileNotFoundError(f'No files match {file_pattern!r}')
  for path in files:
    stats['files_read'] += 1
    for data in io_utils.iter_tfrecords(path, stats):
      note_sequence = _parse_note_sequence(data)
      if note_sequence is None:
        stats['records_not_note_sequence'] += 1
        continue
      if not note_sequence.notes:
        stats['sequences_empty'] += 1
        continue
      yield note_sequence


def _parse_note_sequence(data: bytes) -> Optional[music_pb2.NoteSequence]:
  """Parses a NoteSequence, or None when the bytes are something else.

  Protobuf parsing is lenient (another message type often parses "successfully"), so
  a parse that yields no notes but unknown fields is taken as not a NoteSequence; so
  is one whose only content is an id that parses as tf.train.Features (a tf.Example,
  whose field 1 is its features, when its values happen to be valid UTF-8).
  """
  note_sequence = music_pb2.NoteSequence()
  try:
    note_sequence.ParseFromString(data)
  except Exception:  # pylint: disable=broad-except; DecodeError, or RuntimeWarning-ish upb errors
    return None
  if not note_sequence.notes and data:
    from google.protobuf import unknown_fields  # pylint: disable=g-import-not-at-top
    if len(unknown_fields.UnknownFieldSet(note_sequence)):
      return None
    if note_sequence.id and _is_tf_features(note_sequence.id.encode('utf-8')):
      return None
  return note_sequence


def _is_tf_features(data: bytes) -> bool:
  features_proto = tf.train.Features()
  try:
    features_proto.ParseFromString(data)
  except Exception:  # pylint: disable=broad-except; DecodeError
    return False
  return bool(features_proto.feature)


# ---------------------------------------------------------------------------------
# Extraction.


def extract_sequences(note_sequence: music_pb2.NoteSequence, config,
                      stats: collections.Counter,
                      sample_seed: int = 0) -> List[ExtractedSequence]:
  """All drum tracks or melodies (per `config.kind`) Magenta would extract from a piece.

  For a MusicVAE config (configs.is_vae), the piece's unique 2-bar slices instead, as
  Magenta's data converters make them (vae_slicing.py; `sample_seed` seeds the training
  sample). Never raises on bad musical input; the module docstrings list the stat names.
  Any error not foreseen there drops the piece under 'extraction_failed' (logged with its
  traceback) rather than stopping a job over one odd file.
  """
  stats['sequences_processed'] += 1
  try:
    if configs.is_vae(config):
      from music_rnn import vae_slicing  # pylint: disable=g-import-not-at-top; it imports us
      return vae_slicing.slice_sequences(note_sequence, config, stats, sample_seed)
    return _extract_sequences(note_sequence, config, stats)
  except Exception:  # pylint: disable=broad-except; one bad piece must not stop a corpus
    logging.exception('Skipped %s: extraction failed', source_id_of(note_sequence))
    stats['extraction_failed'] += 1
    return []


def _extract_sequences(note_sequence, config, stats):
  source_id = source_id_of(note_sequence)
  drums = config.kind == configs.DRUMS
  segments = split_segments(note_sequence, drums, stats)
  if not segments:
    return []
  ext = config.extractor
  results = []
  for segment in segments:
    quantized = quantize_segment(segment, ext.steps_per_quarter, source_id, stats)
    if quantized is None:
      continue
    if not drums and _pitch_out_of_range(quantized):
      # Magenta's melody pipeline runs TranspositionPipeline((0,)) here, which drops
      # segments with a non-drum pitch outside [0, 127].
      stats['skipped_due_to_range_exceeded'] += 1
      continue
    steps_per_bar_float = sequences_lib.steps_per_bar_in_quantized_sequence(quantized)
    if steps_per_bar_float <= 0 and (drums or quantized.notes):
      # A negative numerator passes note_seq's checks; Magenta then loops forever.
      stats['sequences_discarded_because_bad_time_signature'] += 1
      continue
    # Drum extraction checks the bar length unconditionally; melody extraction only
    # once it looks at a track, i.e. when the segment has notes.
    if steps_per_bar_float % 1 != 0 and (drums or quantized.notes):
      stats['non_integer_steps_per_bar'] += 1
      continue
    steps_per_bar = int(steps_per_bar_float)
    try:
      if drums:
        found = extract_drum_tracks(quantized, steps_per_bar, ext, stats)
      else:
        found = extract_melodies(quantized, steps_per_bar, ext, stats)
    except BadNoteError as e:
      logging.warning('Skipped a segment of %s: %s', source_id, e)
      stats['segments_discarded_bad_note'] += 1
      continue
    qpm = quantized.tempos[0].qpm
    for start_step, events in found:
      results.append(ExtractedSequence(
          source_id=source_id, track_index=len(results), start_step=start_step,
          steps_per_bar=steps_per_bar, steps_per_quarter=ext.steps_per_quarter,
          qpm=qpm, events=events))
  stats['drum_tracks_extracted' if drums else 'melodies_extracted'] += len(results)
  return results


def split_segments(note_sequence: music_pb2.NoteSequence, drums: bool,
                   stats: collections.Counter) -> List[music_pb2.NoteSequence]:
  """Magenta's TimeChangeSplitter (the converters' presplit_on_time_changes too).

  Counts an empty piece, and (informational) a piece without drums or pitched notes for
  a drum or melody config; [] when the piece cannot be split.
  """
  if not note_sequence.notes:
    stats['sequences_empty'] += 1
    return []
  if drums and not any(n.is_drum and n.velocity for n in note_sequence.notes):
    stats['no_drums'] += 1  # Magenta would still run (and find nothing); so do we.
  if not drums and not any(not n.is_drum and n.velocity for n in note_sequence.notes):
    stats['no_pitched_notes'] += 1
  try:
    segments = sequences_lib.split_note_sequence_on_time_changes(note_sequence)
  except Exception as e:  # pylint: disable=broad-except; e.g. an already quantized input
    logging.warning('Skipped %s: cannot split on time changes: %s',
                    source_id_of(note_sequence), e)
    stats['split_failed'] += 1
    return []
  stats['time_change_segments'] += len(segments)
  return segments


def quantize_segment(segment, steps_per_quarter: int, source_id: str,
                     stats: collections.Counter):
  """Magenta's Quantizer stage: its three counted skips, plus ours for other errors.

  Returns the quantized copy, or None when the segment was counted and skipped.
  """
  try:
    return sequences_lib.quantize_note_sequence(segment, steps_per_quarter)
  except sequences_lib.MultipleTimeSignatureError:
    stats['sequences_discarded_because_multiple_time_signatures'] += 1
  except sequences_lib.MultipleTempoError:
    stats['sequences_discarded_because_multiple_tempos'] += 1
  except sequences_lib.BadTimeSignatureError:
    stats['sequences_discarded_because_bad_time_signature'] += 1
  except Exception as e:  # pylint: disable=broad-except; NegativeTimeError etc. crash Magenta
    logging.warning('Skipped a segment of %s: quantization failed: %s', source_id, e)
    stats['quantization_failed'] += 1
  return None


def _pitch_out_of_range(quantized) -> bool:
  return any(not n.is_drum and not _MIN_MIDI_PITCH <= n.pitch <= _MAX_MIDI_PITCH
             for n in quantized.notes)


def _lengths(length: int, steps_per_bar: int, max_steps: Optional[int],
             pad_end: bool) -> Tuple[int, int]:
  """(length after pad_end, length kept after truncation), as Magenta's extractors.

  pad_end rounds the length up to whole bars (DrumTrack / Melody.from_quantized_sequence);
  a longer sequence is truncated to max_steps, or with pad_end to the last whole bar
  within it (extract_drum_tracks / extract_melodies' max_steps_truncate).
  """
  if pad_end:
    length += -length % steps_per_bar
  kept = length
  if max_steps is not None and length > max_steps:
    kept = max_steps - (max_steps % steps_per_bar if pad_end else 0)
  return length, kept


def extract_drum_tracks(quantized, steps_per_bar: int, ext: configs.ExtractorConfig,
                        stats: collections.Counter,
                        pad_end: bool = False) -> List[Tuple[int, list]]:
  """Magenta's extract_drum_tracks (search_start_step 0, is_drum only).

  Returns (start_step, events) pairs; events are tuples of sorted pitches per step.
  Only the first max_steps events are ever stored (see _melody_from_notes). `pad_end`
  ends every track on a bar line with silent steps (what MusicVAE's converter asks).
  """
  pitches_at = collections.defaultdict(set)
  for note in quantized.notes:
    if note.is_drum and note.velocity:  # zero-velocity notes are ignored
      pitches_at[note.quantized_start_step].add(note.pitch)
  onsets = sorted(pitches_at)
  gap_steps = ext.gap_bars * steps_per_bar
  min_steps = steps_per_bar * ext.min_bars
  cap = ext.max_steps
  tracks = []
  search_start_step = 0
  while True:
    # DrumTrack.from_quantized_sequence(search_start_step=search_start_step)
    first = bisect.bisect_left(onsets, search_start_step)
    if first == len(onsets):
      break  # an empty track ends the search
    track_start = onsets[first] - (onsets[first] - search_start_step) % steps_per_bar
    events = []  # the first `cap` steps of the track
    length = 0  # the track's length in steps
    gap_start = 0
    for j in range(first, len(onsets)):
      onset = onsets[j]
      index = onset - track_start
      if length and index - gap_start >= gap_steps:
        break
      length = index + 1  # onsets ascend
      if cap is None or index < cap:
        events.extend([()] * (index + 1 - len(events)))
        events[index] = tuple(sorted(pitches_at[onset]))
      gap_start = index + 1
    end_step = track_start + length
    # The next search starts at the first bar boundary at or after this track's end.
    search_start_step = end_step + (search_start_step - end_step) % steps_per_bar

    length, kept = _lengths(length, steps_per_bar, cap, pad_end)
    if length < min_steps:
      stats['drum_tracks_discarded_too_short'] += 1
      continue
    if kept < length:
      stats['drum_tracks_truncated'] += 1
    del events[kept:]
    events.extend([()] * (kept - len(events)))  # silent steps up to the end
    tracks.append((track_start, events))
  return tracks


def extract_melodies(quantized, steps_per_bar: int, ext: configs.ExtractorConfig,
                     stats: collections.Counter,
                     pad_end: bool = False) -> List[Tuple[int, List[int]]]:
  """Magenta's extract_melodies (search_start_step 0, filter_drums).

  `pad_end` ends every melody on a bar line (Melody.set_length: a note-off after the
  last note, then no-events), what MusicVAE's converter asks.
  """
  by_instrument = collections.defaultdict(list)
  for order, note in enumerate(quantized.notes):
    by_instrument[note.instrument].append(
        (note.quantized_start_step, -note.pitch, order, note.quantized_end_step,
         note.is_drum, note.velocity))
  min_steps = steps_per_bar * ext.min_bars
  melodies = []
  # Magenta walks a set of instrument numbers; iterate the same set so the order of
  # the extracted melodies matches too.
  for instrument in set(n.instrument for n in quantized.notes):
    # Sorted by onset, then pitch descending (the order Melody uses; ties keep
    # sequence order).
    notes = sorted(by_instrument[instrument])
    onsets = [n[0] for n in notes]
    search_start_step = 0
    while True:
      try:
        melody_start, events, length = _melody_from_notes(
            notes, onsets, search_start_step, steps_per_bar, ext)
      except _PolyphonyFound:
        stats['polyphonic_tracks_discarded'] += 1
        break  # Magenta gives up on the rest of this instrument
      if not length:
        break
      end_step = melody_start + length
      search_start_step = end_step + (0 - end_step) % steps_per_bar

      padded, kept = _lengths(length, steps_per_bar, ext.max_steps, pad_end)
      if padded < min_steps:
        stats['melodies_discarded_too_short'] += 1
        continue
      if padded > length and len(events) == length:
        events.append(configs.MELODY_NOTE_OFF)  # Melody.set_length ends the last note
      if kept < padded:
        stats['melodies_truncated'] += 1  # `events` holds only the first max_steps
      del events[kept:]
      events.extend([configs.MELODY_NO_EVENT] * (kept - len(events)))
      pitch_classes = {e % configs.NOTES_PER_OCTAVE for e in events if e >= _MIN_MIDI_PITCH}
      if len(pitch_classes) < ext.min_unique_pitches:
        stats['melodies_discarded_too_few_pitches'] += 1
        continue
      melodies.append((melody_start, events))
  return melodies


class _PolyphonyFound(Exception):
  """Two notes start on the same step (note_seq's PolyphonicMelodyError)."""


def _melody_from_notes(notes, onsets, search_start_step, steps_per_bar, ext):
  """Melody.from_quantized_sequence on one instrument's sorted notes.

  Returns (start_step, events, length): the melody's length in steps with the final
  note-off stripped (0 when no note was found), and its first min(length, max_steps)
  events. Steps past max_steps, which are truncated anyway, are never stored, so a
  note lasting billions of steps (a corrupt time or tempo) costs no memory.
  """
  first = bisect.bisect_left(onsets, search_start_step)
  if first == len(notes):
    return 0, [], 0
  # The melody starts on the bar of the first note at or after the search start,
  # counting drum and silent notes too (Magenta filters them only afterwards).
  melody_start = onsets[first] - (onsets[first] - search_start_step) % steps_per_bar
  gap_steps = ext.gap_bars * steps_per_bar
  cap = ext.max_steps
  events = []  # the first `cap` events
  length = 0
  last_on = last_off = 0
  for i in range(first, len(notes)):
    start, neg_pitch, _, end, is_drum, velocity = notes[i]
    if is_drum or not velocity:
      continue
    start_index = start - melody_start
    end_index = end - melody_start
    if length:
      if start_index <= last_on:
        if start_index == last_on and ext.ignore_polyphonic_notes:
          continue  # keep the highest pitch, which came first
        raise _PolyphonyFound()
      if start_index - last_off >= gap_steps:
        break
    if start_index >= end_index:
      raise BadNoteError(f'note ends before it starts: steps {start}..{end}')
    # Melody._add_note: the new note cuts off whatever was after its start, so the
    # melody now ends with this note's NOTE_OFF.
    length = end_index + 1
    stored = length if cap is None else min(length, cap)
    if stored > len(events):
      events.extend([configs.MELODY_NO_EVENT] * (stored - len(events)))
    else:
      del events[stored:]
    if start_index < stored:
      events[start_index] = -neg_pitch
      hold_end = min(end_index, stored)
      events[start_index + 1:hold_end] = [configs.MELODY_NO_EVENT] * (
          hold_end - start_index - 1)
    if end_index < stored:
      events[end_index] = configs.MELODY_NOTE_OFF
    last_on, last_off = start_index, end_index
  if length:
    length -= 1  # the final NOTE_OFF is stripped
    del events[length:]
  return melody_start, events, length


# ---------------------------------------------------------------------------------
# tf.Example encoding.


def _int64s(values) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def to_tf_example(seq: ExtractedSequence, config) -> tf.train.Example:
  """The ExampleGen record for one sequence; every example of a config has the same keys
  (a MusicVAE slice also its IN_TRAINING_SAMPLE flag)."""
  feature = {
      features.SOURCE_ID: tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[seq.source_id.encode('utf-8')])),
      features.TRACK_INDEX: _int64s([seq.track_index]),
      features.START_STEP: _int64s([seq.start_step]),
      features.NUM_STEPS: _int64s([len(seq.events)]),
      features.STEPS_PER_BAR: _int64s([seq.steps_per_bar]),
      features.STEPS_PER_QUARTER: _int64s([seq.steps_per_quarter]),
      features.QPM: tf.train.Feature(float_list=tf.train.FloatList(value=[seq.qpm])),
  }
  if config.kind == configs.DRUMS:
    feature[features.DRUM_PITCHES] = _int64s([p for step in seq.events for p in step])
    feature[features.DRUM_PITCH_COUNTS] = _int64s([len(step) for step in seq.events])
  else:
    feature[features.MELODY_EVENTS] = _int64s(seq.events)
  if configs.is_vae(config):
    feature[features.IN_TRAINING_SAMPLE] = _int64s([int(bool(seq.in_training_sample))])
  return tf.train.Example(features=tf.train.Features(feature=feature))


def from_tf_example(example_or_bytes: Union[tf.train.Example, bytes],
                    config) -> ExtractedSequence:
  """Inverse of `to_tf_example` (for tests and tools)."""
  example = example_or_bytes
  if isinstance(example_or_bytes, (bytes, bytearray)):
    example = tf.train.Example.FromString(bytes(example_or_bytes))
  f = example.features.feature

  def one_int(name):
    return int(f[name].int64_list.value[0])

  if config.kind == configs.DRUMS:
    flat = list(f[features.DRUM_PITCHES].int64_list.value)
    events, pos = [], 0
    for count in f[features.DRUM_PITCH_COUNTS].int64_list.value:
      events.append(tuple(int(p) for p in flat[pos:pos + count]))
      pos += count
  else:
    events = [int(e) for e in f[features.MELODY_EVENTS].int64_list.value]
  sampled = None
  if features.IN_TRAINING_SAMPLE in f:
    sampled = bool(f[features.IN_TRAINING_SAMPLE].int64_list.value[0])
  return ExtractedSequence(
      source_id=f[features.SOURCE_ID].bytes_list.value[0].decode('utf-8'),
      track_index=one_int(features.TRACK_INDEX),
      start_step=one_int(features.START_STEP),
      steps_per_bar=one_int(features.STEPS_PER_BAR),
      steps_per_quarter=one_int(features.STEPS_PER_QUARTER),
      qpm=float(f[features.QPM].float_list.value[0]),
      events=events, in_training_sample=sampled)


# ---------------------------------------------------------------------------------
# The `music-rnn extract` command's engine.


def run_extraction(file_pattern: Union[str, Sequence[str]], config,
                   events_out: Union[None, str, TextIO] = None,
                   sample_seed: int = 0) -> collections.Counter:
  """Reads NoteSequence TFRecords, extracts, optionally writes JSONL; returns stats.

  Each JSONL line is {"source_id", "track_index", "start_step", "steps_per_bar",
  "events"} (a MusicVAE slice also "in_training_sample"); drum events are per-step lists
  of sorted pitches, melody events ints.
  """
  stats = collections.Counter()
  out, close = None, False
  if isinstance(events_out, str):
    parent = os.path.dirname(events_out)
    if parent:
      os.makedirs(parent, exist_ok=True)
    out, close = open(events_out, 'w', encoding='utf-8'), True
  elif events_out is not None:
    out = events_out
  try:
    for note_sequence in read_note_sequences(file_pattern, stats):
      for seq in extract_sequences(note_sequence, config, stats, sample_seed):
        if out is not None:
          out.write(json.dumps(_json_record(seq, config)) + '\n')
  finally:
    if close:
      out.close()
  return stats


def _json_record(seq: ExtractedSequence, config) -> dict:
  events = ([list(step) for step in seq.events]
            if config.kind == configs.DRUMS else seq.events)
  record = {'source_id': seq.source_id, 'track_index': seq.track_index,
            'start_step': seq.start_step, 'steps_per_bar': seq.steps_per_bar,
            'events': events}
  if configs.is_vae(config):
    record['in_training_sample'] = bool(seq.in_training_sample)
  return record


def kept_stat(config) -> str:
  """The stat that counts the sequences (MusicVAE: slices) kept for `config`."""
  if configs.is_vae(config):
    return 'slices_extracted'
  return 'drum_tracks_extracted' if config.kind == configs.DRUMS else 'melodies_extracted'


class NothingExtractedError(ValueError):
  """No usable sequence was left; the message lists every reason with its count."""


def check_extracted(stats: collections.Counter, config, source: str) -> None:
  """Raises NothingExtractedError when `stats` counts no kept sequence.

  The one error `music-rnn extract` and the ExampleGen stop with, so both say the same.
  """
  if not stats.get(kept_stat(config), 0):
    raise NothingExtractedError(
        f'No usable sequences were extracted for config {config.name!r} from {source}. '
        'Counts by reason:\n' + format_stats(stats))


# Reasons in pipeline order, so the table reads top to bottom like the pipeline.
_STAT_ORDER = (
    'files_read', 'records_read', 'records_corrupt', 'records_not_note_sequence',
    'sequences_empty', 'sequences_processed', 'no_drums', 'no_pitched_notes',
    'split_failed', 'time_change_segments',
    'sequences_discarded_because_multiple_time_signatures',
    'sequences_discarded_because_multiple_tempos',
    'sequences_discarded_because_bad_time_signature', 'quantization_failed',
    'skipped_due_to_range_exceeded', 'non_integer_steps_per_bar',
    'segments_discarded_bad_note', 'extraction_failed',
    'drum_tracks_discarded_too_short', 'drum_tracks_truncated', 'drum_tracks_extracted',
    'polyphonic_tracks_discarded', 'melodies_discarded_too_short', 'melodies_truncated',
    'melodies_discarded_too_few_pitches', 'melodies_extracted',
    # MusicVAE slicing (vae_slicing.py), in its pipeline order.
    'segments_discarded_bar_length', 'drum_notes_outside_pitch_classes',
    'notes_outside_valid_programs', 'notes_outside_pitch_range',
    'tracks_shorter_than_slice', 'slices_duplicate', 'slices_extracted',
    'slices_in_training_sample', 'train_slices_not_in_sample',
)


def format_stats(stats: collections.Counter) -> str:
  """A two-column table of counts, in pipeline order, then any other reasons."""
  known = [k for k in _STAT_ORDER if k in stats]
  names = known + sorted(k for k in stats if k not in _STAT_ORDER)
  if not names:
    return '(no statistics)'
  width = max(len(n) for n in names)
  buf = io.StringIO()
  for name in names:
    buf.write(f'{name:<{width}}  {stats[name]:>9,d}\n')
  return buf.getvalue().rstrip('\n')
