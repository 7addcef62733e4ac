"""Models named by path, archive URL or TF Hub handle: `music-rnn package` writes a tiny
real export as a hub archive, a real HTTP server on 127.0.0.1 serves it, and `music-rnn
generate --model URL` downloads it once through tensorflow_hub's cache and generates."""

import functools
import http.server
import os
import pathlib
import subprocess
import tarfile
import threading

import pytest

from music_rnn import cli
from music_rnn import model_handles

MUSIC_RNN = str(pathlib.Path(__file__).resolve().parents[1] / '.venv' / 'bin' / 'music-rnn')
GENERATE_ARGS = ['--num-outputs', '1', '--num-steps', '8', '--seed', '1']


@pytest.fixture(scope='module')
def tiny_export(tmp_path_factory):
  """A real (untrained) drum_kit SavedModel: Transform on 3 bundled pieces, one 8-unit layer,
  plain-TF generation signatures (no XLA compile on every load)."""
  import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top
  from music_rnn import configs, export, model as model_lib  # pylint: disable=g-import-not-at-top
  from tests.conftest import bundled_raw_splits, run_transform  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('tiny')
  run_transform(root, 'drum_kit', {'train': bundled_raw_splits('drum_kit', 3)['train']})
  config = configs.get_config('drum_kit')
  hparams = config.hparams.replace(rnn_layer_sizes=(8,))
  return export.export_serving_model(
      model_lib.build_model(config, hparams), config, hparams,
      tft.TFTransformOutput(str(root / 'transform_output')), str(root / 'export'),
      jit_compile=False)


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
  """Serves a directory and records every GET path (query stripped)."""

  def do_GET(self):
    self.server.requests.append(self.path.split('?')[0])
    super().do_GET()

  def log_message(self, *args):
    pass


@pytest.fixture(scope='module')
def server(tmp_path_factory):
  """(base URL, served dir, list of requested paths) of a live http.server on a free port."""
  served = tmp_path_factory.mktemp('served')
  httpd = http.server.ThreadingHTTPServer(
      ('127.0.0.1', 0), functools.partial(_CountingHandler, directory=str(served)))
  httpd.requests = []
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield f'http://127.0.0.1:{httpd.server_address[1]}', served, httpd.requests
  httpd.shutdown()
  thread.join()
  httpd.server_close()


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
  cache = tmp_path / 'tfhub_cache'
  monkeypatch.setenv('TFHUB_CACHE_DIR', str(cache))
  return cache


def _run_cli(*args, env_extra=None):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **(env_extra or {}))
  return subprocess.run([MUSIC_RNN, *args], env=env, capture_output=True, text=True,
                        timeout=300)


def test_package_writes_a_hub_archive(tiny_export, tmp_path, capsys):
  archive = tmp_path / 'out' / 'model.tar.gz'
  assert cli.main(['package', '--model-dir', tiny_export, '--output', str(archive)]) == 0
  assert f'wrote {archive}' in capsys.readouterr().out
  with tarfile.open(archive) as tar:
    members = tar.getmembers()
  names = {m.name for m in members}
  # tensorflow_hub unpacks members as named: the SavedModel sits at the archive root.
  assert {'saved_model.pb', 'variables/variables.index', 'assets.extra/model_config.json'} <= names
  assert all(m.isfile() or m.isdir() for m in members)
  assert all(m.uid == 0 and not m.uname for m in members)
  assert not [p for p in archive.parent.iterdir() if p != archive]  # no temporary left


def _signature_only_model(path):
  """A SavedModel that is not ours: no model_config signature."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  module = tf.Module()
  module.f = tf.function(lambda: {'y': tf.constant(1)}, input_signature=[])
  tf.saved_model.save(module, str(path), signatures={'other': module.f})
  return path


@pytest.mark.parametrize('case', ['missing', 'not_saved_model', 'foreign', 'bad_suffix'])
def test_package_bad_input_is_one_clear_error(tiny_export, tmp_path, capsys, case):
  model_dir, output = tiny_export, tmp_path / 'model.tar.gz'
  if case == 'missing':
    model_dir, expected = str(tmp_path / 'nope'), 'is not a directory'
  elif case == 'not_saved_model':
    model_dir, expected = str(tmp_path), 'is not a SavedModel (no saved_model.pb'
  elif case == 'foreign':
    model_dir = str(_signature_only_model(tmp_path / 'foreign'))
    expected = "not a music-rnn model: no 'model_config' signature (it has ['other'])"
  else:
    output, expected = tmp_path / 'model.zip', 'name the archive .tar.gz'
  assert cli.main(['package', '--model-dir', model_dir, '--output', str(output)]) == 2
  err = capsys.readouterr().err
  assert err.startswith('music-rnn package: error: ') and expected in err, err
  assert not output.exists()


def test_generate_from_url_downloads_once_and_caches(tiny_export, server, hub_cache,
                                                     tmp_path, capsys):
  base, served, requests = server
  from music_rnn import model_archive  # pylint: disable=g-import-not-at-top
  model_archive.package(tiny_export, str(served / 'drums.tar.gz'))
  url = f'{base}/drums.tar.gz'
  first = _run_cli('generate', '--model', url, '--output-dir', str(tmp_path / 'a'),
                   *GENERATE_ARGS, env_extra={'TFHUB_CACHE_DIR': str(hub_cache)})
  assert first.returncode == 0, first.stderr[-3000:]
  assert requests.count('/drums.tar.gz') == 1
  (cached,) = [p for p in hub_cache.iterdir() if p.is_dir()]
  assert (cached / 'saved_model.pb').exists()
  assert str(cached) in first.stdout  # generate loaded the cached copy
  assert len(list((tmp_path / 'a').glob('*.mid'))) == 1

  # Again, in this process: the cache answers, the server sees no second request.
  capsys.readouterr()
  assert cli.main(['generate', '--model', url, '--output-dir', str(tmp_path / 'b'),
                   *GENERATE_ARGS]) == 0
  assert requests.count('/drums.tar.gz') == 1
  assert len(list((tmp_path / 'b').glob('*.mid'))) == 1
  assert model_handles.resolve(url) == str(cached)


def test_archive_url_ignores_uncompressed_load_format(tiny_export, server, hub_cache,
                                                      monkeypatch):
  """TFHUB_MODEL_LOAD_FORMAT=UNCOMPRESSED makes hub.resolve expect a GCS redirect for
  http handles; an archive URL is still downloaded and unpacked."""
  base, served, requests = server
  from music_rnn import model_archive  # pylint: disable=g-import-not-at-top
  model_archive.package(tiny_export, str(served / 'again.tgz'))
  monkeypatch.setenv('TFHUB_MODEL_LOAD_FORMAT', 'UNCOMPRESSED')
  path = model_handles.resolve(f'{base}/again.tgz?version=2')  # a query does not hide it
  assert os.path.isfile(os.path.join(path, 'saved_model.pb'))
  assert requests.count('/again.tgz') == 1


def test_404_is_one_clear_error_and_caches_nothing(server, hub_cache, tmp_path):
  base, _, requests = server
  url = f'{base}/missing.tar.gz'
  proc = _run_cli('generate', '--model', url, '--output-dir', str(tmp_path / 'out'),
                  *GENERATE_ARGS, env_extra={'TFHUB_CACHE_DIR': str(hub_cache)})
  assert proc.returncode == 2
  assert f'music-rnn generate: error: cannot download {url}: HTTP 404' in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert '/missing.tar.gz' in requests
  assert not list(hub_cache.glob('*'))  # tensorflow_hub made the dir, kept nothing in it
  assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('case, expected', [
    ('not_gzip', 'is not a readable .tar.gz archive'),
    ('truncated', 'is not a readable .tar.gz archive'),
    ('not_a_model', 'is not a SavedModel (no saved_model.pb at its top level)'),
])
def test_bad_archives_are_one_clear_error(tiny_export, server, hub_cache, tmp_path, capsys,
                                          case, expected):
  base, served, _ = server
  from music_rnn import model_archive  # pylint: disable=g-import-not-at-top
  name = f'{case}.tar.gz'
  if case == 'not_gzip':
    (served / name).write_bytes(b'plain text')
  elif case == 'truncated':
    data = pathlib.Path(model_archive.package(tiny_export, str(tmp_path / 'm.tar.gz'))).read_bytes()
    (served / name).write_bytes(data[:len(data) // 2])
  else:
    with tarfile.open(served / name, 'w:gz') as tar:
      tar.add(tiny_export, arcname='export')  # one level too deep: the usual mistake
  assert cli.main(['generate', '--model', f'{base}/{name}', '--output-dir', str(tmp_path / 'o'),
                   *GENERATE_ARGS]) == 2
  err = capsys.readouterr().err
  assert f'{base}/{name}' in err and expected in err, err
  if case != 'not_a_model':  # nothing half-unpacked was kept
    assert not list(hub_cache.glob('*'))


def test_local_paths_and_default_cache(tmp_path, monkeypatch, server):
  assert model_handles.resolve(str(tmp_path)) == str(tmp_path)
  with pytest.raises(FileNotFoundError, match='nope does not exist'):
    model_handles.resolve(str(tmp_path / 'nope'))
  with pytest.raises(ValueError, match='empty model name'):
    model_handles.resolve('')
  monkeypatch.delenv('TFHUB_CACHE_DIR', raising=False)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  base, served, _ = server
  with tarfile.open(served / 'bundle.tar.gz', 'w:gz') as tar:
    (tmp_path / 'drum_kit_rnn.mag').write_bytes(b'bundle bytes')
    tar.add(tmp_path / 'drum_kit_rnn.mag', arcname='drum_kit_rnn.mag')
  mag = model_handles.resolve_file(f'{base}/bundle.tar.gz', '.mag')
  assert mag.startswith(str(tmp_path / 'xdg' / 'music-rnn' / 'tfhub_modules'))
  assert pathlib.Path(mag).read_bytes() == b'bundle bytes'
  assert 'TFHUB_CACHE_DIR' not in os.environ  # set only while tensorflow_hub ran
  local = tmp_path / 'drum_kit_rnn.mag'
  assert model_handles.resolve_file(str(local), '.mag') == str(local)
  with pytest.raises(ValueError, match=r'expected one \.mid file in it, found no'):
    model_handles.resolve_file(str(tmp_path / 'xdg'), '.mid')  # a dir holding no .mid
