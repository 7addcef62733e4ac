"""Pure-python event helpers shared by encoding (TF) and generation (numpy/python).

Drum events are sets of MIDI pitches; the models see them as one of 2**9 class indices
(note-seq's MultiDrumOneHotEncoding): pitch -> drum type, index = sum of 2**type over
the distinct types present. Unknown pitches are ignored, as note-seq does by default.
"""

from typing import Iterable, List, Sequence, Tuple

from music_rnn import configs

# note_seq.drums_encoder_decoder.DEFAULT_DRUM_TYPE_PITCHES (a fact, restated once; the
# tests check it against note-seq). The first pitch of each type is what decoding emits.
DRUM_TYPE_PITCHES: Tuple[Tuple[int, ...], ...] = (
    (36, 35),  # kick drum
    (38, 27, 28, 31, 32, 33, 34, 37, 39, 40, 56, 65, 66, 75, 85),  # snare drum
    (42, 44, 54, 68, 69, 70, 71, 73, 78, 80, 22),  # closed hi-hat
    (46, 67, 72, 74, 79, 81, 26),  # open hi-hat
    (45, 29, 41, 43, 61, 64, 84),  # low tom
    (48, 47, 60, 63, 77, 86, 87),  # mid tom
    (50, 30, 62, 76, 83),  # high tom
    (49, 52, 55, 57, 58),  # crash cymbal
    (51, 53, 59, 82),  # ride cymbal
)
assert len(DRUM_TYPE_PITCHES) == configs.NUM_DRUM_CLASSES

NUM_MIDI_PITCHES = 128

# pitch -> drum type (-1: not a known drum). A list so TF can turn it into a constant.
PITCH_TO_DRUM_TYPE: List[int] = [-1] * NUM_MIDI_PITCHES
for _type, _pitches in enumerate(DRUM_TYPE_PITCHES):
  for _pitch in _pitches:
    PITCH_TO_DRUM_TYPE[_pitch] = _type
del _type, _pitches, _pitch

# The pitch classes in a major scale; NOTE_KEYS[pc] = the major keys containing pc
# (note-seq's constants.NOTE_KEYS, derived the way its comment says).
MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
NOTE_KEYS: Tuple[Tuple[int, ...], ...] = tuple(
    tuple(k for k in range(configs.NOTES_PER_OCTAVE)
          if (pc - k) % configs.NOTES_PER_OCTAVE in MAJOR_SCALE)
    for pc in range(configs.NOTES_PER_OCTAVE))


def drum_event_to_class_index(pitches: Iterable[int]) -> int:
  """One drum step (a set of pitches) -> its class index in [0, 512)."""
  types = set()
  for pitch in pitches:
    if 0 <= pitch < NUM_MIDI_PITCHES and PITCH_TO_DRUM_TYPE[pitch] >= 0:
      types.add(PITCH_TO_DRUM_TYPE[pitch])
  return sum(2 ** t for t in types)


def drum_events_to_class_indices(events: Iterable[Iterable[int]]) -> List[int]:
  """Drum track (one pitch set per step) -> class indices, the TF encoders' input."""
  return [drum_event_to_class_index(event) for event in events]


def class_index_to_drum_event(index: int) -> Tuple[int, ...]:
  """Class index -> pitches, one per drum type present (its first pitch, as note-seq)."""
  if not 0 <= index < 2 ** configs.NUM_DRUM_CLASSES:
    raise ValueError(f'drum class index {index} not in [0, {2 ** configs.NUM_DRUM_CLASSES})')
  return tuple(DRUM_TYPE_PITCHES[t][0] for t in range(configs.NUM_DRUM_CLASSES)
               if index >> t & 1)


def class_indices_to_drum_events(indices: Sequence[int]) -> List[Tuple[int, ...]]:
  """Inverse of drum_events_to_class_indices, up to the pitch chosen per drum type."""
  return [class_index_to_drum_event(int(i)) for i in indices]
