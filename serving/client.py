"""Python client for pushed models: find and load one, prime it, generate, write MIDI + PNG.

The SavedModel does the sampling (its `generate` / `prime` / `extend` signatures, see
serving/README.md); this module adds what is not TensorFlow: Magenta's primer syntax and
MIDI primers, beam search over `extend` calls, events -> NoteSequence -> MIDI (note_seq)
and a piano-roll PNG (matplotlib, Agg).
"""

import ast
import collections
import dataclasses
import datetime
import json
import math
import os
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from music_rnn import configs
from music_rnn import events as events_lib
from music_rnn import limits

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODELS_DIR = os.path.join(PROJECT_ROOT, 'serving', 'models')
DEFAULT_QPM = 120.0  # note_seq.DEFAULT_QUARTERS_PER_MINUTE
_VELOCITY = 100  # what Magenta's Melody / DrumTrack.to_sequence write
_DRUM_PROGRAM_CHANNEL = 9
_ALL_NOTES_OFF = 123  # MIDI CC marking the end, so the file is as long as the events

Progress = Optional[Callable[[int], None]]  # called with the number of steps just done


# --- Finding and loading models. -----------------------------------------------------


def latest_model_dir(config_name: str, models_dir: str = DEFAULT_MODELS_DIR) -> str:
  """The newest pushed version, <models_dir>/<config>/<version>/ (versions are integers)."""
  configs.get_config(config_name)  # a clear error for unknown names
  root = os.path.join(models_dir, config_name)
  versions = []
  if os.path.isdir(root):
    versions = [int(v) for v in os.listdir(root) if v.isdigit() and
                os.path.exists(os.path.join(root, v, 'saved_model.pb'))]
  if not versions:
    raise FileNotFoundError(
        f'No pushed {config_name} model under {root}: run `music-rnn run --config '
        f'{config_name}` first, or pass --model-dir')
  return os.path.join(root, str(max(versions)))


def _load_saved_model(path: str):
  """tf.saved_model.load, failing with one line (the CLI checks the directory first,
  model_archive.check_saved_model; this catches what only loading finds, e.g. damaged
  variables)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    return tf.saved_model.load(path)
  except Exception as e:  # pylint: disable=broad-except; TF raises many kinds here
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise RuntimeError(f'{path}: cannot load the SavedModel ({reason}); re-export or '
                     're-push it') from e


@dataclasses.dataclass
class Generated:
  """Generated sequences in Magenta's event values, primer first."""
  events: np.ndarray  # int64 [num_outputs, length]
  log_likelihood: np.ndarray  # float32 [num_outputs]: of the new events, at the temperature
  primer_length: int


class _Export:
  """A loaded music-rnn export: its config (model_config) and signatures."""

  FAMILY = configs.EVENT_RNN
  SIGNATURES = frozenset()  # what this wrapper calls, besides model_config

  def __init__(self, path: str):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self._tf = tf
    self.path = path
    self.loaded = _load_saved_model(path)
    if 'model_config' not in self.loaded.signatures:
      raise ValueError(f'{path} is a SavedModel but not a music-rnn export (it has no '
                       'model_config signature): give a model pushed by `music-rnn run`')
    self.config = json.loads(
        self.loaded.signatures['model_config']()['config_json'].numpy().decode())
    if self.family != self.FAMILY:
      raise ValueError(f'{path} is a {self.name} model ({_FAMILY_NAMES[self.family]}): '
                       f'{_FAMILY_COMMANDS[self.family]}')
    missing = self.SIGNATURES - set(self.loaded.signatures)
    if missing:
      raise ValueError(f'{path} has no {sorted(missing)} signature(s): it was exported '
                       'by an older version; re-run the pipeline with --no-cache')

  @property
  def name(self) -> str:
    return self.config['name']

  @property
  def family(self) -> str:
    return self.config.get('family', configs.EVENT_RNN)  # older exports: event RNNs

  @property
  def is_drums(self) -> bool:
    return self.config['kind'] == configs.DRUMS

  @property
  def steps_per_quarter(self) -> int:
    settings = self.config.get('extractor') or self.config['converter']
    return int(settings['steps_per_quarter'])


_FAMILY_NAMES = {configs.EVENT_RNN: 'an event RNN', configs.MUSIC_VAE: 'a MusicVAE'}
_FAMILY_COMMANDS = {
    configs.EVENT_RNN: 'it continues primers; use `music-rnn generate`',
    configs.MUSIC_VAE: 'it samples and interpolates 2-bar phrases; use `music-rnn sample` '
                       'or `music-rnn interpolate`',
}


def check_family(config_name: str, family: str) -> None:
  """A usage error unless the named config is of `family` (before anything loads)."""
  config = configs.get_config(config_name)
  if config.family != family:
    raise ValueError(f'{config_name} is {_FAMILY_NAMES[config.family]} config: '
                     f'{_FAMILY_COMMANDS[config.family]}')


class Model(_Export):
  """An event RNN export: the generation signatures."""

  SIGNATURES = frozenset({'generate', 'prime', 'extend'})

  # --- Calling the signatures.

  def _prime(self, primer: np.ndarray):
    out = self.loaded.signatures['prime'](primer=self._tf.constant(primer, self._tf.int64))
    return out['events'].numpy(), out['state'].numpy(), out['transpose_amount'].numpy()

  def _extend(self, events, state, num_steps, temperature, seed):
    tf = self._tf
    out = self.loaded.signatures['extend'](
        events=tf.constant(events, tf.int64), state=tf.constant(state, tf.float32),
        num_steps=tf.constant(num_steps, tf.int32),
        temperature=tf.constant(temperature, tf.float32), seed=tf.constant(seed, tf.int64))
    return out['events'].numpy(), out['state'].numpy(), out['log_likelihood'].numpy()

  def _to_user_space(self, events, amount, primer):
    """Transposes the continuation back (Melody.transpose(-amount), folded into 0..127,
    as the generate signature does) and puts the caller's primer in front."""
    from music_rnn import encoding  # pylint: disable=g-import-not-at-top
    new = events[:, primer.shape[1]:]
    if not self.is_drums:
      new = encoding.transpose_melodies(self._tf.constant(new, self._tf.int64),
                                        self._tf.constant(-amount, self._tf.int64)).numpy()
    return np.concatenate([np.broadcast_to(primer, (len(new), primer.shape[1])), new], 1)

  def generate(self, primer: Sequence[int], num_steps: int, *, num_outputs: int = 1,
               temperature: float = 1.0, seed: int = 0, beam_size: int = 1,
               branch_factor: int = 1, steps_per_iteration: int = 1,
               progress: Progress = None) -> Generated:
    """Continues `primer` by `num_steps` events, `num_outputs` times.

    Plain sampling (beam_size = branch_factor = 1) gives exactly what the `generate`
    signature gives for the primer repeated num_outputs times; it runs in pieces only
    to report progress. Otherwise Magenta's beam search runs once per output.
    """
    primer = np.asarray([list(primer)], np.int64)
    if primer.shape[1] < 1:
      raise ValueError('the primer needs at least one event')
    for name, value in (('num_steps', num_steps), ('num_outputs', num_outputs),
                        ('beam_size', beam_size), ('branch_factor', branch_factor),
                        ('steps_per_iteration', steps_per_iteration)):
      if int(value) < 1:
        raise ValueError(f'{name} must be >= 1, got {value}')
    if not temperature > 0:
      raise ValueError(f'temperature must be > 0, got {temperature}')
    width = beam_size * branch_factor
    rows = num_outputs * width
    too_large = limits.too_large(primer.shape[1] + num_steps, rows)
    if too_large:  # the signatures would refuse it too, less readably
      raise ValueError(f'request too large: {too_large}')
    events, state, amount = self._prime(primer)
    events, state = np.repeat(events, rows, 0), np.repeat(state, rows, 0)
    scores = np.zeros(rows, np.float64)
    if width == 1:
      chunk = max(8, math.ceil(num_steps / 32))
      done = 0
      while done < num_steps:
        n = min(chunk, num_steps - done)
        events, state, ll = self._extend(events, state, n, temperature, seed)
        scores += ll
        done += n
        if progress:
          progress(n)
      best = np.arange(num_outputs)
    else:
      events, scores = self._beam_search(events, state, num_steps, temperature, seed,
                                         num_outputs, beam_size, branch_factor,
                                         steps_per_iteration, progress)
      best = np.array([o * width + int(np.argmax(scores[o * width:(o + 1) * width]))
                       for o in range(num_outputs)])
    return Generated(events=self._to_user_space(events[best], np.repeat(amount, len(best)),
                                                primer),
                     log_likelihood=scores[best].astype(np.float32),
                     primer_length=primer.shape[1])

  def _beam_search(self, events, state, num_steps, temperature, seed, num_outputs,
                   beam_size, branch_factor, steps_per_iteration, progress):
    """Magenta's beam_search, one independent beam per output, all in one batch.

    Start with beam_size * branch_factor copies; the first iteration takes
    (num_steps - 1) % steps_per_iteration + 1 steps so the later ones all take
    steps_per_iteration; between iterations keep the beam_size best (by the summed
    log-probability of the sampled events) and branch each branch_factor times.
    """
    width = beam_size * branch_factor
    first = (num_steps - 1) % steps_per_iteration + 1
    scores = np.zeros(len(events), np.float64)
    events, state, ll = self._extend(events, state, first, temperature, seed)
    scores += ll
    if progress:
      progress(first)
    for _ in range((num_steps - first) // steps_per_iteration):
      keep = []
      for o in range(num_outputs):
        group = scores[o * width:(o + 1) * width]
        best = np.argsort(-group, kind='stable')[:beam_size] + o * width
        keep.append(np.tile(best, branch_factor))  # Magenta: beam_entries * branch_factor
      keep = np.concatenate(keep)
      events, state, scores = events[keep], state[keep], scores[keep]
      events, state, ll = self._extend(events, state, steps_per_iteration, temperature, seed)
      scores += ll
      if progress:
        progress(steps_per_iteration)
    return events, scores


class VaeModel(_Export):
  """A MusicVAE export: sample, interpolate, encode and decode 2-bar slices (events in
  the serving format: drum class indices, melody events with pitches 21..108)."""

  FAMILY = configs.MUSIC_VAE
  SIGNATURES = frozenset({'encode', 'decode', 'sample', 'interpolate'})

  @property
  def slice_steps(self) -> int:
    return int(self.config['hparams']['max_seq_len'])

  @property
  def pitch_range(self) -> Tuple[int, int]:
    return int(self.config['converter']['min_pitch']), int(self.config['converter']['max_pitch'])

  def _call(self, signature: str, **inputs) -> dict:
    tf = self._tf
    dtypes = {'events': tf.int64, 'events_a': tf.int64, 'events_b': tf.int64,
              'z': tf.float32, 'temperature': tf.float32, 'seed': tf.int64,
              'n': tf.int32, 'num_steps': tf.int32}
    out = self.loaded.signatures[signature](
        **{k: tf.constant(v, dtypes[k]) for k, v in inputs.items()})
    return {k: v.numpy() for k, v in out.items()}

  def sample(self, n: int, temperature: float = 1.0, seed: int = 0) -> np.ndarray:
    """int64 [n, slice_steps]: decoded from z ~ N(0, I)."""
    return self._call('sample', n=n, temperature=temperature, seed=seed)['events']

  def interpolate(self, events_a: Sequence[int], events_b: Sequence[int], num_steps: int,
                  temperature: float = 1.0, seed: int = 0) -> np.ndarray:
    """int64 [num_steps, slice_steps]: from (the decoded) A to B on the slerp of their
    encodings' means."""
    out = self._call('interpolate', events_a=[list(events_a)], events_b=[list(events_b)],
                     num_steps=num_steps, temperature=temperature, seed=seed)
    return out['events'][0]

  def encode(self, events, seed: int = 0) -> dict:
    """{'mu', 'sigma', 'z'} float32 [B, z_size] of events [B, slice_steps]."""
    return self._call('encode', events=events, seed=seed)

  def decode(self, z, temperature: float = 1.0, seed: int = 0) -> np.ndarray:
    """int64 [B, slice_steps] decoded from z [B, z_size]."""
    return self._call('decode', z=z, temperature=temperature, seed=seed)['events']


# --- Primers (Magenta's syntax). -------------------------------------------------------


def _is_int(value) -> bool:
  """An int that is not a bool (True would otherwise pass as pitch 1)."""
  return isinstance(value, int) and not isinstance(value, bool)


def _literal(text: str, flag: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    raise ValueError(f'{flag}: cannot parse {text!r} as a Python list') from None


def parse_drum_primer(text: str, flag: str = '--primer-drums') -> List[int]:
  """'[(36, 42), (), (42,)]' -> drum class indices (unknown pitches ignored, as note-seq)."""
  value = _literal(text, flag)
  if not isinstance(value, (list, tuple)) or not value:
    raise ValueError(f'{flag}: expected a non-empty list of pitch tuples, got {text!r}')
  steps = []
  for step in value:
    if _is_int(step):
      step = (step,)
    if not isinstance(step, (list, tuple, set, frozenset)) or not all(
        _is_int(p) and 0 <= p <= 127 for p in step):
      raise ValueError(f'{flag}: each step must be a tuple of int MIDI pitches 0..127, '
                       f'got {step!r}')
    steps.append(step)
  return events_lib.drum_events_to_class_indices(steps)


def parse_melody_primer(text: str, flag: str = '--primer-melody') -> List[int]:
  """'[60, -2, 60, -2, 67, -2, 67, -2]' -> melody events (-2 no event, -1 note off)."""
  value = _literal(text, flag)
  if not isinstance(value, (list, tuple)) or not value:
    raise ValueError(f'{flag}: expected a non-empty list of events, got {text!r}')
  for event in value:
    if not _is_int(event) or not -2 <= event <= 127:
      raise ValueError(f'{flag}: events must be -2 (no event), -1 (note off) or a '
                       f'MIDI pitch 0..127, got {event!r}')
  return list(value)


def read_midi(path: str, flag: str = '--primer-midi'):
  """A MIDI file -> NoteSequence, with one-line errors for a missing, empty or damaged
  file (before the model is loaded, so a typo fails at once)."""
  import note_seq  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{flag} {path}: no such file')
  if not os.path.getsize(path):
    raise ValueError(f'{flag} {path}: the file is empty; give a standard MIDI file')
  try:
    sequence = note_seq.midi_file_to_note_sequence(path)
  except Exception as e:  # pylint: disable=broad-except; pretty_midi / mido raise many kinds
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise ValueError(f'{flag} {path}: not a readable MIDI file ({reason}); give a '
                     'standard MIDI file (.mid)') from None
  if not sequence.notes:
    raise ValueError(f'{flag} {path}: the file has no notes')
  return sequence


def primer_from_midi(path: str, model: Model) -> Tuple[List[int], Optional[float]]:
  """A MIDI file -> (events, its tempo or None), as Magenta's generators read primers
  (primer_from_sequence)."""
  return primer_from_sequence(read_midi(path), model, path)


def primer_from_sequence(sequence, model: Model,
                         path: str) -> Tuple[List[int], Optional[float]]:
  """A primer NoteSequence read from `path` (read_midi) -> (events, its tempo or None).

  Quantized at the model's steps per quarter; the first drum track / melody (no gap
  limit, no minimum length, polyphony resolved to the highest note) from the bar of its
  first note, up to the end of its last note.
  """
  from note_seq import sequences_lib  # pylint: disable=g-import-not-at-top
  from music_rnn import extraction  # pylint: disable=g-import-not-at-top
  qpm = sequence.tempos[0].qpm if sequence.tempos and sequence.tempos[0].qpm else None
  try:
    quantized = sequences_lib.quantize_note_sequence(sequence, model.steps_per_quarter)
  except Exception as e:  # pylint: disable=broad-except; note_seq raises many kinds
    raise ValueError(f'--primer-midi {path}: cannot quantize it: {e}') from None
  steps_per_bar = sequences_lib.steps_per_bar_in_quantized_sequence(quantized)
  if steps_per_bar % 1:
    raise ValueError(f'--primer-midi {path}: its time signature gives a fractional bar')
  ext = configs.ExtractorConfig(steps_per_quarter=model.steps_per_quarter, min_bars=0,
                                max_steps=None, gap_bars=float('inf'), min_unique_pitches=1,
                                ignore_polyphonic_notes=True)
  stats = collections.Counter()
  # The project's Magenta-identical extractors.
  if model.is_drums:
    found = extraction.extract_drum_tracks(quantized, int(steps_per_bar), ext, stats)
  else:
    found = extraction.extract_melodies(quantized, int(steps_per_bar), ext, stats)
  if not found:
    raise ValueError(f'--primer-midi {path}: no {"drums" if model.is_drums else "melody"} '
                     'found in it')
  start, events = found[0]
  last_end = max(n.quantized_end_step for n in quantized.notes)
  if model.is_drums:
    events = list(events) + [()] * max(0, last_end - start - len(events))
    return events_lib.drum_events_to_class_indices(events), qpm
  return list(events) + [configs.MELODY_NOTE_OFF], qpm  # end the last note


# --- MusicVAE inputs: one 2-bar slice, from an event list or a MIDI file. ------------


def is_event_list(text: str) -> bool:
  """--input-a / --input-b: an event list (Python syntax) rather than a MIDI file."""
  return text.lstrip().startswith(('[', '('))


def parse_slice(text: str, config, flag: str) -> Tuple[List[int], str]:
  """An event list (drums as --primer-drums, melodies as --primer-melody) -> one slice of
  the config's length in the serving format, and a note saying how it was read.

  A shorter list is padded with rests (drums: no hits; melody: -2, which holds its last
  note); a longer one, or melody pitches outside the model's range, is an error.
  """
  steps = config.hparams.max_seq_len
  if config.kind == configs.DRUMS:
    events, rest = parse_drum_primer(text, flag), 0
  else:
    events, rest = parse_melody_primer(text, flag), configs.MELODY_NO_EVENT
    low, high = config.converter.min_pitch, config.converter.max_pitch
    outside = [e for e in events if e >= 0 and not low <= e <= high]
    if outside:
      raise ValueError(f'{flag}: {config.name} melodies hold pitches {low}..{high} '
                       f'(Magenta\'s converter range); got {outside[:5]}')
  if len(events) > steps:
    raise ValueError(f'{flag}: a {config.name} input is one 2-bar slice of at most {steps} '
                     f'events; got {len(events)}')
  note = f'{flag}: {len(events)} events'
  if len(events) < steps:
    note += f', padded with rests to {steps}'
  return list(events) + [rest] * (steps - len(events)), note


def slice_from_sequence(sequence, config, path: str,
                        flag: str) -> Tuple[List[int], Optional[float], str]:
  """A NoteSequence read from `path` -> (its first 2-bar slice as Magenta's converter
  cuts it, the tempo or None, a note saying which slice).

  The slices are what the ExampleGen extracts for the config (extraction.py, Magenta's
  DrumsConverter / OneHotMelodyConverter): no slice is an error naming the reasons.
  """
  from music_rnn import extraction  # pylint: disable=g-import-not-at-top
  stats = collections.Counter()
  found = extraction.extract_sequences(sequence, config, stats)
  if not found:
    reasons = ', '.join(f'{k}={v}' for k, v in sorted(stats.items()) if v and
                        k != 'sequences_processed')
    raise ValueError(f'{flag} {path}: no 2-bar {config.kind} slice in it, as '
                     f'{config.name} reads MIDI (Magenta\'s converter: {reasons or "nothing"}'
                     '); give a file with 2 bars of 4/4 drums / melody')
  first = found[0]
  qpm = sequence.tempos[0].qpm if sequence.tempos and sequence.tempos[0].qpm else None
  bar = first.start_step // first.steps_per_bar + 1
  note = (f'{flag} {path}: bars {bar}-{bar + config.converter.slice_bars - 1}'
          + (f' (the first of {len(found)} 2-bar slices)' if len(found) > 1 else ''))
  if config.kind == configs.DRUMS:
    return events_lib.drum_events_to_class_indices(first.events), qpm, note
  return list(first.events), qpm, note


# --- Events -> NoteSequence, MIDI, piano roll. ---------------------------------------


def to_note_sequence(events: Sequence[int], is_drums: bool, qpm: float = DEFAULT_QPM,
                     steps_per_quarter: int = 4):
  """Events -> a NoteSequence as long as the events (note_seq's to_sequence conventions:
  drum hits last one step on channel 10; a melody note lasts until the next note-off or
  note)."""
  from note_seq.protobuf import music_pb2  # pylint: disable=g-import-not-at-top
  seconds = 60.0 / qpm / steps_per_quarter
  sequence = music_pb2.NoteSequence()
  sequence.tempos.add(qpm=qpm)
  sequence.ticks_per_quarter = 220
  instrument = _DRUM_PROGRAM_CHANNEL if is_drums else 0

  def add(pitch, start, end):
    sequence.notes.add(pitch=int(pitch), velocity=_VELOCITY, instrument=instrument,
                       program=0, is_drum=is_drums, start_time=start * seconds,
                       end_time=end * seconds)

  if is_drums:
    for step, index in enumerate(events):
      for pitch in events_lib.class_index_to_drum_event(int(index)):
        add(pitch, step, step + 1)
  else:
    pitch, onset = None, 0
    for step, event in enumerate(list(events) + [configs.MELODY_NOTE_OFF]):
      if event == configs.MELODY_NO_EVENT:
        continue
      if pitch is not None:
        add(pitch, onset, step)
      pitch, onset = (event, step) if event >= 0 else (None, step)
  sequence.total_time = len(events) * seconds
  # MIDI files end at their last event: mark the end so trailing silence is kept.
  sequence.control_changes.add(time=sequence.total_time, control_number=_ALL_NOTES_OFF,
                               control_value=0, instrument=instrument, is_drum=is_drums)
  return sequence


def write_midi(sequence, path: str) -> None:
  import note_seq  # pylint: disable=g-import-not-at-top
  note_seq.sequence_proto_to_midi_file(sequence, path)


_DRUM_NAMES = ['kick', 'snare', 'closed hh', 'open hh', 'low tom', 'mid tom', 'high tom',
               'crash', 'ride']


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _melody_notes(events: Sequence[int]):
  return to_note_sequence(events, False, qpm=60.0, steps_per_quarter=1).notes  # 1 s per step


def _draw_roll(ax, events: Sequence[int], is_drums: bool, pitches: Optional[Sequence[int]] = None,
               y_labels: bool = True) -> None:
  """One piano roll on `ax`: a row per drum type, or per MIDI pitch (y range: the
  `pitches` given, else the events' own)."""
  plt = _pyplot()
  if is_drums:
    for step, index in enumerate(events):
      for t in range(configs.NUM_DRUM_CLASSES):
        if int(index) >> t & 1:
          ax.add_patch(plt.Rectangle((step + 0.05, t - 0.4), 0.9, 0.8, color='tab:blue'))
    ax.set_ylim(-0.6, configs.NUM_DRUM_CLASSES - 0.4)
    ax.set_yticks(range(configs.NUM_DRUM_CLASSES))
    ax.set_yticklabels(_DRUM_NAMES)
  else:
    notes = _melody_notes(events)
    for n in notes:
      ax.add_patch(plt.Rectangle((n.start_time + 0.05, n.pitch - 0.4),
                                 n.end_time - n.start_time - 0.1, 0.8, color='tab:blue'))
    pitches = list(pitches or [n.pitch for n in notes]) or [60]
    ax.set_ylim(min(pitches) - 2, max(pitches) + 2)
    if y_labels:
      ax.set_ylabel('MIDI pitch')
  if not y_labels:
    ax.tick_params(labelleft=False)
  ax.set_xlim(0, len(events))


def write_piano_roll(events: Sequence[int], is_drums: bool, path: str, title: str,
                     primer_length: int = 0) -> None:
  """A piano-roll PNG: one row per pitch (drums: per drum type), the primer shaded."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(min(4 + len(events) / 16, 40), 4))
  _draw_roll(ax, events, is_drums)
  if primer_length:
    ax.axvspan(0, primer_length, color='0.9', zorder=0, label='primer')
    ax.legend(loc='upper right')
  ax.set_xlabel('step (16th note)')
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def write_piano_roll_panels(rows: Sequence[Sequence[int]], is_drums: bool, path: str,
                            titles: Sequence[str], title: str, columns: int) -> None:
  """Several piano rolls in one PNG, `columns` per line, on one pitch scale: an
  interpolation as one strip (columns = len(rows)), samples as a grid."""
  plt = _pyplot()
  lines = math.ceil(len(rows) / columns)
  fig, axes = plt.subplots(lines, columns, squeeze=False, sharey=True,
                           figsize=(1.2 + 2.4 * columns, 0.6 + 2.4 * lines))
  pitches = None
  if not is_drums:
    pitches = [n.pitch for events in rows for n in _melody_notes(events)] or [60]
  for i, ax in enumerate(axes.ravel()):
    if i >= len(rows):
      ax.axis('off')
      continue
    _draw_roll(ax, rows[i], is_drums, pitches, y_labels=i % columns == 0)
    ax.set_xticks(range(0, len(rows[i]) + 1, 16))  # bar lines (16 steps a bar)
    ax.grid(axis='x', color='0.6', linewidth=0.8)
    ax.set_title(titles[i], fontsize=10)
  fig.suptitle(title)
  fig.supxlabel('step (16th note)', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def _stem(stem: Optional[str]) -> str:
  return stem or datetime.datetime.now().strftime('%Y-%m-%d_%H%M%S')


def _slice_midi(model: VaeModel, events, path: str, qpm: float) -> str:
  write_midi(to_note_sequence(events, model.is_drums, qpm, model.steps_per_quarter), path)
  return path


def _join_slices(slices: Sequence[Sequence[int]], is_drums: bool) -> np.ndarray:
  """Slices back to back; a melody slice starting with 'no event' ends the note held
  over from the slice before (each slice starts afresh, as it was decoded)."""
  joined = [np.array(events, np.int64) for events in slices]
  if not is_drums:
    for events in joined[1:]:
      if events[0] == configs.MELODY_NO_EVENT:
        events[0] = configs.MELODY_NOTE_OFF
  return np.concatenate(joined)


def _numbered_midis(model: VaeModel, slices: np.ndarray, output_dir: str, stem: str,
                    qpm: float) -> List[str]:
  """<stem>_<i>.mid for each slice (i from 1, zero-padded to sort), in output_dir."""
  os.makedirs(output_dir, exist_ok=True)
  digits = len(str(len(slices)))
  return [_slice_midi(model, events, os.path.join(
      output_dir, f'{stem}_{str(i + 1).zfill(digits)}.mid'), qpm)
          for i, events in enumerate(slices)]


def write_samples(model: VaeModel, samples: np.ndarray, output_dir: str, qpm: float,
                  title: str, stem: Optional[str] = None) -> Tuple[List[str], str]:
  """One MIDI file per sample and one PNG with all of them as a grid of piano rolls;
  returns (MIDI paths, PNG path)."""
  stem = _stem(stem)
  mids = _numbered_midis(model, samples, output_dir, stem, qpm)
  png = os.path.join(output_dir, f'{stem}_samples.png')
  write_piano_roll_panels(samples, model.is_drums, png,
                          [f'#{i + 1}' for i in range(len(samples))], title,
                          columns=min(4, len(samples)))
  return mids, png


def write_interpolation(model: VaeModel, steps: np.ndarray, output_dir: str, qpm: float,
                        title: str, stem: Optional[str] = None) -> Tuple[List[str], str]:
  """One MIDI file per interpolation step, one with all steps back to back (as Magenta's
  demos play an interpolation), and one PNG showing them as a strip of piano rolls;
  returns (MIDI paths, the whole one last; PNG path)."""
  stem = _stem(stem)
  mids = _numbered_midis(model, steps, output_dir, stem, qpm)
  mids.append(_slice_midi(model, _join_slices(steps, model.is_drums),
                          os.path.join(output_dir, f'{stem}_interpolation.mid'), qpm))
  png = os.path.join(output_dir, f'{stem}_interpolation.png')
  titles = ['A'] + [str(i + 1) for i in range(1, len(steps) - 1)] + ['B']
  write_piano_roll_panels(steps, model.is_drums, png, titles, title, columns=len(steps))
  return mids, png


def write_outputs(model: Model, generated: Generated, output_dir: str, qpm: float,
                  stem: Optional[str] = None) -> List[Tuple[str, str]]:
  """One MIDI file and one piano-roll PNG per output; returns their paths."""
  os.makedirs(output_dir, exist_ok=True)
  stem = stem or datetime.datetime.now().strftime('%Y-%m-%d_%H%M%S')
  digits = len(str(len(generated.events)))
  paths = []
  for i, events in enumerate(generated.events):
    base = os.path.join(output_dir, f'{stem}_{str(i + 1).zfill(digits)}')
    write_midi(to_note_sequence(events, model.is_drums, qpm, model.steps_per_quarter),
               base + '.mid')
    write_piano_roll(events, model.is_drums, base + '.png',
                     f'{model.name} #{i + 1}: log-likelihood '
                     f'{generated.log_likelihood[i]:.1f}', generated.primer_length)
    paths.append((base + '.mid', base + '.png'))
  return paths
