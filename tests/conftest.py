"""Shared test fixtures: small real slices of the bundled data."""

import functools
import glob
import os
import subprocess
import sys
from typing import Optional

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Tiny test models train a few steps: their perplexity is near a uniform guess, so tests
# that need a push bless any model with a finite loss below twice that, with no baseline.
SMOKE_BLESSING = ('max_perplexity_fraction=2,loss_tolerance=none,unigram_margin=none,'
                  'min_vae_event_accuracy=none')


def smoke_blessing():
  from pipeline import configs  # pylint: disable=g-import-not-at-top
  return configs.BLESSING.replace(SMOKE_BLESSING)


def hundred_thousand_notes():
  """(pitch, start, end[, is_drum]) tuples: 50,000 drum and 50,000 melody onsets, with a
  4-second gap after every 2000 onsets (so extraction restarts 25 times)."""
  import random  # pylint: disable=g-import-not-at-top
  rng = random.Random(0)
  notes, t = [], 0.0
  for i in range(50_000):
    notes.append((rng.choice((36, 38, 42, 46)), t, t + 0.1, True))
    notes.append((rng.randrange(55, 80), t, t + 0.12))
    t += 0.125 + (4.0 if i % 2000 == 1999 else 0.0)
  return notes


def bundled(kind: str) -> str:
  """Path of the bundled NoteSequence TFRecord for 'drums' or 'melody'."""
  from music_rnn import configs as model_configs
  from pipeline import configs
  path = configs.default_data(model_configs.DRUMS if kind == 'drums' else model_configs.MELODY)
  matches = sorted(glob.glob(path))
  if not matches:
    pytest.fail(f'Bundled data {path} is missing: run `make data` first.')
  return matches[0]


def write_slice(src: str, dst: str, num_records: int, skip: int = 0) -> str:
  """Copies records [skip, skip + num_records) of a NoteSequence TFRecord to `dst`."""
  import tensorflow as tf
  from music_rnn import io_utils  # pylint: disable=unused-import
  compression = 'GZIP' if src.endswith('.gz') else None
  records = list(tf.data.TFRecordDataset(src, compression_type=compression)
                 .skip(skip).take(num_records).as_numpy_iterator())
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  with tf.io.TFRecordWriter(dst) as w:
    for r in records:
      w.write(r)
  return dst


def write_slice_with_eval(src: str, dst: str, num_records: int) -> str:
  """Like write_slice, but guarantees at least one piece lands in the eval split.

  Uses the ExampleGen's own split config and TFX's partition function, so the slice is
  small and still exercises both splits.
  """
  import collections
  import tensorflow as tf
  from tfx.components.example_gen import base_example_gen_executor
  from components.note_sequence_example_gen.component import split_config
  from music_rnn import extraction, features
  config = split_config(0.1).split_config
  buckets = []
  total = 0
  for split in config.splits:
    total += split.hash_buckets
    buckets.append(total)
  train, evals = [], []
  stats = collections.Counter()
  for ns in extraction.read_note_sequences(src, stats):
    ex = tf.train.Example()
    ex.features.feature[features.SOURCE_ID].bytes_list.value.append(
        extraction.source_id_of(ns).encode())
    part = base_example_gen_executor._PartitionFn(ex, len(buckets), buckets, config)  # pylint: disable=protected-access
    (evals if part == 1 else train).append(ns)
    if len(evals) >= 1 and len(train) >= num_records - 1:
      break
  chosen = train[:num_records - 1] + evals[:1]
  os.makedirs(os.path.dirname(dst), exist_ok=True)
  with tf.io.TFRecordWriter(dst) as w:
    for ns in chosen:
      w.write(ns.SerializeToString())
  return dst


def run_fresh_python(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
  """Runs `code` in a new interpreter outside the project tree (-P: no cwd on sys.path)."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  return subprocess.run([sys.executable, '-P', '-c', code], cwd='/', env=env,
                        capture_output=True, text=True, timeout=timeout)


def unsaved_gradient_warnings(stderr: str) -> list:
  """TensorFlow's load-time warnings of "unsaved custom gradients" in `stderr`: an export
  that traced a training-only gradient (exports should trace inference only)."""
  return [line for line in stderr.splitlines() if 'custom gradients' in line]


# --- Transform, as TFX runs it, outside a pipeline (tests, benchmarks). ---------------


def raw_feature_spec(kind: str):
  """The raw schema ExampleGen's tf.Examples get from SchemaGen (fixed-size metadata)."""
  import tensorflow as tf
  from music_rnn import features
  spec = {name: tf.io.FixedLenFeature([], tf.int64) for name in (
      features.TRACK_INDEX, features.START_STEP, features.NUM_STEPS,
      features.STEPS_PER_BAR, features.STEPS_PER_QUARTER)}
  spec[features.SOURCE_ID] = tf.io.FixedLenFeature([], tf.string)
  spec[features.QPM] = tf.io.FixedLenFeature([], tf.float32)
  for name in features.raw_event_features(kind):
    spec[name] = tf.io.VarLenFeature(tf.int64)
  return spec


def run_transform(root, config_name: str, raw, analyze: str = 'train'):
  """Runs tft_beam as TFX's Transform does (TFXIO in, tf.Examples out) on `raw`
  ({split: serialized raw tf.Examples}), analyzing `analyze`. Writes root/raw/<split>/,
  root/transform_output/ and root/<split>/*.gz."""
  import apache_beam as beam
  import tensorflow_transform.beam as tft_beam
  from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils
  from tfx_bsl.public import tfxio
  import tensorflow as tf
  from music_rnn import configs, preprocessing

  for split, records in raw.items():
    os.makedirs(root / 'raw' / split)
    with tf.io.TFRecordWriter(str(root / 'raw' / split / 'data.gz'), 'GZIP') as w:
      for r in records:
        w.write(r)
  schema = schema_utils.schema_from_feature_spec(
      raw_feature_spec(configs.get_config(config_name).kind))

  def read(split):
    return tfxio.TFExampleRecord(str(root / 'raw' / split / '*.gz'), schema=schema)

  fn = functools.partial(preprocessing.preprocessing_fn,
                         custom_config={'config_name': config_name})
  with beam.Pipeline() as p, tft_beam.Context(temp_dir=str(root / 'tmp')):
    source = read(analyze)
    (analyzed, out_metadata), transform_fn = (
        (p | 'ReadAnalyzed' >> source.BeamSource(), source.TensorAdapterConfig())
        | tft_beam.AnalyzeAndTransformDataset(fn, output_record_batches=True))
    _ = transform_fn | tft_beam.WriteTransformFn(str(root / 'transform_output'))
    # TFX's Transform also records the raw schema there (raw_feature_spec() reads it).
    metadata_io.write_metadata(dataset_metadata.DatasetMetadata(schema),
                               str(root / 'transform_output' / 'metadata'))
    outputs = {analyze: analyzed}
    for split in raw:
      if split == analyze:
        continue
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


def bundled_raw_splits(config_name: str, max_pieces: Optional[int] = None):
  """{'train', 'eval': serialized raw tf.Examples} of the bundled data for a config: the
  first `max_pieces` pieces (all: None), extracted and split by piece as the ExampleGen
  does (the config's eval_ratio; MusicVAE configs: train keeps the sampled slices)."""
  import collections
  from components.note_sequence_example_gen import splitting
  from music_rnn import configs, extraction
  config = configs.get_config(config_name)
  stats = collections.Counter()
  seqs = []
  for i, ns in enumerate(extraction.read_note_sequences(bundled(config.kind), stats)):
    if i == max_pieces:
      break
    seqs += extraction.extract_sequences(ns, config, stats)
  held_out = splitting.eval_pieces([s.source_id for s in seqs], config.extractor.eval_ratio)
  raw = {'train': [], 'eval': []}
  for s in seqs:
    split = 'eval' if s.source_id in held_out else 'train'
    if split == 'train' and s.in_training_sample is False:
      continue  # a MusicVAE slice outside its piece's training sample (as the ExampleGen)
    raw[split].append(extraction.to_tf_example(s, config).SerializeToString())
  return raw


class MagentaOracle:
  """tests/magenta_oracle.py (Magenta 2.1.4 from .oracle-site) on `pieces` in a
  background subprocess, started before the tests that read it, so it overlaps them."""

  def __init__(self, tmp_dir: str, pieces, kinds):
    import subprocess  # pylint: disable=g-import-not-at-top
    import sys  # pylint: disable=g-import-not-at-top
    from music_rnn import io_utils  # pylint: disable=g-import-not-at-top
    path = os.path.join(tmp_dir, 'pieces.tfrecord')
    io_utils.write_tfrecords(path, [ns.SerializeToString() for ns in pieces])
    env = dict(os.environ, PYTHONPATH=os.path.join(PROJECT_ROOT, '.oracle-site'),
               TF_CPP_MIN_LOG_LEVEL='3')
    self._proc = subprocess.Popen(
        [sys.executable, os.path.join(PROJECT_ROOT, 'tests', 'magenta_oracle.py'),
         ','.join(kinds), path],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    self._lines = None

  def lines(self, kind):
    """The oracle's JSON lines of one kind (waits for it the first time)."""
    import json  # pylint: disable=g-import-not-at-top
    if self._lines is None:
      out, err = self._proc.communicate(timeout=600)
      assert self._proc.returncode == 0, err[-3000:]
      self._lines = [json.loads(line) for line in out.splitlines() if line.startswith('{')]
    return [line for line in self._lines if line['kind'] == kind]

  def stop(self):
    if self._proc.poll() is None:
      self._proc.kill()
      self._proc.communicate()
