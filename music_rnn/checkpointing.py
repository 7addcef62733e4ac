"""Checkpoints that outlive a Trainer execution: resume, the k best, early-stopping state.

A killed Trainer stays RUNNING/FAILED in ML-Metadata and the re-run is a new execution
with a new scratch directory, so checkpoints live in a stable directory instead, named
by what makes two runs "the same" (`run_key`). One run's directory holds:

  run_spec.json  what the key was made of (config, hparams, seed, steps, data, ...)
  latest/        model + optimizer (its `iterations` is the global step) + early-stopping
                 state, every `checkpoint_every` steps and at every evaluation; last 2 kept
  best/          weights only, of the `keep_best` lowest eval losses; best/index.json
  history.json   the per-evaluation records so far, so curves survive a restart

A multi-worker run's other workers restore from that directory too, and make the same
saves as the chief to their own scratch `write_directory` (TF's multi-worker pattern).
"""

import hashlib
import json
import math
import os
from typing import Any, Dict, List, Optional

from absl import logging
import tensorflow as tf

from music_rnn import model as model_lib

RUN_SPEC = 'run_spec.json'
HISTORY = 'history.json'
BEST_INDEX = 'index.json'
DEFAULT_KEEP_BEST = 3


def fingerprint(value: Any) -> str:
  """16 hex digits of sha256 over canonical JSON: a directory name for `value`."""
  text = json.dumps(value, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def data_fingerprint(data_root: str, data_pattern: str, **settings: Any) -> str:
  """(name, size, mtime) of the pipeline's input files, plus split settings, hashed.

  Cheap (no file is read), changes when the data does, and unlike the transformed
  examples' URIs it survives a `--no-cache` re-run that recomputes Transform.
  """
  files = []
  for path in sorted(tf.io.gfile.glob(os.path.join(data_root, data_pattern))):
    st = tf.io.gfile.stat(path)
    files.append([os.path.basename(path), st.length, st.mtime_nsec])
  return fingerprint({'files': files, 'pattern': data_pattern, **settings})


def _write_json(path: str, value: Any) -> None:
  """Write-then-rename, so a kill never leaves half a file behind."""
  tmp = path + '.tmp'
  with tf.io.gfile.GFile(tmp, 'w') as f:
    f.write(json.dumps(value, indent=2, sort_keys=True))
  tf.io.gfile.rename(tmp, path, overwrite=True)


def _read_json(path: str, default: Any) -> Any:
  if not tf.io.gfile.exists(path):
    return default
  with tf.io.gfile.GFile(path) as f:
    return json.loads(f.read())


class EarlyStoppingState(tf.Module):
  """Best eval loss so far, its step, and evaluations since: saved with `latest`."""

  def __init__(self):
    super().__init__(name='early_stopping')
    self.best_loss = tf.Variable(math.inf, dtype=tf.float64, trainable=False)
    self.best_step = tf.Variable(-1, dtype=tf.int64, trainable=False)
    self.evals_since_best = tf.Variable(0, dtype=tf.int64, trainable=False)
    self.stopped_at = tf.Variable(-1, dtype=tf.int64, trainable=False)  # -1: not stopped


class Checkpointer:
  """Saves and restores one run's state in `directory` (see the module docstring)."""

  def __init__(self, directory: str, model, keep_best: int = DEFAULT_KEEP_BEST,
               write_directory: Optional[str] = None):
    """`directory`: the run's, restored from; `write_directory`: where this process
    saves and deletes (default `directory`)."""
    self.directory = directory
    self.write_directory = write_directory or directory
    self.model = model
    self.keep_best = max(1, int(keep_best))
    self.state = EarlyStoppingState()
    self.weights = list(model.trainable_variables) + list(model.non_trainable_variables)
    tf.io.gfile.makedirs(os.path.join(self.write_directory, 'best'))
    self._manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model, optimizer=model.optimizer, early_stopping=self.state),
        os.path.join(self.write_directory, 'latest'), max_to_keep=2)
    self.best: List[Dict[str, Any]] = []  # [{'step', 'eval_loss', 'path'}], best first
    self._restored_step = 0

  @property
  def step(self) -> int:
    return int(model_lib.global_step(self.model.optimizer).numpy())

  def saved_step(self) -> int:
    """The step of the newest checkpoint this process saved or restored (0: none)."""
    latest = self._manager.latest_checkpoint
    return max(self._restored_step, int(latest.rsplit('-', 1)[1]) if latest else 0)

  def write_spec(self, spec: Dict[str, Any]) -> None:
    _write_json(os.path.join(self.write_directory, RUN_SPEC), spec)

  def restore(self) -> int:
    """Loads the latest checkpoint, if any; returns the step it was taken at (0: none).

    Best-checkpoint entries newer than it (written just before a kill) are dropped:
    the resumed run will evaluate those steps again.
    """
    latest = tf.train.latest_checkpoint(os.path.join(self.directory, 'latest'))
    if latest:
      self._manager.checkpoint.read(latest).assert_existing_objects_matched()
    step = self._restored_step = self.step if latest else 0
    kept = []
    for entry in _read_json(os.path.join(self.directory, 'best', BEST_INDEX), []):
      if entry['step'] <= step and tf.io.gfile.exists(entry['path'] + '.index'):
        kept.append(entry)
      else:
        self._delete(entry['path'])
    self.best = sorted(kept, key=lambda e: (e['eval_loss'], e['step']))
    self._write_best_index()
    return step

  def history(self, up_to_step: int) -> List[Dict[str, Any]]:
    return [r for r in _read_json(os.path.join(self.directory, HISTORY), [])
            if r['step'] <= up_to_step]

  def save(self, history: List[Dict[str, Any]]) -> str:
    """Model, optimizer, step and early-stopping state; then the history beside them."""
    path = self._manager.save(checkpoint_number=self.step)
    _write_json(os.path.join(self.write_directory, HISTORY), history)
    return path

  def record_eval(self, eval_loss: float) -> bool:
    """Updates the best-k weights and the early-stopping state; True if a new best."""
    step = self.step
    improved = eval_loss < float(self.state.best_loss.numpy())
    if improved:
      self.state.best_loss.assign(eval_loss)
      self.state.best_step.assign(step)
      self.state.evals_since_best.assign(0)
    else:
      self.state.evals_since_best.assign_add(1)
    self.best = [e for e in self.best if e['step'] != step]
    if len(self.best) < self.keep_best or eval_loss < self.best[-1]['eval_loss']:
      path = os.path.join(self.write_directory, 'best', f'step-{step}')
      tf.train.Checkpoint(weights=self.weights).write(path)
      self.best.append({'step': step, 'eval_loss': float(eval_loss), 'path': path})
      self.best.sort(key=lambda e: (e['eval_loss'], e['step']))
      for dropped in self.best[self.keep_best:]:
        self._delete(dropped['path'])
      self.best = self.best[:self.keep_best]
      self._write_best_index()
    return improved

  def restore_best(self) -> Optional[Dict[str, Any]]:
    """Loads the best weights into the model; returns their entry (None: no eval yet)."""
    if not self.best:
      return None
    entry = self.best[0]
    tf.train.Checkpoint(weights=self.weights).read(entry['path']).assert_consumed()
    return entry

  def _write_best_index(self) -> None:
    _write_json(os.path.join(self.write_directory, 'best', BEST_INDEX), self.best)

  def _delete(self, prefix: str) -> None:
    """Removes a best checkpoint, if this process wrote it (the chief deletes its own)."""
    if not prefix.startswith(os.path.join(self.write_directory, '')):
      return
    for path in tf.io.gfile.glob(prefix + '.*'):
      try:
        tf.io.gfile.remove(path)
      except tf.errors.NotFoundError:
        logging.warning('Already gone: %s', path)
