"""When the Evaluator blesses a model: the thresholds, and their 'name=value,...' syntax.

Kept apart from music_rnn/evaluation.py (TFMA, Beam) so settings and command lines
can hold thresholds without importing TFMA. The same thresholds hold for both model
families: an event RNN's eval loss is its next-event loss, a MusicVAE's its
reconstruction loss (teacher-forced from the encoder's mean, evaluation.loss_metric),
both in nats per step against the same unigram table.
"""

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class BlessingThresholds:
  """When the Evaluator blesses a model; pipeline/configs.py BLESSING is the default."""
  max_perplexity_fraction: Optional[float] = 0.5  # of num_classes; None: no bound
  loss_tolerance: Optional[float] = 0.01  # vs the latest blessed model; None: no baseline
  # Eval loss at most (1 - margin) x the loss of the train split's label frequencies
  # (unigram_loss): the model must beat a context-free guess; None: no such check.
  unigram_margin: Optional[float] = 0.1
  # MusicVAE configs only: teacher-forced reconstruction accuracy on the steps that hold
  # a note or a hit (event_accuracy) at least this. A VAE that decodes "hold" at every
  # step beats the unigram table on loss yet reconstructs nothing; this rejects it.
  min_vae_event_accuracy: Optional[float] = 0.05

  def __post_init__(self):
    if self.max_perplexity_fraction is not None and not self.max_perplexity_fraction > 0:
      raise ValueError(f'max_perplexity_fraction must be > 0, got '
                       f'{self.max_perplexity_fraction}')
    if self.loss_tolerance is not None and not self.loss_tolerance >= 0:
      raise ValueError(f'loss_tolerance must be >= 0, got {self.loss_tolerance}')
    if self.unigram_margin is not None and not 0 <= self.unigram_margin < 1:
      raise ValueError(f'unigram_margin must be in [0, 1), got {self.unigram_margin}')
    if self.min_vae_event_accuracy is not None and not 0 <= self.min_vae_event_accuracy <= 1:
      raise ValueError(f'min_vae_event_accuracy must be in [0, 1], got '
                       f'{self.min_vae_event_accuracy}')

  @property
  def max_loss_vs_unigram(self) -> Optional[float]:
    """The bound on loss / unigram_loss, or None."""
    return None if self.unigram_margin is None else 1.0 - self.unigram_margin

  @property
  def compare_to_baseline(self) -> bool:
    return self.loss_tolerance is not None

  def replace(self, text: str) -> 'BlessingThresholds':
    """Overrides from 'name=value,...' (value a number or 'none'), as the CLI's
    --blessing, Airflow's and the notebook's settings give them."""
    known = [f.name for f in dataclasses.fields(self)]
    changes = {}
    for item in filter(None, (part.strip() for part in (text or '').split(','))):
      name, sep, value = item.partition('=')
      name, value = name.strip(), value.strip()
      if not sep or not value:
        raise ValueError(f'blessing: expected name=value, got {item!r}')
      if name not in known:
        raise ValueError(f'blessing: unknown threshold {name!r}; known: {known}')
      if value.lower() == 'none':
        changes[name] = None
        continue
      try:
        changes[name] = float(value)
      except ValueError:
        raise ValueError(f'blessing: {name} must be a number or none, '
                         f'got {value!r}') from None
    return dataclasses.replace(self, **changes)
