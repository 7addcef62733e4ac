"""NoteSequence -> MusicVAE's 2-bar slices, exactly as Magenta's data converters cut them.

Magenta's DrumsConverter and OneHotMelodyConverter (music_vae/data.py, `to_tensors`)
split a piece on time changes and, per segment:
  melodies: keep the notes of valid programs (MEL_PROGRAMS 0-31) in the pitch range
    (21..108), before quantizing;
  quantize; keep the segment only if a bar is converter.steps_per_bar steps (16: 4/4
    or 2/2 at 4 steps per quarter);
  drums: keep the drum notes of note-seq's 9 drum classes, as their class;
  extract drum tracks / melodies with min_bars 1, gap_bars 1, pad_end (tracks end on a
    bar line), at most max_bars (100) bars; melodies take the highest note where notes
    start together (skip_polyphony False) and need only 1 distinct pitch;
  slide a slice_bars (2) window over every track one bar at a time and keep the
    segment's unique slices (a melody window as note-seq's Melody(events) holds it:
    note-offs before its first note are no-events; a slice repeated in another
    time-change segment is kept again);
  in training, sample <= max_tensors_per_notesequence (5) per segment, then <= 5 over
    the piece (maybe_sample_items).
The extraction stages are extraction.py's own (Magenta-identical, linear time, counted
skips), run with the converter's settings. Differences, for robustness and determinism:
- The training sample is drawn the same two-level way but seeded by (sample_seed, source
  id) instead of NumPy's global state, so reruns keep the same slices (the flag
  IN_TRAINING_SAMPLE). Every slice is kept for eval: Magenta's eval mode would take the
  first 5 in Python set order.
- A drum step holds the first pitch of each class present (the pitch Magenta's
  from_tensors writes), so equal class patterns are equal events.
- Nothing raises on bad input; a segment Magenta would crash on is counted and skipped.

Stat names (beside extraction.py's reading, per-piece and per-segment ones):
  per note:   notes_outside_valid_programs, notes_outside_pitch_range (melodies),
              drum_notes_outside_pitch_classes (drums)
  per segment: segments_discarded_bar_length (bar != converter.steps_per_bar steps)
  per track:  drum_tracks_extracted / melodies_extracted (and extraction.py's track
              stats under the converter's settings), tracks_shorter_than_slice
  per slice:  slices_duplicate (same events as an earlier slice of the segment),
              slices_extracted (kept), slices_in_training_sample
"""

import collections
import hashlib
from typing import Dict, List, Optional, Sequence, Tuple

from note_seq import drums_encoder_decoder
from note_seq import sequences_lib
from note_seq.protobuf import music_pb2

from music_rnn import configs
from music_rnn import extraction

# Magenta's REDUCED_DRUM_PITCH_CLASSES is note-seq's table; a pitch -> its class's first.
_DRUM_CLASS_PITCH = {
    pitch: pitches[0]
    for pitches in drums_encoder_decoder.DEFAULT_DRUM_TYPE_PITCHES for pitch in pitches}

# A segment's unique slices: events -> the start step of their first occurrence.
_Slices = Dict[tuple, int]


def extractor_config(converter: configs.ConverterConfig) -> configs.ExtractorConfig:
  """The extractor arguments Magenta's converters pass (functools.partial in data.py)."""
  return configs.ExtractorConfig(
      steps_per_quarter=converter.steps_per_quarter,
      min_bars=1,
      max_steps=converter.steps_per_bar * converter.max_bars if converter.max_bars else None,
      gap_bars=converter.gap_bars or float('inf'),
      min_unique_pitches=1,
      ignore_polyphonic_notes=not converter.skip_polyphony)


def slice_sequences(note_sequence: music_pb2.NoteSequence, config: configs.VaeConfig,
                    stats: collections.Counter,
                    sample_seed: int = 0) -> List[extraction.ExtractedSequence]:
  """The piece's unique slices (per time-change segment, as Magenta), flagged with the
  seeded training sample. extraction.extract_sequences calls this for MusicVAE configs."""
  source_id = extraction.source_id_of(note_sequence)
  drums = config.kind == configs.DRUMS
  converter = config.converter
  per_segment = []  # (qpm, unique slices) of each segment that gave any
  for segment in extraction.split_segments(note_sequence, drums, stats):
    found = _segment_slices(segment, config, source_id, stats)
    if found and found[1]:
      per_segment.append(found)
  flags = training_sample([len(s) for _, s in per_segment],
                          converter.max_tensors_per_notesequence, sample_seed, source_id)
  results = []
  for qpm, slices in per_segment:
    for events, start_step in slices.items():
      results.append(extraction.ExtractedSequence(
          source_id=source_id, track_index=len(results), start_step=start_step,
          steps_per_bar=converter.steps_per_bar,
          steps_per_quarter=converter.steps_per_quarter, qpm=qpm, events=list(events),
          in_training_sample=flags[len(results)]))
  stats['slices_extracted'] += len(results)
  stats['slices_in_training_sample'] += sum(flags)
  return results


def _segment_slices(segment, config: configs.VaeConfig, source_id: str,
                    stats: collections.Counter) -> Optional[Tuple[float, _Slices]]:
  """One time-change segment through the converter's _to_tensors_fn: (qpm, slices)."""
  converter = config.converter
  drums = config.kind == configs.DRUMS
  if not drums:
    segment = _melody_notes_only(segment, converter, stats)
  quantized = extraction.quantize_segment(
      segment, converter.steps_per_quarter, source_id, stats)
  if quantized is None:
    return None
  if sequences_lib.steps_per_bar_in_quantized_sequence(quantized) != converter.steps_per_bar:
    stats['segments_discarded_bar_length'] += 1
    return None
  ext = extractor_config(converter)
  try:
    if drums:
      _drum_class_notes_only(quantized, stats)
      tracks = extraction.extract_drum_tracks(
          quantized, converter.steps_per_bar, ext, stats, pad_end=True)
    else:
      tracks = extraction.extract_melodies(
          quantized, converter.steps_per_bar, ext, stats, pad_end=True)
  except extraction.BadNoteError:
    stats['segments_discarded_bad_note'] += 1  # note_seq's BadNoteError: Magenta crashes
    return None
  stats['drum_tracks_extracted' if drums else 'melodies_extracted'] += len(tracks)
  qpm = quantized.tempos[0].qpm if quantized.tempos else 120.0
  return qpm, _unique_slices(tracks, converter, drums, stats)


def _melody_notes_only(segment, converter: configs.ConverterConfig,
                       stats: collections.Counter) -> music_pb2.NoteSequence:
  """A copy keeping the notes of valid programs within [min_pitch, max_pitch]."""
  kept = music_pb2.NoteSequence()
  kept.CopyFrom(segment)
  del kept.notes[:]
  programs = set(converter.valid_programs) if converter.valid_programs is not None else None
  for note in segment.notes:
    if programs is not None and note.program not in programs:
      stats['notes_outside_valid_programs'] += 1
    elif not converter.min_pitch <= note.pitch <= converter.max_pitch:
      stats['notes_outside_pitch_range'] += 1
    else:
      kept.notes.add().CopyFrom(note)
  return kept


def _drum_class_notes_only(quantized, stats: collections.Counter) -> None:
  """Keeps the drum notes of the 9 classes, each as its class's first pitch (in place)."""
  kept = []
  for note in quantized.notes:
    if not note.is_drum:
      continue
    if note.pitch not in _DRUM_CLASS_PITCH:
      stats['drum_notes_outside_pitch_classes'] += 1
      continue
    note.pitch = _DRUM_CLASS_PITCH[note.pitch]
    kept.append(note)
  del quantized.notes[:]
  quantized.notes.extend(kept)


def _unique_slices(tracks: Sequence[Tuple[int, list]], converter: configs.ConverterConfig,
                   drums: bool, stats: collections.Counter) -> _Slices:
  """Every slice_bars window of every track, one bar apart; the first of equal ones."""
  width, hop = converter.slice_steps, converter.steps_per_bar
  slices: _Slices = {}
  for track_start, events in tracks:
    if len(events) < width:
      stats['tracks_shorter_than_slice'] += 1
      continue
    for end in range(width, len(events) + 1, hop):
      window = events[end - width:end]
      window = tuple(window if drums else _melody_slice(window))
      if window in slices:
        stats['slices_duplicate'] += 1
      else:
        slices[window] = track_start + end - width
  return slices


def _melody_slice(events: list) -> list:
  """A melody window as note-seq's Melody(events) holds it: note-offs before the first
  note (the end of a note begun before the window) become no-events."""
  first_note = next((i for i, e in enumerate(events) if e >= 0), len(events))
  return [configs.MELODY_NO_EVENT] * first_note + events[first_note:]


def training_sample(segment_sizes: Sequence[int], max_per_piece: Optional[int],
                    seed: int, source_id: str) -> List[bool]:
  """Which of a piece's slices (segment after segment) Magenta's training would take.

  maybe_sample_items twice, as split_process_and_combine does: at most `max_per_piece`
  of each segment's slices, then at most `max_per_piece` of those; None or 0: all. Each
  draw takes the lowest-ranked items under a hash of (seed, source_id, draw, item), so it
  is uniform like NumPy's choice yet the same on every run and machine.
  """
  total = sum(segment_sizes)
  if not max_per_piece or total <= max_per_piece:
    return [True] * total
  survivors, offset = [], 0
  for segment, size in enumerate(segment_sizes):
    items = range(offset, offset + size)
    survivors += _draw(items, max_per_piece, seed, source_id, f'segment{segment}')
    offset += size
  chosen = set(_draw(survivors, max_per_piece, seed, source_id, 'piece'))
  return [i in chosen for i in range(total)]


def _draw(items: Sequence[int], size: int, seed: int, source_id: str,
          draw: str) -> List[int]:
  if len(items) <= size:
    return list(items)
  ranked = sorted(items, key=lambda item: _rank(seed, source_id, draw, item))
  return sorted(ranked[:size])


def _rank(seed: int, source_id: str, draw: str, item: int) -> bytes:
  return hashlib.sha256(f'{seed}\0{source_id}\0{draw}\0{item}'.encode('utf-8')).digest()
