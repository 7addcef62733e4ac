"""Runs the pipeline locally: LocalDagRunner, SQLite ML-Metadata, Beam DirectRunner."""

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional

from absl import logging
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from music_rnn import checkpointing
from music_rnn import blessing as blessing_lib
from music_rnn import configs as model_configs
from music_rnn import evaluation
from music_rnn import training
from music_rnn import tuning
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
  tuning: Optional[Dict[str, Any]] = None  # the Tuner's or Importer's hyperparameters
  # The Evaluator's verdict: {'blessed': bool, 'metrics': {name: value on the eval split},
  # 'baseline': bool (compared with an earlier blessed model), 'failed': [metric names
  # that failed a threshold], 'uri'}; None if it did not run.
  evaluation: Optional[Dict[str, Any]] = None
  # ExampleGen's split by piece: {pieces, train_pieces, eval_pieces, eval_ratio, split_seed}.
  split: Optional[Dict[str, Any]] = None
  thresholds: Optional[blessing_lib.BlessingThresholds] = None  # what run() blessed with


def run(model_config: str,
        data: Optional[str] = None,
        train_steps: int = configs.TRAIN_STEPS,
        eval_steps: int = configs.EVAL_STEPS,
        hparams: Optional[Dict[str, Any]] = None,
        seed: int = 0,
        output_root: str = configs.OUTPUT_ROOT,
        serving_models_dir: str = configs.SERVING_MODELS_DIR,
        beam_pipeline_args: Optional[List[str]] = None,
        enable_cache: bool = True,
        tune: bool = False,
        tuner: str = configs.TUNER,
        max_trials: int = configs.MAX_TRIALS,
        trial_steps: Optional[int] = None,
        search_space: Optional[str] = None,
        hyperparameters: Optional[str] = None,
        fast_dev_run: bool = False,
        warm_start_from: Optional[str] = None,
        checkpoint_every: Optional[int] = configs.CHECKPOINT_EVERY,
        early_stopping_patience: Optional[int] = configs.EARLY_STOPPING_PATIENCE,
        mixed_precision: Optional[str] = None,
        xla_generation: bool = True,
        replicas: Optional[int] = None,
        global_batch_size: Optional[int] = None,
        blessing: Optional[blessing_lib.BlessingThresholds] = None) -> RunSummary:
  """Runs the whole pipeline for `model_config` on `data` (a file, dir or glob).

  `tune` adds the Tuner (search state under <output_root>/tuner/); `hyperparameters`
  is an earlier run's best_hyperparameters dir (or the file in it) to train with.
  Trainer checkpoints go to <output_root>/checkpoints/<pipeline>/<run key>/: re-running
  a killed run with the same inputs resumes there. `fast_dev_run` trains
  FAST_DEV_RUN_TRAIN_STEPS small batches as pipeline <name>-fast-dev-run, pushing to
  <output_root>/fast-dev-run/serving unless `serving_models_dir` is given, and its
  Evaluator blesses whatever it scores (a smoke test checks wiring, not quality).
  `blessing` defaults to pipeline/configs.py's BLESSING.
  """
  config = model_configs.get_config(model_config)
  if hparams:
    config.hparams.replace(**hparams)  # validates names and values before anything runs
  if hyperparameters:
    if tune:
      raise ValueError('--hyperparameters trains with an earlier search; drop --tune')
    hyperparameters, hp_config = tuning.read_best_hyperparameters(hyperparameters)
    training.resolve_hparams(config, hparams, hp_config)  # must fit this config
  data_root, data_pattern = split_data_path(data or configs.default_data(config.kind))
  name = configs.pipeline_name(config.name)
  if replicas:
    training.use_logical_cpus(replicas)  # CPU-only: N logical devices, if not too late
    training.split_batch(config.hparams, replicas, global_batch_size)  # divides, or fail now
  if warm_start_from:
    training.find_export(warm_start_from)  # fail before anything runs
  trainer_options = {
      'checkpoint_every': checkpoint_every,
      'early_stopping_patience': early_stopping_patience,
      'keep_best': configs.KEEP_BEST,
      'mixed_precision': mixed_precision,
      'xla_generation': None if xla_generation else False,  # default on in run_fn
      'replicas': replicas,
      'global_batch_size': global_batch_size,
      'data_fingerprint': checkpointing.data_fingerprint(
          data_root, data_pattern, eval_ratio=config.extractor.eval_ratio),
  }
  if fast_dev_run:
    name += configs.FAST_DEV_RUN_SUFFIX
    train_steps = configs.FAST_DEV_RUN_TRAIN_STEPS
    eval_steps = min(eval_steps or configs.FAST_DEV_RUN_EVAL_STEPS,
                     configs.FAST_DEV_RUN_EVAL_STEPS)
    if 'batch_size' not in (hparams or {}) and not global_batch_size:
      hparams = {**(hparams or {}), 'batch_size': min(config.hparams.batch_size,
                                                      configs.FAST_DEV_RUN_BATCH_SIZE)}
    trainer_options.update(fast_dev_run=True, num_evals=1, early_stopping_patience=None,
                           checkpoint_every=None)
    # With --tune: two trials as short as the training, enough to check the wiring.
    trial_steps, max_trials = train_steps, min(max_trials, 2)
    if serving_models_dir == configs.SERVING_MODELS_DIR:
      serving_models_dir = os.path.join(output_root, 'fast-dev-run', 'serving')
    blessing = blessing_lib.BlessingThresholds(max_perplexity_fraction=None,
                                             loss_tolerance=None, unigram_margin=None)
  blessing = blessing or configs.BLESSING
  trainer_options = {k: v for k, v in trainer_options.items() if v is not None}
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
      enable_cache=enable_cache,
      tune=tune,
      tuner_fn=configs.TUNER_FN,
      tuner=tuner,
      max_trials=max_trials,
      trial_steps=trial_steps or configs.TRIAL_STEPS,
      search_space=search_space,
      tuner_state_root=os.path.join(output_root, 'tuner', name),
      hyperparameters_uri=hyperparameters,
      checkpoint_dir=os.path.join(output_root, 'checkpoints', name),
      warm_start_from=warm_start_from,
      trainer_options=trainer_options,
      blessing=blessing)
  logging.info('Running pipeline %s (root %s)', name, pipeline_root)
  tfx.orchestration.LocalDagRunner().run(p)
  return dataclasses.replace(summarize(name, metadata_path), thresholds=blessing)


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
  if 'loss' not in scores or evaluation.UNIGRAM_LOSS not in scores:
    return None
  line = (f'model {scores["loss"]:.4f} vs unigram {scores[evaluation.UNIGRAM_LOSS]:.4f} '
          f'nats/step (ratio {scores.get(evaluation.LOSS_VS_UNIGRAM, float("nan")):.3f}')
  bound = summary.thresholds.max_loss_vs_unigram if summary.thresholds else None
  return line + (f', blessing needs <= {bound:.3f})' if bound is not None else ')')


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
