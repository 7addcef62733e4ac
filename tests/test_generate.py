"""Generation: the incremental encoders and RNN step against the full-sequence ones, the
`generate` / `prime` / `extend` functions, and (slow) a real pipeline's export used from
a fresh process and from the `music-rnn generate` command."""

import functools
import json
import os
import random
import re

import numpy as np
import pytest
import tensorflow as tf

from music_rnn import compact
from music_rnn import configs
from music_rnn import encoding
from music_rnn import generation
from music_rnn import model as model_lib

ALL_CONFIGS = ['drum_kit', 'basic_rnn', 'lookback_rnn', 'attention_rnn']


def _small(name):
  config = configs.get_config(name)
  hparams = config.hparams.replace(rnn_layer_sizes=(12, 8),
                                   attn_length=min(config.hparams.attn_length, 5))
  return config, hparams


def _model(name, seed=0):
  import keras  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(seed)
  config, hparams = _small(name)
  return config, model_lib.build_model(config, hparams)


@functools.lru_cache(maxsize=None)
def _generator(name, jit_compile=True):
  """One small untrained model's Generator per config, shared (tracing takes a while)."""
  config, model = _model(name)
  return config, generation.Generator(model, config, jit_compile=jit_compile)


def _random_events(config, rng, length):
  """Model-space events with repeats 1 and 2 bars back, so lookback inputs fire."""
  if config.kind == configs.DRUMS:
    pool = [0, 0, 1, 5, 4, 511, 36]
  else:
    pool = [-2, -2, -1] + list(range(config.min_note, config.max_note))
  events = [rng.choice([-2, config.min_note]) if config.kind == configs.MELODY
            else rng.choice(pool)]
  while len(events) < length:
    if len(events) >= 32 and rng.random() < 0.3:
      events.append(events[-rng.choice([16, 32])])
    else:
      events.append(rng.choice(pool))
  if config.kind == configs.MELODY:  # no note-off before the first note (as Melody())
    events = encoding.clean_leading_note_offs(tf.constant([events], tf.int64))[0].numpy()
  return np.asarray(events, np.int64)


def _encoder_step(encoder, state, events, t):
  def read(position):
    return tf.gather(tf.constant(events), position, axis=1)
  back = generation.read_lookbacks(read, tf.constant(t), encoder.lookbacks,
                                   encoder.default_event)
  return encoder.step(state, tf.constant(events[:, t]), tf.constant(t), back)


def _step_rows(encoder, events):
  """Runs the incremental encoder over [B, T] events; rows [B, T, input_size]."""
  state = encoder.initial_state(events.shape[0])
  rows = []
  for t in range(events.shape[1]):
    state, hot, dense, _ = _encoder_step(encoder, state, events, t)
    rows.append(generation.dense_rows(encoder, hot, dense))
  return tf.stack(rows, 1).numpy()


@pytest.mark.parametrize('name', ALL_CONFIGS)
def test_step_encoder_matches_encode_batch(name):
  config = configs.get_config(name)
  rng = random.Random(name)
  events = np.stack([_random_events(config, rng, 70) for _ in range(3)])
  expected, _, _ = encoding.encode_batch(config, events, squash=False)
  got = _step_rows(generation.step_encoder(config), events)
  np.testing.assert_array_equal(got, expected.numpy())


@pytest.mark.parametrize('name', ALL_CONFIGS)
def test_decode_inverts_labels(name):
  """Every label note-seq would give an event decodes back to that event."""
  config = configs.get_config(name)
  encoder = generation.step_encoder(config)
  rng = random.Random(1)
  events = np.stack([_random_events(config, rng, 70) for _ in range(2)])
  _, labels, _ = encoding.encode_batch(config, events, squash=False)
  state = encoder.initial_state(2)
  for t in range(69):
    state, _, _, upcoming = _encoder_step(encoder, state, events, t)
    decoded = encoder.decode(tf.constant(labels[:, t].numpy(), tf.int32), upcoming)
    np.testing.assert_array_equal(decoded.numpy(), events[:, t + 1], err_msg=f'position {t}')


@pytest.mark.parametrize('name', ALL_CONFIGS)
def test_stepper_matches_model(name):
  config, model = _model(name)
  gen = generation.Generator(model, config)
  rng = random.Random(2)
  events = np.stack([_random_events(config, rng, 12) for _ in range(2)])
  inputs, _, _ = encoding.encode_batch(config, events, squash=False)
  hot, flags = compact.compact_batch(config, inputs)
  full = model({model_lib.HOT: hot, model_lib.FLAGS: flags,
                model_lib.LENGTHS: tf.constant([12, 12])}).numpy()
  enc_state, rnn_state = gen.encoder.initial_state(2), gen.stepper.zero_state(2)
  model_state = model.initial_state(2)
  for t in range(12):
    enc_state, hot, dense, _ = _encoder_step(gen.encoder, enc_state, events, t)
    logits, rnn_state = gen.stepper.step(hot, dense, rnn_state)
    np.testing.assert_allclose(logits.numpy(), full[:, t], atol=2e-5, err_msg=f'step {t}')
    # The stepper is the model's own step on weights prepared at export.
    model_logits, model_state = model.step(hot, dense, model_state)
    np.testing.assert_allclose(logits.numpy(), model_logits.numpy(), atol=1e-6)
  # The packed state (RNN and encoder) round-trips exactly.
  packed = gen._pack(rnn_state, enc_state)  # pylint: disable=protected-access
  assert packed.shape == (2, gen.state_size)
  rnn_back, enc_back = gen._unpack(packed)  # pylint: disable=protected-access
  for a, b in zip(rnn_back + enc_back, tuple(rnn_state) + tuple(enc_state)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def _primer(config, batch=2):
  if config.kind == configs.DRUMS:
    return np.array([[1, 0, 4, 0, 5]] * batch, np.int64)
  return np.array([[60, -2, 60, -2, 67, -2, 67, -2]] * batch, np.int64)


@pytest.mark.parametrize('jit_compile', [True, False], ids=['xla', 'no_xla'])
@pytest.mark.parametrize('name', ['drum_kit', 'attention_rnn'])
def test_generate_and_extend_agree(name, jit_compile):
  config, gen = _generator(name, jit_compile)
  primer = _primer(config, batch=3)
  args = dict(temperature=tf.constant(1.0), seed=tf.constant(5, tf.int64))
  out = gen.generate(primer, tf.constant(20), **args)
  events = out['events'].numpy()
  assert events.shape == (3, primer.shape[1] + 20)
  np.testing.assert_array_equal(events[:, :primer.shape[1]], primer)
  assert len({tuple(r) for r in events}) > 1, 'rows should differ'
  again = gen.generate(primer, tf.constant(20), **args)['events'].numpy()
  np.testing.assert_array_equal(events, again)
  other = gen.generate(primer, tf.constant(20), temperature=tf.constant(1.0),
                       seed=tf.constant(6, tf.int64))['events'].numpy()
  assert not np.array_equal(events, other)

  # prime + extend in pieces == one generate call (in model space).
  primed = gen.prime(primer)
  ev, state, ll = primed['events'], primed['state'], 0.
  for n in (7, 1, 12):
    step = gen.extend(ev, state, tf.constant(n), **args)
    ev, state, ll = step['events'], step['state'], ll + step['log_likelihood'].numpy()
  amount = primed['transpose_amount'].numpy()[:, None]
  ev = ev.numpy()
  if config.kind == configs.MELODY:
    ev = np.where(ev >= 0, ev - amount, ev)  # the primer here is within range
  np.testing.assert_array_equal(ev, events)
  np.testing.assert_allclose(ll, out['log_likelihood'].numpy(), rtol=1e-5)
  assert np.all(out['log_likelihood'].numpy() < 0)


def test_melody_primer_out_of_range_is_transposed_in_and_back():
  config, gen = _generator('basic_rnn')
  # Two octaves above the model's range, in D major.
  primer = np.array([[98, -2, 100, -2, 102, -1, 105, -2]], np.int64)
  primed = gen.prime(primer)
  amount = int(primed['transpose_amount'].numpy()[0])
  assert amount % 12 == 10 and amount < 0  # D -> C, and down into [48, 84)
  notes = primed['events'].numpy()[primed['events'].numpy() >= 0]
  assert notes.min() >= config.min_note and notes.max() < config.max_note
  out = gen.generate(primer, tf.constant(64), tf.constant(1.5),
                     tf.constant(0, tf.int64))['events'].numpy()
  np.testing.assert_array_equal(out[:, :8], primer)
  new_notes = out[:, 8:][out[:, 8:] >= 0]
  assert new_notes.size
  # Back in the primer's key and register: the model range shifted by -amount.
  assert new_notes.min() >= config.min_note - amount
  assert new_notes.max() < config.max_note - amount


@pytest.mark.parametrize('name', ['drum_kit', 'attention_rnn'])
def test_bad_arguments_fail_clearly(name):
  config, gen = _generator(name)
  ok = dict(primer=_primer(config), num_steps=tf.constant(4),
            temperature=tf.constant(1.0), seed=tf.constant(0, tf.int64))
  bad_event = 512 if config.kind == configs.DRUMS else 128
  cases = [
      (dict(primer=np.zeros([2, 0], np.int64)), 'primer must have at least one event'),
      (dict(primer=np.array([[0, bad_event]], np.int64)), 'must hold'),
      (dict(primer=np.array([[-3, 0]], np.int64)), 'must hold'),
      (dict(num_steps=tf.constant(0)), 'num_steps must be >= 1; got 0'),
      (dict(num_steps=tf.constant(100_000_000)),
       'num_steps must be <= 16384 (limits.MAX_NUM_STEPS); got 100000000'),
      (dict(num_steps=tf.constant(16_383)), 'a sequence may have at most 16384 events'),
      (dict(temperature=tf.constant(0.0)), 'temperature must be > 0; got 0'),
      (dict(temperature=tf.constant(float('nan'))), 'temperature must be > 0'),
  ]
  for override, message in cases:
    with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
      gen.generate(**{**ok, **override})


# --- A real pipeline's export. ------------------------------------------------------
# One tiny pipeline run per kind, shared by the tests below (a few minutes in all).

TINY = {
    'drum_kit': dict(slice=('drums', 6), hparams={'rnn_layer_sizes': [16, 16],
                                                    'attn_length': 4, 'batch_size': 4}),
    'attention_rnn': dict(slice=('melody', 30), hparams={'rnn_layer_sizes': [16, 16],
                                                          'attn_length': 4, 'batch_size': 8}),
}
DRUM_PRIMER = [[5, 0, 4, 0, 511, 0, 1]]  # class indices: kick+hat, -, hat, -, all, -, kick
MELODY_PRIMER = [[60, -2, 60, -2, 67, -2, 67, -2], [98, -2, 100, -1, 102, -2, 105, -2]]


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  """{config name: pushed SavedModel dir} from real (tiny) pipeline runs."""
  from pipeline import local_runner  # pylint: disable=g-import-not-at-top
  from tests.conftest import bundled, smoke_blessing, write_slice_with_eval  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('pipelines')
  dirs = {}
  for name, spec in TINY.items():
    kind, n = spec['slice']
    data = write_slice_with_eval(bundled(kind), str(root / 'data' / f'{kind}.tfrecord'), n)
    summary = local_runner.run(
        model_config=name, data=data, train_steps=2, eval_steps=1, hparams=spec['hparams'],
        seed=3, output_root=str(root / 'out'), serving_dir=str(root / 'serving'),
        blessing=smoke_blessing())
    assert summary.pushed_model, summary
    dirs[name] = summary.pushed_model
  return dirs


FRESH_PROCESS_CHECKS = '''
import json, sys
import numpy as np
import tensorflow as tf
results = {}
for name, (path, primer, bad_event) in json.loads(sys.argv[1]).items():
  gen = tf.saved_model.load(path).signatures['generate']
  def call(primer=primer, num_steps=40, temperature=1.0, seed=7):
    return gen(primer=tf.constant(primer, tf.int64), num_steps=tf.constant(num_steps),
               temperature=tf.constant(temperature), seed=tf.constant(seed, tf.int64))
  out = call()
  errors = {}
  for case, kwargs in {'empty': dict(primer=np.zeros([1, 0], np.int64)),
                       'out_of_range': dict(primer=[[0, bad_event, 0]]),
                       'num_steps': dict(num_steps=0),
                       'too_long': dict(num_steps=100000000),
                       'temperature': dict(temperature=0.0)}.items():
    try:
      call(**kwargs)
      errors[case] = None
    except tf.errors.InvalidArgumentError as e:
      errors[case] = str(e)
  results[name] = dict(
      events=out['events'].numpy().tolist(),
      log_likelihood=out['log_likelihood'].numpy().tolist(),
      again=call()['events'].numpy().tolist(),
      other_seed=call(seed=8)['events'].numpy().tolist(),
      errors=errors,
      project=[m for m in sys.modules if m.split('.')[0] in ('music_rnn', 'serving', 'pipeline')])
print(json.dumps(results))
'''


def test_generate_signature_in_a_fresh_process(exported):
  from tests.conftest import run_fresh_python, unsaved_gradient_warnings  # pylint: disable=g-import-not-at-top
  request = {'drum_kit': (exported['drum_kit'], DRUM_PRIMER, 512),
             'attention_rnn': (exported['attention_rnn'], MELODY_PRIMER, 128)}
  proc = run_fresh_python(f'import sys; sys.argv[1:] = [{json.dumps(request)!r}]\n' +
                          FRESH_PROCESS_CHECKS, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  # The export traces inference only: no gradient function it could not save.
  assert unsaved_gradient_warnings(proc.stderr) == []
  results = json.loads(proc.stdout.strip().splitlines()[-1])
  for name, primer in (('drum_kit', DRUM_PRIMER), ('attention_rnn', MELODY_PRIMER)):
    got = results[name]
    assert got['project'] == []
    events = np.array(got['events'])
    assert events.shape == (len(primer), len(primer[0]) + 40)
    np.testing.assert_array_equal(events[:, :len(primer[0])], primer)  # primer kept as is
    new = events[:, len(primer[0]):]
    if name == 'drum_kit':
      assert new.min() >= 0 and new.max() <= 511
    else:
      assert set(new.ravel()) - set(range(-2, 128)) == set()
      # Row 1's primer (D major, centred on 101.5) was squashed by -38 semitones into
      # [48, 84): its continuation comes back up by 38, into [86, 122).
      notes = new[1][new[1] >= 0]
      assert notes.size and notes.min() >= 86 and notes.max() < 122, notes
    assert np.all(np.array(got['log_likelihood']) < 0)
    assert got['again'] == got['events']  # same seed, same events
    assert got['other_seed'] != got['events']
    errors = got['errors']
    assert 'generate: primer must have at least one event' in errors['empty']
    assert 'generate: primer must hold' in errors['out_of_range']
    assert 'num_steps must be >= 1; got 0' in errors['num_steps']
    assert 'num_steps must be <= 16384 (limits.MAX_NUM_STEPS); got 100000000' in (
        errors['too_long'])
    assert 'temperature must be > 0; got 0' in errors['temperature']


def _drum_log_likelihood_by_serving(model, events, start):
  """log P(events[start:] | events[:start]) from the `serving_default` probabilities."""
  from music_rnn import events as events_lib  # pylint: disable=g-import-not-at-top
  from music_rnn import extraction  # pylint: disable=g-import-not-at-top
  seq = extraction.ExtractedSequence(
      source_id='x', track_index=0, start_step=0, steps_per_bar=16, steps_per_quarter=4,
      qpm=120., events=events_lib.class_indices_to_drum_events(events))
  example = extraction.to_tf_example(seq, configs.get_config('drum_kit')).SerializeToString()
  probs = model.loaded.signatures['serving_default'](
      examples=tf.constant([example]))['probabilities'].numpy()[0]
  steps = np.arange(start - 1, len(events) - 1)
  return float(np.log(probs[steps, np.asarray(events)[steps + 1]]).sum())


def test_client_sampling_and_beam_search(exported):
  from serving import client  # pylint: disable=g-import-not-at-top
  model = client.Model(exported['drum_kit'])
  primer = DRUM_PRIMER[0]
  plain = model.generate(primer, 24, num_outputs=3, seed=11)
  # Sampling in pieces (for the progress bar) is exactly the one-call signature.
  one_call = model.loaded.signatures['generate'](
      primer=tf.constant([primer] * 3, tf.int64), num_steps=tf.constant(24),
      temperature=tf.constant(1.0), seed=tf.constant(11, tf.int64))
  np.testing.assert_array_equal(plain.events, one_call['events'].numpy())
  np.testing.assert_allclose(plain.log_likelihood, one_call['log_likelihood'].numpy(),
                             rtol=1e-4)
  # The reported log-likelihood is the model's: serving_default agrees.
  np.testing.assert_allclose(
      _drum_log_likelihood_by_serving(model, plain.events[0], len(primer)),
      plain.log_likelihood[0], rtol=1e-3)

  beam = model.generate(primer, 24, seed=11, beam_size=3, branch_factor=2,
                        steps_per_iteration=4)
  assert beam.events.shape == (1, len(primer) + 24)
  np.testing.assert_array_equal(beam.events[0, :len(primer)], primer)
  by_model = [_drum_log_likelihood_by_serving(model, e[0], len(primer))
              for e in (beam.events, plain.events)]
  assert by_model[0] >= by_model[1] - 1e-3, by_model
  np.testing.assert_allclose(by_model[0], beam.log_likelihood[0], rtol=1e-3)
  # Beam size 1, branch factor 1 is plain sampling.
  same = model.generate(primer, 24, seed=11, beam_size=1, branch_factor=1,
                        steps_per_iteration=5)
  np.testing.assert_array_equal(same.events[0], plain.events[0])


def test_cli_writes_midi_and_piano_rolls(exported, tmp_path, capsys):
  import note_seq  # pylint: disable=g-import-not-at-top
  from music_rnn import cli  # pylint: disable=g-import-not-at-top
  serving_dir = os.path.dirname(os.path.dirname(exported['drum_kit']))
  out = tmp_path / 'drums'
  assert cli.main(['generate', '--config', 'drum_kit', '--serving-dir', serving_dir,
                   '--num-outputs', '2', '--num-steps', '32', '--seed', '1',
                   '--primer-drums', '[(36, 42), (), (42,)]', '--output-dir', str(out)]) == 0
  mids = sorted(out.glob('*.mid'))
  assert len(mids) == 2 and len(list(out.glob('*.png'))) == 2
  for mid in mids:
    ns = note_seq.midi_file_to_note_sequence(str(mid))
    assert abs(ns.total_time - 32 * 0.125) < 1e-6  # 32 steps at 120 qpm
    first = {n.pitch for n in ns.notes if n.start_time < 0.01}
    assert first == {36, 42} and all(n.is_drum for n in ns.notes)
    assert note_seq.quantize_note_sequence(ns, 4).total_quantized_steps == 32

  # A melody, primed from a MIDI file, with beam search.
  from serving import client  # pylint: disable=g-import-not-at-top
  primer = tmp_path / 'primer.mid'
  client.write_midi(client.to_note_sequence([60, -2, 62, -2, 64, -1], False, qpm=90.),
                    str(primer))
  out = tmp_path / 'melody'
  assert cli.main(['generate', '--model-dir', exported['attention_rnn'], '--num-outputs', '1',
                   '--num-steps', '40', '--seed', '2', '--primer-midi', str(primer),
                   '--beam-size', '2', '--branch-factor', '2', '--steps-per-iteration', '8',
                   '--output-dir', str(out)]) == 0
  (mid,) = out.glob('*.mid')
  ns = note_seq.midi_file_to_note_sequence(str(mid))
  assert ns.tempos[0].qpm == pytest.approx(90., abs=1e-3)  # the primer's tempo, as Magenta
  assert abs(ns.total_time - 40 * 60 / 90 / 4) < 1e-4
  assert [n.pitch for n in sorted(ns.notes, key=lambda n: n.start_time)][:3] == [60, 62, 64]
  assert (out / (mid.stem + '.png')).exists()

  # Mistakes are one-line errors.
  capsys.readouterr()
  assert cli.main(['generate', '--model-dir', exported['drum_kit'], '--primer-melody', '[60]',
                   '--output-dir', str(out)]) == 2
  assert 'drum_kit is a drums model: use --primer-drums' in capsys.readouterr().err
  assert cli.main(['generate', '--model-dir', exported['drum_kit'], '--num-steps', '2',
                   '--primer-drums', '[(36,), (), ()]', '--output-dir', str(out)]) == 2
  assert '--num-steps (the total length, primer included) must be larger' in (
      capsys.readouterr().err)


def test_latest_model_dir_is_the_newest_version(tmp_path):
  from serving import client  # pylint: disable=g-import-not-at-top
  for version in ('9', '10', '11x'):
    (tmp_path / 'basic_rnn' / version).mkdir(parents=True)
    (tmp_path / 'basic_rnn' / version / 'saved_model.pb').write_bytes(b'')
  assert client.latest_model_dir('basic_rnn', str(tmp_path)).endswith('/basic_rnn/10')
  with pytest.raises(FileNotFoundError, match='No pushed drum_kit model'):
    client.latest_model_dir('drum_kit', str(tmp_path))
  assert client.parse_drum_primer('[(36, 42), (), (42,)]') == [5, 0, 4]
  assert client.parse_melody_primer('[60, -2, -1]') == [60, -2, -1]
  with pytest.raises(ValueError, match='MIDI pitch 0..127'):
    client.parse_melody_primer('[60, 200]')
  with pytest.raises(ValueError, match='cannot parse'):
    client.parse_drum_primer('[(36,')
  # bool is an int in Python; True must not pass as pitch 1.
  for text in ('[(36, True)]', '[True]', '[(36,), (False,)]'):
    with pytest.raises(ValueError, match='int MIDI pitches 0..127'):
      client.parse_drum_primer(text)
  with pytest.raises(ValueError, match='got True'):
    client.parse_melody_primer('[60, True]')


def test_transpose_melodies_is_note_seq_melody_transpose():
  """The one octave fold (squash, generate's way back, the client's) against note-seq."""
  import note_seq  # pylint: disable=g-import-not-at-top
  rng = random.Random(4)
  for min_note, max_note in ((0, 128), (48, 84)):
    rows = [[rng.choice([-2, -1] + list(range(128))) for _ in range(40)] for _ in range(6)]
    amounts = [rng.randrange(-70, 70) for _ in rows]
    got = encoding.transpose_melodies(tf.constant(rows, tf.int64),
                                      tf.constant(amounts, tf.int64), min_note, max_note)
    for row, amount, events in zip(rows, amounts, got.numpy()):
      melody = note_seq.Melody(row)
      melody.transpose(amount, min_note, max_note)
      assert list(events) == list(melody), (row, amount)


# --- The `evaluate` signature the Evaluator scores with. -----------------------------


@pytest.mark.parametrize('name', sorted(TINY))
def test_evaluate_signature_scores_like_serving_default(exported, name):
  """Per-example sums from `evaluate` equal what serving_default's probabilities and
  note-seq's labels give, on real-like sequences of several lengths (0, 1, 2, many)."""
  from music_rnn import extraction  # pylint: disable=g-import-not-at-top
  from tests import test_encoding  # pylint: disable=g-import-not-at-top

  config = configs.get_config(name)
  rng = random.Random(11)
  if config.kind == configs.DRUMS:
    sequences = [[], [frozenset({36})], [frozenset({36}), frozenset()]] + [
        test_encoding.real_drums(rng, n) for n in (17, 64)]
    raw = [[tuple(sorted(step)) for step in events] for events in sequences]
  else:
    sequences = [[], [60], [60, -2]] + [test_encoding.real_melody(rng, n) for n in (17, 64)]
    raw = sequences
  serialized = [extraction.to_tf_example(extraction.ExtractedSequence(
      source_id=f's{i}', track_index=0, start_step=0, steps_per_bar=16, steps_per_quarter=4,
      qpm=120.0, events=list(events)), config).SerializeToString()
      for i, events in enumerate(raw)]

  loaded = tf.saved_model.load(exported[name])
  stats = {k: v.numpy() for k, v in loaded.signatures['evaluate'](
      examples=tf.constant(serialized)).items()}
  probs = loaded.signatures['serving_default'](
      examples=tf.constant(serialized))['probabilities'].numpy()

  for i, events in enumerate(sequences):
    _, labels, _ = test_encoding.oracle(name, events)
    steps = len(labels)
    p = probs[i, np.arange(steps), labels] if steps else np.zeros([0])
    correct = probs[i, :steps].argmax(-1) == labels if steps else np.zeros([0], bool)
    is_no_event = labels == config.no_event_label
    expected = {
        'xent': -np.log(p).sum(), 'steps': steps, 'correct': correct.sum(),
        'events': (~is_no_event).sum(), 'correct_events': (correct & ~is_no_event).sum(),
        'no_events': is_no_event.sum(), 'correct_no_events': (correct & is_no_event).sum()}
    got = {k: float(stats[k][i]) for k in expected}
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-4), (i, len(events))
    # The unigram table's cross entropy: > 0 per real step, nothing without one.
    unigram = float(stats['unigram_xent'][i])
    assert (unigram > 0) if steps else (unigram == 0), (i, unigram)
