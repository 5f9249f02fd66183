"""``VoltnetTrainParser`` on retrieved folders built by hand: every failure status maps to its exit code."""
from __future__ import annotations

import json

import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import ProcessState
from aiida.plugins import ParserFactory

from aiida_voltnet.calculations.train_job import VoltnetTrainCalculation

EXIT = VoltnetTrainCalculation.exit_codes


def _parse(computer, files: dict, scheduler_exit: int | None = None):
    node = orm.CalcJobNode(computer=computer, process_type='aiida.calculations:voltnet.train')
    node.set_option('resources', {'num_machines': 1})
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
