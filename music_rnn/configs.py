"""Named model configs (Magenta's `default_configs`), the one source of truth.

A config name selects the event extraction, the encoding and the default hparams:
the event RNNs (`drum_kit`, `basic_rnn`, `lookback_rnn`, `attention_rnn`: ModelConfig)
and the MusicVAEs (`cat-drums_2bar_small`, `cat-mel_2bar_small`: VaeConfig). The numbers
are Magenta's (magenta/models/drums_rnn/drums_rnn_model.py, melody_rnn/melody_rnn_model.py,
music_vae/configs.py, lstm_models.py, base_model.py, data.py; note_seq's
encoder-decoders); nothing else in the project repeats them. `config.family` tells the
two kinds apart wherever the pipeline differs (model, Transform outputs, signatures).
"""

import dataclasses
import json
from typing import Any, Dict, Optional, Tuple

DRUMS = 'drums'
MELODY = 'melody'

# Model families: what is trained on the extracted events.
EVENT_RNN = 'event_rnn'  # Drums RNN / Melody RNN: next-event prediction, primers
MUSIC_VAE = 'music_vae'  # MusicVAE: fixed-length slices through a latent space

# note_seq constants (melodies_lib, drums_encoder_decoder), restated once here.
MELODY_NO_EVENT = -2
MELODY_NOTE_OFF = -1
NUM_SPECIAL_MELODY_EVENTS = 2
NOTES_PER_OCTAVE = 12
DEFAULT_STEPS_PER_BAR = 16  # 4/4 at 4 steps per quarter
NUM_DRUM_CLASSES = 9  # note_seq.drums_encoder_decoder.DEFAULT_DRUM_TYPE_PITCHES

# Encodings (names of note-seq encoder-decoders).
ENCODING_MULTI_DRUM_LOOKBACK = 'lookback_multi_drum'  # LookbackEventSequenceEncoderDecoder(MultiDrumOneHotEncoding)
ENCODING_MELODY_ONE_HOT = 'one_hot_melody'  # OneHotEventSequenceEncoderDecoder(MelodyOneHotEncoding)
ENCODING_MELODY_LOOKBACK = 'lookback_melody'  # LookbackEventSequenceEncoderDecoder(MelodyOneHotEncoding)
ENCODING_KEY_MELODY = 'key_melody'  # KeyMelodyEncoderDecoder


def _check_replace(hparams, overrides: Dict[str, Any]) -> None:
  known = {f.name for f in dataclasses.fields(hparams)}
  unknown = sorted(set(overrides) - known)
  if unknown:
    raise ValueError(f'Unknown hparam(s) {unknown}; known: {sorted(known)}')


@dataclasses.dataclass(frozen=True)
class HParams:
  """Model/training hyperparameters (Magenta's HParams for the config)."""
  batch_size: int = 128
  rnn_layer_sizes: Tuple[int, ...] = (128, 128)
  dropout_keep_prob: float = 0.5
  attn_length: int = 0  # 0: no attention
  clip_norm: float = 5.0
  learning_rate: float = 0.001

  def replace(self, **overrides: Any) -> 'HParams':
    """Returns a copy with `overrides` applied; unknown names are an error."""
    _check_replace(self, overrides)
    if 'rnn_layer_sizes' in overrides:
      overrides['rnn_layer_sizes'] = tuple(int(s) for s in overrides['rnn_layer_sizes'])
    new = dataclasses.replace(self, **overrides)
    new.validate()
    return new

  def validate(self) -> None:
    if self.batch_size < 1:
      raise ValueError(f'batch_size must be >= 1, got {self.batch_size}')
    if not self.rnn_layer_sizes or any(s < 1 for s in self.rnn_layer_sizes):
      raise ValueError(f'rnn_layer_sizes must be positive ints, got {self.rnn_layer_sizes}')
    if not 0.0 < self.dropout_keep_prob <= 1.0:
      raise ValueError(f'dropout_keep_prob must be in (0, 1], got {self.dropout_keep_prob}')
    if self.attn_length < 0:
      raise ValueError(f'attn_length must be >= 0, got {self.attn_length}')
    if self.clip_norm <= 0:
      raise ValueError(f'clip_norm must be > 0, got {self.clip_norm}')
    if self.learning_rate <= 0:
      raise ValueError(f'learning_rate must be > 0, got {self.learning_rate}')

  def to_dict(self) -> Dict[str, Any]:
    d = dataclasses.asdict(self)
    d['rnn_layer_sizes'] = list(self.rnn_layer_sizes)
    return d


@dataclasses.dataclass(frozen=True)
class ExtractorConfig:
  """Magenta's dataset-pipeline settings (DrumsExtractor / MelodyExtractor)."""
  steps_per_quarter: int = 4
  min_bars: int = 7
  max_steps: int = 512  # longer sequences are truncated (max_steps_truncate)
  gap_bars: float = 1.0
  min_unique_pitches: int = 5  # melodies only
  ignore_polyphonic_notes: bool = False  # melodies only; Magenta's melody_rnn default
  eval_ratio: float = 0.1


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """One named model: what it extracts, how it encodes, its default hparams."""
  name: str
  kind: str  # DRUMS or MELODY
  encoding: str
  hparams: HParams
  description: str = ''
  extractor: ExtractorConfig = ExtractorConfig()
  lookback_distances: Tuple[int, ...] = ()
  binary_counter_bits: int = 0
  min_note: int = 48  # melody note range [min_note, max_note)
  max_note: int = 84
  transpose_to_key: Optional[int] = 0

  @property
  def num_classes(self) -> int:
    """Size of the softmax (label space)."""
    if self.kind == DRUMS:
      return 2 ** NUM_DRUM_CLASSES + len(self.lookback_distances)
    base = self.max_note - self.min_note + NUM_SPECIAL_MELODY_EVENTS
    if self.encoding == ENCODING_MELODY_ONE_HOT:
      return base
    return base + len(self.lookback_distances)

  @property
  def input_size(self) -> int:
    """Size of the per-step model input vector."""
    note_range = self.max_note - self.min_note
    if self.kind == DRUMS:
      one_hot = 2 ** NUM_DRUM_CLASSES
      return one_hot + len(self.lookback_distances) * one_hot + self.binary_counter_bits + (
          len(self.lookback_distances))
    if self.encoding == ENCODING_MELODY_ONE_HOT:
      return note_range + NUM_SPECIAL_MELODY_EVENTS
    if self.encoding == ENCODING_MELODY_LOOKBACK:
      one_hot = note_range + NUM_SPECIAL_MELODY_EVENTS
      return one_hot + len(self.lookback_distances) * one_hot + self.binary_counter_bits + (
          len(self.lookback_distances))
    if self.encoding == ENCODING_KEY_MELODY:
      return (note_range + 2 + 1 + 1 + len(self.lookback_distances) +
              self.binary_counter_bits + 1 + 2 * NOTES_PER_OCTAVE)
    raise ValueError(f'Unknown encoding {self.encoding}')

  @property
  def no_event_label(self) -> int:
    """Label of the 'nothing happens' event (empty drum set / MELODY_NO_EVENT).

    note-seq's default_event_label: 0 for the one-hot encodings, but the note range for
    KeyMelodyEncoderDecoder (whose labels put notes first, then the special events).
    """
    if self.encoding == ENCODING_KEY_MELODY:
      return self.max_note - self.min_note
    return 0

  def to_dict(self, hparams: Optional[HParams] = None) -> Dict[str, Any]:
    """JSON-able description; what an exported SavedModel records about itself."""
    return {
        'name': self.name,
        'kind': self.kind,
        'encoding': self.encoding,
        'description': self.description,
        'input_size': self.input_size,
        'num_classes': self.num_classes,
        'no_event_label': self.no_event_label,
        'lookback_distances': list(self.lookback_distances),
        'binary_counter_bits': self.binary_counter_bits,
        'min_note': self.min_note,
        'max_note': self.max_note,
        'transpose_to_key': self.transpose_to_key,
        'extractor': dataclasses.asdict(self.extractor),
        'hparams': (hparams or self.hparams).to_dict(),
    }

  def to_json(self, hparams: Optional[HParams] = None) -> str:
    return json.dumps(self.to_dict(hparams), sort_keys=True)

  family = EVENT_RNN


@dataclasses.dataclass(frozen=True)
class VaeHParams:
  """MusicVAE hyperparameters (Magenta's lstm_models/base_model get_default_hparams,
  merged with the config's), with Magenta's names."""
  batch_size: int = 512
  max_seq_len: int = 32
  z_size: int = 256
  enc_rnn_size: Tuple[int, ...] = (512,)  # per direction (BidirectionalLstmEncoder)
  dec_rnn_size: Tuple[int, ...] = (256, 256)
  dropout_keep_prob: float = 1.0
  free_bits: float = 0.0  # bits of KL not penalised (over the whole z)
  max_beta: float = 0.2  # KL weight, reached as (1 - beta_rate^step) * max_beta
  beta_rate: float = 0.0
  sampling_schedule: str = 'inverse_sigmoid'  # constant, exponential, inverse_sigmoid
  sampling_rate: float = 1000.0
  learning_rate: float = 0.001  # (learning_rate - min) * decay_rate^step + min
  decay_rate: float = 0.9999
  min_learning_rate: float = 0.00001
  grad_clip: float = 1.0  # global norm
  grad_norm_clip_to_zero: float = 10000.0  # a step whose global norm exceeds it is skipped

  def replace(self, **overrides: Any) -> 'VaeHParams':
    """Returns a copy with `overrides` applied; unknown names are an error."""
    _check_replace(self, overrides)
    for name in ('enc_rnn_size', 'dec_rnn_size'):
      if name in overrides:
        overrides[name] = tuple(int(s) for s in overrides[name])
    new = dataclasses.replace(self, **overrides)
    new.validate()
    return new

  def validate(self) -> None:
    for name in ('batch_size', 'max_seq_len', 'z_size'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be >= 1, got {getattr(self, name)}')
    for name in ('enc_rnn_size', 'dec_rnn_size'):
      sizes = getattr(self, name)
      if not sizes or any(s < 1 for s in sizes):
        raise ValueError(f'{name} must be positive ints, got {sizes}')
    if not 0.0 < self.dropout_keep_prob <= 1.0:
      raise ValueError(f'dropout_keep_prob must be in (0, 1], got {self.dropout_keep_prob}')
    if self.free_bits < 0 or self.max_beta < 0:
      raise ValueError(f'free_bits and max_beta must be >= 0, got {self.free_bits}, '
                       f'{self.max_beta}')
    if not 0.0 <= self.beta_rate < 1.0:
      raise ValueError(f'beta_rate must be in [0, 1), got {self.beta_rate}')
    if self.sampling_schedule not in ('constant', 'exponential', 'inverse_sigmoid'):
      raise ValueError('sampling_schedule must be constant, exponential or inverse_sigmoid, '
                       f'got {self.sampling_schedule!r}')
    if self.sampling_rate < 0:
      raise ValueError(f'sampling_rate must be >= 0, got {self.sampling_rate}')
    if not 0 < self.min_learning_rate <= self.learning_rate:
      raise ValueError(f'need 0 < min_learning_rate <= learning_rate, got '
                       f'{self.min_learning_rate}, {self.learning_rate}')
    if not 0.0 < self.decay_rate <= 1.0:
      raise ValueError(f'decay_rate must be in (0, 1], got {self.decay_rate}')
    if self.grad_clip <= 0 or self.grad_norm_clip_to_zero <= 0:
      raise ValueError(f'grad_clip and grad_norm_clip_to_zero must be > 0, got '
                       f'{self.grad_clip}, {self.grad_norm_clip_to_zero}')

  def to_dict(self) -> Dict[str, Any]:
    d = dataclasses.asdict(self)
    d['enc_rnn_size'] = list(self.enc_rnn_size)
    d['dec_rnn_size'] = list(self.dec_rnn_size)
    return d


@dataclasses.dataclass(frozen=True)
class ConverterConfig:
  """Magenta's MusicVAE data converter (DrumsConverter / OneHotMelodyConverter) settings."""
  steps_per_quarter: int = 4
  quarters_per_bar: int = 4
  slice_bars: int = 2
  max_bars: int = 100  # longer extracted tracks are discarded before slicing
  gap_bars: float = 1.0
  max_tensors_per_notesequence: int = 5  # slices sampled per NoteSequence in training
  eval_ratio: float = 0.1
  # Drums: roll input (9 hit bits + a "no hits" bit).
  roll_input: bool = True
  # Melody: pitch range [min_pitch, max_pitch] (inclusive, Magenta's), the MIDI programs
  # taken (MEL_PROGRAMS: 0-31), polyphony resolved by keeping the highest note, and the
  # transposition augmentation range used in training.
  min_pitch: int = 21
  max_pitch: int = 108
  valid_programs: Tuple[int, ...] = tuple(range(32))
  skip_polyphony: bool = False
  transpose_range: Tuple[int, int] = (0, 0)

  @property
  def steps_per_bar(self) -> int:
    return self.steps_per_quarter * self.quarters_per_bar

  @property
  def slice_steps(self) -> int:
    return self.slice_bars * self.steps_per_bar


@dataclasses.dataclass(frozen=True)
class VaeConfig:
  """One named MusicVAE config: what it slices, its class space, its default hparams."""
  name: str
  kind: str  # DRUMS or MELODY: which raw event features (features.raw_event_features)
  hparams: VaeHParams
  converter: ConverterConfig
  description: str = ''
  family = MUSIC_VAE

  @property
  def num_classes(self) -> int:
    """Decoder softmax size: drum hit patterns (2^9) or melody events (pitches + 2)."""
    if self.kind == DRUMS:
      return 2 ** NUM_DRUM_CLASSES
    return self.converter.max_pitch - self.converter.min_pitch + 1 + NUM_SPECIAL_MELODY_EVENTS

  @property
  def input_size(self) -> int:
    """Encoder input width: the drum roll (+ no-hit bit) or the one-hot melody event."""
    if self.kind == DRUMS and self.converter.roll_input:
      return NUM_DRUM_CLASSES + 1
    return self.num_classes

  @property
  def no_event_label(self) -> int:
    return 0  # the empty drum set / MELODY_NO_EVENT, as in the RNN one-hot encodings

  @property
  def extractor(self) -> ConverterConfig:
    """What the ExampleGen's split reads (eval_ratio), named as for ModelConfig."""
    return self.converter

  def to_dict(self, hparams: Optional[VaeHParams] = None) -> Dict[str, Any]:
    converter = dataclasses.asdict(self.converter)
    converter['valid_programs'] = list(self.converter.valid_programs)
    converter['transpose_range'] = list(self.converter.transpose_range)
    return {
        'name': self.name,
        'family': self.family,
        'kind': self.kind,
        'description': self.description,
        'input_size': self.input_size,
        'num_classes': self.num_classes,
        'no_event_label': self.no_event_label,
        'converter': converter,
        'hparams': (hparams or self.hparams).to_dict(),
    }

  def to_json(self, hparams: Optional[VaeHParams] = None) -> str:
    return json.dumps(self.to_dict(hparams), sort_keys=True)


CONFIGS: Dict[str, Any] = {
    c.name: c for c in [
        ModelConfig(
            name='drum_kit',
            kind=DRUMS,
            encoding=ENCODING_MULTI_DRUM_LOOKBACK,
            description='Drums RNN with multiple drums and binary counters.',
            lookback_distances=(),
            binary_counter_bits=6,
            hparams=HParams(batch_size=128, rnn_layer_sizes=(256, 256, 256),
                            dropout_keep_prob=0.5, attn_length=32, clip_norm=3.0,
                            learning_rate=0.001)),
        ModelConfig(
            name='basic_rnn',
            kind=MELODY,
            encoding=ENCODING_MELODY_ONE_HOT,
            description='Melody RNN with one-hot encoding.',
            hparams=HParams(batch_size=128, rnn_layer_sizes=(128, 128),
                            dropout_keep_prob=0.5, clip_norm=5.0, learning_rate=0.001)),
        ModelConfig(
            name='lookback_rnn',
            kind=MELODY,
            encoding=ENCODING_MELODY_LOOKBACK,
            description='Melody RNN with lookback encoding.',
            lookback_distances=(DEFAULT_STEPS_PER_BAR, 2 * DEFAULT_STEPS_PER_BAR),
            binary_counter_bits=5,
            hparams=HParams(batch_size=128, rnn_layer_sizes=(128, 128),
                            dropout_keep_prob=0.5, clip_norm=5.0, learning_rate=0.001)),
        ModelConfig(
            name='attention_rnn',
            kind=MELODY,
            encoding=ENCODING_KEY_MELODY,
            description='Melody RNN with lookback encoding and attention.',
            lookback_distances=(DEFAULT_STEPS_PER_BAR, 2 * DEFAULT_STEPS_PER_BAR),
            binary_counter_bits=7,
            hparams=HParams(batch_size=128, rnn_layer_sizes=(128, 128),
                            dropout_keep_prob=0.5, attn_length=40, clip_norm=3.0,
                            learning_rate=0.001)),
        VaeConfig(
            name='cat-drums_2bar_small',
            kind=DRUMS,
            description='MusicVAE: 2-bar drums, 9 drum classes, categorical decoder.',
            converter=ConverterConfig(roll_input=True),
            hparams=VaeHParams(free_bits=48, max_beta=0.2, beta_rate=0.0)),
        VaeConfig(
            name='cat-mel_2bar_small',
            kind=MELODY,
            description='MusicVAE: 2-bar melodies, 90 classes, categorical decoder.',
            converter=ConverterConfig(roll_input=False, transpose_range=(-5, 5)),
            hparams=VaeHParams(free_bits=0, max_beta=0.2, beta_rate=0.99999)),
    ]
}


def is_vae(config: Any) -> bool:
  return config.family == MUSIC_VAE


def names(family: Optional[str] = None) -> list:
  """The config names, sorted; of one family (EVENT_RNN or MUSIC_VAE) if given."""
  return sorted(n for n, c in CONFIGS.items() if family in (None, c.family))


def get_config(name: str):
  """Looks a config up by name, with a clear error listing the valid names."""
  try:
    return CONFIGS[name]
  except KeyError:
    raise ValueError(
        f'Unknown model config {name!r}; choose one of {sorted(CONFIGS)}') from None


def parse_hparams(text: str) -> Dict[str, Any]:
  """Parses Magenta's --hparams syntax, e.g. 'batch_size=64,rnn_layer_sizes=[64,64]'.

  Values are JSON-ish (numbers, lists, "strings"); names are checked against HParams or
  VaeHParams (the config's own class checks again when the config is known).
  """
  overrides: Dict[str, Any] = {}
  if not text or not text.strip():
    return overrides
  parts, depth, current = [], 0, ''
  for ch in text:
    depth += ch == '['
    depth -= ch == ']'
    if ch == ',' and depth == 0:
      parts.append(current)
      current = ''
    else:
      current += ch
  parts.append(current)
  known = {f.name for cls in (HParams, VaeHParams) for f in dataclasses.fields(cls)}
  for part in parts:
    if '=' not in part:
      raise ValueError(f'Bad hparam {part!r}: expected name=value in {text!r}')
    name, value = (s.strip() for s in part.split('=', 1))
    if name not in known:
      raise ValueError(f'Unknown hparam {name!r}; known: {sorted(known)}')
    try:
      overrides[name] = json.loads(value)
    except json.JSONDecodeError:
      if not value.isidentifier():  # a bare word is a string (sampling_schedule=constant)
        raise ValueError(f'Bad value for hparam {name!r}: {value!r}') from None
      overrides[name] = value
  for cls in (HParams, VaeHParams):  # validates types and ranges where the names fit
    names = {f.name for f in dataclasses.fields(cls)}
    if set(overrides) <= names:
      cls().replace(**overrides)
      break
  else:
    raise ValueError(f'hparams {sorted(overrides)} mix event-RNN and MusicVAE names')
  return overrides
