"""Shared test fixtures: small real slices of the bundled data."""

import glob
import os
import subprocess
import sys

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Tiny test models train a few steps: their perplexity is near a uniform guess, so tests
# that need a push bless any model with a finite loss below twice that, with no baseline.
SMOKE_BLESSING = 'max_perplexity_fraction=2,loss_tolerance=none'


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
