"""Builds a large drum corpus by rendering MMA's groove library to MIDI (`make data-full`).

MMA (Musical MIDI Accompaniment, Debian package `mma`, GPL-2+) ships ~2,000 named
accompaniment grooves, nearly all with General MIDI drum parts. For each groove we
write a tiny song (the groove over BARS bars of a I-vi-IV-V7 progression), render it
with MMA, and store the MIDI as a NoteSequence with id 'mma/<library file>/<groove>'.
MMA runs from the package's files in a temporary directory (nothing is installed);
renders run in parallel.

  python data/build_mma.py                       # apt-get download mma first
  python data/build_mma.py --deb mma_21.09-1_all.deb --limit 50 --output /tmp/mma50.tfrecord
"""

import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import List, Tuple

import note_seq

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..'))
sys.path.insert(0, HERE)
import build_freedoom  # pylint: disable=g-import-not-at-top,wrong-import-position
from music_rnn import io_utils  # pylint: disable=g-import-not-at-top,wrong-import-position

DEFAULT_OUTPUT = os.path.join(HERE, 'drums', 'mma_grooves.tfrecord')
PACKAGE = 'mma'
PROGRESSION = ('C', 'Am', 'F', 'G7')
_DEFGROOVE = re.compile(r'^\s*defgroove\s+(\S+)', re.IGNORECASE | re.MULTILINE)


def unpack_mma(deb: str, dest: str) -> Tuple[str, str]:
  """Extracts MMA from its .deb into dest; returns (mma script, MMA_HOME)."""
  with build_freedoom.deb_data_tar(deb) as tar:
    members = [m for m in tar.getmembers()
               if m.name.lstrip('./').startswith(('usr/share/mma/', 'usr/bin/mma'))]
    tar.extractall(dest, members=members, filter='data')
  return (os.path.join(dest, 'usr', 'bin', 'mma'),
          os.path.join(dest, 'usr', 'share', 'mma'))


def list_grooves(mma_home: str) -> List[Tuple[str, str]]:
  """(library file without .mma, groove name) for every DefGroove, in sorted order."""
  lib = os.path.join(mma_home, 'lib')
  grooves = []
  for directory, _, names in sorted(os.walk(lib)):
    for name in sorted(names):
      if not name.endswith('.mma'):
        continue
      path = os.path.join(directory, name)
      rel = os.path.relpath(path, lib)[:-len('.mma')].replace(os.sep, '/')
      with open(path, encoding='latin-1') as f:
        seen = set()
        for groove in _DEFGROOVE.findall(f.read()):
          if groove.lower() not in seen:  # MMA names are case-insensitive
            seen.add(groove.lower())
            grooves.append((rel, groove))
  return sorted(grooves, key=lambda g: (g[0], g[1].lower()))


def render(mma: str, mma_home: str, work: str, index: int, lib_file: str, groove: str,
           bars: int) -> Tuple[bytes, str]:
  """Renders one groove; returns (MIDI bytes, '') or (b'', error message)."""
  song = os.path.join(work, f'{index}.mma')
  midi = os.path.join(work, f'{index}.mid')
  chords = '\n'.join(PROGRESSION[i % len(PROGRESSION)] for i in range(bars))
  with open(song, 'w') as f:
    f.write(f'Use {lib_file}\nTempo 120\nGroove {groove}\n{chords}\n')
  env = dict(os.environ, MMA_HOME=mma_home)
  try:
    proc = subprocess.run([sys.executable, mma, '-w', '-f', midi, song], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
  except subprocess.TimeoutExpired:
    return b'', 'mma timed out'
  if proc.returncode != 0 or not os.path.exists(midi):
    lines = [l for l in (proc.stdout + proc.stderr).splitlines() if 'Error' in l]
    return b'', (lines[0] if lines else f'mma exited with {proc.returncode}')[:200]
  with open(midi, 'rb') as f:
    data = f.read()
  os.remove(midi)
  os.remove(song)
  return data, ''


def keep_drums_only(ns) -> None:
  """Drops every pitched note and instrument setting: the committed drum corpus is ~12x
  smaller than the full rendering, and drum_kit reads nothing else."""
  drums = [n for n in ns.notes if n.is_drum]
  del ns.notes[:]
  ns.notes.extend(drums)
  del ns.instrument_infos[:]
  del ns.pitch_bends[:]
  del ns.control_changes[:]
  ns.total_time = max((n.end_time for n in drums), default=0.0)


def build(deb: str, output: str, bars: int, jobs: int, limit: int = 0,
          drums_only: bool = False) -> dict:
  """Renders and converts the grooves; writes `output`; returns a summary."""
  start = time.time()
  with tempfile.TemporaryDirectory() as tmp:
    mma, mma_home = unpack_mma(deb, os.path.join(tmp, 'root'))
    # The groove database maps groove names to library files; MMA needs it to run.
    subprocess.run([sys.executable, mma, '-G', '-w'], env=dict(os.environ, MMA_HOME=mma_home),
                   capture_output=True, check=True)
    grooves = list_grooves(mma_home)
    if limit:
      grooves = grooves[:limit]
    work = os.path.join(tmp, 'work')
    os.makedirs(work)
    failures, sequences = {}, []
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
      futures = [pool.submit(render, mma, mma_home, work, i, lib_file, groove, bars)
                 for i, (lib_file, groove) in enumerate(grooves)]
      for n, ((lib_file, groove), future) in enumerate(zip(grooves, futures), start=1):
        data, error = future.result()
        piece_id = f'mma/{lib_file}/{groove}'
        if n % 100 == 0 or n == len(grooves):
          print(f'{n}/{len(grooves)} grooves rendered', file=sys.stderr)
        if error:
          failures[piece_id] = error
          continue
        try:
          ns = note_seq.midi_to_note_sequence(data)
        except Exception as e:  # pylint: disable=broad-except
          failures[piece_id] = f'{type(e).__name__}: {e}'[:200]
          continue
        if drums_only:
          keep_drums_only(ns)
        if not ns.notes:
          failures[piece_id] = 'no drum notes' if drums_only else 'no notes'
          continue
        ns.id = ns.filename = piece_id
        ns.collection_name = 'mma'
        sequences.append(ns)
  io_utils.write_tfrecords(output, (ns.SerializeToString(deterministic=True)
                                    for ns in sequences), compress=output.endswith('.gz'))
  return {
      'output': output,
      'bytes': os.path.getsize(output),
      'grooves': len(grooves),
      'pieces': len(sequences),
      'with_drums': sum(1 for ns in sequences if any(n.is_drum for n in ns.notes)),
      'notes': sum(len(ns.notes) for ns in sequences),
      'seconds': round(time.time() - start, 1),
      'failures': failures,
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--deb', help='path to mma_*.deb (default: apt-get download mma)')
  parser.add_argument('--output', default=DEFAULT_OUTPUT, help='TFRecord (.gz: gzip)')
  parser.add_argument('--bars', type=int, default=16, help='bars rendered per groove')
  parser.add_argument('--jobs', type=int, default=os.cpu_count() or 1)
  parser.add_argument('--limit', type=int, default=0, help='only the first N grooves')
  parser.add_argument('--drums-only', action='store_true',
                      help='keep only drum notes (data/drums/mma_drums.tfrecord.gz)')
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    deb = args.deb or build_freedoom.download_deb(PACKAGE, tmp)
    summary = build(deb, args.output, args.bars, args.jobs, args.limit, args.drums_only)
  print(json.dumps(summary, indent=2))
  return 0


if __name__ == '__main__':
  sys.exit(main())
