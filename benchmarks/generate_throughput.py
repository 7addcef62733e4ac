"""Generation throughput: the `generate` signature vs re-running `serving_default`.

For drum_kit and attention_rnn at Magenta's default sizes (untrained: speed does not
depend on the weights), prints events/s for batch 1 and batch 64 over 512 steps:
  - generate: one call of the SavedModel's `generate` signature (RNN state carried);
  - naive: every new event re-runs `serving_default` (tf.Example -> Transform -> RNN over
    the whole sequence) and samples from its last step. Its cost grows with the length,
    so it is timed at lengths 1, 256 and 512 and summed over 1..512 (linear
    interpolation); a full naive run would take many CPU-minutes.
`generate` is timed twice: in the default export, whose sampling loop is XLA-compiled,
and in an export made with jit_compile=False (plain TensorFlow ops, `--no-xla-generation`).

Usage: python benchmarks/generate_throughput.py [--configs drum_kit,attention_rnn]
       [--steps 512] [--work-dir build/benchmarks/generate]
Exports are cached in --work-dir (delete it after changing the export code).
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PROJECT_ROOT)

from music_rnn import configs  # pylint: disable=g-import-not-at-top,wrong-import-position
from music_rnn import events as events_lib  # pylint: disable=wrong-import-position
from music_rnn import extraction  # pylint: disable=wrong-import-position
from music_rnn import features  # pylint: disable=wrong-import-position


def _example(config, events) -> bytes:
  if config.kind == configs.DRUMS:
    events = events_lib.class_indices_to_drum_events(events)
  seq = extraction.ExtractedSequence(source_id='x', track_index=0, start_step=0,
                                     steps_per_bar=16, steps_per_quarter=4, qpm=120.,
                                     events=list(events))
  return extraction.to_tf_example(seq, config).SerializeToString()


def export_untrained(config, work_dir: str, jit_compile: bool = True) -> str:
  """An export of a freshly initialised default-size model (Transform run in Beam);
  `jit_compile`: XLA-compiled sampling loop (the default export) or plain TF ops."""
  import functools  # pylint: disable=g-import-not-at-top
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top
  import tensorflow_transform.beam as tft_beam  # pylint: disable=g-import-not-at-top
  from tensorflow_transform.tf_metadata import dataset_metadata  # pylint: disable=g-import-not-at-top
  from tensorflow_transform.tf_metadata import metadata_io  # pylint: disable=g-import-not-at-top
  from tensorflow_transform.tf_metadata import schema_utils  # pylint: disable=g-import-not-at-top
  from tfx_bsl.public import tfxio  # pylint: disable=g-import-not-at-top
  from music_rnn import export  # pylint: disable=g-import-not-at-top
  from music_rnn import model as model_lib  # pylint: disable=g-import-not-at-top
  from music_rnn import preprocessing  # pylint: disable=g-import-not-at-top

  out = os.path.join(work_dir, config.name + ('' if jit_compile else '-no-xla'))
  if os.path.exists(os.path.join(out, 'saved_model.pb')):
    return out
  tmp = tempfile.mkdtemp(dir=work_dir)
  raw = os.path.join(tmp, 'raw.tfrecord')
  with tf.io.TFRecordWriter(raw) as writer:
    writer.write(_example(config, [0, 1, 0] if config.kind == configs.DRUMS else [60, -2, 62]))
  schema = schema_utils.schema_from_feature_spec(features.varlen_feature_spec(config.kind))
  source = tfxio.TFExampleRecord(raw, schema=schema)
  transform_dir = os.path.join(tmp, 'transform_fn')
  with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=os.path.join(tmp, 'beam')):
    transform_fn = ((pipeline | source.BeamSource(), source.TensorAdapterConfig())
                    | tft_beam.AnalyzeDataset(functools.partial(
                        preprocessing.preprocessing_fn,
                        custom_config={'config_name': config.name})))
    _ = transform_fn | tft_beam.WriteTransformFn(transform_dir)
  # Where TFX's Transform puts the raw schema (serving_default parses requests with it).
  metadata_io.write_metadata(dataset_metadata.DatasetMetadata(schema),
                             os.path.join(transform_dir, 'metadata'))
  keras.utils.set_random_seed(0)
  model = model_lib.build_model(config, config.hparams)
  export.export_serving_model(model, config, config.hparams,
                              tft.TFTransformOutput(transform_dir), out, jit_compile=jit_compile)
  return out


def _primer(config, batch):
  return np.full([batch, 1], 0 if config.kind == configs.DRUMS else 60, np.int64)


def time_generate(loaded, config, batch, steps, repeats):
  """(best events/s of `repeats` calls, seconds of the first call). The machine is
  shared: the best is the least disturbed. The first call at a new shape also traces,
  and with XLA compiles, the sampling loop."""
  generate = loaded.signatures['generate']

  def call(num_steps, seed):
    return generate(primer=tf.constant(_primer(config, batch)),
                    num_steps=tf.constant(num_steps), temperature=tf.constant(1.0),
                    seed=tf.constant(seed, tf.int64))

  start = time.perf_counter()
  call(steps, repeats)
  first = time.perf_counter() - start
  best = 0.
  for seed in range(repeats):
    start = time.perf_counter()
    out = call(steps, seed)
    seconds = time.perf_counter() - start
    assert out['events'].shape == (batch, 1 + steps)
    best = max(best, batch * steps / seconds)
  return best, first


def _decode(config, labels, events):
  """Sampled labels -> events, for the naive loop (note-seq's class_index_to_event)."""
  if config.kind == configs.DRUMS:
    return labels
  r = config.max_note - config.min_note
  out = []
  for label, seq in zip(labels, events):
    if label < r:
      out.append(config.min_note + label)
    elif label == r:
      out.append(configs.MELODY_NO_EVENT)
    elif label == r + 1:
      out.append(configs.MELODY_NOTE_OFF)
    else:
      d = config.lookback_distances[label - r - 2]
      out.append(seq[-d] if len(seq) >= d else configs.MELODY_NO_EVENT)
  return out


def naive_step_seconds(serve, config, events, rng):
  """One naive step: re-run serving_default on the sequences, sample the next events."""
  start = time.perf_counter()
  probs = serve(examples=tf.constant([_example(config, e) for e in events]))['probabilities']
  last = np.log(probs.numpy()[:, len(events[0]) - 1] + 1e-30)
  labels = np.argmax(last - np.log(-np.log(rng.random(last.shape))), -1)
  new = _decode(config, labels, events)
  seconds = time.perf_counter() - start
  return seconds, [list(e) + [int(n)] for e, n in zip(events, new)]


def time_naive(loaded, config, batch, steps, lengths, repeats):
  """Estimated events/s of the naive loop over `steps` steps, from timed lengths."""
  serve = loaded.signatures['serving_default']
  rng = np.random.default_rng(0)
  events = [list(p) for p in _primer(config, batch)]
  naive_step_seconds(serve, config, events, rng)  # warm up
  cost = {}
  for length in lengths:
    seqs = [list(p) + [p[0]] * (length - 1) for p in _primer(config, batch)]
    cost[length] = min(naive_step_seconds(serve, config, seqs, rng)[0]
                       for _ in range(repeats))
  xs = sorted(cost)
  total = float(np.interp(np.arange(1, steps + 1), xs, [cost[x] for x in xs]).sum())
  return batch * steps / total, cost


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--configs', default='drum_kit,attention_rnn')
  parser.add_argument('--steps', type=int, default=512)
  parser.add_argument('--work-dir', default=os.path.join(PROJECT_ROOT, 'build', 'benchmarks',
                                                         'generate'))
  args = parser.parse_args()
  os.makedirs(args.work_dir, exist_ok=True)
  print(f'load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs '
        '(the machine may be shared: numbers are the best of a few runs)')
  for name in args.configs.split(','):
    config = configs.get_config(name)
    hp = config.hparams
    start = time.perf_counter()
    path = export_untrained(config, args.work_dir)
    loaded = tf.saved_model.load(path)
    print(f'\n[{name}] rnn_layer_sizes={list(hp.rnn_layer_sizes)} attn_length={hp.attn_length}'
          f' input_size={config.input_size} classes={config.num_classes} '
          f'(export + load {time.perf_counter() - start:.0f} s)')
    plain = tf.saved_model.load(export_untrained(config, args.work_dir, jit_compile=False))
    for batch in (1, 64):
      fast, first = time_generate(loaded, config, batch, args.steps,
                                  repeats=3 if batch == 1 else 2)
      no_xla, first_no_xla = time_generate(plain, config, batch, args.steps,
                                           repeats=3 if batch == 1 else 2)
      # The naive cost is about linear in the length: three lengths pin it down.
      slow, cost = time_naive(loaded, config, batch, args.steps,
                              (1, args.steps // 2, args.steps), repeats=2 if batch == 1 else 1)
      print(f'  batch {batch:>2}, {args.steps} steps: generate {fast:9.0f} events/s '
            f'(without XLA {no_xla:7.0f}) | naive serving_default loop {slow:7.1f} events/s | '
            f'speed-up {fast / slow:6.0f}x')
      print(f'           first call (trace + XLA compile) {first:.1f} s, without XLA '
            f'{first_no_xla:.1f} s; naive seconds per step at length ' + ', '.join(
                f'{k}: {v:.3f}' for k, v in sorted(cost.items())))
  print(f'\nload average at end: {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
  main()
