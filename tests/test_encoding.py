"""The TF encoders and preprocessing_fn against note-seq's encoder-decoders (the oracle)."""

import functools
import random

import apache_beam as beam
from apache_beam.testing import util as beam_util
import note_seq
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam
from note_seq import drums_encoder_decoder
from tensorflow_transform.tf_metadata import schema_utils
from tfx_bsl.public import tfxio

from music_rnn import configs
from music_rnn import encoding
from music_rnn import events as events_lib
from music_rnn import features
from music_rnn import preprocessing

MIN_NOTE, MAX_NOTE = 48, 84  # Magenta's DEFAULT_MIN_NOTE / DEFAULT_MAX_NOTE


def magenta_encoder_decoder(name):
  """Each config's encoder-decoder exactly as Magenta's default_configs builds it."""
  if name == 'drum_kit':
    return note_seq.LookbackEventSequenceEncoderDecoder(
        note_seq.MultiDrumOneHotEncoding(), lookback_distances=[], binary_counter_bits=6)
  if name == 'basic_rnn':
    return note_seq.OneHotEventSequenceEncoderDecoder(
        note_seq.MelodyOneHotEncoding(min_note=MIN_NOTE, max_note=MAX_NOTE))
  if name == 'lookback_rnn':
    return note_seq.LookbackEventSequenceEncoderDecoder(
        note_seq.MelodyOneHotEncoding(min_note=MIN_NOTE, max_note=MAX_NOTE))
  if name == 'attention_rnn':
    return note_seq.KeyMelodyEncoderDecoder(min_note=MIN_NOTE, max_note=MAX_NOTE)
  raise ValueError(name)


# --- Event generators. ----------------------------------------------------------------


def random_melody(rng, length):
  """Anything note-seq accepts: notes over the whole MIDI range, stray note-offs."""
  return [rng.choice([-2, -2, -2, -1, rng.randrange(128)]) for _ in range(length)]


def real_melody(rng, length):
  """Held notes in a random key, leading rest, repeated bars (so lookback labels fire)."""
  key, octave = rng.randrange(12), rng.choice([2, 3, 5, 6, 7])  # often outside [48, 84)
  scale = [key + 12 * octave + s for s in (0, 2, 4, 5, 7, 9, 11, 12, 14)]
  events = [-2] * rng.randrange(0, 20) + [-1] * rng.randrange(0, 2)
  while len(events) < length:
    if rng.random() < 0.3 and len(events) >= 32:
      start = len(events) - rng.choice([16, 32])
      events += events[start:start + 16]
    else:
      events += [min(rng.choice(scale), 127)] + [-2] * rng.choice([0, 1, 1, 3, 7])
      if rng.random() < 0.3:
        events += [-1] + [-2] * rng.randrange(3)
  return events[:length]


def random_drums(rng, length):
  """Pitch sets over the whole MIDI range: most pitches are no drum and get ignored."""
  return [frozenset(rng.randrange(128) for _ in range(rng.choice([0, 0, 1, 2, 4])))
          for _ in range(length)]


def real_drums(rng, length):
  bar = [frozenset(p for p, prob in ((36, .3), (38, .25), (42, .6), (46, .1), (51, .1), (99, .1))
                   if rng.random() < prob) for _ in range(16)]
  return [bar[i % 16] if rng.random() < .8 else frozenset({rng.randrange(20, 90)})
          for i in range(length)]


MELODY_CASES = [([], 'empty'), ([60], 'one note'), ([-2], 'one rest'), ([-1, -1, 60, -1], 'offs'),
                ([-2] * 40, 'silence'), ([0, -2, 127, -1, 5], 'extremes'),
                ([70, 72, 72, 70, 70, 74, 71, 71, 0, 12, 70], 'ups downs'),
                # squash's octave shift rounds .5 to even: 0.5, 1.5, -0.5 octaves.
                ([59, 60], 'half octave'), ([47, -2, 48], '1.5 octaves'), ([71, 72], '-0.5')]
DRUM_CASES = [([], 'empty'), ([frozenset()], 'one empty'), ([frozenset({36, 35, 99})], 'one'),
              ([frozenset({0, 127, 21})] * 3, 'unknown only')]


def melody_sequences(seed):
  rng = random.Random(seed)
  seqs = [events for events, _ in MELODY_CASES]
  seqs += [random_melody(rng, rng.randrange(2, 80)) for _ in range(6)]
  seqs += [real_melody(rng, rng.randrange(30, 140)) for _ in range(6)]
  return seqs


def drum_sequences(seed):
  rng = random.Random(seed)
  seqs = [events for events, _ in DRUM_CASES]
  seqs += [random_drums(rng, rng.randrange(2, 150)) for _ in range(6)]
  seqs += [real_drums(rng, rng.randrange(30, 150)) for _ in range(6)]
  return seqs


# --- The oracle. ----------------------------------------------------------------------


def oracle(name, events):
  """note-seq's (inputs for all positions, labels, transpose), Magenta's pipeline way."""
  encoder_decoder = magenta_encoder_decoder(name)
  amount = 0
  if configs.get_config(name).kind == configs.MELODY:
    events = note_seq.Melody(events)
    amount = events.squash(MIN_NOTE, MAX_NOTE, 0)
  if not len(events):
    return np.zeros([0, encoder_decoder.input_size]), np.zeros([0], np.int64), amount
  inputs, labels = encoder_decoder.encode(events)
  full = np.array(encoder_decoder.get_inputs_batch([events], full_length=True)[0])
  np.testing.assert_array_equal(np.reshape(inputs, [len(full) - 1, full.shape[1]]), full[:-1])
  return full, np.array(labels, np.int64), amount


def tf_events(name, events):
  if configs.get_config(name).kind == configs.DRUMS:
    return events_lib.drum_events_to_class_indices(events)
  return events


@functools.lru_cache(maxsize=None)
def graph_encoder(name):
  """encode_sequence traced once per config with an unknown length (graph mode, as in tft)."""
  config = configs.get_config(name)
  return tf.function(lambda events: encoding.encode_sequence(config, events),
                     input_signature=[tf.TensorSpec([None], tf.int64)])


def assert_encodes_like_oracle(name, events):
  config = configs.get_config(name)
  want_inputs, want_labels, want_amount = oracle(name, events)
  inputs, labels, amount = graph_encoder(name)(tf.constant(tf_events(name, events), tf.int64))
  assert inputs.shape == (len(events), config.input_size)
  np.testing.assert_array_equal(inputs.numpy(), want_inputs.reshape(inputs.shape), err_msg=name)
  np.testing.assert_array_equal(labels.numpy(), want_labels, err_msg=name)
  assert amount.numpy() == want_amount


# --- Tests. ---------------------------------------------------------------------------


@pytest.mark.parametrize('name', sorted(configs.CONFIGS))
def test_config_sizes_match_note_seq(name):
  config, encoder_decoder = configs.get_config(name), magenta_encoder_decoder(name)
  assert (config.input_size, config.num_classes) == (
      encoder_decoder.input_size, encoder_decoder.num_classes)


@pytest.mark.parametrize('name', sorted(configs.CONFIGS))
def test_no_event_label_matches_note_seq(name):
  assert configs.get_config(name).no_event_label == magenta_encoder_decoder(
      name).default_event_label


def test_drum_and_key_tables_match_note_seq():
  assert [list(p) for p in events_lib.DRUM_TYPE_PITCHES] == (
      drums_encoder_decoder.DEFAULT_DRUM_TYPE_PITCHES)
  assert [list(k) for k in events_lib.NOTE_KEYS] == note_seq.constants.NOTE_KEYS


def test_drum_class_helpers_match_note_seq():
  encoding_ = note_seq.MultiDrumOneHotEncoding()
  for index in range(2 ** configs.NUM_DRUM_CLASSES):
    event = events_lib.class_index_to_drum_event(index)
    assert frozenset(event) == encoding_.decode_event(index)
    assert events_lib.drum_events_to_class_indices([event]) == [index]
  rng = random.Random(0)
  track = random_drums(rng, 300)
  assert events_lib.drum_events_to_class_indices(track) == [
      encoding_.encode_event(e) for e in track]
  with pytest.raises(ValueError):
    events_lib.class_index_to_drum_event(512)


@pytest.mark.parametrize('name', ['basic_rnn', 'lookback_rnn', 'attention_rnn'])
def test_melody_encoders_match_note_seq(name):
  for events in melody_sequences(seed=len(name)):
    assert_encodes_like_oracle(name, events)


def test_drum_encoder_matches_note_seq():
  for events in drum_sequences(seed=1):
    assert_encodes_like_oracle('drum_kit', events)


def test_full_length_sequences_match_note_seq():
  rng = random.Random(7)
  assert_encodes_like_oracle('drum_kit', real_drums(rng, 512))
  assert_encodes_like_oracle('attention_rnn', real_melody(rng, 512))


def test_padded_batch_rows_match_single_sequences():
  """encode_batch on a tail-padded batch == encode_sequence row by row (causality)."""
  rng = random.Random(3)
  for name in sorted(configs.CONFIGS):
    config = configs.get_config(name)
    seqs = ([tf_events(name, real_drums(rng, n)) for n in (5, 40, 1)]
            if config.kind == configs.DRUMS else [real_melody(rng, n) for n in (5, 40, 1)])
    width = max(len(s) for s in seqs)
    padded = [s + [encoding.pad_value(config)] * (width - len(s)) for s in seqs]
    inputs, labels, amounts = encoding.encode_batch(config, tf.constant(padded, tf.int64))
    for row, events in enumerate(seqs):
      want = encoding.encode_sequence(config, events)
      np.testing.assert_array_equal(inputs[row, :len(events)], want[0], err_msg=name)
      np.testing.assert_array_equal(labels[row, :len(events) - 1], want[1], err_msg=name)
      assert amounts[row] == want[2]


# --- preprocessing_fn. -----------------------------------------------------------------


def _ints(values):
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def make_example(name, events, source_id):
  """A raw tf.Example as the ExampleGen writes it (features.py)."""
  feature = {
      features.SOURCE_ID: tf.train.Feature(bytes_list=tf.train.BytesList(value=[source_id])),
      features.TRACK_INDEX: _ints([0]), features.START_STEP: _ints([0]),
      features.NUM_STEPS: _ints([len(events)]), features.STEPS_PER_BAR: _ints([16]),
      features.STEPS_PER_QUARTER: _ints([4]),
      features.QPM: tf.train.Feature(float_list=tf.train.FloatList(value=[120.])),
  }
  if configs.get_config(name).kind == configs.DRUMS:
    feature[features.DRUM_PITCHES] = _ints([p for step in events for p in sorted(step)])
    feature[features.DRUM_PITCH_COUNTS] = _ints([len(step) for step in events])
  else:
    feature[features.MELODY_EVENTS] = _ints(events)
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def raw_feature_spec(name):
  """What SchemaGen(infer_feature_shape=False) gives: every feature VarLen."""
  return features.varlen_feature_spec(configs.get_config(name).kind)


def expected_row(name, events):
  inputs, labels, amount = encoding.encode_sequence(configs.get_config(name),
                                                    tf_events(name, events))
  return {features.INPUTS: inputs.numpy().ravel(), features.LABELS: labels.numpy(),
          features.LENGTH: len(events), features.TRANSPOSE_AMOUNT: amount.numpy()}


def assert_row(row, want, name):
  for key, value in want.items():
    np.testing.assert_array_equal(np.asarray(row[key]), value, err_msg=f'{name} {key}')


TRANSFORMED_SPEC = {
    features.INPUTS: tf.io.VarLenFeature(tf.float32),
    features.LABELS: tf.io.VarLenFeature(tf.int64),
    features.LENGTH: tf.io.FixedLenFeature([], tf.int64),
    features.TRANSPOSE_AMOUNT: tf.io.FixedLenFeature([], tf.int64),
    features.SOURCE_ID: tf.io.FixedLenFeature([], tf.string),
}


@pytest.mark.parametrize('name', ['drum_kit', 'attention_rnn'])
def test_preprocessing_fn_in_tft_beam_and_serving(name, tmp_path):
  """Transform for real (Beam, SavedModel), then the serving path on batches of one."""
  rng = random.Random(11)
  make = real_drums if name == 'drum_kit' else real_melody
  seqs = [make(rng, n) for n in (512, 100, 37, 2, 1)] + [[]]
  path = str(tmp_path / 'raw.tfrecord')
  with tf.io.TFRecordWriter(path) as writer:
    for i, events in enumerate(seqs):
      writer.write(make_example(name, events, b'piece-%d' % i))
  source = tfxio.TFExampleRecord(
      path, schema=schema_utils.schema_from_feature_spec(raw_feature_spec(name)))
  want = [expected_row(name, events) for events in seqs]

  def check(rows):
    assert len(rows) == len(seqs)
    for row in rows:
      assert_row(row, want[int(row[features.SOURCE_ID].decode().split('-')[1])], name)

  transform_dir = str(tmp_path / 'transform_fn')
  with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=str(tmp_path / 'tmp')):
    raw = pipeline | source.BeamSource()
    (transformed, _), transform_fn = (
        (raw, source.TensorAdapterConfig())
        | tft_beam.AnalyzeAndTransformDataset(
            functools.partial(preprocessing.preprocessing_fn,
                              custom_config={'config_name': name}),
            output_record_batches=False))
    beam_util.assert_that(transformed, check)
    _ = transform_fn | tft_beam.WriteTransformFn(transform_dir)

  output = tft.TFTransformOutput(transform_dir)
  assert output.transformed_feature_spec() == TRANSFORMED_SPEC
  layer = output.transform_features_layer()
  for i in (0, 4, 5):  # serving: 512 steps, one step (no labels), empty; one per batch
    parsed = tf.io.parse_example([make_example(name, seqs[i], b'piece-%d' % i)],
                                 raw_feature_spec(name))
    got = layer(parsed)
    row = {k: (tf.sparse.to_dense(v)[0] if isinstance(v, tf.SparseTensor) else v[0]).numpy()
           for k, v in got.items()}
    row[features.INPUTS] = row[features.INPUTS][:len(want[i][features.INPUTS])]
    assert_row(row, want[i], name)


def _dense(values, pad):
  width = max([len(v) for v in values] + [0])
  return tf.constant([list(v) + [pad] * (width - len(v)) for v in values], tf.int64)


@pytest.mark.parametrize('kind', ['sparse', 'ragged', 'dense'])
def test_preprocessing_fn_accepts_any_input_kind(kind):
  """Sparse (VarLen), ragged and dense (inferred shape) raw features encode the same."""
  rng = random.Random(5)
  melodies = [[60], real_melody(rng, 30), real_melody(rng, 30)]  # dense needs equal lengths
  drums = [[frozenset({36})], real_drums(rng, 30), real_drums(rng, 30)]
  for name, seqs in (('lookback_rnn', melodies), ('drum_kit', drums)):
    if kind == 'dense':
      seqs = seqs[1:]
    if name == 'drum_kit':
      lists = {features.DRUM_PITCHES: [[p for s in e for p in sorted(s)] for e in seqs],
               features.DRUM_PITCH_COUNTS: [[len(s) for s in e] for e in seqs]}
    else:
      lists = {features.MELODY_EVENTS: seqs}
    ids = [b'a-%d' % i for i in range(len(seqs))]
    if kind == 'ragged':
      inputs = {k: tf.ragged.constant(v, tf.int64, row_splits_dtype=tf.int32)
                for k, v in lists.items()}
      inputs[features.SOURCE_ID] = tf.ragged.constant([[s] for s in ids])
    elif kind == 'sparse':
      inputs = {k: tf.ragged.constant(v, tf.int64).to_sparse() for k, v in lists.items()}
      inputs[features.SOURCE_ID] = tf.ragged.constant([[s] for s in ids]).to_sparse()
    else:
      inputs = {k: _dense(v, 0) for k, v in lists.items()}
      inputs[features.SOURCE_ID] = tf.constant(ids)  # FixedLen [] -> [B]
    out = preprocessing.preprocessing_fn(inputs, {'config_name': name})
    for i, events in enumerate(seqs):
      row = {k: (tf.sparse.to_dense(v)[i] if isinstance(v, tf.SparseTensor) else v[i]).numpy()
             for k, v in out.items()}
      want = expected_row(name, events)
      row[features.INPUTS] = row[features.INPUTS][:len(want[features.INPUTS])]
      row[features.LABELS] = row[features.LABELS][:len(want[features.LABELS])]
      assert_row(row, want, name)
      assert row[features.SOURCE_ID] == ids[i]


def test_preprocessing_fn_without_source_id():
  """The pipeline's schema may leave SOURCE_ID out (features.statistics_features)."""
  out = preprocessing.preprocessing_fn(
      {features.MELODY_EVENTS: tf.ragged.constant([[60, -2, 62]], tf.int64).to_sparse()},
      {'config_name': 'attention_rnn'})
  assert features.SOURCE_ID not in out
  assert_row({k: (tf.sparse.to_dense(v)[0] if isinstance(v, tf.SparseTensor) else v[0]).numpy()
              for k, v in out.items()}, expected_row('attention_rnn', [60, -2, 62]), 'no id')


def test_preprocessing_fn_needs_a_config_name():
  with pytest.raises(ValueError, match='config_name'):
    preprocessing.preprocessing_fn({}, {})
