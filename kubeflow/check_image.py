"""Checks that every module path a KFP spec names resolves in this Python.

A compiled spec names code by dotted path only (`python -m ...`, `--executor_class_path`,
Transform's `preprocessing_fn`, Trainer's `run_fn`); a path that does not import fails
only when the pod starts. The Dockerfile runs this at build time (no arguments: it
compiles every model config in memory) and tests/test_kubeflow.py runs it against an
emulated image layout with the specs it compiled.

    python check_image.py [--compile-all] [SPEC.json|SPEC.yaml ...]
"""

import importlib
import json
import os
import sys
import tempfile
from typing import Any, Dict, Iterator, List, Tuple

# Task parameters that hold a dotted path to user code.
USER_FN_PARAMETERS = ('preprocessing_fn', 'run_fn', 'tuner_fn', 'stats_fn')


def load_spec(path: str) -> Dict[str, Any]:
  """Returns the PipelineSpec dict of a .json PipelineJob or a .yaml PipelineSpec."""
  with open(path) as f:
    if path.endswith(('.yaml', '.yml')):
      import yaml  # pylint: disable=g-import-not-at-top
      return yaml.safe_load(f)
    return json.load(f)['pipelineSpec']


def _module_of(command: List[str]) -> str:
  if len(command) >= 3 and command[1] == '-m':
    return command[2]
  raise ValueError(f'Expected `python -m MODULE`, got {command}')


def _constant(param: Dict[str, Any]) -> Any:
  value = param.get('runtimeValue', {}).get('constantValue', {})
  if 'stringValue' in value:
    return value['stringValue']
  return param.get('runtimeValue', {}).get('constant')


def dotted_paths(spec: Dict[str, Any]) -> Iterator[Tuple[str, str, str]]:
  """Yields (where, kind, dotted path) for every path the spec asks a container to import."""
  for label, executor in sorted(spec['deploymentSpec']['executors'].items()):
    if 'container' not in executor:
      continue  # a resolver: a metadata query run by the KFP backend, no container
    container = executor['container']
    yield label, 'module', _module_of(container['command'])
    args = container.get('args', [])
    if '--executor_class_path' in args:
      yield label, 'object', args[args.index('--executor_class_path') + 1]
    hook = container.get('lifecycle', {}).get('preCacheCheck')
    if hook:
      yield label + ' (driver)', 'module', _module_of(hook['command'])
  for name, task in sorted(spec['root']['dag']['tasks'].items()):
    for key, param in task.get('inputs', {}).get('parameters', {}).items():
      if key in USER_FN_PARAMETERS:
        yield name, 'object', _constant(param)


def resolve(kind: str, path: str) -> str:
  """Imports `path` (a module, or module.attribute) and returns the file it came from."""
  if kind == 'module':
    module = importlib.import_module(path)
    return module.__file__
  module_name, _, attr = path.rpartition('.')
  module = importlib.import_module(module_name)
  getattr(module, attr)
  return module.__file__


def compiled_specs(out_dir: str) -> List[str]:
  """Compiles every model config (placeholder GCS paths) with this image's code."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import kubeflow_v2_runner  # pylint: disable=g-import-not-at-top
  from music_rnn import configs  # pylint: disable=g-import-not-at-top
  paths = []
  for name in sorted(configs.CONFIGS):
    path = os.path.join(out_dir, f'{name}.json')
    kubeflow_v2_runner.compile_pipeline(kubeflow_v2_runner.settings_from_args(
        ['--config', name, '--pipeline-root', 'gs://bucket/root', '--data', 'gs://bucket/data',
         '--image', 'image', '--output', path]), path)
    paths.append(path)
  return paths


def main(argv: List[str]) -> int:
  specs = [a for a in argv if a != '--compile-all']
  if not specs or '--compile-all' in argv:
    specs += compiled_specs(tempfile.mkdtemp(prefix='music-rnn-specs-'))
  failures = 0
  for spec_path in specs:
    print(f'== {spec_path}')
    for where, kind, path in dotted_paths(load_spec(spec_path)):
      try:
        origin = resolve(kind, path)
        print(f'  ok    {where:<34} {path}  ({origin})')
      except Exception as e:  # pylint: disable=broad-except
        failures += 1
        print(f'  FAIL  {where:<34} {path}: {type(e).__name__}: {e}')
  print('all module paths resolve' if not failures else f'{failures} path(s) do not resolve')
  return 1 if failures else 0


if __name__ == '__main__':
  sys.exit(main(sys.argv[1:]))
