"""Magenta models in and out: .mag bundles and run_dir checkpoints <-> our SavedModel.

Import (`music-rnn import-magenta`): a .mag bundle (note-seq's GeneratorBundle proto: the
generator id, one V1 checkpoint file, the generation metagraph) or a training run's
checkpoint is read with TensorFlow alone; Magenta is never imported here. The bundle says
everything: its generator id is our config name, the checkpoint's shapes give
rnn_layer_sizes, and the metagraph's zero state gives attn_length. A run_dir checkpoint
needs --config and --hparams; when they disagree with its shapes the error names both
and the hparams that fit. The weights are mapped onto EventSequenceRnn
(magenta_weights.py) and exported by export.export_serving_model: the same contract as a
pushed model.

Export (`music-rnn export-magenta`): our weights, mapped back, go to a child Python with
Magenta 2.1.4 (magenta_worker.py, `make oracle` or MAGENTA_ORACLE_PATH) that builds
Magenta's own generation graph, assigns them and writes the bundle with Magenta's own
SequenceGenerator.create_bundle_file.

Outputs are written to a temporary sibling and renamed at the end: a failure leaves
nothing at --output.
"""

import contextlib
import dataclasses
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Dict, Iterator, List, Optional, Tuple

from absl import logging
import numpy as np

from music_rnn import configs
from music_rnn import magenta_weights

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'magenta_worker.py')
ORACLE_DIRS = ('.oracle-site', '.oracle-extra')
ORACLE_ENV = 'MAGENTA_ORACLE_PATH'  # os.pathsep-separated dirs holding magenta, tf_slim
BUNDLE_SUFFIX = '.mag'
# The zero state of AttentionCellWrapper's window: [batch, attn_length * units].
_WINDOW_ZERO_STATE = re.compile(r'AttentionCellWrapperZeroState/zeros_3$')


@dataclasses.dataclass
class MagentaModel:
  """A Magenta model's config, hparams and weights (Magenta's variable names)."""
  config: configs.ModelConfig
  hparams: configs.HParams
  weights: magenta_weights.Weights
  source: str
  description: str = ''


# --- Reading bundles and checkpoints. ------------------------------------------------


def read_bundle(path: str):
  """The GeneratorBundle proto of a .mag file, checked for what an import needs."""
  from google.protobuf import message  # pylint: disable=g-import-not-at-top
  from note_seq.protobuf import generator_pb2  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f'{path} does not exist')
  if tf.io.gfile.isdir(path):
    raise ValueError(f'{path} is a directory, not a .mag bundle file')
  with tf.io.gfile.GFile(path, 'rb') as f:
    data = f.read()
  bundle = generator_pb2.GeneratorBundle()
  try:
    bundle.ParseFromString(data)
  except message.DecodeError as e:
    raise ValueError(f'{path} is not a readable Magenta .mag bundle (corrupt or '
                     f'truncated: {e})') from None
  missing = [what for what, present in (
      ('generator id', bundle.generator_details.id),
      ('checkpoint', len(bundle.checkpoint_file)), ('metagraph', bundle.metagraph_file))
             if not present]
  if missing:
    raise ValueError(f'{path} is not a complete Magenta .mag bundle (corrupt or '
                     f'truncated?): it has no {" and no ".join(missing)}')
  importable = configs.names(configs.EVENT_RNN)  # Magenta has no MusicVAE bundles
  if bundle.generator_details.id not in importable:
    raise ValueError(f'{path} is a {bundle.generator_details.id!r} bundle; music-rnn '
                     f'imports {", ".join(importable)} bundles')
  return bundle


def _read_checkpoint(prefix: str, what: str) -> magenta_weights.Weights:
  """The model variables of a checkpoint (V1 file or V2 prefix), canonical names."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    reader = tf.train.load_checkpoint(prefix)
  except (tf.errors.OpError, ValueError) as e:
    raise ValueError(f'cannot read the checkpoint of {what}: '
                     f'{str(e).strip().splitlines()[0]}') from None
  names = magenta_weights.select(reader.get_variable_to_shape_map())
  if not names:
    raise ValueError(f'{what} holds no Magenta event-RNN variables (rnn/multi_rnn_cell/..., '
                     'fully_connected/...)')
  return {name: reader.get_tensor(stored) for name, stored in names.items()}


def _attn_length(metagraph_bytes: bytes, units: int) -> Optional[int]:
  """attn_length from a metagraph's AttentionCellWrapper zero state, None if absent."""
  from tensorflow.core.protobuf import meta_graph_pb2  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    meta = meta_graph_pb2.MetaGraphDef.FromString(metagraph_bytes)
    nodes = [n.name for n in meta.graph_def.node if _WINDOW_ZERO_STATE.search(n.name)]
    if not nodes:
      return None
    with tf.Graph().as_default() as graph:
      tf.compat.v1.import_graph_def(meta.graph_def, name='')
    size = graph.get_tensor_by_name(nodes[0] + ':0').shape[-1]
  except Exception:  # pylint: disable=broad-except; an unreadable metagraph says nothing
    return None
  return int(size) // units if size else None


def _hparams_text(hparams: configs.HParams) -> str:
  sizes = ','.join(str(s) for s in hparams.rnn_layer_sizes)
  return f'rnn_layer_sizes=[{sizes}],attn_length={hparams.attn_length}'


def _fitting_hparams(config: configs.ModelConfig, shapes, attn_length: int) -> str:
  """The --hparams a checkpoint's shapes imply, for error messages."""
  sizes, attention = magenta_weights.layer_sizes(shapes)
  if not sizes:
    return 'none (no LSTM layers found)'
  length = (attn_length or config.hparams.attn_length or 1) if attention else 0
  return f"--hparams '{_hparams_text(configs.HParams(rnn_layer_sizes=sizes, attn_length=length))}'"


def check_shapes(config: configs.ModelConfig, hparams: configs.HParams,
                 weights: magenta_weights.Weights, what: str, attn_length: int = 0) -> None:
  """Fails naming both shapes, and the config/hparams that would fit, if they differ."""
  shapes = {k: v.shape for k, v in weights.items()}
  differ = magenta_weights.mismatches(config, hparams, shapes)
  if not differ:
    return
  hint = _fitting_hparams(config, shapes, attn_length)
  input_size = magenta_weights.input_size_of(shapes)
  if input_size is not None and input_size != config.input_size:
    fitting = [c.name for c in configs.CONFIGS.values()
               if not configs.is_vae(c) and c.input_size == input_size]
    hint = (f'--config {" or ".join(fitting) if fitting else "(none of ours)"} '
            f'(input size {input_size}; {config.name} has {config.input_size}) with {hint}')
  raise ValueError(
      f'{what} does not match --config {config.name} with {_hparams_text(hparams)}: '
      f'{len(differ)} variable(s) differ ({"; ".join(differ[:3])}). It fits {hint}.')


def bundle_path(name: str) -> str:
  """A .mag named by a local path, or by a URL / hub handle (model_handles.resolve)."""
  from music_rnn import model_handles  # pylint: disable=g-import-not-at-top
  path = model_handles.resolve(name)
  if os.path.isdir(path):
    found = sorted(f for f in os.listdir(path) if f.endswith(BUNDLE_SUFFIX))
    if len(found) != 1:
      raise ValueError(f'{name} resolved to {path}, which holds {len(found)} .mag files '
                       '(expected exactly one)')
    path = os.path.join(path, found[0])
  return path


def load_bundle(path: str) -> MagentaModel:
  """A .mag bundle's config (its generator id), hparams and weights."""
  bundle = read_bundle(path)
  config = configs.get_config(bundle.generator_details.id)
  with tempfile.TemporaryDirectory() as tmp:
    checkpoint = os.path.join(tmp, 'model.ckpt')
    with open(checkpoint, 'wb') as f:
      f.write(bundle.checkpoint_file[0])
    weights = _read_checkpoint(checkpoint, path)
  shapes = {k: v.shape for k, v in weights.items()}
  sizes, attention = magenta_weights.layer_sizes(shapes)
  attn_length = 0
  if attention and sizes:
    attn_length = _attn_length(bundle.metagraph_file, sizes[0])
    if not attn_length:
      attn_length = config.hparams.attn_length
      logging.warning('%s: attn_length not found in its metagraph; using %s\'s default %d',
                      path, config.name, attn_length)
  hparams = config.hparams.replace(rnn_layer_sizes=sizes or config.hparams.rnn_layer_sizes,
                                   attn_length=attn_length)
  check_shapes(config, hparams, weights, f'the bundle {path}')
  return MagentaModel(config, hparams, weights, path, bundle.bundle_details.description)


def with_flags(magenta: MagentaModel, config_name: Optional[str],
               hparam_overrides: Optional[Dict[str, Any]]) -> MagentaModel:
  """A bundle's model with --config / --hparams applied: they may only agree with the
  bundle's config and shapes (and set training-only hparams such as learning_rate)."""
  if config_name and config_name != magenta.config.name:
    raise ValueError(f'{magenta.source} is a {magenta.config.name} bundle, not '
                     f'--config {config_name} (leave --config out: the bundle names it)')
  if not hparam_overrides:
    return magenta
  hparams = magenta.hparams.replace(**hparam_overrides)
  if (hparams.rnn_layer_sizes, hparams.attn_length) != (magenta.hparams.rnn_layer_sizes,
                                                        magenta.hparams.attn_length):
    raise ValueError(
        f'--hparams {_hparams_text(hparams)} disagrees with the bundle {magenta.source}, '
        f'which has {_hparams_text(magenta.hparams)} (leave them out: the bundle has them)')
  return dataclasses.replace(magenta, hparams=hparams)


def is_bundle(path: str) -> bool:
  """Whether `path` names a file (a .mag bundle candidate) rather than a directory."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return bool(path) and tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path)


def checkpoint_prefix(path: str) -> str:
  """A checkpoint prefix from a Magenta run_dir (its train/ subdir), a checkpoint dir or
  a prefix."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if tf.io.gfile.isdir(path):
    for candidate in (path, os.path.join(path, 'train')):
      prefix = tf.train.latest_checkpoint(candidate)
      if prefix:
        return prefix
    raise FileNotFoundError(f'no checkpoint in {path} or {os.path.join(path, "train")} '
                            '(expected a Magenta run_dir or a checkpoint directory)')
  if tf.io.gfile.exists(path + '.index') or tf.io.gfile.exists(path):
    return path
  raise FileNotFoundError(f'{path} is neither a checkpoint directory nor a checkpoint '
                          'prefix (model.ckpt-N)')


def load_checkpoint(path: str, config_name: str,
                    hparam_overrides: Optional[Dict[str, Any]] = None) -> MagentaModel:
  """A run_dir checkpoint, with the config and hparams it was trained with."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  config = configs.get_config(config_name)
  hparams = config.hparams.replace(**(hparam_overrides or {}))
  prefix = checkpoint_prefix(path)
  weights = _read_checkpoint(prefix, prefix)
  found_length = 0
  if tf.io.gfile.exists(prefix + '.meta'):
    with tf.io.gfile.GFile(prefix + '.meta', 'rb') as f:
      sizes, _ = magenta_weights.layer_sizes({k: v.shape for k, v in weights.items()})
      found_length = (sizes and _attn_length(f.read(), sizes[0])) or 0
  check_shapes(config, hparams, weights, f'the checkpoint {prefix}', found_length)
  if found_length and found_length != hparams.attn_length:
    raise ValueError(
        f'the checkpoint {prefix} was trained with attn_length={found_length} (its '
        f'metagraph), the flags give {hparams.attn_length}: use --hparams '
        f"'{_hparams_text(hparams.replace(attn_length=found_length))}'")
  return MagentaModel(config, hparams, weights, prefix)


# --- Into our model and SavedModel. -------------------------------------------------


def build_keras_model(magenta: MagentaModel):
  """An EventSequenceRnn holding the Magenta model's weights."""
  from music_rnn import model as model_lib  # pylint: disable=g-import-not-at-top
  model = model_lib.build_model(magenta.config, magenta.hparams)
  magenta_weights.to_keras(magenta.weights, model)
  return model


def _neutral_example(config: configs.ModelConfig) -> bytes:
  """One short raw example, for a Transform graph without training data."""
  from music_rnn import extraction  # pylint: disable=g-import-not-at-top
  events = [(36,), (), (42,)] if config.kind == configs.DRUMS else [60, -2, 62]
  seq = extraction.ExtractedSequence(source_id='import', track_index=0, start_step=0,
                                     steps_per_bar=16, steps_per_quarter=4, qpm=120.,
                                     events=events)
  return extraction.to_tf_example(seq, config).SerializeToString()


def _raw_examples(config: configs.ModelConfig, data: Optional[str]) -> List[bytes]:
  """Raw tf.Examples to analyze: the config's sequences in `data`, else one neutral one."""
  import collections  # pylint: disable=g-import-not-at-top
  from music_rnn import extraction  # pylint: disable=g-import-not-at-top
  if not data:
    return [_neutral_example(config)]
  stats = collections.Counter()
  raw = [extraction.to_tf_example(seq, config).SerializeToString()
         for ns in extraction.read_note_sequences(data, stats)
         for seq in extraction.extract_sequences(ns, config, stats)]
  if not raw:
    raise ValueError(f'--data {data}: no {config.name} sequences extracted '
                     f'({extraction.format_stats(stats)})')
  return raw


def transform_graph(config: configs.ModelConfig, work_dir: str,
                    data: Optional[str] = None) -> str:
  """Transform's graph for the config (the project's preprocessing_fn, in Beam), as TFX
  writes it. Its unigram baseline counts the labels of `data`'s sequences (a NoteSequence
  TFRecord), or of one neutral sequence (a near-uniform baseline) without data."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_transform.beam as tft_beam  # pylint: disable=g-import-not-at-top
  from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils  # pylint: disable=g-import-not-at-top
  from tfx_bsl.public import tfxio  # pylint: disable=g-import-not-at-top
  from music_rnn import features, preprocessing  # pylint: disable=g-import-not-at-top
  raw = os.path.join(work_dir, 'raw.tfrecord')
  with tf.io.TFRecordWriter(raw) as writer:
    for record in _raw_examples(config, data):
      writer.write(record)
  schema = schema_utils.schema_from_feature_spec(features.varlen_feature_spec(config.kind))
  source = tfxio.TFExampleRecord(raw, schema=schema)
  out = os.path.join(work_dir, 'transform_output')
  fn = functools.partial(preprocessing.preprocessing_fn,
                         custom_config={'config_name': config.name})
  with beam.Pipeline() as pipeline, tft_beam.Context(temp_dir=os.path.join(work_dir, 'beam')):
    transform_fn = ((pipeline | source.BeamSource(), source.TensorAdapterConfig())
                    | tft_beam.AnalyzeDataset(fn))
    _ = transform_fn | tft_beam.WriteTransformFn(out)
  # Where TFX's Transform records the raw schema (serving_default parses with it).
  metadata_io.write_metadata(dataset_metadata.DatasetMetadata(schema),
                             os.path.join(out, 'metadata'))
  return out


@contextlib.contextmanager
def staged_output(output: str, is_dir: bool) -> Iterator[str]:
  """A temporary path beside `output`, renamed to it only if the block succeeds."""
  output = os.path.abspath(output)
  if os.path.exists(output) and (not is_dir or not os.path.isdir(output)
                                 or os.listdir(output)):
    raise ValueError(f'--output {output} already exists; remove it or choose another path')
  parent = os.path.dirname(output)
  os.makedirs(parent, exist_ok=True)
  stage = tempfile.mkdtemp(dir=parent, prefix=f'.{os.path.basename(output)}.partial-')
  try:
    target = stage if is_dir else os.path.join(stage, os.path.basename(output))
    yield target
    if is_dir and os.path.isdir(output):
      os.rmdir(output)  # empty, checked above
    os.replace(target, output)
  finally:
    shutil.rmtree(stage, ignore_errors=True)


def import_model(magenta: MagentaModel, output: str, data: Optional[str] = None,
                 jit_compile: bool = True) -> str:
  """Exports the Magenta model as our serving SavedModel at `output` (a new directory)."""
  import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top
  from music_rnn import export  # pylint: disable=g-import-not-at-top
  model = build_keras_model(magenta)
  with staged_output(output, is_dir=True) as stage, tempfile.TemporaryDirectory() as tmp:
    transform = tft.TFTransformOutput(transform_graph(magenta.config, tmp, data))
    export.export_serving_model(model, magenta.config, magenta.hparams, transform, stage,
                                jit_compile=jit_compile)
  return output


# --- Back to Magenta. -------------------------------------------------------------


def load_export(model_dir: str):
  """(config, hparams, EventSequenceRnn with the export's weights) of a serving dir."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from music_rnn import export, model as model_lib, training  # pylint: disable=g-import-not-at-top
  from music_rnn import model_handles  # pylint: disable=g-import-not-at-top
  if model_handles.is_remote(model_dir):
    model_dir = model_handles.resolve(model_dir)
  export_dir = training.find_export(model_dir)
  if is_bundle(export_dir):
    raise ValueError(f'{model_dir} is a file, not a SavedModel directory')
  config_path = os.path.join(export_dir, export.CONFIG_ASSET)
  if not tf.io.gfile.exists(config_path):
    raise ValueError(f'{export_dir} is not a music-rnn export (no {export.CONFIG_ASSET})')
  with tf.io.gfile.GFile(config_path) as f:
    described = json.loads(f.read())
  config = configs.get_config(described['name'])
  hparams = config.hparams.replace(**described['hparams'])
  model = model_lib.build_model(config, hparams)
  training.warm_start(model, config, hparams, export_dir)
  return config, hparams, model


def oracle_path() -> List[str]:
  """Where Magenta 2.1.4 and tf-slim are: $MAGENTA_ORACLE_PATH or the project's
  `make oracle` dirs. Raises ValueError saying how to get them."""
  paths = os.environ.get(ORACLE_ENV)
  paths = (paths.split(os.pathsep) if paths else
           [os.path.join(PROJECT_ROOT, d) for d in ORACLE_DIRS])
  for package, how in (('magenta', 'magenta==2.1.4'), ('tf_slim', 'tf-slim==1.1.0')):
    if not any(os.path.isdir(os.path.join(p, package)) for p in paths):
      raise ValueError(f'Magenta interop needs {package} ({how}, installed --no-deps '
                       f'--target, as `make oracle` does) in one of {paths}; set '
                       f'{ORACLE_ENV} to where it is')
  return paths


def run_worker(jobs: List[Dict[str, Any]], timeout: int = 1800) -> List[Dict[str, Any]]:
  """Runs magenta_worker.py's jobs in one child Python with Magenta; their results."""
  env = dict(os.environ, TF_USE_LEGACY_KERAS='1', TF_CPP_MIN_LOG_LEVEL='2')
  env['PYTHONPATH'] = os.pathsep.join(
      oracle_path() + [p for p in [env.get('PYTHONPATH')] if p])
  with tempfile.TemporaryDirectory() as tmp:
    request = os.path.join(tmp, 'request.json')
    with open(request, 'w') as f:
      json.dump({'jobs': jobs}, f)
    # -P: the script's directory (music_rnn/) must not shadow top-level modules.
    proc = subprocess.run([sys.executable, '-P', WORKER, request], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)
  results = [json.loads(line[len('RESULT '):]) for line in proc.stdout.splitlines()
             if line.startswith('RESULT ')]
  if proc.returncode or len(results) != len(jobs):
    lines = proc.stderr.strip().splitlines()
    logging.info('Magenta worker stderr (last lines):\n%s', '\n'.join(lines[-20:]))
    raise RuntimeError(f'Magenta worker failed (exit {proc.returncode}) after '
                       f'{len(results)} of {len(jobs)} jobs; its error: '
                       f'{lines[-1].strip() if lines else "none printed"}')
  return results


def export_bundles(pairs: List[Tuple[str, str]], description: str = '') -> List[str]:
  """Writes each (model_dir, output .mag) export as a bundle Magenta 2.1.4 loads: our
  weights under Magenta's names, written by Magenta's own code in one child Python."""
  oracle_path()  # fail before loading anything
  jobs = []
  with contextlib.ExitStack() as stack:
    tmp = stack.enter_context(tempfile.TemporaryDirectory())
    for i, (model_dir, output) in enumerate(pairs):
      config, hparams, model = load_export(model_dir)
      arrays = os.path.join(tmp, f'weights{i}.npz')
      np.savez(arrays, **magenta_weights.from_keras(model))
      jobs.append({'op': 'write_bundle', 'config': config.name,
                   'hparams': _hparams_text(hparams), 'weights': arrays,
                   'bundle': stack.enter_context(staged_output(output, is_dir=False)),
                   'description': description or f'music-rnn export of {model_dir}'})
    run_worker(jobs)
  return [output for _, output in pairs]


def export_bundle(model_dir: str, output: str, description: str = '') -> str:
  """Writes our export at `model_dir` as a .mag that Magenta 2.1.4 loads."""
  return export_bundles([(model_dir, output)], description)[0]
