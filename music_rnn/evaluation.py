"""TFMA metrics and blessing thresholds for the Evaluator.

The exported `evaluate` signature returns, per raw eval example, sums over its real
steps (model.STAT_NAMES) computed on the labels the embedded Transform graph derives
from the events. The metrics here add those sums over the eval split and take the
same ratios as the Trainer's Keras metrics (model.metric_from_sums), so `loss`,
`perplexity`, `accuracy`, `event_accuracy` and `no_event_accuracy` mean one thing
everywhere: per step, not per example. The signature also returns 'unigram_xent',
the example's loss under the train split's label frequencies (from the Transform
graph): `unigram_loss` is its per-step mean and `loss_vs_unigram` = loss / unigram_loss,
how the model compares with a guess that ignores all context.

MusicVAEs (vae_export's `evaluate`; the sums are agreed in the module's VAE_SUM_NAMES):
the same sums of the teacher-forced reconstruction with z = the encoder's mean, plus
'sampled_correct' (a greedy free-running decode from the mean against the input) and
'kl' (nats per example). Their metrics: `reconstruction_loss` (nats/step),
`reconstruction_accuracy`, `event_accuracy`, `sampled_accuracy`, `kl_bits` (bits per
sequence), `elbo` (reconstruction + KL, nats per sequence), and `perplexity`,
`unigram_loss`, `loss_vs_unigram` on the reconstruction.

Blessing (thresholds in music_rnn/blessing.py): the eval loss (VAE: reconstruction loss)
must be finite; the candidate must beat a uniform guess by a margin (perplexity below
`max_perplexity_fraction` x num_classes) and the unigram guess by `unigram_margin`
(loss_vs_unigram <= 1 - margin), and, when a blessed model of the same pipeline
exists, its eval loss must not exceed that model's by more than `loss_tolerance`
nats per step.
"""

import math
import os
import sys
from typing import Any, Dict, Iterable, List, Optional

import apache_beam as beam
import tensorflow as tf
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import metric_types

from music_rnn import configs
from music_rnn.blessing import BlessingThresholds
from music_rnn import features
from music_rnn import model as model_lib

EVALUATE_SIGNATURE = 'evaluate'  # export.EVALUATE_SIGNATURE (export imports Transform)
CANDIDATE = 'candidate'
BASELINE = 'baseline'
UNIGRAM_LOSS = 'unigram_loss'
LOSS_VS_UNIGRAM = 'loss_vs_unigram'
# What the combiners add up per example: the model's sums and the unigram baseline's;
# a VAE's `evaluate` adds VAE_SUM_NAMES. EXAMPLES is counted by the combiner (rows seen).
VAE_SUM_NAMES = ('sampled_correct', 'kl')
SUM_NAMES = model_lib.STAT_NAMES + VAE_SUM_NAMES + (features.UNIGRAM_XENT,)
EXAMPLES = 'examples'
RECONSTRUCTION_LOSS = 'reconstruction_loss'


def _ratio(numerator: float, denominator: float) -> float:
  return numerator / denominator if denominator > 0 else float('nan')


# VAE metrics: (numerator, denominator, scale) of the sums.
_VAE_RATIOS = {
    RECONSTRUCTION_LOSS: ('xent', 'steps', 1.0),
    'reconstruction_accuracy': ('correct', 'steps', 1.0),
    'sampled_accuracy': ('sampled_correct', 'steps', 1.0),
    'kl_bits': ('kl', EXAMPLES, 1.0 / math.log(2.0)),
}


def metric_value(name: str, sums: Dict[str, float]) -> float:
  """A metric from SUM_NAMES sums; NaN if empty or the export lacks a sum it needs (an
  RNN's KL, an old export's unigram_xent)."""
  if name == UNIGRAM_LOSS:
    return _ratio(sums[features.UNIGRAM_XENT], sums['steps'])
  if name == LOSS_VS_UNIGRAM:
    return _ratio(sums['xent'], sums[features.UNIGRAM_XENT])
  if name in _VAE_RATIOS:
    numerator, denominator, scale = _VAE_RATIOS[name]
    return scale * _ratio(sums[numerator], sums[denominator])
  if name == 'elbo':
    return _ratio(sums['xent'] + sums['kl'], sums[EXAMPLES])
  return model_lib.metric_from_sums(name, sums)


class _SumsCombiner(beam.CombineFn):
  """Adds up one model's per-example SUM_NAMES outputs; emits one metric."""

  def __init__(self, key: metric_types.MetricKey, metric_name: str,
               model_name: str, multi_model: bool):
    self._key = key
    self._metric_name = metric_name
    self._model_name = model_name
    self._multi_model = multi_model

  def create_accumulator(self) -> Dict[str, float]:
    return dict.fromkeys(SUM_NAMES + (EXAMPLES,), 0.0)

  def add_input(self, accumulator: Dict[str, float],
                element: metric_types.StandardMetricInputs) -> Dict[str, float]:
    predictions = element.predictions
    if self._multi_model:
      predictions = predictions[self._model_name]
    for name in SUM_NAMES:
      # A model exported before unigram_xent existed (e.g. an old baseline): NaN.
      value = predictions[name].sum() if name in predictions else float('nan')
      accumulator[name] += float(value)
    accumulator[EXAMPLES] += float(predictions['steps'].size)
    return accumulator

  def merge_accumulators(self, accumulators: Iterable[Dict[str, float]]) -> Dict[str, float]:
    accumulators = iter(accumulators)
    result = next(accumulators)
    for acc in accumulators:
      for name in SUM_NAMES + (EXAMPLES,):
        result[name] += acc[name]
    return result

  def extract_output(self, accumulator: Dict[str, float]):
    return {self._key: metric_value(self._metric_name, accumulator)}


def _step_metric_computations(metric_name: str,
                              eval_config: Optional[tfma.EvalConfig] = None,
                              model_names: Optional[List[str]] = None,
                              aggregation_type: Optional[Any] = None,
                              example_weighted: bool = False,
                              name: Optional[str] = None) -> metric_types.MetricComputations:
  del eval_config
  model_names = list(model_names or [''])
  computations = []
  for model_name in model_names:
    key = metric_types.MetricKey(name=name or metric_name, model_name=model_name,
                                 aggregation_type=aggregation_type,
                                 example_weighted=example_weighted)
    computations.append(metric_types.MetricComputation(
        keys=[key],
        preprocessors=[metric_types.StandardMetricInputsPreprocessor(
            include_filter={'predictions': {}}, include_default_inputs=False)],
        combiner=_SumsCombiner(key, metric_name, model_name, len(model_names) > 1)))
  return computations


class _StepMetric(tfma.metrics.Metric):
  """Base: one of model.METRIC_NAMES (or a unigram metric) over all real steps of the
  eval split."""
  metric_name = ''

  def __init__(self, name: Optional[str] = None):
    super().__init__(_step_metric_computations, metric_name=self.metric_name,
                     name=name or self.metric_name)


class Loss(_StepMetric):
  metric_name = 'loss'


class Perplexity(_StepMetric):
  metric_name = 'perplexity'


class Accuracy(_StepMetric):
  metric_name = 'accuracy'


class EventAccuracy(_StepMetric):
  metric_name = 'event_accuracy'


class NoEventAccuracy(_StepMetric):
  metric_name = 'no_event_accuracy'


class UnigramLoss(_StepMetric):
  """Per-step loss of the train split's (add-one smoothed) label frequencies."""
  metric_name = UNIGRAM_LOSS


class LossVsUnigram(_StepMetric):
  """loss / unigram_loss: below 1 when the model beats the context-free guess."""
  metric_name = LOSS_VS_UNIGRAM


class ReconstructionLoss(_StepMetric):
  """VAE: teacher-forced cross entropy per step, decoding from the encoder's mean."""
  metric_name = RECONSTRUCTION_LOSS


class ReconstructionAccuracy(_StepMetric):
  """VAE: teacher-forced argmax accuracy per step, from the encoder's mean."""
  metric_name = 'reconstruction_accuracy'


class SampledAccuracy(_StepMetric):
  """VAE: steps of a greedy free-running decode from the mean equal to the input."""
  metric_name = 'sampled_accuracy'


class KlBits(_StepMetric):
  """VAE: KL(q(z|x) || N(0, I)) in bits per sequence."""
  metric_name = 'kl_bits'


class Elbo(_StepMetric):
  """VAE: reconstruction + KL in nats per sequence (the negative ELBO: lower is better)."""
  metric_name = 'elbo'


METRICS = {cls.metric_name: cls for cls in (
    Loss, Perplexity, Accuracy, EventAccuracy, NoEventAccuracy, UnigramLoss, LossVsUnigram)}
assert tuple(METRICS)[:len(model_lib.METRIC_NAMES)] == model_lib.METRIC_NAMES
# MusicVAE: perplexity, event accuracy and the unigram metrics are of the reconstruction.
VAE_METRICS = {cls.metric_name: cls for cls in (
    ReconstructionLoss, Perplexity, ReconstructionAccuracy, EventAccuracy, SampledAccuracy,
    KlBits, Elbo, UnigramLoss, LossVsUnigram)}
for _cls in {**METRICS, **VAE_METRICS}.values():
  metric_types.register_metric(_cls)


def metrics_for(config) -> Dict[str, Any]:
  """{name: metric class} the Evaluator computes for the config's family."""
  return VAE_METRICS if configs.is_vae(config) else METRICS


def loss_metric(config) -> str:
  """The per-step loss that blessing bounds and compares with the baseline model's."""
  return RECONSTRUCTION_LOSS if configs.is_vae(config) else 'loss'


def eval_config(config, thresholds: BlessingThresholds) -> tfma.EvalConfig:
  """The Evaluator's EvalConfig: the family's metrics (metrics_for), whole split,
  blessing thresholds."""
  model_specs = [tfma.ModelSpec(name=CANDIDATE, signature_name=EVALUATE_SIGNATURE,
                                model_type=tfma.TF_GENERIC)]
  if thresholds.compare_to_baseline:
    model_specs.append(tfma.ModelSpec(name=BASELINE, signature_name=EVALUATE_SIGNATURE,
                                      model_type=tfma.TF_GENERIC, is_baseline=True))
  metric_configs = []
  for name, cls in metrics_for(config).items():
    threshold = None
    if name == 'perplexity' and thresholds.max_perplexity_fraction is not None:
      threshold = _upper_bound(thresholds.max_perplexity_fraction * config.num_classes)
    if name == LOSS_VS_UNIGRAM and thresholds.max_loss_vs_unigram is not None:
      # NaN (no unigram_xent in the export, empty split) fails it too.
      threshold = _upper_bound(thresholds.max_loss_vs_unigram)
    if (name == 'event_accuracy' and configs.is_vae(config) and
        thresholds.min_vae_event_accuracy is not None):
      threshold = tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
          lower_bound={'value': thresholds.min_vae_event_accuracy}))
    if name == loss_metric(config):
      # Always checked: a NaN or infinite loss fails every comparison, so it is never
      # blessed (and without any threshold TFX's Evaluator would bless nothing at all).
      threshold = _upper_bound(sys.float_info.max)
      if thresholds.compare_to_baseline:
        threshold.change_threshold.CopyFrom(tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.LOWER_IS_BETTER,
            absolute={'value': thresholds.loss_tolerance}))
    metric_configs.append(tfma.MetricConfig(class_name=cls.__name__, module=__name__,
                                            threshold=threshold))
  return tfma.EvalConfig(
      model_specs=model_specs,
      slicing_specs=[tfma.SlicingSpec()],
      metrics_specs=[tfma.MetricsSpec(metrics=metric_configs)])


def _upper_bound(value: float) -> tfma.MetricThreshold:
  return tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
      upper_bound={'value': value}))


def read_metrics(evaluation_uri: str) -> Dict[str, float]:
  """{metric name: value} of the candidate on the whole eval split, from the
  Evaluator's ModelEvaluation artifact."""
  result = tfma.load_eval_result(evaluation_uri, model_name=CANDIDATE)
  if not result.slicing_metrics:
    result = tfma.load_eval_result(evaluation_uri)
  for slice_key, metrics in result.slicing_metrics:
    if slice_key == ():
      values = next(iter(metrics.values()))  # output name ''
      values = next(iter(values.values())) if values else {}  # sub key ''
      return {name: float(v['doubleValue']) for name, v in values.items()
              if (name in METRICS or name in VAE_METRICS) and 'doubleValue' in v}
  return {}


def failed_thresholds(evaluation_uri: str) -> List[str]:
  """Names of the candidate's metrics that failed a blessing threshold (sorted; [] when
  blessed or when the Evaluator wrote no validation result)."""
  if not tf.io.gfile.glob(os.path.join(evaluation_uri, 'validations*')):
    return []
  result = tfma.load_validation_result(evaluation_uri)
  return sorted({failure.metric_key.name
                 for per_slice in result.metric_validations_per_slice
                 for failure in per_slice.failures})
