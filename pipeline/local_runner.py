"""Runs the pipeline locally: LocalDagRunner, SQLite ML-Metadata, Beam DirectRunner."""

import dataclasses
import json
import os
from typing import Any, Dict, Optional

from absl import logging
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from music_rnn import blessing as blessing_lib
from music_rnn import evaluation
from music_rnn import training
from music_rnn import tuning
from pipeline import mlmd_results
from pipeline import pipeline as pipeline_lib
from pipeline import settings as settings_lib
from pipeline.settings import PipelineSettings


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
  tuning: Optional[Dict[str, Any]] = None  # the Tuner's or Importer's hyperparameters
  # The Evaluator's verdict: {'blessed': bool, 'metrics': {name: value on the eval split},
  # 'baseline': bool (compared with an earlier blessed model), 'failed': [metric names
  # that failed a threshold], 'uri'}; None if it did not run.
  evaluation: Optional[Dict[str, Any]] = None
  # ExampleGen's split by piece: {pieces, train_pieces, eval_pieces, eval_ratio, split_seed}.
  split: Optional[Dict[str, Any]] = None
  thresholds: Optional[blessing_lib.BlessingThresholds] = None  # what run() blessed with


def run(settings: Optional[PipelineSettings] = None, **fields) -> RunSummary:
  """Runs the whole pipeline for `settings` (or PipelineSettings(**fields)) here.

  ML-Metadata is SQLite at settings.metadata_path; `--tune`'s search state, the Trainer's
  checkpoints (a killed run resumes when re-run) and the pipeline root are under
  settings.output_root. `fast_dev_run` trains a few small batches as pipeline
  <name>-fast-dev-run (PipelineSettings.resolved).
  """
  settings = (settings or PipelineSettings(**fields)).with_local_files_checked()
  if settings.replicas:
    training.use_logical_cpus(settings.replicas)  # CPU-only: N logical devices, if not too late
  resolved = settings.resolved()
  os.makedirs(os.path.dirname(resolved.metadata_path), exist_ok=True)
  p = pipeline_lib.create_pipeline(
      resolved, tfx.orchestration.metadata.sqlite_metadata_connection_config(
          resolved.metadata_path))
  logging.info('Running pipeline %s (root %s)', resolved.pipeline_name, resolved.pipeline_root)
  tfx.orchestration.LocalDagRunner().run(p)
  return dataclasses.replace(summarize(resolved.pipeline_name, resolved.metadata_path),
                             thresholds=resolved.blessing)


split_data_path = settings_lib.split_data_path  # the one split, kept here for callers


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
  stats, split = {}, None
  if examples is not None and 'extraction_stats' in examples.custom_properties:
    stats = json.loads(examples.custom_properties['extraction_stats'].string_value)
  if examples is not None and 'split_pieces' in examples.custom_properties:
    split = json.loads(examples.custom_properties['split_pieces'].string_value)
  return RunSummary(
      pipeline_name=pipeline_name,
      metadata_path=metadata_path,
      pushed_model=pushed_dest,
      trainer_model=model.uri if model is not None else None,
      metrics=metrics,
      extraction_stats=stats,
      component_states={k: v.state for k, v in sorted(results.items())},
      tuning=_tuning_summary(metadata_path, pipeline_name, first),
      evaluation=_evaluation_summary(first),
      split=split)


def loss_vs_unigram(summary: RunSummary) -> Optional[str]:
  """'model 2.1 vs unigram 2.8 nats/step ...': the Evaluator's eval loss beside the loss
  of the train split's label frequencies, and the blessing bound on their ratio."""
  scores = (summary.evaluation or {}).get('metrics') or {}
  # A MusicVAE's loss is its reconstruction's (evaluation.loss_metric).
  name = evaluation.RECONSTRUCTION_LOSS if evaluation.RECONSTRUCTION_LOSS in scores else 'loss'
  if name not in scores or evaluation.UNIGRAM_LOSS not in scores:
    return None
  what = 'reconstruction' if name == evaluation.RECONSTRUCTION_LOSS else 'model'
  line = (f'{what} {scores[name]:.4f} vs unigram {scores[evaluation.UNIGRAM_LOSS]:.4f} '
          f'nats/step (ratio {scores.get(evaluation.LOSS_VS_UNIGRAM, float("nan")):.3f}')
  bound = summary.thresholds.max_loss_vs_unigram if summary.thresholds else None
  return line + (f', blessing needs <= {bound:.3f})' if bound is not None else ')')


def vae_metrics(summary: RunSummary) -> Optional[str]:
  """A MusicVAE's Evaluator numbers in one line (None for an event RNN): reconstruction
  accuracy teacher-forced and free-running from the encoder's mean, KL, ELBO."""
  scores = (summary.evaluation or {}).get('metrics') or {}
  if evaluation.RECONSTRUCTION_LOSS not in scores:
    return None
  get = lambda name: scores.get(name, float('nan'))
  return (f'reconstruction accuracy {get("reconstruction_accuracy"):.4f} teacher-forced, '
          f'{get("sampled_accuracy"):.4f} sampled (greedy from the mean); KL '
          f'{get("kl_bits"):.2f} bits, ELBO {get("elbo"):.3f} nats per sequence')


def _evaluation_summary(first) -> Optional[Dict[str, Any]]:
  blessing = first('Evaluator', 'blessing')
  scores = first('Evaluator', 'evaluation')
  if blessing is None or scores is None:
    return None
  props = blessing.custom_properties
  return {
      'blessed': bool(props['blessed'].int_value) if 'blessed' in props else False,
      'baseline': 'baseline_model_id' in props,
      'metrics': evaluation.read_metrics(scores.uri),
      'failed': evaluation.failed_thresholds(scores.uri),
      'uri': scores.uri,
  }


def _trainer_hyperparameters(metadata_path: str, pipeline_name: str):
  """The best_hyperparameters artifact the newest Trainer execution read, if any."""
  store = mlmd_results.open_store(metadata_path)
  context = store.get_context_by_type_and_name('node', f'{pipeline_name}.Trainer')
  if context is None:
    return None
  done = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)
  executions = [e for e in store.get_executions_by_context(context.id)
                if e.last_known_state in done]
  if not executions:
    return None
  latest = max(executions, key=lambda e: e.id)
  ids = [ev.artifact_id for ev in store.get_events_by_execution_ids([latest.id])
         if ev.type == metadata_store_pb2.Event.INPUT and ev.path.steps
         and ev.path.steps[0].key == 'hyperparameters']
  return store.get_artifacts_by_id(ids)[0] if ids else None


def _tuning_summary(metadata_path: str, pipeline_name: str, first) -> Optional[Dict[str, Any]]:
  """Which hyperparameters the Trainer got, from where, and the Tuner's report."""
  used = _trainer_hyperparameters(metadata_path, pipeline_name)
  if used is None:
    return None
  directory, config = tuning.read_best_hyperparameters(used.uri)
  out = {'source': 'Importer', 'uri': directory, 'values': training.tuner_values(config)}
  tuned = first('Tuner', 'best_hyperparameters')
  results = first('Tuner', 'tuner_results')
  if tuned is not None and tuned.id == used.id and results is not None:
    props = results.custom_properties
    out.update(
        source='Tuner',
        best_trial=(props[tuning.BEST_TRIAL_PROPERTY].string_value
                    if tuning.BEST_TRIAL_PROPERTY in props else ''),
        report_csv=os.path.join(results.uri, tuning.REPORT_CSV),
        report_png=os.path.join(results.uri, tuning.REPORT_PNG))
  return out
