"""Wall time of the local pipeline: a cold run and a cached re-run, per config.

Same work as `make run` (bundled data, pipeline/configs.py defaults) into a fresh output
root, so the cold number includes every component. Prints seconds.
Usage: python benchmarks/pipeline_walltime.py [--config drum_kit ...] [--train-steps N]
"""

import argparse
import tempfile
import time

from pipeline import configs
from pipeline import local_runner


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--config', action='append')
  parser.add_argument('--train-steps', type=int, default=configs.TRAIN_STEPS)
  args = parser.parse_args()
  for name in args.config or ['drum_kit', 'attention_rnn']:
    with tempfile.TemporaryDirectory() as root:
      times = []
      for _ in range(2):
        t = time.perf_counter()
        summary = local_runner.run(name, train_steps=args.train_steps, output_root=root,
                                   serving_models_dir=f'{root}/serving')
        times.append(time.perf_counter() - t)
      states = sorted(set(summary.component_states.values()))
      print(f'[{name}] cold run {times[0]:.0f} s; cached re-run {times[1]:.0f} s '
            f'(re-run states: {states}); train_steps={args.train_steps}')


if __name__ == '__main__':
  main()
