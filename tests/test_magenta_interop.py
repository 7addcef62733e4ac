"""Magenta models in and out, checked against Magenta 2.1.4 itself (`make oracle`).

A user's session: Magenta's own trainer trains a tiny model per config on the bundled
data and Magenta's own code saves it as a .mag; `music-rnn import-magenta` turns each
into our SavedModel, whose next-event probabilities must equal Magenta's graph on the
same real sequences and whose greedy generation must equal Magenta's generator;
`music-rnn export-magenta` writes them back, and Magenta's generator loads those with the
same probabilities; the local pipeline fine-tunes from a .mag (`--warm-start-from`).
Magenta runs in child processes (magenta_interop.run_worker), three for the whole file.
Bad input: corrupt, truncated and unsupported bundles, checkpoints that do not fit the
flags, a failing Magenta side: one clear error, nothing at --output.
"""

import collections
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from music_rnn import cli
from music_rnn import configs
from music_rnn import events as events_lib
from music_rnn import extraction
from music_rnn import magenta_interop
from music_rnn import magenta_weights
from music_rnn import model as model_lib
from music_rnn import training
from pipeline import local_runner
from tests import conftest

try:
  magenta_interop.oracle_path()
except ValueError as _missing:  # Magenta is not installed: nothing here can run
  pytest.skip(f'Magenta oracle not installed ({_missing})', allow_module_level=True)

CONFIGS = ('drum_kit', 'basic_rnn', 'lookback_rnn', 'attention_rnn')
# Tiny, and different per config: two layers of different sizes, one, attention on both
# kinds. A learning rate that moves the weights well away from their initialisation in
# a few steps, so the distributions compared are far from uniform.
HPARAMS = {
    'drum_kit': 'rnn_layer_sizes=[16,8],attn_length=4,batch_size=4,learning_rate=0.01',
    'basic_rnn': 'rnn_layer_sizes=[16,16],batch_size=4,learning_rate=0.01',
    'lookback_rnn': 'rnn_layer_sizes=[12],batch_size=4,learning_rate=0.01',
    'attention_rnn': 'rnn_layer_sizes=[16,8],attn_length=3,batch_size=4,learning_rate=0.01',
}
TRAIN_STEPS = 10
NUM_SEQUENCES = 2
PRIMER_STEPS = 8
GENERATED_STEPS = 40  # total, primer included
GREEDY = 1e-4  # temperature: softmax(logits / T) is the argmax
TOLERANCE = 1e-5
LOG_TOLERANCE = 1e-4


def _run_cli(argv, capsys):
  """music-rnn in this process: (exit code, stdout, stderr)."""
  code = cli.main(argv)
  out, err = capsys.readouterr()
  return code, out, err


def _sequences(config, path):
  """The first real sequences our extraction finds in a bundled-data slice."""
  stats = collections.Counter()
  return [s for ns in extraction.read_note_sequences(path, stats)
          for s in extraction.extract_sequences(ns, config, stats)][:NUM_SEQUENCES]


def _magenta_events(config, events):
  return [list(e) for e in events] if config.kind == configs.DRUMS else list(events)


def _classes(config, events):
  """Events as our generate signature takes and returns them."""
  if config.kind == configs.DRUMS:
    return events_lib.drum_events_to_class_indices(events)
  return [int(e) for e in events]


@pytest.fixture(scope='module')
def work(tmp_path_factory):
  """Magenta's trainer -> one .mag per config (one child process); the data slices."""
  root = tmp_path_factory.mktemp('magenta')
  data = {
      configs.DRUMS: conftest.write_slice(conftest.bundled('drums'),
                                          str(root / 'drums.tfrecord'), 4),
      configs.MELODY: conftest.write_slice(conftest.bundled('melody'),
                                           str(root / 'melody.tfrecord'), 8),
  }
  jobs = [{'op': 'train_bundle', 'config': name, 'hparams': HPARAMS[name],
           'data': data[configs.get_config(name).kind], 'steps': TRAIN_STEPS,
           'run_dir': str(root / f'run_{name}'), 'bundle': str(root / f'{name}.mag')}
          for name in CONFIGS]
  results = magenta_interop.run_worker(jobs)
  return {'root': root, 'data': data, 'trained': dict(zip(CONFIGS, results))}


@pytest.fixture(scope='module')
def imported(work):
  """`music-rnn import-magenta --bundle` of every trained bundle: {config: SavedModel}."""
  out = {}
  for name in CONFIGS:
    out[name] = str(work['root'] / f'{name}_imported')
    assert cli.main(['import-magenta', '--bundle', str(work['root'] / f'{name}.mag'),
                     '--output', out[name], '--no-xla-generation']) == 0
  return out


@pytest.fixture(scope='module')
def oracle(work, imported):
  """export-magenta of every import (the CLI for one, then one child for the rest), then
  one child: Magenta's probabilities and greedy events from the trained bundles, its
  probabilities from the exported ones, and its NoteSequence generator on one."""
  root = work['root']
  exported = {name: str(root / f'{name}_exported.mag') for name in CONFIGS}
  assert cli.main(['export-magenta', '--model-dir', imported['drum_kit'],
                   '--output', exported['drum_kit']]) == 0
  magenta_interop.export_bundles([(imported[n], exported[n]) for n in CONFIGS[1:]])
  sequences, jobs = {}, []
  for name in CONFIGS:
    config = configs.get_config(name)
    sequences[name] = _sequences(config, work['data'][config.kind])
    events = [_magenta_events(config, s.events) for s in sequences[name]]
    bundle = str(root / f'{name}.mag')
    jobs += [{'op': 'probabilities', 'config': name, 'bundle': bundle, 'sequences': events},
             {'op': 'generate', 'config': name, 'bundle': bundle,
              'primers': [e[:PRIMER_STEPS] for e in events], 'num_steps': GENERATED_STEPS,
              'temperature': GREEDY},
             {'op': 'probabilities', 'config': name, 'bundle': exported[name],
              'sequences': events}]
  jobs.append({'op': 'generate_notes', 'config': 'attention_rnn',
               'bundle': exported['attention_rnn']})
  results = iter(magenta_interop.run_worker(jobs))
  out = {name: {'sequences': sequences[name], 'probabilities': next(results),
                'generated': next(results), 'round_trip': next(results)}
         for name in CONFIGS}
  out['generate_notes'] = next(results)
  return out


def _our_probabilities(export_dir, config, sequences):
  loaded = tf.saved_model.load(export_dir)
  examples = [extraction.to_tf_example(s, config).SerializeToString() for s in sequences]
  result = loaded.signatures['serving_default'](examples=tf.constant(examples))
  lengths = result['lengths'].numpy()
  return [p[:n] for p, n in zip(result['probabilities'].numpy(), lengths)]


@pytest.mark.parametrize('name', CONFIGS)
def test_imported_probabilities_equal_magentas(name, imported, oracle):
  config = configs.get_config(name)
  ours = _our_probabilities(imported[name], config, oracle[name]['sequences'])
  theirs = oracle[name]['probabilities']['probabilities']
  for sequence, p, q in zip(oracle[name]['sequences'], ours, theirs):
    q = np.asarray(q)
    assert p.shape == q.shape == (len(sequence.events), config.num_classes)
    np.testing.assert_allclose(p, q, rtol=0, atol=TOLERANCE)
    # Small probabilities too (a 512-way softmax's are ~0.002): equal to 0.01%.
    np.testing.assert_allclose(np.log(p), np.log(q), rtol=0, atol=LOG_TOLERANCE)
    # Trained away from a uniform guess: equal numbers here mean an equal model.
    assert q.max(-1).mean() > 2 / config.num_classes


@pytest.mark.parametrize('name', CONFIGS)
def test_greedy_generation_equals_magentas_generator(name, imported, oracle):
  config = configs.get_config(name)
  generate = tf.saved_model.load(imported[name]).signatures['generate']
  theirs = oracle[name]['generated']['events']
  for sequence, magenta_events in zip(oracle[name]['sequences'], theirs):
    primer = _classes(config, sequence.events[:PRIMER_STEPS])
    out = generate(primer=tf.constant([primer], tf.int64),
                   num_steps=tf.constant(GENERATED_STEPS - PRIMER_STEPS),
                   temperature=tf.constant(GREEDY), seed=tf.constant(0, tf.int64))
    assert out['events'].numpy()[0].tolist() == _classes(config, magenta_events)


@pytest.mark.parametrize('name', CONFIGS)
def test_exported_bundle_loads_in_magenta_with_the_same_probabilities(name, oracle):
  for p, q in zip(oracle[name]['round_trip']['probabilities'],
                  oracle[name]['probabilities']['probabilities']):
    np.testing.assert_allclose(np.asarray(p), np.asarray(q), rtol=0, atol=TOLERANCE)


def test_magentas_sequence_generator_generates_from_an_exported_bundle(oracle):
  assert oracle['generate_notes']['notes'] > 0


def test_import_reads_config_and_hparams_from_the_bundle(work, imported):
  for name in CONFIGS:
    described = tf.saved_model.load(imported[name]).signatures['model_config']()
    hparams = configs.get_config(name).hparams.replace(
        **configs.parse_hparams(HPARAMS[name]))
    recorded = json.loads(described['config_json'].numpy())
    assert recorded['name'] == name
    assert recorded['hparams']['rnn_layer_sizes'] == list(hparams.rnn_layer_sizes)
    assert recorded['hparams']['attn_length'] == hparams.attn_length


def test_checkpoint_import_equals_the_bundle_and_names_fitting_hparams(work, capsys):
  root = work['root']
  run_dir = str(root / 'run_attention_rnn')
  from_run = magenta_interop.load_checkpoint(run_dir, 'attention_rnn',
                                             configs.parse_hparams(HPARAMS['attention_rnn']))
  from_bundle = magenta_interop.load_bundle(str(root / 'attention_rnn.mag'))
  assert from_run.hparams.attn_length == from_bundle.hparams.attn_length == 3
  assert sorted(from_run.weights) == sorted(from_bundle.weights)
  for key, value in from_bundle.weights.items():
    np.testing.assert_array_equal(from_run.weights[key], value)

  output = root / 'wrong_flags'
  code, _, err = _run_cli(['import-magenta', '--checkpoint', run_dir, '--config',
                           'attention_rnn', '--output', str(output)], capsys)
  assert code == 2
  assert 'checkpoint [16]' in err and 'flags [128]' in err  # both shapes
  assert "It fits --hparams 'rnn_layer_sizes=[16,8],attn_length=3'" in err
  code, _, err = _run_cli(['import-magenta', '--checkpoint', run_dir, '--config',
                           'lookback_rnn', '--output', str(output)], capsys)
  assert code == 2 and 'It fits --config attention_rnn (input size 74' in err
  code, _, err = _run_cli(['import-magenta', '--checkpoint', run_dir, '--config',
                           'attention_rnn', '--hparams', 'rnn_layer_sizes=[16,8]',
                           '--output', str(output)], capsys)
  assert code == 2 and 'trained with attn_length=3' in err
  assert not output.exists()


def _no_leftovers(directory):
  return not [f for f in os.listdir(directory) if '.partial-' in f]


def test_bad_bundles_fail_clearly_and_write_nothing(work, tmp_path, capsys):
  from note_seq.protobuf import generator_pb2
  real = (work['root'] / 'drum_kit.mag').read_bytes()
  corrupt = tmp_path / 'corrupt.mag'
  corrupt.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8)))
  truncated = tmp_path / 'truncated.mag'
  truncated.write_bytes(real[:len(real) // 2])
  other = generator_pb2.GeneratorBundle.FromString(real)
  other.generator_details.id = 'performance_rnn'
  unsupported = tmp_path / 'performance_rnn.mag'
  unsupported.write_bytes(other.SerializeToString())
  cases = [(corrupt, r'corrupt or truncated'), (truncated, r'corrupt or truncated'),
           (unsupported, r"is a 'performance_rnn' bundle; music-rnn imports attention_rnn, "
                         r'basic_rnn, drum_kit, lookback_rnn bundles'),
           (tmp_path / 'missing.mag', r'missing\.mag does not exist')]
  for bundle, message in cases:
    output = tmp_path / f'out_{bundle.stem}'
    code, _, err = _run_cli(['import-magenta', '--bundle', str(bundle), '--output',
                             str(output)], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    assert not output.exists()
  assert _no_leftovers(tmp_path)
  # The bundle names its config: a disagreeing flag is refused, not obeyed.
  code, _, err = _run_cli(['import-magenta', '--bundle', str(work['root'] / 'drum_kit.mag'),
                           '--config', 'basic_rnn', '--output', str(tmp_path / 'x')], capsys)
  assert code == 2 and 'is a drum_kit bundle, not --config basic_rnn' in err


def test_export_failures_write_nothing(imported, tmp_path, capsys, monkeypatch):
  existing = tmp_path / 'existing.mag'
  existing.write_bytes(b'keep')
  code, _, err = _run_cli(['export-magenta', '--model-dir', imported['basic_rnn'],
                           '--output', str(existing)], capsys)
  assert code == 2 and 'already exists' in err and existing.read_bytes() == b'keep'

  monkeypatch.setenv(magenta_interop.ORACLE_ENV, str(tmp_path / 'nowhere'))
  output = tmp_path / 'out.mag'
  code, _, err = _run_cli(['export-magenta', '--model-dir', imported['basic_rnn'],
                           '--output', str(output)], capsys)
  assert code == 2 and 'needs magenta (magenta==2.1.4' in err

  # A Magenta that fails while the bundle is being written: no half-written output.
  broken = tmp_path / 'broken'
  for package in ('magenta', 'tf_slim'):
    (broken / package).mkdir(parents=True)
    (broken / package / '__init__.py').write_text('raise ImportError("broken install")\n')
  monkeypatch.setenv(magenta_interop.ORACLE_ENV, str(broken))
  code, _, err = _run_cli(['export-magenta', '--model-dir', imported['basic_rnn'],
                           '--output', str(output)], capsys)
  assert code == 1 and 'Magenta worker failed' in err
  assert not output.exists() and _no_leftovers(tmp_path)


def test_warm_start_from_a_bundle(work, tmp_path):
  bundle = str(work['root'] / 'drum_kit.mag')
  config = configs.get_config('drum_kit')
  hparams = config.hparams.replace(**configs.parse_hparams(HPARAMS['drum_kit']))
  expected = magenta_interop.build_keras_model(magenta_interop.load_bundle(bundle))
  # As TFX passes an imported model: <artifact URI>/Format-Serving.
  for base in (bundle, os.path.join(bundle, 'Format-Serving')):
    model = model_lib.build_model(config, hparams)
    assert training.warm_start(model, config, hparams, base) == bundle
    for ours, theirs in zip(model.trainable_variables, expected.trainable_variables):
      np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
  with pytest.raises(ValueError, match=r"fits --hparams 'rnn_layer_sizes=\[16,8\],"
                                       r"attn_length=4'"):
    training.warm_start(model_lib.build_model(config, config.hparams.replace(
        rnn_layer_sizes=[8])), config, config.hparams.replace(rnn_layer_sizes=[8]), bundle)
  corrupt = tmp_path / 'corrupt.mag'
  corrupt.write_bytes(b'\xff' * 100)
  with pytest.raises(ValueError, match='corrupt or truncated'):
    training.find_export(str(corrupt))


def _export_weights(export_dir):
  """{variable path: value} of a music_rnn SavedModel (its variables asset names them)."""
  from music_rnn import export  # pylint: disable=g-import-not-at-top
  loaded = tf.saved_model.load(export_dir)
  with open(os.path.join(export_dir, export.VARIABLES_ASSET)) as f:
    paths = [e['path'] for e in json.load(f)]
  return {path: v.numpy() for path, v in zip(paths, loaded.model_variables)}


def test_pipeline_fine_tunes_from_a_bundle(work, tmp_path):
  """`music-rnn run --warm-start-from drum_kit.mag`: the whole local pipeline, whose
  Trainer starts from the bundle's weights. Adam moves a weight by about the learning rate
  per step, so at 1e-6 two steps keep the export within 2e-5 of the bundle (measured 2e-6);
  a fresh initialisation is 0.05 to 0.8 away."""
  bundle = str(work['root'] / 'drum_kit.mag')
  data = conftest.write_slice_with_eval(conftest.bundled('drums'),
                                        str(tmp_path / 'data' / 'drums.tfrecord'), 4)
  learning_rate, train_steps = 1e-6, 2
  summary = local_runner.run(
      model_config='drum_kit', data=data, warm_start_from=bundle,
      hparams={**configs.parse_hparams(HPARAMS['drum_kit']), 'learning_rate': learning_rate},
      train_steps=train_steps, eval_steps=1, xla_generation=False,
      output_root=str(tmp_path / 'out'), serving_dir=str(tmp_path / 'serving'),
      blessing=conftest.smoke_blessing())
  assert summary.metrics['warm_start_from'] == bundle
  assert summary.metrics['train_steps'] == train_steps
  assert summary.evaluation['blessed'] and summary.pushed_model

  expected = magenta_interop.build_keras_model(magenta_interop.load_bundle(bundle))
  trained = _export_weights(training.find_export(summary.trainer_model))
  moved = 0.0
  for variable in expected.trainable_variables:
    difference = np.abs(trained[variable.path] - variable.numpy()).max()
    assert difference < 10 * train_steps * learning_rate, variable.path
    moved = max(moved, difference)
  assert moved > 0  # and it trained: Adam moved some weights from the bundle's


def test_weight_mapping_round_trips():
  """from_keras inverts to_keras (gate order and forget bias), on random weights."""
  config = configs.get_config('attention_rnn')
  hparams = config.hparams.replace(rnn_layer_sizes=[6, 4], attn_length=2)
  rng = np.random.default_rng(0)
  weights = {name: rng.normal(size=shape).astype(np.float32)
             for name, shape in magenta_weights.expected_shapes(config, hparams).items()}
  model = model_lib.build_model(config, hparams)
  magenta_weights.to_keras(weights, model)
  back = magenta_weights.from_keras(model)
  assert sorted(back) == sorted(weights)
  for name, value in weights.items():
    np.testing.assert_allclose(back[name], value, atol=1e-6)
