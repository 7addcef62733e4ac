"""Builds the melody corpus from the Essen folksong collection in the music21 wheel.

The Essen ABC files (~8.5k monophonic folk tunes) come with music21 under a
non-commercial permission, so they are not committed: this script converts them from
the installed wheel at build time (with music_rnn.convert: note_seq's ABC parser,
music21 where it fails).

  python data/build_essen.py               # default subset -> data/melody/essen_subset.tfrecord
  python data/build_essen.py --subset 1000 --output /tmp/essen1k.tfrecord.gz   # .gz: gzip
  python data/build_essen.py --full        # every tune -> data/melody/essen_full.tfrecord

The subset takes tunes evenly spaced over the whole collection (in sorted file and
tune order), so it is deterministic and spans every region and tunebook.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from music_rnn import convert  # pylint: disable=g-import-not-at-top,wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SUBSET = 400
SUBSET_OUTPUT = os.path.join(HERE, 'melody', 'essen_subset.tfrecord')
FULL_OUTPUT = os.path.join(HERE, 'melody', 'essen_full.tfrecord')


def essen_dir() -> str:
  """The essenFolksong folder of the installed music21 corpus."""
  import music21  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(music21.__file__), 'corpus', 'essenFolksong')
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{path} missing: this music21 install has no corpus')
  return path


def all_tunes(source: str):
  """[(relative path, tune number)] of every tune, in conversion order."""
  root, files = convert.find_inputs(source)
  tunes = []
  for path in files:
    if path.lower().endswith('.abc'):
      rel = os.path.relpath(path, root).replace(os.sep, '/')
      with open(path, 'rb') as f:
        text = f.read().decode('utf-8', 'replace')
      tunes += [(rel, number) for number, _ in convert.abc_tunes(text)]
  return tunes


def pick_subset(tunes, size: int):
  """`size` tunes evenly spaced over `tunes` (all of them if there are fewer)."""
  if size >= len(tunes):
    return set(tunes)
  return {tunes[i * len(tunes) // size] for i in range(size)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  which = parser.add_mutually_exclusive_group()
  which.add_argument('--subset', type=int, nargs='?', const=DEFAULT_SUBSET, default=None,
                     metavar='N', help=f'convert N tunes (the default, N={DEFAULT_SUBSET})')
  which.add_argument('--full', action='store_true', help='convert every tune')
  parser.add_argument('--output', help='TFRecord to write (.gz: gzip)')
  parser.add_argument('--source', help='essenFolksong folder (default: from music21)')
  parser.add_argument('--no-progress', action='store_true')
  args = parser.parse_args(argv)

  source = args.source or essen_dir()
  output = args.output or (FULL_OUTPUT if args.full else SUBSET_OUTPUT)
  tune_filter = None
  tunes = all_tunes(source)
  if not args.full:
    chosen = pick_subset(tunes, args.subset or DEFAULT_SUBSET)
    tune_filter = lambda rel, number: (rel, number) in chosen
  stats = convert.convert(source, output, progress=not args.no_progress,
                          tune_filter=tune_filter, collection_name='essen')
  print(stats.summary(max_failures=10), file=sys.stderr)
  print(json.dumps({'output': output, 'bytes': os.path.getsize(output),
                    'tunes_in_collection': len(tunes),
                    'counts': dict(sorted(stats.counts.items()))}, indent=2))
  return 0


if __name__ == '__main__':
  sys.exit(main())
