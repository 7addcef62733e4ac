"""TFRecord reading and writing that survives damaged files.

Corpora come from many places and a half-copied file is common; TensorFlow's readers
stop a whole job at the first bad byte. This reader keeps every good record before the
damage, counts what it had to give up, and never raises on bad data. The writer is
plain TFRecord (readable by `tf.data.TFRecordDataset`) without importing TensorFlow,
so the data tools stay light.
"""

import collections
import glob as glob_lib
import gzip
import logging
import os
import struct
import zlib
from typing import BinaryIO, Iterable, Iterator, List, Optional, Sequence, Union

try:
  import google_crc32c as _crc32c_lib  # ships with TFX's Google Cloud dependencies
except ImportError:  # pragma: no cover - exercised only without the venv
  _crc32c_lib = None

_GZIP_MAGIC = b'\x1f\x8b'
_HEADER = struct.Struct('<QI')  # record length, masked crc of the length
_CRC = struct.Struct('<I')
_CHUNK_BYTES = 1 << 20
_MASK_DELTA = 0xA282EAD8


def _make_crc32c_table() -> List[int]:
  table = []
  for i in range(256):
    crc = i
    for _ in range(8):
      crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    table.append(crc)
  return table


_CRC32C_TABLE = None if _crc32c_lib else _make_crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli), the checksum TFRecord uses."""
  if _crc32c_lib is not None:
    return _crc32c_lib.value(bytes(data))
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked checksum (a rotated CRC, so CRCs of CRCs stay useful)."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def _is_remote(path: str) -> bool:
  return '://' in path


def _open(path: str, mode: str) -> BinaryIO:
  if _is_remote(path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top; only for gs:// etc.
    return tf.io.gfile.GFile(path, mode)
  return open(path, mode)


def glob_files(file_pattern: Union[str, Sequence[str]]) -> List[str]:
  """Sorted files matching one pattern or several (a list or comma-separated)."""
  patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
  patterns = [p.strip() for pat in patterns for p in pat.split(',') if p.strip()]
  files = set()
  for pattern in patterns:
    if _is_remote(pattern):
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      files.update(tf.io.gfile.glob(pattern))
    else:
      files.update(f for f in glob_lib.glob(pattern, recursive=True) if os.path.isfile(f))
  return sorted(files)


def is_gzip_file(path: str) -> bool:
  """Whether the file starts with the gzip magic (TFX writes .gz TFRecords)."""
  with _open(path, 'rb') as f:
    return f.read(2) == _GZIP_MAGIC


class _StreamError(Exception):
  """The byte stream itself is damaged (truncated or corrupt compression)."""


def _byte_chunks(path: str) -> Iterator[bytes]:
  """Yields the file's (decompressed) bytes; raises _StreamError where they end badly.

  Decompresses by hand rather than with gzip.open so that bytes decoded before a
  damaged spot are always handed out first.
  """
  with _open(path, 'rb') as f:
    first = f.read(_CHUNK_BYTES)
    if first[:2] != _GZIP_MAGIC:
      chunk = first
      while chunk:
        yield chunk
        chunk = f.read(_CHUNK_BYTES)
      return
    decompressor = zlib.decompressobj(wbits=31)
    chunk = first
    while chunk:
      try:
        out = decompressor.decompress(chunk)
      except zlib.error as e:
        raise _StreamError(f'corrupt gzip data: {e}') from None
      if out:
        yield out
      if decompressor.eof:
        rest = decompressor.unused_data
        decompressor = zlib.decompressobj(wbits=31)  # concatenated gzip members
        if rest:
          chunk = rest
          continue
        # A clean end of a member: the file may hold another one.
        chunk = f.read(_CHUNK_BYTES)
        if chunk and chunk[:2] != _GZIP_MAGIC:
          raise _StreamError('trailing bytes after gzip data')
        if not chunk:
          return
        continue
      chunk = f.read(_CHUNK_BYTES)
    try:
      tail = decompressor.flush()
    except zlib.error as e:
      raise _StreamError(f'corrupt gzip data: {e}') from None
    if tail:
      yield tail
    raise _StreamError('gzip stream is truncated')


def iter_tfrecords(path: str, stats: Optional[collections.Counter] = None) -> Iterator[bytes]:
  """Yields the payload of every intact record of one TFRecord file (gzip or not).

  Damage is counted in stats['records_corrupt'] (once per bad record, or once for an
  unreadable rest of file) and logged with the byte offset; it never raises for it.
  A record whose payload checksum fails is skipped and reading goes on, since its
  framing is intact; a bad length header or a truncated file ends the file.
  """
  stats = stats if stats is not None else collections.Counter()
  buf = bytearray()
  pos = 0  # start of the unread part of buf
  offset = 0  # stream offset of buf[0], for messages
  chunks = _byte_chunks(path)
  stream_error = None
  while True:
    try:
      chunk = next(chunks)
    except StopIteration:
      break
    except _StreamError as e:
      stream_error = str(e)
      break
    except OSError as e:
      stream_error = f'read error: {e}'
      break
    del buf[:pos]
    offset += pos
    pos = 0
    buf += chunk
    while len(buf) - pos >= _HEADER.size:
      length, length_crc = _HEADER.unpack_from(buf, pos)
      if masked_crc32c(buf[pos:pos + 8]) != length_crc:
        _corrupt(stats, path, offset + pos, 'bad length checksum; skipping the rest')
        return
      end = pos + _HEADER.size + length + _CRC.size
      if len(buf) < end:
        break
      data = bytes(buf[pos + _HEADER.size:end - _CRC.size])
      (data_crc,) = _CRC.unpack_from(buf, end - _CRC.size)
      if masked_crc32c(data) != data_crc:
        _corrupt(stats, path, offset + pos, 'bad data checksum; record skipped')
      else:
        stats['records_read'] += 1
        yield data
      pos = end
  if stream_error:
    _corrupt(stats, path, offset + pos, stream_error)
  elif len(buf) > pos:
    _corrupt(stats, path, offset + pos, f'truncated record ({len(buf) - pos} bytes left)')


def _corrupt(stats: collections.Counter, path: str, offset: int, what: str) -> None:
  stats['records_corrupt'] += 1
  logging.warning('%s: damaged TFRecord at byte %d: %s', path, offset, what)


def encode_record(data: bytes) -> bytes:
  """One TFRecord frame around `data`."""
  length = struct.pack('<Q', len(data))
  return (length + _CRC.pack(masked_crc32c(length)) + data +
          _CRC.pack(masked_crc32c(data)))


def write_tfrecords(path: str, records: Iterable[bytes], compress: bool = False) -> int:
  """Writes `records` to a TFRecord file (gzip when `compress`); returns the count."""
  count = 0
  parent = os.path.dirname(path)
  if parent and not _is_remote(path):
    os.makedirs(parent, exist_ok=True)
  with _open(path, 'wb') as raw:
    # mtime=0 keeps gzip output byte-identical from run to run.
    f = gzip.GzipFile(filename='', fileobj=raw, mode='wb', mtime=0) if compress else raw
    try:
      for data in records:
        f.write(encode_record(data))
        count += 1
    finally:
      if compress:
        f.close()
  return count
