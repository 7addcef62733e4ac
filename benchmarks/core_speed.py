"""Train-step speed of the model core: examples/s of Keras fit steps on fixed batches.

For drum_kit and attention_rnn, at [64, 64] batch 32 (the sizes Magenta 2.1.4's trainer
was timed at on this machine: drum_kit 9.7-10.5, attention_rnn 19.4-20.5 examples/s)
and at Magenta's default sizes, prints examples/s of:
  - baseline: the old formulation (keras.layers.LSTM + the AttentionLSTMCell port via
    `EventSequenceRnn.reference_call`) on full float input rows, XLA off (as before);
  - the model's own call (gathered first layer, matmuls outside the loop, folded
    attention projection, carried keys, hand-written backward loops with the weight
    gradients as one matmul after them) on compact inputs, compiled two ways:
    xla: the whole train step XLA-compiled (build_model(jit_compile=True));
    hybrid: jit_compile=False: the attention layer's forward and backward loops as
    XLA clusters, plain LSTM loops as TF while loops.
    build_model's default ('auto') is xla for layers of <= 64 units (<= 256 with
    attention), hybrid above.
Batches are uniform length (length bucketing removes most padding): drums 400 steps,
melodies 190. Several repeats; the machine's load is printed with the numbers.

Usage: python benchmarks/core_speed.py [--configs drum_kit,attention_rnn]
       [--sizes small,default] [--steps 4] [--repeats 3] [--variants baseline,xla,hybrid]
"""

import argparse
import os
import sys
import time

import numpy as np

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, PROJECT_ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import keras  # pylint: disable=g-import-not-at-top,wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position

from music_rnn import compact  # pylint: disable=wrong-import-position
from music_rnn import configs  # pylint: disable=wrong-import-position
from music_rnn import model as model_lib  # pylint: disable=wrong-import-position

STEPS = {'drum_kit': 400, 'attention_rnn': 190}
SMALL = {'drum_kit': dict(rnn_layer_sizes=(64, 64), attn_length=32, batch_size=32),
         'attention_rnn': dict(rnn_layer_sizes=(64, 64), attn_length=40, batch_size=32)}


class Baseline(model_lib.EventSequenceRnn):
  """The old model: Keras LSTM layers and the attention cell on full input rows."""

  def call(self, inputs, training=False):
    return self.reference_call(inputs, training=training)


def _batch(config, batch_size, num_steps, seed=0):
  """A random uniform-length batch: (compact inputs, full-row inputs, labels)."""
  layout = compact.input_layout(config)
  rng = np.random.default_rng(seed)
  hot = np.stack([rng.integers(0, size, (batch_size, num_steps)) + offset
                  for size, offset in zip(layout.block_sizes, layout.block_offsets)], -1)
  flags = rng.integers(0, 2 ** max(layout.num_flag_bits, 1), (batch_size, num_steps))
  lengths = np.full([batch_size], num_steps, np.int32)
  labels = rng.integers(0, config.num_classes, (batch_size, num_steps))
  rows = compact.expand_inputs(config, hot, flags).numpy()
  return ({model_lib.HOT: hot, model_lib.FLAGS: flags, model_lib.LENGTHS: lengths},
          {model_lib.INPUTS: rows, model_lib.LENGTHS: lengths}, labels)


def _model(variant, config, hparams):
  keras.utils.set_random_seed(0)
  if variant == 'baseline':
    model = Baseline(layout=compact.input_layout(config), num_classes=config.num_classes,
                     rnn_layer_sizes=hparams.rnn_layer_sizes,
                     dropout_keep_prob=hparams.dropout_keep_prob,
                     attn_length=hparams.attn_length, clip_norm=hparams.clip_norm,
                     no_event_label=config.no_event_label)
    model.compile(optimizer=keras.optimizers.Adam(hparams.learning_rate), jit_compile=False)
    return model
  return model_lib.build_model(config, hparams, jit_compile=variant == 'xla')


def examples_per_sec(variant, config, hparams, num_steps, steps, repeats):
  """Best and median examples/s over `repeats` fits of `steps` train steps each, and
  the best examples per CPU-second of this process (less sensitive to other load)."""
  compact_x, rows_x, labels = _batch(config, hparams.batch_size, num_steps)
  x = rows_x if variant == 'baseline' else compact_x
  data = tf.data.Dataset.from_tensors((x, labels)).repeat()
  model = _model(variant, config, hparams)
  model.fit(data, steps_per_epoch=2, epochs=1, verbose=0)  # trace / compile
  rates, cpu_rates = [], []
  for _ in range(repeats):
    start, cpu_start = time.perf_counter(), time.process_time()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    rates.append(steps * hparams.batch_size / (time.perf_counter() - start))
    cpu_rates.append(steps * hparams.batch_size / (time.process_time() - cpu_start))
  return max(rates), float(np.median(rates)), max(cpu_rates)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--configs', default='drum_kit,attention_rnn')
  parser.add_argument('--sizes', default='small,default')
  parser.add_argument('--variants', default='baseline,xla,hybrid')
  parser.add_argument('--steps', type=int, default=4)
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args(argv)
  print(f'load before: {os.getloadavg()}', flush=True)
  for name in args.configs.split(','):
    config = configs.get_config(name)
    for size in args.sizes.split(','):
      hparams = (config.hparams.replace(**SMALL[name]) if size == 'small'
                 else config.hparams)
      results = {}
      for variant in args.variants.split(','):
        results[variant] = examples_per_sec(variant, config, hparams, STEPS[name],
                                            args.steps, args.repeats)
        best, median, cpu = results[variant]
        ratio = (f'  x{best / results["baseline"][0]:.2f} of baseline'
                 if 'baseline' in results and variant != 'baseline' else '')
        print(f'{name:14s} {size:7s} layers={list(hparams.rnn_layer_sizes)} '
              f'attn={hparams.attn_length} batch={hparams.batch_size} T={STEPS[name]} '
              f'{variant:9s} best {best:7.1f} median {median:7.1f} examples/s '
              f'({cpu:6.1f} per CPU-s){ratio}  '
              f'load {os.getloadavg()[0]:.2f}', flush=True)


if __name__ == '__main__':
  main()
