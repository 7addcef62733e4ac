"""The one `create_pipeline(...)`: NoteSequences -> events -> Transform -> Trainer -> Pusher.

It knows nothing about which orchestrator runs it.
"""

from typing import Any, Dict, List, Optional

import tensorflow_data_validation as tfdv
from tfx import v1 as tfx

from components.note_sequence_example_gen import NoteSequenceExampleGen
from music_rnn import configs as model_configs
from music_rnn import features


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
    metadata_connection_config: Optional[Any] = None,
    beam_pipeline_args: Optional[List[str]] = None,
    enable_cache: bool = True,
) -> tfx.dsl.Pipeline:
  """Wires the components for one model config (e.g. 'drum_kit', 'attention_rnn')."""
  example_gen = NoteSequenceExampleGen(
      input_base=data_root, input_pattern=data_pattern, model_config=model_config,
      eval_ratio=eval_ratio)

  kind = model_configs.get_config(model_config).kind
  statistics_gen = tfx.components.StatisticsGen(
      examples=example_gen.outputs['examples'],
      stats_options=tfdv.StatsOptions(
          feature_allowlist=features.statistics_features(kind)))

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

  trainer = tfx.components.Trainer(
      run_fn=run_fn,
      examples=transform.outputs['transformed_examples'],
      transform_graph=transform.outputs['transform_graph'],
      schema=schema_gen.outputs['schema'],
      train_args=tfx.proto.TrainArgs(num_steps=train_steps),
      eval_args=tfx.proto.EvalArgs(num_steps=eval_steps),
      custom_config={'config_name': model_config, 'hparams': dict(hparams or {}),
                     'seed': seed})

  pusher = tfx.components.Pusher(
      model=trainer.outputs['model'],
      push_destination=tfx.proto.PushDestination(
          filesystem=tfx.proto.PushDestination.Filesystem(
              base_directory=serving_model_dir)))

  components = [example_gen, statistics_gen, schema_gen, example_validator, transform,
                trainer, pusher]
  return tfx.dsl.Pipeline(
      pipeline_name=pipeline_name,
      pipeline_root=pipeline_root,
      components=components,
      enable_cache=enable_cache,
      metadata_connection_config=metadata_connection_config,
      beam_pipeline_args=beam_pipeline_args)
