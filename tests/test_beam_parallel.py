"""Beam at scale, locally: DirectRunner in multi-processing mode with 2 workers.

The Beam components (NoteSequenceExampleGen, StatisticsGen, Transform) run on a tiny real
slice with `--direct_running_mode=multi_processing --direct_num_workers=2`; the test sees
the SDK worker processes Beam starts and checks the outputs against a plain-Python
extraction of the same file. Also: the `music-rnn run` flags that choose these arguments.
"""

import os
import threading
import time

import pytest
import tensorflow as tf
from tfx import v1 as tfx
from tfx.dsl.compiler import compiler
from tfx.orchestration.local import local_dag_runner
from tfx.proto.orchestration import pipeline_pb2

from music_rnn import cli
from music_rnn import configs as model_configs
from music_rnn import extraction
from pipeline import configs
from pipeline import local_runner
from pipeline import mlmd_results
from pipeline import pipeline as pipeline_lib
from pipeline.settings import PipelineSettings
from tests.conftest import bundled, write_slice_with_eval

PARALLEL_ARGS = ['--direct_running_mode=multi_processing', '--direct_num_workers=2']
_WORKER_MODULE = b'apache_beam.runners.worker.sdk_worker_main'


class _WorkerWatcher(threading.Thread):
  """Records the pids of Beam SDK worker processes that are children of this process."""

  def __init__(self):
    super().__init__(daemon=True)
    self.pids = set()
    self._stop_event = threading.Event()

  def run(self):
    me = os.getpid()
    while not self._stop_event.is_set():
      for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
          with open(f'/proc/{pid}/cmdline', 'rb') as f:
            cmdline = f.read()
          with open(f'/proc/{pid}/stat') as f:
            ppid = int(f.read().rsplit(')', 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
          continue
        if ppid == me and _WORKER_MODULE in cmdline:
          self.pids.add(int(pid))
      time.sleep(0.2)

  def stop(self):
    self._stop_event.set()
    self.join()


def _count(uri, split):
  files = tf.io.gfile.glob(os.path.join(uri, f'Split-{split}', '*.gz'))
  return sum(1 for _ in tf.data.TFRecordDataset(files, compression_type='GZIP'))


def test_beam_components_in_multi_processing_mode(tmp_path):
  config = model_configs.get_config('drum_kit')
  data = write_slice_with_eval(bundled('drums'), str(tmp_path / 'data' / 'drums.tfrecord'), 10)
  settings = PipelineSettings(
      config.name, data=data, output_root=str(tmp_path / 'out'), train_steps=1, eval_steps=1,
      beam_pipeline_args=PARALLEL_ARGS,
      # No baseline resolver: TFX's partial run cannot skip a resolver without a snapshot
      # of an earlier run, and nothing here reaches the Evaluator.
      blessing=configs.BLESSING.replace('loss_tolerance=none'))
  metadata = settings.metadata_path
  os.makedirs(os.path.dirname(metadata))
  p = pipeline_lib.create_pipeline(
      settings, tfx.orchestration.metadata.sqlite_metadata_connection_config(metadata))
  # Only the Beam part: everything up to Transform (partial run of the same pipeline).
  run_options = pipeline_pb2.RunOptions(
      partial_run=pipeline_pb2.PartialRun(to_nodes=['Transform']))
  watcher = _WorkerWatcher()
  watcher.start()
  try:
    local_dag_runner.LocalDagRunner().run_with_ir(compiler.Compiler().compile(p),
                                                  run_options=run_options)
  finally:
    watcher.stop()

  results = mlmd_results.latest_results(metadata, settings.pipeline_name)
  assert {k: r.state for k, r in results.items()} == {
      k: 'COMPLETE' for k in ('NoteSequenceExampleGen', 'StatisticsGen', 'SchemaGen',
                              'Transform')}
  assert len(watcher.pids) >= 2, f'expected >= 2 Beam SDK worker processes, saw {watcher.pids}'

  # Same events as extracting the file in plain Python, split train/eval.
  reference = extraction.run_extraction(data, config)
  examples = results['NoteSequenceExampleGen'].outputs['examples'][0].uri
  counts = {s: _count(examples, s) for s in ('train', 'eval')}
  assert counts['train'] > 0 and counts['eval'] > 0
  assert sum(counts.values()) == reference['drum_tracks_extracted']

  # StatisticsGen saw every example of each split.
  from tensorflow_metadata.proto.v0 import statistics_pb2  # pylint: disable=g-import-not-at-top
  stats_uri = results['StatisticsGen'].outputs['statistics'][0].uri
  for split, n in counts.items():
    stats = statistics_pb2.DatasetFeatureStatisticsList()
    with tf.io.gfile.GFile(os.path.join(stats_uri, f'Split-{split}', 'FeatureStats.pb'),
                           'rb') as f:
      stats.ParseFromString(f.read())
    assert stats.datasets[0].num_examples == n

  # Transform encoded every example.
  transformed = results['Transform'].outputs['transformed_examples'][0].uri
  assert {s: _count(transformed, s) for s in counts} == counts


@pytest.mark.parametrize('argv, expected', [
    ([], configs.BEAM_PIPELINE_ARGS),
    (['--workers', '2'], PARALLEL_ARGS),
    (['--beam-pipeline-args=--runner=FlinkRunner --flink_master=localhost:8081 '
      '--environment_type=LOOPBACK'],
     ['--runner=FlinkRunner', '--flink_master=localhost:8081', '--environment_type=LOOPBACK']),
])
def test_run_command_beam_arguments(monkeypatch, tmp_path, argv, expected):
  seen = {}

  def fake_run(settings):
    seen.update(beam_pipeline_args=list(settings.beam_pipeline_args))
    raise ValueError('stop here')  # the CLI prints it and exits 2

  monkeypatch.setattr(local_runner, 'run', fake_run)
  assert cli.main(['run', '--config', 'drum_kit', '--output-root', str(tmp_path)] + argv) == 2
  assert seen['beam_pipeline_args'] == list(expected)


def test_workers_and_beam_args_are_exclusive(capsys, tmp_path):
  assert cli.main(['run', '--config', 'drum_kit', '--workers', '2', '--output-root',
                   str(tmp_path), '--beam-pipeline-args=--runner=DirectRunner']) == 2
  assert '--workers and --beam-pipeline-args' in capsys.readouterr().err
