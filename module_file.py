"""The thin door TFX knocks on: user functions reached by module path.

Logic lives in the importable, tested `music_rnn` package.
"""

from music_rnn.preprocessing import preprocessing_fn  # noqa: F401  (Transform)
from music_rnn.training import run_fn  # noqa: F401  (Trainer, GenericExecutor)
from music_rnn.tuning import tuner_fn  # noqa: F401  (Tuner)
