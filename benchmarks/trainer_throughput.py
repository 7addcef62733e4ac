"""Trainer throughput: the TFX Trainer's run_fn on real transformed data, and its padding.

run_fn reads the transformed TFRecords through its own tf.data pipeline (gzip, parse the
compact examples, length-bucketed batches) and trains for --steps steps; this prints its
examples/s (real sequences, timed over training only: no eval, no export), the padded
fraction of its training batches (padded steps / real steps, the model's metric), and a
bare Keras `fit` of the same model on the same kind of batches already parsed and held
in memory (what the input pipeline costs).

Data: by default the bundled data of the config, extracted, split by piece and run
through the real Transform (tft_beam) in a temporary directory; --from-pipeline uses the
latest `make run` Transform output under build/ instead.
Usage: python benchmarks/trainer_throughput.py [--config drum_kit] [--steps 60]
         [--batch-size 32] [--layers 64,64] [--steps-per-execution 1,4] [--jit-compile auto]
"""

import argparse
import glob
import json
import os
import tempfile
import time

from tfx.components.trainer import fn_args_utils

from music_rnn import configs
from music_rnn import export
from music_rnn import model as model_lib
from music_rnn import training
from pipeline import configs as pipeline_configs


def latest(path_glob):
  paths = sorted(glob.glob(path_glob), key=os.path.getmtime)
  if not paths:
    raise SystemExit(f'Nothing matches {path_glob}: run `make run` first.')
  return paths[-1]


def pipeline_data(config):
  """(train files, eval files, transform graph) of the latest `make run` of `config`."""
  root = os.path.join(pipeline_configs.OUTPUT_ROOT, 'pipelines',
                      pipeline_configs.pipeline_name(config.name), 'Transform')
  examples = latest(os.path.join(root, 'transformed_examples', '*'))
  return ([os.path.join(examples, 'Split-train', '*')],
          [os.path.join(examples, 'Split-eval', '*')],
          latest(os.path.join(root, 'transform_graph', '*')))


def bundled_data(config, work_dir):
  """The same from the bundled data, through the real Transform, in `work_dir`."""
  import pathlib  # pylint: disable=g-import-not-at-top
  from tests.conftest import bundled_raw_splits, run_transform  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(work_dir) / 'transform'
  root.mkdir()
  t = time.perf_counter()
  raw = bundled_raw_splits(config.name)
  run_transform(root, config.name, raw)
  print(f'[{config.name}] Transform of the bundled data: {len(raw["train"])} train / '
        f'{len(raw["eval"])} eval sequences, {time.perf_counter() - t:.0f} s')
  return [str(root / 'train' / '*.gz')], [str(root / 'eval' / '*.gz')], str(root /
                                                                           'transform_output')


def run_trainer(config, hparams, data, steps, work_dir, spe, jit_compile):
  """run_fn for `steps` steps (one evaluation of one batch, no export): its metrics."""
  train_files, eval_files, graph = data
  run_dir = os.path.join(work_dir, f'run-{spe}-{jit_compile}')
  custom = {'config_name': config.name, 'hparams': hparams.to_dict(), 'num_evals': 1,
            'steps_per_execution': spe}
  if jit_compile != 'auto':
    custom['jit_compile'] = jit_compile == 'on'
  fn_args = fn_args_utils.FnArgs(
      train_files=train_files, eval_files=eval_files, transform_output=graph,
      serving_model_dir=os.path.join(run_dir, 'serving'),
      model_run_dir=os.path.join(run_dir, 'run'), train_steps=steps, eval_steps=1,
      custom_config=custom, data_accessor=None)
  save = export.export_serving_model
  export.export_serving_model = lambda *args, **kwargs: None  # not what is measured
  try:
    t = time.perf_counter()
    training.run_fn(fn_args)
    wall = time.perf_counter() - t
  finally:
    export.export_serving_model = save
  with open(os.path.join(run_dir, 'run', training.METRICS_FILE)) as f:
    return json.load(f), wall


def bare_fit(config, hparams, data, steps):
  """The same model and batches, parsed and cached in memory: examples/s of Keras fit."""
  import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top
  dataset = training.make_dataset(data[0], tft.TFTransformOutput(data[2]), config,
                                  hparams.batch_size, training=True).take(steps).cache()
  examples = sum(int((x[model_lib.LENGTHS] > 0).numpy().sum()) for x, _ in dataset)
  model = model_lib.build_model(config, hparams)
  model.fit(dataset, epochs=1, verbose=0)  # fills the cache, compiles every shape
  t = time.perf_counter()
  model.fit(dataset, epochs=1, verbose=0)
  return examples / (time.perf_counter() - t)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--config', default='drum_kit', choices=sorted(configs.CONFIGS))
  parser.add_argument('--steps', type=int, default=60)
  parser.add_argument('--batch-size', type=int, default=32)
  parser.add_argument('--layers', default='64,64')
  parser.add_argument('--steps-per-execution', default=str(training.STEPS_PER_EXECUTION),
                      help='comma-separated: one run_fn per value')
  parser.add_argument('--jit-compile', default='auto', choices=('auto', 'on', 'off'))
  parser.add_argument('--from-pipeline', action='store_true')
  parser.add_argument('--no-bare-fit', action='store_true')
  args = parser.parse_args()
  config = configs.get_config(args.config)
  hparams = config.hparams.replace(
      batch_size=args.batch_size, rnn_layer_sizes=[int(s) for s in args.layers.split(',')])

  with tempfile.TemporaryDirectory() as tmp:
    data = pipeline_data(config) if args.from_pipeline else bundled_data(config, tmp)
    for spe in [int(s) for s in args.steps_per_execution.split(',')]:
      metrics, wall = run_trainer(config, hparams, data, args.steps, tmp, spe,
                                  args.jit_compile)
      print(f'[{config.name}] Trainer run_fn: {metrics["train_examples_per_sec"]:.1f} '
            f'examples/s while training ({args.steps} steps, global batch '
            f'{metrics["global_batch_size"]}, {metrics["train_sequences"]} sequences = '
            f'{metrics["batches_per_pass"]} batches per pass, steps_per_execution '
            f'{metrics["steps_per_execution"]}, XLA {metrics["jit_compile"]}); padded '
            f'fraction {metrics["padded_fraction"]:.3f}; {wall:.0f} s wall incl. compiles '
            f'and eval')
    if not args.no_bare_fit:
      bare = bare_fit(config, hparams, data, args.steps)
      print(f'[{config.name}] bare Keras fit: {bare:.1f} examples/s (the first '
            f'{args.steps} training batches, parsed, in memory, compiled)')


if __name__ == '__main__':
  main()
