"""``VoltnetTrainParser`` on retrieved folders built by hand: every failure status maps to its exit code."""
from __future__ import annotations

import json

import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import ProcessState
from aiida.plugins import ParserFactory

from aiida_voltnet.calculations.train_job import VoltnetTrainCalculation

from conftest import checkpoint_files

EXIT = VoltnetTrainCalculation.exit_codes


def _parse(computer, files: dict, scheduler_exit: int | None = None, inputs: dict | None = None):
    """Parse ``files`` as the retrieved folder of a finished job with ``inputs`` (stored nodes by link label)."""
    node = orm.CalcJobNode(computer=computer, process_type='aiida.calculations:voltnet.train')
    node.set_option('resources', {'num_machines': 1})
    for label, value in (inputs or {}).items():
        node.base.links.add_incoming(value, link_type=LinkType.INPUT_CALC, link_label=label)
    node.set_process_state(ProcessState.FINISHED)
    if scheduler_exit is not None:
        node.set_exit_status(scheduler_exit)
    node.store()
    retrieved = orm.FolderData()
    for name, content in files.items():
        retrieved.base.repository.put_object_from_bytes(content if isinstance(content, bytes) else content.encode(),
                                                        name)
    retrieved.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label='retrieved')
    retrieved.store()
    return ParserFactory('voltnet.train').parse_from_node(node, store_provenance=False)


def _status(status, **extra):
    return json.dumps({'status': status, 'message': extra.pop('message', ''), **extra})


@pytest.mark.parametrize('files, expected', [
    ({'status.json': _status('LOSS_DIVERGED', epoch=2)}, EXIT.ERROR_LOSS_DIVERGED),
    ({'status.json': _status('CUDA_OUT_OF_MEMORY', batch_size=512, message='CUDA out of memory.')},
     EXIT.ERROR_CUDA_OUT_OF_MEMORY),
    ({'status.json': _status('EXCEPTION', message='RuntimeError: boom')}, EXIT.ERROR_TRAINING_FAILED),
    ({'status.json': _status('BAD_INPUT', message='no records')}, EXIT.ERROR_BAD_INPUT_FILES),
    # status.json lost: the marker line of train.log decides
    ({'train.log': 'x\n... INFO VOLTNET_STATUS CUDA_OUT_OF_MEMORY {"message": "oom", "batch_size": 64}\n'},
     EXIT.ERROR_CUDA_OUT_OF_MEMORY),
    ({'status.json': _status('OK'), 'metrics.json': '{}'}, EXIT.ERROR_MISSING_OUTPUT_FILES),
    ({'train.log': 'started\n'}, EXIT.ERROR_MISSING_OUTPUT_FILES),
])
def test_failure_statuses(aiida_localhost, files, expected):
    _, calcfunction = _parse(aiida_localhost, files)
    assert calcfunction.exit_status == expected.status


def test_a_job_that_never_reported_says_what_it_last_wrote(aiida_localhost):
    """A code whose executable is missing ended with 'not retrieved: model/config.json, ...' and nothing on why."""
    stderr = "_aiidasubmit.sh: line 6: /nowhere/voltnet-train: No such file or directory\n"  # as a real run wrote
    _, calcfunction = _parse(aiida_localhost, {'voltnet-train.err': stderr, '_scheduler-stderr.txt': '',
                                               'train.log': ''})
    assert calcfunction.exit_status == EXIT.ERROR_MISSING_OUTPUT_FILES.status
    assert ('the job never reported a status, and its last words were: _aiidasubmit.sh: line 6: '
            '/nowhere/voltnet-train: No such file or directory') in calcfunction.exit_message
    _, calcfunction = _parse(aiida_localhost, {'voltnet-train.err': '', '_scheduler-stderr.txt': 'slurmstepd: killed'})
    assert calcfunction.exit_message.endswith('its last words were: slurmstepd: killed.')
    _, calcfunction = _parse(aiida_localhost, {'train.log': 'started\nloading records\n'})
    assert calcfunction.exit_message.endswith('its last words were: started | loading records.')


def test_marker_details_fill_the_message(aiida_localhost):
    _, calcfunction = _parse(aiida_localhost, {'train.log': 'VOLTNET_STATUS LOSS_DIVERGED {"epoch": 7}\n'})
    assert calcfunction.exit_status == 410 and 'epoch 7' in calcfunction.exit_message


def test_walltime_from_the_scheduler_is_kept(aiida_localhost):
    _, calcfunction = _parse(aiida_localhost, {'train.log': 'epoch 1\n'},
                             scheduler_exit=EXIT.ERROR_SCHEDULER_OUT_OF_WALLTIME.status)
    assert calcfunction.exit_status == 120


def test_corrupt_model_is_refused(aiida_localhost):
    files = {'status.json': _status('OK'), 'metrics.json': '{}', 'model/config.json': '{}',
             'model/arrays.safetensors': b'not safetensors'}
    _, calcfunction = _parse(aiida_localhost, files)
    assert calcfunction.exit_status == EXIT.ERROR_INVALID_MODEL.status


def test_time_limit_exposes_the_checkpoint(aiida_localhost, interrupted_checkpoint):
    """The script stopped itself before the walltime: exit 400 and the checkpoint as an output."""
    from aiida_voltnet.ml.training import TrainingCheckpoint

    files = {'status.json': _status('TIME_LIMIT', reason='time limit', member='calibration.0', epoch=None),
             'train.log': 'x', **checkpoint_files(interrupted_checkpoint)}
    files['checkpoint/state.json.tmp-99'] = b'{"half-written'  # a leftover of a killed write is not copied
    results, calcfunction = _parse(aiida_localhost, files)
    assert calcfunction.exit_status == EXIT.ERROR_OUT_OF_WALLTIME.status == 400
    assert 'time limit' in calcfunction.exit_message and 'member calibration.0' in calcfunction.exit_message
    checkpoint = results['checkpoint']
    state = json.loads(checkpoint.base.repository.get_object_content('state.json'))
    assert sorted(checkpoint.base.repository.list_object_names()) == sorted(
        ['state.json', *TrainingCheckpoint.files(state)])


def test_scheduler_walltime_kill_exposes_the_checkpoint(aiida_localhost, interrupted_checkpoint):
    """Killed by the scheduler (120) with no status of its own: 120 is kept, the checkpoint is an output."""
    results, calcfunction = _parse(aiida_localhost, {'train.log': 'epoch 3\n', **checkpoint_files(interrupted_checkpoint)},
                                   scheduler_exit=EXIT.ERROR_SCHEDULER_OUT_OF_WALLTIME.status)
    assert calcfunction.exit_status == 120
    assert 'state.json' in results['checkpoint'].base.repository.list_object_names()


def test_altered_checkpoint_is_not_exposed(aiida_localhost, interrupted_checkpoint, caplog):
    files = checkpoint_files(interrupted_checkpoint)
    member = next(name for name in files if name.endswith('.safetensors'))
    files[member] = files[member][:-10]  # truncated
    with caplog.at_level('WARNING'):
        results, calcfunction = _parse(aiida_localhost, {'train.log': 'x', **files},
                                       scheduler_exit=EXIT.ERROR_SCHEDULER_OUT_OF_WALLTIME.status)
    assert calcfunction.exit_status == 120 and 'checkpoint' not in results
    # review: it named the parser's deleted temporary copy, not the retrieved file
    assert f'is unusable, not exposed: {member}' in caplog.text and '/tmp' not in caplog.text, caplog.text


def _train_krr(csv_60, output, featurizer: str, rows: int = 30, seed: int = 0) -> dict:
    """Run the real voltnet-train script (a krr on ``rows`` records) into ``output``, as a job's working directory;
    returns the job's inputs (stored), as the CalcJob would have had them."""
    from aiida_voltnet.cli import train_entry
    from aiida_voltnet.data.dataset import ElectrodeDataset
    from aiida_voltnet.ml.records import read_electrodes_csv, records_to_json

    with csv_60.open(newline='') as handle:
        records = read_electrodes_csv(handle)[:rows]
    output.mkdir(parents=True, exist_ok=True)
    (output / 'records.json').write_text(records_to_json(records))
    (output / 'config.json').write_text(json.dumps({'featurizer': featurizer, 'model': 'krr', 'seed': seed,
                                                    'settings': {}}))
    assert train_entry.main(['--config', str(output / 'config.json'), '--records', str(output / 'records.json'),
                             '--output', str(output)]) == 0
    return {'dataset': ElectrodeDataset(records, source='csv').store(), 'featurizer': orm.Str(featurizer).store(),
            'model': orm.Str('krr').store(), 'seed': orm.Int(seed).store()}


MODEL_FILES = ('model/config.json', 'model/arrays.safetensors', 'model/training.json')


def test_a_model_of_another_training_is_refused(aiida_localhost, csv_60, tmp_path):
    """Found by review: a retrieved model/ replaced by the valid model of another training (other rows, another
    seed) was taken as this job's output, linked to inputs it was not trained on, and became a cache source."""
    inputs = _train_krr(csv_60, tmp_path / 'job', 'leakfree')
    job = {name: (tmp_path / 'job' / name).read_bytes() for name in ('status.json', 'metrics.json', *MODEL_FILES)}
    results, calcfunction = _parse(aiida_localhost, job, inputs=inputs)
    assert calcfunction.exit_status == 0, calcfunction.exit_message
    for rows, seed, said in ((20, 0, "n_training_rows 20, not 30; model/training.json has another records_sha256"),
                             (30, 1, 'seed 1, not 0; model/training.json has another seed')):
        _train_krr(csv_60, tmp_path / f'other{rows}{seed}', 'leakfree', rows=rows, seed=seed)
        other = {name: (tmp_path / f'other{rows}{seed}' / name).read_bytes() for name in MODEL_FILES}
        results, calcfunction = _parse(aiida_localhost, {**job, **other}, inputs=inputs)
        assert calcfunction.exit_status == EXIT.ERROR_INVALID_MODEL.status and 'model' not in results
        assert f'the retrieved model was not trained by this job: {said}' in calcfunction.exit_message, \
            calcfunction.exit_message
    # the other training's config and arrays under this job's training.json: the model itself says whose it is
    other = {name: (tmp_path / 'other301' / name).read_bytes() for name in MODEL_FILES[:2]}
    _, calcfunction = _parse(aiida_localhost, {**job, **other}, inputs=inputs)
    assert calcfunction.exit_status == EXIT.ERROR_INVALID_MODEL.status
    assert calcfunction.exit_message.endswith('was not trained by this job: seed 1, not 0'), calcfunction.exit_message


@pytest.mark.parametrize('name, content, said', [
    ('metrics.json', '{"warnings": "abc"}', 'metrics.json (its "warnings" is not a list)'),
    ('metrics.json', '{"train": "x"}', 'metrics.json (its "train" is not an object)'),
    ('status.json', '"OK"', None),
    ('status.json', '["OK"]', None),
])
def test_malformed_status_and_metrics_are_named_not_a_parser_exception(aiida_localhost, csv_60, tmp_path, name,
                                                                       content, said):
    """Found by review: a status.json that is JSON but no object raised AttributeError in the parser (the job
    excepted); a string of warnings became one log line per character; a "train" that is no object was stored."""
    inputs = _train_krr(csv_60, tmp_path, 'leakfree')
    files = {n: (tmp_path / n).read_bytes() for n in ('status.json', 'metrics.json', 'train.log', *MODEL_FILES)}
    results, calcfunction = _parse(aiida_localhost, {**files, name: content}, inputs=inputs)
    if said is None:  # status.json unusable: train.log's marker line says OK, and the outputs are complete
        assert calcfunction.exit_status == 0, calcfunction.exit_message
    else:
        assert calcfunction.exit_status == EXIT.ERROR_MISSING_OUTPUT_FILES.status
        assert said in calcfunction.exit_message, calcfunction.exit_message


def test_the_trainings_warnings_reach_the_calculations_log(aiida_localhost, csv_60, tmp_path):
    """metrics.json's ``warnings`` (the voltnet-train script's record of the package's own warnings) are written to
    the calculation's log, where ``verdi process report`` shows them, and stay in the ``metrics`` output."""
    inputs = _train_krr(csv_60, tmp_path, 'paper')
    files = {name: (tmp_path / name).read_bytes() for name in ('status.json', 'metrics.json', *MODEL_FILES)}
    results, calcfunction = _parse(aiida_localhost, files, inputs=inputs)
    assert calcfunction.exit_status == 0, calcfunction.exit_message
    job = orm.QueryBuilder().append(orm.CalcJobNode, tag='job').order_by({'job': {'id': 'desc'}}).first(flat=True)
    logs = [log.message for log in orm.Log.collection.get_logs_for(job) if log.levelname == 'WARNING']
    assert len(logs) == 1 and logs[0].startswith('TargetLeakWarning: the paper featurizer includes'), logs
    assert results['metrics']['warnings'] == logs
    from aiida_voltnet.provenance import training_warnings

    assert training_warnings(job) == logs  # what `voltnet provenance` shows of a model trained by the CalcJob
    # A job whose log is gone (a clone taken from the cache whose source was deleted, an imported archive without
    # logs) still says it from its ``metrics`` output.
    quiet = orm.CalcJobNode(computer=aiida_localhost, process_type='aiida.calculations:voltnet.train')
    quiet.set_option('resources', {'num_machines': 1})
    quiet.set_process_state(ProcessState.FINISHED)
    quiet.store()
    metrics = orm.Dict(results['metrics'].get_dict())
    metrics.base.links.add_incoming(quiet, link_type=LinkType.CREATE, link_label='metrics')
    metrics.store()
    assert not orm.Log.collection.get_logs_for(quiet)
    assert training_warnings(quiet) == logs


def test_an_unreadable_metrics_file_is_a_failed_job_not_a_parser_exception(aiida_localhost, csv_60, tmp_path):
    """metrics.json is written after the model, not atomically: a job killed while writing it left a file cut
    short, and the parser raised (the job excepted, and its restart work chain with it). It is now reported as
    an output file that could not be read; a walltime kill reported by the scheduler stays 120."""
    _train_krr(csv_60, tmp_path, 'leakfree')
    files = {name: (tmp_path / name).read_bytes() for name in ('model/config.json', 'model/arrays.safetensors')}
    metrics = (tmp_path / 'metrics.json').read_bytes()
    for content, said in [(metrics[:len(metrics) // 2], 'metrics.json (unreadable, not JSON: '),
                          (b'[1, 2]', 'metrics.json (a JSON list, not an object)')]:
        _, calcfunction = _parse(aiida_localhost, {**files, 'metrics.json': content})
        assert calcfunction.exit_status == EXIT.ERROR_MISSING_OUTPUT_FILES.status
        assert said in calcfunction.exit_message, calcfunction.exit_message
    _, calcfunction = _parse(aiida_localhost, {**files, 'metrics.json': metrics[:10]},
                             scheduler_exit=EXIT.ERROR_SCHEDULER_OUT_OF_WALLTIME.status)
    assert calcfunction.exit_status == 120


def test_a_checkpoint_naming_a_path_writes_nothing_outside(aiida_localhost, tmp_path):
    """Found by review: the parser copied every file the retrieved state.json named before checking the names,
    so a name such as /abs/path (from the remote side) was written on the AiiDA host, then the checkpoint refused."""
    target = tmp_path / 'outside'
    for name in (str(target), f'../{target.name}', 'a/b'):
        state = {'members': {'final.0': {'file': name, 'sha256': 'x'}}, 'current': None}
        files = {'status.json': _status('TIME_LIMIT', reason='r', member='final.0', epoch=None), 'train.log': 'x',
                 'checkpoint/state.json': json.dumps(state), f'checkpoint/{name.lstrip("/")}': b'from the remote side'}
        results, calcfunction = _parse(aiida_localhost, files)
        assert calcfunction.exit_status == EXIT.ERROR_OUT_OF_WALLTIME.status and 'checkpoint' not in results
        assert not target.exists()


def test_a_refused_restart_folder_is_said_in_the_log(aiida_localhost, caplog):
    """Review: voltnet-train said in train.log only that it could not resume from the restart_folder and trained
    from scratch; the work chain still reported 'resuming'."""
    status = _status('TIME_LIMIT', reason='time limit', member='final.0', epoch=3,
                     resume_rejected='the checkpoint is of another training: it differs in sources')
    with caplog.at_level('WARNING'):
        _, calcfunction = _parse(aiida_localhost, {'status.json': status})
    assert calcfunction.exit_status == EXIT.ERROR_OUT_OF_WALLTIME.status
    assert ('restart_folder not resumed from, the job trained from scratch: the checkpoint is of another training: '
            'it differs in sources') in caplog.text


@pytest.mark.parametrize('files', [
    {'checkpoint/state.json': '{"members": []}'},
    {'checkpoint/state.json': '[' * 100000},
    {'checkpoint/state.json': '["x"]'},
    {'checkpoint/state.json': '{"members": {"a": "b"}}'},
], ids=['members-a-list', 'deeply-nested', 'a-list', 'entry-a-string'])
def test_a_malformed_retrieved_checkpoint_is_not_exposed_and_the_parser_does_not_raise(aiida_localhost, files):
    """Found by review: a retrieved state.json whose members were a list, or nested 100000 deep, raised
    AttributeError or RecursionError in the parser (the job excepted); the time limit stands and nothing is
    exposed."""
    status = _status('TIME_LIMIT', reason='r', member='final.0', epoch=1)
    results, calcfunction = _parse(aiida_localhost, {'status.json': status, 'train.log': 'x', **files})
    assert calcfunction.exit_status == EXIT.ERROR_OUT_OF_WALLTIME.status and 'checkpoint' not in results


@pytest.mark.parametrize('name', ['status.json', 'metrics.json'])
def test_deeply_nested_status_or_metrics_are_named_not_raised(aiida_localhost, name):
    files = {'status.json': _status('OK'), 'metrics.json': '{}', name: '[' * 100000}
    _, calcfunction = _parse(aiida_localhost, files)
    assert calcfunction.exit_status == EXIT.ERROR_MISSING_OUTPUT_FILES.status, calcfunction.exit_message
