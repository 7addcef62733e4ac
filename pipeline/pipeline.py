"""The one `create_pipeline(...)`: NoteSequences -> events -> Transform -> Trainer ->
Evaluator -> Pusher.

With `tune`, a Tuner between Transform and Trainer searches hparams and the Trainer
trains with the best; with `hyperparameters_uri`, an Importer hands the Trainer an
earlier search's best_hyperparameters instead. It knows nothing about which
orchestrator runs it.
"""

import os
from typing import Any, Dict, List, Optional

import tensorflow_data_validation as tfdv
from tfx import v1 as tfx

from components.note_sequence_example_gen import NoteSequenceExampleGen
from components.pusher import Pusher
from music_rnn import blessing as blessing_lib
from music_rnn import checkpointing
from music_rnn import configs as model_configs
from music_rnn import evaluation
from music_rnn import features
from music_rnn import training
from music_rnn import tuning


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    data_root: str,
    model_config: str,
    serving_model_dir: str,
    preprocessing_fn: str,
    run_fn: str,
    train_steps: int,
    eval_steps: int,
    data_pattern: str = '*.tfrecord*',
    hparams: Optional[Dict[str, Any]] = None,
    seed: int = 0,
    eval_ratio: Optional[float] = None,
    split_seed: int = 0,
    metadata_connection_config: Optional[Any] = None,
    beam_pipeline_args: Optional[List[str]] = None,
    enable_cache: bool = True,
    tune: bool = False,
    tuner_fn: Optional[str] = None,
    tuner: str = tuning.DEFAULT_TUNER,
    max_trials: int = tuning.DEFAULT_MAX_TRIALS,
    trial_steps: Optional[int] = None,
    search_space: Optional[str] = None,
    tuner_state_root: Optional[str] = None,
    hyperparameters_uri: Optional[str] = None,
    checkpoint_dir: Optional[str] = None,
    warm_start_from: Optional[str] = None,
    trainer_options: Optional[Dict[str, Any]] = None,
    blessing: Optional[blessing_lib.BlessingThresholds] = None,
) -> tfx.dsl.Pipeline:
  """Wires the components for one model config (e.g. 'drum_kit', 'attention_rnn').

  Data: ExampleGen splits by piece, at least `eval_ratio` (default: the config's) of the
  pieces in eval, chosen by a hash salted with `split_seed` (independent of `seed`, so
  models trained with different seeds are compared on the same eval pieces).

  Tuning: `tuner` is 'random', 'bayesian' or 'hyperband'; `trial_steps` (default
  `train_steps`) bounds each trial; `search_space` is a YAML/JSON file over the
  config's default space. The search state lives under `tuner_state_root` (default
  <pipeline_root>/tuner_state), in a directory named by a fingerprint of the data and
  the search settings, so an interrupted or extended search resumes there.

  Training: checkpoints go under `checkpoint_dir` (default <pipeline_root>/checkpoints),
  a location that outlives any one Trainer execution, so a re-run after a kill resumes.
  `warm_start_from` (a Trainer Model artifact or a pushed SavedModel) is imported as the
  Trainer's base_model. `trainer_options` go to run_fn's custom_config (see
  training.TRAINER_OPTIONS: checkpoint_every, early_stopping_patience, mixed_precision,
  replicas, global_batch_size, ...).

  Blessing: the Evaluator scores the model on the eval split (TFMA, the export's
  `evaluate` signature; its loss also against the train split's unigram distribution)
  against `blessing` (default: blessing.BlessingThresholds());
  when that compares with a baseline, the latest blessed model of this pipeline is
  resolved as one. The Pusher pushes blessed models only, and a model only once.
  """
  if tune and hyperparameters_uri:
    raise ValueError('Pass either tune or hyperparameters_uri, not both')
  unknown = sorted(set(trainer_options or {}) - set(training.TRAINER_OPTIONS))
  if unknown:
    raise ValueError(f'Unknown trainer option(s) {unknown}; '
                     f'known: {list(training.TRAINER_OPTIONS)}')
  example_gen = NoteSequenceExampleGen(
      input_base=data_root, input_pattern=data_pattern, model_config=model_config,
      eval_ratio=eval_ratio, split_seed=split_seed)

  config = model_configs.get_config(model_config)
  statistics_gen = tfx.components.StatisticsGen(
      examples=example_gen.outputs['examples'],
      stats_options=tfdv.StatsOptions(
          feature_allowlist=features.statistics_features(config.kind)))

  # The schema describes the training data; ExampleValidator then checks eval against it.
  schema_gen = tfx.components.SchemaGen(
      statistics=statistics_gen.outputs['statistics'], infer_feature_shape=True,
      exclude_splits=[features.EVAL_SPLIT])

  example_validator = tfx.components.ExampleValidator(
      statistics=statistics_gen.outputs['statistics'], schema=schema_gen.outputs['schema'])

  transform = tfx.components.Transform(
      examples=example_gen.outputs['examples'],
      schema=schema_gen.outputs['schema'],
      preprocessing_fn=preprocessing_fn,
      custom_config={'config_name': model_config},
      # Post-transform statistics over flattened one-hot inputs are costly and unused.
      disable_statistics=True)

  hyperparameters = None
  tuner_component = importer = None
  if tune:
    if not tuner_fn:
      raise ValueError('tune needs tuner_fn, e.g. module_file.tuner_fn')
    if tuner not in tuning.TUNERS:
      raise ValueError(f'Unknown tuner {tuner!r}; choose one of {list(tuning.TUNERS)}')
    base = config.hparams.replace(**(hparams or {}))
    space = tuning.resolve_search_space(config, base, search_space)
    trial_steps = trial_steps or train_steps
    # Trials run on the Trainer's devices, batch and precision.
    search = {'tuner': tuner, 'search_space': space, 'config_name': model_config,
              'hparams': dict(hparams or {}), 'seed': seed,
              **{k: v for k, v in (trainer_options or {}).items()
                 if k in tuning.TRIAL_OPTIONS}}
    tuner_dir = tuning.state_dir(
        tuner_state_root or os.path.join(pipeline_root, 'tuner_state'),
        {**search, 'trial_steps': trial_steps, 'eval_steps': eval_steps,
         'data': checkpointing.data_fingerprint(data_root, data_pattern,
                                                eval_ratio=eval_ratio,
                                                split_seed=split_seed)})
    tuner_component = tuning.Tuner(
        tuner_fn=tuner_fn,
        examples=transform.outputs['transformed_examples'],
        transform_graph=transform.outputs['transform_graph'],
        schema=schema_gen.outputs['schema'],
        train_args=tfx.proto.TrainArgs(num_steps=trial_steps),
        eval_args=tfx.proto.EvalArgs(num_steps=eval_steps),
        custom_config={**search, 'max_trials': max_trials, 'tuner_dir': tuner_dir})
    hyperparameters = tuner_component.outputs['best_hyperparameters']
  elif hyperparameters_uri:
    # A search is paid for once: a later run trains with its result.
    importer = tfx.dsl.Importer(
        source_uri=hyperparameters_uri,
        artifact_type=tfx.types.standard_artifacts.HyperParameters).with_id(
            'hyperparameters_importer')
    hyperparameters = importer.outputs['result']

  base_model_importer = None
  if warm_start_from:
    # Fine-tuning: the previous model's weights are the starting point.
    base_model_importer = tfx.dsl.Importer(
        source_uri=warm_start_from,
        artifact_type=tfx.types.standard_artifacts.Model).with_id('base_model_importer')

  trainer = tfx.components.Trainer(
      run_fn=run_fn,
      examples=transform.outputs['transformed_examples'],
      transform_graph=transform.outputs['transform_graph'],
      schema=schema_gen.outputs['schema'],
      train_args=tfx.proto.TrainArgs(num_steps=train_steps),
      eval_args=tfx.proto.EvalArgs(num_steps=eval_steps),
      hyperparameters=hyperparameters,
      base_model=base_model_importer.outputs['result'] if base_model_importer else None,
      custom_config={'config_name': model_config, 'hparams': dict(hparams or {}),
                     'seed': seed,
                     'checkpoint_dir': checkpoint_dir or os.path.join(pipeline_root, 'checkpoints'),
                     **(trainer_options or {})})

  blessing = blessing or blessing_lib.BlessingThresholds()
  baseline_resolver = None
  if blessing.compare_to_baseline:
    baseline_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id('latest_blessed_model_resolver')

  evaluator = tfx.components.Evaluator(
      examples=example_gen.outputs['examples'],
      example_splits=[features.EVAL_SPLIT],
      model=trainer.outputs['model'],
      baseline_model=baseline_resolver.outputs['model'] if baseline_resolver else None,
      eval_config=evaluation.eval_config(config, blessing))

  pusher = Pusher(
      model=trainer.outputs['model'],
      model_blessing=evaluator.outputs['blessing'],
      push_destination=tfx.proto.PushDestination(
          filesystem=tfx.proto.PushDestination.Filesystem(
              base_directory=serving_model_dir)))

  components = [example_gen, statistics_gen, schema_gen, example_validator, transform]
  components += [c for c in (tuner_component, importer, base_model_importer) if c is not None]
  components += [trainer]
  components += [c for c in (baseline_resolver, evaluator) if c is not None]
  components += [pusher]
  return tfx.dsl.Pipeline(
      pipeline_name=pipeline_name,
      pipeline_root=pipeline_root,
      components=components,
      enable_cache=enable_cache,
      metadata_connection_config=metadata_connection_config,
      beam_pipeline_args=beam_pipeline_args)
