"""Kubeflow Pipelines up to the cluster boundary (no cluster, no Docker daemon here).

Compiles the one create_pipeline for both model kinds of both families (event RNNs and
MusicVAEs) with KubeflowV2DagRunner, parses
the specs with KFP's pipeline-spec protos and KFP's own loader, checks every component's
image, command, arguments and wiring, and imports every module path the specs name from
an emulated image layout: the package installed from the context build_image.sh stages.
"""

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import sysconfig

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner
from tfx.utils import name_utils

from music_rnn import configs
from pipeline import pipeline as pipeline_lib

from tests.conftest import PROJECT_ROOT

KUBEFLOW_DIR = os.path.join(PROJECT_ROOT, 'kubeflow')
IMAGE = 'europe-west4-docker.pkg.dev/my-project/music/music-rnn-tfx:test'
PIPELINE_ROOT = 'gs://my-bucket/music-rnn'
DATA = {'drum_kit': 'gs://my-bucket/data/drums/*.tfrecord*',
        'attention_rnn': 'gs://my-bucket/data/melody',
        'cat-drums_2bar_small': 'gs://my-bucket/data/drums',
        'cat-mel_2bar_small': 'gs://my-bucket/data/melody/*.tfrecord'}
# Each family's own hparam names (an RNN's are unknown to a MusicVAE and the reverse).
HPARAMS = {'drum_kit': 'rnn_layer_sizes=[64,64]', 'attention_rnn': 'rnn_layer_sizes=[64,64]',
           'cat-drums_2bar_small': 'z_size=64,dec_rnn_size=[64,64]',
           'cat-mel_2bar_small': 'z_size=64,dec_rnn_size=[64,64]'}
DATAFLOW_ARGS = ['--runner=DataflowRunner', '--project=my-project', '--region=europe-west4',
                 '--temp_location=gs://my-bucket/tmp', f'--sdk_container_image={IMAGE}',
                 '--experiments=use_runner_v2']
BEAM_COMPONENTS = ('NoteSequenceExampleGen', 'StatisticsGen', 'Transform', 'Evaluator')


def _load_runner():
  spec = importlib.util.spec_from_file_location(
      'kubeflow_v2_runner', os.path.join(KUBEFLOW_DIR, 'kubeflow_v2_runner.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


runner = _load_runner()


@pytest.fixture(scope='module')
def compiled(tmp_path_factory):
  """{config: (tfx pipeline, PipelineJob dict, json path, yaml path)} for both kinds of
  both families."""
  out = tmp_path_factory.mktemp('specs')
  result = {}
  for config, data in DATA.items():
    json_path, yaml_path = str(out / f'{config}.json'), str(out / f'{config}.yaml')
    settings = runner.settings_from_args(_argv(config, data, json_path))
    job = runner.compile_pipeline(settings, json_path)
    runner.compile_pipeline(settings, yaml_path)
    result[config] = (pipeline_lib.create_pipeline(settings), job, json_path, yaml_path)
  return result


def _argv(config, data, output, *more):
  return ['--config', config, '--pipeline-root', PIPELINE_ROOT, '--data', data, '--image', IMAGE,
          '--beam-pipeline-args=' + ' '.join(DATAFLOW_ARGS), '--train-steps', '50',
          '--eval-steps', '5', '--hparams', HPARAMS[config], '--output', output, *more]


@pytest.mark.parametrize('config', sorted(DATA))
def test_specs_parse_with_kfp_protos_and_loader(compiled, config):
  _, job, json_path, yaml_path = compiled[config]
  with open(json_path) as f:
    on_disk = json.load(f)
  assert on_disk == job
  # Strict parse: an unknown field anywhere is an error.
  parsed = json_format.ParseDict(on_disk, pipeline_spec_pb2.PipelineJob())
  name = 'music-rnn-' + config.replace('_', '-')
  assert parsed.display_name == name
  assert parsed.runtime_config.gcs_output_directory == f'{PIPELINE_ROOT}/pipelines/{name}'
  spec = json_format.ParseDict(on_disk['pipelineSpec'], pipeline_spec_pb2.PipelineSpec())
  assert spec.pipeline_info.name == name
  assert spec.schema_version == '2.0.0' and spec.sdk_version == 'tfx-1.16.0'

  # The YAML form (what an open-source KFP server uploads) is the same PipelineSpec.
  with open(yaml_path) as f:
    as_yaml = yaml.safe_load(f)
  assert json_format.ParseDict(as_yaml, pipeline_spec_pb2.PipelineSpec()) == spec
  # And the kfp SDK itself accepts it.
  import kfp.components  # pylint: disable=g-import-not-at-top
  loaded = kfp.components.load_component_from_file(yaml_path)
  assert loaded.pipeline_spec.pipeline_info.name == name


def test_vertex_client_accepts_the_job(compiled):
  """aiplatform.PipelineJob builds its request from the JSON offline (submit is the boundary)."""
  from google.auth import credentials  # pylint: disable=g-import-not-at-top
  from google.cloud import aiplatform  # pylint: disable=g-import-not-at-top
  pipeline, _, json_path, _ = compiled['drum_kit']
  job = aiplatform.PipelineJob(
      display_name='music-rnn-drum-kit', template_path=json_path, project='my-project',
      location='europe-west4', credentials=credentials.AnonymousCredentials(),
      enable_caching=True)
  request = job._gca_resource  # pylint: disable=protected-access
  assert request.runtime_config.gcs_output_directory == (
      f'{PIPELINE_ROOT}/pipelines/music-rnn-drum-kit')
  assert sorted(request.pipeline_spec['root']['dag']['tasks']) == _task_names(pipeline)


def _is_resolver(node) -> bool:
  from tfx.dsl.components.common import resolver  # pylint: disable=g-import-not-at-top
  return isinstance(node, resolver.Resolver)


def _task_names(pipeline):
  """KFP v2 task names: one per component; TFX compiles the latest-blessed-model resolver
  into two metadata queries, <id>-model-resolver and <id>-model-blessing-resolver."""
  names = []
  for node in pipeline.components:
    names += ([f'{node.id}-model-resolver', f'{node.id}-model-blessing-resolver']
              if _is_resolver(node) else [node.id])
  return sorted(names)


@pytest.mark.parametrize('config', sorted(DATA))
def test_every_component_image_command_args_and_wiring(compiled, config):
  pipeline, job, _, _ = compiled[config]
  spec = job['pipelineSpec']
  tasks = spec['root']['dag']['tasks']
  executors = spec['deploymentSpec']['executors']
  ids = [c.id for c in pipeline.components]
  assert {'Trainer', 'Evaluator', 'Pusher', 'latest_blessed_model_resolver'} <= set(ids)
  assert sorted(tasks) == _task_names(pipeline)  # nothing missing, nothing extra
  resolver_task = 'latest_blessed_model_resolver-model-resolver'
  assert resolver_task in tasks['Evaluator']['dependentTasks']  # the baseline model

  for component in pipeline.components:
    if _is_resolver(component):
      continue  # a metadata query, no container
    task = tasks[component.id]
    assert sorted(task.get('dependentTasks', [])) == sorted(
        f'{u.id}-model-resolver' if _is_resolver(u) else u.id for u in component.upstream_nodes)
    label = spec['components'][task['componentRef']['name']]['executorLabel']
    container = executors[label]['container']
    assert container['image'] == IMAGE
    assert container['command'] == list(kubeflow_v2_dag_runner.KUBEFLOW_TFX_CMD)
    args = container['args']
    assert args[:4] == ['--executor_class_path',
                        name_utils.get_full_name(component.executor_spec.executor_class),
                        '--json_serialized_invocation_args', '{{$}}']
    # Pipeline-level Beam args reach every container (Beam components use them).
    assert args[4:4 + len(DATAFLOW_ARGS)] == DATAFLOW_ARGS, (component.id, args)
    if component.id == 'NoteSequenceExampleGen':
      driver = container['lifecycle']['preCacheCheck']
      assert driver['command'][-1] == 'tfx.orchestration.kubeflow.v2.file_based_example_gen.driver'
      assert driver['args'][2:] == DATAFLOW_ARGS
  assert set(BEAM_COMPONENTS) <= set(ids)

  def param(task, key):
    return tasks[task]['inputs']['parameters'][key]['runtimeValue']['constantValue']

  root, pattern = runner.split_data_path(DATA[config])
  assert param('NoteSequenceExampleGen', 'input_base')['stringValue'] == root
  assert pattern in param('NoteSequenceExampleGen', 'input_config')['stringValue']
  assert param('NoteSequenceExampleGen', 'model_config')['stringValue'] == config
  assert param('Transform', 'preprocessing_fn')['stringValue'] == 'module_file.preprocessing_fn'
  assert param('Trainer', 'run_fn')['stringValue'] == 'module_file.run_fn'
  trainer_config = json.loads(param('Trainer', 'custom_config')['stringValue'])
  assert trainer_config['config_name'] == config
  assert trainer_config['hparams'] == configs.parse_hparams(HPARAMS[config])
  assert json.loads(param('Trainer', 'train_args')['stringValue']) == {'num_steps': 50}
  push = json.loads(param('Pusher', 'push_destination')['stringValue'])
  assert push['filesystem']['base_directory'] == f'{PIPELINE_ROOT}/serving/{config}'
  assert trainer_config['checkpoint_dir'] == (
      f'{PIPELINE_ROOT}/checkpoints/music-rnn-{config.replace("_", "-")}')


def test_split_data_path_is_textual():
  assert runner.split_data_path('gs://b/d/') == ('gs://b/d', '*.tfrecord*')
  assert runner.split_data_path('gs://b/d/x-*.tfrecord.gz') == ('gs://b/d', 'x-*.tfrecord.gz')
  assert runner.split_data_path('gs://b/d/one.tfrecord') == ('gs://b/d', 'one.tfrecord')
  with pytest.raises(ValueError, match='file name only'):
    runner.split_data_path('gs://b/*/x.tfrecord')


def test_runner_command_line(tmp_path, capsys):
  """Beam args as one quoted string (note the '=': the value starts with '--')."""
  out = tmp_path / 'spec.json'
  assert runner.main([
      '--config', 'drum_kit', '--pipeline-root', PIPELINE_ROOT, '--data', DATA['drum_kit'],
      '--image', IMAGE, '--beam-pipeline-args=--runner=DataflowRunner --project=p',
      '--hparams', 'batch_size=32', '--output', str(out)]) == 0
  executors = json.loads(out.read_text())['pipelineSpec']['deploymentSpec']['executors']
  assert executors['Transform_executor']['container']['args'][4:] == [
      '--runner=DataflowRunner', '--project=p']
  with pytest.raises(SystemExit) as exc:
    runner.main(['--config', 'drum_kit', '--pipeline-root', PIPELINE_ROOT, '--data', 'gs://b/d',
                 '--image', IMAGE, '--hparams', 'no_such=1', '--output', str(out)])
  assert exc.value.code == 2
  assert "Unknown hparam 'no_such'" in capsys.readouterr().err


def test_dockerfile_builds_on_the_matching_tfx_image():
  import tfx  # pylint: disable=g-import-not-at-top
  with open(os.path.join(KUBEFLOW_DIR, 'Dockerfile')) as f:
    dockerfile = f.read()
  match = re.search(r'^ARG TFX_IMAGE=gcr\.io/tfx-oss-public/tfx:(\S+)$', dockerfile, re.M)
  assert match and match.group(1) == tfx.__version__
  assert re.search(r'^FROM \$\{TFX_IMAGE\}$', dockerfile, re.M)
  # check_image.py runs at build time, and build_image.sh stages what the RUN line copies.
  assert 'python /opt/music-rnn/check_image.py' in dockerfile


@pytest.fixture(scope='module')
def image_layout(tmp_path_factory):
  """(context, site-packages): build_image.sh's context, installed as the Dockerfile does."""
  context = str(tmp_path_factory.mktemp('context'))
  subprocess.run([os.path.join(KUBEFLOW_DIR, 'build_image.sh'), '--stage', context], check=True)
  site = str(tmp_path_factory.mktemp('site'))
  proc = subprocess.run(
      [sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--ignore-requires-python',
       '--no-build-isolation', '--target', site, context],
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return context, site


def test_module_paths_resolve_inside_the_image_layout(compiled, image_layout):
  """check_image.py, as the Dockerfile runs it, in a Python that sees only the install.

  -S skips .pth files, so the venv's editable install of this repo is invisible; the
  TFX stack comes from the venv (in the image: TFX's base image).
  """
  context, site = image_layout
  specs = [p for _, _, json_path, yaml_path in compiled.values() for p in (json_path, yaml_path)]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([site, sysconfig.get_paths()['purelib']]),
             TF_CPP_MIN_LOG_LEVEL='3')
  proc = subprocess.run(
      [sys.executable, '-S', '-P', os.path.join(context, 'kubeflow', 'check_image.py'),
       '--compile-all', *specs],
      cwd=str(context), env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
  assert 'all module paths resolve' in proc.stdout
  checked = re.findall(r'^  ok +\S.*? (\S+)  \((.*)\)$', proc.stdout, re.M)
  # The given specs plus one compiled per model config in the layout.
  assert proc.stdout.count('== ') == len(specs) + len(configs.CONFIGS)
  project = [(path, origin) for path, origin in checked
             if path.split('.')[0] in ('module_file', 'components', 'music_rnn', 'pipeline')]
  assert {p for p, _ in project} >= {'module_file.run_fn', 'module_file.preprocessing_fn',
                                     'components.note_sequence_example_gen.executor.Executor'}
  assert all(origin.startswith(site + os.sep) for _, origin in project), project


def test_image_code_parses_as_python_310(image_layout):
  """TFX's 1.16 image may run Python 3.10 (TFX 1.16 declares <3.11): no 3.11-only syntax."""
  context, _ = image_layout
  sources = []
  for root, _, files in os.walk(context):
    sources += [os.path.join(root, f) for f in files if f.endswith('.py')
                and os.sep + 'build' + os.sep not in os.path.join(root, f)]
  assert len(sources) > 10
  for path in sources:
    with open(path) as f:
      ast.parse(f.read(), filename=path, feature_version=(3, 10))


# --- Accelerators, machine types and replicas for the Trainer and Tuner. -----------


def _compile(tmp_path, *flags):
  out = str(tmp_path / 'spec.json')
  assert runner.main(_argv('drum_kit', DATA['drum_kit'], out, '--tune', *flags)) == 0
  with open(out) as f:
    job = json.load(f)
  json_format.ParseDict(job, pipeline_spec_pb2.PipelineJob())  # strict: no unknown field
  return job


def _containers(job):
  """{task name: container spec} of every task that runs a container."""
  spec = job['pipelineSpec']
  executors = spec['deploymentSpec']['executors']
  out = {}
  for name, task in spec['root']['dag']['tasks'].items():
    label = spec['components'][task['componentRef']['name']].get('executorLabel')
    if label and 'container' in executors[label]:
      out[name] = executors[label]['container']
  return out


def _custom_config(job, task):
  param = job['pipelineSpec']['root']['dag']['tasks'][task]['inputs']['parameters']
  return json.loads(param['custom_config']['runtimeValue']['constantValue']['stringValue'])


def test_accelerators_are_requested_for_trainer_and_tuner_containers(tmp_path):
  job = _compile(tmp_path, '--trainer-accelerator-type', 'NVIDIA_TESLA_T4',
                 '--trainer-accelerator-count', '2', '--tuner-accelerator-type', 'TPU_V3',
                 '--tuner-accelerator-count', '8')
  containers = _containers(job)
  assert containers['Trainer']['resources'] == {'accelerator': {
      'type': 'NVIDIA_TESLA_T4', 'count': '2', 'resourceType': 'NVIDIA_TESLA_T4',
      'resourceCount': '2'}}
  assert containers['Tuner']['resources']['accelerator']['resourceType'] == 'TPU_V3'
  assert containers['Tuner']['resources']['accelerator']['count'] == '8'
  # Nothing else asks for them, and the components themselves are the usual ones.
  assert sorted(n for n, c in containers.items() if 'resources' in c) == ['Trainer', 'Tuner']
  assert containers['Trainer']['args'][1] == 'tfx.components.trainer.executor.GenericExecutor'
  assert containers['Tuner']['args'][1] == 'music_rnn.tuning.ReportingTunerExecutor'


def test_machine_type_and_replicas_run_vertex_training_jobs(tmp_path):
  """TFX's ai_platform Trainer/Tuner with Vertex worker pools: a chief and N-1 workers of
  the machine, in the pipeline image; the pools parse as Vertex AI's CustomJobSpec."""
  from google.cloud import aiplatform_v1  # pylint: disable=g-import-not-at-top
  job = _compile(tmp_path, '--trainer-machine-type', 'a2-highgpu-1g',
                 '--trainer-accelerator-type', 'NVIDIA_TESLA_A100',
                 '--trainer-accelerator-count', '1', '--trainer-replica-count', '3',
                 '--tuner-replica-count', '2', '--vertex-project', 'my-project',
                 '--vertex-region', 'europe-west4')
  containers = _containers(job)
  assert containers['Trainer']['args'][1] == (
      'tfx.extensions.google_cloud_ai_platform.trainer.executor.GenericExecutor')
  assert containers['Tuner']['args'][1] == (
      'tfx.extensions.google_cloud_ai_platform.tuner.executor.Executor')
  assert not any('resources' in c for c in containers.values())  # the job's machines have them

  trainer = _custom_config(job, 'Trainer')
  assert trainer['config_name'] == 'drum_kit'  # run_fn's own settings ride along
  assert trainer['ai_platform_enable_vertex'] is True
  assert trainer['ai_platform_vertex_region'] == 'europe-west4'
  args = trainer['ai_platform_training_args']
  assert args['project'] == 'my-project'
  pools = aiplatform_v1.types.CustomJobSpec.from_json(
      json.dumps(args['job_spec'])).worker_pool_specs
  assert [p.replica_count for p in pools] == [1, 2]
  for pool in pools:
    assert pool.machine_spec.machine_type == 'a2-highgpu-1g'
    assert pool.machine_spec.accelerator_type.name == 'NVIDIA_TESLA_A100'
    assert pool.machine_spec.accelerator_count == 1
    assert pool.container_spec.image_uri == IMAGE

  tuner = _custom_config(job, 'Tuner')
  pools = aiplatform_v1.types.CustomJobSpec.from_json(
      json.dumps(tuner['ai_platform_tuning_args']['job_spec'])).worker_pool_specs
  assert [p.replica_count for p in pools] == [1, 1]
  assert pools[0].machine_spec.machine_type == 'n1-standard-8'  # the default machine
  tune_args = job['pipelineSpec']['root']['dag']['tasks']['Tuner']['inputs']['parameters'][
      'tune_args']['runtimeValue']['constantValue']['stringValue']
  assert json.loads(tune_args) == {'num_parallel_trials': 2}


@pytest.mark.parametrize('flags, message', [
    (['--trainer-replica-count', '2'], '--vertex-project, --vertex-region'),
    (['--tuner-machine-type', 'n1-standard-4'], '--vertex-project, --vertex-region'),
    (['--trainer-accelerator-type', 'NVIDIA_TESLA_T4'], 'a count >= 1 together'),
])
def test_resource_flags_that_cannot_run_are_usage_errors(tmp_path, capsys, flags, message):
  with pytest.raises(SystemExit) as exc:
    runner.main(_argv('drum_kit', DATA['drum_kit'], str(tmp_path / 'x.json'), *flags))
  assert exc.value.code == 2
  assert message in capsys.readouterr().err
