"""MusicVAE serving latency: sample, interpolate and encode from an exported SavedModel.

For cat-drums_2bar_small and cat-mel_2bar_small at the config's (Magenta's) sizes,
untrained (latency does not depend on the weights): the bundled data's first
training slices through Transform (the project's preprocessing_fn in tft_beam, via
train_vs_magenta's helper), vae_model.build_model, vae_export.export_vae_model. Exports
are cached in --work-dir (delete it after changing the export code); --model-dir times an
existing export instead (e.g. a pushed model of `music-rnn run`), for one config.

The timing runs in a child Python that imports TensorFlow alone and loads the export
with bare tf.saved_model.load, as a serving client does. Per batch B (1 and 64):
  sample       n = B slices at temperature 1.0;
  interpolate  B pairs of slices, num_steps 7 (endpoints included): 7 x B decoded slices;
  encode       B slices -> mu, sigma, z;
events are random valid serving events (drums class indices, melody -2/-1/pitches). The
first call of each (tracing) is reported apart; then the best (the least disturbed)
and the median of --repeats calls.
The machine is shared: numbers are noisy; the load is printed.

Usage: python benchmarks/vae_latency.py [--configs cat-drums_2bar_small,...]
       [--repeats 5] [--work-dir build/benchmarks/vae_latency] [--model-dir DIR]
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
BATCHES = (1, 64)
INTERPOLATION_STEPS = 7
TRANSFORM_SLICES = 64  # raw slices the Transform analyzes (the unigram table)
RESULT = 'RESULT '


# --- The export (this process). --------------------------------------------------------


def _raw_slices(config, count):
  """The first `count` training slices of the bundled data as raw tf.Examples."""
  import collections  # pylint: disable=g-import-not-at-top
  from music_rnn import extraction  # pylint: disable=g-import-not-at-top
  from pipeline import configs as pipeline_configs  # pylint: disable=g-import-not-at-top
  stats, raw = collections.Counter(), []
  for ns in extraction.read_note_sequences(pipeline_configs.default_data(config.kind), stats):
    raw.extend(extraction.to_tf_example(s, config).SerializeToString()
               for s in extraction.extract_sequences(ns, config, stats)
               if s.in_training_sample)
    if len(raw) >= count:
      return raw[:count]
  return raw


def export_untrained(config, work_dir):
  """A freshly initialised model at the config's sizes, exported; cached in work_dir."""
  import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top
  import train_vs_magenta  # pylint: disable=g-import-not-at-top
  from music_rnn import vae_export, vae_model  # pylint: disable=g-import-not-at-top
  out = os.path.join(work_dir, config.name)
  if os.path.exists(os.path.join(out, 'saved_model.pb')):
    return out
  os.makedirs(work_dir, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
    transform_output, _, _ = train_vs_magenta._transform(  # pylint: disable=protected-access
        config, _raw_slices(config, TRANSFORM_SLICES), tmp)
    model = vae_model.build_model(config, config.hparams, seed=0)
    vae_export.export_vae_model(model, config, config.hparams,
                                tft.TFTransformOutput(transform_output), out)
  return out


# --- The timing (child process: TensorFlow alone). -------------------------------------


def _random_events(config_json, rows, rng):
  """Valid serving events [rows, steps] for the exported config."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  steps = config_json['hparams']['max_seq_len']
  if config_json['kind'] == 'drums':
    return rng.integers(0, config_json['num_classes'], [rows, steps])
  converter = config_json['converter']
  choices = np.concatenate([[-2, -1], np.arange(converter['min_pitch'],
                                                converter['max_pitch'] + 1)])
  return rng.choice(choices, [rows, steps])


def _time(call, repeats):
  """(seconds of the first call, best and median seconds of `repeats` more)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  call()
  first = time.perf_counter() - start
  seconds = []
  for _ in range(repeats):
    start = time.perf_counter()
    call()
    seconds.append(time.perf_counter() - start)
  return first, min(seconds), float(np.median(seconds))


def measure(model_dir, repeats):
  """Child: loads the export with TensorFlow alone and times each signature."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  loaded = tf.saved_model.load(model_dir)
  sig = loaded.signatures
  config_json = json.loads(sig['model_config']()['config_json'].numpy().decode())
  rng = np.random.default_rng(0)
  temperature, seed = tf.constant(1.0), tf.constant(0, tf.int64)
  rows = []
  for batch in BATCHES:
    a, b = (tf.constant(_random_events(config_json, batch, rng), tf.int64) for _ in 'ab')
    calls = {
        'sample': lambda: sig['sample'](n=tf.constant(batch), temperature=temperature,
                                        seed=seed),
        'interpolate': lambda: sig['interpolate'](
            events_a=a, events_b=b, num_steps=tf.constant(INTERPOLATION_STEPS),
            temperature=temperature, seed=seed),
        'encode': lambda: sig['encode'](events=a, seed=seed),
    }
    for name, call in calls.items():
      first, best, median = _time(call, repeats)
      rows.append({'signature': name, 'batch': batch, 'first': first, 'best': best,
                   'median': median})
  print(RESULT + json.dumps({'rows': rows, 'hparams': config_json['hparams']}), flush=True)


def run_child(model_dir, repeats):
  proc = subprocess.run(
      [sys.executable, os.path.abspath(__file__), '--measure', model_dir,
       '--repeats', str(repeats)],
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'), capture_output=True, text=True,
      check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT)]
  if proc.returncode or not lines:
    sys.stderr.write(proc.stderr[-5000:])
    raise SystemExit(f'timing child failed (exit {proc.returncode})')
  return json.loads(lines[-1][len(RESULT):])


# --- Driver. ---------------------------------------------------------------------------


def _print(name, model_dir, result):
  hp = result['hparams']
  print(f'\n{name}: enc {hp["enc_rnn_size"]} dec {hp["dec_rnn_size"]} z {hp["z_size"]}; '
        f'{os.path.relpath(model_dir)}; load {os.getloadavg()[0]:.2f}')
  print(f'  {"signature":<12} {"batch":>5} {"slices out":>10} {"best ms":>8} '
        f'{"median ms":>10} {"best ms/slice":>13} {"first call s":>12}')
  for r in result['rows']:
    out = r['batch'] * (INTERPOLATION_STEPS if r['signature'] == 'interpolate' else 1)
    print(f'  {r["signature"]:<12} {r["batch"]:5d} {out:10d} {1e3 * r["best"]:8.1f} '
          f'{1e3 * r["median"]:10.1f} {1e3 * r["best"] / out:13.2f} {r["first"]:12.2f}')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--configs', default=','.join(CONFIGS))
  parser.add_argument('--repeats', type=int, default=5, help='timed calls per signature')
  parser.add_argument('--work-dir', default=os.path.join(PROJECT_ROOT, 'build', 'benchmarks',
                                                         'vae_latency'))
  parser.add_argument('--model-dir', help='time this export (one config) instead')
  parser.add_argument('--measure', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.repeats < 1:
    parser.error('--repeats must be >= 1')
  if args.measure:
    return measure(args.measure, args.repeats)
  names = args.configs.split(',')
  if args.model_dir and len(names) != 1:
    parser.error('--model-dir times one export: give one --configs name')
  sys.path.insert(0, PROJECT_ROOT)
  from music_rnn import configs  # pylint: disable=g-import-not-at-top
  print(f'Latency per call, best and median of {args.repeats} (first call: tracing); '
        f'interpolate: B pairs x {INTERPOLATION_STEPS} steps. Noisy: shared machine.')
  for name in names:
    model_dir = args.model_dir or export_untrained(configs.get_config(name), args.work_dir)
    _print(name, model_dir, run_child(model_dir, args.repeats))
  return 0


if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  sys.exit(main())
