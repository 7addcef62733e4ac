"""Beam executor: NoteSequence TFRecords -> one tf.Example per extracted event sequence.

Runs Magenta's dataset stages (time-change split, quantize, drum/melody extraction) for
the component's model config, counts every dropped sequence by reason (Beam counters, a
JSON file next to the examples, the log) and refuses to finish with zero examples.
Splits train/eval by piece with splitting.eval_pieces over the set of all pieces that
yielded examples (a Beam side input), so the eval split's size is guaranteed, not luck.

MusicVAE configs: one example per unique 2-bar slice (vae_slicing.py). The train split
keeps only the slices of each piece drawn for training (features.IN_TRAINING_SAMPLE,
Magenta's <= max_tensors_per_notesequence per NoteSequence, seeded by split_seed); the
eval split keeps every slice. The slices left out of train are counted
('train_slices_not_in_sample').
"""

import collections
import json
import os
from typing import Any, Dict, Iterable, List, Optional

from absl import logging
import apache_beam as beam
import tensorflow as tf
from tfx import types
from tfx.components.example_gen import base_example_gen_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils
from tfx.types import standard_component_specs
from tfx.utils import proto_utils

from components.note_sequence_example_gen import splitting
from music_rnn import configs
from music_rnn import extraction
from music_rnn import features

MODEL_CONFIG_KEY = 'model_config'
SPLIT_SEED_KEY = 'split_seed'
STATS_FILE = 'extraction_stats.json'
# The split's counts (a '-' never appears in _stats_file_name's names).
SPLIT_STATS_FILE = 'by-piece.' + STATS_FILE
STATS_PROPERTY = 'extraction_stats'
SPLIT_FILE = 'split_pieces.json'
SPLIT_PROPERTY = 'split_pieces'
METRICS_NAMESPACE = 'music_rnn.extraction'
_STATS_TAG = 'stats'


def _count(stats: collections.Counter) -> Iterable[Any]:
  """Publishes a stats delta as Beam counters and as a tagged output."""
  for reason, n in stats.items():
    beam.metrics.Metrics.counter(METRICS_NAMESPACE, reason).inc(n)
  if stats:
    yield beam.pvalue.TaggedOutput(_STATS_TAG, dict(stats))


class _ReadFile(beam.DoFn):
  """Reads one TFRecord file of NoteSequences, surviving corrupt records."""

  def process(self, path: str):
    stats = collections.Counter()
    for note_sequence in extraction.read_note_sequences(path, stats):
      yield note_sequence.SerializeToString()
    yield from _count(stats)


class _Extract(beam.DoFn):
  """Extracts the config's event sequences from one NoteSequence."""

  def __init__(self, config_name: str, sample_seed: int = 0):
    self._config_name = config_name
    self._sample_seed = sample_seed

  def setup(self):
    # Imported lazily so the worker pays for note_seq only once.
    from note_seq.protobuf import music_pb2  # pylint: disable=g-import-not-at-top
    self._note_sequence_cls = music_pb2.NoteSequence
    self._config = configs.get_config(self._config_name)

  def process(self, serialized: bytes):
    stats = collections.Counter()
    note_sequence = self._note_sequence_cls.FromString(serialized)
    for seq in extraction.extract_sequences(note_sequence, self._config, stats,
                                            self._sample_seed):
      yield extraction.to_tf_example(seq, self._config)
    yield from _count(stats)


def _source_id(example: tf.train.Example) -> str:
  return example.features.feature[features.SOURCE_ID].bytes_list.value[0].decode('utf-8')


def _in_training_sample(example: tf.train.Example) -> bool:
  flag = example.features.feature[features.IN_TRAINING_SAMPLE].int64_list.value
  return bool(flag and flag[0])


class _SplitByPiece(beam.DoFn):
  """Sends each (source_id, example) to the eval output if its piece was chosen.

  With `train_sample_only` (MusicVAE), a train example not in its piece's training
  sample is dropped and counted.
  """

  def __init__(self, train: str, evaluation: str, train_sample_only: bool = False):
    self._train, self._eval = train, evaluation
    self._train_sample_only = train_sample_only

  def process(self, keyed, eval_ids):
    source_id, example = keyed
    if source_id in eval_ids:
      yield beam.pvalue.TaggedOutput(self._eval, example)
    elif not self._train_sample_only or _in_training_sample(example):
      yield beam.pvalue.TaggedOutput(self._train, example)
    else:
      yield from _count(collections.Counter(train_slices_not_in_sample=1))


def _write_split(piece_ids: List[str], eval_ids, eval_ratio: float, seed: int,
                 path: Optional[str]) -> None:
  """Logs the split and records it (counts and the eval pieces) next to the stats."""
  summary = {'pieces': len(piece_ids), 'eval_pieces': len(eval_ids),
             'train_pieces': len(piece_ids) - len(eval_ids), 'eval_ratio': eval_ratio,
             'split_seed': seed, 'eval_source_ids': sorted(eval_ids)}
  logging.info('Split by piece: %d train, %d eval of %d pieces (eval_ratio %g, seed %d)',
               summary['train_pieces'], summary['eval_pieces'], len(piece_ids),
               eval_ratio, seed)
  if path:
    _write_stats(summary, path)


def _sum_stats(dicts: Iterable[Dict[str, int]]) -> Dict[str, int]:
  total = collections.Counter()
  for d in dicts:
    total.update(d)
  return dict(total)


def _write_stats(stats: Dict[str, int], path: str) -> None:
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.gfile.GFile(path, 'w') as f:
    json.dump(stats, f, indent=2, sort_keys=True)


class Executor(base_example_gen_executor.BaseExampleGenExecutor):
  """ExampleGen executor for NoteSequence TFRecords."""

  _stats_dir = None

  def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
    stats_dir = self._stats_dir

    @beam.ptransform_fn
    @beam.typehints.with_input_types(beam.Pipeline)
    @beam.typehints.with_output_types(tf.train.Example)
    def _NoteSequencesToExamples(pipeline: beam.Pipeline,
                                 exec_properties: Dict[str, Any],
                                 split_pattern: str) -> beam.pvalue.PCollection:
      config = configs.get_config(exec_properties[MODEL_CONFIG_KEY])
      input_base = exec_properties[standard_component_specs.INPUT_BASE_KEY]
      pattern = os.path.join(input_base, split_pattern)
      # Files only, as `music-rnn extract` reads them (a matching directory is no input).
      files = sorted(f for f in tf.io.gfile.glob(pattern) if not tf.io.gfile.isdir(f))
      if not files:
        raise FileNotFoundError(f'No NoteSequence TFRecord files match {pattern!r}')
      logging.info('Extracting %s sequences from %d file(s) matching %s',
                   config.name, len(files), pattern)
      sample_seed = int(exec_properties.get(SPLIT_SEED_KEY) or 0)
      read = (pipeline
              | 'ListFiles' >> beam.Create(files)
              | 'ReadNoteSequences' >> beam.ParDo(_ReadFile()).with_outputs(
                  _STATS_TAG, main='sequences'))
      extracted = (read.sequences
                   | 'Spread' >> beam.Reshuffle()
                   | 'Extract' >> beam.ParDo(_Extract(config.name, sample_seed)).with_outputs(
                       _STATS_TAG, main='examples'))
      if stats_dir:
        stats_path = os.path.join(stats_dir, _stats_file_name(split_pattern))
        _ = ((read[_STATS_TAG], extracted[_STATS_TAG])
             | 'FlattenStats' >> beam.Flatten()
             | 'SumStats' >> beam.CombineGlobally(_sum_stats)
             | 'WriteStats' >> beam.Map(_write_stats, stats_path))
      return extracted.examples

    return _NoteSequencesToExamples

  def GenerateExamplesByBeam(self, pipeline: beam.Pipeline,
                             exec_properties: Dict[str, Any]) -> Dict[str, Any]:
    """Extracts once, then splits by piece over the global set of piece ids."""
    input_config, output_config = _split_configs(exec_properties)
    splits = output_config.split_config.splits
    if len(input_config.splits) != 1 or len(splits) != 2:
      return super().GenerateExamplesByBeam(pipeline, exec_properties)
    train, evaluation = splits[0].name, splits[1].name
    eval_ratio = splits[1].hash_buckets / (splits[0].hash_buckets + splits[1].hash_buckets)
    seed = int(exec_properties.get(SPLIT_SEED_KEY) or 0)
    exec_properties['_beam_pipeline_args'] = self._beam_pipeline_args or []
    to_examples = self.GetInputSourceToExamplePTransform()
    keyed = (pipeline
             | 'InputToRecord' >> to_examples(  # pylint: disable=no-value-for-parameter
                 exec_properties, input_config.splits[0].pattern)
             | 'KeyByPiece' >> beam.Map(lambda ex: (_source_id(ex), ex)))
    piece_ids = (keyed
                 | 'PieceIds' >> beam.Keys()
                 | 'DistinctPieces' >> beam.Distinct()
                 | 'AllPieces' >> beam.combiners.ToList())
    eval_ids = piece_ids | 'ChooseEval' >> beam.Map(
        splitting.eval_pieces, eval_ratio, seed)
    split_path = os.path.join(self._stats_dir, SPLIT_FILE) if self._stats_dir else None
    _ = piece_ids | 'RecordSplit' >> beam.Map(
        _write_split, beam.pvalue.AsSingleton(eval_ids), eval_ratio, seed, split_path)
    config = configs.get_config(exec_properties[MODEL_CONFIG_KEY])
    out = keyed | 'SplitByPiece' >> beam.ParDo(
        _SplitByPiece(train, evaluation, train_sample_only=configs.is_vae(config)),
        beam.pvalue.AsSingleton(eval_ids)).with_outputs(train, evaluation, _STATS_TAG)
    if self._stats_dir:
      _ = (out[_STATS_TAG]
           | 'SumSplitStats' >> beam.CombineGlobally(_sum_stats)
           | 'WriteSplitStats' >> beam.Map(
               _write_stats, os.path.join(self._stats_dir, SPLIT_STATS_FILE)))
    return {train: out[train], evaluation: out[evaluation]}

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    examples = artifact_utils.get_single_instance(
        output_dict[standard_component_specs.EXAMPLES_KEY])
    self._stats_dir = os.path.join(examples.uri, '_stats')
    super().Do(input_dict, output_dict, exec_properties)
    stats = read_stats(examples.uri)
    examples.set_string_custom_property(STATS_PROPERTY, json.dumps(stats, sort_keys=True))
    split = read_split(examples.uri)
    if split:
      examples.set_string_custom_property(SPLIT_PROPERTY, json.dumps(
          {k: v for k, v in split.items() if k != 'eval_source_ids'}, sort_keys=True))
    logging.info('Extraction statistics for %s:\n%s', exec_properties[MODEL_CONFIG_KEY],
                 extraction.format_stats(collections.Counter(stats)))
    # The same error as `music-rnn extract` on the same files.
    extraction.check_extracted(
        collections.Counter(stats), configs.get_config(exec_properties[MODEL_CONFIG_KEY]),
        os.path.join(exec_properties[standard_component_specs.INPUT_BASE_KEY],
                     _input_patterns(exec_properties)))


def _split_configs(exec_properties: Dict[str, Any]):
  input_config, output_config = example_gen_pb2.Input(), example_gen_pb2.Output()
  proto_utils.json_to_proto(
      exec_properties[standard_component_specs.INPUT_CONFIG_KEY], input_config)
  proto_utils.json_to_proto(
      exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY], output_config)
  return input_config, output_config


def _input_patterns(exec_properties: Dict[str, Any]) -> str:
  input_config, _ = _split_configs(exec_properties)
  return ','.join(split.pattern for split in input_config.splits)


def _stats_file_name(split_pattern: str) -> str:
  safe = ''.join(c if c.isalnum() else '_' for c in split_pattern)
  return f'{safe}.{STATS_FILE}'


def read_stats(examples_uri: str) -> Dict[str, int]:
  """Sums the extraction stats an Examples artifact recorded (per input split, and the
  train/eval split's)."""
  total = collections.Counter()
  for path in tf.io.gfile.glob(os.path.join(examples_uri, '_stats', '*' + STATS_FILE)):
    with tf.io.gfile.GFile(path) as f:
      total.update(json.load(f))
  return dict(total)


def read_split(examples_uri: str) -> Dict[str, Any]:
  """{pieces, eval_pieces, train_pieces, eval_ratio, split_seed, eval_source_ids} of an
  Examples artifact ({} if it predates the split record)."""
  path = os.path.join(examples_uri, '_stats', SPLIT_FILE)
  if not tf.io.gfile.exists(path):
    return {}
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)
