"""`music-rnn`: convert MIDI to NoteSequences, extract events, run the TFX pipeline."""

import argparse
import json
import os
import sys
from typing import List, Optional

from music_rnn import configs


def _positive_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'expected a positive integer, got {text!r}') from None
  if value < 1:
    raise argparse.ArgumentTypeError(f'expected a positive integer, got {value}')
  return value


def _non_negative_int(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'expected an integer >= 0, got {text!r}') from None
  if value < 0:
    raise argparse.ArgumentTypeError(f'expected an integer >= 0, got {value}')
  return value


def _hparams(text: str):
  try:
    return configs.parse_hparams(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='music-rnn', description='Magenta-style Drums RNN / Melody RNN on TFX.')
  sub = parser.add_subparsers(dest='command', required=True)

  p = sub.add_parser('convert', help='MIDI / MusicXML / ABC -> NoteSequence TFRecord.')
  p.add_argument('--input', required=True, help='Directory (searched recursively) or glob.')
  p.add_argument('--output', required=True, help='Output .tfrecord path.')

  p = sub.add_parser('extract', help="Run the config's event extraction, print statistics.")
  p.add_argument('--config', required=True, choices=sorted(configs.CONFIGS))
  p.add_argument('--input', required=True, help='NoteSequence TFRecord file or glob.')
  p.add_argument('--events-out', help='Write {"source_id", "events"} JSON lines here.')

  p = sub.add_parser('run', help='Run the local TFX pipeline for one model config.')
  p.add_argument('--config', required=True, choices=sorted(configs.CONFIGS))
  p.add_argument('--data', help='NoteSequence TFRecord file, directory or file glob '
                 '(default: the bundled data for the config kind).')
  p.add_argument('--train-steps', type=_positive_int)
  p.add_argument('--eval-steps', type=_positive_int)
  p.add_argument('--batch-size', type=_positive_int, help='Per-replica batch size.')
  p.add_argument('--hparams', type=_hparams, default={},
                 help="Magenta syntax, e.g. 'rnn_layer_sizes=[64,64],learning_rate=0.01'.")
  p.add_argument('--seed', type=_non_negative_int, default=0)
  p.add_argument('--workers', type=_non_negative_int, default=1,
                 help='Beam DirectRunner workers: 1 in-process, N>1 or 0 (all cores) '
                 'multi-processing.')
  p.add_argument('--output-root', help='Pipeline root and ML-Metadata location.')
  p.add_argument('--serving-dir', help='Pusher destination root (default serving/models).')
  p.add_argument('--no-cache', action='store_true', help="Disable TFX's execution cache.")
  return parser


def _cmd_convert(args) -> int:
  from music_rnn import convert  # pylint: disable=g-import-not-at-top
  stats = convert.convert(args.input, args.output)
  print(convert.format_stats(stats) if hasattr(convert, 'format_stats') else stats)
  return 0


def _cmd_extract(args) -> int:
  from music_rnn import extraction  # pylint: disable=g-import-not-at-top
  config = configs.get_config(args.config)
  stats = extraction.run_extraction(args.input, config, events_out=args.events_out)
  print(extraction.format_stats(stats))
  return 0


def _cmd_run(args) -> int:
  from pipeline import configs as pipeline_configs  # pylint: disable=g-import-not-at-top
  from pipeline import local_runner  # pylint: disable=g-import-not-at-top
  hparams = dict(args.hparams)
  if args.batch_size:
    hparams['batch_size'] = args.batch_size
  summary = local_runner.run(
      model_config=args.config,
      data=args.data,
      train_steps=args.train_steps or pipeline_configs.TRAIN_STEPS,
      eval_steps=args.eval_steps or pipeline_configs.EVAL_STEPS,
      hparams=hparams,
      seed=args.seed,
      output_root=args.output_root or pipeline_configs.OUTPUT_ROOT,
      serving_models_dir=args.serving_dir or pipeline_configs.SERVING_MODELS_DIR,
      beam_pipeline_args=pipeline_configs.beam_args_for_workers(args.workers),
      enable_cache=not args.no_cache)
  print(f'\n== {args.config}: pipeline {summary.pipeline_name} finished')
  for component, state in summary.component_states.items():
    print(f'   {component:<28} {state}')
  kept = {k: v for k, v in summary.extraction_stats.items() if k.endswith('extracted')}
  print(f'   extracted sequences: {kept}')
  print(f'   trained model:  {summary.trainer_model}')
  print(f'   pushed model:   {summary.pushed_model}')
  eval_metrics = summary.metrics.get('eval', {})
  if eval_metrics:
    print('   eval split:     ' + ', '.join(
        f'{k}={v:.4f}' for k, v in sorted(eval_metrics.items()) if isinstance(v, float)))
  else:
    print('   eval split:     no metrics recorded (see the Trainer log)')
  return 0


def main(argv: Optional[List[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return {'convert': _cmd_convert, 'extract': _cmd_extract, 'run': _cmd_run}[args.command](
        args)
  except (ValueError, FileNotFoundError) as e:
    print(f'music-rnn {args.command}: error: {e}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  sys.exit(main())
