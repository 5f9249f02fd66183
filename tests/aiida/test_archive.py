"""Archive round trip: export a trained model with its predictions, wipe the profile, import, and get the same
numbers bit for bit and the same provenance answer.

This module resets the storage of the session profile; it builds everything it needs itself.
"""
from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.tools.archive import create_archive, import_archive

from aiida_voltnet.provenance import list_predictions, prediction_provenance
from voltnet_test_helpers import CSV_150, count_nodes


def _without_pks(value):
    if isinstance(value, dict):
        return {k: _without_pks(v) for k, v in value.items() if k not in ('pk', 'process_pk', 'node_pk', 'node')}
    if isinstance(value, list):
        return [_without_pks(v) for v in value]
    return value


def test_archive_round_trip(aiida_profile, tmp_path):
    from aiida.engine import run_get_node

    from aiida_voltnet.workflows.predict import PredictWorkChain
    from aiida_voltnet.workflows.quickstart import shipped_structure_pairs
    from aiida_voltnet.workflows.train import TrainWorkChain

    builder = TrainWorkChain.get_builder_from_protocol(
        orm.SinglefileData(CSV_150), protocol='fast',
        overrides={'split': {'kind': 'random'},
                   'train': {'model': 'mlp', 'settings': {'train_overrides': {'epochs': 3}}}})
    trained, _ = run_get_node(builder)
    model, test = trained['model'], trained['test_dataset']
    pairs = {port: {k: v for k, v in pair.items() if k != 'name'}
             for port, pair in shipped_structure_pairs(['LiFePO4']).items()}
    predicted, workchain = run_get_node(PredictWorkChain, model=model, dataset=test, structures=pairs)
    array, voltage = predicted['predictions'], predicted['voltages']['LiFePO4']
    mean, std = array.get_array('mean'), array.get_array('std')
    answers = {'array': prediction_provenance(array), 'voltage': prediction_provenance(voltage)}
    listing = list_predictions(model)
    uuids = {'model': model.uuid, 'array': array.uuid, 'voltage': voltage.uuid, 'workchain': workchain.uuid}
    voltage_value, model_version = voltage.value, model.model_version
    test_uuid = test.uuid

    archive = tmp_path / 'voltnet.aiida'
    create_archive([model, array, voltage, workchain], filename=archive)
    # Nodes loaded so far belong to the storage closed by the reset: use only values and UUIDs after it.
    del model, test, array, voltage, workchain, trained, predicted
    aiida_profile.reset_storage()
    assert count_nodes() == 0
    import_archive(archive)
    assert count_nodes() > 0

    imported_model = orm.load_node(uuids['model'])
    imported_array = orm.load_node(uuids['array'])
    imported_voltage = orm.load_node(uuids['voltage'])
    assert imported_model.model_version == model_version
    assert np.array_equal(imported_array.get_array('mean'), mean)
    assert np.array_equal(imported_array.get_array('std'), std)
    assert imported_voltage.value == voltage_value
    # The imported model still predicts the same numbers, bit for bit.
    again_mean, again_std = imported_model.load_model().predict(orm.load_node(test_uuid).records())
    assert np.array_equal(again_mean, mean) and np.array_equal(again_std, std)
    assert _without_pks(prediction_provenance(imported_array)) == _without_pks(answers['array'])
    assert _without_pks(prediction_provenance(imported_voltage)) == _without_pks(answers['voltage'])
    assert _without_pks(list_predictions(imported_model)) == _without_pks(listing)
    assert answers['array']['training_dataset']['origin']['sha256'] is not None
