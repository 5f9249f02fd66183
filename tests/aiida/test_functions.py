"""The calculation functions: provenance links, batch and single predictions, DFT voltage, and refusal of bad
input without storing anything."""
from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.plugins import CalculationFactory

from aiida_voltnet.calculations import functions as F
from aiida_voltnet.data import ElectrodeDataset, VoltageModelData
from aiida_voltnet.ml.records import read_electrodes_csv

from voltnet_test_helpers import CSV_150, FAST_MLP, count_nodes, write_csv_with

NAMES = ('assemble_dataset_from_csv', 'assemble_dataset_from_mp', 'assemble_dataset_from_structures',
         'split_dataset', 'featurize', 'train_model', 'evaluate_model', 'predict_voltages', 'predict_structure_pair',
         'dft_voltage')


@pytest.mark.parametrize('name', NAMES)
def test_entry_points(name):
    assert CalculationFactory(f'voltnet.{name}') is getattr(F, name)


def test_provenance_chain(trained):
    """prediction -> predict process -> model -> train process -> dataset -> split -> dataset -> SinglefileData."""
    predictions, process = F.predict_voltages.run_get_node(trained.model, trained.test)
    assert process.is_finished_ok
    assert predictions.creator.uuid == process.uuid
    assert process.process_type == 'aiida.calculations:voltnet.predict_voltages'
    assert process.inputs.model.uuid == trained.model.uuid
    training = trained.model.creator
    assert training.process_type == 'aiida.calculations:voltnet.train_model'
    assert training.inputs.dataset.uuid == trained.train.uuid
    split = trained.train.creator
    assert split.process_type == 'aiida.calculations:voltnet.split_dataset'
    assert split.inputs.dataset.uuid == trained.dataset.uuid
    assemble = trained.dataset.creator
    assert assemble.inputs.csv.uuid == trained.csv.uuid
    assert trained.dataset.source_sha256 == trained.train.source_sha256 == trained.test.source_sha256
    assert trained.dataset.n_records == 150
    assert trained.train.n_records + trained.test.n_records == 150


def test_a_rounded_host_is_written_to_the_process_report(trained):
    """A host read as written, Ni0.33Mn0.33Co0.34O2 (300 atoms per integer formula unit), warned on the
    interpreter's stderr only; the prediction's process report says it, where `verdi process report` shows it."""
    from aiida_voltnet.ml.records import ElectrodeRecord, validate_record

    record = validate_record(ElectrodeRecord(battery_id='nmc-rounded', formula_charge='Ni0.33Mn0.33Co0.34O2',
                                             formula_discharge='LiNi0.33Mn0.33Co0.34O2', working_ion='Li'))
    exact = validate_record(ElectrodeRecord(battery_id='nmc-exact', formula_charge='NiMnCoO6',
                                            formula_discharge='Li3NiMnCoO6', working_ion='Li'))
    _, rounded_process = F.predict_voltages.run_get_node(trained.model, ElectrodeDataset([record, exact]))
    _, exact_process = F.predict_voltages.run_get_node(trained.model, ElectrodeDataset([exact]))

    def messages(process):
        return [log.message for log in orm.Log.collection.get_logs_for(process)]

    assert any('RoundedAmountsWarning: host amounts that look rounded: Mn0.33Co0.34Ni0.33O2 is read as '
               '300 atoms per integer formula unit, where MnCoNiO6 has 9' in m for m in messages(rounded_process))
    assert not any('RoundedAmountsWarning' in m for m in messages(exact_process))


def test_rounded_occupancies_of_structures_are_written_to_the_process_report(trained):
    """Structure files with occupancies 0.33/0.33/0.34 were read as a 300-atom host with no word; now the
    prediction's process report says so, as for the same host written as a formula (and the exact cell says
    nothing), though the validator built the record first."""
    import warnings

    from pymatgen.core import Lattice, Structure

    def layered(occupancy, lithiated):
        cell = Structure.from_spacegroup('R-3m', Lattice.hexagonal(2.82, 14.05), ['Li', occupancy, 'O'],
                                         [[0, 0, 0.5], [0, 0, 0], [0, 0, 0.24]])
        if not lithiated:
            cell.remove_species(['Li'])
        return orm.StructureData(pymatgen=cell)

    def messages(occupancy):
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            _, process = F.predict_structure_pair.run_get_node(trained.model, layered(occupancy, False),
                                                               layered(occupancy, True), orm.Str('Li'))
        return [log.message for log in orm.Log.collection.get_logs_for(process)]

    assert any("RoundedAmountsWarning: structure pair: the charged structure's partial occupancies look rounded"
               in m for m in messages({'Ni': 0.33, 'Mn': 0.33, 'Co': 0.34}))
    assert not any('RoundedAmountsWarning' in m for m in messages({'Ni': 1 / 3, 'Mn': 1 / 3, 'Co': 1 / 3}))


def test_a_pair_of_two_frameworks_is_written_to_the_process_report(trained, cobalt_oxide_frameworks):
    """A pair whose hosts share their composition but not their structure (rutile CoO2, layered LiCoO2) is
    predicted, and its process report says so (review: it said nothing)."""
    import warnings

    host, rutile, layered = cobalt_oxide_frameworks
    for charged, said in ((rutile, True), (host, False)):
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            _, process = F.predict_structure_pair.run_get_node(trained.model, orm.StructureData(pymatgen=charged),
                                                               orm.StructureData(pymatgen=layered), orm.Str('Li'))
        logs = [log.message for log in orm.Log.collection.get_logs_for(process)]
        assert process.is_finished_ok
        assert any('FrameworkMismatchWarning: structure pair: the charged (CoO2, space group 136)' in m
                   for m in logs) is said, logs


def test_the_input_warnings_of_a_pair_are_an_output_kept_by_a_cache_clone_and_in_the_work_chain(
        trained, cobalt_oxide_frameworks):
    """Found by review: a pair of two frameworks was said only in the calcfunction's own report, which a cache clone
    does not have and PredictWorkChain's report did not repeat; it is the output input_warnings now, which the work
    chain returns per pair and reports, and the prediction's provenance lists."""
    import warnings

    from aiida.engine import run_get_node
    from aiida.manage.caching import enable_caching

    from aiida_voltnet.provenance import prediction_provenance
    from aiida_voltnet.workflows.predict import PredictWorkChain

    host, rutile, layered = cobalt_oxide_frameworks
    charged, discharged = orm.StructureData(pymatgen=rutile), orm.StructureData(pymatgen=layered)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        result = F.predict_structure_pair(trained.model, charged, discharged, orm.Str('Li'))
        (said,) = result['input_warnings'].get_list()
        assert said.startswith('FrameworkMismatchWarning: structure pair: the charged (CoO2, space group 136)')
        assert prediction_provenance(result['voltage'])['input_warnings'] == [said]
        with enable_caching(identifier='aiida.calculations:voltnet.predict_structure_pair'):
            clone = F.predict_structure_pair(trained.model, charged, discharged, orm.Str('Li'))
        # from the cache (its source: this pair's first prediction, or an earlier test's of the same pair)
        assert clone['voltage'].creator.base.caching.is_created_from_cache
        assert clone['input_warnings'].get_list() == [said]
        assert not orm.Log.collection.get_logs_for(clone['voltage'].creator)  # the clone has no report to say it
        same = F.predict_structure_pair(trained.model, orm.StructureData(pymatgen=host), discharged, orm.Str('Li'))
        assert same['input_warnings'].get_list() == []
        results, node = run_get_node(PredictWorkChain, model=trained.model, structures={
            'rutile': {'charged': charged, 'discharged': discharged, 'working_ion': orm.Str('Li')}})
    assert node.is_finished_ok and results['input_warnings']['rutile'].get_list() == [said]
    reports = [log.message for log in orm.Log.collection.get_logs_for(node)]
    assert any('|predict_structures]: input warnings: rutile (FrameworkMismatchWarning: structure pair: the' in m
               for m in reports), reports


def test_training_warnings_are_written_to_the_process_report(trained):
    """The paper featurizer's leak warning and a rough uncertainty calibration (too few held-out rows) went to the
    interpreter's stderr as bare Python warnings, lost to the provenance graph: each is in the report of the
    train_model process now, once; a leak-free single model's report has neither."""
    def messages(process):
        return [log.message for log in orm.Log.collection.get_logs_for(process)]

    _, paper = F.train_model.run_get_node(trained.train, featurizer='paper', model='krr')
    assert sum('TargetLeakWarning: the paper featurizer includes capacity_grav and energy_grav' in m
               for m in messages(paper)) == 1
    _, ensemble = F.train_model.run_get_node(trained.train, model='voltnet',
                                             settings={'members': 2, 'model_params': {'max_iter': 5}})
    assert sum('CalibrationWarning: the uncertainty calibration saw only' in m for m in messages(ensemble)) == 1
    assert all('|train_model|warning]' in m for m in messages(paper) + messages(ensemble))
    # at the WARNING level: kept where a profile stores only warnings (logging.db_loglevel WARNING); REPORT is below
    assert {log.levelname for log in orm.Log.collection.get_logs_for(paper)} == {'WARNING'}
    _, quiet = F.train_model.run_get_node(trained.train, model='krr')
    assert messages(quiet) == []


def test_warnings_before_an_error_are_still_told():
    """A block that warned and then raised lost its warnings (they were reported after the block, which never
    returned): outside a process they are warned as usual, with the error still raised."""
    import warnings

    from aiida_voltnet.ml.models import CalibrationWarning

    with pytest.warns(CalibrationWarning, match='saw only 3 held-out rows'), pytest.raises(RuntimeError, match='boom'):
        with F._warnings_reported(CalibrationWarning):
            warnings.warn('the uncertainty calibration saw only 3 held-out rows', CalibrationWarning)
            raise RuntimeError('boom')


def test_batch_predict_is_one_process_one_array(trained):
    n_calcs, n_arrays, n_all = count_nodes(orm.CalcFunctionNode), count_nodes(orm.ArrayData), count_nodes()
    result, process = F.predict_voltages.run_get_node(trained.model, trained.dataset)
    assert count_nodes(orm.CalcFunctionNode) == n_calcs + 1
    assert count_nodes(orm.ArrayData) == n_arrays + 1
    assert count_nodes() == n_all + 2
    outputs = process.base.links.get_outgoing().all()
    assert [link.link_label for link in outputs] == ['result']
    array = outputs[0].node
    assert set(array.get_arraynames()) == {'mean', 'std', 'index', 'battery_ids', 'working_ions', 'unseen_elements',
                                           'ion_content_outside', 'end_members_reversed', 'features_outside'}
    records = trained.dataset.records()
    unseen = [bool(elements) for elements in trained.model.load_model().unseen_host_elements(records)]
    assert array.get_array('unseen_elements').tolist() == unseen
    assert array.base.attributes.get('n_unseen_elements') == sum(unseen)
    outside = [bool(phrase) for phrase in trained.model.load_model().ion_content_outside(records)]
    assert array.get_array('ion_content_outside').tolist() == outside
    assert array.base.attributes.get('n_ion_content_outside') == sum(outside)
    swapped = [r.end_members_reversed for r in records]
    assert array.get_array('end_members_reversed').tolist() == swapped
    assert array.base.attributes.get('n_end_members_reversed') == sum(swapped)
    beyond = [bool(phrase) for phrase in trained.model.load_model().features_outside(records)]
    assert array.get_array('features_outside').tolist() == beyond
    assert array.base.attributes.get('n_features_outside') == sum(beyond)
    assert array.get_array('index').tolist() == list(range(150))
    assert array.get_array('battery_ids').tolist() == [r.battery_id for r in records]
    assert array.get_array('working_ions').tolist() == [r.working_ion for r in records]
    mean, std = trained.model.load_model().predict(records)
    assert np.array_equal(array.get_array('mean'), mean) and np.array_equal(array.get_array('std'), std)
    assert array.base.attributes.get('model_version') == trained.model.model_version


def test_structure_pair_float_linked_to_structures(trained, shipped_nodes):
    charged, discharged, ion = shipped_nodes['LiFePO4']
    result, process = F.predict_structure_pair.run_get_node(trained.model, charged, discharged, ion)
    voltage, uncertainty = result['voltage'], result['uncertainty']
    assert isinstance(voltage, orm.Float) and isinstance(uncertainty, orm.Float)
    assert np.isfinite(voltage.value) and uncertainty.value >= 0
    assert voltage.creator.uuid == process.uuid
    assert process.inputs.charged.uuid == charged.uuid and process.inputs.discharged.uuid == discharged.uuid
    # Same number as the batch path through a dataset assembled from the same structures.
    dataset = F.assemble_dataset_from_structures(LiFePO4={'charged': charged, 'discharged': discharged,
                                                          'working_ion': orm.Str(ion)})
    assert dataset.source == 'structures' and dataset.battery_ids() == ['LiFePO4']
    array = F.predict_voltages(trained.model, dataset)
    # aiida-core stores Float (attribute) values with 14 significant digits; ArrayData keeps all bits.
    assert array.get_array('mean')[0] == pytest.approx(voltage.value, rel=1e-13)


def test_a_structure_pair_with_features_beyond_the_training_range_is_marked_in_its_outputs(trained):
    """Review: the features-outside flag of a structure pair went to the process's report only, so a cache clone lost
    it and `voltnet predictions` listed the pair as no extrapolation, unlike the same electrode in a batch."""
    from aiida.manage.caching import enable_caching
    from pymatgen.core import Lattice, Structure

    from aiida_voltnet.provenance import list_predictions, prediction_provenance

    layered = Structure.from_spacegroup('R-3m', Lattice.hexagonal(2.82, 14.05), ['Li', 'W', 'O'],
                                       [[0, 0, 0.5], [0, 0, 0], [0, 0, 0.24]]).get_primitive_structure()
    host = layered.copy()
    host.remove_species(['Li'])
    charged, discharged = orm.StructureData(pymatgen=host), orm.StructureData(pymatgen=layered)
    record = F.pair_record(charged, discharged, 'Li')
    expected = trained.model.load_model().features_outside([record])[0]
    assert expected.startswith('1 of ') and 'features beyond the training range' in expected  # W-O layers, here
    result = F.predict_structure_pair(trained.model, charged, discharged, orm.Str('Li'))
    assert result['features_outside'].get_list() == [expected]
    assert prediction_provenance(result['voltage'])['extrapolation']['features_outside'] == [expected]
    with enable_caching(identifier='aiida.calculations:voltnet.predict_structure_pair'):
        clone = F.predict_structure_pair(trained.model, charged, discharged, orm.Str('Li'))
    assert clone['voltage'].creator.base.caching.get_cache_source() == result['voltage'].creator.uuid
    assert clone['features_outside'].get_list() == [expected]
    rows = {row['node_uuid']: row for row in list_predictions(trained.model)}
    assert rows[result['voltage'].uuid]['extrapolation'] is True and rows[clone['voltage'].uuid]['extrapolation']


@pytest.mark.parametrize('energies, expected', [
    # Li: E(dis) - E(ch) = -5.0 eV for one Li, E(Li metal) = -1.9 eV/atom -> V = 3.1 V
    ((-100.0, -105.0, -1.9, 1.0, 1), 3.1),
    # Mg (z = 2), two ions per cell: -[-120 + 100 + 2 * 1.5] / (2 * 2) = 4.25 V
    ((-100.0, -120.0, -1.5, 2.0, 2), 4.25),
])
def test_dft_voltage(energies, expected):
    result, process = F.dft_voltage.run_get_node(*energies)
    assert result.value == pytest.approx(expected, abs=1e-12)
    assert process.is_finished_ok


def test_featurize(trained):
    array = F.featurize(trained.test, 'leakfree')
    features = array.get_array('features')
    assert features.shape[0] == trained.test.n_records and np.isfinite(features).all()
    assert array.get_array('battery_ids').tolist() == trained.test.battery_ids()
    assert array.base.attributes.get('featurizer_name') == 'leakfree'


def test_grouped_split_keeps_frameworks_apart(trained):
    split = F.split_dataset(trained.dataset, kind='grouped', seed=1, test_fraction=0.2)
    train = {r.framework_formula for r in split['train'].records()}
    test = {r.framework_formula for r in split['test'].records()}
    assert train and test and not train & test


def test_evaluate_model(trained):
    metrics = F.evaluate_model(trained.model, trained.test).get_dict()
    assert metrics['n'] == trained.test.n_records
    assert metrics['mae'] >= 0 and 'per_ion' in metrics
    assert metrics['model_version'] == trained.model.model_version


def test_assemble_from_mp(monkeypatch):
    records = read_electrodes_csv(CSV_150)[:4]
    provenance = {'database_version': '2025.09.25', 'material_ids': ['mp-1', 'mp-2'], 'query': {'working_ion': 'Li'},
                  'battery_ids': [r.battery_id for r in records]}
    seen = {}

    def fake_fetch(**arguments):
        seen.update(arguments)
        return records, provenance

    monkeypatch.setattr(F, 'fetch_mp_electrodes', fake_fetch)
    monkeypatch.delenv('MP_API_KEY', raising=False)
    before = count_nodes()
    with pytest.raises(ValueError, match='MP_API_KEY'):
        F.assemble_dataset_from_mp({'max_entries': 4})
    assert count_nodes() == before
    monkeypatch.setenv('MP_API_KEY', 'x' * 31)  # review: mp-api refuses it, after the node was stored (excepted)
    with pytest.raises(ValueError, match='API key has 31 characters, not 32'):
        F.assemble_dataset_from_mp({'max_entries': 4})
    assert count_nodes() == before
    monkeypatch.setenv('MP_API_KEY', 'x' * 32)
    with pytest.raises(ValueError, match='unknown MP query key'):
        F.assemble_dataset_from_mp({'api_key': 'secret'})
    # what the loader refuses is refused before anything is stored (an excepted node with its query, before)
    for query, message in [({'max_entries': 0}, 'max_entries must be a positive integer'),
                           ({'battery_ids': 'mp-2657_Li'}, 'battery_ids must be a list of strings'),
                           ({'elements': 'Fe'}, 'elements must be a list of strings'),
                           ({'elements': ['Fe', 'Xx']}, "'Xx' is not a chemical element"),
                           ({'battery_ids': ['not-an-id']}, "'not-an-id' is no Materials Project battery id"),
                           ({'battery_ids': ['mp-2657_Ag']}, "'mp-2657_Ag' is no Materials Project battery id"),
                           ({'working_ion': 'Ag'}, 'working_ion must be one of')]:
        before = count_nodes()
        with pytest.raises(ValueError, match=f'query: (elements: |battery_ids: )?{message}'):
            F.assemble_dataset_from_mp(query)
        assert count_nodes() == before, query
    empty = {'database_version': '2025.09.25', 'material_ids': [], 'query': {}, 'battery_ids': []}
    monkeypatch.setattr(F, 'fetch_mp_electrodes', lambda **arguments: ([], empty))
    with pytest.raises(ValueError, match=r"the query \{'battery_ids': \['mp-999999999_Li'\]\} matched no insertion "
                                         r'electrode of the Materials Project \(database version 2025.09.25\)'):
        F.assemble_dataset_from_mp({'battery_ids': ['mp-999999999_Li']})
    monkeypatch.setattr(F, 'fetch_mp_electrodes', fake_fetch)
    dataset = F.assemble_dataset_from_mp({'max_entries': 4})
    assert seen == {'max_entries': 4}
    assert dataset.source == 'materials_project' and dataset.mp_database_version == '2025.09.25'
    assert dataset.base.attributes.get('mp_n_material_ids') == 2
    from aiida_voltnet.provenance import _dataset_summary

    summary = _dataset_summary(dataset)  # the MP's fingerprint is the database version; it has no file's sha256
    assert summary['mp_database_version'] == '2025.09.25' and 'source_sha256' not in summary
    assert summary['origin']['database_version'] == '2025.09.25'
    assert 'x' * 32 not in str(dataset.creator.inputs.query.get_dict())
    # the live database changes under the same query: with caching on, the query runs again (no cloned dataset)
    from aiida.manage.caching import enable_caching

    seen.clear()
    with enable_caching(identifier='aiida.calculations:voltnet.assemble_dataset_from_mp'):
        again = F.assemble_dataset_from_mp({'max_entries': 4})
    assert seen == {'max_entries': 4} and again.creator.base.caching.get_cache_source() is None
    assert again.creator.base.caching.get_hash() == dataset.creator.base.caching.get_hash()  # a cache hit otherwise


# -- bad input: a clear error and no new node ------------------------------------------------------------------------
def _refused(call, match):
    before = count_nodes()
    with pytest.raises(ValueError, match=match):
        call()
    assert count_nodes() == before, 'a refused call must not store anything'


def test_bad_csv_unknown_element(tmp_path):
    path = write_csv_with(tmp_path / 'bad.csv', 2, formula_discharge='Li2Xx3O4')
    _refused(lambda: F.assemble_dataset_from_csv(orm.SinglefileData(path)), r"line 4.*formula_discharge.*Xx")


def test_bad_csv_space_group_zero(tmp_path):
    path = write_csv_with(tmp_path / 'bad.csv', 1, charge_space_group_number='0')
    _refused(lambda: F.assemble_dataset_from_csv(orm.SinglefileData(path)), 'charge_space_group_number')


def test_bad_csv_not_utf8_names_its_line(tmp_path):
    """A Latin-1 file was refused with a bare UnicodeDecodeError; the CLI's reader named the line."""
    path = write_csv_with(tmp_path / 'bad.csv', 1, battery_id='caf\u00e9')
    path.write_bytes(path.read_text().encode('latin-1'))
    _refused(lambda: F.assemble_dataset_from_csv(orm.SinglefileData(path)), r'bad.csv, line 3: not UTF-8 text: byte 0xe9')


def test_altered_weights_refused(trained):
    node = VoltageModelData(trained.model.load_model())
    content = bytearray(node.base.repository.get_object_content('arrays.safetensors', mode='rb'))
    content[-3] ^= 0x01
    node.base.repository.put_object_from_bytes(bytes(content), 'arrays.safetensors')
    _refused(lambda: F.predict_voltages(node, trained.test), 'altered')


def test_a_deleted_model_attribute_is_an_altered_model(trained, shipped_nodes):
    """Only attributes present were compared with config.json: a clone without `target` passed as a voltage
    model, one without `model_name` was predicted and broke `voltnet provenance` later."""
    for key in ('target', 'model_name'):
        node = trained.model.clone()
        node.base.attributes.delete(key)
        _refused(lambda: F.predict_voltages(node, trained.test), f'attribute.s. {key} differ')


def test_a_model_whose_config_is_no_json_is_an_altered_model(trained):
    """A malformed config.json gave a bare JSONDecodeError, not the damaged-model error."""
    node = VoltageModelData(trained.model.load_model())
    node.base.repository.put_object_from_bytes(b'{"model_version": ', 'config.json')
    _refused(lambda: F.predict_voltages(node, trained.test), 'config.json is no JSON')


def test_a_dataset_whose_attributes_disagree_with_its_records_is_refused(trained):
    """n_records was never compared with records.json: a clone with n_records 1000 made add_verified_records
    count no verified record."""
    node = trained.test.clone()
    node.base.attributes.set('n_records', 1000)
    _refused(lambda: F.predict_voltages(trained.model, node), r'attribute\(s\) n_records differ from records.json')


def test_differing_frameworks_refused(trained, shipped_nodes):
    charged = shipped_nodes['LiFePO4'][0]
    discharged = shipped_nodes['Li3V2(PO4)3'][1]
    _refused(lambda: F.predict_structure_pair(trained.model, charged, discharged, 'Li'), 'host frameworks differ')
    _refused(lambda: F.assemble_dataset_from_structures(
        x={'charged': charged, 'discharged': discharged, 'working_ion': orm.Str('Li')}), 'host frameworks differ')


def test_a_slab_is_not_a_bulk_electrode(trained, shipped_nodes):
    """A structure periodic along two directions was predicted as if it were a bulk crystal, with no word."""
    charged, discharged, ion = shipped_nodes['LiFePO4']
    slab = charged.clone()
    slab.pbc = (True, True, False)
    _refused(lambda: F.predict_structure_pair(trained.model, slab, discharged, ion),
             r'the charged structure is periodic along 2 of 3 directions \(pbc \(True, True, False\)\)')
    _refused(lambda: F.assemble_dataset_from_structures(
        lfp={'charged': charged, 'discharged': slab, 'working_ion': orm.Str(ion)}),
        'the discharged structure of lfp is periodic along 2 of 3')


def test_unseen_working_ion_refused(trained, shipped_nodes):
    li_only = ElectrodeDataset([r for r in trained.train.records() if r.working_ion == 'Li'])
    model = F.train_model(li_only, **FAST_MLP)
    assert model.training_ions == ['Li']
    charged, discharged, ion = shipped_nodes['NaFePO4']
    _refused(lambda: F.predict_structure_pair(model, charged, discharged, ion), 'never saw working ion.*Na')
    _refused(lambda: F.predict_voltages(model, trained.test), 'never saw working ion')


def test_bad_settings_refused(trained):
    _refused(lambda: F.train_model(trained.train, model='mlp', settings={'epochs': 3}), 'unknown training setting')
    _refused(lambda: F.train_model(trained.train, model='gpt'), 'unknown model')
    for settings, match in [({'members': 0}, 'members must be a positive integer'),
                            ({'members': 2.5}, 'members must be a positive integer'),
                            ({'train_overrides': {'epochz': 1}}, 'unknown training setting.*epochz'),
                            ({'train_overrides': {'epochs': -1}}, 'epochs must be an integer >= 1'),
                            ({'device': 'tpu'}, "unknown device 'tpu'"),
                            ({'target': 'energy_grav'}, "unknown target 'energy_grav'"),
                            ({'model_params': {'max_iter': 5}}, r'model mlp is a torch network: model_params '
                                                                r'\(voltnet train --model-param\) do not apply')]:
        _refused(lambda: F.train_model(trained.train, model='mlp', settings=settings), match)
    _refused(lambda: F.train_model(trained.train, settings={'model_params': {'max_iter': -2}}),
             'model_params max_iter of model voltnet must be an integer >= 1, got -2')
    _refused(lambda: F.train_model(trained.train, settings={'train_overrides': {'epochs': 2}}),
             r'model voltnet is no torch network: train_overrides \(epochs\) do not apply')
    for seed in (-1, 2**32):  # member i trains with seed * 1000 + i: these failed inside the body (an excepted node)
        _refused(lambda: F.train_model(trained.train, model='krr', seed=seed), r'seed must be an integer in 0\.\.')
    # members of a deterministic model are identical copies (a spread of 0 that claims certainty); trees on fewer
    # rows than two of their leaves predict one constant: both trained without a word before
    _refused(lambda: F.train_model(trained.train, model='svr', settings={'members': 2}), 'svr is deterministic')
    few = ElectrodeDataset(trained.train.records()[:39])
    _refused(lambda: F.train_model(few), 'voltnet needs at least 40 training rows, got 39')
    _refused(lambda: F.split_dataset(trained.dataset, kind='diagonal'), 'unknown split kind')
    for seed in (-1, 2**32):  # scikit-learn's refusal was reported as an empty split of too few frameworks
        _refused(lambda: F.split_dataset(trained.dataset, seed=seed), r'split seed must be an integer in 0\.\.')
    # a misspelt featurizer option was stored in the model's config and did nothing
    _refused(lambda: F.train_model(trained.train, model='krr',
                                   settings={'featurizer_options': {'extra_colums': ['capacity_vol']}}),
             "unknown option.s. 'extra_colums' of featurizer 'leakfree'")
    # a bad value of a known option failed inside the body (scikit-learn's PCA), with the inputs stored
    for value in (2.0, 0.0, 'x', True):
        _refused(lambda: F.train_model(trained.train, featurizer='paper', model='krr',
                                       settings={'featurizer_options': {'pca_variance': value}}),
                 'paper featurizer option pca_variance must be a fraction of the variance')
    _refused(lambda: F.train_model(trained.train, featurizer='paper', model='krr',
                                   settings={'featurizer_options': {'seed': 'x'}}),
             "paper featurizer option seed must be an integer >= 0, got 'x'")
    _refused(lambda: F.dft_voltage(-1.0, -2.0, -0.5, 0.0, 1), 'delta_ions must be positive')
    # AiiDA refused a non-finite Float only on storing it, after the finite ones were stored
    _refused(lambda: F.dft_voltage(-10.0, -15.0, -2.0, float('inf')), 'delta_ions must be a finite number')
    _refused(lambda: F.dft_voltage(-10.0, float('nan'), -2.0, 1.0), 'e_discharged must be a finite number')


def test_records_the_featurizer_cannot_use_are_refused_before_storing(trained, shipped_nodes):
    """A field the featurizer needs (the paper featurizer's capacity, an extra column's value) missing from a record,
    or an extra column that is no numeric record field, passed every validator and failed inside the function,
    leaving an excepted process and its inputs stored; now each is refused up front, nothing stored."""
    import dataclasses

    from aiida_voltnet.ml.records import validate_record

    records = trained.train.records()
    nocap = ElectrodeDataset([validate_record(dataclasses.replace(records[0], capacity_grav=None)), *records[1:]])
    paper_model = F.train_model(trained.train, featurizer='paper', model='krr')
    structures = F.assemble_dataset_from_structures(**{
        'LiFePO4': {'charged': shipped_nodes['LiFePO4'][0], 'discharged': shipped_nodes['LiFePO4'][1],
                    'working_ion': orm.Str('Li')}})
    cases = [
        (lambda: F.train_model(nocap, featurizer='paper', model='krr'), 'the paper featurizer needs capacity_grav'),
        (lambda: F.train_model(trained.train, model='krr', settings={'featurizer_options': {'extra_columns': ['foo']}}),
         "extra_columns: 'foo' is no numeric column"),
        (lambda: F.train_model(trained.train, model='krr',
                               settings={'featurizer_options': {'extra_columns': ['battery_id']}}),
         "extra_columns: 'battery_id' is no numeric column"),
        (lambda: F.train_model(nocap, model='krr', settings={'featurizer_options': {'extra_columns': ['capacity_grav']}}),
         "extra column 'capacity_grav' is missing"),
        (lambda: F.featurize(structures, 'paper'), 'the paper featurizer needs capacity_grav'),
        (lambda: F.predict_voltages(paper_model, nocap), 'cannot featurize.*needs capacity_grav'),
        (lambda: F.predict_structure_pair(paper_model, *shipped_nodes['LiFePO4'][:2], 'Li'), 'cannot featurize'),
    ]
    for call, match in cases:
        _refused(call, match)


def test_empty_nodes_cannot_be_stored_and_a_failed_prediction_has_no_provenance(trained, monkeypatch):
    from aiida.common.exceptions import ValidationError

    from aiida_voltnet.ml.models import VoltageModel
    from aiida_voltnet.provenance import prediction_provenance

    before = count_nodes()
    with pytest.raises(ValidationError, match='an ElectrodeDataset without records cannot be stored'):
        ElectrodeDataset().store()
    with pytest.raises(ValidationError, match='a VoltageModelData without a model cannot be stored'):
        VoltageModelData().store()
    assert count_nodes() == before

    def failing(self, *args, **kwargs):  # injected: the validators refuse every input known to make this fail
        raise RuntimeError('injected failure inside the prediction')

    monkeypatch.setattr(VoltageModel, 'predict', failing)
    with pytest.raises(RuntimeError, match='injected'):
        F.predict_voltages(trained.model, trained.test)
    process = orm.QueryBuilder().append(orm.CalcFunctionNode, filters={
        'attributes.process_label': 'predict_voltages'}, tag='p').order_by({'p': {'ctime': 'desc'}}).first()[0]
    assert process.is_excepted
    with pytest.raises(ValueError, match=f'<{process.pk}> excepted: it made no prediction'):
        prediction_provenance(process)


def test_split_refusals_say_what_is_wrong(trained):
    records = [r for r in trained.dataset.records()]
    framework = records[0].framework_formula
    one_framework = ElectrodeDataset([r for r in records if r.framework_formula == framework] or records[:1])
    _refused(lambda: F.split_dataset(one_framework, kind='grouped'),
             r'grouped split of \d+ record\(s\) from 1 host framework\(s\).*needs at least two')
    _refused(lambda: F.split_dataset(trained.dataset, kind='random', test_fraction=0.999),
             'a random split of 150 record.*leaves an empty train or test set')


def test_model_params_are_an_input_of_train_model_and_of_its_hash(trained):
    """A tree model's hyper-parameters go into train_model's settings: the process records them, its model
    trains with them, and its hash differs from a default training's (with caching on, one never stands in for the
    other)."""
    few = F.train_model(trained.train, settings={'members': 1, 'model_params': {'max_iter': 6}})
    assert {m.hyper['max_iter'] for m in F.load_model(few).members} == {6}
    assert few.creator.inputs.settings.get_dict()['model_params'] == {'max_iter': 6}
    default = F.train_model(trained.train, settings={'members': 1})
    assert {m.hyper['max_iter'] for m in F.load_model(default).members} == {250}
    assert few.creator.base.caching.get_hash() != default.creator.base.caching.get_hash()


def test_cached_models_and_records_are_per_profile(trained, monkeypatch):
    """An archive import keeps uuids, so one uuid names a node in each of two profiles that one interpreter switches
    between: a copy with tampered attributes in the second profile was served the first profile's checked model
    from the cache, and a prediction was stored with it (found by review). The caches key on the profile too."""
    profile = ['first']
    monkeypatch.setattr(F, '_profile_key', lambda: profile[0])
    loads, reads = [], []
    monkeypatch.setattr(VoltageModelData, 'load_model', lambda self, _real=VoltageModelData.load_model:
                        loads.append(self.uuid) or _real(self))
    monkeypatch.setattr(ElectrodeDataset, 'records', lambda self, _real=ElectrodeDataset.records:
                        reads.append(self.uuid) or _real(self))
    for _ in range(2):
        F.load_model(trained.model), F.dataset_records(trained.test)
    assert len(loads) == 1 and len(reads) == 1  # cached within a profile
    profile[0] = 'second'
    F.load_model(trained.model), F.dataset_records(trained.test)
    assert len(loads) == 2 and len(reads) == 2  # checked again in the other
