"""TFMA metrics and blessing thresholds for the Evaluator.

The exported `evaluate` signature returns, per raw eval example, sums over its real
steps (model.STAT_NAMES) computed on the labels the embedded Transform graph derives
from the events. The metrics here add those sums over the eval split and take the
same ratios as the Trainer's Keras metrics (model.metric_from_sums), so `loss`,
`perplexity`, `accuracy`, `event_accuracy` and `no_event_accuracy` mean one thing
everywhere: per step, not per example.

Blessing (thresholds in music_rnn/blessing.py): the eval loss must be finite; the
candidate must beat a uniform guess by a margin (perplexity below
`max_perplexity_fraction` x num_classes) and, when a blessed model of the same
pipeline exists, its eval loss must not exceed that model's by more than
`loss_tolerance` nats per step.
"""

import sys
from typing import Any, Dict, Iterable, List, Optional

import apache_beam as beam
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import metric_types

from music_rnn import configs
from music_rnn.blessing import BlessingThresholds
from music_rnn import model as model_lib

EVALUATE_SIGNATURE = 'evaluate'  # export.EVALUATE_SIGNATURE (export imports Transform)
CANDIDATE = 'candidate'
BASELINE = 'baseline'


class _SumsCombiner(beam.CombineFn):
  """Adds up one model's per-example STAT_NAMES outputs; emits one metric."""

  def __init__(self, key: metric_types.MetricKey, metric_name: str,
               model_name: str, multi_model: bool):
    self._key = key
    self._metric_name = metric_name
    self._model_name = model_name
    self._multi_model = multi_model

  def create_accumulator(self) -> Dict[str, float]:
    return dict.fromkeys(model_lib.STAT_NAMES, 0.0)

  def add_input(self, accumulator: Dict[str, float],
                element: metric_types.StandardMetricInputs) -> Dict[str, float]:
    predictions = element.predictions
    if self._multi_model:
      predictions = predictions[self._model_name]
    for name in model_lib.STAT_NAMES:
      accumulator[name] += float(predictions[name].sum())
    return accumulator

  def merge_accumulators(self, accumulators: Iterable[Dict[str, float]]) -> Dict[str, float]:
    accumulators = iter(accumulators)
    result = next(accumulators)
    for acc in accumulators:
      for name in model_lib.STAT_NAMES:
        result[name] += acc[name]
    return result

  def extract_output(self, accumulator: Dict[str, float]):
    return {self._key: model_lib.metric_from_sums(self._metric_name, accumulator)}


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
  """Base: one of model.METRIC_NAMES over all real steps of the eval split."""
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


METRICS = {cls.metric_name: cls for cls in (
    Loss, Perplexity, Accuracy, EventAccuracy, NoEventAccuracy)}
assert tuple(METRICS) == model_lib.METRIC_NAMES
for _cls in METRICS.values():
  metric_types.register_metric(_cls)


def eval_config(config: configs.ModelConfig,
                thresholds: BlessingThresholds) -> tfma.EvalConfig:
  """The Evaluator's EvalConfig: our five metrics, whole split, blessing thresholds."""
  model_specs = [tfma.ModelSpec(name=CANDIDATE, signature_name=EVALUATE_SIGNATURE,
                                model_type=tfma.TF_GENERIC)]
  if thresholds.compare_to_baseline:
    model_specs.append(tfma.ModelSpec(name=BASELINE, signature_name=EVALUATE_SIGNATURE,
                                      model_type=tfma.TF_GENERIC, is_baseline=True))
  metric_configs = []
  for name, cls in METRICS.items():
    threshold = None
    if name == 'perplexity' and thresholds.max_perplexity_fraction is not None:
      threshold = tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
          upper_bound={'value': thresholds.max_perplexity_fraction * config.num_classes}))
    if name == 'loss':
      # Always checked: a NaN or infinite loss fails every comparison, so it is never
      # blessed (and without any threshold TFX's Evaluator would bless nothing at all).
      threshold = tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(
          upper_bound={'value': sys.float_info.max}))
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
              if name in METRICS and 'doubleValue' in v}
  return {}
