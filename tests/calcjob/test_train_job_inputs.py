"""``VoltnetTrainCalculation.prepare_for_submission`` and the Slurm submit script of the GPU protocol
(``process.presubmit`` on a ``core.slurm`` computer: nothing is uploaded or submitted, no Slurm is needed)."""
from __future__ import annotations

import json
import os
import re

import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_voltnet.calculations import functions
from aiida_voltnet.calculations.train_job import VoltnetTrainCalculation
from aiida_voltnet.workflows.train_restart import VoltnetTrainBaseWorkChain

from conftest import FIXTURES

EXPECTED_SCRIPT = FIXTURES / 'slurm_gpu_submit_script.sh'


def mask(script: str) -> str:
    """Mask what changes between runs: the job name's pk, uuids and absolute temporary paths."""
    script = re.sub(r'aiida-\d+', 'aiida-<PK>', script)
    script = re.sub(r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<UUID>', script)
    script = re.sub(r'/tmp/\S+', '<TMP>', script)
    return script


def gpu_inputs(code, dataset):
    builder = VoltnetTrainBaseWorkChain.get_builder_from_protocol(code, dataset, protocol='gpu',
                                                                  options={'queue_name': 'gpu'})
    return builder._inputs(prune=True)['train']


def test_protocol_builder_keeps_every_override(slurm_code, dataset_60):
    """clean_workdir and train.checkpointing were accepted as overrides and then left out of the builder."""
    builder = VoltnetTrainBaseWorkChain.get_builder_from_protocol(
        slurm_code, dataset_60, protocol='cpu', overrides={'clean_workdir': True,
                                                           'train': {'checkpointing': {'every_epochs': 5}}})
    assert builder.clean_workdir.value is True and builder.max_iterations.value == 5
    assert builder.train.checkpointing.get_dict() == {'every_epochs': 5}
    assert builder.train.model.value == 'voltnet' and 'custom_scheduler_commands' not in builder.train.metadata.options


def test_prepare_for_submission_writes_config_and_stages_records(slurm_code, dataset_60, generate_calc_job):
    inputs = {'code': slurm_code, 'dataset': dataset_60, 'model': orm.Str('mlp'), 'seed': orm.Int(3),
              'settings': orm.Dict({'train_overrides': {'epochs': 3, 'batch_size': 32}}),
              'metadata': {'options': {'resources': {'num_machines': 1}}}}
    folder, calcinfo, _ = generate_calc_job(VoltnetTrainCalculation, inputs)
    config = json.loads((folder / 'config.json').read_text())
    assert config == {'featurizer': 'leakfree', 'model': 'mlp', 'seed': 3,
                      'settings': {'train_overrides': {'epochs': 3, 'batch_size': 32}}}
    # the records are copied from the dataset's repository at upload: no duplicate, no pickle
    assert calcinfo.local_copy_list == [(dataset_60.uuid, 'records.json', 'records.json')]
    assert not (folder / 'records.json').exists()
    assert 'train.log' in calcinfo.retrieve_list and 'metrics.json' in calcinfo.retrieve_list
    assert ('model/arrays.safetensors', '.', 2) in calcinfo.retrieve_list
    # the checkpoint folder comes back also from a job killed before it finished
    assert 'checkpoint' in calcinfo.retrieve_list
    params = calcinfo.codes_info[0].cmdline_params
    assert params[:2] == ['--config', 'config.json']
    assert params[params.index('--checkpoint-dir') + 1] == 'checkpoint'
    assert '--resume' not in params and '--max-seconds' not in params  # no walltime given, no restart


def _folder(files: dict) -> orm.FolderData:
    folder = orm.FolderData()
    for name, content in files.items():
        folder.base.repository.put_object_from_bytes(content, name)
    return folder.store()


@pytest.mark.parametrize('files, source', [
    ({'state.json': b'{}', 'member-final-0.safetensors': b''}, '.'),  # the `checkpoint` output
    ({'train.log': b'', 'checkpoint/state.json': b'{}'}, 'checkpoint'),  # a retrieved folder
    ({'model/config.json': b'{}', 'model/arrays.safetensors': b''}, 'model'),  # a complete model
])
def test_restart_folder_is_resumed_from(slurm_code, dataset_60, generate_calc_job, files, source):
    restart = _folder(files)
    inputs = {'code': slurm_code, 'dataset': dataset_60, 'restart_folder': restart,
              'metadata': {'options': {'resources': {'num_machines': 1}}}}
    folder, calcinfo, _ = generate_calc_job(VoltnetTrainCalculation, inputs)
    assert 'resume' not in json.loads((folder / 'config.json').read_text())
    assert (restart.uuid, source, 'restart') in calcinfo.local_copy_list
    params = calcinfo.codes_info[0].cmdline_params
    assert params[params.index('--resume') + 1] == 'restart'


def test_remote_restart_folder_copies_its_checkpoint(slurm_code, dataset_60, generate_calc_job):
    remote = orm.RemoteData(computer=slurm_code.computer, remote_path='/scratch/aiida/ab/cd/ef').store()
    inputs = {'code': slurm_code, 'dataset': dataset_60, 'restart_folder': remote,
              'metadata': {'options': {'resources': {'num_machines': 1}}}}
    _, calcinfo, _ = generate_calc_job(VoltnetTrainCalculation, inputs)
    assert calcinfo.remote_copy_list == [(slurm_code.computer.uuid, '/scratch/aiida/ab/cd/ef/checkpoint', 'restart')]
    assert '--resume' in calcinfo.codes_info[0].cmdline_params


def test_a_remote_restart_folder_on_another_computer_is_refused_at_launch(slurm_code, dataset_60, aiida_computer):
    """Review: AiiDA cannot copy between two computers; the job was stored, its upload failed five times and it
    waited paused for good."""
    from aiida.engine import run

    other = aiida_computer(label='other-cluster', hostname='other.example.org', scheduler_type='core.slurm',
                           transport_type='core.ssh')
    remote = orm.RemoteData(computer=other, remote_path='/scratch/aiida/ab/cd/ef').store()
    before = orm.QueryBuilder().append(orm.ProcessNode).count()
    with pytest.raises(ValueError, match="restart_folder: a RemoteData on computer 'other-cluster', but the code runs "
                                         f"on '{slurm_code.computer.label}'"):
        run(VoltnetTrainCalculation, code=slurm_code, dataset=dataset_60, restart_folder=remote,
            metadata={'options': {'resources': {'num_machines': 1}}})
    assert orm.QueryBuilder().append(orm.ProcessNode).count() == before


def test_a_restart_folder_without_checkpoint_or_model_is_refused(slurm_code, dataset_60):
    from aiida.engine import run

    with pytest.raises(ValueError, match='neither a checkpoint'):
        run(VoltnetTrainCalculation, code=slurm_code, dataset=dataset_60, restart_folder=_folder({'x.txt': b''}))


def test_checkpointing_options_and_the_walltime_stop(slurm_code, dataset_60, generate_calc_job):
    def params(checkpointing=None, walltime=None):
        options = {'resources': {'num_machines': 1}}
        if walltime:
            options['max_wallclock_seconds'] = walltime
        inputs = {'code': slurm_code, 'dataset': dataset_60, 'metadata': {'options': options}}
        if checkpointing is not None:
            inputs['checkpointing'] = orm.Dict(checkpointing)
        _, calcinfo, _ = generate_calc_job(VoltnetTrainCalculation, inputs)
        line = calcinfo.codes_info[0].cmdline_params
        return {flag: line[i + 1] for i, flag in enumerate(line) if flag.startswith('--')}

    # the script stops itself (with a checkpoint) a margin before the scheduler's kill: 5 % within [60, 600] s
    assert params(walltime=3600)['--max-seconds'] == '3420'
    assert params(walltime=43200)['--max-seconds'] == '42600'
    assert params(walltime=600)['--max-seconds'] == '540'
    assert params({'stop_margin_seconds': 900}, walltime=3600)['--max-seconds'] == '2700'
    got = params({'every_epochs': 5, 'every_seconds': 120, 'max_seconds': 99.5, 'stop_after_epochs': 3,
                  'stop_after_members': 2}, walltime=3600)
    assert got['--checkpoint-every-epochs'] == '5' and got['--checkpoint-every-seconds'] == '120'
    assert got['--max-seconds'] == '99.5'
    assert got['--stop-after-epochs'] == '3' and got['--stop-after-members'] == '2'


@pytest.mark.parametrize('checkpointing, match', [
    ({'every_epoch': 3}, 'unknown key'),
    ({'every_epochs': 2.5}, 'every_epochs must be a non-negative int'),
    ({'max_seconds': -1}, 'max_seconds must be a non-negative float'),
])
def test_bad_checkpointing_is_refused(slurm_code, dataset_60, checkpointing, match):
    from aiida.engine import run

    with pytest.raises(ValueError, match=match):
        run(VoltnetTrainCalculation, code=slurm_code, dataset=dataset_60, checkpointing=orm.Dict(checkpointing))


@pytest.mark.parametrize('settings, match', [
    ({'epochs': 3}, 'unknown training setting'),
    ({'train_overrides': {'batch_size': 0}}, 'batch_size must be an integer >= 1'),
    ({'train_overrides': {'epochz': 3}}, 'unknown training setting.*epochz'),
    ({'members': 0}, 'members must be a positive integer'),
    ({'device': 'tpu'}, "unknown device 'tpu'"),
])
def test_bad_settings_are_refused_before_anything_runs(slurm_code, dataset_60, settings, match):
    from aiida.engine import run

    with pytest.raises(ValueError, match=match):
        run(VoltnetTrainCalculation, code=slurm_code, dataset=dataset_60, settings=orm.Dict(settings))


def test_records_without_the_target_are_refused_before_the_queue(slurm_code, dataset_60):
    """A dataset of candidates (no voltage) waited in the queue and failed remotely; now refused at launch."""
    import dataclasses

    from aiida.engine import run

    from aiida_voltnet.data.dataset import ElectrodeDataset

    records = list(dataset_60.records())
    candidates = ElectrodeDataset([dataclasses.replace(records[0], average_voltage=None, steps=(), num_steps=None)]
                                  + records[1:]).store()
    with pytest.raises(ValueError, match=f"1 record.s. have no average_voltage to train on, e.g. line {records[0].line} \\(battery_id '{records[0].battery_id}'\\)"):
        run(VoltnetTrainCalculation, code=slurm_code, dataset=candidates)
    with pytest.raises(ValueError, match='1 record.s. have no max_delta_volume to train on'):
        run(VoltnetTrainCalculation, code=slurm_code, dataset=candidates,
            settings=orm.Dict({'target': 'max_delta_volume'}))


def test_unknown_model_is_refused(slurm_code, dataset_60):
    from aiida.engine import run

    with pytest.raises(ValueError, match='unknown model'):
        run(VoltnetTrainCalculation, code=slurm_code, dataset=dataset_60, model=orm.Str('transformer'))


def test_slurm_submit_script_requests_a_gpu(slurm_code, dataset_60, generate_calc_job):
    folder, _, _ = generate_calc_job(VoltnetTrainCalculation, gpu_inputs(slurm_code, dataset_60))
    script = (folder / '_aiidasubmit.sh').read_text()
    lines = script.splitlines()
    gres = lines.index('#SBATCH --gres=gpu:1')
    first_export = next(i for i, line in enumerate(lines) if line.startswith('export '))
    last_sbatch = max(i for i, line in enumerate(lines) if line.startswith('#SBATCH'))
    assert gres <= last_sbatch < first_export, 'the GPU request must be in the #SBATCH header, before the exports'
    assert '#SBATCH --partition=gpu' in lines and '#SBATCH --time=01:00:00' in lines
    run_line = next(line for line in lines if 'voltnet-train' in line)
    assert "'/opt/voltnet/venv/bin/voltnet-train'" in run_line and '--config' in run_line
    if os.environ.get('VOLTNET_REGENERATE_FIXTURES'):
        EXPECTED_SCRIPT.write_text(mask(script))
    assert mask(script) == EXPECTED_SCRIPT.read_text(), (
        'the submit script changed; if intended, rerun with VOLTNET_REGENERATE_FIXTURES=1 and review the diff')


def test_cpu_protocol_has_no_gpu_request(slurm_code, dataset_60, generate_calc_job):
    builder = VoltnetTrainBaseWorkChain.get_builder_from_protocol(slurm_code, dataset_60, protocol='cpu')
    folder, _, _ = generate_calc_job(VoltnetTrainCalculation, builder._inputs(prune=True)['train'])
    script = (folder / '_aiidasubmit.sh').read_text()
    assert '--gres' not in script and 'voltnet-train' in script


def test_protocols_and_overrides(slurm_code, dataset_60):
    assert set(VoltnetTrainBaseWorkChain.get_available_protocols()) == {'gpu', 'gpu_long', 'cpu'}
    builder = VoltnetTrainBaseWorkChain.get_builder_from_protocol(
        slurm_code, dataset_60, protocol='gpu_long',
        overrides={'train': {'settings': {'train_overrides': {'batch_size': 64}}}, 'max_iterations': 3})
    assert builder.train.metadata.options.max_wallclock_seconds == 43200
    assert builder.train.metadata.options.custom_scheduler_commands == '#SBATCH --gres=gpu:1'
    assert builder.train.settings.get_dict() == {'train_overrides': {'batch_size': 64}}
    assert builder.max_iterations.value == 3
    with pytest.raises(ValueError, match='not an input'):
        VoltnetTrainBaseWorkChain.get_builder_from_protocol(slurm_code, dataset_60, overrides={'epochs': 3})
    # a misspelt job input: the namespace was dynamic, so it was stored under the work chain and never reached the job
    with pytest.raises(ValueError, match="override train.'restart_fodler' is not an input of namespace 'train'"):
        VoltnetTrainBaseWorkChain.get_builder_from_protocol(slurm_code, dataset_60,
                                                            overrides={'train': {'restart_fodler': orm.Int(1)}})
    builder = VoltnetTrainBaseWorkChain.get_builder_from_protocol(slurm_code, dataset_60)
    with pytest.raises(AttributeError, match='restart_fodler'):  # nor can a builder take it
        builder.train.restart_fodler = orm.Int(1)
    inputs = {'train': {**builder.train, 'restart_fodler': orm.Int(1)}}
    with pytest.raises(ValueError, match='restart_fodler'):  # nor a launch
        run_get_node(VoltnetTrainBaseWorkChain, **inputs)


def test_given_resources_replace_the_protocols_whole(slurm_code, dataset_60):
    """Merged into the protocol's {num_machines, num_mpiprocs_per_machine: 1, num_cores_per_mpiproc: 8}, resources
    of another shape ({tot_num_mpiprocs: 4}, SGE's parallel_env) kept keys that contradict them or that the
    scheduler refuses, as VerifyWorkChain's once did; the rest of the options still merge with the protocol's."""
    resources = {'num_machines': 1, 'tot_num_mpiprocs': 4}
    for kwargs in ({'options': {'resources': resources}},
                   {'overrides': {'train': {'metadata': {'options': {'resources': resources}}}}}):
        options = VoltnetTrainBaseWorkChain.get_builder_from_protocol(slurm_code, dataset_60, protocol='gpu',
                                                                      **kwargs).train.metadata.options
        assert options.resources == resources, kwargs
        assert options.max_wallclock_seconds == 3600 and options.custom_scheduler_commands == '#SBATCH --gres=gpu:1'
    both = VoltnetTrainBaseWorkChain.get_builder_from_protocol(
        slurm_code, dataset_60, overrides={'train': {'metadata': {'options': {
            'resources': {'num_machines': 2}, 'environment_variables': {'A': '1'}}}}},
        options={'resources': resources, 'environment_variables': {'B': '2'}}).train.metadata.options
    assert both.resources == resources  # options= wins over overrides=, as documented
    assert both.environment_variables == {'CUBLAS_WORKSPACE_CONFIG': ':4096:8', 'A': '1', 'B': '2'}
    plain = VoltnetTrainBaseWorkChain.get_builder_from_protocol(slurm_code, dataset_60, options={'queue_name': 'q'})
    assert plain.train.metadata.options.resources == {'num_machines': 1, 'num_mpiprocs_per_machine': 1,
                                                      'num_cores_per_mpiproc': 8}
    with pytest.raises(TypeError, match='protocl'):  # a misspelt keyword was swallowed and the default protocol ran
        VoltnetTrainBaseWorkChain.get_builder_from_protocol(slurm_code, dataset_60, protocl='cpu')


def test_resources_that_do_not_fit_the_scheduler_are_refused_at_launch(train_code, dataset_60):
    """The job's own input validator replaced aiida-core's, so resources its scheduler cannot run (5 MPI processes
    on 1 machine x 1) stored the job and excepted at submission; the train work chain stored its dataset and split
    first."""
    from aiida.engine import run

    from aiida_voltnet.workflows.train import TrainWorkChain

    bad = {'num_machines': 1, 'num_mpiprocs_per_machine': 1, 'tot_num_mpiprocs': 5}
    before = orm.QueryBuilder().append(orm.Node).count()
    with pytest.raises(ValueError, match='is not valid for the `DirectScheduler` scheduler'):
        run(VoltnetTrainCalculation, code=train_code, dataset=dataset_60, model=orm.Str('krr'),
            metadata={'options': {'resources': bad}})
    with pytest.raises(ValueError, match='train_options: resources .* do not fit the DirectScheduler scheduler of localhost'):
        run(TrainWorkChain, dataset=dataset_60, train_code=train_code, train_options={'resources': bad})
    assert orm.QueryBuilder().append(orm.Node).count() == before


def test_the_default_resources_are_checked_against_the_scheduler_too(aiida_computer, dataset_60):
    """An SGE computer wants a parallel environment: the default resources (1 machine x 1) that the work chain gives
    a job without train_options were not checked, so the launch stored the dataset and split, then excepted."""
    from aiida.engine import run

    from aiida_voltnet.workflows.train import TrainWorkChain

    computer = aiida_computer(label='sge-cluster', hostname='sge.example.org', scheduler_type='core.sge',
                              transport_type='core.local')
    computer.configure()
    code = orm.InstalledCode(label='voltnet-train-sge', computer=computer, filepath_executable='/opt/bin/voltnet-train',
                             default_calc_job_plugin='voltnet.train').store()
    before = orm.QueryBuilder().append(orm.Node).count()
    with pytest.raises(ValueError, match=r'train_options: resources .* do not fit the .*sge-cluster.*\(the default '
                                         r'resources, as none were given: set train_options\["resources"\]'):
        run(TrainWorkChain, dataset=dataset_60, train_code=code)
    assert orm.QueryBuilder().append(orm.Node).count() == before
    fitting = {'parallel_env': 'smp', 'tot_num_mpiprocs': 1}
    assert functions.check_job_resources({'resources': fitting}, code) is None


def test_a_code_of_another_plugin_no_code_and_no_walltime_are_refused_at_launch(slurm_code, dataset_60,
                                                                                  aiida_computer):
    """Found by review: the training job took a pw.x code (and ran its executable with voltnet-train's arguments:
    exit 300, 6 nodes; 10 through the restart work chain), a missing code excepted with an AttributeError after the
    work chain was stored, and a walltime of 0 or less was refused only when Slurm's submit script was written,
    after the work chain had stored its dataset, split and job."""
    from aiida.engine import run

    from aiida_voltnet.workflows.train import TrainWorkChain

    computer = aiida_computer(label='slurm-configured', hostname='slurm.example.org', scheduler_type='core.slurm',
                              transport_type='core.local')
    computer.configure()
    configured = orm.InstalledCode(label='voltnet-train', computer=computer, filepath_executable='/opt/voltnet-train',
                                   default_calc_job_plugin='voltnet.train').store()
    pw = orm.InstalledCode(label='not-voltnet', computer=slurm_code.computer, filepath_executable='/usr/bin/pw.x',
                           default_calc_job_plugin='quantumespresso.pw').store()
    before = orm.QueryBuilder().append(orm.Node).count()
    with pytest.raises(ValueError, match=r"code not-voltnet@\S+ has the default plugin 'quantumespresso.pw', not "
                                         r'voltnet.train: give the code of voltnet-train'):
        run(VoltnetTrainCalculation, code=pw, dataset=dataset_60, model=orm.Str('krr'))
    with pytest.raises(ValueError, match='not voltnet.train'):
        run(VoltnetTrainBaseWorkChain.get_builder_from_protocol(pw, dataset_60, protocol='cpu'))
    with pytest.raises(ValueError, match='code: give the InstalledCode of voltnet-train'):
        run(VoltnetTrainCalculation, dataset=dataset_60, model=orm.Str('krr'))
    with pytest.raises(ValueError, match='code must be the InstalledCode of voltnet-train, got None'):
        VoltnetTrainBaseWorkChain.get_builder_from_protocol(None, dataset_60, protocol='cpu')
    for walltime in (0, -10):
        with pytest.raises(ValueError, match=f"'max_wallclock_seconds' must be a positive number of seconds, got "
                                             f'{walltime}'):
            run(VoltnetTrainCalculation, code=slurm_code, dataset=dataset_60, model=orm.Str('krr'),
                metadata={'options': {'max_wallclock_seconds': walltime}})
        with pytest.raises(ValueError, match="'max_wallclock_seconds' must be a positive number of seconds"):
            run(VoltnetTrainBaseWorkChain.get_builder_from_protocol(slurm_code, dataset_60, protocol='cpu',
                                                                    options={'max_wallclock_seconds': walltime}))
        with pytest.raises(ValueError, match="'max_wallclock_seconds' must be a positive number of seconds") as no:
            run(TrainWorkChain, dataset=dataset_60, train_code=configured,
                train_options={'max_wallclock_seconds': walltime})
        assert 'the default resources' not in str(no.value)  # review: the hint blamed the resources for it
    assert orm.QueryBuilder().append(orm.Node).count() == before
