"""End to end: a real LocalDagRunner run on a small slice of the bundled data.

Checks ML-Metadata executions and artifacts, the schema, the pushed SavedModel loaded in
a fresh process that never imports the project, and TFX's cache on a re-run.
"""

import json
import math
import os
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from components.note_sequence_example_gen import executor as example_gen_executor
from music_rnn import configs as model_configs
from music_rnn import evaluation
from music_rnn import features
from music_rnn import model as model_lib
from pipeline import configs as pipeline_configs
from pipeline import local_runner
from pipeline import mlmd_results
from tests.conftest import bundled, run_fresh_python, write_slice_with_eval

COMPONENTS = ('NoteSequenceExampleGen', 'StatisticsGen', 'SchemaGen', 'ExampleValidator',
              'Transform', 'Trainer', 'latest_blessed_model_resolver', 'Evaluator', 'Pusher')

# A few training steps leave perplexity near a uniform guess (num_classes): bless below
# twice that, without asking to beat the unigram guess; a later model may be at most
# 0.01 nats/step worse than the blessed one.
BLESSING = 'max_perplexity_fraction=2,loss_tolerance=0.01,unigram_margin=none'

SMALL = {
    'drum_kit': dict(slice=('drums', 10), hparams={'rnn_layer_sizes': [32, 32],
                                                     'attn_length': 8, 'batch_size': 4}),
    'attention_rnn': dict(slice=('melody', 60), hparams={'rnn_layer_sizes': [32, 32],
                                                           'attn_length': 8,
                                                           'batch_size': 8}),
}


def _run(tmp_path, config_name, blessing=BLESSING, train_steps=3, **hparams):
  kind, n = SMALL[config_name]['slice']
  data = str(tmp_path / 'data' / f'{kind}.tfrecord')
  if not os.path.exists(data):
    write_slice_with_eval(bundled(kind), data, n)
  return local_runner.run(
      model_config=config_name, data=data, train_steps=train_steps, eval_steps=2,
      hparams={**SMALL[config_name]['hparams'], **hparams}, seed=7,
      output_root=str(tmp_path / 'out'), serving_dir=str(tmp_path / 'serving'),
      blessing=pipeline_configs.BLESSING.replace(blessing))


def _serialized_eval_examples(results, n=3):
  examples = results['NoteSequenceExampleGen'].outputs['examples'][0]
  files = tf.io.gfile.glob(os.path.join(examples.uri, 'Split-eval', '*.gz')) + \
      tf.io.gfile.glob(os.path.join(examples.uri, 'Split-train', '*.gz'))
  return [r for r in tf.data.TFRecordDataset(files, compression_type='GZIP')
          .take(n).as_numpy_iterator()]


def _check_fresh_process_serving(export_dir, serialized, config):
  """Loads the export with TensorFlow alone and checks serving_default's probabilities."""
  code = textwrap.dedent(f'''
      import json, sys
      import numpy as np
      import tensorflow as tf
      loaded = tf.saved_model.load({export_dir!r})
      examples = tf.constant({serialized!r})
      out = loaded.signatures['serving_default'](examples=examples)
      probs = out['probabilities'].numpy()
      lengths = out['lengths'].numpy()
      cfg = json.loads(loaded.signatures['model_config']()['config_json'].numpy().decode())
      project = [m for m in sys.modules
                 if m.split('.')[0] in ('music_rnn', 'components', 'pipeline', 'module_file')]
      print(json.dumps(dict(shape=list(probs.shape), lengths=lengths.tolist(),
                            all_sums=[float(np.abs(probs[i, :l].sum(-1) - 1).max())
                                      for i, l in enumerate(lengths)],
                            finite=bool(np.isfinite(probs).all()),
                            config=cfg, project_modules=project)))
  ''')
  proc = run_fresh_python(code)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out['project_modules'] == []
  assert out['shape'][0] == len(serialized)
  assert out['shape'][2] == config.num_classes
  assert max(out['lengths']) == out['shape'][1]
  assert out['finite']
  assert max(out['all_sums']) < 1e-4
  return out


def _validate(eval_config, values):
  """TFMA's own threshold check on {metric name: candidate value}; the failed names."""
  from tensorflow_model_analysis.evaluators import metrics_validator
  from tensorflow_model_analysis.metrics import metric_specs
  from tensorflow_model_analysis.metrics import metric_types
  keys = {k.name: k for k in metric_specs.metric_thresholds_from_metrics_specs(
      eval_config.metrics_specs, eval_config=eval_config)}
  metrics = {keys.get(name, metric_types.MetricKey(name=name)): value
             for name, value in values.items()}
  result = metrics_validator.validate_metrics(((), metrics), eval_config)
  return sorted({f.metric_key.name for s in result.metric_validations_per_slice
                 for f in s.failures})


def test_unigram_metrics_and_threshold():
  from tensorflow_model_analysis.metrics import metric_types
  config = model_configs.get_config('drum_kit')
  thresholds = pipeline_configs.BLESSING.replace('loss_tolerance=none')
  assert thresholds.unigram_margin == 0.1 and thresholds.max_loss_vs_unigram == 0.9
  eval_config = evaluation.eval_config(config, thresholds)
  names = [m.class_name for m in eval_config.metrics_specs[0].metrics]
  assert {'UnigramLoss', 'LossVsUnigram'} <= set(names)

  # Sums over per-example outputs, as the Evaluator feeds them (two examples).
  rows = [dict(xent=8.0, steps=4.0, unigram_xent=10.0), dict(xent=1.0, steps=2.0,
                                                             unigram_xent=2.0)]
  key = metric_types.MetricKey(name='x')
  def combine(metric_name, rows):
    combiner = evaluation._SumsCombiner(key, metric_name, '', False)  # pylint: disable=protected-access
    acc = combiner.create_accumulator()
    for row in rows:
      preds = {n: np.array([row.get(n, 0.0)]) for n in model_lib.STAT_NAMES}
      if 'unigram_xent' in row:
        preds['unigram_xent'] = np.array([row['unigram_xent']])
      acc = combiner.add_input(acc, metric_types.StandardMetricInputs(predictions=preds))
    return combiner.extract_output(acc)[key]
  assert combine('unigram_loss', rows) == pytest.approx(12.0 / 6.0)
  assert combine('loss', rows) == pytest.approx(9.0 / 6.0)
  assert combine('loss_vs_unigram', rows) == pytest.approx(9.0 / 12.0)
  # An export without unigram_xent (older baseline): NaN, which fails the bound.
  assert math.isnan(combine('loss_vs_unigram', [dict(xent=1.0, steps=1.0)]))

  ok = dict(loss=2.0, perplexity=math.exp(2.0), unigram_loss=2.5, loss_vs_unigram=0.8)
  assert _validate(eval_config, ok) == []
  assert _validate(eval_config, {**ok, 'loss_vs_unigram': 0.95}) == ['loss_vs_unigram']
  assert _validate(eval_config, {**ok, 'loss_vs_unigram': float('nan')}) == [
      'loss_vs_unigram']
  off = evaluation.eval_config(config, thresholds.replace('unigram_margin=none'))
  assert _validate(off, {**ok, 'loss_vs_unigram': 1.5}) == []
  strict = evaluation.eval_config(config, thresholds.replace('unigram_margin=0.3'))
  assert _validate(strict, ok) == ['loss_vs_unigram']


@pytest.mark.parametrize('config_name', ['drum_kit', 'attention_rnn'])
def test_local_pipeline_end_to_end(tmp_path, config_name):
  config = model_configs.get_config(config_name)
  summary = _run(tmp_path, config_name)

  # Every component ran, in ML-Metadata.
  assert set(summary.component_states) == set(COMPONENTS)
  assert all(s == 'COMPLETE' for s in summary.component_states.values()), summary
  results = mlmd_results.latest_results(summary.metadata_path, summary.pipeline_name)

  # Examples: train and eval splits, by source piece, with the extraction counts recorded.
  examples = results['NoteSequenceExampleGen'].outputs['examples'][0]
  assert json.loads(examples.properties['split_names'].string_value) == ['train', 'eval']
  stats = example_gen_executor.read_stats(examples.uri)
  kept = stats.get('drum_tracks_extracted' if config.kind == 'drums' else 'melodies_extracted')
  assert kept and kept > 0, stats
  assert summary.extraction_stats == stats
  sources = {}
  for split in ('train', 'eval'):
    files = tf.io.gfile.glob(os.path.join(examples.uri, f'Split-{split}', '*.gz'))
    for r in tf.data.TFRecordDataset(files, compression_type='GZIP').as_numpy_iterator():
      ex = tf.train.Example.FromString(r)
      sources.setdefault(ex.features.feature[features.SOURCE_ID].bytes_list.value[0],
                         set()).add(split)
  assert len(sources) >= 2
  assert {'train', 'eval'} == set().union(*sources.values())
  assert all(len(splits) == 1 for splits in sources.values()), 'a piece straddles splits'

  # Schema: the raw event features of this config kind.
  schema_artifact = results['SchemaGen'].outputs['schema'][0]
  from tfx.utils import io_utils as tfx_io_utils
  from tensorflow_metadata.proto.v0 import schema_pb2
  schema = tfx_io_utils.SchemaReader().read(os.path.join(schema_artifact.uri, 'schema.pbtxt'))
  assert isinstance(schema, schema_pb2.Schema)
  names = {f.name for f in schema.feature}
  event_features = ({features.DRUM_PITCHES, features.DRUM_PITCH_COUNTS}
                    if config.kind == 'drums' else {features.MELODY_EVENTS})
  assert event_features | {features.NUM_STEPS, features.STEPS_PER_BAR} <= names
  assert features.SOURCE_ID not in names  # an id, not data: no closed domain of piece names
  assert all(f.lifecycle_stage == 0 for f in schema.feature)  # nothing deprecated

  # ExampleValidator: the eval split conforms to the schema inferred from train.
  from tensorflow_metadata.proto.v0 import anomalies_pb2
  anomalies_uri = results['ExampleValidator'].outputs['anomalies'][0].uri
  for split in ('train', 'eval'):
    anomalies = anomalies_pb2.Anomalies()
    with tf.io.gfile.GFile(os.path.join(anomalies_uri, f'Split-{split}', 'SchemaDiff.pb'),
                           'rb') as f:
      anomalies.ParseFromString(f.read())
    assert not anomalies.anomaly_info, (split, dict(anomalies.anomaly_info))

  # Trainer: metrics recorded for the eval split, with the hparams used.
  for key in ('loss', 'perplexity', 'accuracy', 'event_accuracy', 'no_event_accuracy'):
    assert key in summary.metrics['train'], summary.metrics
  assert summary.metrics['hparams']['rnn_layer_sizes'] == [32, 32]

  # Evaluator: TFMA's per-step metrics on the eval split, the Trainer's definitions;
  # the first model of the pipeline has no blessed baseline and passes the thresholds.
  verdict = summary.evaluation
  assert verdict['blessed'] and not verdict['baseline'], verdict
  scores = verdict['metrics']
  assert set(scores) == {'loss', 'perplexity', 'accuracy', 'event_accuracy',
                         'no_event_accuracy', 'unigram_loss', 'loss_vs_unigram'}, scores
  assert 0 < scores['loss'] < math.log(2 * config.num_classes)
  assert scores['perplexity'] == pytest.approx(math.exp(scores['loss']), rel=1e-6)
  assert 0 <= scores['accuracy'] <= 1
  # The unigram guess (train label frequencies) beats a uniform one on held-out pieces.
  assert 0 < scores['unigram_loss'] < math.log(config.num_classes)
  assert scores['loss_vs_unigram'] == pytest.approx(scores['loss'] / scores['unigram_loss'],
                                                    rel=1e-6)
  assert verdict['failed'] == []
  assert summary.split['eval_pieces'] >= 1 and summary.split['train_pieces'] >= 1
  blessing = results['Evaluator'].outputs['blessing'][0]
  assert os.path.exists(os.path.join(blessing.uri, 'BLESSED'))

  # Pusher: a SavedModel under serving/<config>/<version>/ loads in a fresh process.
  assert summary.pushed_model and os.path.isdir(summary.pushed_model)
  assert os.path.dirname(summary.pushed_model) == str(tmp_path / 'serving' / config_name)
  out = _check_fresh_process_serving(summary.pushed_model,
                                     _serialized_eval_examples(results), config)
  assert out['config']['name'] == config_name
  assert out['config']['hparams']['rnn_layer_sizes'] == [32, 32]

  if config_name == 'drum_kit':
    # Nothing changed: a re-run is served from TFX's cache up to the Trainer. The resolver
    # now finds the first model as the blessed baseline, so the Evaluator compares the
    # model with itself (blessed), and the Pusher recognises it as already pushed.
    again = _run(tmp_path, config_name)
    upstream = set(COMPONENTS) - {'latest_blessed_model_resolver', 'Evaluator', 'Pusher'}
    assert all(again.component_states[c] == 'CACHED' for c in upstream), again
    assert again.evaluation['baseline'] and again.evaluation['blessed'], again.evaluation
    assert again.pushed_model == summary.pushed_model
    assert os.listdir(tmp_path / 'serving' / config_name) == [
        os.path.basename(summary.pushed_model)]

    # Stricter thresholds: the model fails the perplexity bound, is not blessed, and
    # nothing is pushed.
    strict = _run(tmp_path, config_name,
                  blessing='max_perplexity_fraction=0.01,loss_tolerance=0.01,'
                  'unigram_margin=none')
    assert strict.component_states['Trainer'] == 'CACHED'
    assert strict.component_states['Evaluator'] == 'COMPLETE'
    assert strict.evaluation['baseline'] and not strict.evaluation['blessed'], strict.evaluation
    assert strict.evaluation['failed'] == ['perplexity']
    assert strict.evaluation['metrics'] == pytest.approx(summary.evaluation['metrics'])
    assert strict.pushed_model is None
    assert os.listdir(tmp_path / 'serving' / config_name) == [
        os.path.basename(summary.pushed_model)]


def test_blessing_needs_beating_unigram_and_the_blessed_baseline(tmp_path):
  """Three real runs on one small slice, each judged by the real Evaluator.

  1. A model trained with a usable learning rate is blessed and pushed (the unigram check
     off: a few steps need not beat it).
  2. The same settings but a learning rate too small to move the weights: a worse model
     than the blessed baseline by far more than loss_tolerance, so NOT blessed (the loss
     change threshold fails) and nothing is pushed.
  3. That same model (Trainer cached) with the unigram check on and a lax tolerance: an
     untrained model is no better than the train split's label frequencies, so it is NOT
     blessed because of loss_vs_unigram alone.
  """
  lax = 'max_perplexity_fraction=2'
  first = _run(tmp_path, 'drum_kit', blessing=f'{lax},loss_tolerance=0.01,unigram_margin=none',
               train_steps=20, learning_rate=0.01)
  assert first.evaluation['blessed'] and not first.evaluation['baseline'], first.evaluation
  assert first.pushed_model
  pushed = os.listdir(tmp_path / 'serving' / 'drum_kit')

  worse = _run(tmp_path, 'drum_kit', blessing=f'{lax},loss_tolerance=0.01,unigram_margin=none',
               train_steps=20, learning_rate=1e-7)
  assert worse.component_states['Trainer'] == 'COMPLETE'
  verdict = worse.evaluation
  assert verdict['baseline'] and not verdict['blessed'], verdict
  assert verdict['failed'] == ['loss'], verdict
  assert verdict['metrics']['loss'] > first.evaluation['metrics']['loss'] + 0.01
  # Same eval pieces, same Transform graph: the same unigram baseline for both models.
  assert verdict['metrics']['unigram_loss'] == pytest.approx(
      first.evaluation['metrics']['unigram_loss'], rel=1e-6)
  assert worse.pushed_model is None
  assert os.listdir(tmp_path / 'serving' / 'drum_kit') == pushed

  untrained = _run(tmp_path, 'drum_kit', blessing=f'{lax},loss_tolerance=100,unigram_margin=0.1',
                   train_steps=20, learning_rate=1e-7)
  assert untrained.component_states['Trainer'] == 'CACHED'
  assert untrained.component_states['Evaluator'] == 'COMPLETE'
  verdict = untrained.evaluation
  assert verdict['baseline'] and not verdict['blessed'], verdict
  assert verdict['failed'] == ['loss_vs_unigram'], verdict
  assert verdict['metrics']['loss_vs_unigram'] > 0.9
  assert verdict['metrics']['perplexity'] < 2 * 512  # the other checks pass
  assert untrained.pushed_model is None
  assert os.listdir(tmp_path / 'serving' / 'drum_kit') == pushed
  line = local_runner.loss_vs_unigram(untrained)
  assert 'vs unigram' in line and 'blessing needs <= 0.900' in line
