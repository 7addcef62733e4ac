"""Reads what a pipeline run produced back out of ML-Metadata (for the CLI and tests)."""

import dataclasses
from typing import Dict, List

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

_DONE = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)


@dataclasses.dataclass
class NodeResult:
  """The newest finished execution of one component and its output artifacts."""
  component_id: str
  state: str  # 'COMPLETE' or 'CACHED'
  outputs: Dict[str, List[metadata_store_pb2.Artifact]]


def open_store(metadata_path: str) -> metadata_store.MetadataStore:
  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = metadata_path
  config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
  return metadata_store.MetadataStore(config)


def latest_results(metadata_path: str, pipeline_name: str) -> Dict[str, NodeResult]:
  """component id -> its newest finished execution's outputs."""
  store = open_store(metadata_path)
  # Only the newest run counts: components of earlier runs (a Tuner that is not in this
  # run, say) must not show up. Cached components have a CACHED execution in it.
  prefix = pipeline_name + '.'
  node_contexts = [c for c in store.get_contexts_by_type('node') if c.name.startswith(prefix)]
  pipeline_execution_ids = {e.id for c in node_contexts
                             for e in store.get_executions_by_context(c.id)}
  run_ids = None
  for run in sorted(store.get_contexts_by_type('pipeline_run'), key=lambda c: -c.id):
    ids = {e.id for e in store.get_executions_by_context(run.id)}
    if ids & pipeline_execution_ids:
      run_ids = ids
      break
  results = {}
  for context in node_contexts:
    component_id = context.name[len(prefix):]
    executions = [e for e in store.get_executions_by_context(context.id)
                  if e.last_known_state in _DONE and (run_ids is None or e.id in run_ids)]
    if not executions:
      continue
    execution = max(executions, key=lambda e: e.id)
    events = [ev for ev in store.get_events_by_execution_ids([execution.id])
              if ev.type in (metadata_store_pb2.Event.OUTPUT,
                             metadata_store_pb2.Event.DECLARED_OUTPUT)]
    artifacts = {a.id: a for a in store.get_artifacts_by_id([ev.artifact_id for ev in events])}
    outputs: Dict[str, List[metadata_store_pb2.Artifact]] = {}
    for ev in events:
      key = ev.path.steps[0].key if ev.path.steps else ''
      outputs.setdefault(key, []).append(artifacts[ev.artifact_id])
    results[component_id] = NodeResult(
        component_id=component_id,
        state=metadata_store_pb2.Execution.State.Name(execution.last_known_state),
        outputs=outputs)
  return results
