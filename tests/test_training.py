"""Tests for music_rnn.training and music_rnn.export on a tiny real Transform output.

The fixture runs tensorflow_transform's Beam implementation on a handful of raw drum
tf.Examples (the ExampleGen's format) with the project's preprocessing_fn, then the
tests call run_fn with a real TFX FnArgs and load the SavedModel in a fresh Python.
"""

import functools
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
from music_rnn import features
from music_rnn import training

CONFIG = 'drum_kit'
HPARAMS = {'batch_size': 4, 'rnn_layer_sizes': [16, 16], 'attn_length': 4}
DRUM_PITCHES = (36, 38, 42, 46, 45, 48, 50, 49, 51)


def _sequence(source_id: str, num_steps: int, rng: random.Random):
  events = [tuple(sorted(rng.sample(DRUM_PITCHES, rng.choice([0, 0, 1, 2]))))
            for _ in range(num_steps)]
  return extraction.ExtractedSequence(
      source_id=source_id, track_index=0, start_step=0, steps_per_bar=16,
      steps_per_quarter=4, qpm=120.0, events=events)


def _raw_feature_spec():
  spec = {name: tf.io.FixedLenFeature([], tf.int64) for name in (
      features.TRACK_INDEX, features.START_STEP, features.NUM_STEPS,
      features.STEPS_PER_BAR, features.STEPS_PER_QUARTER)}
  spec[features.SOURCE_ID] = tf.io.FixedLenFeature([], tf.string)
  spec[features.QPM] = tf.io.FixedLenFeature([], tf.float32)
  spec[features.DRUM_PITCHES] = tf.io.VarLenFeature(tf.int64)
  spec[features.DRUM_PITCH_COUNTS] = tf.io.VarLenFeature(tf.int64)
  return spec


# Split -> sequence lengths. 'eval' is smaller than one batch; 'eval_empty' has only a
# one-step sequence, which has nothing to predict and is dropped.
SPLITS = {'train': [30, 12, 1, 25, 8, 40, 17, 5, 33, 21], 'eval': [14, 9, 2],
          'eval_empty': [1]}


@pytest.fixture(scope='module')
def transformed(tmp_path_factory):
  """Runs tft_beam as TFX's Transform does (TFXIO in, tf.Examples out).

  Returns (root dir, {split: serialized raw examples}); root holds transform_output/
  and <split>/*.gz.
  """
  import apache_beam as beam
  import tensorflow_transform.beam as tft_beam
  from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils
  from tfx_bsl.public import tfxio
  from music_rnn import preprocessing

  root = tmp_path_factory.mktemp('transform')
  config = configs.get_config(CONFIG)
  rng = random.Random(0)
  raw = {split: [extraction.to_tf_example(_sequence(f'{split}-{i}', n, rng), config)
                 .SerializeToString() for i, n in enumerate(lengths)]
         for split, lengths in SPLITS.items()}
  for split, records in raw.items():
    os.makedirs(root / 'raw' / split)
    with tf.io.TFRecordWriter(str(root / 'raw' / split / 'data.gz'), 'GZIP') as w:
      for r in records:
        w.write(r)
  schema = schema_utils.schema_from_feature_spec(_raw_feature_spec())

  def read(split):
    return tfxio.TFExampleRecord(str(root / 'raw' / split / '*.gz'), schema=schema)

  fn = functools.partial(preprocessing.preprocessing_fn, custom_config={'config_name': CONFIG})
  with beam.Pipeline() as p, tft_beam.Context(temp_dir=str(root / 'tmp')):
    train = read('train')
    (train_out, out_metadata), transform_fn = (
        (p | 'ReadTrain' >> train.BeamSource(), train.TensorAdapterConfig())
        | tft_beam.AnalyzeAndTransformDataset(fn, output_record_batches=True))
    _ = transform_fn | tft_beam.WriteTransformFn(str(root / 'transform_output'))
    # TFX's Transform also records the raw schema there (raw_feature_spec() reads it).
    metadata_io.write_metadata(dataset_metadata.DatasetMetadata(schema),
                               str(root / 'transform_output' / 'metadata'))
    outputs = {'train': train_out}
    for split in ('eval', 'eval_empty'):
      source = read(split)
      outputs[split], _ = (
          ((p | f'Read{split}' >> source.BeamSource(), source.TensorAdapterConfig()),
           transform_fn)
          | f'Transform{split}' >> tft_beam.TransformDataset(output_record_batches=True))
    for split, data in outputs.items():
      _ = (data
           | f'Encode{split}' >> beam.FlatMapTuple(
               lambda batch, _, schema=out_metadata.schema:
               tfxio.RecordBatchToExamplesEncoder(schema).encode(batch))
           | f'Write{split}' >> beam.io.WriteToTFRecord(
               str(root / split / 'data'), file_name_suffix='.gz',
               compression_type=beam.io.filesystem.CompressionTypes.GZIP))
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


def test_dataset_aligns_inputs_and_labels(transformed):
  import tensorflow_transform as tft
  root, _ = transformed
  config = configs.get_config(CONFIG)
  tft_out = tft.TFTransformOutput(str(root / 'transform_output'))
  files = [str(root / 'train' / '*.gz')]
  spec = tft_out.transformed_feature_spec()
  records = [training.parse_transformed(r, spec, config.input_size) for r in
             tf.data.TFRecordDataset(tf.io.gfile.glob(files[0]), compression_type='GZIP')]
  by_length = {int(n): (i.numpy(), l.numpy()) for i, l, n in records}
  assert sorted(by_length) == sorted(SPLITS['train'])

  ds = training.make_dataset(files, tft_out, config, 3, training=False)
  seen = []
  for x, labels in ds:
    assert labels.shape[0] == 3  # the short last batch is padded to the full size
    for inputs, n, lab in zip(x['inputs'].numpy(), x['lengths'].numpy(), labels.numpy()):
      if n == 0:
        continue  # padding row
      full_inputs, full_labels = by_length[n + 1]
      np.testing.assert_array_equal(inputs[:n], full_inputs[:n])  # steps 0..length-2
      np.testing.assert_array_equal(lab[:n], full_labels)
      seen.append(n + 1)
  assert sorted(seen) == sorted(n for n in SPLITS['train'] if n >= 2)

  def first_batches(seed):
    ds = training.make_dataset(files, tft_out, config, 4, training=True, seed=seed)
    return [x['lengths'].numpy().tolist() for x, _ in ds.take(3)]
  assert first_batches(5) == first_batches(5)  # seeded shuffle is reproducible


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
print(json.dumps({{
    'config': config, 'shape': list(probs.shape), 'lengths': lengths.tolist(), 'sums': sums,
    'transpose': out['transpose_amount'].numpy().tolist(),
    'dtypes': [str(v.dtype.name) for v in (out['probabilities'], out['lengths'],
                                           out['transpose_amount'])],
    'bare_close': bool(np.allclose(bare['probabilities'].numpy()[0],
                                   probs[0, :lengths[0]], atol=1e-5)),
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
    assert set(m) == set(training.model_lib.METRIC_NAMES)
    assert np.isclose(m['perplexity'], np.exp(m['loss']), rtol=1e-4)
    assert 0 <= m['accuracy'] <= 1 and m['loss'] > 0
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
# 3 eval sequences, global batch 4: unpadded, the replicas would get 2 and 1.
ds = training.make_dataset([root + '/eval/*.gz'], tft_out, config, 4, training=False)
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
