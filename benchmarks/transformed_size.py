"""Bytes per transformed tf.Example: the old float `inputs` rows vs the compact form.

Extracts sequences from the bundled data as `music-rnn extract` does, encodes a seeded
sample with Transform's instance-level code (preprocessing.encode_features) and
serializes each example twice:
  old: inputs (float_list, [length * input_size] row-major), labels, length,
       transpose_amount, source_id — what Transform wrote before issue 10;
  new: hot, flags (int64_list), labels, length, transpose_amount, unigram_xent,
       source_id — what it writes now.
Prints the mean serialized bytes per example, the mean in a gzipped TFRecord (how
Transform stores them) and the old/new ratios.
Usage: python benchmarks/transformed_size.py [--configs drum_kit,attention_rnn]
       [--sample 300] [--seed 0]
"""

import argparse
import collections
import os
import random
import tempfile

import numpy as np
import tensorflow as tf

from music_rnn import compact
from music_rnn import configs
from music_rnn import extraction
from music_rnn import features
from music_rnn import preprocessing

DATA = {configs.DRUMS: 'data/drums/freedoom.tfrecord.gz',
        configs.MELODY: 'data/melody/essen_subset.tfrecord'}
_BATCH = 64


def extract(config, pattern):
  stats = collections.Counter()
  return [seq for ns in extraction.read_note_sequences(pattern, stats)
          for seq in extraction.extract_sequences(ns, config, stats)]


def _feature(values, kind):
  if kind == 'float':
    return tf.train.Feature(float_list=tf.train.FloatList(value=values))
  if kind == 'bytes':
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))
  return tf.train.Feature(int64_list=tf.train.Int64List(value=values))


def _example(values_and_kinds):
  return tf.train.Example(features=tf.train.Features(feature={
      k: _feature(v, kind) for k, (v, kind) in values_and_kinds.items()})).SerializeToString()


def encode(config, seqs):
  """Per sequence: its encode_features row as numpy (hot, flags, labels, ...)."""
  spec = features.varlen_feature_spec(config.kind)
  rows = []
  for start in range(0, len(seqs), _BATCH):
    batch = [extraction.to_tf_example(s, config).SerializeToString()
             for s in seqs[start:start + _BATCH]]
    out = preprocessing.encode_features(tf.io.parse_example(batch, spec), config.name)
    ragged = {k: (tf.RaggedTensor.from_sparse(v) if isinstance(v, tf.SparseTensor) else v)
              for k, v in out.items()}
    for i in range(len(batch)):
      rows.append({k: v[i].numpy() for k, v in ragged.items()})
  return rows


def serialize(config, rows):
  """(old, new) serialized examples per row; old's inputs are expanded from the compact
  form, which tests/test_encoding.py checks equals encode_batch and note-seq."""
  layout = compact.input_layout(config)
  all_labels = np.concatenate([r[features.LABELS] for r in rows])
  counts = np.bincount(all_labels, minlength=config.num_classes) + 1.
  log_p = np.log(counts / counts.sum())
  old, new = [], []
  for r in rows:
    n = int(r[features.LENGTH])
    hot = np.reshape(r[features.HOT], [1, n, layout.num_blocks])
    inputs = compact.expand_inputs(config, hot, r[features.FLAGS][np.newaxis]).numpy()
    common = {features.LABELS: (r[features.LABELS], 'int'), features.LENGTH: ([n], 'int'),
              features.TRANSPOSE_AMOUNT: ([r[features.TRANSPOSE_AMOUNT]], 'int'),
              features.SOURCE_ID: ([r[features.SOURCE_ID]], 'bytes')}
    old.append(_example(dict(common, inputs=(inputs.ravel(), 'float'))))
    new.append(_example(dict(common, **{
        features.HOT: (r[features.HOT], 'int'), features.FLAGS: (r[features.FLAGS], 'int'),
        features.UNIGRAM_XENT: ([-log_p[r[features.LABELS]].sum()], 'float')})))
  return old, new


def gzipped_bytes(records):
  """Size of the records as one GZIP TFRecord file (how Transform writes them)."""
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'examples.tfrecord.gz')
    with tf.io.TFRecordWriter(path, 'GZIP') as writer:
      for record in records:
        writer.write(record)
    return os.path.getsize(path)


def report(name, sample, seed):
  config = configs.get_config(name)
  seqs = extract(config, DATA[config.kind])
  rng = random.Random(seed)
  picked = rng.sample(seqs, min(sample, len(seqs)))
  rows = encode(config, picked)
  old, new = serialize(config, rows)
  steps = np.mean([len(s.events) for s in picked])
  mean_old, mean_new = np.mean([len(r) for r in old]), np.mean([len(r) for r in new])
  gz_old, gz_new = gzipped_bytes(old) / len(old), gzipped_bytes(new) / len(new)
  print(f'[{name}] {len(picked)} of {len(seqs)} extracted sequences, mean {steps:.0f} steps, '
        f'input_size {config.input_size}')
  print(f'  serialized: old {mean_old:,.0f} B/example, new {mean_new:,.0f} B/example, '
        f'old/new = {mean_old / mean_new:.1f}x (new = 1/{mean_old / mean_new:.0f})')
  print(f'  gzipped:    old {gz_old:,.0f} B/example, new {gz_new:,.0f} B/example, '
        f'old/new = {gz_old / gz_new:.1f}x')


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--configs', default='drum_kit,attention_rnn')
  parser.add_argument('--sample', type=int, default=300)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args()
  for name in args.configs.split(','):
    report(name, args.sample, args.seed)


if __name__ == '__main__':
  main()
