"""Runs Magenta 2.1.4's own dataset-pipeline stages, as an oracle for extraction.py.

Run in a subprocess (tests/test_extraction.py does) with Magenta on the path:

  PYTHONPATH=.oracle-site python tests/magenta_oracle.py KINDS INPUT.tfrecord[.gz]

KINDS is a comma-separated list of 'drums', 'melody' and 'melody-ignore-polyphonic'
(one TensorFlow start-up for all),

where .oracle-site comes from
  pip install --no-deps --no-compile --target .oracle-site magenta==2.1.4

For every NoteSequence in INPUT it chains TimeChangeSplitter -> Quantizer ->
[TranspositionPipeline((0,)) for melodies] -> DrumsExtractor / MelodyExtractor exactly
as drums_rnn_pipeline.py / melody_rnn_pipeline.py wire them (with the extractor
settings those files use; 'melody-ignore-polyphonic' flips MelodyExtractor's
ignore_polyphonic_notes), and prints one JSON line per kind and piece:
  {"kind", "id", "sequences": [{"start_step", "steps_per_bar", "qpm", "events"}], "stats"}
Drum events are per-step sorted pitch lists. Only Counter stats are reported.

KINDS may also name MusicVAE's converters, 'vae-drums' and 'vae-melody': Magenta's
DrumsConverter / OneHotMelodyConverter with the cat-drums_2bar_small / cat-mel_2bar_small
arguments (music_vae/configs.py), in eval mode with no per-piece limit, so `to_tensors`
returns every unique slice. One JSON line per kind and piece:
  {"kind", "id", "slices": [[label per step], ...], "inputs": [[[input bits], ...], ...]}
labels are the argmax of the output tensors (drums: MultiDrumOneHotEncoding index of the
class set; melody: MelodyOneHotEncoding index over pitches 21..108).
data.py is imported without magenta/__init__.py, with two shims for this environment:
a stand-in `tensorflow_datasets` module (data.py uses it only to read datasets) and
np.bool (removed from NumPy 1.24; data.py uses it as a dtype).
"""

import importlib.util
import json
import os
import sys
import types


def _import_magenta_pipelines():
  """Imports magenta.pipelines without magenta/__init__.py.

  That file pulls in all of Magenta (tensorflow_probability, tf_slim, ...); the
  pipeline modules need only note_seq and TensorFlow.
  """
  spec = importlib.util.find_spec('magenta')
  if spec is None or not spec.submodule_search_locations:
    raise SystemExit('magenta is not on PYTHONPATH (see the module docstring)')
  package = types.ModuleType('magenta')
  package.__path__ = list(spec.submodule_search_locations)
  sys.modules['magenta'] = package
  # pylint: disable=g-import-not-at-top
  from magenta.pipelines import drum_pipelines
  from magenta.pipelines import melody_pipelines
  from magenta.pipelines import note_sequence_pipelines
  from magenta.pipelines import statistics
  return drum_pipelines, melody_pipelines, note_sequence_pipelines, statistics


def _vae_converters():
  """MusicVAE's converters, built as music_vae/configs.py builds the two 2-bar configs.

  Call after _import_magenta_pipelines (whose bare `magenta` package this extends).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  root = sys.modules['magenta'].__path__[0]
  for name in ('magenta.models', 'magenta.models.music_vae'):
    package = types.ModuleType(name)  # a bare package: its __init__.py is not run
    package.__path__ = [os.path.join(root, *name.split('.')[1:])]
    sys.modules.setdefault(name, package)
  sys.modules.setdefault('tensorflow_datasets', types.ModuleType('tensorflow_datasets'))
  if 'bool' not in np.__dict__:
    np.bool = bool
  from magenta.models.music_vae import data  # pylint: disable=g-import-not-at-top
  converters = {
      'vae-drums': data.DrumsConverter(max_bars=100, slice_bars=2, steps_per_quarter=4,
                                       roll_input=True),
      'vae-melody': data.OneHotMelodyConverter(
          valid_programs=data.MEL_PROGRAMS, skip_polyphony=False, max_bars=100,
          slice_bars=2, steps_per_quarter=4),
  }
  for converter in converters.values():
    converter.set_mode('eval')
    converter.max_tensors_per_notesequence = None  # every slice
  return converters


def _vae_line(kind, converter, ns):
  tensors = converter.to_tensors(ns)
  return json.dumps({
      'kind': kind, 'id': ns.id,
      'slices': [[int(i) for i in output.argmax(-1)] for output in tensors.outputs],
      'inputs': [[[int(b) for b in step] for step in inputs] for inputs in tensors.inputs]})


def _read(path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from note_seq.protobuf import music_pb2  # pylint: disable=g-import-not-at-top
  with open(path, 'rb') as f:
    compression = 'GZIP' if f.read(2) == b'\x1f\x8b' else ''
  for record in tf.data.TFRecordDataset(path, compression_type=compression):
    yield music_pb2.NoteSequence.FromString(record.numpy())


def main(argv):
  kinds, path = argv[1].split(','), argv[2]
  drum_pipelines, melody_pipelines, note_sequence_pipelines, statistics = (
      _import_magenta_pipelines())
  converters = _vae_converters() if any(k.startswith('vae-') for k in kinds) else {}
  splitter = note_sequence_pipelines.TimeChangeSplitter(name='S')
  quantizer = note_sequence_pipelines.Quantizer(steps_per_quarter=4, name='Q')
  transposer = note_sequence_pipelines.TranspositionPipeline((0,), name='T')
  extractors = {
      'drums': drum_pipelines.DrumsExtractor(
          min_bars=7, max_steps=512, gap_bars=1.0, name='E'),
      'melody': melody_pipelines.MelodyExtractor(
          min_bars=7, max_steps=512, min_unique_pitches=5, gap_bars=1.0,
          ignore_polyphonic_notes=False, name='E'),
      'melody-ignore-polyphonic': melody_pipelines.MelodyExtractor(
          min_bars=7, max_steps=512, min_unique_pitches=5, gap_bars=1.0,
          ignore_polyphonic_notes=True, name='E'),
  }

  def run(stage, obj, stats):
    stage._stats = []  # pylint: disable=protected-access; stages only set stats on events
    out = stage.transform(obj)
    for stat in stage.get_stats():
      if isinstance(stat, statistics.Counter) and stat.count:
        name = stat.name.split('_', 1)[1]  # drop the 'E_'-style stage prefix
        stats[name] = stats.get(name, 0) + stat.count
    return out

  for ns in _read(path):
    for kind in kinds:
      if kind in converters:
        print(_vae_line(kind, converters[kind], ns))
        continue
      stats, sequences = {}, []
      for segment in run(splitter, ns, stats):
        for quantized in run(quantizer, segment, stats):
          inputs = run(transposer, quantized, stats) if kind != 'drums' else [quantized]
          for q in inputs:
            for track in run(extractors[kind], q, stats):
              events = ([sorted(step) for step in track] if kind == 'drums'
                        else [int(e) for e in track])
              sequences.append({'start_step': track.start_step,
                                'steps_per_bar': track.steps_per_bar,
                                'qpm': q.tempos[0].qpm, 'events': events})
      stats.pop('transpositions_generated', None)
      print(json.dumps({'kind': kind, 'id': ns.id, 'sequences': sequences,
                        'stats': stats}))
  return 0


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.exit(main(sys.argv))
