"""Builds data/drums/freedoom.tfrecord.gz: the Freedoom soundtrack as NoteSequences.

Freedoom (BSD-style licence) ships two IWADs whose music lumps (named D_*) are
standard MIDI files with General MIDI drum parts: a small, redistributable,
real-music drum corpus. We read the Debian package (a .deb, or its extracted tree),
walk each WAD's lump directory, keep the D_* lumps, drop byte-identical duplicates
(the same tune reused under another name), and write one NoteSequence per tune with
id 'freedoom1/D_E1M1' etc.

  python data/build_freedoom.py                      # apt-get download freedoom first
  python data/build_freedoom.py --deb freedoom_0.12.1-2_all.deb
  python data/build_freedoom.py --root /path/to/extracted/deb
"""

import argparse
import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
from typing import Dict, Iterator, List, Tuple

import note_seq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from music_rnn import io_utils  # pylint: disable=g-import-not-at-top,wrong-import-position

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUTPUT = os.path.join(HERE, 'drums', 'freedoom.tfrecord.gz')
WADS = ('freedoom1', 'freedoom2')
WAD_DIR = 'usr/share/games/doom'
COPYRIGHT = 'usr/share/doc/freedoom/copyright'
PACKAGE = 'freedoom'

_WAD_HEADER = struct.Struct('<4sii')  # ident ('IWAD'/'PWAD'), lump count, directory offset
_WAD_ENTRY = struct.Struct('<ii8s')  # file offset, size, name (NUL-padded)


def wad_lumps(wad: bytes) -> Iterator[Tuple[str, bytes]]:
  """(name, data) for every lump of a WAD, in directory order."""
  ident, num_lumps, dir_offset = _WAD_HEADER.unpack_from(wad, 0)
  if ident not in (b'IWAD', b'PWAD'):
    raise ValueError(f'not a WAD file (ident {ident!r})')
  for i in range(num_lumps):
    pos, size, raw_name = _WAD_ENTRY.unpack_from(wad, dir_offset + i * _WAD_ENTRY.size)
    name = raw_name.split(b'\0', 1)[0].decode('ascii', 'replace')
    yield name, wad[pos:pos + size]


def deb_data_tar(deb_path: str) -> tarfile.TarFile:
  """The data.tar.* member of a .deb (an `ar` archive), opened, without dpkg."""
  with open(deb_path, 'rb') as f:
    blob = f.read()
  if not blob.startswith(b'!<arch>\n'):
    raise ValueError(f'{deb_path} is not a .deb (ar) archive')
  pos = 8
  while pos + 60 <= len(blob):
    header = blob[pos:pos + 60]
    name = header[:16].decode('ascii').strip().rstrip('/')
    size = int(header[48:58].decode('ascii').strip())
    if name.startswith('data.tar'):
      # tarfile detects gzip/bz2/xz; a zstd-compressed .deb would need dpkg-deb.
      return tarfile.open(fileobj=io.BytesIO(blob[pos + 60:pos + 60 + size]), mode='r:*')
    pos += 60 + size + (size % 2)
  raise ValueError(f'{deb_path} has no data.tar member')


def deb_members(deb_path: str, wanted: List[str]) -> Dict[str, bytes]:
  """The contents of the files `wanted` (paths like 'usr/share/...') in a .deb."""
  found = {}
  with deb_data_tar(deb_path) as tar:
    for member in tar:
      path = member.name.lstrip('./')
      if path in wanted and member.isfile():
        found[path] = tar.extractfile(member).read()
  missing = sorted(set(wanted) - set(found))
  if missing:
    raise ValueError(f'{deb_path} lacks {missing}')
  return found


def download_deb(package: str, dest_dir: str) -> str:
  """`apt-get download PACKAGE` into dest_dir; returns the .deb's path."""
  print(f'Downloading the {package} package with apt-get download ...', file=sys.stderr)
  subprocess.run(['apt-get', 'download', package], cwd=dest_dir, check=True)
  debs = sorted(f for f in os.listdir(dest_dir) if f.endswith('.deb'))
  if len(debs) != 1:
    raise RuntimeError(f'expected one .deb from apt-get download, got {debs}')
  return os.path.join(dest_dir, debs[0])


def read_package(deb: str = None, root: str = None) -> Dict[str, bytes]:
  """The WADs and the copyright file, from a .deb, an extracted tree, or apt."""
  wanted = [f'{WAD_DIR}/{w}.wad' for w in WADS] + [COPYRIGHT]
  if root:
    out = {}
    for rel in wanted:
      with open(os.path.join(root, rel), 'rb') as f:
        out[rel] = f.read()
    return out
  if deb:
    return deb_members(deb, wanted)
  with tempfile.TemporaryDirectory() as tmp:
    return deb_members(download_deb(PACKAGE, tmp), wanted)


def build(package: Dict[str, bytes], output: str, midi_dir: str = None) -> dict:
  """Converts the music lumps and writes the TFRecord and licence; returns a summary.

  With `midi_dir`, also saves each distinct lump as <wad>_<lump>.mid there.
  """
  seen = {}  # content hash -> id of the first lump with that content
  sequences, duplicates, failures = [], {}, {}
  for wad_name in WADS:
    for lump_name, data in wad_lumps(package[f'{WAD_DIR}/{wad_name}.wad']):
      if not lump_name.startswith('D_'):
        continue
      piece_id = f'{wad_name}/{lump_name}'
      digest = hashlib.sha256(data).hexdigest()
      if digest in seen:
        duplicates[piece_id] = seen[digest]
        continue
      seen[digest] = piece_id
      if midi_dir:
        os.makedirs(midi_dir, exist_ok=True)
        with open(os.path.join(midi_dir, piece_id.replace('/', '_') + '.mid'), 'wb') as f:
          f.write(data)
      try:
        ns = note_seq.midi_to_note_sequence(data)
      except Exception as e:  # pylint: disable=broad-except; e.g. a MUS-format lump
        failures[piece_id] = f'{type(e).__name__}: {e}'
        continue
      ns.id = piece_id
      ns.filename = piece_id
      ns.collection_name = 'freedoom'
      sequences.append(ns)
  # Gzip: 6.3 MB of protos become 1.7 MB, small enough to commit.
  io_utils.write_tfrecords(
      output, (ns.SerializeToString(deterministic=True) for ns in sequences),
      compress=output.endswith('.gz'))
  with open(os.path.join(os.path.dirname(output), 'FREEDOOM-COPYING'), 'wb') as f:
    f.write(package[COPYRIGHT])
  return {
      'output': output,
      'bytes': os.path.getsize(output),
      'pieces': len(sequences),
      'notes': sum(len(ns.notes) for ns in sequences),
      'drum_notes': sum(1 for ns in sequences for n in ns.notes if n.is_drum),
      'hours': round(sum(ns.total_time for ns in sequences) / 3600, 2),
      'duplicates': duplicates,
      'failures': failures,
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  source = parser.add_mutually_exclusive_group()
  source.add_argument('--deb', help='path to freedoom_*.deb (default: apt-get download)')
  source.add_argument('--root', help='directory the .deb was extracted into (dpkg-deb -x)')
  parser.add_argument('--output', default=DEFAULT_OUTPUT)
  parser.add_argument('--midi-dir', help='also save the MIDI lumps as .mid files here')
  args = parser.parse_args(argv)
  summary = build(read_package(args.deb, args.root), args.output, args.midi_dir)
  print(json.dumps(summary, indent=2))
  return 1 if summary['failures'] else 0


if __name__ == '__main__':
  sys.exit(main())
