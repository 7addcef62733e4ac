"""NoteSequenceExampleGen: FileBasedExampleGen over NoteSequence TFRecords for one model config."""

from typing import Optional

from tfx.components.example_gen import component as example_gen_component
from tfx.dsl.components.base import base_component
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import channel
from tfx.types import component_spec
from tfx.types import standard_artifacts
from tfx.types import standard_component_specs

from components.note_sequence_example_gen import executor
from music_rnn import configs
from music_rnn import features


class NoteSequenceExampleGenSpec(standard_component_specs.FileBasedExampleGenSpec):
  """FileBasedExampleGen's spec plus the model config whose events are extracted."""
  PARAMETERS = {
      **standard_component_specs.FileBasedExampleGenSpec.PARAMETERS,
      executor.MODEL_CONFIG_KEY: component_spec.ExecutionParameter(type=str),
      executor.SPLIT_SEED_KEY: component_spec.ExecutionParameter(type=int, optional=True),
  }


_BUCKETS = 1000  # eval_ratio to 0.1%


def split_config(eval_ratio: float) -> example_gen_pb2.Output:
  """Train/eval split by source piece, so pieces never straddle splits.

  The executor reads eval_ratio back from the buckets and chooses the eval pieces with
  splitting.eval_pieces (a guaranteed minimum), not with TFX's per-example hash.
  """
  if not 0.0 < eval_ratio < 1.0:
    raise ValueError(f'eval_ratio must be in (0, 1), got {eval_ratio}')
  eval_buckets = max(1, round(eval_ratio * _BUCKETS))
  return example_gen_pb2.Output(
      split_config=example_gen_pb2.SplitConfig(
          splits=[
              example_gen_pb2.SplitConfig.Split(
                  name=features.TRAIN_SPLIT, hash_buckets=_BUCKETS - eval_buckets),
              example_gen_pb2.SplitConfig.Split(
                  name=features.EVAL_SPLIT, hash_buckets=eval_buckets),
          ],
          partition_feature_name=features.SOURCE_ID))


class NoteSequenceExampleGen(example_gen_component.FileBasedExampleGen):
  """Reads NoteSequence TFRecords under `input_base` matching `input_pattern`.

  Emits one tf.Example per drum track or melody that Magenta's extractor for
  `model_config` keeps, split by source piece: at least the config's eval_ratio of the
  pieces (and at least 5 of a corpus of 20 or more) go to eval, chosen by a hash salted
  with `split_seed` (splitting.eval_pieces).
  """

  SPEC_CLASS = NoteSequenceExampleGenSpec
  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

  def __init__(self,
               input_base: str,
               model_config: str,
               input_pattern: str = '*.tfrecord*',
               eval_ratio: Optional[float] = None,
               split_seed: int = 0):
    config = configs.get_config(model_config)
    if eval_ratio is None:
      eval_ratio = config.extractor.eval_ratio
    input_config = example_gen_pb2.Input(splits=[
        example_gen_pb2.Input.Split(name='single_split', pattern=input_pattern)])
    spec = NoteSequenceExampleGenSpec(
        input_base=input_base,
        input_config=input_config,
        output_config=split_config(eval_ratio),
        custom_config=None,
        range_config=None,
        output_data_format=example_gen_pb2.FORMAT_TF_EXAMPLE,
        output_file_format=example_gen_pb2.FORMAT_TFRECORDS_GZIP,
        model_config=config.name,
        split_seed=split_seed,
        examples=channel.Channel(type=standard_artifacts.Examples))
    base_component.BaseComponent.__init__(self, spec=spec)
