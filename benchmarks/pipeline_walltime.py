"""Wall time of `make run`: a cold run and a cached re-run.

Runs `make run` twice with the Makefile's own RUN_ARGS (the CPU-sized default job),
into a fresh output root and serving directory (RUN_EXTRA), so the cold number includes
every component of both pipelines and the second is the cached re-run. The venv and the
data must already be built (`make venv data`); their time is not included.
Prints seconds per run and the component states of the re-run.
Usage: python benchmarks/pipeline_walltime.py [--keep DIR]
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_run(root: str) -> float:
  extra = f'--output-root {root}/out --serving-dir {root}/serving'
  start = time.perf_counter()
  proc = subprocess.run(['make', '-s', 'run', f'RUN_EXTRA={extra}'], cwd=PROJECT_ROOT,
                        capture_output=True, text=True)
  seconds = time.perf_counter() - start
  if proc.returncode != 0:
    sys.exit(f'make run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
  states = re.findall(r'^   (\S+)\s+([A-Z]+)$', proc.stdout, re.M)
  verdicts = re.findall(r'^   evaluator: +(.*)$', proc.stdout, re.M)
  print(f'  {seconds:7.0f} s  states: {sorted(set(s for _, s in states))}  '
        f'evaluator: {verdicts}', flush=True)
  return seconds


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--keep', help='Use (and keep) this directory instead of a temporary one.')
  args = parser.parse_args()
  root = args.keep or tempfile.mkdtemp(prefix='walltime-')
  os.makedirs(root, exist_ok=True)
  print(f'make run, outputs under {root}')
  cold = make_run(root)
  cached = make_run(root)
  print(f'make run: cold {cold:.0f} s, cached re-run {cached:.0f} s')


if __name__ == '__main__':
  main()
