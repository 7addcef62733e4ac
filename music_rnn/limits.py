"""Bounds on a generation request, in one place (documented in serving/README.md).

Why bounds: a served model must answer a request or refuse it, not run until it is
killed. The exported `generate` / `prime` / `extend` signatures check them in the graph
(an InvalidArgumentError naming the bound) and `music-rnn generate` checks them while
parsing its flags. No TensorFlow here, so the command line parses without loading it.
"""

# Events per sequence, primer included: 1024 bars of 16th notes (~34 minutes at 120 qpm).
MAX_NUM_STEPS = 16_384

# Events in one request over all rows (batch x events per row; for beam search every
# beam counts): 64 sequences of MAX_NUM_STEPS, or 2048 of 512.
MAX_TOTAL_STEPS = 64 * MAX_NUM_STEPS


def too_large(length: int, rows: int = 1):
  """Why `rows` sequences of `length` events each (the given ones included) exceed
  the bounds, or None if they do not."""
  if length > MAX_NUM_STEPS:
    return (f'{length} events per sequence; at most {MAX_NUM_STEPS} '
            '(limits.MAX_NUM_STEPS)')
  if rows * length > MAX_TOTAL_STEPS:
    return (f'{rows} sequences x {length} events = {rows * length} events; at most '
            f'{MAX_TOTAL_STEPS} in all (limits.MAX_TOTAL_STEPS)')
  return None
