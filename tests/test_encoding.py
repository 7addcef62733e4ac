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

from music_rnn import compact
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


@functools.lru_cache(maxsize=None)
def compact_roundtrip(name):
  """compact_batch traced once per config with unknown batch and length."""
  config = configs.get_config(name)
  return tf.function(lambda inputs: compact.compact_batch(config, inputs),
                     input_signature=[tf.TensorSpec([None, None, config.input_size])])


def assert_encodes_like_oracle(name, events):
  config = configs.get_config(name)
  want_inputs, want_labels, want_amount = oracle(name, events)
  inputs, labels, amount = graph_encoder(name)(tf.constant(tf_events(name, events), tf.int64))
  assert inputs.shape == (len(events), config.input_size)
  np.testing.assert_array_equal(inputs.numpy(), want_inputs.reshape(inputs.shape), err_msg=name)
  np.testing.assert_array_equal(labels.numpy(), want_labels, err_msg=name)
  assert amount.numpy() == want_amount
  # The compact form round-trips to the same rows (and so to note-seq's).
  hot, flags = compact_roundtrip(name)(inputs[tf.newaxis])
  np.testing.assert_array_equal(compact.expand_inputs(config, hot, flags)[0].numpy(),
                                want_inputs.reshape(inputs.shape), err_msg=f'{name} compact')


# The event-RNN configs (the MusicVAEs' encoding is tested in test_vae_model.py).
RNN_CONFIGS = configs.names(configs.EVENT_RNN)


# --- Tests. ---------------------------------------------------------------------------


@pytest.mark.parametrize('name', RNN_CONFIGS)
def test_config_sizes_match_note_seq(name):
  config, encoder_decoder = configs.get_config(name), magenta_encoder_decoder(name)
  assert (config.input_size, config.num_classes) == (
      encoder_decoder.input_size, encoder_decoder.num_classes)


@pytest.mark.parametrize('name', RNN_CONFIGS)
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
  for name in RNN_CONFIGS:
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


# --- The compact form (compact.py). ----------------------------------------------------

# Each config's row, as note-seq lays it out: one-hot blocks, then the dense columns.
C, F = compact.COUNTER, compact.FLAG
LAYOUTS = {
    'drum_kit': ((512,), tuple((C, i) for i in range(6))),
    'basic_rnn': ((38,), ()),
    'lookback_rnn': ((38, 38, 38), tuple((C, i) for i in range(5)) + ((F, 0), (F, 1))),
    'attention_rnn': ((36,), ((F, 0), (F, 1), (F, 2), (compact.SIGNED, 3), (F, 5), (F, 6)) +
                      tuple((C, i) for i in range(7)) + ((compact.BAR_END, 0),) +
                      tuple((F, j) for j in range(7, 31))),
}


@pytest.mark.parametrize('name', RNN_CONFIGS)
def test_input_layouts(name):
  layout = compact.input_layout(configs.get_config(name))
  assert (layout.block_sizes, layout.dense) == LAYOUTS[name]
  assert layout.num_hot + layout.num_dense == magenta_encoder_decoder(name).input_size


def padded_batch(name, rng, lengths):
  config = configs.get_config(name)
  seqs = ([tf_events(name, real_drums(rng, n)) for n in lengths]
          if config.kind == configs.DRUMS else [real_melody(rng, n) for n in lengths])
  width = max(lengths)
  return [s + [encoding.pad_value(config)] * (width - len(s)) for s in seqs]


@pytest.mark.parametrize('name', RNN_CONFIGS)
def test_compact_batch_round_trips(name):
  """expand_inputs(compact_batch(rows)) == rows on a padded batch; hot is the step
  encoders' convention (block offset included, num_hot = none set); flags only use
  the layout's bits."""
  config, layout = configs.get_config(name), compact.input_layout(configs.get_config(name))
  inputs, _, _ = encoding.encode_batch(
      config, tf.constant(padded_batch(name, random.Random(2), [300, 40, 1]), tf.int64))
  hot, flags = compact.compact_batch(config, inputs)
  assert hot.dtype == flags.dtype == tf.int64
  assert hot.shape == inputs.shape[:2] + [layout.num_blocks]
  np.testing.assert_array_equal(compact.expand_inputs(config, hot, flags), inputs)
  for h, (offset, size) in enumerate(zip(layout.block_offsets, layout.block_sizes)):
    block = hot[..., h].numpy()
    assert np.all(((block >= offset) & (block < offset + size)) | (block == layout.num_hot))
  assert 0 <= flags.numpy().min() and flags.numpy().max() < 2 ** max(layout.num_flag_bits, 1)
  if name == 'attention_rnn':  # the melodies have rests and both directions
    assert np.any(hot.numpy() == layout.num_hot)
    ascending = inputs[..., layout.num_hot + 3].numpy()
    assert {-1., 0., 1.} <= set(ascending.ravel())


@pytest.mark.parametrize('name', ['drum_kit', 'attention_rnn', 'lookback_rnn'])
def test_expand_dense_in_graph_and_xla(name):
  """Unknown shapes, XLA, empty batches and steps, one step at a given position."""
  config = configs.get_config(name)
  layout = compact.input_layout(config)
  inputs, _, _ = encoding.encode_batch(
      config, tf.constant(padded_batch(name, random.Random(4), [70, 33]), tf.int64))
  _, flags = compact.compact_batch(config, inputs)
  want = inputs[..., layout.num_hot:].numpy()
  spec = [tf.TensorSpec([None, None], tf.int64)]
  full = tf.function(lambda f: compact.expand_dense(layout, f, tf.shape(f)[1]),
                     input_signature=spec, jit_compile=True)
  np.testing.assert_array_equal(full(flags), want)
  int32 = tf.function(lambda f: compact.expand_dense(layout, f), jit_compile=True)
  np.testing.assert_array_equal(int32(tf.cast(flags, tf.int32)), want)
  assert full(tf.zeros([0, 5], tf.int64)).shape == (0, 5, layout.num_dense)
  assert full(tf.zeros([3, 0], tf.int64)).shape == (3, 0, layout.num_dense)
  one = tf.function(lambda f, t: compact.expand_dense(layout, f, positions=t),
                    input_signature=spec + [tf.TensorSpec([], tf.int32)], jit_compile=True)
  for t in (0, 15, 31, 69):
    np.testing.assert_array_equal(one(flags[:, t:t + 1], tf.constant(t)), want[:, t:t + 1])


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
  """note-seq's encoding of one sequence (the oracle), in Transform's compact form."""
  config = configs.get_config(name)
  full, labels, amount = oracle(name, events)
  hot, flags = compact.compact_batch(
      config, np.reshape(full, [1, len(events), config.input_size]))
  return {features.HOT: hot.numpy().ravel(), features.FLAGS: flags.numpy().ravel(),
          features.LABELS: labels, features.LENGTH: len(events),
          features.TRANSPOSE_AMOUNT: amount}


def unigram_xents(name, analyzed, rows):
  """Numpy: per row, the sum of -log p(label), p = (count + 1) / (total + num_classes)
  over the labels of the `analyzed` rows."""
  num_classes = configs.get_config(name).num_classes
  all_labels = np.concatenate([r[features.LABELS] for r in analyzed]).astype(np.int64)
  counts = np.bincount(all_labels, minlength=num_classes).astype(np.float64)
  p = (counts + 1) / (counts.sum() + num_classes)
  return [-np.log(p[r[features.LABELS]]).sum() for r in rows]


def assert_row(row, want, name):
  for key, value in want.items():
    got = np.asarray(row[key])
    if key in (features.HOT, features.FLAGS, features.LABELS):  # serving pads to the batch
      got = got[:len(value)]
    if key == features.UNIGRAM_XENT:
      np.testing.assert_allclose(got, value, rtol=1e-5, err_msg=f'{name} {key}')
    else:
      np.testing.assert_array_equal(got, value, err_msg=f'{name} {key}')


def first_row(outputs, i=0):
  return {k: (tf.sparse.to_dense(v)[i] if isinstance(v, tf.SparseTensor) else v[i]).numpy()
          for k, v in outputs.items()}


TRANSFORMED_SPEC = {
    features.HOT: tf.io.VarLenFeature(tf.int64),
    features.FLAGS: tf.io.VarLenFeature(tf.int64),
    features.LABELS: tf.io.VarLenFeature(tf.int64),
    features.LENGTH: tf.io.FixedLenFeature([], tf.int64),
    features.TRANSPOSE_AMOUNT: tf.io.FixedLenFeature([], tf.int64),
    features.UNIGRAM_XENT: tf.io.FixedLenFeature([], tf.float32),
    features.SOURCE_ID: tf.io.FixedLenFeature([], tf.string),
}


def _write(path, name, seqs, prefix):
  with tf.io.TFRecordWriter(path) as writer:
    for i, events in enumerate(seqs):
      writer.write(make_example(name, events, b'%s-%d' % (prefix, i)))
  return tfxio.TFExampleRecord(
      path, schema=schema_utils.schema_from_feature_spec(raw_feature_spec(name)))


@pytest.mark.parametrize('name', ['drum_kit', 'attention_rnn'])
def test_preprocessing_fn_in_tft_beam_and_serving(name, tmp_path):
  """Transform for real (Beam, SavedModel): analyze a train split, transform train and
  eval, then the serving path on batches of one. unigram_xent uses train labels only."""
  rng = random.Random(11)
  make = real_drums if name == 'drum_kit' else real_melody
  seqs = {b'train': [make(rng, n) for n in (512, 100, 37, 2, 1)] + [[]],
          b'eval': [make(rng, n) for n in (64, 3)]}
  want = {split: [expected_row(name, events) for events in s] for split, s in seqs.items()}
  for split in want:  # the table comes from the analyzed (train) rows only
    for row, xent in zip(want[split], unigram_xents(name, want[b'train'], want[split])):
      row[features.UNIGRAM_XENT] = xent
  assert want[b'train'][0][features.UNIGRAM_XENT] > 0

  def check(split):
    def _check(rows):
      assert len(rows) == len(seqs[split])
      for row in rows:
        prefix, i = row[features.SOURCE_ID].split(b'-')
        assert prefix == split
        assert_row(row, want[split][int(i)], name)
    return _check

  fn = functools.partial(preprocessing.preprocessing_fn, custom_config={'config_name': name})
  transform_dir = str(tmp_path / 'transform_fn')
  with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=str(tmp_path / 'tmp')):
    sources = {split: _write(str(tmp_path / f'{split.decode()}.tfrecord'), name, s, split)
               for split, s in seqs.items()}
    raw = {split: (pipeline | f'Read{split.decode()}' >> source.BeamSource(),
                   source.TensorAdapterConfig()) for split, source in sources.items()}
    transform_fn = raw[b'train'] | tft_beam.AnalyzeDataset(fn)
    for split in seqs:
      transformed, _ = ((raw[split], transform_fn) | f'Transform{split.decode()}' >>
                        tft_beam.TransformDataset(output_record_batches=False))
      beam_util.assert_that(transformed, check(split), label=f'Check{split.decode()}')
    _ = transform_fn | tft_beam.WriteTransformFn(transform_dir)

  output = tft.TFTransformOutput(transform_dir)
  assert output.transformed_feature_spec() == TRANSFORMED_SPEC
  layer = output.transform_features_layer()
  # Serving: 512 steps, one step (no labels), empty, an eval piece; one per batch.
  for split, i in ((b'train', 0), (b'train', 4), (b'train', 5), (b'eval', 0)):
    parsed = tf.io.parse_example([make_example(name, seqs[split][i], b'x')],
                                 raw_feature_spec(name))
    row = first_row(layer(parsed))
    assert_row(row, want[split][i], name)


def test_unigram_xent_needs_tft():
  """It is an analyzer: eager calls without tft fail loudly (encode_features is the
  instance-level part)."""
  with pytest.raises(RuntimeError):
    preprocessing.preprocessing_fn(
        {features.MELODY_EVENTS: tf.ragged.constant([[60, -2, 62]], tf.int64).to_sparse()},
        {'config_name': 'attention_rnn'})


def _dense(values, pad):
  width = max([len(v) for v in values] + [0])
  return tf.constant([list(v) + [pad] * (width - len(v)) for v in values], tf.int64)


@pytest.mark.parametrize('kind', ['sparse', 'ragged', 'dense'])
def test_encode_features_accepts_any_input_kind(kind):
  """Sparse (VarLen), ragged and dense (inferred shape) raw features encode the same."""
  rng = random.Random(5)
  melodies = [[60], real_melody(rng, 30), real_melody(rng, 30), []]  # dense: equal lengths
  drums = [[frozenset({36})], real_drums(rng, 30), real_drums(rng, 30), []]
  for name, seqs in (('lookback_rnn', melodies), ('drum_kit', drums)):
    if kind == 'dense':
      seqs = seqs[1:3]
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
    out = preprocessing.encode_features(inputs, name)
    for i, events in enumerate(seqs):
      row = first_row(out, i)
      assert_row(row, expected_row(name, events), name)
      assert row[features.SOURCE_ID] == ids[i]


def test_encode_features_without_source_id():
  """The pipeline's schema may leave SOURCE_ID out (features.statistics_features)."""
  out = preprocessing.encode_features(
      {features.MELODY_EVENTS: tf.ragged.constant([[60, -2, 62]], tf.int64).to_sparse()},
      'attention_rnn')
  assert features.SOURCE_ID not in out
  assert_row(first_row(out), expected_row('attention_rnn', [60, -2, 62]), 'no id')


def test_preprocessing_fn_needs_a_config_name():
  with pytest.raises(ValueError, match='config_name'):
    preprocessing.preprocessing_fn({}, {})
