"""Which pieces go to the eval split: a seeded hash threshold, topped up to a minimum.

Pure Python (no Beam, no TensorFlow), so the ExampleGen executor, `music-rnn extract` and
tests make the same choice. A piece is a NoteSequence (its source_id); every example of a
piece lands in the same split, so the eval split measures music the model never saw.

Hashing alone (what TFX's hash_buckets do) leaves a small corpus's eval split to luck:
Freedoom's 66 pieces gave 2 eval pieces at a 10% ratio. Here each piece gets a salted
hash in [0, 1); the pieces below `eval_ratio` are eval, and when they are fewer than
ceil(eval_ratio x pieces) (or MIN_EVAL_PIECES on a corpus of MIN_CORPUS_FOR_MINIMUM
pieces or more) the lowest-hash remaining pieces are added. Adding files never moves a
piece hashed below the threshold out of eval, and once the threshold alone meets the
minimum, old pieces keep their split exactly.
"""

import hashlib
import math
from typing import FrozenSet, Iterable

MIN_EVAL_PIECES = 5
MIN_CORPUS_FOR_MINIMUM = 20


def piece_hash(source_id: str, seed: int = 0) -> float:
  """sha256(seed, source_id) as a number in [0, 1): the piece's place in the eval order."""
  digest = hashlib.sha256(f'{seed}\0{source_id}'.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') / 2.0 ** 64


def min_eval_pieces(num_pieces: int, eval_ratio: float) -> int:
  """How many pieces the eval split gets at least (never all: training needs one)."""
  if num_pieces < 2:
    return 0
  wanted = math.ceil(eval_ratio * num_pieces - 1e-9)
  if num_pieces >= MIN_CORPUS_FOR_MINIMUM:
    wanted = max(wanted, MIN_EVAL_PIECES)
  return min(wanted, num_pieces - 1)


def eval_pieces(source_ids: Iterable[str], eval_ratio: float,
                seed: int = 0) -> FrozenSet[str]:
  """The source_ids of the eval split: hash below eval_ratio, topped up by hash order."""
  if not 0.0 < eval_ratio < 1.0:
    raise ValueError(f'eval_ratio must be in (0, 1), got {eval_ratio}')
  ordered = sorted(set(source_ids), key=lambda s: (piece_hash(s, seed), s))
  below = sum(1 for s in ordered if piece_hash(s, seed) < eval_ratio)
  count = max(below, min_eval_pieces(len(ordered), eval_ratio))
  count = min(count, max(len(ordered) - 1, 0))
  return frozenset(ordered[:count])
