"""`music-rnn`: convert MIDI to NoteSequences, extract events, run the TFX pipeline,
generate music from a pushed model."""

import argparse
import json
import os
import shlex
import sys
from typing import List, Optional

from music_rnn import configs


def _int_at_least(minimum: int, what: str):
  """An argparse type: an int >= minimum, with a message naming what was expected."""

  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f'expected {what}, got {text!r}') from None
    if value < minimum:
      raise argparse.ArgumentTypeError(f'expected {what}, got {value}')
    return value

  return parse


_positive_int = _int_at_least(1, 'a positive integer')
_non_negative_int = _int_at_least(0, 'an integer >= 0')


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
  p.add_argument('--eval-steps', '--limit-eval-batches', dest='eval_steps', type=_positive_int,
                 help='Eval batches per evaluation (Lightning: limit_val_batches).')
  p.add_argument('--batch-size', type=_positive_int, help='Per-replica batch size.')
  p.add_argument('--hparams', type=_hparams, default={},
                 help="Magenta syntax, e.g. 'rnn_layer_sizes=[64,64],learning_rate=0.01'.")
  p.add_argument('--seed', type=_non_negative_int, default=0)
  p.add_argument('--workers', type=_non_negative_int, default=1,
                 help='Beam DirectRunner workers: 1 in-process, N>1 or 0 (all cores) '
                 'multi-processing.')
  p.add_argument('--beam-pipeline-args', type=shlex.split,
                 help='Beam options for ExampleGen, StatisticsGen and Transform as one quoted '
                 'string, given with "=": --beam-pipeline-args="--runner=FlinkRunner ..." '
                 '(instead of --workers; README, "Beam at scale").')
  p.add_argument('--output-root', help='Pipeline root and ML-Metadata location.')
  p.add_argument('--serving-dir', help='Pusher destination root (default serving/models).')
  p.add_argument('--no-cache', action='store_true', help="Disable TFX's execution cache.")
  p.add_argument('--no-xla-generation', action='store_true',
                 help="Export the generate/prime/extend signatures as plain TensorFlow ops "
                 "instead of an XLA-compiled sampling loop (slower at small batches; for "
                 "servers without XLA, e.g. TF Serving without --xla_cpu_compilation_enabled).")
  p.add_argument('--blessing', type=_blessing, default=None, metavar='NAME=VALUE,...',
                 help='Evaluator thresholds, only blessed models are pushed: '
                 'max_perplexity_fraction (eval perplexity must be below this times the '
                 'number of classes), unigram_margin (eval loss at most 1 - this times the '
                 'loss of the train split\'s label frequencies) and loss_tolerance (eval '
                 'loss at most this above the latest blessed model\'s); "none" turns one '
                 'off. Default: max_perplexity_fraction=0.5,unigram_margin=0.1,'
                 'loss_tolerance=0.01.')
  t = p.add_argument_group('tuning', 'Search rnn_layer_sizes, learning_rate, clip_norm, ... '
                           'with a TFX Tuner and train the final model with the best.')
  t.add_argument('--tune', action='store_true', help='Add the Tuner before the Trainer.')
  from pipeline import configs as pipeline_configs  # pylint: disable=g-import-not-at-top
  t.add_argument('--tuner', help=f'random, bayesian or hyperband '
                 f'(default {pipeline_configs.TUNER}).')
  t.add_argument('--max-trials', type=_positive_int, help='Trials to run (default '
                 f'{pipeline_configs.MAX_TRIALS}); re-running with more extends the search.')
  t.add_argument('--trial-steps', type=_positive_int, help='Training steps per trial '
                 f'(default {pipeline_configs.TRIAL_STEPS}).')
  t.add_argument('--search-space', help='YAML/JSON file replacing entries of the default '
                 'search space (see README, "Tuning").')
  t.add_argument('--hyperparameters', help="Without --tune: train with an earlier run's "
                 'best_hyperparameters (its artifact dir, or the file in it).')
  r = p.add_argument_group('training that survives', 'Checkpoints, resume, best model, '
                           'devices, precision, debugging (README, "Training that survives").')
  r.add_argument('--fast-dev-run', action='store_true', help='Smoke test: every component, '
                 f'{pipeline_configs.FAST_DEV_RUN_TRAIN_STEPS} train and <= '
                 f'{pipeline_configs.FAST_DEV_RUN_EVAL_STEPS} eval batches of <= '
                 f'{pipeline_configs.FAST_DEV_RUN_BATCH_SIZE}, as pipeline '
                 f'<name>{pipeline_configs.FAST_DEV_RUN_SUFFIX}; nothing is resumed or '
                 'pushed to the real serving dir.')
  r.add_argument('--checkpoint-every', type=_positive_int, help='Steps between checkpoints '
                 f'(default {pipeline_configs.CHECKPOINT_EVERY}; also at every evaluation).')
  r.add_argument('--early-stopping-patience', type=_positive_int,
                 help='Stop after N evaluations without a lower eval loss (default: off).')
  r.add_argument('--warm-start-from', help='Fine-tune from a previous model: a pushed '
                 "SavedModel dir or a Trainer's Model artifact (same config and layer sizes).")
  r.add_argument('--mixed-precision', nargs='?', const='auto',
                 choices=['auto', 'mixed_float16', 'mixed_bfloat16', 'off'],
                 help='auto: mixed_float16 on GPU, mixed_bfloat16 on CPU; the softmax stays '
                 'float32.')
  r.add_argument('--replicas', type=_positive_int, help='MirroredStrategy replicas: the first '
                 'N GPUs, or on a CPU-only machine N logical CPU devices.')
  r.add_argument('--global-batch-size', type=_positive_int, help='Batch over all replicas '
                 '(must divide by --replicas); instead of the per-replica --batch-size.')
  _add_generate_parser(sub)
  return parser


def _cmd_convert(args) -> int:
  from music_rnn import convert  # pylint: disable=g-import-not-at-top
  stats = convert.convert(args.input, args.output)
  if not stats.counts['sequences_written']:
    os.remove(args.output)  # an empty TFRecord would only fail later, less clearly
    raise ValueError(f'No NoteSequences were converted from {args.input}. Counts by '
                     'reason:\n' + convert.format_stats(stats))
  print(convert.format_stats(stats))
  return 0


def _cmd_extract(args) -> int:
  from music_rnn import extraction  # pylint: disable=g-import-not-at-top
  config = configs.get_config(args.config)
  stats = extraction.run_extraction(args.input, config, events_out=args.events_out)
  extraction.check_extracted(stats, config, args.input)  # one error listing every reason
  print(extraction.format_stats(stats))
  return 0


def _cmd_run(args) -> int:
  from pipeline import configs as pipeline_configs  # pylint: disable=g-import-not-at-top
  from pipeline import local_runner  # pylint: disable=g-import-not-at-top
  hparams = dict(args.hparams)
  if args.batch_size:
    hparams['batch_size'] = args.batch_size
  search_flags = [f for f, v in (('--tuner', args.tuner), ('--max-trials', args.max_trials),
                                 ('--trial-steps', args.trial_steps),
                                 ('--search-space', args.search_space)) if v]
  if search_flags and not args.tune:
    raise ValueError(f'{", ".join(search_flags)}: need --tune')
  if args.search_space and not os.path.isfile(args.search_space):
    raise FileNotFoundError(f'--search-space: {args.search_space} is not a file')
  if args.beam_pipeline_args and args.workers != 1:
    raise ValueError('--workers and --beam-pipeline-args: give one of them')
  if args.fast_dev_run and args.train_steps:
    raise ValueError('--fast-dev-run sets the train steps; drop --train-steps')
  if args.global_batch_size and (args.batch_size or 'batch_size' in hparams):
    raise ValueError('--global-batch-size and a per-replica batch size: give one of them')
  if args.replicas:
    from music_rnn import training  # pylint: disable=g-import-not-at-top
    training.use_logical_cpus(args.replicas)  # before TensorFlow initializes its devices
  summary = local_runner.run(
      model_config=args.config,
      data=args.data,
      train_steps=args.train_steps or pipeline_configs.TRAIN_STEPS,
      eval_steps=args.eval_steps or pipeline_configs.EVAL_STEPS,
      hparams=hparams,
      seed=args.seed,
      output_root=args.output_root or pipeline_configs.OUTPUT_ROOT,
      serving_models_dir=args.serving_dir or pipeline_configs.SERVING_MODELS_DIR,
      beam_pipeline_args=(args.beam_pipeline_args
                          or pipeline_configs.beam_args_for_workers(args.workers)),
      enable_cache=not args.no_cache,
      tune=args.tune,
      tuner=args.tuner or pipeline_configs.TUNER,
      max_trials=args.max_trials or pipeline_configs.MAX_TRIALS,
      trial_steps=args.trial_steps or pipeline_configs.TRIAL_STEPS,
      search_space=args.search_space,
      hyperparameters=args.hyperparameters,
      fast_dev_run=args.fast_dev_run,
      warm_start_from=args.warm_start_from,
      checkpoint_every=args.checkpoint_every or pipeline_configs.CHECKPOINT_EVERY,
      early_stopping_patience=args.early_stopping_patience,
      mixed_precision=args.mixed_precision,
      xla_generation=not args.no_xla_generation,
      replicas=args.replicas,
      global_batch_size=args.global_batch_size,
      blessing=args.blessing)
  print(f'\n== {args.config}: pipeline {summary.pipeline_name} finished')
  for component, state in summary.component_states.items():
    print(f'   {component:<28} {state}')
  kept = {k: v for k, v in summary.extraction_stats.items() if k.endswith('extracted')}
  print(f'   extracted sequences: {kept}')
  if summary.split:
    print(f'   split by piece: {summary.split["train_pieces"]} train, '
          f'{summary.split["eval_pieces"]} eval of {summary.split["pieces"]} pieces')
  print(f'   trained model:  {summary.trainer_model}')
  verdict = summary.evaluation
  if verdict is None:
    print('   evaluator:      did not run')
  else:
    against = 'vs the latest blessed model' if verdict['baseline'] else 'no earlier blessed model'
    failed = (f'; failed: {", ".join(verdict["failed"])}' if verdict.get('failed') else '')
    print(f'   evaluator:      {"BLESSED" if verdict["blessed"] else "NOT blessed"} '
          f'({against}{failed})')
    losses = local_runner.loss_vs_unigram(summary)
    if losses:
      print(f'   eval loss:      {losses}')
    if verdict['metrics']:
      print('   eval split:     ' + ', '.join(
          f'{k}={v:.4f}' for k, v in sorted(verdict['metrics'].items())))
  print(f'   pushed model:   {summary.pushed_model or "nothing pushed by this run"}')
  m = summary.metrics
  if m.get('train_steps') is not None:
    exported = m.get('exported') or {}
    resumed = f', resumed from step {m["resumed_from_step"]}' if m.get('resumed_from_step') else ''
    stopped = (f', stopped early at step {m["stopped_early_at_step"]}'
               if m.get('stopped_early_at_step') else '')
    print(f'   training:       {m["train_steps"]} steps{resumed}{stopped}; exported the '
          f'{exported.get("weights", "last")} weights (step {exported.get("step")})')
    print(f'   checkpoints:    {m.get("checkpoint_dir")}')
  eval_metrics = summary.metrics.get('eval', {})
  if eval_metrics:
    print('   trainer eval:   ' + ', '.join(
        f'{k}={v:.4f}' for k, v in sorted(eval_metrics.items()) if isinstance(v, float)))
  else:
    print('   trainer eval:   no metrics recorded (see the Trainer log)')
  if summary.tuning:
    tuning = summary.tuning
    values = ', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                       for k, v in sorted(tuning['values'].items()))
    print(f'   hparams from:   {tuning["source"]}: {values}')
    if tuning.get('best_trial'):
      print(f'   tuner:          {tuning["best_trial"]}')
      print(f'   trial report:   {tuning["report_csv"]}')
      print(f'                   {tuning["report_png"]}')
    print(f'   reuse with:     --hyperparameters {tuning["uri"]}')
  return 0


def _blessing(text: str):
  from pipeline import configs as pipeline_configs  # pylint: disable=g-import-not-at-top
  try:
    return pipeline_configs.BLESSING.replace(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def _positive_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'expected a number > 0, got {text!r}') from None
  if not value > 0:
    raise argparse.ArgumentTypeError(f'expected a number > 0, got {value}')
  return value


def _add_generate_parser(sub) -> None:
  p = sub.add_parser('generate', help='Generate MIDI (and piano-roll PNGs) from a pushed model.')
  which = p.add_mutually_exclusive_group()
  which.add_argument('--config', choices=sorted(configs.CONFIGS),
                     help="Use the config's newest pushed model (serving/models/<config>/).")
  which.add_argument('--model-dir', help='An exported SavedModel directory.')
  p.add_argument('--serving-dir', help='Where pushed models are (default serving/models).')
  p.add_argument('--output-dir', required=True, help='Where the .mid and .png files go.')
  p.add_argument('--num-outputs', type=_positive_int, default=10)
  p.add_argument('--num-steps', type=_positive_int, default=128,
                 help="Total length in steps, primer included (Magenta's meaning).")
  p.add_argument('--temperature', type=_positive_float, default=1.0)
  p.add_argument('--seed', type=int, help='Same seed, same music (default: random, printed).')
  primer = p.add_mutually_exclusive_group()
  primer.add_argument('--primer-midi', help='A MIDI file to continue.')
  primer.add_argument('--primer-drums', help='Drums, e.g. "[(36, 42), (), (42,)]" '
                      '(default: one bass drum hit).')
  primer.add_argument('--primer-melody', help='A melody, e.g. "[60, -2, 60, -2, 67, -2, 67, '
                      '-2]" (-2 no event, -1 note off; default: one middle C).')
  p.add_argument('--qpm', type=_positive_float,
                 help='Tempo of the output (default: the primer MIDI\'s, else 120).')
  p.add_argument('--beam-size', type=_positive_int, default=1)
  p.add_argument('--branch-factor', type=_positive_int, default=1)
  p.add_argument('--steps-per-iteration', type=_positive_int, default=1)


def _cmd_generate(args) -> int:
  import random  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top
  from serving import client  # pylint: disable=g-import-not-at-top
  if args.model_dir:
    path = args.model_dir
  elif args.config:
    path = client.latest_model_dir(args.config, args.serving_dir or client.DEFAULT_MODELS_DIR)
  else:
    raise ValueError('give --config (its newest pushed model) or --model-dir')
  model = client.Model(path)
  if (args.primer_drums and not model.is_drums) or (args.primer_melody and model.is_drums):
    kind, flag = ('drums', '--primer-drums') if model.is_drums else ('melody', '--primer-melody')
    raise ValueError(f'{model.name} is a {kind} model: use {flag} or --primer-midi')
  qpm = None
  if args.primer_midi:
    primer, qpm = client.primer_from_midi(args.primer_midi, model)
  elif model.is_drums:
    primer = client.parse_drum_primer(args.primer_drums or '[(36,)]')
  else:
    primer = client.parse_melody_primer(args.primer_melody or '[60]')
  qpm = args.qpm or qpm or client.DEFAULT_QPM
  if len(primer) >= args.num_steps:
    raise ValueError(f'the primer is {len(primer)} steps; --num-steps (the total length, '
                     'primer included) must be larger')
  seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2 ** 31)
  print(f'{model.name} model {path}')
  print(f'seed {seed}, primer {len(primer)} steps, {args.num_steps - len(primer)} to '
        f'generate, {args.num_outputs} outputs')
  with tqdm.tqdm(total=args.num_steps - len(primer), unit='step', desc='generating') as bar:
    generated = model.generate(
        primer, args.num_steps - len(primer), num_outputs=args.num_outputs,
        temperature=args.temperature, seed=seed, beam_size=args.beam_size,
        branch_factor=args.branch_factor, steps_per_iteration=args.steps_per_iteration,
        progress=bar.update)
  paths = client.write_outputs(model, generated, args.output_dir, qpm)
  print(f'wrote {len(paths)} MIDI files and piano rolls to {args.output_dir}, e.g.\n'
        f'  {paths[0][0]}\n  {paths[0][1]}')
  return 0


def main(argv: Optional[List[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return {'convert': _cmd_convert, 'extract': _cmd_extract, 'run': _cmd_run,
            'generate': _cmd_generate}[args.command](args)
  except (ValueError, FileNotFoundError) as e:
    print(f'music-rnn {args.command}: error: {e}', file=sys.stderr)
    return 2


if __name__ == '__main__':
  sys.exit(main())
