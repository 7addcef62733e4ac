"""The one `create_pipeline(settings)`: NoteSequences -> events -> Transform -> Trainer ->
Evaluator -> Pusher.

The same wiring for both model families: the config name selects the event RNNs' events
or the MusicVAEs' 2-bar slices (ExampleGen), their Transform outputs, search space,
model, export and Evaluator metrics (evaluation.eval_config).

With `settings.tune`, a Tuner between Transform and Trainer searches hparams and the
Trainer trains with the best; with `settings.hyperparameters`, an Importer hands the
Trainer an earlier search's best_hyperparameters instead. It knows nothing about which
orchestrator runs it: every runner builds a pipeline/settings.py PipelineSettings and
hands the result of this function to its own runner.
"""

import dataclasses
from typing import Any, Dict, List, Optional

import tensorflow_data_validation as tfdv
from tfx import v1 as tfx

from components.note_sequence_example_gen import NoteSequenceExampleGen
from components.pusher import Pusher
from music_rnn import checkpointing
from music_rnn import evaluation
from music_rnn import features
from music_rnn import training
from music_rnn import tuning
from pipeline import configs
from pipeline.settings import DEFAULT_MACHINE_TYPE, ComputeResources, PipelineSettings


@dataclasses.dataclass
class _Data:
  """ExampleGen and what checks and describes its examples."""
  example_gen: Any
  statistics_gen: Any
  schema_gen: Any
  example_validator: Any

  @property
  def examples(self):
    return self.example_gen.outputs['examples']

  @property
  def schema(self):
    return self.schema_gen.outputs['schema']


def create_pipeline(settings: PipelineSettings,
                    metadata_connection_config: Optional[Any] = None) -> tfx.dsl.Pipeline:
  """Wires the components for `settings` (see PipelineSettings for every option).

  Data: ExampleGen splits by piece, at least `eval_ratio` (default: the config's) of the
  pieces in eval, chosen by a hash salted with `split_seed` (independent of `seed`, so
  models trained with different seeds are compared on the same eval pieces).

  Tuning: the search state lives under settings.tuner_state_root, in a directory named by
  a fingerprint of the data and the search settings, so an interrupted or extended
  search resumes there. Training: checkpoints go under settings.checkpoint_root, which
  outlives any one Trainer execution; `warm_start_from` (a Trainer Model artifact or a
  pushed SavedModel) is imported as the Trainer's base_model.

  Blessing: the Evaluator scores the model on the eval split against settings.blessing;
  when that compares with a baseline, the latest blessed model of this pipeline is
  resolved as one. The Pusher pushes blessed models only, and a model only once.

  `metadata_connection_config` is the orchestrator's (None on Kubeflow: the cluster's).
  """
  settings = settings.resolved()
  data = _examples_stats_and_schema(settings)
  transform = _transform(settings, data)
  hyperparameters_node = _tuner_or_importer(settings, data, transform)
  base_model_importer = _base_model_importer(settings)
  trainer = _trainer(settings, data, transform, hyperparameters_node, base_model_importer)
  baseline_resolver = _baseline_resolver(settings)
  evaluator = _evaluator(settings, data, trainer, baseline_resolver)
  pusher = _pusher(settings, trainer, evaluator)

  components = [data.example_gen, data.statistics_gen, data.schema_gen,
                data.example_validator, transform, hyperparameters_node, base_model_importer,
                trainer, baseline_resolver, evaluator, pusher]
  return tfx.dsl.Pipeline(
      pipeline_name=settings.pipeline_name,
      pipeline_root=settings.pipeline_root,
      components=[c for c in components if c is not None],
      enable_cache=settings.enable_cache,
      metadata_connection_config=metadata_connection_config,
      beam_pipeline_args=list(settings.beam_pipeline_args))


def _examples_stats_and_schema(settings: PipelineSettings) -> _Data:
  data_root, data_pattern = settings.data_location
  example_gen = NoteSequenceExampleGen(
      input_base=data_root, input_pattern=data_pattern, model_config=settings.model_config,
      eval_ratio=settings.eval_ratio, split_seed=settings.split_seed)
  statistics_gen = tfx.components.StatisticsGen(
      examples=example_gen.outputs['examples'],
      stats_options=tfdv.StatsOptions(
          feature_allowlist=features.statistics_features(settings.config.kind)))
  # The schema describes the training data; ExampleValidator then checks eval against it.
  schema_gen = tfx.components.SchemaGen(
      statistics=statistics_gen.outputs['statistics'], infer_feature_shape=True,
      exclude_splits=[features.EVAL_SPLIT])
  example_validator = tfx.components.ExampleValidator(
      statistics=statistics_gen.outputs['statistics'], schema=schema_gen.outputs['schema'])
  return _Data(example_gen, statistics_gen, schema_gen, example_validator)


def _transform(settings: PipelineSettings, data: _Data):
  return tfx.components.Transform(
      examples=data.examples,
      schema=data.schema,
      preprocessing_fn=configs.PREPROCESSING_FN,
      custom_config={'config_name': settings.model_config},
      # Post-transform statistics over flattened one-hot inputs are costly and unused.
      disable_statistics=True)


def _tuner_or_importer(settings: PipelineSettings, data: _Data, transform):
  """The node whose output the Trainer trains with: a Tuner (tune), an Importer of an
  earlier search's result (hyperparameters; a search is paid for once), or None."""
  if settings.tune:
    return _tuner(settings, data, transform)
  if settings.hyperparameters:
    return tfx.dsl.Importer(
        source_uri=settings.hyperparameters,
        artifact_type=tfx.types.standard_artifacts.HyperParameters).with_id(
            'hyperparameters_importer')
  return None


def _search_settings(settings: PipelineSettings) -> Dict[str, Any]:
  """What the search depends on; trials run on the Trainer's devices, batch and precision."""
  config = settings.config
  space = tuning.resolve_search_space(config, config.hparams.replace(**settings.hparams),
                                      settings.search_space)
  trial_options = {k: v for k, v in settings.trainer_options().items()
                   if k in tuning.TRIAL_OPTIONS}
  return {'tuner': settings.tuner, 'search_space': space,
          'config_name': settings.model_config, 'hparams': dict(settings.hparams),
          'seed': settings.seed, **trial_options}


def _tuner_state_dir(settings: PipelineSettings, search: Dict[str, Any]) -> str:
  """Named by the data and the search settings: the same search resumes there."""
  data_root, data_pattern = settings.data_location
  data = (checkpointing.fingerprint({'data': settings.data}) if settings.is_remote_data
          else checkpointing.data_fingerprint(data_root, data_pattern,
                                              eval_ratio=settings.eval_ratio,
                                              split_seed=settings.split_seed))
  return tuning.state_dir(settings.tuner_state_root,
                          {**search, 'trial_steps': settings.trial_steps,
                           'eval_steps': settings.eval_steps, 'data': data})


def _tuner(settings: PipelineSettings, data: _Data, transform):
  search = _search_settings(settings)
  args = dict(
      tuner_fn=configs.TUNER_FN,
      examples=transform.outputs['transformed_examples'],
      transform_graph=transform.outputs['transform_graph'],
      schema=data.schema,
      train_args=tfx.proto.TrainArgs(num_steps=settings.trial_steps),
      eval_args=tfx.proto.EvalArgs(num_steps=settings.eval_steps))
  custom_config = {**search, 'max_trials': settings.max_trials,
                   'tuner_dir': _tuner_state_dir(settings, search)}
  resources = settings.tuner_resources
  if not resources.needs_training_job:
    return _on_resources(tuning.Tuner(**args, custom_config=custom_config), resources)
  # A Vertex AI job of replica_count machines, one trial on each at a time.
  ai_platform = tfx.extensions.google_cloud_ai_platform
  return ai_platform.Tuner(
      **args, tune_args=tfx.proto.TuneArgs(num_parallel_trials=resources.replica_count),
      custom_config={**custom_config,
                     **_vertex_job(settings, resources,
                                   ai_platform.experimental.TUNING_ARGS_KEY)})


def _base_model_importer(settings: PipelineSettings):
  """Fine-tuning: the previous model's weights are the starting point."""
  if not settings.warm_start_from:
    return None
  return tfx.dsl.Importer(
      source_uri=settings.warm_start_from,
      artifact_type=tfx.types.standard_artifacts.Model).with_id('base_model_importer')


def _trainer(settings: PipelineSettings, data: _Data, transform, hyperparameters_node,
             base_model_importer):
  hyperparameters = None
  if hyperparameters_node is not None:
    hyperparameters = hyperparameters_node.outputs[
        'best_hyperparameters' if settings.tune else 'result']
  options = settings.trainer_options()
  unknown = sorted(set(options) - set(training.TRAINER_OPTIONS))
  if unknown:
    raise ValueError(f'Unknown trainer option(s) {unknown}; '
                     f'known: {list(training.TRAINER_OPTIONS)}')
  args = dict(
      run_fn=configs.RUN_FN,
      examples=transform.outputs['transformed_examples'],
      transform_graph=transform.outputs['transform_graph'],
      schema=data.schema,
      train_args=tfx.proto.TrainArgs(num_steps=settings.train_steps),
      eval_args=tfx.proto.EvalArgs(num_steps=settings.eval_steps),
      hyperparameters=hyperparameters,
      base_model=base_model_importer.outputs['result'] if base_model_importer else None)
  custom_config = {'config_name': settings.model_config, 'hparams': dict(settings.hparams),
                   'seed': settings.seed, 'checkpoint_dir': settings.checkpoint_root,
                   **options}
  resources = settings.trainer_resources
  if not resources.needs_training_job:
    return _on_resources(tfx.components.Trainer(**args, custom_config=custom_config),
                         resources)
  # A Vertex AI job: run_fn runs on every replica, TF_CONFIG names the workers.
  ai_platform = tfx.extensions.google_cloud_ai_platform
  return ai_platform.Trainer(
      **args, custom_config={**custom_config,
                             **_vertex_job(settings, resources, ai_platform.TRAINING_ARGS_KEY)})


def _on_resources(component, resources: ComputeResources):
  """Accelerators for the component's own container: a KFP v2 resource request, with
  both the old and the new accelerator fields, as KFP 2.11's own compiler writes them."""
  if not resources.accelerator_count:
    return component
  from kfp.pipeline_spec import pipeline_spec_pb2  # pylint: disable=g-import-not-at-top
  spec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec
  return component.with_platform_config(spec(accelerator=spec.AcceleratorConfig(
      type=resources.accelerator_type, count=resources.accelerator_count,
      resource_type=resources.accelerator_type,
      resource_count=str(resources.accelerator_count))))


def _vertex_job(settings: PipelineSettings, resources: ComputeResources,
                args_key: str) -> Dict[str, Any]:
  """custom_config entries that make TFX's ai_platform Trainer/Tuner run a Vertex AI
  CustomJob: a chief pool and, with replica_count > 1, a worker pool, in this image."""
  ai_platform = tfx.extensions.google_cloud_ai_platform
  machine = {'machine_type': resources.machine_type or DEFAULT_MACHINE_TYPE}
  if resources.accelerator_count:
    machine.update(accelerator_type=resources.accelerator_type,
                   accelerator_count=resources.accelerator_count)
  pool = {'machine_spec': machine, 'container_spec': {'image_uri': settings.image}}
  pools: List[Dict[str, Any]] = [{**pool, 'replica_count': 1}]
  if resources.replica_count > 1:
    pools.append({**pool, 'replica_count': resources.replica_count - 1})
  return {
      ai_platform.ENABLE_VERTEX_KEY: True,
      ai_platform.VERTEX_REGION_KEY: settings.vertex_region,
      args_key: {'project': settings.vertex_project,
                 'job_spec': {'worker_pool_specs': pools}},
  }


def _baseline_resolver(settings: PipelineSettings):
  if not settings.blessing.compare_to_baseline:
    return None
  return tfx.dsl.Resolver(
      strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
      model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
      model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
  ).with_id('latest_blessed_model_resolver')


def _evaluator(settings: PipelineSettings, data: _Data, trainer, baseline_resolver):
  """TFMA on the eval split, through the export's `evaluate` signature; its loss also
  against the train split's unigram distribution."""
  return tfx.components.Evaluator(
      examples=data.examples,
      example_splits=[features.EVAL_SPLIT],
      model=trainer.outputs['model'],
      baseline_model=baseline_resolver.outputs['model'] if baseline_resolver else None,
      eval_config=evaluation.eval_config(settings.config, settings.blessing))


def _pusher(settings: PipelineSettings, trainer, evaluator):
  return Pusher(
      model=trainer.outputs['model'],
      model_blessing=evaluator.outputs['blessing'],
      push_destination=tfx.proto.PushDestination(
          filesystem=tfx.proto.PushDestination.Filesystem(
              base_directory=settings.serving_model_dir)))
