"""Real ``VoltnetTrainCalculation`` runs on ``localhost`` (core.local + core.direct) with ``voltnet-train`` of this
venv, through ``run_get_node`` on the broker-less test profile: a 60-row set and a 3-epoch MLP (seconds)."""
from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_voltnet.calculations.train_job import VoltnetTrainCalculation
from aiida_voltnet.data.model import VoltageModelData
from aiida_voltnet.ml.models import train_voltage_model

MLP_3 = {'train_overrides': {'epochs': 3}}


def _run(code, dataset, model='mlp', seed=0, settings=None):
    inputs = {'code': code, 'dataset': dataset, 'model': orm.Str(model), 'seed': orm.Int(seed),
              'settings': orm.Dict(settings if settings is not None else MLP_3),
              'metadata': {'options': {'max_wallclock_seconds': 600}}}
    return run_get_node(VoltnetTrainCalculation, **inputs)


def test_real_run_on_localhost_matches_the_core_model(train_code, dataset_60):
    results, node = _run(train_code, dataset_60, seed=5)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    model = results['model']
    assert isinstance(model, VoltageModelData) and model.model_name == 'mlp' and model.base.attributes.get('seed') == 5
    assert model.metrics['train']['n'] == 60 and model.metrics['device'] == 'cpu'
    assert results['metrics']['train']['n'] == 60
    retrieved = set(node.outputs.retrieved.base.repository.list_object_names())
    assert {'train.log', 'metrics.json', 'status.json', 'model'} <= retrieved
    assert 'VOLTNET_STATUS OK' in node.outputs.retrieved.base.repository.get_object_content('train.log')

    records = dataset_60.records()
    core = train_voltage_model(records, featurizer='leakfree', model='mlp', seed=5, device='cpu', **MLP_3)
    expected, _ = core.predict(records)
    predicted, _ = model.load_model().predict(records)
    # same seed, same CPU: the remote process reproduces the in-process training bit for bit
    np.testing.assert_array_equal(predicted, expected)


def test_model_output_is_the_calcfunction_kind(train_code, dataset_60):
    """The CalcJob's ``model`` has the same attributes (and, here, weights) as ``train_model``'s."""
    from aiida_voltnet.calculations.functions import train_model

    results, node = _run(train_code, dataset_60, model='krr', settings={})
    assert node.is_finished_ok, node.exit_message
    reference = train_model(dataset_60, model='krr', seed=0)
    job_model = results['model']
    assert set(job_model.base.attributes.keys()) == set(reference.base.attributes.keys())
    assert job_model.arrays_sha256 == reference.arrays_sha256
    assert job_model.metrics['train'] == pytest.approx(reference.metrics['train'])


def test_nan_loss_gives_exit_410(train_code, dataset_60):
    results, node = _run(train_code, dataset_60, settings={'train_overrides': {'epochs': 3, 'lr': 1e30}})
    assert node.exit_status == VoltnetTrainCalculation.exit_codes.ERROR_LOSS_DIVERGED.status == 410
    assert 'NaN' in node.exit_message or 'nan' in node.exit_message.lower()
    assert 'model' not in results
    assert 'VOLTNET_STATUS LOSS_DIVERGED' in node.outputs.retrieved.base.repository.get_object_content('train.log')
