"""The data plugins: ElectrodeDataset and VoltageModelData round trips, integrity checks, no pickle."""
from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.common.exceptions import ValidationError
from aiida.plugins import DataFactory

from aiida_voltnet.data import ElectrodeDataset, VoltageModelData
from aiida_voltnet.ml.models import ModelIntegrityError, train_voltage_model
from aiida_voltnet.ml.records import ElectrodeDataError, file_sha256, read_electrodes_csv

from voltnet_test_helpers import CSV_150


@pytest.fixture(scope='module')
def records():
    return read_electrodes_csv(CSV_150)


@pytest.fixture(scope='module')
def core_model(records):
    return train_voltage_model(records[:80], model='krr', seed=3)


def test_entry_points():
    assert DataFactory('voltnet.dataset') is ElectrodeDataset
    assert DataFactory('voltnet.model') is VoltageModelData


def test_dataset_round_trip(records):
    node = ElectrodeDataset(records, source='csv', source_sha256=file_sha256(CSV_150)).store()
    loaded = orm.load_node(node.pk)
    assert isinstance(loaded, ElectrodeDataset)
    assert loaded.records() == records
    assert [r.to_dict() for r in loaded.records()] == [r.to_dict() for r in records]
    assert loaded.n_records == len(records) == len(loaded)
    assert loaded.working_ions == sorted({r.working_ion for r in records})
    assert loaded.source == 'csv'
    assert loaded.source_sha256 == file_sha256(CSV_150)
    assert loaded.mp_provenance() is None
    assert loaded.base.repository.list_object_names() == ['records.json']


def test_dataset_from_mp_provenance(records):
    provenance = {'database_version': '2025.09.25', 'material_ids': ['mp-1', 'mp-2', 'mp-3'],
                  'battery_ids': [r.battery_id for r in records[:3]], 'query': {'working_ion': 'Li'}}
    node = ElectrodeDataset(records[:3], source='materials_project', mp_provenance=provenance).store()
    assert node.mp_database_version == '2025.09.25'
    assert node.base.attributes.get('mp_n_material_ids') == 3
    assert orm.load_node(node.pk).mp_provenance() == provenance
    # a heartbeat that gave no version (a 403, say): no version, not the text 'None' (review)
    unknown = ElectrodeDataset(records[:3], source='materials_project',
                               mp_provenance={**provenance, 'database_version': None}).store()
    assert unknown.mp_database_version is None and 'mp_database_version' not in unknown.base.attributes.all


def test_dataset_refuses_bad_content(records):
    with pytest.raises(ElectrodeDataError, match='at least one record'):
        ElectrodeDataset([])
    with pytest.raises(ElectrodeDataError, match='duplicate battery_id'):
        ElectrodeDataset([records[0], records[0]])
    with pytest.raises(ValueError, match='source must be one of'):
        ElectrodeDataset(records[:1], source='web')


def test_model_round_trip_bit_identical(records, core_model):
    node = VoltageModelData(core_model, metrics={'mae': 0.5, 'bad': float('nan')}).store()
    loaded = orm.load_node(node.pk)
    assert isinstance(loaded, VoltageModelData)
    before_mean, before_std = core_model.predict(records)
    after_mean, after_std = loaded.load_model().predict(records)
    assert np.array_equal(before_mean, after_mean) and np.array_equal(before_std, after_std)
    attributes = loaded.base.attributes.all
    assert attributes['architecture'] == core_model.architecture
    assert attributes['model_name'] == 'krr'
    assert attributes['featurizer_name'] == core_model.featurizer.name
    assert attributes['featurizer_version'] == core_model.featurizer.version
    assert attributes['n_parameters'] == core_model.n_parameters
    assert attributes['seed'] == 3
    assert attributes['training_ions'] == core_model.metadata['training_ions']
    assert attributes['metrics'] == {'mae': 0.5, 'bad': None}  # NaN cannot be an attribute
    assert len(attributes['model_version']) == 64 and len(attributes['arrays_sha256']) == 64
    assert loaded.config()['model_version'] == loaded.model_version
    # No pickle anywhere: a JSON config and a safetensors file.
    assert sorted(loaded.base.repository.list_object_names()) == ['arrays.safetensors', 'config.json']


def test_altered_weights_raise(core_model):
    node = VoltageModelData(core_model)
    content = bytearray(node.base.repository.get_object_content('arrays.safetensors', mode='rb'))
    content[-1] ^= 0xFF
    node.base.repository.put_object_from_bytes(bytes(content), 'arrays.safetensors')
    with pytest.raises(ModelIntegrityError, match='weights file arrays.safetensors was altered'):
        node.load_model()


def test_altered_config_raises(core_model):
    import json

    node = VoltageModelData(core_model)
    config = json.loads(node.base.repository.get_object_content('config.json'))
    config['members'][0]['y_mean'] += 1.0
    node.base.repository.put_object_from_bytes(json.dumps(config).encode(), 'config.json')
    with pytest.raises(ModelIntegrityError, match='config'):
        node.load_model()


@pytest.mark.parametrize('attribute, value', [('model_name', 'mha_resnet'), ('training_ions', ['Li']),
                                              ('featurizer_leaks_target', True), ('target', 'max_delta_volume'),
                                              ('model_params', {'alpha': 5.0})])
def test_altered_queryable_attributes_raise(core_model, attribute, value):
    """The attributes queries select on must say what config.json says, stored or not."""
    node = VoltageModelData(core_model)
    node.load_model()
    clone = node.clone()
    clone.base.attributes.set(attribute, value)
    with pytest.raises(ModelIntegrityError, match=f'attribute\\(s\\) {attribute} differ'):
        clone.load_model()
    # and refused at store: a forged node was stored, and queries found it as a model of its own (review)
    with pytest.raises(ValidationError, match=f'attribute\\(s\\) {attribute} differ'):
        clone.store()
    assert not clone.is_stored


def test_a_model_node_stores_only_what_loads_and_names_a_lost_object(core_model):
    """Weights changed before storing were stored (review); an object gone from the object store was a bare
    FileNotFoundError with its hash key; messages named a temporary folder deleted by then."""
    import json

    from aiida.manage import get_manager

    node = VoltageModelData(core_model)
    content = bytearray(node.base.repository.get_object_content('arrays.safetensors', mode='rb'))
    content[-1] ^= 0xFF
    node.base.repository.put_object_from_bytes(bytes(content), 'arrays.safetensors')
    before = orm.QueryBuilder().append(orm.Node).count()
    with pytest.raises(ValidationError, match='weights file arrays.safetensors was altered'):
        node.store()
    assert orm.QueryBuilder().append(orm.Node).count() == before
    for change, message in [
            (lambda c: c.update(format_version=2), 'model format version 2: this aiida-voltnet reads version 1 (the '
                                                   'model was saved by a newer aiida-voltnet: upgrade to load it)'),
            (lambda c: c['members'][0].pop('kind'), "config.json: malformed model config (KeyError: 'kind')")]:
        node = VoltageModelData(core_model)
        config = json.loads(node.base.repository.get_object_content('config.json'))
        change(config)
        config['model_version'] = type(core_model).version_hash(config)
        node.base.repository.put_object_from_bytes(json.dumps(config).encode(), 'config.json')
        node.base.attributes.set('model_version', config['model_version'])
        with pytest.raises(ModelIntegrityError) as info:
            node.load_model()
        assert str(info.value) == f'VoltageModelData<unstored>: {message}'
    stored = VoltageModelData(core_model).store()
    key = stored.base.repository.get_object('config.json').key
    get_manager().get_profile_storage().get_repository().delete_objects([key])
    with pytest.raises(ModelIntegrityError, match=f'VoltageModelData<{stored.pk}>: the repository object of '
                                                  'config.json is missing'):
        orm.load_node(stored.pk).load_model()


def test_model_params_are_a_queryable_attribute(records):
    """The hyper-parameters a training set are an attribute: models can be selected on them ({} for the spec's)."""
    tuned = VoltageModelData(train_voltage_model(records[:80], model='krr', model_params={'alpha': 0.5})).store()
    plain = VoltageModelData(train_voltage_model(records[:80], model='krr')).store()
    assert tuned.base.attributes.get('model_params') == {'alpha': 0.5}
    assert plain.base.attributes.get('model_params') == {}
    found = orm.QueryBuilder().append(VoltageModelData, filters={'attributes.model_params.alpha': 0.5},
                                      project='uuid').all(flat=True)
    assert tuned.uuid in found and plain.uuid not in found
    tuned.load_model()


def test_dataset_refuses_records_that_no_reader_would_take(records):
    """Records built by hand were stored unchecked: the node stored, then every reader refused it."""
    import dataclasses

    from aiida_voltnet.ml.records import ElectrodeRecord

    raw = ElectrodeRecord(battery_id='x1', formula_charge='FePO4', formula_discharge='LiFePO4', working_ion='Xx')
    with pytest.raises(ElectrodeDataError, match="working_ion.*'Xx'|'Xx'.*working"):
        ElectrodeDataset([raw])
    with pytest.raises(ElectrodeDataError):
        ElectrodeDataset([dataclasses.replace(raw, working_ion='Li', average_voltage=float('nan'))])
    node = ElectrodeDataset([dataclasses.replace(raw, working_ion='Li', average_voltage=3.4)]).store()
    assert orm.load_node(node.pk).records()[0].framework_formula == 'FePO4'


@pytest.mark.parametrize('content, match', [
    (b'not json', r'records.json is not a list of electrode records \(JSONDecodeError'),
    (b'\xff\xfe', r'records.json is not a list of electrode records \(UnicodeDecodeError'),
    (b'{"a": 1}', 'records.json is not a list of electrode records'),
    (b'null', 'records.json is not a list of electrode records'),
    (b'[{"battery_id": "x"}]', 'records.json is not a list of electrode records'),
    # review: a number a float cannot hold, and brackets nested too deeply, escaped unnamed
    (b'[' * 100000, r'records.json is not a list of electrode records \(RecursionError'),
])
def test_dataset_names_a_records_file_that_is_no_records(records, content, match):
    """A records.json whose sha256 matches (an archive made so) but whose content is no records raised bare
    JSON, Unicode or TypeErrors."""
    import hashlib

    clone = ElectrodeDataset(records[:2]).clone()
    clone.base.repository.put_object_from_bytes(content, 'records.json')
    clone.base.attributes.set('records_sha256', hashlib.sha256(content).hexdigest())
    with pytest.raises(ElectrodeDataError, match=f'ElectrodeDataset<unstored>: {match}'):
        clone.records()


def test_dataset_without_its_hash_or_file_is_refused(records):
    """A dataset whose records_sha256 was deleted (from an archive) skipped the check: edited records loaded."""
    import json

    clone = ElectrodeDataset(records[:2]).clone()
    edited = json.loads(clone.base.repository.get_object_content('records.json'))
    edited[0]['average_voltage'] = 9.99
    clone.base.repository.put_object_from_bytes(json.dumps(edited).encode(), 'records.json')
    clone.base.attributes.delete('records_sha256')
    with pytest.raises(ElectrodeDataError, match='attribute records_sha256 is missing'):
        clone.records()
    other = ElectrodeDataset(records[:2]).clone()
    other.base.repository.delete_object('records.json')
    with pytest.raises(ElectrodeDataError, match='the repository has no records.json'):
        other.records()
    twice = ElectrodeDataset(records[:2]).clone()
    doubled = json.loads(twice.base.repository.get_object_content('records.json')) * 2
    content = json.dumps(doubled).encode()
    twice.base.repository.put_object_from_bytes(content, 'records.json')
    import hashlib
    twice.base.attributes.set('records_sha256', hashlib.sha256(content).hexdigest())
    with pytest.raises(ElectrodeDataError, match='repeats battery_id'):
        twice.records()


@pytest.mark.parametrize('change, match', [
    (lambda node: node.base.attributes.delete('model_version'), 'attribute model_version is missing'),
    (lambda node: node.base.attributes.delete('arrays_sha256'), 'attribute arrays_sha256 is missing'),
    (lambda node: node.base.attributes.set('model_version', 123), 'attribute model_version is 123'),
])
def test_model_without_its_hashes_is_refused(core_model, change, match):
    """A model node from an archive without model_version or arrays_sha256 raised AttributeError (a validator
    said 'AttributeError: model_version'); a non-string version a TypeError."""
    clone = VoltageModelData(core_model).clone()
    change(clone)
    with pytest.raises(ModelIntegrityError, match=match):
        clone.load_model()


@pytest.mark.parametrize('edit', [lambda c: c.pop('architecture'), lambda c: c.pop('n_parameters'),
                                  lambda c: c.__setitem__('metadata', []), lambda c: c.__setitem__('featurizer', 'x'),
                                  lambda c: c.__setitem__('n_parameters', 'abc'),
                                  lambda c: c.__setitem__('n_parameters', 1e400)])
def test_model_config_without_what_describes_it_is_refused(core_model, edit):
    """config.json keeping its model_version but losing a field raised KeyError, AttributeError or ValueError."""
    import json

    clone = VoltageModelData(core_model).clone()
    config = json.loads(clone.base.repository.get_object_content('config.json'))
    edit(config)
    clone.base.repository.put_object_from_bytes(json.dumps(config).encode(), 'config.json')
    with pytest.raises(ModelIntegrityError, match='config.json'):
        clone.load_model()


def test_a_dataset_whose_attributes_contradict_its_records_is_refused_in_its_own_process_too(records):
    """Found by review: a dataset built in this process returned its records before the attribute check, so one
    with n_records/working_ions set by hand was taken by validators and calculation bodies and stored as an input;
    every later reader (voltnet provenance included) then refused it, and queries on working_ions lied."""
    from aiida.common.exceptions import ValidationError

    node = ElectrodeDataset(records[:10])
    node.base.attributes.set('n_records', 3)
    node.base.attributes.set('working_ions', ['Na'])
    with pytest.raises(ElectrodeDataError, match=r'attribute\(s\) n_records, working_ions differ from records.json'):
        node.records()
    before = orm.QueryBuilder().append(ElectrodeDataset).count()
    with pytest.raises(ValidationError, match='differ from records.json'):
        node.store()
    assert orm.QueryBuilder().append(ElectrodeDataset).count() == before


def test_model_metrics_must_be_a_dict_and_a_lost_hash_is_named_in_a_calculation(core_model):
    """Found by review: VoltageModelData(model, metrics=[1, 2]) was stored and .metrics then raised TypeError; a node
    whose arrays_sha256 was deleted (an edited archive) failed predict_voltages' validation with 'AttributeError:
    arrays_sha256' before load_model could name it."""
    from aiida_voltnet.calculations import functions as F

    before = orm.QueryBuilder().append(orm.Node).count()
    with pytest.raises(TypeError, match='metrics must be a dict, got list'):
        VoltageModelData(core_model, metrics=[1, 2])
    clone = VoltageModelData(core_model).clone()
    clone.base.attributes.set('metrics', [1, 2])
    with pytest.raises(ModelIntegrityError, match='attribute metrics is a list'):
        clone.metrics
    with pytest.raises(ModelIntegrityError, match=r'attribute\(s\) metrics differ'):
        clone.load_model()
    lost = VoltageModelData(core_model).clone()
    lost.base.attributes.delete('arrays_sha256')
    assert lost.arrays_sha256 is None
    with pytest.raises(ModelIntegrityError, match='attribute arrays_sha256 is missing'):
        F.load_model(lost)
    assert orm.QueryBuilder().append(orm.Node).count() == before


def test_a_dataset_refuses_one_id_in_two_spellings(records):
    """Review: the CSV reader took fullwidth 'ｍｐ' and 'mp' as one id, but a dataset built from records compared the
    ids character by character and stored both."""
    import dataclasses

    twin = dataclasses.replace(records[0], battery_id=records[0].battery_id.replace('mp', '\uff4d\uff50', 1))
    with pytest.raises(ElectrodeDataError, match='duplicate battery_id'):
        ElectrodeDataset([records[0], twin])
