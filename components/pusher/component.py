"""TFX's Pusher with the idempotent executor (same spec, inputs and outputs)."""

from tfx import v1 as tfx
from tfx.dsl.components.base import executor_spec

from components.pusher import executor


class Pusher(tfx.components.Pusher):
  """Pushes blessed models to the filesystem, each model once (see executor.py)."""
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)
