"""`music-rnn package`: a pushed SavedModel as a TF Hub compatible `.tar.gz`.

tensorflow_hub unpacks an archive's members under its cache dir as they are named, so the
SavedModel's files sit at the archive root (saved_model.pb, variables/, assets/,
assets.extra/), only regular files and directories (its extractor rejects links), like
`tar -czf model.tar.gz -C MODEL_DIR .`. Serve the file anywhere (https://, gs://) and name
it with `--model URL` (music_rnn/model_handles.py).
"""

import os
import tarfile
import tempfile

from music_rnn import export

ARCHIVE_SUFFIXES = ('.tar.gz', '.tgz')


def check_saved_model(model_dir: str, what: str = '', hint: str = '') -> None:
  """Fails clearly unless `model_dir` holds one of our SavedModels (a model_config
  signature), reading only saved_model.pb (local or gs://), without loading the graph. `what` names the
  flag in messages; `hint` says what to give instead."""
  from google.protobuf import message  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
  where = f'{what} ({model_dir})' if what else model_dir
  if not tf.io.gfile.isdir(model_dir):
    raise FileNotFoundError(f'{where} is not a directory')
  pb_path = os.path.join(model_dir, 'saved_model.pb')
  if not tf.io.gfile.exists(pb_path):
    raise ValueError(f'{where} is not a SavedModel (no saved_model.pb at its top level)'
                     + (f'; {hint}' if hint else ''))
  saved_model = saved_model_pb2.SavedModel()
  try:
    with tf.io.gfile.GFile(pb_path, 'rb') as f:
      saved_model.ParseFromString(f.read())
  except message.DecodeError as e:
    raise ValueError(f'{pb_path} is not a readable SavedModel: {e}') from None
  signatures = set()
  for meta_graph in saved_model.meta_graphs:
    signatures.update(k for k in meta_graph.signature_def if not k.startswith('__'))
  if export.CONFIG_SIGNATURE not in signatures:
    raise ValueError(f'{where} is a SavedModel but not a music-rnn model: no '
                     f'{export.CONFIG_SIGNATURE!r} signature (it has {sorted(signatures)})')


def _members(model_dir: str):
  """(path, name in the archive) of every dir and file, sorted so archives are stable."""
  for dirpath, dirnames, filenames in os.walk(model_dir, followlinks=True):
    dirnames.sort()
    rel = os.path.relpath(dirpath, model_dir)
    if rel != '.':
      yield dirpath, rel
    for name in sorted(filenames):
      yield os.path.join(dirpath, name), os.path.normpath(os.path.join(rel, name))


def _normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
  """No owner or host details in the archive (tf-hub's own guide: --owner=0 --group=0)."""
  info.uid = info.gid = 0
  info.uname = info.gname = ''
  return info


def package(model_dir: str, output: str) -> str:
  """Writes `model_dir` (a pushed SavedModel) to the archive `output`; returns `output`.

  The archive is written beside `output` and renamed into place, so a failure leaves no
  partial file behind.
  """
  if not output.endswith(ARCHIVE_SUFFIXES):
    raise ValueError(f'--output {output}: name the archive .tar.gz (or .tgz)')
  if '://' in model_dir:
    raise ValueError(f'--model-dir {model_dir}: give a local directory (copy it first)')
  check_saved_model(model_dir, '--model-dir',
                    'give a pushed model dir, e.g. serving/models/<config>/<version>')
  out_dir = os.path.dirname(os.path.abspath(output))
  os.makedirs(out_dir, exist_ok=True)
  fd, tmp_path = tempfile.mkstemp(prefix='.package-', suffix='.tmp', dir=out_dir)
  try:
    with os.fdopen(fd, 'wb') as f, tarfile.open(
        fileobj=f, mode='w:gz', dereference=True) as tar:
      for path, name in _members(model_dir):
        info = _normalized(tar.gettarinfo(path, arcname=name))
        if info.isfile():
          with open(path, 'rb') as member:
            tar.addfile(info, member)
        else:
          tar.addfile(info)
    os.replace(tmp_path, output)
  except BaseException:
    os.remove(tmp_path)
    raise
  return output
