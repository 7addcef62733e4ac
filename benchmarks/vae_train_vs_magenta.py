"""MusicVAE training speed: our vae_model vs Magenta 2.1.4's own music_vae_train graph.

For cat-drums_2bar_small and cat-mel_2bar_small, with the same hparams and batch, one
after the other in one process tree:
  - Magenta: a child Python with Magenta 2.1.4 on its path (`make oracle`; never imported
    here) runs music_vae_train.train itself: configs.CONFIG_MAP[name] with the sizes
    parsed into its hparams, train_examples_path = the bundled NoteSequences
    (data/drums/*.tfrecord.gz, data/melody/essen_subset.tfrecord), its dataset_fn
    (data.get_dataset: the converter and, for melodies, the transposition augmenter in
    tf.py_function, cache, shuffle, repeat, batch), MusicVAE.build, model.train, the
    global-norm clipping and Adam's apply_gradients. Only the last call,
    tf_slim.training.train, is replaced by a plain tf.compat.v1 Session loop that times
    the train op (no checkpoints, summaries or logging hooks, as on our side). Before any
    step it pulls one whole pass of batches (the converter runs then and the dataset's
    cache fills; the count comes from Magenta's data.count_examples): those served slices
    are what both sides train on.
  - ours: music_rnn.vae_model.build_model (H2's MusicVae, compiled as the Trainer does)
    and Keras fit on the same slices (Magenta's converter output as labels: the argmax of
    its one-hot outputs, already transposed by Magenta's augmenter for melodies; our
    train_step adds its own per-example transposition on top, as it does in the Trainer),
    shuffled, repeated, batched to the same batch size.
Both time `--steps` train steps after `--warmup` untimed ones (graph build, tracing and
Magenta's data conversion excluded). Every slice is 32 steps (no padding), so
examples/s = 32 x time-steps/s. Printed: steps/s, examples/s, the loss before and after,
and ours/Magenta. Timings on a shared 2-core machine are noisy: the load is printed.

What it takes to run Magenta's MusicVAE graph on this TensorFlow (2.16), all in the
child only:
  - .oracle-extra holds tf-slim 1.1.0, tensorflow-probability 0.24.0 and dm-tree 0.1.8
    (`make oracle`, all --no-deps); TF_USE_LEGACY_KERAS=1 with the venv's tf_keras; the
    IndexedSlices alias and the magenta/__init__ bypass of music_rnn.magenta_worker.
  - magenta.common's names that music_vae imports (merge_hparams, Nade,
    flatten_maybe_padded_sequences) set on the bypassed package.
  - tensorflow_datasets, imported at the top of music_vae/data.py and used only for a
    config's tfds_name (not set here), is an empty module.
  - np.bool (removed in NumPy 1.24; data.py's default arguments) = bool.
  - TensorFlow 2.16's Dataset.unbatch segfaults on a component with a zero-sized
    dimension (`tf.data.Dataset.from_tensors(tf.zeros([3, 0])).unbatch()` crashes;
    fixed in later TensorFlow), and data.convert_to_tensors_op returns the control
    tensor with depth 0 when a config has no controls: the child wraps it to give that
    tensor depth 1. The graph never reads it (music_vae_train passes
    control_sequence=None when control_depth is 0).
MAGENTA_ORACLE_PATH (os.pathsep-separated) overrides where Magenta and those are found.

Usage: python benchmarks/vae_train_vs_magenta.py [--configs cat-drums_2bar_small,...]
       [--steps N] [--warmup N] [--magenta-sizes] [--sides magenta,ours]
       [--jit-compile auto|true|false]
Default: CPU sizes (enc [128], dec [128,128], z 64, batch 64), 20 steps after 5;
--magenta-sizes: enc [512], dec [256,256], z 256, batch 512, 3 steps after 2.
With --sides ours (no Magenta), ours trains on our own slicing (vae_slicing, the
training sample the ExampleGen keeps).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ('cat-drums_2bar_small', 'cat-mel_2bar_small')
CPU_SIZES = {'enc_rnn_size': [128], 'dec_rnn_size': [128, 128], 'z_size': 64,
             'batch_size': 64}
MAGENTA_SIZES = {'enc_rnn_size': [512], 'dec_rnn_size': [256, 256], 'z_size': 256,
                 'batch_size': 512}
STEPS = {'cpu': (20, 5), 'magenta': (3, 2)}  # (timed, warm-up) train steps
EXTRA_ORACLE_MODULES = ('tensorflow_probability', 'tree')  # beyond magenta, tf_slim
SEED = 0
RESULT = 'RESULT '


# --- Magenta's side: runs only in the child process (`--magenta-worker`). --------------


def _import_music_vae():
  """(tf.compat.v1, configs, data, music_vae_train) of Magenta's music_vae, with the
  shims the module docstring lists."""
  import types  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, PROJECT_ROOT)
  from music_rnn import magenta_worker  # pylint: disable=g-import-not-at-top
  tf, common = magenta_worker.bypass_magenta_init()
  import numpy as np  # pylint: disable=g-import-not-at-top
  np.bool = bool  # data.py's `dtype=np.bool` defaults (alias removed in NumPy 1.24)
  sys.modules.setdefault('tensorflow_datasets', types.ModuleType('tensorflow_datasets'))
  # pylint: disable=g-import-not-at-top
  from magenta.common import nade, sequence_example_lib, tf_utils
  common.Nade = nade.Nade
  common.merge_hparams = tf_utils.merge_hparams
  common.flatten_maybe_padded_sequences = sequence_example_lib.flatten_maybe_padded_sequences
  from magenta.models.music_vae import configs, data, music_vae_train
  _give_controls_depth(tf, data)
  return tf, configs, data, music_vae_train


def _give_controls_depth(tf, data):
  """data.convert_to_tensors_op with a depth-1 control tensor where it has depth 0:
  TF 2.16's unbatch segfaults on zero-sized components (see the module docstring)."""
  convert = data.convert_to_tensors_op

  def convert_to_tensors_op(item_scalar, converter):
    inputs, outputs, controls, lengths = convert(item_scalar, converter)
    if not converter.control_depth:
      controls = tf.zeros(tf.concat([tf.shape(controls)[:2], [1]], 0), controls.dtype)
    return inputs, outputs, controls, lengths

  data.convert_to_tensors_op = convert_to_tensors_op


def _is_gzip(pattern, tf):
  with open(sorted(tf.gfile.Glob(pattern))[0], 'rb') as f:
    return f.read(2) == b'\x1f\x8b'


def _timed_train(tf, model, captured, request, pass_batches, out):
  """Stands in for tf_slim.training.train: a Session that pulls one pass of batches
  (converter + cache), keeps their slices, then times the train op. Fills `out`."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  def train(train_op, logdir, scaffold=None, hooks=None, **unused_kwargs):
    del logdir, scaffold, hooks  # no checkpoints, summaries or logging
    batch_tensors = [captured['output_sequence'], captured['sequence_length']]
    with tf.Session() as sess:
      sess.run([tf.global_variables_initializer(), tf.local_variables_initializer()])
      start = time.perf_counter()
      served = [sess.run(batch_tensors) for _ in range(pass_batches)]
      out['conversion_seconds'] = time.perf_counter() - start
      out['labels'] = np.concatenate([o.argmax(-1) for o, _ in served]).astype(np.int32)
      out['lengths'] = np.concatenate([l for _, l in served]).astype(np.int32)
      for _ in range(request['warmup']):
        sess.run(train_op)
      losses = []
      start = time.perf_counter()
      for _ in range(request['steps']):
        losses.append(float(sess.run([train_op, model.loss])[1]))
      out['seconds'] = time.perf_counter() - start
    if not all(np.isfinite(losses)):
      raise SystemExit(f'Magenta loss not finite: {losses}')
    out.update(first_loss=losses[0], last_loss=losses[-1])
  return train


def magenta_worker(request):
  """The child's whole job: Magenta's music_vae_train.train, timed; one JSON line on
  stdout; the slices its pipeline served in request['slices'] (.npz)."""
  import functools  # pylint: disable=g-import-not-at-top
  import types  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  tf, configs, data, music_vae_train = _import_music_vae()
  tf.disable_v2_behavior()  # as music_vae_train's console_entry_point
  config = configs.CONFIG_MAP[request['config']]
  sizes = request['sizes']
  config.hparams.parse(
      f'batch_size={sizes["batch_size"]},z_size={sizes["z_size"]},'
      f'enc_rnn_size={sizes["enc_rnn_size"]},dec_rnn_size={sizes["dec_rnn_size"]}'
      .replace(' ', ''))
  config = configs.update_config(config, {'train_examples_path': request['data']})
  compression = 'GZIP' if _is_gzip(request['data'], tf) else ''
  config.data_converter.set_mode('train')
  count = data.count_examples(request['data'], None, config.data_converter, functools.partial(
      tf.io.tf_record_iterator, options=tf.io.TFRecordOptions(compression)))
  batch = config.hparams.batch_size
  pass_batches = -(-count // batch)  # with the shuffle buffer's 10 batches: a whole pass
  captured, out = {}, {}
  get_input_tensors = music_vae_train._get_input_tensors  # pylint: disable=protected-access

  def capture_input_tensors(dataset, cfg):
    captured.update(get_input_tensors(dataset, cfg))
    return captured

  music_vae_train._get_input_tensors = capture_input_tensors  # pylint: disable=protected-access
  music_vae_train.tf_slim = types.SimpleNamespace(training=types.SimpleNamespace(
      train=_timed_train(tf, config.model, captured, request, pass_batches, out)))
  reader = functools.partial(tf.data.TFRecordDataset, compression_type=compression)
  with tempfile.TemporaryDirectory() as tmp:
    music_vae_train.train(
        tmp, config, lambda: data.get_dataset(config, reader, is_training=True),
        num_steps=request['warmup'] + request['steps'])
  np.savez(request['slices'], labels=out.pop('labels')[:count],
           lengths=out.pop('lengths')[:count])
  out.update(slices=count, hparams=config.hparams.values())
  print(RESULT + json.dumps(out), flush=True)


def _oracle_path():
  """The oracle dirs (train_vs_magenta's check), also checked for tfp and dm-tree."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import train_vs_magenta  # pylint: disable=g-import-not-at-top
  paths = train_vs_magenta.oracle_path()
  for module in EXTRA_ORACLE_MODULES:
    if not any(importlib.util.find_spec(module) is not None
               or os.path.isdir(os.path.join(p, module)) for p in paths):
      raise SystemExit(f'{module} is not in {paths}: run `make oracle` (an older '
                       'install: rm .oracle-extra/.installed first).')
  return paths


def run_magenta(request):
  """Magenta's side in a child process; returns its result dict."""
  env = dict(os.environ, TF_USE_LEGACY_KERAS='1', TF_CPP_MIN_LOG_LEVEL='2')
  env['PYTHONPATH'] = os.pathsep.join(
      _oracle_path() + [env.get('PYTHONPATH', '')]).rstrip(os.pathsep)
  proc = subprocess.run(
      [sys.executable, os.path.abspath(__file__), '--magenta-worker', json.dumps(request)],
      env=env, capture_output=True, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT)]
  if proc.returncode or not lines:
    sys.stderr.write(proc.stderr[-5000:])
    raise SystemExit(f'Magenta side failed (exit {proc.returncode})')
  return json.loads(lines[-1][len(RESULT):])


# --- Our side: in this process. -------------------------------------------------------


def our_slices(config, data_path, out_path):
  """Our own slicing (vae_slicing via extraction) of the pieces: the training sample's
  labels, as the ExampleGen keeps them, in `out_path` (.npz). Returns the count."""
  import collections  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from music_rnn import configs, encoding, extraction, vae_encoding  # pylint: disable=g-import-not-at-top
  stats = collections.Counter()
  slices = [s for ns in extraction.read_note_sequences(data_path, stats)
            for s in extraction.extract_sequences(ns, config, stats) if s.in_training_sample]
  if config.kind == configs.DRUMS:
    labels = encoding.drum_pitches_to_class_indices(
        tf.ragged.constant([[p for step in s.events for p in step] for s in slices],
                           tf.int64),
        tf.ragged.constant([[len(step) for step in s.events] for s in slices], tf.int64))
  else:
    labels = vae_encoding.events_to_labels(tf.constant([s.events for s in slices]), config)
  labels = np.asarray(labels, np.int32)
  np.savez(out_path, labels=labels, lengths=np.full([len(labels)], labels.shape[1], np.int32))
  return len(labels)


def _dataset(slices_path, batch):
  """The slices, shuffled each pass, repeated, in batches of `batch`."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from music_rnn import vae_model  # pylint: disable=g-import-not-at-top
  slices = np.load(slices_path)
  labels, lengths = slices['labels'], slices['lengths']
  return (tf.data.Dataset.from_tensor_slices(
      ({vae_model.LABELS: labels, vae_model.LENGTHS: lengths}, labels))
          .shuffle(len(labels), seed=SEED).repeat()
          .batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE))


def run_ours(config, sizes, slices_path, warmup, steps, jit_compile):
  """vae_model.build_model + fit for warmup + steps steps; times the last `steps`."""
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from music_rnn import vae_model  # pylint: disable=g-import-not-at-top
  hparams = config.hparams.replace(**sizes)
  model = vae_model.build_model(config, hparams, jit_compile=jit_compile, seed=SEED)
  ends, losses = [], []

  class StepTimes(keras.callbacks.Callback):

    def on_train_batch_end(self, batch, logs=None):
      losses.append(float(logs['loss']))  # waits for the step, as Magenta's fetch
      ends.append(time.perf_counter())

  start = time.perf_counter()
  model.fit(_dataset(slices_path, sizes['batch_size']), epochs=1,
            steps_per_epoch=warmup + steps, verbose=0, callbacks=[StepTimes()])
  timed_start = ends[warmup - 1] if warmup else start
  if not all(np.isfinite(losses)):
    raise SystemExit(f'our loss not finite: {losses}')
  # fit logs the mean since the epoch began (every batch full): each batch's own loss
  # is the difference of running sums, to compare with Magenta's per-step loss.
  sums = np.arange(1, len(losses) + 1) * np.asarray(losses, np.float64)
  per_batch = np.diff(sums, prepend=0.0)
  return {'seconds': ends[-1] - timed_start, 'first_loss': per_batch[warmup],
          'last_loss': per_batch[-1], 'hparams': hparams.to_dict()}


# --- Driver. ---------------------------------------------------------------------------


def _hparams_differences(magenta, ours):
  """Names both sides have whose values differ (lists and tuples compared as lists)."""
  def norm(value):
    return list(value) if isinstance(value, (list, tuple)) else value
  return {k: (magenta[k], ours[k]) for k in sorted(set(magenta) & set(ours))
          if norm(magenta[k]) != norm(ours[k])}


def _row(side, steps, batch, r):
  rate = steps / r['seconds']
  print(f'  {side:<8} {steps:5d} {rate:8.2f} {rate * batch:11.1f} {r["seconds"]:8.1f}  '
        f'loss {r["first_loss"]:.1f} -> {r["last_loss"]:.1f}{r.get("note", "")}')
  return rate


def _try_ours(config, sizes, slices, args):
  """Our row, or the reason it could not run (the model is still being written)."""
  try:
    return run_ours(config, sizes, slices, args.warmup, args.steps, args.jit_compile), None
  except Exception as e:  # pylint: disable=broad-except
    return None, f'{type(e).__name__}: {str(e).strip().splitlines()[-1][:160]}'


def compare(name, args):
  """Magenta, then ours, on one config; prints their rows and the ratio."""
  sys.path.insert(0, PROJECT_ROOT)
  from music_rnn import configs  # pylint: disable=g-import-not-at-top
  from pipeline import configs as pipeline_configs  # pylint: disable=g-import-not-at-top
  config = configs.get_config(name)
  data = pipeline_configs.default_data(config.kind)
  sizes = dict(MAGENTA_SIZES if args.magenta_sizes else CPU_SIZES)
  batch = sizes['batch_size']
  print(f'\n{name}: enc {sizes["enc_rnn_size"]} dec {sizes["dec_rnn_size"]} '
        f'z {sizes["z_size"]} batch {batch}, {os.path.relpath(data, PROJECT_ROOT)}; '
        f'load {os.getloadavg()[0]:.2f}')
  rates = {}
  with tempfile.TemporaryDirectory() as tmp:
    slices = os.path.join(tmp, 'slices.npz')
    m = None
    if 'magenta' in args.sides:
      m = run_magenta({'config': name, 'data': data, 'sizes': sizes, 'slices': slices,
                       'warmup': args.warmup, 'steps': args.steps})
      print(f'  slices: {m["slices"]} served by Magenta\'s pipeline (its converter ran '
            f'{m["conversion_seconds"]:.0f} s, untimed)')
    else:
      print(f'  slices: {our_slices(config, data, slices)} from our slicing '
            '(training sample)')
    print(f'  {"side":<8} {"steps":>5} {"steps/s":>8} {"examples/s":>11} {"seconds":>8}')
    if m:
      rates['magenta'] = _row('Magenta', args.steps, batch, m)
    if 'ours' in args.sides:
      o, failed = _try_ours(config, sizes, slices, args)
      if failed:
        print(f'  ours     failed: {failed}')
      else:
        rates['ours'] = _row('ours', args.steps, batch, o)
        if m:
          differ = _hparams_differences(m['hparams'], o['hparams'])
          print(f'  hparams DIFFER (Magenta, ours): {differ}' if differ else
                f'  hparams: the {len(set(m["hparams"]) & set(o["hparams"]))} both sides '
                'name are equal')
  if len(rates) == 2:
    print(f'  ours/Magenta: {rates["ours"] / rates["magenta"]:.2f}')
  print(f'  load after: {os.getloadavg()[0]:.2f}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default=','.join(CONFIGS))
  parser.add_argument('--steps', type=int, help='timed train steps per side')
  parser.add_argument('--warmup', type=int, help='untimed train steps first')
  parser.add_argument('--magenta-sizes', action='store_true',
                      help="Magenta's sizes: enc [512], dec [256,256], z 256, batch 512")
  parser.add_argument('--sides', default='magenta,ours')
  parser.add_argument('--jit-compile', default='auto', choices=('auto', 'true', 'false'),
                      help="ours: vae_model.build_model's jit_compile")
  parser.add_argument('--magenta-worker', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.magenta_worker:
    return magenta_worker(json.loads(args.magenta_worker))
  steps, warmup = STEPS['magenta' if args.magenta_sizes else 'cpu']
  args.steps = steps if args.steps is None else args.steps
  args.warmup = warmup if args.warmup is None else args.warmup
  if args.steps < 1 or args.warmup < 0:
    parser.error('--steps must be >= 1 and --warmup >= 0')
  args.jit_compile = {'true': True, 'false': False}.get(args.jit_compile, 'auto')
  args.sides = args.sides.split(',')
  unknown = set(args.configs.split(',')) - set(CONFIGS)
  if unknown:
    parser.error(f'unknown configs {sorted(unknown)}: choose from {CONFIGS}')
  print(f'Timed: {args.steps} train steps per side after {args.warmup} untimed ones; '
        'every slice is 32 steps (no padding). Noisy: shared machine.')
  for name in args.configs.split(','):
    compare(name, args)
  return 0


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.exit(main())
