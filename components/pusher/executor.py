"""Pusher executor that recognises a model it has already pushed.

A pipeline re-run with nothing changed re-runs the Evaluator (its baseline, the latest
blessed model, is now the model itself) and so the Pusher. TFX's Pusher would copy the
same SavedModel to a new <timestamp>/ version each time; this one finds the version
whose fingerprint.pb (TensorFlow's content fingerprint of graph, signatures and
variables) equals the model's and records that version as the push instead.
"""

import os
from typing import Any, Dict, List, Optional

from absl import logging
from tfx import types
from tfx.components.pusher import executor as pusher_executor
from tfx.dsl.io import fileio
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils
from tfx.types import standard_component_specs
from tfx.utils import io_utils
from tfx.utils import proto_utils

FINGERPRINT = 'fingerprint.pb'


def _read(path: str) -> Optional[bytes]:
  if not fileio.exists(path):
    return None
  with fileio.open(path, 'rb') as f:
    return f.read()


def find_pushed_version(model_path: str, base_directory: str) -> Optional[str]:
  """The version directory under `base_directory` holding this same SavedModel, if any."""
  fingerprint = _read(os.path.join(model_path, FINGERPRINT))
  if fingerprint is None or not fileio.isdir(base_directory):
    return None
  for version in sorted(fileio.listdir(base_directory), reverse=True):
    version_dir = os.path.join(base_directory, version.rstrip('/'))
    # saved_model.pb is copied last: without it the version is incomplete.
    if (fileio.exists(os.path.join(version_dir, 'saved_model.pb'))
        and _read(os.path.join(version_dir, FINGERPRINT)) == fingerprint):
      return version_dir
  return None


class Executor(pusher_executor.Executor):
  """TFX's filesystem Pusher, except that it never pushes the same model twice."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    destination = pusher_pb2.PushDestination()
    proto_utils.json_to_proto(
        exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
    if destination.WhichOneof('destination') == 'filesystem' and self.CheckBlessing(input_dict):
      model_path = self.GetModelPath(input_dict)
      existing = find_pushed_version(model_path, destination.filesystem.base_directory)
      if existing:
        logging.info('This model is already pushed as %s; not pushing it again.', existing)
        model_push = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        io_utils.copy_dir(model_path, model_push.uri)  # the archive copy, as TFX's Pusher
        self._MarkPushed(model_push, pushed_destination=existing,
                         pushed_version=os.path.basename(existing))
        return
    super().Do(input_dict, output_dict, exec_properties)
