"""Trainer throughput: the TFX Trainer's run_fn vs a bare Keras `fit` of the same model.

Both train the same EventSequenceRnn (same hparams, same global batch) for the same
number of steps on this machine; the Trainer's run_fn reads the transformed TFRecords
through its tf.data pipeline (gzip, parse ~1 MB drum examples, shuffle, pad), the bare
fit gets the same kind of real batches already parsed and cached in memory.
Prints examples/s for each. Needs a finished `music-rnn run` (or `make run`) of the
config under build/ for its Transform output.
Usage: python benchmarks/trainer_throughput.py [--config drum_kit] [--steps 20]
"""

import argparse
import glob
import json
import os
import tempfile
import time

import tensorflow as tf
from tfx.components.trainer import fn_args_utils

from music_rnn import configs
from music_rnn import model as model_lib
from music_rnn import training
from pipeline import configs as pipeline_configs


def latest(path_glob):
  paths = sorted(glob.glob(path_glob), key=os.path.getmtime)
  if not paths:
    raise SystemExit(f'Nothing matches {path_glob}: run `make run` first.')
  return paths[-1]


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--config', default='drum_kit', choices=sorted(configs.CONFIGS))
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--batch-size', type=int, default=32)
  parser.add_argument('--layers', default='64,64')
  args = parser.parse_args()
  config = configs.get_config(args.config)
  hparams = config.hparams.replace(
      batch_size=args.batch_size, rnn_layer_sizes=[int(s) for s in args.layers.split(',')])
  root = os.path.join(pipeline_configs.OUTPUT_ROOT, 'pipelines',
                      pipeline_configs.pipeline_name(config.name), 'Transform')
  transform_graph = latest(os.path.join(root, 'transform_graph', '*'))
  examples = latest(os.path.join(root, 'transformed_examples', '*'))

  with tempfile.TemporaryDirectory() as tmp:
    fn_args = fn_args_utils.FnArgs(
        train_files=[os.path.join(examples, 'Split-train', '*')],
        eval_files=[os.path.join(examples, 'Split-eval', '*')],
        transform_output=transform_graph, serving_model_dir=os.path.join(tmp, 'serving'),
        model_run_dir=os.path.join(tmp, 'run'), train_steps=args.steps, eval_steps=1,
        custom_config={'config_name': config.name, 'hparams': hparams.to_dict(),
                       'num_evals': 1, 'checkpoint_every': 0},
        data_accessor=None)
    t = time.perf_counter()
    training.run_fn(fn_args)
    wall = time.perf_counter() - t
    with open(os.path.join(tmp, 'run', training.METRICS_FILE)) as f:
      metrics = json.load(f)
  trainer_eps = metrics.get('train_examples_per_sec')
  print(f'[{config.name}] Trainer run_fn: {trainer_eps:.1f} examples/s while training '
        f'({args.steps} steps, global batch {metrics.get("global_batch_size")}; '
        f'{wall:.0f} s wall incl. eval + export)')

  # The same model on the same kind of batches, already parsed and held in memory: the
  # first `steps` training batches of the Trainer's own input pipeline, cached.
  import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top
  dataset = training.make_dataset(
      [os.path.join(examples, 'Split-train', '*')], tft.TFTransformOutput(transform_graph),
      config, args.batch_size, training=True).take(args.steps).cache()
  for _ in dataset:  # fill the cache before timing
    pass
  model = model_lib.build_model(config, hparams)
  model.fit(dataset.take(2), epochs=1, verbose=0)  # trace
  t = time.perf_counter()
  model.fit(dataset, epochs=1, verbose=0)
  bare_s = time.perf_counter() - t
  bare_eps = args.steps * args.batch_size / bare_s
  print(f'[{config.name}] bare Keras fit: {bare_eps:.1f} examples/s '
        f'({args.steps} batches of {args.batch_size} real sequences, parsed, in memory)')
  print(f'[{config.name}] Trainer / bare = {trainer_eps / bare_eps:.2f}')


if __name__ == '__main__':
  main()
