"""Compiles the one `create_pipeline(settings)` into a KFP v2 pipeline spec for Kubeflow /
Vertex AI.

Nothing runs here: KubeflowV2DagRunner only writes the spec. `.json` gives a PipelineJob
(Vertex AI Pipelines' template, pipeline root included); `.yaml` gives the bare
PipelineSpec that an open-source KFP 2.x server uploads. Every `music-rnn run` pipeline
flag works here too (pipeline/settings.py add_arguments), plus the image and what the
Trainer and Tuner run on (accelerators, machine type, replicas). See kubeflow/README.md.

    python kubeflow/kubeflow_v2_runner.py --config drum_kit \
      --pipeline-root gs://BUCKET/music-rnn --data 'gs://BUCKET/data/drums/*.tfrecord*' \
      --image REGION-docker.pkg.dev/PROJECT/REPO/music-rnn-tfx:TAG \
      --beam-pipeline-args='--runner=DataflowRunner --project=PROJECT ...' \
      --trainer-accelerator-type NVIDIA_TESLA_T4 --trainer-accelerator-count 1 \
      --output build/kubeflow/drum_kit.json

Any config compiles, the MusicVAEs too (`--config cat-drums_2bar_small`, with their own
hparam names, e.g. --hparams 'z_size=64,dec_rnn_size=[64,64]').
"""

import argparse
import os
import sys
from typing import Any, Dict, List, Optional

from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from pipeline import pipeline as pipeline_lib
from pipeline import settings as settings_lib
from pipeline.settings import PipelineSettings

# In the container every Beam component runs DirectRunner on all of the pod's cores unless
# --beam-pipeline-args says otherwise (e.g. Dataflow, see README).
DEFAULT_BEAM_PIPELINE_ARGS = ('--direct_running_mode=multi_processing',
                              '--direct_num_workers=0')

split_data_path = settings_lib.split_data_path  # textual for gs:// paths


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  settings_lib.add_arguments(parser)
  parser.add_argument('--pipeline-root', dest='output_root', required=True,
                      help='GCS prefix, e.g. gs://BUCKET/music-rnn: pipelines/<name>, '
                      'checkpoints/, tuner/ and (default) serving/ go under it.')
  parser.add_argument('--image', required=True, help='Pipeline image (kubeflow/Dockerfile).')
  parser.add_argument('--output', required=True, help='Spec file: .json or .yaml.')
  settings_lib.add_resource_arguments(parser)
  return parser


def settings_from_args(argv: Optional[List[str]] = None) -> PipelineSettings:
  """The compiler's flags -> settings; `--data` is required (the bundled data is local)."""
  return _settings(build_parser().parse_args(argv))


def _settings(args: argparse.Namespace) -> PipelineSettings:
  if 'data' not in args:
    raise ValueError('--data: give the NoteSequence TFRecords on GCS (a directory or a glob)')
  return PipelineSettings.from_args(
      args,
      serving_dir=settings_lib.join_path(args.output_root, 'serving'),
      beam_pipeline_args=DEFAULT_BEAM_PIPELINE_ARGS,
      image=args.image,
      trainer_resources=settings_lib.resources_from_args(args, 'trainer'),
      tuner_resources=settings_lib.resources_from_args(args, 'tuner'),
      vertex_project=args.vertex_project,
      vertex_region=args.vertex_region)


def compile_pipeline(settings: PipelineSettings, output: str) -> Dict[str, Any]:
  """Writes the spec for `settings` (image included) to `output` (.json or .yaml) and
  returns the PipelineJob as a dict. ML-Metadata is the cluster's own."""
  runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
      config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=settings.image),
      output_dir=os.path.dirname(os.path.abspath(output)),
      output_filename=os.path.basename(output))
  return runner.run(pipeline_lib.create_pipeline(settings))


def main(argv: Optional[List[str]] = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    settings = _settings(args)
  except (ValueError, FileNotFoundError) as e:
    parser.error(str(e))  # one line, exit 2
  compile_pipeline(settings, args.output)
  print(f'Wrote {args.output}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
