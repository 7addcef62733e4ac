"""Compiles the one `create_pipeline(...)` into a KFP v2 pipeline spec for Kubeflow / Vertex AI.

Nothing runs here: KubeflowV2DagRunner only writes the spec. `.json` gives a PipelineJob
(Vertex AI Pipelines' template, pipeline root included); `.yaml` gives the bare
PipelineSpec that an open-source KFP 2.x server uploads. See kubeflow/README.md.

    python kubeflow/kubeflow_v2_runner.py --config drum_kit \
      --pipeline-root gs://BUCKET/music-rnn --data 'gs://BUCKET/data/drums/*.tfrecord*' \
      --image REGION-docker.pkg.dev/PROJECT/REPO/music-rnn-tfx:TAG \
      --beam-pipeline-args '--runner=DataflowRunner --project=PROJECT ...' \
      --output build/kubeflow/drum_kit.json
"""

import argparse
import os
import posixpath
import shlex
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from music_rnn import configs as model_configs
from pipeline import configs
from pipeline import pipeline as pipeline_lib

# In the container every Beam component runs DirectRunner on all of the pod's cores unless
# --beam-pipeline-args says otherwise (e.g. Dataflow, see README).
DEFAULT_BEAM_PIPELINE_ARGS = ['--direct_running_mode=multi_processing',
                              '--direct_num_workers=0']


def split_data_path(data: str) -> Tuple[str, str]:
  """'gs://b/dir' -> (dir, '*.tfrecord*'); 'gs://b/dir/x-*.tfrecord' -> (dir, 'x-*.tfrecord').

  Purely textual: compiling must not need access to the bucket.
  """
  data = data.rstrip('/')
  base = posixpath.basename(data)
  if any(c in base for c in '*?[') or '.tfrecord' in base:
    root = posixpath.dirname(data)
    if any(c in root for c in '*?['):
      raise ValueError(f'--data: wildcards are supported in the file name only, got {data!r}')
    return root, base
  return data, '*.tfrecord*'


def build_pipeline(model_config: str,
                   pipeline_root: str,
                   data: str,
                   beam_pipeline_args: Optional[Sequence[str]] = None,
                   serving_model_dir: Optional[str] = None,
                   train_steps: int = configs.TRAIN_STEPS,
                   eval_steps: int = configs.EVAL_STEPS,
                   hparams: Optional[Dict[str, Any]] = None,
                   seed: int = 0,
                   blessing: Optional[Any] = None):
  """The pipeline for `model_config` with GCS paths; ML-Metadata is the cluster's own."""
  config = model_configs.get_config(model_config)
  if hparams:
    config.hparams.replace(**hparams)  # validates names and values before compiling
  data_root, data_pattern = split_data_path(data)
  name = configs.pipeline_name(config.name)
  root = posixpath.join(pipeline_root.rstrip('/'), name)
  return pipeline_lib.create_pipeline(
      pipeline_name=name,
      pipeline_root=root,
      data_root=data_root,
      data_pattern=data_pattern,
      model_config=config.name,
      serving_model_dir=serving_model_dir or posixpath.join(root, 'serving_model', config.name),
      preprocessing_fn=configs.PREPROCESSING_FN,
      run_fn=configs.RUN_FN,
      train_steps=train_steps,
      eval_steps=eval_steps,
      hparams=hparams,
      seed=seed,
      beam_pipeline_args=list(beam_pipeline_args if beam_pipeline_args is not None
                              else DEFAULT_BEAM_PIPELINE_ARGS),
      blessing=blessing or configs.BLESSING)


def compile_pipeline(image: str, output: str, **pipeline_args) -> Dict[str, Any]:
  """Writes the spec to `output` (.json or .yaml) and returns the PipelineJob as a dict.

  `pipeline_args` are build_pipeline's.
  """
  runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
      config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=image),
      output_dir=os.path.dirname(os.path.abspath(output)),
      output_filename=os.path.basename(output))
  return runner.run(build_pipeline(**pipeline_args))


def _hparams(text: str) -> Dict[str, Any]:
  try:
    return model_configs.parse_hparams(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def _blessing(text: str):
  try:
    return configs.BLESSING.replace(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--config', required=True, choices=sorted(model_configs.CONFIGS))
  parser.add_argument('--pipeline-root', required=True,
                      help='GCS prefix for artifacts, e.g. gs://BUCKET/music-rnn; the '
                      'pipeline name is appended.')
  parser.add_argument('--data', required=True,
                      help='NoteSequence TFRecords: a GCS directory or a file glob in it.')
  parser.add_argument('--image', required=True, help='Pipeline image (kubeflow/Dockerfile).')
  parser.add_argument('--beam-pipeline-args', type=shlex.split, default=None,
                      help='One shell-quoted string, e.g. "--runner=DataflowRunner '
                      '--project=P --region=R --temp_location=gs://B/tmp" (default: '
                      'DirectRunner, multi-processing on all cores of the pod).')
  parser.add_argument('--serving-dir', help='Pusher destination (default: '
                      '<pipeline-root>/<name>/serving_model/<config>).')
  parser.add_argument('--train-steps', type=int, default=configs.TRAIN_STEPS)
  parser.add_argument('--eval-steps', type=int, default=configs.EVAL_STEPS)
  parser.add_argument('--hparams', type=_hparams, default={},
                      help="Magenta syntax, e.g. 'rnn_layer_sizes=[64,64]'.")
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--blessing', type=_blessing, default=None, metavar='NAME=VALUE,...',
                      help="Evaluator thresholds, e.g. 'max_perplexity_fraction=0.8,"
                      "unigram_margin=0.05,loss_tolerance=none' (default: "
                      "pipeline/configs.py BLESSING).")
  parser.add_argument('--output', required=True, help='Spec file: .json or .yaml.')
  return parser


def main(argv: Optional[List[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  compile_pipeline(
      model_config=args.config, pipeline_root=args.pipeline_root, data=args.data,
      image=args.image, output=args.output, beam_pipeline_args=args.beam_pipeline_args,
      serving_model_dir=args.serving_dir, train_steps=args.train_steps,
      eval_steps=args.eval_steps, hparams=args.hparams, seed=args.seed,
      blessing=args.blessing)
  print(f'Wrote {args.output}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
