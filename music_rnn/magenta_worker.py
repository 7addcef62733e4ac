"""Magenta 2.1.4's side of the .mag interop: runs ONLY in a child Python with Magenta.

The product never imports Magenta: music_rnn/magenta_interop.py starts this file as a
script (`python magenta_worker.py REQUEST.json`) with Magenta 2.1.4 and tf-slim on
PYTHONPATH (`make oracle`), TF_USE_LEGACY_KERAS=1. It imports nothing from music_rnn.

The request is {"jobs": [job, ...]}; every job runs in this one process (one TensorFlow
start-up) and prints one line `RESULT <json>` on stdout, in order. Jobs ("op"):
  write_bundle  {config, hparams, weights (.npz of Magenta variable name -> array),
                 bundle, description}: Magenta's generation graph for the config and
                 hparams, the weights assigned, saved as a checkpoint, then written as a
                 .mag by Magenta's own SequenceGenerator.create_bundle_file.
  train_bundle  {config, hparams, data (NoteSequence TFRecord), steps, run_dir, bundle}:
                 Magenta's dataset pipeline and its own trainer
                 (events_rnn_train.run_training) for `steps` steps, then its bundle.
  probabilities {config, bundle, sequences}: softmax of Magenta's generation graph
                 loaded from the bundle (as its generator loads it) on each sequence,
                 encoded by Magenta's encoder-decoder: [T, C] per sequence.
  generate      {config, bundle, primers, num_steps, temperature}: events from the
                 model the bundle's generator builds (generate_drum_track /
                 generate_melody, beam size 1).
  generate_notes {config, bundle, seconds}: the generator's NoteSequence API, as
                 drums_rnn_generate / melody_rnn_generate call it, from a one-note primer.
Events are Magenta's: drums a list of pitches per step, melodies ints (-2 no event, -1
note off). Melodies are squashed into the config's range as its dataset pipeline does
before they are encoded (probabilities) and by generate_melody (generate).
"""

import importlib.util
import json
import os
import sys
import tempfile
import types

RESULT = 'RESULT '


def bypass_magenta_init():
  """(tf.compat.v1, the stub magenta.common module): Magenta importable on TF 2.16 without
  magenta/__init__ and magenta/common/__init__ (they import tensorflow_probability for
  models not used here). Also used by benchmarks/train_vs_magenta.py's Magenta side."""
  os.environ['TF_USE_LEGACY_KERAS'] = '1'  # before TensorFlow: tf.compat.v1 RNN cells
  import tensorflow.compat.v1 as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.python.framework import indexed_slices, ops  # pylint: disable=g-import-not-at-top
  ops.IndexedSlices = indexed_slices.IndexedSlices  # tf_slim's gradient clipping looks here
  spec = importlib.util.find_spec('magenta')
  if spec is None or not spec.submodule_search_locations:
    raise SystemExit('magenta is not importable: run `make oracle`')
  root = list(spec.submodule_search_locations)
  magenta = types.ModuleType('magenta')
  magenta.__path__ = root
  common = types.ModuleType('magenta.common')
  common.__path__ = [os.path.join(p, 'common') for p in root]
  magenta.common = common
  sys.modules.update({'magenta': magenta, 'magenta.common': common})
  return tf, common


def _import_magenta():
  """Magenta's model modules, without magenta/__init__ and magenta/common/__init__
  (they import tensorflow_probability for models not used here)."""
  tf, common = bypass_magenta_init()
  # pylint: disable=g-import-not-at-top
  from magenta.common import sequence_example_lib
  common.get_padded_batch = sequence_example_lib.get_padded_batch
  common.flatten_maybe_padded_sequences = sequence_example_lib.flatten_maybe_padded_sequences
  from magenta.common import beam_search as beam_search_lib
  common.beam_search = beam_search_lib.beam_search  # what magenta/common/__init__ exports
  from magenta.models.drums_rnn import drums_rnn_model, drums_rnn_pipeline
  from magenta.models.drums_rnn import drums_rnn_sequence_generator
  from magenta.models.melody_rnn import melody_rnn_model, melody_rnn_pipeline
  from magenta.models.melody_rnn import melody_rnn_sequence_generator
  from magenta.models.shared import events_rnn_graph, events_rnn_train
  from magenta.models.shared import sequence_generator_bundle
  from magenta.pipelines import pipeline
  tf.disable_v2_behavior()  # as Magenta's *_rnn_train / *_generate scripts do
  return tf, {
      'drums': (drums_rnn_model, drums_rnn_pipeline, drums_rnn_sequence_generator),
      'melody': (melody_rnn_model, melody_rnn_pipeline, melody_rnn_sequence_generator),
      'graph': events_rnn_graph, 'train': events_rnn_train,
      'bundle': sequence_generator_bundle, 'pipeline': pipeline}


class Worker:
  """The jobs, sharing one import of Magenta."""

  def __init__(self):
    self.tf, self.modules = _import_magenta()

  def _kind(self, config_name):
    return 'drums' if config_name in self.modules['drums'][0].default_configs else 'melody'

  def _config(self, config_name, hparams=''):
    """A fresh copy of Magenta's named config, its hparams parsed."""
    import copy  # pylint: disable=g-import-not-at-top
    config = copy.deepcopy(self.modules[self._kind(config_name)][0].default_configs[
        config_name])
    if hparams:
      config.hparams.parse(hparams)
    return config

  def _generator(self, config_name, hparams='', checkpoint=None, bundle=None):
    """Magenta's SequenceGenerator, as *_generate builds it (batch_size 1)."""
    config = self._config(config_name, hparams)
    config.hparams.batch_size = 1
    # The map's factory (Magenta's own), on this config rather than the module default.
    factory = self.modules[self._kind(config_name)][2].get_generator_map()[config_name].func
    return factory(config, checkpoint=checkpoint, bundle=bundle)

  def _bundle_generator(self, config_name, bundle_path):
    bundle = self.modules['bundle'].read_bundle_file(bundle_path)
    generator = self._generator(config_name, bundle=bundle)
    generator.initialize()
    return generator

  def write_bundle(self, job):
    """Our weights in Magenta's generation graph -> a .mag by Magenta's own code."""
    import numpy as np  # pylint: disable=g-import-not-at-top
    tf = self.tf
    weights = dict(np.load(job['weights']))
    config = self._config(job['config'], job['hparams'])
    config.hparams.batch_size = 1
    with tempfile.TemporaryDirectory() as tmp, tf.Graph().as_default():
      self.modules['graph'].get_build_graph_fn('generate', config)()
      variables = {v.op.name: v for v in tf.global_variables()}
      if set(variables) != set(weights):
        raise SystemExit('weights do not match the graph: graph has '
                         f'{sorted(set(variables) - set(weights))} more, weights '
                         f'{sorted(set(weights) - set(variables))} more')
      with tf.Session() as sess:
        for name, variable in variables.items():
          variable.load(weights[name], sess)
        checkpoint = tf.train.Saver().save(sess, os.path.join(tmp, 'model.ckpt'))
      generator = self._generator(job['config'], job['hparams'], checkpoint=checkpoint)
      generator.create_bundle_file(job['bundle'], job.get('description') or '')
      generator.close()
    return {'bundle': job['bundle'], 'variables': sorted(variables)}

  def _sequence_examples(self, config, data_path, out_path):
    """Magenta's dataset pipeline (eval_ratio 0) on the pieces -> SequenceExamples."""
    from note_seq.protobuf import music_pb2  # pylint: disable=g-import-not-at-top
    tf = self.tf
    kind = self._kind(config.details.id)
    dag = self.modules[kind][1].get_pipeline(config, eval_ratio=0.0)
    with open(data_path, 'rb') as f:
      gzip = f.read(2) == b'\x1f\x8b'
    options = tf.io.TFRecordOptions(tf.io.TFRecordCompressionType.GZIP if gzip else None)
    pieces = (music_pb2.NoteSequence.FromString(r)
              for r in tf.io.tf_record_iterator(data_path, options))
    outputs = self.modules['pipeline'].load_pipeline(dag, pieces)
    count = 0
    with tf.io.TFRecordWriter(out_path) as writer:
      for name, examples in outputs.items():
        if name.startswith('training'):
          for example in examples:
            writer.write(example.SerializeToString())
            count += 1
    return count

  def train_bundle(self, job):
    """Magenta's own dataset pipeline and trainer for a few steps, then its bundle."""
    tf = self.tf
    config = self._config(job['config'], job['hparams'])
    os.makedirs(job['run_dir'], exist_ok=True)
    examples = os.path.join(job['run_dir'], 'training.tfrecord')
    count = self._sequence_examples(config, job['data'], examples)
    tf.set_random_seed(job.get('seed', 0))
    build = self.modules['graph'].get_build_graph_fn('train', config, [examples])
    train_dir = os.path.join(job['run_dir'], 'train')
    self.modules['train'].run_training(build, train_dir, num_training_steps=job['steps'],
                                       summary_frequency=job['steps'],
                                       save_checkpoint_secs=3600, checkpoints_to_keep=1)
    checkpoint = tf.train.latest_checkpoint(train_dir)
    generator = self._generator(job['config'], job['hparams'], checkpoint=checkpoint)
    generator.create_bundle_file(job['bundle'], f'test bundle, {job["steps"]} steps')
    generator.close()
    return {'bundle': job['bundle'], 'checkpoint': checkpoint, 'sequences': count,
            'hparams': config.hparams.values()}

  def _track(self, config_name, events):
    import note_seq  # pylint: disable=g-import-not-at-top
    if self._kind(config_name) == 'drums':
      return note_seq.DrumTrack([frozenset(step) for step in events])
    return note_seq.Melody([int(e) for e in events])

  def probabilities(self, job):
    """Softmax of the bundle's own graph on each (squashed, encoded) sequence."""
    generator = self._bundle_generator(job['config'], job['bundle'])
    model = generator._model  # pylint: disable=protected-access
    session = model._session  # pylint: disable=protected-access
    config = model._config  # pylint: disable=protected-access
    graph = session.graph
    feeds = graph.get_collection('inputs')[0], graph.get_collection('temperature')
    softmax = graph.get_collection('softmax')[0]
    out = []
    for events in job['sequences']:
      track = self._track(job['config'], events)
      if self._kind(job['config']) == 'melody':
        track.squash(config.min_note, config.max_note, config.transpose_to_key)
      inputs = config.encoder_decoder.get_inputs_batch([track], full_length=True)
      feed = {feeds[0]: inputs}
      if feeds[1]:
        feed[feeds[1][0]] = 1.0
      out.append(session.run(softmax, feed)[0].tolist())
    generator.close()
    return {'probabilities': out}

  def generate(self, job):
    """Events from the bundle's generator model, beam size 1."""
    generator = self._bundle_generator(job['config'], job['bundle'])
    model = generator._model  # pylint: disable=protected-access
    out = []
    for primer in job['primers']:
      track = self._track(job['config'], primer)
      if self._kind(job['config']) == 'drums':
        result = model.generate_drum_track(job['num_steps'], track, job['temperature'])
        out.append([sorted(step) for step in result])
      else:
        result = model.generate_melody(job['num_steps'], track, job['temperature'])
        out.append([int(e) for e in result])
    generator.close()
    return {'events': out}

  def generate_notes(self, job):
    """Magenta's whole generator path (as *_rnn_generate runs it): a one-note primer
    NoteSequence, GeneratorOptions, generator.generate -> the generated notes' count."""
    import note_seq  # pylint: disable=g-import-not-at-top
    from note_seq.protobuf import generator_pb2  # pylint: disable=g-import-not-at-top
    generator = self._bundle_generator(job['config'], job['bundle'])
    drums = self._kind(job['config']) == 'drums'
    primer = note_seq.NoteSequence(ticks_per_quarter=note_seq.STANDARD_PPQ)
    primer.tempos.add(qpm=120.0)
    primer.notes.add(pitch=36 if drums else 60, start_time=0.0, end_time=0.125,
                     velocity=100, is_drum=drums)
    primer.total_time = 0.125
    options = generator_pb2.GeneratorOptions()
    options.args['temperature'].float_value = 1.0
    options.generate_sections.add(start_time=0.5, end_time=job.get('seconds', 4.0))
    generated = generator.generate(primer, options)
    generator.close()
    return {'notes': len(generated.notes), 'total_time': generated.total_time}


def main(argv):
  with open(argv[1]) as f:
    request = json.load(f)
  worker = Worker()
  for job in request['jobs']:
    result = getattr(worker, job['op'])(job)
    print(RESULT + json.dumps(result), flush=True)
  return 0


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.exit(main(sys.argv))
