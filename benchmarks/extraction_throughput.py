"""Extraction throughput: serial Python vs Beam DirectRunner with 2 workers.

Prints sequences/s (NoteSequences processed per second) and extracted sequences for each.
Usage: python benchmarks/extraction_throughput.py [--config drum_kit] [--input GLOB]
"""

import argparse
import collections
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from components.note_sequence_example_gen import executor
from music_rnn import configs
from music_rnn import extraction
from pipeline import configs as pipeline_configs


def serial(pattern, config):
  stats = collections.Counter()
  n = 0
  for ns in extraction.read_note_sequences(pattern, stats):
    n += 1
    extraction.extract_sequences(ns, config, stats)
  return n, stats


def with_beam(pattern, config, workers):
  import tensorflow as tf
  files = sorted(tf.io.gfile.glob(pattern))
  options = PipelineOptions(['--runner=DirectRunner', '--direct_running_mode=multi_processing',
                             f'--direct_num_workers={workers}'])
  with beam.Pipeline(options=options) as p:
    read = (p | beam.Create(files)
            | 'Read' >> beam.ParDo(executor._ReadFile()).with_outputs(  # pylint: disable=protected-access
                'stats', main='sequences'))
    _ = (read.sequences | beam.Reshuffle()
         | beam.ParDo(executor._Extract(config.name)).with_outputs(  # pylint: disable=protected-access
             'stats', main='examples'))
  result = p.result
  counters = result.metrics().query()['counters']
  return {c.key.metric.name: c.committed for c in counters}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--config', default='drum_kit', choices=sorted(configs.CONFIGS))
  parser.add_argument('--input')
  parser.add_argument('--workers', type=int, default=2)
  args = parser.parse_args()
  config = configs.get_config(args.config)
  pattern = args.input or pipeline_configs.default_data(config.kind)

  t = time.perf_counter()
  n, stats = serial(pattern, config)
  serial_s = time.perf_counter() - t
  kept = stats['drum_tracks_extracted'] + stats['melodies_extracted']
  print(f'[{config.name}] serial:        {n} NoteSequences in {serial_s:.1f} s = '
        f'{n / serial_s:.1f} seq/s ({kept} extracted)')

  t = time.perf_counter()
  counters = with_beam(pattern, config, args.workers)
  beam_s = time.perf_counter() - t
  kept_b = counters.get('drum_tracks_extracted', 0) + counters.get('melodies_extracted', 0)
  print(f'[{config.name}] beam {args.workers} workers: {n} NoteSequences in {beam_s:.1f} s = '
        f'{n / beam_s:.1f} seq/s ({kept_b} extracted, incl. pipeline start-up)')
  if kept_b != kept:
    raise SystemExit(f'mismatch: serial kept {kept}, beam kept {kept_b}')


if __name__ == '__main__':
  main()
