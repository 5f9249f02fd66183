"""``TrainWorkChain`` training through a code (``train_code``) instead of the calculation function, and caching
of the ``train_model`` calculation function."""
from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import run_get_node
from aiida.manage.caching import enable_caching

from aiida_voltnet.calculations.functions import train_model
from aiida_voltnet.data.model import VoltageModelData
from aiida_voltnet.workflows.train import TrainWorkChain
from aiida_voltnet.workflows.train_restart import VoltnetTrainBaseWorkChain

FAST_MLP = {'model': 'mlp', 'settings': {'train_overrides': {'epochs': 3}}}


def test_train_workchain_through_a_code(train_code, csv_60):
    builder = TrainWorkChain.get_builder()
    builder.csv = orm.SinglefileData(csv_60)
    builder.split.kind = orm.Str('random')
    builder.split.test_fraction = orm.Float(0.2)
    builder.train.model = orm.Str('mlp')
    builder.train.settings = orm.Dict(FAST_MLP['settings'])
    builder.train_code = train_code
    builder.train_options = {'max_wallclock_seconds': 600}
    results, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    assert isinstance(results['model'], VoltageModelData) and results['model'].model_name == 'mlp'
    assert results['metrics']['n'] == results['test_dataset'].n_records
    called = {child.process_class for child in node.called if hasattr(child, 'process_class')}
    assert VoltnetTrainBaseWorkChain in called
    # the job hashes the fingerprint of the code that trains (its hash leaves `version` out)
    from aiida_voltnet.calculations.sources import sources_fingerprint

    job = results['model'].creator
    assert job.process_type == 'aiida.calculations:voltnet.train'
    assert job.base.attributes.get('cache_version') == {'calc_job': 3, 'sources': sources_fingerprint()}
    assert 'sources' in job.base.caching.get_objects_to_hash()['attributes']['cache_version']
    # the job trained what the calculation function would have: same seed, same rows, same predictions
    reference = train_model(results['train_dataset'], **FAST_MLP)
    records = results['test_dataset'].records()
    np.testing.assert_allclose(results['model'].load_model().predict(records)[0],
                               reference.load_model().predict(records)[0], rtol=0, atol=1e-6)
    # the provenance of its predictions names this TrainWorkChain as the training workflow, past the
    # voltnet.train_base wrapper of the job (it named the wrapper, and the example found no held-out test set)
    from aiida_voltnet.calculations.functions import predict_voltages
    from aiida_voltnet.provenance import prediction_provenance, training_workflow

    array = predict_voltages(results['model'], results['test_dataset'])
    provenance = prediction_provenance(array)
    assert provenance['training_workflow']['uuid'] == node.uuid, provenance['training_workflow']
    assert provenance['training_process']['process_type'] == 'aiida.calculations:voltnet.train'
    assert training_workflow(results['model'].creator).uuid == node.uuid


def test_a_failed_training_job_is_named_by_the_train_workchain(aiida_code_installed, csv_60, tmp_path):
    """Review: a code whose Python lacks torch ended the TrainWorkChain in '... exit status 402: The process failed
    with an unhandled failure', the job's own reason two levels down; now the chain's message names its last job's
    exit status and message."""
    import sys

    wrapper = tmp_path / 'voltnet-train-without-torch'
    wrapper.write_text('#!/bin/bash\n'
                       f'exec {sys.executable} -c "import sys; sys.modules[\'torch\'] = None; '
                       'from aiida_voltnet.cli.train_entry import main; sys.exit(main())" "$@"\n')
    wrapper.chmod(0o755)
    code = aiida_code_installed(label='voltnet-train-no-torch', filepath_executable=str(wrapper),
                                default_calc_job_plugin='voltnet.train')
    builder = TrainWorkChain.get_builder()
    builder.csv = orm.SinglefileData(csv_60)
    builder.split.kind = orm.Str('random')
    builder.train.model = orm.Str('mlp')
    builder.train.settings = orm.Dict(FAST_MLP['settings'])
    builder.train_code = code
    _, node = run_get_node(builder)
    assert node.exit_status == TrainWorkChain.exit_codes.ERROR_TRAINING_JOB_FAILED.status
    assert '; its last job VoltnetTrainCalculation<' in node.exit_message, node.exit_message
    assert 'exit status 402: The process failed with an unhandled failure; its last job' in node.exit_message
    assert 'exit status 310: The trainer raised: ModuleNotFoundError: voltnet-train\'s Python' in node.exit_message
    assert "cannot import what training needs" in node.exit_message


def test_a_training_job_wrapper_run_alone_is_the_training_workflow(train_code, dataset_60):
    """VoltnetTrainBaseWorkChain submitted alone (docs/production.md's recipe): the provenance of the model's
    predictions named no training workflow ('training_workflow: None'), though the wrapper called the job."""
    from aiida_voltnet.calculations.functions import predict_voltages
    from aiida_voltnet.provenance import prediction_provenance

    builder = VoltnetTrainBaseWorkChain.get_builder_from_protocol(
        train_code, dataset_60, protocol='cpu',
        overrides={'train': {'model': 'mlp', 'settings': FAST_MLP['settings']}})
    results, node = run_get_node(builder)
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    answer = prediction_provenance(predict_voltages(results['model'], dataset_60))
    assert answer['training_workflow']['uuid'] == node.uuid, answer['training_workflow']
    assert answer['training_process']['process_type'] == 'aiida.calculations:voltnet.train'


def test_train_options_need_a_code(csv_60):
    import pytest

    with pytest.raises(ValueError, match='train_options'):
        run_get_node(TrainWorkChain, csv=orm.SinglefileData(csv_60), train_options={'max_wallclock_seconds': 60})


def test_train_code_and_its_options_are_checked_at_launch(train_code, csv_60, aiida_localhost):
    """A misspelt job option, or a code of another plugin, was found only when the job was built, after the
    dataset and the split were stored (the chain excepted)."""
    import pytest

    csv = orm.SinglefileData(csv_60).store()
    before = orm.QueryBuilder().append(orm.Node).count()
    with pytest.raises(ValueError, match="train_options: unknown job option.s. 'max_walclock_seconds'") as refused:
        run_get_node(TrainWorkChain, csv=csv, train={'model': orm.Str('krr')}, train_code=train_code,
                     train_options={'max_walclock_seconds': 10})
    assert 'the default resources' not in str(refused.value)  # review: a misspelt option blamed the resources
    with pytest.raises(ValueError, match="train_options: job option 'resources'"):
        run_get_node(TrainWorkChain, csv=csv, train={'model': orm.Str('krr')}, train_code=train_code,
                     train_options={'resources': 'x'})
    other = orm.InstalledCode(label='not-voltnet', computer=aiida_localhost, filepath_executable='/bin/true',
                              default_calc_job_plugin='core.arithmetic.add').store()
    with pytest.raises(ValueError, match="has the default plugin 'core.arithmetic.add', not voltnet.train"):
        run_get_node(TrainWorkChain, csv=csv, train={'model': orm.Str('krr')}, train_code=other)
    assert orm.QueryBuilder().append(orm.Node).count() == before + 1  # the code only


def test_train_model_is_reused_from_the_cache(dataset_60):
    inputs = {'dataset': dataset_60, 'model': 'krr', 'seed': 0}
    _, first = train_model.run_get_node(**inputs)
    with enable_caching(identifier='aiida.calculations:voltnet.train_model'):
        result, second = train_model.run_get_node(**inputs)
    assert first.is_finished_ok and second.is_finished_ok
    assert second.base.caching.is_created_from_cache
    assert second.base.caching.get_cache_source() == first.uuid
    assert result.model_version == first.outputs.result.model_version
    # another seed is another calculation
    with enable_caching(identifier='aiida.calculations:voltnet.train_model'):
        _, third = train_model.run_get_node(**{**inputs, 'seed': 1})
    assert not third.base.caching.is_created_from_cache
    # without caching enabled nothing is reused
    _, fourth = train_model.run_get_node(**inputs)
    assert not fourth.base.caching.is_created_from_cache


def test_train_workchain_passes_disable_cache_on(csv_60):
    """`metadata.disable_cache` of the `train` namespace (train and evaluate) or of the work chain itself (every
    step) reaches the calculation functions: it was dropped, so the model came from the cache all the same."""
    def build(**metadata):
        builder = TrainWorkChain.get_builder()
        builder.csv = orm.SinglefileData(csv_60)
        builder.split.kind = orm.Str('random')
        builder.train.model = orm.Str('krr')
        if metadata.get('train'):
            builder.train.metadata.disable_cache = True
        if metadata.get('own'):
            builder.metadata.disable_cache = True
        return builder

    def cached_steps(node):
        return {link.link_label: link.node.base.caching.is_created_from_cache
                for link in node.base.links.get_outgoing(node_class=orm.CalcFunctionNode).all()}

    with enable_caching(identifier='aiida.calculations:voltnet.*'):
        _, first = run_get_node(build())
        _, again = run_get_node(build())
        _, fresh_train = run_get_node(build(train=True))
        _, fresh_all = run_get_node(build(own=True))
    assert first.is_finished_ok and again.is_finished_ok and fresh_train.is_finished_ok and fresh_all.is_finished_ok
    assert cached_steps(again) == {'assemble': True, 'split': True, 'train': True, 'evaluate': True}
    assert cached_steps(fresh_train) == {'assemble': True, 'split': True, 'train': False, 'evaluate': False}
    assert cached_steps(fresh_all) == {'assemble': False, 'split': False, 'train': False, 'evaluate': False}


def test_predict_workchain_passes_disable_cache_on(csv_60):
    """Found by review: PredictWorkChain called its steps with their link labels only, so its own
    `metadata.disable_cache` was dropped and the predictions came from the cache all the same. A pair may not be
    named `dataset` either: its step's label would be the dataset step's."""
    import pytest

    from aiida_voltnet.calculations.functions import assemble_dataset_from_csv
    from aiida_voltnet.ml.structures import shipped_pair
    from aiida_voltnet.workflows.predict import PredictWorkChain

    dataset = assemble_dataset_from_csv(orm.SinglefileData(csv_60))
    model = train_model(dataset, model=orm.Str('krr'))
    charged, discharged, ion = shipped_pair('LiFePO4')
    pair = {'charged': orm.StructureData(pymatgen=charged), 'discharged': orm.StructureData(pymatgen=discharged),
            'working_ion': orm.Str(ion)}

    def cached_steps(node):
        return {link.link_label: link.node.base.caching.is_created_from_cache
                for link in node.base.links.get_outgoing(node_class=orm.CalcFunctionNode).all()}

    with enable_caching(identifier='aiida.calculations:voltnet.*'):
        _, first = run_get_node(PredictWorkChain, model=model, dataset=dataset, structures={'lfp': pair})
        _, again = run_get_node(PredictWorkChain, model=model, dataset=dataset, structures={'lfp': pair})
        _, fresh = run_get_node(PredictWorkChain, model=model, dataset=dataset, structures={'lfp': pair},
                                metadata={'disable_cache': True})
    assert first.is_finished_ok and again.is_finished_ok and fresh.is_finished_ok
    assert cached_steps(again) == {'predict_dataset': True, 'predict_lfp': True}
    assert cached_steps(fresh) == {'predict_dataset': False, 'predict_lfp': False}
    with pytest.raises(ValueError, match="structures: rename 'dataset': a pair may not be named dataset"):
        run_get_node(PredictWorkChain, model=model, dataset=dataset, structures={'dataset': pair})


def test_a_job_whose_computer_runs_other_plugin_code_is_not_a_cache_source(train_code, aiida_code_installed,
                                                                           csv_60, tmp_path):
    """The job hashes the submitting installation's code fingerprint, but the model is made by the
    `voltnet-train` installed on the computer. A computer with other aiida-voltnet code (here a real copy of the
    package with one changed file, run through a wrapper) gets a warning in the job's report, and the job is not
    offered to the cache: a later submission would have reused a model its own code would not make."""
    import shutil
    import sys
    from pathlib import Path

    import aiida_voltnet
    from aiida_voltnet.calculations.sources import sources_fingerprint

    package = Path(aiida_voltnet.__file__).parent
    copy = tmp_path / 'other' / 'aiida_voltnet'
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns('__pycache__'))
    with (copy / 'ml' / 'metrics.py').open('a') as handle:
        handle.write('\n# another release of the training code\n')
    # which package the code's executable runs: the changed copy first, then (the computer updated) this one
    switch = tmp_path / 'pythonpath'
    switch.write_text(str(tmp_path / 'other'))
    wrapper = tmp_path / 'voltnet-train-other'
    wrapper.write_text(f'#!/bin/bash\nPYTHONPATH="$(cat {switch})" exec {sys.executable} '
                       '-m aiida_voltnet.cli.train_entry "$@"\n')
    wrapper.chmod(0o755)
    other_code = aiida_code_installed(label='voltnet-train-other', filepath_executable=str(wrapper),
                                      default_calc_job_plugin='voltnet.train')

    def train(code):
        builder = TrainWorkChain.get_builder()
        builder.csv = orm.SinglefileData(csv_60)
        builder.split.kind = orm.Str('random')
        builder.train.model = orm.Str('krr')
        builder.train_code = code
        results, node = run_get_node(builder)
        assert node.is_finished_ok, (node.exit_status, node.exit_message)
        return results['model'].creator

    with enable_caching(identifier='aiida.calculations:voltnet.train'):
        other = train(other_code)
        assert other.outputs.metrics['sources'] not in (None, sources_fingerprint())
        assert not other.base.caching.is_valid_cache
        logs = [log.message for log in orm.Log.collection.get_logs_for(other)]
        assert any('ran other aiida-voltnet code' in message and sources_fingerprint() in message
                   for message in logs), logs
        # the same job (same code node, same hash) once the computer runs this installation's code: not taken
        # from the other job, which is no cache source (review: through another code node, as before, the hashes
        # differed and this could not fail)
        switch.write_text('')
        same = train(other_code)
        assert same.base.caching.get_hash() == other.base.caching.get_hash()
        assert not same.base.caching.is_created_from_cache
        assert same.outputs.metrics['sources'] == sources_fingerprint() and same.base.caching.is_valid_cache
        again = train(other_code)  # and one of matching code is a cache source as before
    assert again.base.caching.get_cache_source() == same.uuid
