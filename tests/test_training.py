"""Tests for music_rnn.training and music_rnn.export on real Transform output.

The fixtures run tensorflow_transform's Beam implementation (conftest.run_transform) on a
handful of raw drum tf.Examples (the ExampleGen's format), or on a slice of the bundled
Essen melodies, with the project's preprocessing_fn; the tests call run_fn with a real
TFX FnArgs and load the SavedModel in a fresh Python. The input pipeline's bucketing is
checked on the bundled datasets' real sequence lengths.
"""

import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from music_rnn import configs
from music_rnn import extraction
from music_rnn import training
from tests.conftest import bundled_raw_splits, run_transform

CONFIG = 'drum_kit'
HPARAMS = {'batch_size': 4, 'rnn_layer_sizes': [16, 16], 'attn_length': 4}
DRUM_PITCHES = (36, 38, 42, 46, 45, 48, 50, 49, 51)


def _sequence(source_id: str, num_steps: int, rng: random.Random):
  events = [tuple(sorted(rng.sample(DRUM_PITCHES, rng.choice([0, 0, 1, 2]))))
            for _ in range(num_steps)]
  return extraction.ExtractedSequence(
      source_id=source_id, track_index=0, start_step=0, steps_per_bar=16,
      steps_per_quarter=4, qpm=120.0, events=events)


# Split -> sequence lengths (distinct, so a length names its training sequence). 'eval'
# is smaller than one batch; 'eval_empty' has only a one-step sequence, which has
# nothing to predict and is dropped.
SPLITS = {'train': [30, 12, 1, 25, 8, 40, 17, 5, 33, 21], 'eval': [14, 9, 2],
          'eval_empty': [1]}


@pytest.fixture(scope='module')
def transformed(tmp_path_factory):
  """Tiny random drum tracks through the real Transform.

  Returns (root dir, {split: serialized raw examples}); root holds transform_output/
  and <split>/*.gz.
  """
  root = tmp_path_factory.mktemp('transform')
  config = configs.get_config(CONFIG)
  rng = random.Random(0)
  raw = {split: [extraction.to_tf_example(_sequence(f'{split}-{i}', n, rng), config)
                 .SerializeToString() for i, n in enumerate(lengths)]
         for split, lengths in SPLITS.items()}
  run_transform(root, CONFIG, raw)
  return root, raw


def _run_fresh_python(code: str) -> subprocess.CompletedProcess:
  """A new interpreter outside the project (-P, cwd /): only what is installed."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  env.pop('PYTHONPATH', None)
  return subprocess.run([sys.executable, '-P', '-c', code], cwd='/', env=env,
                        capture_output=True, text=True, timeout=300)


def fn_args_kwargs(root, out, hparams=None, train_steps=6, eval_split='eval', num_evals=3,
                   hyperparameters=None, base_model=None, **custom):
  """FnArgs fields as a JSON-able dict, so a child process can build the same FnArgs."""
  return dict(
      working_dir=str(out / 'working'),
      train_files=[str(root / 'train' / '*.gz')],
      eval_files=[str(root / eval_split / '*.gz')],
      train_steps=train_steps, eval_steps=2,
      transform_output=str(root / 'transform_output'),
      transform_graph_path=str(root / 'transform_output'),
      serving_model_dir=str(out / 'serving_model_dir'),
      model_run_dir=str(out / 'model_run'),
      hyperparameters=hyperparameters,
      base_model=base_model,
      custom_config={'config_name': CONFIG, 'hparams': hparams or HPARAMS, 'seed': 3,
                     'num_evals': num_evals, **custom})


def _fn_args(root, out, **kwargs):
  from tfx import v1 as tfx
  return tfx.components.FnArgs(**fn_args_kwargs(root, out, **kwargs))


def test_resolve_hparams_precedence():
  config = configs.get_config('attention_rnn')
  tuner = {'space': [], 'values': {'learning_rate': 0.01, 'tuner/epochs': 2,
                                   'rnn_layer_sizes': '64,64,64'}}
  hp = training.resolve_hparams(config, {'learning_rate': 0.1, 'batch_size': 8}, tuner)
  assert hp.learning_rate == 0.01  # tuner beats custom_config
  assert hp.batch_size == 8  # custom_config beats the config default
  assert hp.rnn_layer_sizes == (64, 64, 64)
  assert hp.attn_length == config.hparams.attn_length
  with pytest.raises(ValueError, match='Unknown hparam'):
    training.resolve_hparams(config, {'nope': 1})


def _tft_output(root):
  import tensorflow_transform as tft
  return tft.TFTransformOutput(str(root / 'transform_output'))


def test_eval_dataset_is_complete_in_order_and_aligned(transformed):
  """Eval batches: every sequence with >= 2 steps, in file order, its first length-1
  steps (expanded: exactly note-seq's input rows) aligned with its labels."""
  from music_rnn import compact, encoding, events as events_lib
  root, raw = transformed
  config = configs.get_config(CONFIG)
  files = [str(root / 'train' / '*.gz')]
  expected = []
  for record in raw['train']:
    seq = extraction.from_tf_example(record, config)
    if len(seq.events) >= 2:
      rows, labels, _ = encoding.encode_sequence(
          config, events_lib.drum_events_to_class_indices(seq.events))
      expected.append((rows.numpy()[:-1], labels.numpy()))

  ds = training.make_dataset(files, _tft_output(root), config, 3, training=False)
  seen = []
  for x, labels in ds:
    assert set(x) == {'hot', 'flags', 'lengths'}
    rows = compact.expand_inputs(config, x['hot'], x['flags']).numpy()
    for row, n, lab in zip(rows, x['lengths'].numpy(), labels.numpy()):
      want_rows, want_labels = expected[len(seen)]
      assert n == len(want_labels)
      np.testing.assert_array_equal(row[:n], want_rows)
      np.testing.assert_array_equal(lab[:n], want_labels)
      seen.append(n + 1)
  assert seen == [n for n in SPLITS['train'] if n >= 2]  # complete, in file order

  # With 2 replicas the short last batch (9 sequences at batch 4: 4, 4, 1) gets a
  # zero-length row (a multiple of 2); the others are untouched.
  batches = list(training.make_dataset(files, _tft_output(root), config, 4, training=False,
                                       replicas=2))
  assert batches[-1][0]['lengths'].numpy().tolist() == [20, 0]
  assert [int(x['lengths'].shape[0]) for x, _ in batches] == [4, 4, 2]


def _passes(ds, batches_per_pass, num_passes):
  """Per pass: the batches' sequence lengths (real rows only)."""
  out, batches = [], iter(ds)
  for _ in range(num_passes):
    out.append([[int(n) for n in next(batches)[0]['lengths'].numpy() if n > 0]
                for _ in range(batches_per_pass)])
  return out


def test_training_batches_see_every_sequence_once_per_pass(transformed):
  root, _ = transformed
  config = configs.get_config(CONFIG)
  files = [str(root / 'train' / '*.gz')]
  train = sorted(n - 1 for n in SPLITS['train'] if n >= 2)  # label steps, distinct
  num = training.count_sequences(files, _tft_output(root), config)
  assert num == len(train)
  per_pass = training.batches_per_pass(num, 4)
  assert per_pass == 3  # 9 sequences: 4 + 4 + 1
  passes = _passes(training.make_dataset(files, _tft_output(root), config, 4,
                                         training=True, seed=5), per_pass, 6)
  for batches in passes:
    assert sorted(n for b in batches for n in b) == train  # each exactly once
    assert sorted(len(b) for b in batches) == [1, 4, 4]  # only one short batch
    for b in batches:
      assert b == sorted(b, reverse=True)  # sorted by length within the window
  # A whole pass fits one window here: the batches group similar lengths.
  assert sorted(map(tuple, passes[0])) == [(4,), (20, 16, 11, 7), (39, 32, 29, 24)]
  assert len({tuple(map(tuple, p)) for p in passes}) > 1  # batch order reshuffled
  again = _passes(training.make_dataset(files, _tft_output(root), config, 4,
                                        training=True, seed=5), per_pass, 6)
  assert again == passes  # seeded: reproducible
  # Two replicas: the short batch is padded with one zero-length row, nothing else.
  two = training.make_dataset(files, _tft_output(root), config, 4, training=True, seed=5,
                              replicas=2)
  sizes = sorted(int(x['lengths'].shape[0]) for x, _ in two.take(per_pass))
  assert sizes == [2, 4, 4]
  # fast-dev-run cropping: no batch longer than the crop.
  cropped = training.make_dataset(files, _tft_output(root), config, 4, training=True,
                                  max_steps=10)
  for x, labels in cropped.take(per_pass):
    assert labels.shape[1] <= 10 and x['hot'].shape[1] == labels.shape[1]
    assert max(x['lengths'].numpy()) <= 10


def _bundled_train_lengths(kind: str):
  """Label steps of every training sequence of a bundled dataset (the pipeline's split
  by piece, the config's extractor)."""
  config = configs.get_config('drum_kit' if kind == 'drums' else 'attention_rnn')
  lengths = [len(extraction.from_tf_example(r, config).events)
             for r in bundled_raw_splits(config.name)['train']]
  return config, [n - 1 for n in lengths if n >= 2]


@pytest.mark.parametrize('kind', ['drums', 'melody'])
def test_bucketing_pads_little_on_the_bundled_data(kind):
  """make run's batch (32): padded steps <= 15% of real steps (unsorted: 17% on drums,
  166% on melodies), every sequence once per pass."""
  from music_rnn import compact
  config, lengths = _bundled_train_lengths(kind)
  blocks = compact.input_layout(config).num_blocks

  def element(n):
    return ({'hot': tf.zeros([n, blocks], tf.int32), 'flags': tf.zeros([n], tf.int64),
             'lengths': n}, tf.zeros([n], tf.int32), 0.0)
  sequences = tf.data.Dataset.from_tensor_slices(lengths).map(element)
  per_pass = training.batches_per_pass(len(lengths), 32)
  # As run_fn batches under XLA (the CPU default): steps rounded up to a multiple of 8.
  ds = training._bucketed(sequences, 32, blocks, seed=1).map(  # pylint: disable=protected-access
      training._round_steps(training.XLA_STEP_MULTIPLE)).repeat()  # pylint: disable=protected-access
  real = padded = 0
  for batches in _padded_passes(ds, per_pass, 5, sorted(lengths)):
    real += batches[0]
    padded += batches[1]
  print(f'{kind}: {len(lengths)} sequences, padded/real {padded / real:.3f}')
  assert padded <= 0.15 * real


def _padded_passes(ds, per_pass, num_passes, lengths):
  """(real, padded) steps per pass, checking each pass holds every sequence once."""
  batches = iter(ds)
  for _ in range(num_passes):
    seen, real, padded = [], 0, 0
    for _ in range(per_pass):
      x, labels, _ = next(batches)
      n = x['lengths'].numpy()
      seen += n.tolist()
      real += int(n.sum())
      padded += int(n.size * labels.shape[1] - n.sum())
    assert sorted(seen) == lengths
    yield real, padded


_LOAD = '''
import json, sys
import numpy as np
import tensorflow as tf
loaded = tf.saved_model.load({path!r})
config = json.loads(loaded.signatures['model_config']()['config_json'].numpy().decode())
raw = [bytes.fromhex(h) for h in {raw_hex!r}]
out = loaded.signatures['serving_default'](examples=tf.constant(raw))
probs, lengths = out['probabilities'].numpy(), out['lengths'].numpy()
sums = [probs[b, :n].sum(-1).tolist() for b, n in enumerate(lengths)]
# A request with only the events (no source id, tempo, ...) works too.
ex = tf.train.Example.FromString(raw[0])
for name in list(ex.features.feature):
  if name not in ('drum_pitches', 'drum_pitch_counts'):
    del ex.features.feature[name]
bare = loaded.signatures['serving_default'](examples=tf.constant([ex.SerializeToString()]))
stats = {{k: v.numpy().tolist() for k, v in
         loaded.signatures['evaluate'](examples=tf.constant(raw)).items()}}
print(json.dumps({{
    'config': config, 'shape': list(probs.shape), 'lengths': lengths.tolist(), 'sums': sums,
    'transpose': out['transpose_amount'].numpy().tolist(),
    'dtypes': [str(v.dtype.name) for v in (out['probabilities'], out['lengths'],
                                           out['transpose_amount'])],
    'bare_close': bool(np.allclose(bare['probabilities'].numpy()[0],
                                   probs[0, :lengths[0]], atol=1e-5)),
    'evaluate': stats,
    'project_modules': sorted(m for m in sys.modules
                              if m.split('.')[0] in ('music_rnn', 'tensorflow_transform',
                                                     'tfx', 'keras', 'tensorflow_text'))}}))
'''


def test_run_fn_trains_evaluates_and_exports(transformed, tmp_path):
  root, raw = transformed
  config = configs.get_config(CONFIG)
  fn_args = _fn_args(root, tmp_path)
  training.run_fn(fn_args)

  with open(os.path.join(fn_args.model_run_dir, training.METRICS_FILE)) as f:
    report = json.load(f)
  hparams = config.hparams.replace(**HPARAMS)
  assert report['hparams'] == hparams.to_dict()
  assert report['train_steps'] == 6 and report['global_batch_size'] == 4
  assert report['eval_status'] == 'ok'
  for split in ('train', 'eval'):
    m = report[split]
    assert set(m) == set(training.model_lib.METRIC_NAMES) | {'unigram_loss'}
    assert np.isclose(m['perplexity'], np.exp(m['loss']), rtol=1e-4)
    assert 0 <= m['accuracy'] <= 1 and m['loss'] > 0
    # Add-one-smoothed frequencies of 512 classes over ~190 labels: near uniform.
    assert 0 < m['unigram_loss'] < np.log(config.num_classes)
  assert 0 <= report['padded_fraction'] < 1  # 9 sequences at batch 4, sorted
  assert 'padded_fraction' in report['train_last_interval']
  assert report['train_sequences'] == 9 and report['batches_per_pass'] == 3
  assert [r['step'] for r in report['history']] == [2, 4, 6]
  assert all('val_loss' in r for r in report['history'])
  assert os.path.getsize(os.path.join(fn_args.model_run_dir, training.LOSS_CURVE_FILE)) > 1000
  for sub in ('train', 'eval'):
    assert tf.io.gfile.glob(os.path.join(fn_args.model_run_dir, sub, 'events.out.tfevents*'))

  asset = os.path.join(fn_args.serving_model_dir, 'assets.extra', 'model_config.json')
  with open(asset) as f:
    assert json.load(f) == json.loads(config.to_json(hparams))

  requests = raw['eval'] + raw['eval_empty']  # lengths 14, 9, 2, 1
  proc = _run_fresh_python(_LOAD.format(path=fn_args.serving_model_dir,
                                       raw_hex=[r.hex() for r in requests]))
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out['config'] == json.loads(config.to_json(hparams))
  assert out['shape'] == [4, 14, config.num_classes]
  assert out['lengths'] == [14, 9, 2, 1]
  assert out['transpose'] == [0, 0, 0, 0]
  assert out['dtypes'] == ['float32', 'int64', 'int64']
  for sums in out['sums']:
    np.testing.assert_allclose(sums, 1.0, atol=1e-5)
  assert out['bare_close']
  stats = out['evaluate']
  assert stats['steps'] == [13, 8, 1, 0]
  # The unigram baseline per example: positive on every label, 0 without labels, and
  # summed over the eval split it is the report's eval unigram_loss.
  assert all(u > 0 for u in stats['unigram_xent'][:3]) and stats['unigram_xent'][3] == 0
  np.testing.assert_allclose(sum(stats['unigram_xent']) / sum(stats['steps']),
                             report['eval']['unigram_loss'], rtol=1e-5)
  np.testing.assert_allclose(sum(stats['xent']) / sum(stats['steps']),
                             report['eval']['loss'], rtol=1e-4)
  assert out['project_modules'] == [], out['project_modules']


def test_run_fn_reports_an_empty_eval_split(transformed, tmp_path):
  root, _ = transformed
  fn_args = _fn_args(root, tmp_path, eval_split='eval_empty', train_steps=1)
  training.run_fn(fn_args)
  with open(os.path.join(fn_args.model_run_dir, training.METRICS_FILE)) as f:
    report = json.load(f)
  assert report['eval'] is None and report['eval_status'].startswith('empty')
  assert report['train']['loss'] > 0 and report['train_steps'] == 1
  assert os.path.exists(os.path.join(fn_args.serving_model_dir, 'saved_model.pb'))


_TWO_REPLICAS = """
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import tensorflow_transform as tft
from music_rnn import configs, model as model_lib, training
root = sys.argv[1]
config = configs.get_config('drum_kit')
hparams = config.hparams.replace(rnn_layer_sizes=[8], attn_length=2, batch_size=2)
tft_out = tft.TFTransformOutput(root + '/transform_output')
# 3 eval sequences, global batch 4: unpadded, the replicas would get 2 and 1
# (make_dataset pads to a multiple of 2).
ds = training.make_dataset([root + '/eval/*.gz'], tft_out, config, 4, training=False,
                           replicas=2)
results = []
for strategy in (tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1']),
                 tf.distribute.get_strategy()):
  keras.utils.set_random_seed(0)
  with strategy.scope():
    model = model_lib.build_model(config, hparams)
  results.append(model.evaluate(ds, return_dict=True, verbose=0))
print(json.dumps(results))
"""


def test_short_eval_batch_on_two_replicas(transformed):
  root, _ = transformed
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=repo, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run([sys.executable, '-c', _TWO_REPLICAS, str(root)],
                        env=env, cwd=repo, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  two, one = json.loads(proc.stdout.strip().splitlines()[-1])
  for name in training.model_lib.METRIC_NAMES:
    np.testing.assert_allclose(two[name], one[name], rtol=1e-5)


# --- A model learns. ---------------------------------------------------------------

LEARN_CONFIG = 'lookback_rnn'  # melody structure (lookbacks, bar counters) learns fast
LEARN_PIECES = 160  # Essen tunes: ~145 train / ~15 eval melodies
LEARN_HPARAMS = {'batch_size': 16, 'rnn_layer_sizes': [64], 'learning_rate': 0.01,
                 'dropout_keep_prob': 1.0}
LEARN_STEPS = 120  # ~13 passes; ~1 min here, XLA compiles included


@pytest.fixture(scope='module')
def melodies(tmp_path_factory):
  """The first LEARN_PIECES bundled Essen tunes through the real Transform, split by
  piece as the ExampleGen does."""
  root = tmp_path_factory.mktemp('melodies')
  raw = bundled_raw_splits(LEARN_CONFIG, LEARN_PIECES)
  run_transform(root, LEARN_CONFIG, raw)
  return root


def _label_frequency_loss(root, config, hparams, eval_ds):
  """Eval loss of a model that only learned the training labels' frequencies (add-one
  smoothed, as the unigram baseline): logits = log p(label) at every step."""
  from music_rnn import model as model_lib
  counts = np.ones(config.num_classes)
  for x, labels in training.make_dataset([str(root / 'train' / '*.gz')], _tft_output(root),
                                         config, 64, training=False):
    for n, row in zip(x['lengths'].numpy(), labels.numpy()):
      counts += np.bincount(row[:n], minlength=config.num_classes)
  model = model_lib.build_model(config, hparams)
  model.logits_layer.kernel.assign(np.zeros(model.logits_layer.kernel.shape, 'float32'))
  model.logits_layer.bias.assign(np.log(counts / counts.sum()).astype('float32'))
  return model.evaluate(eval_ds, return_dict=True, verbose=0)['loss']


def test_a_model_learns_to_beat_the_label_frequencies(melodies, tmp_path, monkeypatch):
  """run_fn on real melodies: eval loss at least 10% below the unigram baseline's (the
  blessing margin), which neither an untrained model nor one that only learned the
  label frequencies reaches."""
  from music_rnn import export, model as model_lib
  monkeypatch.setattr(export, 'export_serving_model', lambda *args, **kwargs: None)
  config = configs.get_config(LEARN_CONFIG)
  kwargs = fn_args_kwargs(melodies, tmp_path, hparams=LEARN_HPARAMS, train_steps=LEARN_STEPS,
                          num_evals=1)
  kwargs['eval_steps'] = None  # the whole eval split
  kwargs['custom_config']['config_name'] = LEARN_CONFIG
  from tfx import v1 as tfx
  training.run_fn(tfx.components.FnArgs(**kwargs))
  with open(os.path.join(kwargs['model_run_dir'], training.METRICS_FILE)) as f:
    report = json.load(f)
  loss, unigram = report['eval']['loss'], report['eval']['unigram_loss']
  print(f'{LEARN_CONFIG} after {LEARN_STEPS} steps: eval loss {loss:.3f}, unigram '
        f'{unigram:.3f} ({loss / unigram:.2f}x); padded {report["padded_fraction"]:.3f}')
  assert loss <= 0.9 * unigram

  hparams = config.hparams.replace(**LEARN_HPARAMS)
  eval_ds = training.make_dataset([str(melodies / 'eval' / '*.gz')], _tft_output(melodies),
                                  config, 16, training=False)
  frequencies = _label_frequency_loss(melodies, config, hparams, eval_ds)
  np.testing.assert_allclose(frequencies, unigram, rtol=1e-4)  # the same baseline, twice
  assert frequencies > 0.9 * unigram
  untrained = model_lib.build_model(config, hparams).evaluate(eval_ds, return_dict=True,
                                                              verbose=0)['loss']
  assert untrained > 0.9 * unigram
