"""Training speed: our Trainer's run_fn vs Magenta 2.1.4's own training graph.

For each config, on the same pieces (all extracted sequences of the bundled data, what
`make run` trains on: drums data/drums/*.tfrecord.gz, Freedoom + MMA's grooves, or with
`--drums freedoom` Freedoom's only; melodies data/melody/essen_subset.tfrecord from `make
data`), with the same hparams, one after the other:
  - Magenta: a child Python with Magenta 2.1.4 on its path (`make oracle`; never imported
    here) builds its SequenceExamples with its own dataset pipeline
    (drums_rnn_pipeline / melody_rnn_pipeline get_pipeline, eval_ratio 0: every piece
    trains), then its training graph (events_rnn_graph.get_build_graph_fn('train', ...):
    queue-fed padded batches, dynamic_rnn, slim's train op) and runs it in a
    tf.compat.v1 Session, reading the loss and the batch's lengths every step.
  - ours: Transform (real tft_beam, the project's preprocessing_fn) of the same pieces,
    then music_rnn.training.run_fn with a TFX FnArgs; rates from its metrics.json.
Both time the same number of training steps after untimed warm-up steps: graph build,
tracing and XLA compilation are excluded from both. Our Trainer's batches come in passes
(each sequence once per pass, length-bucketed), so the timed steps are `--steps` rounded
up to whole passes, for both sides, and our warm-up is whole passes too: then the timed
batches hold known sequences and padding whatever their order in a pass. Magenta warms
up `--warmup` steps (its graph has no per-shape compilation); ours at least that, and
longer (up to `--max-warmup`) until every batch shape (steps x rows) of the timed passes
has been seen, as XLA compiles once per shape: the batches are replayed beforehand with
run_fn's seed. run_fn's history records give the timed rate (evaluation and checkpoints
excluded); the row says how many shapes were still new, if any.
Printed per side (each row names its data): examples/s (sequences trained on / s:
Magenta's batches are always full, ours count their real rows), real time-steps/s (the steps of real events; padding
excluded), padded fraction (padded steps / real steps of the timed batches; Magenta pads
each batch to its longest sequence) and ours/Magenta. Targets, on time-steps/s (examples/s
also depends on which sequences the timed batches drew): ours/Magenta >= 3.0 at
rnn_layer_sizes=[64,64] batch 32 (default), >= 2.0 at Magenta's sizes (--magenta-sizes:
drum_kit [256,256,256], melodies [128,128], batch 128).

Magenta's side needs, beside .oracle-site (magenta==2.1.4 --no-deps), tf-slim==1.1.0
(--no-deps) in .oracle-extra; TensorFlow 2.16 runs it with TF_USE_LEGACY_KERAS=1 and the
venv's tf_keras. magenta/__init__.py and magenta/common/__init__.py are bypassed (they
import tensorflow_probability for models not used here). MAGENTA_ORACLE_PATH
(os.pathsep-separated) overrides where Magenta and tf-slim are found.

Usage: python benchmarks/train_vs_magenta.py [--configs drum_kit,attention_rnn]
       [--steps 20] [--warmup 20] [--max-warmup 200] [--magenta-sizes]
       [--sides magenta,ours] [--drums bundled|freedoom]
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FREEDOOM = os.path.join(PROJECT_ROOT, 'data', 'drums', 'freedoom.tfrecord.gz')
ORACLE_DIRS = ('.oracle-site', '.oracle-extra')
CONFIGS = ('drum_kit', 'attention_rnn')
SMALL = {'rnn_layer_sizes': [64, 64], 'batch_size': 32}
TARGETS = {'small': 3.0, 'magenta': 2.0}
SEED = 0


# --- Magenta's side: runs only in the child process (`--magenta-worker`). --------------


def _import_magenta():
  """Magenta's training modules, without magenta/__init__ and magenta/common/__init__.

  Returns (tf.compat.v1, modules dict, captured): `captured` receives the tensors that
  magenta.common.get_padded_batch returns when the graph is built (the batch lengths).
  """
  sys.path.insert(0, PROJECT_ROOT)
  from music_rnn import magenta_worker  # pylint: disable=g-import-not-at-top
  tf, common = magenta_worker.bypass_magenta_init()
  # pylint: disable=g-import-not-at-top
  from magenta.common import sequence_example_lib
  captured = {}

  def get_padded_batch(*args, **kwargs):
    captured['inputs'], captured['labels'], captured['lengths'] = batch = (
        sequence_example_lib.get_padded_batch(*args, **kwargs))
    return batch

  common.get_padded_batch = get_padded_batch
  common.flatten_maybe_padded_sequences = sequence_example_lib.flatten_maybe_padded_sequences
  from magenta.models.drums_rnn import drums_rnn_model, drums_rnn_pipeline
  from magenta.models.melody_rnn import melody_rnn_model, melody_rnn_pipeline
  from magenta.models.shared import events_rnn_graph
  from magenta.pipelines import pipeline
  modules = {'drums': (drums_rnn_model, drums_rnn_pipeline),
             'melody': (melody_rnn_model, melody_rnn_pipeline),
             'graph': events_rnn_graph, 'pipeline': pipeline}
  return tf, modules, captured


def _magenta_dataset(tf, modules, config_name, data_path, out_path):
  """Magenta's dataset pipeline on every piece -> SequenceExamples in `out_path`.

  Returns (config, number of sequences, their total input steps)."""
  from note_seq.protobuf import music_pb2  # pylint: disable=g-import-not-at-top
  kind = 'drums' if config_name in modules['drums'][0].default_configs else 'melody'
  model_module, pipeline_module = modules[kind]
  config = model_module.default_configs[config_name]
  dag = pipeline_module.get_pipeline(config, eval_ratio=0.0)
  pieces = (music_pb2.NoteSequence.FromString(r)
            for path in sorted(tf.io.gfile.glob(data_path))
            for r in tf.io.tf_record_iterator(path, _record_options(tf, path)))
  outputs = modules['pipeline'].load_pipeline(dag, pieces)
  examples = [e for name, es in outputs.items() if name.startswith('training') for e in es]
  with tf.io.TFRecordWriter(out_path) as writer:
    for example in examples:
      writer.write(example.SerializeToString())
  steps = sum(len(e.feature_lists.feature_list['inputs'].feature) for e in examples)
  return config, len(examples), steps


def _record_options(tf, path):
  with open(path, 'rb') as f:
    gzip = f.read(2) == b'\x1f\x8b'
  return tf.io.TFRecordOptions(tf.io.TFRecordCompressionType.GZIP if gzip else None)


def _magenta_time(tf, modules, captured, config, path, warmup, steps):
  """Builds Magenta's training graph on `path` and times `steps` train steps."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  with tf.Graph().as_default():
    modules['graph'].get_build_graph_fn('train', config, [path])()
    # slim's train op: the loss after the update. (TF 2.16's v1 Adam also files its
    # update op first under 'train_op', which events_rnn_train's [0] would pick.)
    train_op = [t for t in tf.get_collection('train_op') if isinstance(t, tf.Tensor)][-1]
    lengths = captured['lengths']
    with tf.Session() as sess:
      sess.run([tf.global_variables_initializer(), tf.local_variables_initializer()])
      coord = tf.train.Coordinator()
      threads = tf.train.start_queue_runners(sess=sess, coord=coord)
      for _ in range(warmup):
        sess.run(train_op)
      losses, real, padded = [], 0, 0
      start = time.perf_counter()
      for _ in range(steps):
        loss, batch_lengths = sess.run([train_op, lengths])
        losses.append(float(loss))
        real += int(batch_lengths.sum())
        padded += int(batch_lengths.size * batch_lengths.max() - batch_lengths.sum())
      seconds = time.perf_counter() - start
      coord.request_stop()
      coord.join(threads, stop_grace_period_secs=10, ignore_live_threads=True)
  if not all(np.isfinite(losses)):
    raise SystemExit(f'Magenta loss not finite: {losses}')
  return {'seconds': seconds, 'real_steps': real, 'padded_steps': padded,
          'first_loss': losses[0], 'last_loss': losses[-1]}


def magenta_worker(request):
  """The child's whole job: one JSON line on stdout."""
  tf, modules, captured = _import_magenta()
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'training.tfrecord')
    config, count, total = _magenta_dataset(tf, modules, request['config'],
                                            request['data'], path)
    config.hparams.parse('batch_size={},rnn_layer_sizes=[{}]'.format(
        request['batch_size'], ','.join(str(s) for s in request['rnn_layer_sizes'])))
    tf.disable_v2_behavior()  # as Magenta's *_rnn_train scripts do
    result = _magenta_time(tf, modules, captured, config, path, request['warmup'],
                           request['steps'])
  result.update(sequences=count, dataset_steps=total, hparams=config.hparams.values())
  print('RESULT ' + json.dumps(result), flush=True)


def oracle_path():
  paths = os.environ.get('MAGENTA_ORACLE_PATH')
  paths = paths.split(os.pathsep) if paths else [os.path.join(PROJECT_ROOT, d)
                                                 for d in ORACLE_DIRS]
  if not any(os.path.isdir(os.path.join(p, 'magenta')) for p in paths):
    raise SystemExit(f'Magenta 2.1.4 is not in {paths}: run `make oracle`.')
  if not any(os.path.isdir(os.path.join(p, 'tf_slim')) for p in paths):
    raise SystemExit(f'tf-slim is not in {paths}: pip install --no-deps --target '
                     '.oracle-extra tf-slim==1.1.0 (see `make oracle`).')
  return paths


def run_magenta(request):
  """Runs the Magenta side in a child process; returns its result dict."""
  env = dict(os.environ, TF_USE_LEGACY_KERAS='1', TF_CPP_MIN_LOG_LEVEL='2')
  env['PYTHONPATH'] = os.pathsep.join(oracle_path() + [env.get('PYTHONPATH', '')]).rstrip(
      os.pathsep)
  proc = subprocess.run(
      [sys.executable, os.path.abspath(__file__), '--magenta-worker', json.dumps(request)],
      env=env, capture_output=True, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
  if proc.returncode or not lines:
    sys.stderr.write(proc.stderr[-5000:])
    raise SystemExit(f'Magenta side failed (exit {proc.returncode})')
  return json.loads(lines[-1][len('RESULT '):])


# --- Our side: in this process. -------------------------------------------------------


def _raw_examples(config, data_path):
  """Our ExampleGen's records of every sequence our extraction finds in the pieces, and
  the sequences' lengths."""
  import collections  # pylint: disable=g-import-not-at-top
  from music_rnn import extraction  # pylint: disable=g-import-not-at-top
  stats = collections.Counter()
  sequences = [seq for ns in extraction.read_note_sequences(data_path, stats)
               for seq in extraction.extract_sequences(ns, config, stats)]
  return ([extraction.to_tf_example(seq, config).SerializeToString() for seq in sequences],
          [len(seq.events) for seq in sequences])


def _transform(config, raw, root):
  """tft_beam with the project's preprocessing_fn, as TFX's Transform runs it.

  Every sequence is in the train split (as on Magenta's side); the eval split (needed by
  run_fn, not timed) repeats the first few. Returns (transform_output, train, eval)."""
  import functools  # pylint: disable=g-import-not-at-top
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_transform.beam as tft_beam  # pylint: disable=g-import-not-at-top
  from tensorflow_transform.tf_metadata import dataset_metadata, metadata_io, schema_utils  # pylint: disable=g-import-not-at-top
  from tfx_bsl.public import tfxio  # pylint: disable=g-import-not-at-top
  from music_rnn import features, preprocessing  # pylint: disable=g-import-not-at-top
  splits = {'train': raw, 'eval': raw[:4]}
  for split, records in splits.items():
    os.makedirs(os.path.join(root, 'raw', split))
    with tf.io.TFRecordWriter(os.path.join(root, 'raw', split, 'data.gz'), 'GZIP') as w:
      for r in records:
        w.write(r)
  schema = schema_utils.schema_from_feature_spec(features.varlen_feature_spec(config.kind))
  sources = {s: tfxio.TFExampleRecord(os.path.join(root, 'raw', s, '*.gz'), schema=schema)
             for s in splits}
  fn = functools.partial(preprocessing.preprocessing_fn,
                         custom_config={'config_name': config.name})
  out = os.path.join(root, 'transform_output')
  with beam.Pipeline() as p, tft_beam.Context(temp_dir=os.path.join(root, 'tmp')):
    train = sources['train']
    (train_out, metadata), transform_fn = (
        (p | 'ReadTrain' >> train.BeamSource(), train.TensorAdapterConfig())
        | tft_beam.AnalyzeAndTransformDataset(fn, output_record_batches=True))
    _ = transform_fn | tft_beam.WriteTransformFn(out)
    evals = sources['eval']
    eval_out, _ = (((p | 'ReadEval' >> evals.BeamSource(), evals.TensorAdapterConfig()),
                    transform_fn) | tft_beam.TransformDataset(output_record_batches=True))
    for split, data in (('train', train_out), ('eval', eval_out)):
      _ = (data
           | f'Encode{split}' >> beam.FlatMapTuple(
               lambda batch, _, schema=metadata.schema:
               tfxio.RecordBatchToExamplesEncoder(schema).encode(batch))
           | f'Write{split}' >> beam.io.WriteToTFRecord(
               os.path.join(root, split, 'data'), file_name_suffix='.gz',
               compression_type=beam.io.filesystem.CompressionTypes.GZIP))
  metadata_io.write_metadata(dataset_metadata.DatasetMetadata(schema),
                             os.path.join(out, 'metadata'))
  return out, os.path.join(root, 'train', '*.gz'), os.path.join(root, 'eval', '*.gz')


def _timed_seconds(history, warmup):
  """Seconds of the train steps after step `warmup` (each history record's rate covers
  the steps since the previous record; evaluation and checkpoints excluded), or None."""
  seconds, previous, timed = 0.0, 0, 0
  for record in history or []:
    step, rate = record.get('step'), record.get('steps_per_sec')
    if step is None or not rate:
      return None
    if previous >= warmup:
      seconds, timed = seconds + (step - previous) / rate, timed + step - previous
    previous = step
  return seconds if timed else None


def _find(metrics, key):
  """`key` from the last history record, the top level, or any nested dict."""
  for place in ((metrics.get('history') or [{}])[-1], metrics):
    if isinstance(place, dict) and place.get(key) is not None:
      return place[key]
  for value in metrics.values():
    if isinstance(value, dict) and value.get(key) is not None:
      return value[key]
  return None


def _replay(config, transform_output, train_files, batch, count, step_multiple):
  """[(real steps, padded width, real rows)] of run_fn's first `count` training batches,
  from training.make_dataset with run_fn's seed: the same passes (the order of batches
  within a pass may differ). None if the Trainer's API does not allow it."""
  try:
    import inspect  # pylint: disable=g-import-not-at-top
    import keras  # pylint: disable=g-import-not-at-top
    import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top
    from music_rnn import model as model_lib, training  # pylint: disable=g-import-not-at-top
    kwargs = {'training': True, 'seed': SEED}
    if 'step_multiple' in inspect.signature(training.make_dataset).parameters:
      kwargs['step_multiple'] = step_multiple
    keras.utils.set_random_seed(SEED)
    ds = training.make_dataset([train_files], tft.TFTransformOutput(transform_output),
                               config, batch, **kwargs)
    lengths = [(x[model_lib.LENGTHS].numpy(), labels.shape) for x, labels in ds.take(count)]
    return [(int(n.sum()), int(shape[1]), int((n > 0).sum())) for n, shape in lengths]
  except Exception as e:  # pylint: disable=broad-except
    print(f'  (could not replay our batches: {type(e).__name__}: {e})')
    return None


def _plan(batches, pass_len, warmup, steps, max_warmup):
  """(warm-up, timed steps, shapes new in the timed passes) for our side, in whole passes
  (each sequence once per pass: the timed batches' sequences and padding do not depend
  on the order of batches within a pass). The warm-up is >= `warmup` and longer, up to
  `max_warmup`, until the timed passes hold only batch shapes (steps x rows) already
  seen: XLA compiles once per shape. The first batch's shape does not count as seen:
  Keras's train function (reduce_retracing) is traced for that exact shape, retraced
  with relaxed dimensions at the second shape, and the relaxed trace compiles the first
  shape again when it comes back (measured: the second pass of attention_rnn's 12
  batches took twice as long as the third)."""
  timed = pass_len * math.ceil(steps / pass_len)
  if not warmup:
    return 0, timed, None
  best = None
  for w in range(pass_len * math.ceil(warmup / pass_len), max(warmup, max_warmup) + 1,
                 pass_len):
    if batches is None or len(batches) < w + timed:
      break
    seen = {(width, rows) for _, width, rows in batches[1:w]}
    new = len({(width, rows) for _, width, rows in batches[w:w + timed]} - seen)
    if best is None or new < best[2]:
      best = (w, timed, new)
    if not new:
      break
  return best or (pass_len * math.ceil(warmup / pass_len), timed, None)


def _timed_batches(timed, padded_fraction=None):
  """Examples, real and padded steps of the timed replayed batches; `mismatch`: their
  padded fraction differs from the Trainer's own (metrics.json, same interval)."""
  real = sum(r for r, _, _ in timed)
  padded = sum(w * rows - r for r, w, rows in timed)
  mismatch = (padded_fraction is not None and real > 0
              and abs(padded / real - padded_fraction) > 1e-3)
  return {'examples': sum(rows for _, _, rows in timed), 'real_steps': real,
          'padded_steps': padded, 'mismatch': mismatch}


def _run_fn(training, fn_args):
  """Runs run_fn; a failure after training (export, final evaluation) is returned, not
  raised: the timing in metrics.json stands (the Trainer is being rewritten)."""
  try:
    training.run_fn(fn_args)
    return None
  except Exception as e:  # pylint: disable=broad-except
    return f'{type(e).__name__}: {str(e).strip().splitlines()[-1][:120]}'


def _fn_args(config, hparams, files, total, interval, work_dir):
  """A TFX FnArgs for run_fn: one history record every `interval` steps."""
  from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top
  transform_output, train_files, eval_files = files
  return tfx.components.FnArgs(
      working_dir=os.path.join(work_dir, 'working'), train_files=[train_files],
      eval_files=[eval_files], train_steps=total, eval_steps=1,
      transform_output=transform_output, transform_graph_path=transform_output,
      serving_model_dir=os.path.join(work_dir, 'serving'),
      model_run_dir=os.path.join(work_dir, 'run'),
      custom_config={'config_name': config.name, 'hparams': hparams, 'seed': SEED,
                     'num_evals': total // interval, 'checkpoint_every': interval})


def _replayed_counts(config, files, batch, batches, timed, padded_fraction, multiple):
  """Examples, real and padded steps of the timed batches, checked against the Trainer's
  padded fraction of the same interval; replayed without step rounding if only that
  matches. Adds 'note' when neither does."""
  counts = _timed_batches(batches[timed], padded_fraction)
  if counts['mismatch'] and multiple > 1:
    unrounded = _replay(config, files[0], files[1], batch, timed.stop, 1)
    alt = unrounded and _timed_batches(unrounded[timed], padded_fraction)
    if alt and not alt['mismatch']:
      counts = alt
  if counts.pop('mismatch'):
    counts['note'] = '; replayed padding != metrics.json'
  return counts


def prepare_ours(config, data_path, hparams, args, work_dir):
  """Our side's untimed part: extraction, Transform, the replayed batch plan."""
  from music_rnn import training  # pylint: disable=g-import-not-at-top
  raw, lengths = _raw_examples(config, data_path)
  files = _transform(config, raw, work_dir)
  batch = hparams['batch_size']
  pass_len = math.ceil(sum(n >= 2 for n in lengths) / batch)
  multiple = getattr(training, 'XLA_STEP_MULTIPLE', 1)
  batches = _replay(config, files[0], files[1], batch,
                    max(args.warmup, args.max_warmup) + 2 * args.steps + pass_len, multiple)
  warmup, steps, new_shapes = _plan(batches, pass_len, args.warmup, args.steps,
                                    args.max_warmup)
  return {'files': files, 'sequences': len(raw), 'dataset_steps': sum(n - 1 for n in lengths),
          'batches': batches, 'multiple': multiple, 'warmup': warmup, 'steps': steps,
          'new_shapes': new_shapes, 'pass_len': pass_len}


def run_ours(config, hparams, prep, work_dir):
  """run_fn for prep's warm-up + timed steps; returns (result dict, batch, timed steps)."""
  from music_rnn import training  # pylint: disable=g-import-not-at-top
  warmup, steps = prep['warmup'], prep['steps']
  total, interval = warmup + steps, math.gcd(warmup, steps)
  failed = _run_fn(training, _fn_args(config, hparams, prep['files'], total, interval,
                                      work_dir))
  metrics_path = os.path.join(work_dir, 'run', training.METRICS_FILE)
  if not os.path.exists(metrics_path):
    raise SystemExit(f'run_fn failed before writing metrics.json: {failed}')
  with open(metrics_path) as f:
    metrics = json.load(f)
  batch = metrics.get('global_batch_size') or hparams['batch_size']
  seconds = _timed_seconds(metrics.get('history'), warmup) if warmup else None
  pf = None  # the Trainer's padded fraction of the timed steps, if one record has it all
  note = f'warm-up {warmup}, {prep["pass_len"]} batches/pass'
  if prep['new_shapes']:
    note += f', {prep["new_shapes"]} new batch shapes compiled while timed'
  if seconds is None:  # the whole run's rate: includes compilation
    seconds = total * batch / metrics['train_examples_per_sec']
    warmup, steps, note = 0, total, 'all steps, incl. compilation'
  if failed:
    note += f' (run_fn failed after writing metrics.json: {failed})'
  if seconds is not None and interval == steps:  # the last record is the timed interval
    pf = _find(metrics, 'padded_fraction')
  result = {'seconds': seconds, 'note': note, 'padded_fraction_metrics': pf}
  if prep['batches'] and warmup + steps <= len(prep['batches']):
    counts = _replayed_counts(config, prep['files'], batch, prep['batches'],
                              slice(warmup, warmup + steps), pf, prep['multiple'])
    result['note'] += counts.pop('note', '')
    result.update(counts)
  return result, batch, steps


# --- Driver. ---------------------------------------------------------------------------


def _row(side, steps, batch, r):
  eps = r.get('examples', steps * batch) / r['seconds']
  real = r.get('real_steps')
  tsps = f'{real / r["seconds"]:12.0f}' if real else f'{"?":>12}'
  padded = r.get('padded_steps')
  frac = padded / real if real and padded is not None else r.get('padded_fraction_metrics')
  frac = f'{frac:7.3f}' if frac is not None else f'{"?":>7}'
  print(f'  {side:<8} {steps:5d} {eps:11.1f} {tsps} {frac} {r["seconds"]:8.1f}  '
        f'{r.get("note", "")}')
  return eps, (real / r['seconds'] if real else None)


HPARAM_NAMES = ('batch_size', 'rnn_layer_sizes', 'dropout_keep_prob', 'attn_length',
                'clip_norm', 'learning_rate')


def _check_hparams(config, overrides, magenta_hparams):
  """Prints the hparams both sides trained with; says so if they differ."""
  ours = config.hparams.replace(**overrides)
  ours = {k: list(v) if isinstance(v, tuple) else v
          for k, v in ours.to_dict().items() if k in HPARAM_NAMES}
  theirs = {k: magenta_hparams.get(k) for k in HPARAM_NAMES}
  differ = [k for k in HPARAM_NAMES if ours[k] != theirs[k]]
  print(f'  hparams (both): {ours}' if not differ else
        f'  hparams DIFFER: ours {ours}, Magenta {theirs}')


def compare(name, args):
  """Magenta, then ours, on one config; prints their rows and the ratio."""
  sys.path.insert(0, PROJECT_ROOT)
  from music_rnn import configs  # pylint: disable=g-import-not-at-top
  from pipeline import configs as pipeline_configs  # pylint: disable=g-import-not-at-top
  config = configs.get_config(name)
  # Drums: the bundled data (Freedoom + MMA, what `make run` trains on) or, with
  # --drums freedoom, Freedoom's pieces only (the README's numbers before MMA).
  data = (FREEDOOM if config.kind == configs.DRUMS and args.drums == 'freedoom'
          else pipeline_configs.default_data(config.kind))
  data_name = os.path.relpath(data, PROJECT_ROOT)
  hparams = ({'rnn_layer_sizes': list(config.hparams.rnn_layer_sizes),
              'batch_size': config.hparams.batch_size} if args.magenta_sizes else dict(SMALL))
  batch = hparams['batch_size']
  print(f'\n{name}: rnn_layer_sizes={hparams["rnn_layer_sizes"]} batch {batch}, '
        f'{data_name}; load {os.getloadavg()[0]:.2f}')
  print(f'  {"side":<8} {"steps":>5} {"examples/s":>11} {"time-steps/s":>12} '
        f'{"padded":>7} {"seconds":>8}')
  rates, steps = {}, args.steps
  with tempfile.TemporaryDirectory() as tmp:
    if 'ours' in args.sides:  # untimed, first: it sets the steps in whole passes
      prep = prepare_ours(config, data, hparams, args, tmp)
      steps = prep['steps']
    if 'magenta' in args.sides:
      m = run_magenta({'config': name, 'data': data, 'warmup': args.warmup,
                       'steps': steps, **hparams})
      m['note'] = (f'{data_name}: {m["sequences"]} seqs/{m["dataset_steps"]} steps, loss '
                   f'{m["first_loss"]:.2f}->{m["last_loss"]:.2f}')
      rates['magenta'] = _row('Magenta', steps, batch, m)
      _check_hparams(config, hparams, m['hparams'])
    if 'ours' in args.sides:
      o, batch_ours, steps = run_ours(config, hparams, prep, tmp)
      o['note'] = (f'{data_name}: {prep["sequences"]} seqs/{prep["dataset_steps"]} steps, '
                   f'{o["note"]}')
      if o['padded_fraction_metrics'] is not None:
        o['note'] += f'; metrics.json padded_fraction {o["padded_fraction_metrics"]:.3f}'
      rates['ours'] = _row('ours', steps, batch_ours, o)
  if len(rates) == 2:
    # Judged on real time-steps/s: examples/s also depends on which sequences the few
    # timed batches drew (and Magenta's queue repeats sequences to fill a batch).
    target = TARGETS['magenta' if args.magenta_sizes else 'small']
    ratios = [o / m for o, m in zip(rates['ours'], rates['magenta']) if o and m]
    print(f'  ours/Magenta: examples/s {ratios[0]:.2f}'
          + (f', time-steps/s {ratios[1]:.2f}' if len(ratios) > 1 else '')
          + f' (target >= {target}: {"met" if ratios[-1] >= target else "NOT met"})')
  print(f'  load after: {os.getloadavg()[0]:.2f}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default=','.join(CONFIGS))
  parser.add_argument('--steps', type=int, default=20,
                      help='timed steps per side (rounded up to whole passes of ours)')
  parser.add_argument('--warmup', type=int, default=20, help='untimed steps first (ours: '
                      'whole passes, more until the timed batch shapes are compiled, up '
                      'to --max-warmup)')
  parser.add_argument('--max-warmup', type=int, default=200)
  parser.add_argument('--magenta-sizes', action='store_true',
                      help="Magenta's default layer sizes and batch 128")
  parser.add_argument('--sides', default='magenta,ours')
  parser.add_argument('--drums', choices=('bundled', 'freedoom'), default='bundled',
                      help="drum data: the bundled data/drums/*.tfrecord.gz (make run's) "
                      "or Freedoom's pieces only")
  parser.add_argument('--magenta-worker', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.magenta_worker:
    return magenta_worker(json.loads(args.magenta_worker))
  if args.steps < 1 or args.warmup < 0:
    parser.error('--steps must be >= 1 and --warmup >= 0')
  from music_rnn import configs  # pylint: disable=g-import-not-at-top
  event_rnns = configs.names(configs.EVENT_RNN)
  unknown = [n for n in args.configs.split(',') if n not in event_rnns]
  if unknown:
    parser.error(f'--configs: unknown {unknown}; choose from {event_rnns} '
                 '(MusicVAE: benchmarks/vae_train_vs_magenta.py)')
  args.sides = args.sides.split(',')
  if not args.sides or set(args.sides) - {'magenta', 'ours'}:
    parser.error(f"--sides: 'magenta', 'ours' or both, comma-separated; got {args.sides}")
  print(f'Timed: >= {args.steps} training steps per side (whole passes of our batches) '
        f'after >= {args.warmup} warm-up steps (graph build, tracing and XLA compilation '
        'excluded from both; our warm-up covers the timed batch shapes). Padded = padded '
        'steps / real steps of the timed batches.')
  for name in args.configs.split(','):
    compare(name, args)
  return 0


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.exit(main())
