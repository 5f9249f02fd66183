"""Real runs on ``localhost`` (core.local + core.direct) of ``VoltnetTrainBaseWorkChain`` where the first
``VoltnetTrainCalculation`` stops before the end of its training (the ``stop_after_*`` hooks of ``voltnet-train``:
the same exit as at its walltime stop, deterministic on a loaded machine; the direct scheduler enforces no
walltime): the parser exposes the checkpoint, the walltime handler restarts the job from it, and the final model
is the one an uninterrupted training gives."""
from __future__ import annotations

import json

from aiida import orm
from aiida.engine import run_get_node

from aiida_voltnet.calculations.train_job import VoltnetTrainCalculation
from aiida_voltnet.ml.models import train_voltage_model
from aiida_voltnet.workflows.train_restart import VoltnetTrainBaseWorkChain


def _run(code, dataset, model, settings, checkpointing, seed=4):
    builder = VoltnetTrainBaseWorkChain.get_builder()
    builder.train.code = code
    builder.train.dataset = dataset
    builder.train.model = orm.Str(model)
    builder.train.seed = orm.Int(seed)
    builder.train.settings = orm.Dict(settings)
    builder.train.checkpointing = orm.Dict(checkpointing)
    builder.train.metadata.options = {'max_wallclock_seconds': 600,
                                      'resources': {'num_machines': 1, 'num_mpiprocs_per_machine': 1}}
    results, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    calculations = sorted((n for n in node.called if n.process_class is VoltnetTrainCalculation), key=lambda n: n.pk)
    return results, calculations


def _reference(dataset, model, settings, seed=4, tmp_path=None):
    """The uninterrupted training, in this process, with the intra-op threads voltnet-train uses
    (``default_threads``): float sums over 1 and 2 threads differ in the last bits, and this compares bits."""
    import torch

    from aiida_voltnet.ml.training import default_threads

    threads = torch.get_num_threads()
    default_threads()
    try:
        core = train_voltage_model(dataset.records(), featurizer='leakfree', model=model, seed=seed, device='cpu',
                                   **settings)
    finally:
        torch.set_num_threads(threads)
    config = json.loads((core.save(tmp_path / 'reference') / 'config.json').read_text())
    return config['arrays_sha256'], config['model_version']


def _checks(calculations):
    first, second = calculations
    assert first.exit_status == VoltnetTrainCalculation.exit_codes.ERROR_OUT_OF_WALLTIME.status == 400
    checkpoint = first.outputs.checkpoint
    assert 'state.json' in checkpoint.base.repository.list_object_names()
    # provenance: the second job was given the first one's checkpoint
    assert second.inputs.restart_folder.uuid == checkpoint.uuid
    assert second.is_finished_ok
    assert 'checkpoint' not in second.outputs and 'checkpoint' not in second.outputs.retrieved.base.repository.\
        list_object_names()  # removed by the script once the model was written
    return second.outputs.metrics.get_dict()


def test_torch_ensemble_resumes_mid_member_to_the_uninterrupted_model(train_code, dataset_60, tmp_path):
    # 2 members x 3 epochs, calibration then final: 12 epochs; the first job stops after 7 (final.0, epoch 1)
    settings = {'members': 2, 'train_overrides': {'epochs': 3}}
    results, calculations = _run(train_code, dataset_60, 'voltnet_mlp', settings, {'stop_after_epochs': 7})
    assert len(calculations) == 2
    assert 'member final.0 epoch 1' in calculations[0].exit_message
    metrics = _checks(calculations)
    assert metrics['resumed'] is True
    assert metrics['resumed_from']['members'] == ['calibration.0', 'calibration.1']
    assert metrics['resumed_from']['current'] == {'member': 'final.0', 'epoch': 1}
    model = results['model']
    assert (model.arrays_sha256, model.model_version) == _reference(dataset_60, 'voltnet_mlp', settings,
                                                                    tmp_path=tmp_path)


def test_tree_ensemble_resume_skips_finished_members(train_code, dataset_60, tmp_path):
    # 2 members, calibration then final: the first job stops after 3 members, the second trains only final.1
    settings = {'members': 2}
    results, calculations = _run(train_code, dataset_60, 'voltnet', settings, {'stop_after_members': 3})
    assert len(calculations) == 2
    metrics = _checks(calculations)
    assert metrics['resumed_from'] == {**metrics['resumed_from'], 'current': None,
                                       'members': ['calibration.0', 'calibration.1', 'final.0']}
    log = calculations[1].outputs.retrieved.base.repository.get_object_content('train.log')
    assert log.count('restored from the checkpoint (not trained again)') == 3
    model = results['model']
    assert (model.arrays_sha256, model.model_version) == _reference(dataset_60, 'voltnet', settings,
                                                                    tmp_path=tmp_path)
