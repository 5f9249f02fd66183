"""The provenance helpers: from any prediction node back to model version, training run, data source, inputs."""
from __future__ import annotations

import pytest
from aiida import orm

from aiida_voltnet.calculations import functions as F
from aiida_voltnet.ml.records import file_sha256
from aiida_voltnet.provenance import dataset_origin, list_predictions, prediction_provenance
from voltnet_test_helpers import CSV_150


@pytest.fixture(scope='module')
def predictions(trained):
    from aiida_voltnet.workflows.quickstart import shipped_structure_pairs

    array = F.predict_voltages(trained.model, trained.test)
    pairs = shipped_structure_pairs(['LiFePO4', 'NaFePO4'])
    singles = {pair['name']: F.predict_structure_pair(trained.model, pair['charged'], pair['discharged'],
                                                      pair['working_ion'])
               for pair in pairs.values()}
    return array, singles, pairs


def test_batch_prediction_answer(trained, predictions):
    array, _, _ = predictions
    for start in (array, array.creator, array.pk, array.uuid):
        answer = prediction_provenance(start)
        assert answer['model_version'] == trained.model.model_version
        assert answer['model']['uuid'] == trained.model.uuid
        assert answer['training_process']['uuid'] == trained.model.creator.uuid
        assert answer['training_settings'] == {'featurizer': 'leakfree', 'model': 'mlp', 'seed': 0,
                                               'settings': {'train_overrides': {'epochs': 3}}}
        assert answer['training_warnings'] == []
        training = answer['training_dataset']
        assert training['uuid'] == trained.train.uuid and training['source'] == 'csv'
        assert training['source_sha256'] == file_sha256(CSV_150)
        assert 'mp_database_version' not in training  # a CSV's: it was printed as None
        origin = training['origin']
        assert origin['kind'] == 'csv' and origin['sha256'] == file_sha256(CSV_150) and origin['in_graph']
        assert origin['file']['uuid'] == trained.csv.uuid and origin['dataset']['uuid'] == trained.dataset.uuid
        assert [s['process_type'] for s in origin['splits']] == ['aiida.calculations:voltnet.split_dataset']
        assert answer['inputs']['dataset']['uuid'] == trained.test.uuid
        assert answer['inputs']['dataset']['battery_ids'] == trained.test.battery_ids()
        assert answer['extrapolation'] == {'n_unseen_elements': int(array.get_array('unseen_elements').sum()),
                                           'n_ion_content_outside': int(array.get_array('ion_content_outside').sum()),
                                           'n_end_members_reversed': 0,
                                           'n_features_outside': int(array.get_array('features_outside').sum())}


def test_pair_prediction_answer(trained, predictions):
    _, singles, pairs = predictions
    result = singles['LiFePO4']
    for start in (result['voltage'], result['uncertainty'], result['voltage'].creator):
        answer = prediction_provenance(start)
        assert answer['model_version'] == trained.model.model_version
        assert answer['inputs']['charged']['uuid'] == pairs['LiFePO4']['charged'].uuid
        assert answer['inputs']['discharged']['uuid'] == pairs['LiFePO4']['discharged'].uuid
        assert answer['inputs']['discharged']['formula'] == 'FeLiO4P'
        assert answer['inputs']['working_ion'] == 'Li'
        assert set(answer['outputs']) == {'voltage', 'uncertainty', 'unseen_elements', 'ion_content_outside',
                                          'features_outside', 'input_warnings'}
        assert answer['extrapolation'] == {'unseen_elements': [], 'ion_content_outside': [], 'features_outside': []}
        assert answer['input_warnings'] == []


def test_the_answer_carries_the_warnings_of_the_training(trained):
    """A prediction by a model whose training warned (the paper featurizer's leak here) says so in its provenance,
    from the training process's report; one message per warning, without the report's [PK|process|warning] head."""
    seed = 4711  # not trained elsewhere in the session: the cache source below is this test's own training
    paper = F.train_model(trained.train, featurizer='paper', model='krr', seed=seed)
    answer = prediction_provenance(F.predict_voltages(paper, trained.test))
    assert len(answer['training_warnings']) == 1
    assert answer['training_warnings'][0].startswith('TargetLeakWarning: the paper featurizer includes capacity_grav')
    from aiida.manage.caching import enable_caching

    with enable_caching(identifier='aiida.calculations:voltnet.train_model'):
        cached = F.train_model(trained.train, featurizer='paper', model='krr', seed=seed)
    assert cached.creator.base.caching.get_cache_source() == paper.creator.uuid  # a clone, without logs of its own
    assert not orm.Log.collection.get_logs_for(cached.creator)
    assert prediction_provenance(F.predict_voltages(cached, trained.test))['training_warnings'] == \
        answer['training_warnings']
    # A clone of the clone (the original no longer a valid cache source): the warnings are two hops away.
    paper.creator.base.caching.is_valid_cache = False
    try:
        with enable_caching(identifier='aiida.calculations:voltnet.train_model'):
            twice = F.train_model(trained.train, featurizer='paper', model='krr', seed=seed)
    finally:
        paper.creator.base.caching.is_valid_cache = True
    assert twice.creator.base.caching.get_cache_source() == cached.creator.uuid
    assert prediction_provenance(F.predict_voltages(twice, trained.test))['training_warnings'] == \
        answer['training_warnings']


def test_not_a_prediction(trained):
    with pytest.raises(ValueError, match='not from a voltnet prediction'):
        prediction_provenance(trained.train)
    with pytest.raises(ValueError, match='not created by a process'):
        prediction_provenance(orm.Float(1.0).store())
    with pytest.raises(ValueError, match='comes from aiida.calculations:voltnet.train_model'):
        prediction_provenance(trained.model.creator)
    from aiida.engine import run_get_node
    from aiida_voltnet.workflows.train import TrainWorkChain

    _, workchain = run_get_node(TrainWorkChain.get_builder_from_protocol(
        trained.dataset, overrides={'train': {'model': 'krr'}}))
    with pytest.raises(ValueError, match='called no voltnet prediction process'):
        prediction_provenance(workchain)


def test_structures_dataset_origin(trained):
    from aiida_voltnet.workflows.quickstart import shipped_structure_pairs

    pairs = shipped_structure_pairs(['LiFePO4'])
    dataset = F.assemble_dataset_from_structures(**{k: {r: v for r, v in p.items() if r != 'name'}
                                                    for k, p in pairs.items()})
    origin = dataset_origin(dataset)
    assert origin['kind'] == 'structures'
    assert origin['structures']['LiFePO4']['charged']['uuid'] == pairs['LiFePO4']['charged'].uuid
    assert origin['structures']['LiFePO4']['working_ion'] == 'Li'


def test_list_predictions(trained, predictions):
    array, singles, _ = predictions
    rows = list_predictions(trained.model)
    batch = [row for row in rows if row['node_uuid'] == array.uuid]
    assert len(batch) == trained.test.n_records
    assert [row['label'] for row in batch] == trained.test.battery_ids()
    pair_rows = [row for row in rows if row['index'] is None]
    assert {row['node_uuid'] for row in pair_rows} >= {s['voltage'].uuid for s in singles.values()}
    na = list_predictions(trained.model.pk, ion='Na')
    assert na and all(row['working_ion'] == 'Na' for row in na)
    assert any(row['node_uuid'] == singles['NaFePO4']['voltage'].uuid for row in na)
    with pytest.raises(ValueError, match="unknown working ion 'na'"):  # a typo, not an empty list
        list_predictions(trained.model, ion='na')
    with pytest.raises(ValueError, match='min_voltage 4.0 V is above max_voltage 3.0 V'):
        list_predictions(trained.model, min_voltage=4.0, max_voltage=3.0)
    # a NaN bound matched nothing (every comparison with NaN is False) and an infinite one everything, silently
    for bounds in ({'min_voltage': float('nan')}, {'max_voltage': float('inf')}, {'min_voltage': '3'}):
        with pytest.raises(ValueError, match=f"{next(iter(bounds))} must be a finite number of volts, not"):
            list_predictions(trained.model, **bounds)
    threshold = sorted(row['voltage'] for row in rows)[len(rows) // 2]
    high = list_predictions(trained.model, min_voltage=threshold)
    assert high and all(row['voltage'] >= threshold for row in high) and len(high) < len(rows)
    low = list_predictions(trained.model, max_voltage=threshold)
    assert all(row['voltage'] <= threshold for row in low) and len(low) + len(high) >= len(rows)
    assert batch[0]['node'] == f'ArrayData<{array.pk}>[0]' and batch[0]['battery_id'] == batch[0]['label']
    flagged = array.get_array('unseen_elements') | array.get_array('ion_content_outside')
    assert array.get_array('ion_content_outside').any()  # held-out rows beyond the training rows' ion contents
    assert [row['extrapolation'] for row in batch] == flagged.tolist()
    shipped = {s['voltage'].uuid for s in singles.values()}
    # a pair's row from the projected columns and two batched queries (it was two queries a row over loaded nodes)
    by_node = {row['node_uuid']: row for row in pair_rows}
    for outputs in singles.values():
        row, process = by_node[outputs['voltage'].uuid], outputs['voltage'].creator
        assert (row['voltage'], row['uncertainty']) == (outputs['voltage'].value, outputs['uncertainty'].value)
        assert row['label'] == row['battery_id'] == (f"{process.inputs.charged.get_formula(mode='hill_compact')} -> "
                                                     f"{process.inputs.discharged.get_formula(mode='hill_compact')}")
        assert (row['working_ion'], row['process_pk'], row['node_pk'], row['index']) == \
            (process.inputs.working_ion.value, process.pk, outputs['voltage'].pk, None)
    # the shipped pairs' host elements were all trained on
    assert {row['extrapolation'] for row in pair_rows if row['node_uuid'] in shipped} == {False}
    with pytest.raises(TypeError, match='not a voltage model'):
        list_predictions(trained.train)


def test_a_dataset_stored_by_hand_is_not_given_an_origin_it_lacks(trained):
    """Records put into an ElectrodeDataset in Python are ``records`` by default; one that declares ``csv`` without
    an assembling process keeps its claim, but dataset_origin says the graph does not back it (no file, no sha)."""
    from aiida_voltnet.data.dataset import ElectrodeDataset

    records = trained.train.records()[:5]
    by_hand = ElectrodeDataset(records).store()
    assert by_hand.source == 'records'
    origin = dataset_origin(by_hand)
    assert origin['kind'] == 'records' and origin['in_graph'] is False and origin['process'] is None
    claimed = dataset_origin(ElectrodeDataset(records, source='csv').store())
    assert claimed['kind'] == 'csv' and claimed['in_graph'] is False
    assert claimed['file'] is None and claimed['sha256'] is None
    split = F.split_dataset(by_hand, kind=orm.Str('random'), seed=orm.Int(0), test_fraction=orm.Float(0.4))
    origin = dataset_origin(split['train'])  # a subset of a hand-made dataset leads back to it, not further
    assert origin['kind'] == 'records' and origin['in_graph'] is False and origin['dataset']['uuid'] == by_hand.uuid


def test_origin_follows_report_folds_and_verified_records_back_to_the_csv(trained):
    """Datasets made by the report's steps and by add_verified_records still lead to the CSV, and the DFT-verified
    records are named as such (their targets are DFT voltages, not the CSV's)."""
    from aiida_voltnet.calculations.dft import add_verified_records
    from aiida_voltnet.calculations.report import report_kfold_dataset
    from aiida_voltnet.workflows.quickstart import shipped_structure_pairs
    from voltnet_test_helpers import count_nodes

    fold = report_kfold_dataset(trained.dataset, orm.Int(3), orm.Int(1), orm.Int(0))
    origin = dataset_origin(fold['train'])
    assert origin['file']['uuid'] == trained.csv.uuid and origin['sha256'] == file_sha256(CSV_150)
    assert [s['process_type'] for s in origin['splits']] == ['aiida.calculations:voltnet.report_kfold_dataset']
    pair = shipped_structure_pairs(['LiFePO4'])['LiFePO4']
    verified = {'charged': pair['charged'], 'discharged': pair['discharged'], 'working_ion': pair['working_ion'],
                'dft_voltage': orm.Float(3.5)}
    grown = add_verified_records(trained.train, lfp=verified)
    origin = dataset_origin(grown)
    assert origin['kind'] == 'csv' and origin['file']['uuid'] == trained.csv.uuid
    assert origin['added'][0]['dft_verified_ids'] == ['dft:lfp']
    with pytest.raises(TypeError, match='takes an ElectrodeDataset'):
        dataset_origin(trained.model)
    before = count_nodes()
    for call, match in [
            (lambda: report_kfold_dataset(trained.dataset, orm.Int(3), orm.Int(7), orm.Int(0)), 'fold must be in 0..2'),
            (lambda: report_kfold_dataset(trained.dataset, orm.Int(1), orm.Int(0), orm.Int(0)), 'folds must be'),
            (lambda: add_verified_records(trained.train, lfp={**verified, 'working_ion': orm.Str('Na')}),
             'Na'),
            (lambda: add_verified_records(grown, lfp=verified), "already holds a record 'dft:lfp'")]:
        with pytest.raises(ValueError, match=match):
            call()
    assert count_nodes() == before


def test_training_warnings_when_the_cache_source_is_gone(trained):
    """A training taken from the cache reads its warnings from its cache source; once that is gone (deleted, or
    not in an imported archive) they were [] as if there had been none. TrainWorkChain's own report repeats them
    ('the training warned: ...'), which is read too; where nothing tells, one line says they are unknown."""
    from aiida.engine import run_get_node
    from aiida.manage.caching import enable_caching
    from aiida.tools import delete_nodes

    from aiida_voltnet.provenance import training_warnings
    from aiida_voltnet.workflows.train import TrainWorkChain

    seed = 4712  # this test's own trainings
    inputs = {'dataset': trained.dataset, 'split': {'kind': orm.Str('random')},
              'train': {'featurizer': orm.Str('paper'), 'model': orm.Str('krr'), 'seed': orm.Int(seed)}}
    _, first = run_get_node(TrainWorkChain, **inputs)
    with enable_caching(identifier='aiida.calculations:voltnet.train_model'):
        _, second = run_get_node(TrainWorkChain, **inputs)
        bare = F.train_model(trained.train, featurizer='paper', model='krr', seed=seed + 1)
        clone = F.train_model(trained.train, featurizer='paper', model='krr', seed=seed + 1)
    second_training = second.outputs.model.creator
    source = first.outputs.model.creator
    assert second_training.base.caching.get_cache_source() == source.uuid
    assert clone.creator.base.caching.get_cache_source() == bare.creator.uuid
    expected = training_warnings(source)
    assert expected and expected[0].startswith('TargetLeakWarning')
    # the model node holds them (review: an archive strips the cache-source extra, so an imported clone's training
    # said [], and the leak warning was lost): the clone's node carries its source's
    held = bare.metrics['warnings']
    assert held and held[0].startswith('TargetLeakWarning') and clone.metrics['warnings'] == held
    assert training_warnings(bare.creator, bare) == held == training_warnings(bare.creator)
    # a model no process made and whose node holds none: unknown, not [] (which read as 'warned nothing', review)
    assert training_warnings(None) == ['unknown: no process in this profile created this model, and its node '
                                       'holds no warnings']
    bare_uuid = bare.creator.uuid
    delete_nodes([source.pk, bare.creator.pk], dry_run=False)
    clone.creator.base.extras.delete('_aiida_cached_from')  # as an archive import leaves it
    assert training_warnings(clone.creator, clone) == held
    assert prediction_provenance(F.predict_voltages(clone, trained.test))['training_warnings'] == held
    assert training_warnings(second_training) == expected  # from the second TrainWorkChain's report
    # a model stored before its node held them: no work chain, nothing else tells
    clone.creator.base.extras.set('_aiida_cached_from', bare_uuid)
    lost = training_warnings(clone.creator)
    assert lost == [f'unknown: the training was taken from the cache of process {bare_uuid}, which is not '
                    'in this profile (deleted, or not exported), and its report with it']
    # a training that warned nothing: its TrainWorkChain said so, which stands once the cache source is gone
    # (it was 'unknown', a false alarm)
    quiet = {**inputs, 'train': {'model': orm.Str('krr'), 'seed': orm.Int(seed)}}
    _, quiet_first = run_get_node(TrainWorkChain, **quiet)
    with enable_caching(identifier='aiida.calculations:voltnet.train_model'):
        _, quiet_second = run_get_node(TrainWorkChain, **quiet)
    quiet_source = quiet_first.outputs.model.creator
    assert quiet_second.outputs.model.creator.base.caching.get_cache_source() == quiet_source.uuid
    assert training_warnings(quiet_source) == []
    delete_nodes([quiet_source.pk], dry_run=False)
    assert training_warnings(quiet_second.outputs.model.creator) == []


def test_predictions_of_a_model_version_include_those_of_its_cache_clones(trained, aiida_profile):
    """With caching on, a second training of the same model makes another node of the same model_version; its
    predictions were listed only under that node, and `voltnet predictions --model VERSION` found no node."""
    from aiida.manage.caching import enable_caching
    from click.testing import CliRunner

    from aiida_voltnet.cli import cli
    from aiida_voltnet.provenance import list_predictions

    seed = 4713
    original = F.train_model(trained.train, model='krr', seed=seed)
    with enable_caching(identifier='aiida.calculations:voltnet.train_model'):
        clone = F.train_model(trained.train, model='krr', seed=seed)
    assert clone.pk != original.pk and clone.model_version == original.model_version
    first = F.predict_voltages(original, trained.test)
    second = F.predict_voltages(clone, trained.test)
    for model in (original, clone):
        nodes = {row['node_pk'] for row in list_predictions(model)}
        assert nodes == {first.pk, second.pk}
    result = CliRunner().invoke(cli, ['predictions', '--model', original.model_version[:12], '--profile',
                                      aiida_profile.name])
    assert result.exit_code == 0, result.output
    assert f'ArrayData<{first.pk}>' in result.output and f'ArrayData<{second.pk}>' in result.output
    # review: a version in capitals was never tried as one, and an unknown one said only 'no Node found with UUID'
    upper = CliRunner().invoke(cli, ['predictions', '--model', original.model_version[:12].upper(), '--profile',
                                     aiida_profile.name])
    assert upper.exit_code == 0 and f'ArrayData<{first.pk}>' in upper.output, upper.output
    unknown = 'deadbeef' if not original.model_version.startswith('deadbeef') else 'beefdead'
    result = CliRunner().invoke(cli, ['predictions', '--model', unknown, '--profile', aiida_profile.name])
    assert result.exit_code == 2 and f"no node and no model version starting with '{unknown}'" in result.output, \
        result.output
    short = original.model_version[:7]  # too short to be a version prefix: said so (before: "no Node ... UUID<e963>")
    if not short.isdigit():
        result = CliRunner().invoke(cli, ['predictions', '--model', short, '--profile', aiida_profile.name])
        assert result.exit_code == 2 and 'a model version prefix needs 8 or more hex digits' in result.output, \
            result.output
    # a prefix that several nodes share is ambiguous, not missing: aiida-core's message says so
    from collections import Counter

    from aiida import orm

    while True:
        firsts = Counter(u[0] for u in orm.QueryBuilder().append(orm.Node, project='uuid').all(flat=True))
        shared = [c for c in 'abcdef' if firsts[c] > 1]
        if shared:
            break
        orm.Int(1).store()
    result = CliRunner().invoke(cli, ['predictions', '--model', shared[0], '--profile', aiida_profile.name])
    assert result.exit_code != 0 and 'needs 8 or more' not in result.output and 'ultiple' in result.output, \
        result.output
