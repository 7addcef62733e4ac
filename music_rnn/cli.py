"""`music-rnn`: convert MIDI to NoteSequences, extract events, run the TFX pipeline,
generate music from a pushed model."""

import argparse
import os
import re
import sys
import traceback
from typing import List, Optional

from music_rnn import configs
from music_rnn import limits


def _int_at_least(minimum: int, what: str, maximum: Optional[int] = None):
  """An argparse type: an int >= minimum (and <= maximum), with a message naming what
  was expected."""

  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f'expected {what}, got {text!r}') from None
    if value < minimum or (maximum is not None and value > maximum):
      raise argparse.ArgumentTypeError(f'expected {what}, got {value}')
    return value

  return parse


_positive_int = _int_at_least(1, 'a positive integer')
_non_negative_int = _int_at_least(0, 'an integer >= 0')


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
  from pipeline import settings as settings_lib  # pylint: disable=g-import-not-at-top
  settings_lib.add_arguments(p)  # the pipeline's flags, shared with the Kubeflow compiler
  p.add_argument('--output-root', default=argparse.SUPPRESS,
                 help='Pipeline root, ML-Metadata, checkpoints and tuner state '
                 '(default $MUSIC_RNN_HOME or build/).')
  p.add_argument('--workers', type=_non_negative_int, default=1,
                 help='Beam DirectRunner workers: 1 in-process, N>1 or 0 (all cores) '
                 'multi-processing (instead of --beam-pipeline-args).')
  _add_generate_parser(sub)
  _add_vae_parsers(sub)
  _add_package_parser(sub)
  _add_magenta_parsers(sub)
  _add_debug_flags(parser, sub)  # keep last: every subcommand gets --debug
  return parser


def _add_debug_flags(parser: argparse.ArgumentParser, sub) -> None:
  """--debug before or after the command: `music-rnn --debug generate ...` or
  `music-rnn generate ... --debug`."""
  what = 'On an error, also print the full traceback.'
  parser.add_argument('--debug', action='store_true', help=what)
  for command_parser in sub.choices.values():
    command_parser.add_argument('--debug', action='store_true', default=argparse.SUPPRESS,
                                help=what)


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
  from pipeline import settings as settings_lib  # pylint: disable=g-import-not-at-top
  if 'beam_pipeline_args' in args and args.workers != 1:
    raise ValueError('--workers and --beam-pipeline-args: give one of them')
  settings = settings_lib.PipelineSettings.from_args(
      args, beam_pipeline_args=pipeline_configs.beam_args_for_workers(args.workers))
  if settings.replicas:
    from music_rnn import training  # pylint: disable=g-import-not-at-top
    training.use_logical_cpus(settings.replicas)  # before TensorFlow initializes its devices
  summary = local_runner.run(settings)
  print(f'\n== {settings.model_config}: pipeline {summary.pipeline_name} finished')
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
    vae = local_runner.vae_metrics(summary)
    if vae:
      print(f'   MusicVAE:       {vae}')
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
  which.add_argument('--model', help='A local path, a .tar.gz URL (http(s)://, gs://; e.g. '
                     'from `music-rnn package`) or a TF Hub handle: downloaded once, cached '
                     'in $TFHUB_CACHE_DIR (default ~/.cache/music-rnn/tfhub_modules).')
  p.add_argument('--serving-dir', help='Where pushed models are (default serving/models).')
  p.add_argument('--output-dir', required=True, help='Where the .mid and .png files go.')
  p.add_argument('--num-outputs', type=_positive_int, default=10)
  p.add_argument('--num-steps', default=128, type=_int_at_least(
      2, f'an integer in [2, {limits.MAX_NUM_STEPS}] (limits.MAX_NUM_STEPS)',
      limits.MAX_NUM_STEPS), help="Total length in steps, primer included (Magenta's "
                 f'meaning); at most {limits.MAX_NUM_STEPS}, and --num-outputs x '
                 f'--beam-size x --branch-factor x --num-steps at most '
                 f'{limits.MAX_TOTAL_STEPS} (serving/README.md, "Bounds").')
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


def _check_generate_size(args) -> None:
  """The bound on all events of a request (limits.py), before anything is loaded."""
  rows = args.num_outputs * args.beam_size * args.branch_factor
  too_large = limits.too_large(args.num_steps, rows)
  if too_large:
    raise ValueError(f'--num-outputs x --beam-size x --branch-factor x --num-steps: '
                     f'{too_large}; ask for fewer or shorter outputs')


def _generate_model_dir(args) -> str:
  """The SavedModel directory to generate with, checked (model_archive.check_saved_model)."""
  from music_rnn import model_archive  # pylint: disable=g-import-not-at-top
  from serving import client  # pylint: disable=g-import-not-at-top
  if args.model:
    return _resolve_model(args.model)
  if args.model_dir:
    model_archive.check_saved_model(args.model_dir, '--model-dir', 'give an exported model '
                                'directory, e.g. serving/models/<config>/<version>')
    return args.model_dir
  if args.config:
    return client.latest_model_dir(args.config, args.serving_dir or client.DEFAULT_MODELS_DIR)
  raise ValueError('give --config (its newest pushed model), --model-dir or --model')


def _cmd_generate(args) -> int:
  import random  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top
  from serving import client  # pylint: disable=g-import-not-at-top
  if args.config:
    client.check_family(args.config, configs.EVENT_RNN)
  _check_generate_size(args)
  # What needs no model is checked first, so a mistake fails at once.
  primer = sequence = None
  if args.primer_drums:
    primer = client.parse_drum_primer(args.primer_drums)
  elif args.primer_melody:
    primer = client.parse_melody_primer(args.primer_melody)
  elif args.primer_midi:
    sequence = client.read_midi(args.primer_midi)
  path = _generate_model_dir(args)
  model = client.Model(path)
  if (args.primer_drums and not model.is_drums) or (args.primer_melody and model.is_drums):
    kind, flag = ('drums', '--primer-drums') if model.is_drums else ('melody', '--primer-melody')
    raise ValueError(f'{model.name} is a {kind} model: use {flag} or --primer-midi')
  qpm = None
  if sequence is not None:
    primer, qpm = client.primer_from_sequence(sequence, model, args.primer_midi)
  elif primer is None:
    primer = client.parse_drum_primer('[(36,)]') if model.is_drums else [60]
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


# --- MusicVAE: sample and interpolate 2-bar slices. ----------------------------------

# Slices a request may ask for: limits.MAX_TOTAL_STEPS events of one slice each.
_MAX_SLICES = limits.MAX_TOTAL_STEPS // configs.VaeHParams().max_seq_len


def _add_vae_model_flags(p) -> None:
  """--config and where its model is, as `generate` finds one, plus the common flags."""
  p.add_argument('--config', choices=sorted(configs.CONFIGS),
                 help='A MusicVAE config (cat-drums_2bar_small, cat-mel_2bar_small): its '
                 'newest pushed model (serving/models/<config>/), unless --model-dir/--model.')
  which = p.add_mutually_exclusive_group()
  which.add_argument('--model-dir', help='An exported MusicVAE SavedModel directory.')
  which.add_argument('--model', help='A local path, a .tar.gz URL or a TF Hub handle '
                     '(as `generate --model`).')
  p.add_argument('--serving-dir', help='Where pushed models are (default serving/models).')
  p.add_argument('--output-dir', required=True, help='Where the .mid and .png files go.')
  p.add_argument('--temperature', type=_positive_float, default=0.5,
                 help="Decoder softmax temperature (Magenta's default 0.5).")
  p.add_argument('--seed', type=int, help='Same seed, same music (default: random, printed).')
  p.add_argument('--qpm', type=_positive_float, help='Tempo of the output (default: input '
                 "A's MIDI tempo for interpolate, else 120).")


def _add_vae_parsers(sub) -> None:
  p = sub.add_parser('sample', help='MusicVAE: sample 2-bar phrases (MIDI + a PNG grid).')
  _add_vae_model_flags(p)
  p.add_argument('--num-outputs', default=5, type=_int_at_least(
      1, f'an integer in [1, {_MAX_SLICES}] (limits.MAX_TOTAL_STEPS events)', _MAX_SLICES))
  p = sub.add_parser('interpolate', help='MusicVAE: interpolate between two 2-bar phrases '
                     '(MIDI + a PNG strip).')
  _add_vae_model_flags(p)
  for which in ('a', 'b'):
    p.add_argument(f'--input-{which}', required=True, help=(
        'A MIDI file (its first 2-bar slice, as the config slices data) or an event list '
        'as for `generate` (drums "[(36, 42), (), (42,)]", melody "[60, -2, 62, -1]"; '
        'shorter than 2 bars: padded with rests).'))
  p.add_argument('--num-steps', default=5, type=_int_at_least(
      2, f'an integer in [2, {_MAX_SLICES}] (limits.MAX_TOTAL_STEPS events)', _MAX_SLICES),
                 help='Slices in the interpolation, A and B included.')


def _vae_model(args):
  """The client.VaeModel the flags name (a usage error for an event-RNN config/model)."""
  from serving import client  # pylint: disable=g-import-not-at-top
  if args.config:
    client.check_family(args.config, configs.MUSIC_VAE)
  path = _generate_model_dir(args)
  model = client.VaeModel(path)
  if args.config and model.name != args.config:
    raise ValueError(f'{path} is a {model.name} model, not {args.config}: give one of them')
  print(f'{model.name} model {path}')
  return model


def _seed(args) -> int:
  import random  # pylint: disable=g-import-not-at-top
  seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2 ** 31)
  print(f'seed {seed}, temperature {args.temperature}')
  return seed


def _cmd_sample(args) -> int:
  import time  # pylint: disable=g-import-not-at-top
  from serving import client  # pylint: disable=g-import-not-at-top
  model = _vae_model(args)
  seed = _seed(args)
  start = time.perf_counter()
  samples = model.sample(args.num_outputs, args.temperature, seed)
  print(f'sampled {len(samples)} slices in {time.perf_counter() - start:.2f} s')
  mids, png = client.write_samples(
      model, samples, args.output_dir, args.qpm or client.DEFAULT_QPM,
      f'{model.name}: {len(samples)} samples (temperature {args.temperature}, seed {seed})')
  print(f'wrote {len(mids)} MIDI files and a piano-roll grid to {args.output_dir}, e.g.\n'
        f'  {mids[0]}\n  {png}')
  return 0


def _read_midi_inputs(args):
  """{flag: NoteSequence} of the --input-a/-b that are MIDI files (read before anything
  loads, so a missing or damaged file fails at once)."""
  from serving import client  # pylint: disable=g-import-not-at-top
  return {flag: client.read_midi(text, flag)
          for flag, text in (('--input-a', args.input_a), ('--input-b', args.input_b))
          if not client.is_event_list(text)}


def _vae_slices(args, config, sequences):
  """(events A, events B, the first MIDI input's tempo or None): the 2-bar slices the
  inputs give for `config`, with a note printed for each."""
  from serving import client  # pylint: disable=g-import-not-at-top
  events, qpms = [], []
  for flag, text in (('--input-a', args.input_a), ('--input-b', args.input_b)):
    if flag in sequences:
      slice_events, qpm, note = client.slice_from_sequence(sequences[flag], config, text, flag)
      qpms.append(qpm)
    else:
      slice_events, note = client.parse_slice(text, config, flag)
    print(note)
    events.append(slice_events)
  return events[0], events[1], next((q for q in qpms if q), None)


def _cmd_interpolate(args) -> int:
  import time  # pylint: disable=g-import-not-at-top
  from serving import client  # pylint: disable=g-import-not-at-top
  inputs = None
  if args.config:  # the inputs are checked before the model loads
    client.check_family(args.config, configs.MUSIC_VAE)
    inputs = _vae_slices(args, configs.get_config(args.config), _read_midi_inputs(args))
  else:
    sequences = _read_midi_inputs(args)
  model = _vae_model(args)
  events_a, events_b, qpm = inputs or _vae_slices(args, configs.get_config(model.name),
                                                  sequences)
  seed = _seed(args)
  start = time.perf_counter()
  steps = model.interpolate(events_a, events_b, args.num_steps, args.temperature, seed)
  print(f'interpolated {len(steps)} slices in {time.perf_counter() - start:.2f} s')
  mids, png = client.write_interpolation(
      model, steps, args.output_dir, args.qpm or qpm or client.DEFAULT_QPM,
      f'{model.name}: A to B in {len(steps)} steps (temperature {args.temperature}, '
      f'seed {seed})')
  print(f'wrote {len(mids)} MIDI files (one per step, {os.path.basename(mids[-1])} all of '
        f'them in turn) and the piano-roll strip to {args.output_dir}:\n  {png}')
  return 0


def _resolve_model(name: str) -> str:
  """--model: the local SavedModel dir of a path, archive URL or hub handle."""
  from music_rnn import model_handles  # pylint: disable=g-import-not-at-top
  from music_rnn import model_archive  # pylint: disable=g-import-not-at-top
  path = model_handles.resolve(name)
  model_archive.check_saved_model(
      path, f'--model {name}' if path != name else '--model',
      'an archive must hold the SavedModel files at its root, as `music-rnn package` '
      'writes them')
  return path


def _add_package_parser(sub) -> None:
  p = sub.add_parser('package', help='Write a pushed model as a TF Hub compatible .tar.gz '
                     '(serve it over http(s)/gs and use it with `generate --model URL`).')
  p.add_argument('--model-dir', required=True, help='A pushed SavedModel directory, e.g. '
                 'serving/models/drum_kit/<version>.')
  p.add_argument('--output', required=True, help='The archive to write, e.g. model.tar.gz.')


def _cmd_package(args) -> int:
  from music_rnn import model_archive  # pylint: disable=g-import-not-at-top
  output = model_archive.package(args.model_dir, args.output)
  print(f'wrote {output} ({os.path.getsize(output) / 1e6:.1f} MB) from {args.model_dir}')
  return 0


def _add_magenta_parsers(sub) -> None:
  p = sub.add_parser('import-magenta', help="A Magenta .mag bundle or run_dir checkpoint as "
                     "a SavedModel with a pushed model's signatures.")
  source = p.add_mutually_exclusive_group(required=True)
  source.add_argument('--bundle', help='A .mag file (drum_kit, basic_rnn, lookback_rnn, '
                      'attention_rnn): a local path, a .tar.gz URL or a TF Hub handle. '
                      'Its config and hparams come from the bundle.')
  source.add_argument('--checkpoint', help='A Magenta run_dir, checkpoint directory or '
                      'prefix (model.ckpt-N); needs --config and the --hparams it was '
                      'trained with.')
  p.add_argument('--config', choices=configs.names(configs.EVENT_RNN))
  p.add_argument('--hparams', default='',
                 help="Magenta syntax, e.g. 'rnn_layer_sizes=[64,64],attn_length=16'.")
  p.add_argument('--output', required=True, help='The SavedModel directory to create.')
  p.add_argument('--data', help="NoteSequence TFRecord whose sequences' label frequencies "
                 "give the evaluate signature's unigram baseline (default: near uniform).")
  p.add_argument('--no-xla-generation', action='store_true',
                 help='Plain TensorFlow ops for the generate/prime/extend signatures.')

  p = sub.add_parser('export-magenta', help="A pushed model as a .mag bundle for Magenta "
                     "2.1.4's generators (needs Magenta: `make oracle` or "
                     "$MAGENTA_ORACLE_PATH).")
  p.add_argument('--model-dir', required=True, help='A pushed or imported SavedModel.')
  p.add_argument('--output', required=True, help='The .mag file to write.')
  p.add_argument('--description', default='', help="The bundle's description.")


def _cmd_import_magenta(args) -> int:
  from music_rnn import magenta_interop  # pylint: disable=g-import-not-at-top
  hparams = configs.parse_hparams(args.hparams)
  if args.bundle:
    magenta = magenta_interop.load_bundle(magenta_interop.bundle_path(args.bundle))
    magenta = magenta_interop.with_flags(magenta, args.config, hparams)
  else:
    if not args.config:
      raise ValueError('--checkpoint needs --config (and --hparams, if not the defaults)')
    magenta = magenta_interop.load_checkpoint(args.checkpoint, args.config, hparams)
  magenta_interop.import_model(magenta, args.output, data=args.data,
                               jit_compile=not args.no_xla_generation)
  print(f'imported {magenta.config.name} '
        f'(rnn_layer_sizes={list(magenta.hparams.rnn_layer_sizes)}, '
        f'attn_length={magenta.hparams.attn_length}) from {magenta.source} to {args.output}')
  return 0


def _cmd_export_magenta(args) -> int:
  from music_rnn import magenta_interop  # pylint: disable=g-import-not-at-top
  output = magenta_interop.export_bundle(args.model_dir, args.output, args.description)
  print(f'wrote {output} ({os.path.getsize(output) / 1e6:.1f} MB) from {args.model_dir}')
  return 0


# The subcommands: a new one adds its parser in build_parser and one line here; main()
# runs it under the same error handling.
COMMANDS = {
    'convert': _cmd_convert,
    'extract': _cmd_extract,
    'run': _cmd_run,
    'generate': _cmd_generate,
    'sample': _cmd_sample,
    'interpolate': _cmd_interpolate,
    'package': _cmd_package,
    'import-magenta': _cmd_import_magenta,
    'export-magenta': _cmd_export_magenta,
}

EXIT_FAILED = 1  # what was given was fine, running it failed
EXIT_USAGE = 2  # what was given is wrong: flags, files, data (argparse's code too)
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports it

# What a user gives wrong surfaces as these; anything else is a failed run.
USAGE_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                PermissionError)


def _reason(error: BaseException) -> str:
  """A failed run's error in one line: a TensorFlow assertion's own message, else the
  error's first line that says something (not a heading like 'Graph execution error:')."""
  text = str(error).strip()
  assertion = re.search(r'assertion failed: \[(.*)\]\s*$', text, re.MULTILINE)
  if assertion:
    return assertion.group(1)
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  said = [line for line in lines if not line.endswith(':')] or lines
  return f'{type(error).__name__}: {said[0]}' if said else type(error).__name__


def main(argv: Optional[List[str]] = None) -> int:
  """Runs one command; errors end in one line on stderr (the traceback too with
  --debug) and exit code EXIT_USAGE or EXIT_FAILED."""
  args = build_parser().parse_args(argv)
  prefix = f'music-rnn {args.command}'
  try:
    return COMMANDS[args.command](args)
  except KeyboardInterrupt:
    if args.debug:
      traceback.print_exc()
    print(f'{prefix}: interrupted', file=sys.stderr)
    return EXIT_INTERRUPTED
  except Exception as e:  # pylint: disable=broad-except; every error ends in one line
    if args.debug:
      traceback.print_exc()
    if isinstance(e, USAGE_ERRORS):
      print(f'{prefix}: error: {e}', file=sys.stderr)
      return EXIT_USAGE
    hint = '' if args.debug else '; run again with --debug for the traceback'
    print(f'{prefix}: error: {_reason(e)}{hint}', file=sys.stderr)
    return EXIT_FAILED


if __name__ == '__main__':
  sys.exit(main())
