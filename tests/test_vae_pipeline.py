"""MusicVAE through the pipeline: a real LocalDagRunner run per config on the bundled
data's first pieces, with a tiny model (enc [16], dec [16], z 8) and a few steps.

Transform's labels are compared with note-seq's own encodings of ExampleGen's raw
events; the Evaluator blesses (smoke thresholds) and the Pusher pushes a SavedModel with
the VAE signatures; the same model judged against the unigram table is not blessed;
run_fn resumes a VAE from its checkpoint on the pipeline's Transform output.
"""

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from music_rnn import configs
from music_rnn import evaluation
from music_rnn import features
from music_rnn import training
from pipeline import configs as pipeline_configs
from pipeline import local_runner
from pipeline import mlmd_results
from tests.conftest import SMOKE_BLESSING, bundled, write_slice_with_eval

DRUMS = 'cat-drums_2bar_small'
MELODY = 'cat-mel_2bar_small'
TINY = {'enc_rnn_size': [16], 'dec_rnn_size': [16], 'z_size': 8, 'batch_size': 8}
NUM_STEPS = 32


def _note_seq_labels(config_name, events):
  """note-seq's class of every step: MultiDrumOneHotEncoding / MelodyOneHotEncoding over
  Magenta's pitch range (what MusicVAE's converters use)."""
  import note_seq  # pylint: disable=g-import-not-at-top
  config = configs.get_config(config_name)
  if config.kind == configs.DRUMS:
    encoding = note_seq.MultiDrumOneHotEncoding()
    return [encoding.encode_event(frozenset(step)) for step in events]
  encoding = note_seq.MelodyOneHotEncoding(config.converter.min_pitch,
                                           config.converter.max_pitch + 1)
  return [encoding.encode_event(e) for e in events]


# --- The pipeline, end to end (LocalDagRunner). --------------------------------------

COMPONENTS = ('NoteSequenceExampleGen', 'StatisticsGen', 'SchemaGen', 'ExampleValidator',
              'Transform', 'Trainer', 'Evaluator', 'Pusher')
SIGNATURES = ('serving_default', 'evaluate', 'model_config', 'encode', 'decode', 'sample',
              'interpolate')
# NoteSequences of the bundled data per config (one of them in eval).
PIECES = {DRUMS: ('drums', 8), MELODY: ('melody', 30)}


def _run(tmp, config_name, blessing=SMOKE_BLESSING, train_steps=4):
  kind, pieces = PIECES[config_name]
  data = str(tmp / 'data' / f'{kind}.tfrecord')
  if not os.path.exists(data):
    write_slice_with_eval(bundled(kind), data, pieces)
  return local_runner.run(
      model_config=config_name, data=data, train_steps=train_steps, eval_steps=2,
      hparams=TINY, seed=7, output_root=str(tmp / 'out'), serving_dir=str(tmp / 'serving'),
      blessing=pipeline_configs.BLESSING.replace(blessing))


@pytest.fixture(scope='module')
def pipeline_runs(tmp_path_factory):
  """config name -> (its dir, its first pipeline run), run once per module."""
  runs = {}

  def run(config_name):
    if config_name not in runs:
      tmp = tmp_path_factory.mktemp(f'pipeline-{config_name}')
      runs[config_name] = tmp, _run(tmp, config_name)
    return runs[config_name]
  return run


def _examples(uri, split):
  files = tf.io.gfile.glob(os.path.join(uri, f'Split-{split}', '*.gz'))
  return [tf.train.Example.FromString(r).features.feature for r in
          tf.data.TFRecordDataset(files, compression_type='GZIP').as_numpy_iterator()]


def _raw_events(feature, kind):
  """A raw tf.Example's events: per-step drum pitch sets, or melody events."""
  if kind == configs.MELODY:
    return list(feature[features.MELODY_EVENTS].int64_list.value)
  pitches = iter(feature[features.DRUM_PITCHES].int64_list.value)
  return [[next(pitches) for _ in range(n)]
          for n in feature[features.DRUM_PITCH_COUNTS].int64_list.value]


def _check_transform_labels(results, config_name):
  """Transform's labels of each split are note-seq's classes of ExampleGen's raw events
  (as multisets: Beam keeps no order), and each unigram_xent is -log of the train
  split's add-one smoothed label frequencies summed over the slice."""
  config = configs.get_config(config_name)
  raw_uri = results['NoteSequenceExampleGen'].outputs['examples'][0].uri
  out_uri = results['Transform'].outputs['transformed_examples'][0].uri
  expected = {split: sorted(tuple(_note_seq_labels(config_name, _raw_events(f, config.kind)))
                            for f in _examples(raw_uri, split)) for split in ('train', 'eval')}
  counts = np.bincount(np.ravel(expected['train']), minlength=config.num_classes) + 1.0
  log_p = np.log(counts) - np.log(counts.sum())
  for split in ('train', 'eval'):
    rows = _examples(out_uri, split)
    labels = [tuple(f[features.LABELS].int64_list.value) for f in rows]
    assert expected[split] and sorted(labels) == expected[split], split
    assert all(f[features.LENGTH].int64_list.value == [NUM_STEPS] for f in rows)
    unigram = [f[features.UNIGRAM_XENT].float_list.value[0] for f in rows]
    np.testing.assert_allclose(unigram, [-log_p[list(l)].sum() for l in labels], rtol=1e-5)


@pytest.mark.parametrize('config_name', [DRUMS, MELODY])
def test_pipeline_trains_evaluates_and_pushes_a_vae(pipeline_runs, config_name):
  tmp, summary = pipeline_runs(config_name)
  config = configs.get_config(config_name)
  assert set(summary.component_states) == set(COMPONENTS), summary.component_states
  assert all(s == 'COMPLETE' for s in summary.component_states.values()), summary
  _check_transform_labels(
      mlmd_results.latest_results(summary.metadata_path, summary.pipeline_name), config_name)

  # Trainer: the VAE's metrics beside the unigram baseline, with the hparams used.
  m = summary.metrics
  assert m['config_name'] == config_name and m['hparams']['z_size'] == 8
  assert set(m['eval']) == set(training.VAE_METRIC_NAMES) | {training.UNIGRAM_LOSS}

  # Evaluator: TFMA adds the evaluate signature's sums into the VAE's metrics.
  verdict = summary.evaluation
  assert verdict['blessed'] and verdict['failed'] == [], verdict
  scores = verdict['metrics']
  assert set(scores) == set(evaluation.VAE_METRICS), scores
  recon = scores['reconstruction_loss']
  assert 0 < recon < math.log(2 * config.num_classes)
  assert scores['perplexity'] == pytest.approx(math.exp(recon), rel=1e-6)
  assert 0 < scores['unigram_loss'] < math.log(config.num_classes)
  assert scores['loss_vs_unigram'] == pytest.approx(recon / scores['unigram_loss'], rel=1e-6)
  for name in ('reconstruction_accuracy', 'sampled_accuracy', 'event_accuracy'):
    assert 0 <= scores[name] <= 1, name
  assert scores['kl_bits'] >= 0
  # Every slice has 32 steps: ELBO per sequence = 32 x the loss per step + KL in nats.
  assert scores['elbo'] == pytest.approx(NUM_STEPS * recon + scores['kl_bits'] * math.log(2),
                                         rel=1e-4)
  assert 'sampled' in local_runner.vae_metrics(summary)
  assert local_runner.loss_vs_unigram(summary).startswith('reconstruction ')

  # Pusher: the blessed SavedModel, with every VAE signature; it samples in range.
  assert os.path.dirname(summary.pushed_model) == str(tmp / 'serving' / config_name)
  loaded = tf.saved_model.load(summary.pushed_model)
  assert set(SIGNATURES) <= set(loaded.signatures)
  events = loaded.signatures['sample'](n=tf.constant(3), temperature=tf.constant(1.0),
                                       seed=tf.constant(5, tf.int64))['events'].numpy()
  assert events.shape == (3, NUM_STEPS)
  if config.kind == configs.DRUMS:
    assert ((events >= 0) & (events < 512)).all()
  else:
    assert (((events >= -2) & (events < 0)) | ((events >= 21) & (events <= 108))).all()


def test_a_vae_no_better_than_unigram_is_not_blessed(pipeline_runs):
  """The same trained model (Trainer cached), judged with the unigram check on: a few
  steps leave its reconstruction far above the label frequencies' loss, so the Evaluator
  does not bless it, because of loss_vs_unigram alone, and nothing is pushed."""
  tmp, first = pipeline_runs(DRUMS)
  pushed = os.listdir(tmp / 'serving' / DRUMS)
  strict = _run(tmp, DRUMS, blessing='max_perplexity_fraction=2,loss_tolerance=none,'
                'unigram_margin=0.1,min_vae_event_accuracy=none')
  assert strict.component_states['Trainer'] == 'CACHED'
  assert strict.component_states['Evaluator'] == 'COMPLETE'
  verdict = strict.evaluation
  assert not verdict['blessed'] and verdict['failed'] == ['loss_vs_unigram'], verdict
  assert verdict['metrics']['loss_vs_unigram'] > 0.9
  assert verdict['metrics'] == pytest.approx(first.evaluation['metrics'])
  assert strict.pushed_model is None
  assert os.listdir(tmp / 'serving' / DRUMS) == pushed


def test_a_vae_that_reconstructs_no_events_is_not_blessed(pipeline_runs):
  """The same trained model judged on its hits alone: a reconstruction of the drum
  hits below min_vae_event_accuracy fails blessing, whatever its loss."""
  tmp, first = pipeline_runs(DRUMS)
  event_accuracy = first.evaluation['metrics']['event_accuracy']
  assert event_accuracy < 0.99
  strict = _run(tmp, DRUMS, blessing='max_perplexity_fraction=2,loss_tolerance=none,'
                'unigram_margin=none,min_vae_event_accuracy=0.99')
  verdict = strict.evaluation
  assert not verdict['blessed'] and verdict['failed'] == ['event_accuracy'], verdict
  assert strict.pushed_model is None



# --- run_fn: the RNNs' machinery (checkpoints, resume, best weights) on a VAE. ---------


class _Crash(Exception):
  """Stands for a killed Trainer: raised right after a checkpoint is written."""


def _fn_args(results, out, **custom):
  """The drums pipeline's Trainer inputs (its Transform output), a new execution's dirs."""
  from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top
  examples = results['Transform'].outputs['transformed_examples'][0].uri
  graph = results['Transform'].outputs['transform_graph'][0].uri
  return tfx.components.FnArgs(
      working_dir=str(out / 'working'), train_steps=6, eval_steps=2,
      train_files=[os.path.join(examples, 'Split-train', '*.gz')],
      eval_files=[os.path.join(examples, 'Split-eval', '*.gz')],
      transform_output=graph, transform_graph_path=graph,
      serving_model_dir=str(out / 'serving_model_dir'), model_run_dir=str(out / 'model_run'),
      hyperparameters=None, base_model=None,
      custom_config={'config_name': DRUMS, 'hparams': TINY, 'seed': 3, 'num_evals': 3,
                     **custom})


def test_run_fn_resumes_a_vae_from_its_checkpoint(pipeline_runs, tmp_path, monkeypatch):
  """A Trainer that dies after its step-4 checkpoint is resumed by the next execution
  (new dirs, same settings) to the configured steps, its curve whole, the best
  evaluated weights kept for the export (the export itself: the pipeline test)."""
  from music_rnn import checkpointing  # pylint: disable=g-import-not-at-top
  _, summary = pipeline_runs(DRUMS)
  results = mlmd_results.latest_results(summary.metadata_path, summary.pipeline_name)
  checkpoints = str(tmp_path / 'checkpoints')
  save = checkpointing.Checkpointer.save

  def save_then_crash(self, history):
    path = save(self, history)
    if self.step >= 4:
      raise _Crash(self.step)
    return path

  monkeypatch.setattr(training, 'export_model', lambda *args: None)
  monkeypatch.setattr(checkpointing.Checkpointer, 'save', save_then_crash)
  with pytest.raises(_Crash):
    training.run_fn(_fn_args(results, tmp_path / 'first', checkpoint_dir=checkpoints,
                             checkpoint_every=2))
  monkeypatch.setattr(checkpointing.Checkpointer, 'save', save)
  second = _fn_args(results, tmp_path / 'second', checkpoint_dir=checkpoints,
                    checkpoint_every=2)
  training.run_fn(second)
  with open(os.path.join(second.model_run_dir, training.METRICS_FILE)) as f:
    report = json.load(f)
  assert report['resumed_from_step'] == 4
  assert report['train_steps'] == report['configured_train_steps'] == 6
  assert report['steps_this_run'] == 2
  assert [r['step'] for r in report['history']] == [2, 4, 6]
  losses = {r['step']: r['val_loss'] for r in report['history']}
  best = min(losses, key=losses.get)
  assert report['exported'] == {'weights': 'best', 'step': best,
                                'eval_loss': pytest.approx(losses[best])}
  for split in ('train', 'eval'):
    m = report[split]
    assert set(m) == set(training.VAE_METRIC_NAMES) | {training.UNIGRAM_LOSS}, m
    assert 0 < m['reconstruction_loss'] < 2 * math.log(512)
    assert 0 < m[training.UNIGRAM_LOSS] < math.log(512)


def test_vae_batches_see_every_slice_once_per_pass(pipeline_runs, tmp_path):
  """Training batches: [B, 32] labels, each pass a seeded shuffle holding every training
  slice exactly once; eval batches: every slice, in file order."""
  import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top
  _, summary = pipeline_runs(DRUMS)
  results = mlmd_results.latest_results(summary.metadata_path, summary.pipeline_name)
  args = _fn_args(results, tmp_path)
  tft_output = tft.TFTransformOutput(args.transform_output)
  config = configs.get_config(DRUMS)
  rows = lambda split: [tuple(f[features.LABELS].int64_list.value) for f in _examples(
      results['Transform'].outputs['transformed_examples'][0].uri, split)]
  train = rows('train')
  per_pass = training.batches_per_pass(len(train), 4)
  assert training.count_sequences(args.train_files, tft_output, config) == len(train)

  def passes(seed):
    batches = training.make_dataset(args.train_files, tft_output, config, 4, training=True,
                                    seed=seed).take(2 * per_pass)
    out = [[tuple(row) for row in labels.numpy()] for _, labels in batches]
    assert all(len(b) == 4 for b in out[:per_pass - 1])
    return sum(out[:per_pass], []), sum(out[per_pass:], [])

  first, second = passes(seed=1)
  assert sorted(first) == sorted(second) == sorted(train)
  assert first != second  # reshuffled every pass
  assert passes(seed=1) == (first, second)  # seeded
  eval_ds = training.make_dataset(args.eval_files, tft_output, config, 4, training=False)
  in_order = [tuple(row) for x, labels in eval_ds for row in labels.numpy()]
  assert in_order == rows('eval')
  x, _ = next(iter(eval_ds))
  assert set(x) == {'labels', 'lengths'} and x['labels'].shape[1] == NUM_STEPS
