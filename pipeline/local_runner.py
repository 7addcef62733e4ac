"""Runs the pipeline locally: LocalDagRunner, SQLite ML-Metadata, Beam DirectRunner."""

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional

from absl import logging
from tfx import v1 as tfx

from music_rnn import configs as model_configs
from pipeline import configs
from pipeline import mlmd_results
from pipeline import pipeline as pipeline_lib


@dataclasses.dataclass
class RunSummary:
  """Where a local run put its model, and how it scored."""
  pipeline_name: str
  metadata_path: str
  pushed_model: Optional[str]
  trainer_model: Optional[str]
  metrics: Dict[str, Any]
  extraction_stats: Dict[str, int]
  component_states: Dict[str, str]


def run(model_config: str,
        data: Optional[str] = None,
        train_steps: int = configs.TRAIN_STEPS,
        eval_steps: int = configs.EVAL_STEPS,
        hparams: Optional[Dict[str, Any]] = None,
        seed: int = 0,
        output_root: str = configs.OUTPUT_ROOT,
        serving_models_dir: str = configs.SERVING_MODELS_DIR,
        beam_pipeline_args: Optional[List[str]] = None,
        enable_cache: bool = True) -> RunSummary:
  """Runs the whole pipeline for `model_config` on `data` (a file, dir or glob)."""
  config = model_configs.get_config(model_config)
  if hparams:
    config.hparams.replace(**hparams)  # validates names and values before anything runs
  data_root, data_pattern = split_data_path(data or configs.default_data(config.kind))
  name = configs.pipeline_name(config.name)
  pipeline_root = os.path.join(output_root, 'pipelines', name)
  metadata_path = os.path.join(output_root, 'metadata', name, 'metadata.db')
  os.makedirs(os.path.dirname(metadata_path), exist_ok=True)
  p = pipeline_lib.create_pipeline(
      pipeline_name=name,
      pipeline_root=pipeline_root,
      data_root=data_root,
      data_pattern=data_pattern,
      model_config=config.name,
      serving_model_dir=os.path.join(serving_models_dir, config.name),
      preprocessing_fn=configs.PREPROCESSING_FN,
      run_fn=configs.RUN_FN,
      train_steps=train_steps,
      eval_steps=eval_steps,
      hparams=hparams,
      seed=seed,
      metadata_connection_config=tfx.orchestration.metadata
      .sqlite_metadata_connection_config(metadata_path),
      beam_pipeline_args=beam_pipeline_args or list(configs.BEAM_PIPELINE_ARGS),
      enable_cache=enable_cache)
  logging.info('Running pipeline %s (root %s)', name, pipeline_root)
  tfx.orchestration.LocalDagRunner().run(p)
  return summarize(name, metadata_path)


def split_data_path(data: str):
  """'dir' -> (dir, '*.tfrecord*'); 'dir/x*.tfrecord' or a file -> (dir, basename pattern)."""
  data = os.path.abspath(data)
  if os.path.isdir(data):
    return data, '*.tfrecord*'
  root, pattern = os.path.dirname(data), os.path.basename(data)
  if any(c in root for c in '*?['):
    raise ValueError(f'--data: wildcards are supported in the file name only, got {data!r}')
  if not os.path.isdir(root):
    raise FileNotFoundError(f'--data: directory {root!r} does not exist')
  return root, pattern


def summarize(pipeline_name: str, metadata_path: str) -> RunSummary:
  results = mlmd_results.latest_results(metadata_path, pipeline_name)

  def first(component, key):
    node = results.get(component)
    arts = node.outputs.get(key, []) if node else []
    return arts[0] if arts else None

  pushed = first('Pusher', 'pushed_model')
  pushed_dest = None
  if pushed is not None and 'pushed_destination' in pushed.custom_properties:
    pushed_dest = pushed.custom_properties['pushed_destination'].string_value
  model = first('Trainer', 'model')
  model_run = first('Trainer', 'model_run')
  metrics = {}
  if model_run is not None:
    path = os.path.join(model_run.uri, 'metrics.json')
    if os.path.exists(path):
      with open(path) as f:
        metrics = json.load(f)
  examples = first('NoteSequenceExampleGen', 'examples')
  stats = {}
  if examples is not None and 'extraction_stats' in examples.custom_properties:
    stats = json.loads(examples.custom_properties['extraction_stats'].string_value)
  return RunSummary(
      pipeline_name=pipeline_name,
      metadata_path=metadata_path,
      pushed_model=pushed_dest,
      trainer_model=model.uri if model is not None else None,
      metrics=metrics,
      extraction_stats=stats,
      component_states={k: v.state for k, v in sorted(results.items())})
