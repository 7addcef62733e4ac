"""Where a model is named, accept a local path, a `.tar.gz` archive URL or a TF Hub handle.

`resolve(name)` returns a local directory. Local paths come back as they are; archive URLs
(http://, https://, gs://) and hub handles (e.g. https://tfhub.dev/...) are downloaded,
unpacked and cached by `tensorflow_hub` (`hub.resolve`): once per handle, under
$TFHUB_CACHE_DIR, or ~/.cache/music-rnn/tfhub_modules when that is unset. A second call
with the same name reads the cache and makes no request. (Under
TFHUB_MODEL_LOAD_FORMAT=UNCOMPRESSED a hub handle resolves to the gs:// directory
tensorflow_hub reads in place; archive URLs are always downloaded.)
"""

import contextlib
import os
import tarfile
import urllib.error
import urllib.parse
import zlib

ARCHIVE_SUFFIXES = ('.tar.gz', '.tgz', '.tar')
CACHE_ENV = 'TFHUB_CACHE_DIR'  # tensorflow_hub's own setting
_REMOTE_PREFIXES = ('http://', 'https://', 'gs://')


def default_cache_dir() -> str:
  """~/.cache/music-rnn/tfhub_modules (XDG_CACHE_HOME honoured): kept across reboots,
  unlike tensorflow_hub's own fallback under the system temp dir."""
  root = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(root, 'music-rnn', 'tfhub_modules')


def cache_dir() -> str:
  """Where resolved handles are cached: $TFHUB_CACHE_DIR, else default_cache_dir()."""
  return os.environ.get(CACHE_ENV) or default_cache_dir()


def is_remote(name: str) -> bool:
  """True for names resolve() downloads (http(s) and gs:// archives, hub handles)."""
  return name.startswith(_REMOTE_PREFIXES)


def is_archive_url(name: str) -> bool:
  """True for a remote name whose path (query aside) ends like a tar archive."""
  return is_remote(name) and urllib.parse.urlparse(name).path.endswith(ARCHIVE_SUFFIXES)


def resolve(name: str) -> str:
  """A local directory holding the model `name` names (see the module docstring).

  Raises:
    FileNotFoundError: a local path that does not exist.
    ValueError: a URL or handle that cannot be fetched or is not a model archive (the
      message names it and, for HTTP, the status); nothing is left in the cache.
  """
  if not name:
    raise ValueError('empty model name: give a local path, a .tar.gz URL or a hub handle')
  if not is_remote(name):
    if not os.path.exists(name):
      raise FileNotFoundError(f'{name} does not exist (a model is a local path, an '
                              'http(s):// or gs:// .tar.gz URL, or a TF Hub handle)')
    return name
  if name.startswith('gs://') and not is_archive_url(name):
    return name  # a SavedModel directory on GCS: TensorFlow reads it in place
  return _download(name)


@contextlib.contextmanager
def _hub_cache_env():
  """Points tensorflow_hub at cache_dir() for the duration (it reads the env var)."""
  previous = os.environ.get(CACHE_ENV)
  os.environ[CACHE_ENV] = cache_dir()
  try:
    yield
  finally:
    if previous is None:
      del os.environ[CACHE_ENV]
    else:
      os.environ[CACHE_ENV] = previous


def _download(name: str) -> str:
  """hub.resolve, its errors turned into one ValueError naming the URL."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
  try:
    with _hub_cache_env():
      return _resolver(name)(name) if is_archive_url(name) else hub.resolve(name)
  except urllib.error.HTTPError as e:
    raise ValueError(f'cannot download {name}: HTTP {e.code} {e.reason}') from None
  except urllib.error.URLError as e:
    raise ValueError(f'cannot download {name}: {e.reason}') from None
  except (tarfile.TarError, EOFError, zlib.error) as e:
    raise ValueError(f'{name} is not a readable .tar.gz archive ({e})') from None
  except tf.errors.OpError as e:
    raise ValueError(f'cannot read {name}: {e.message}') from None
  except ValueError as e:  # e.g. links in the archive, no GCS redirect for UNCOMPRESSED
    raise ValueError(f'cannot resolve {name}: {e}') from None
  except OSError as e:
    if e.errno is None:  # tensorflow_hub's own IOError for what tarfile cannot read
      raise ValueError(f'{name} is not a readable .tar.gz archive (truncated, or not '
                       'gzip/tar data)') from None
    raise ValueError(f'cannot cache {name} in {cache_dir()}: {e}') from None


def _resolver(name: str):
  """tensorflow_hub's compressed-archive resolver for an archive URL.

  hub.resolve would hand http(s) URLs to its uncompressed (GCS-redirect) resolver when
  TFHUB_MODEL_LOAD_FORMAT=UNCOMPRESSED; an archive can only be read compressed.
  """
  from tensorflow_hub import compressed_module_resolver  # pylint: disable=g-import-not-at-top
  if name.startswith('gs://'):
    return compressed_module_resolver.GcsCompressedFileResolver()
  return compressed_module_resolver.HttpCompressedFileResolver()


def resolve_file(name: str, suffix: str) -> str:
  """A local file ending in `suffix` (e.g. '.mag'): `name` itself when local, else the one
  such file in the archive `name` resolves to."""
  path = resolve(name)
  if not os.path.isdir(path):
    return path
  found = sorted(os.path.join(d, f) for d, _, files in os.walk(path) for f in files
                 if f.endswith(suffix))
  if len(found) != 1:
    what = 'no' if not found else f'{len(found)}'
    raise ValueError(f'{name}: expected one {suffix} file in it, found {what} (in {path})')
  return found[0]
