"""``voltnet.screen`` with real pw.x: four candidates -> one batch prediction -> selection -> DFT of the selected
(LiCoO2 and LiNiO2 verify; LiFePO4 has no P pseudopotential and fails; a pair whose frameworks differ is left out
before the prediction) -> summary -> one active-learning round (the two verified electrodes join the training
records and the model is retrained)."""
from __future__ import annotations

import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import run_get_node
from conftest import count

from aiida_voltnet.dft import layered_oxide_pair
from aiida_voltnet.workflows.screen import ScreenWorkChain
from aiida_voltnet.workflows.verify import VerifyWorkChain

pytestmark = pytest.mark.dft


def _pair(charged, discharged):
    return {'charged': charged, 'discharged': discharged, 'working_ion': orm.Str('Li')}


def test_screen_verifies_the_selected_goes_on_after_failures_and_retrains(pw, small_model):
    from aiida_voltnet.workflows.quickstart import shipped_structure_pairs

    model, training = small_model
    coo2, licoo2 = layered_oxide_pair('Co')
    nio2, linio2 = layered_oxide_pair('Ni')
    lfp = shipped_structure_pairs()['LiFePO4']
    verify = VerifyWorkChain.get_protocol_inputs('ci')
    builder = ScreenWorkChain.get_builder()
    builder.model = model
    builder.candidates = {'LiCoO2': _pair(coo2, licoo2), 'LiNiO2': {**_pair(nio2, linio2), 'working_ion': 'Li'},
                          'LiFePO4': _pair(lfp['charged'], lfp['discharged']), 'mixed': _pair(coo2, linio2)}
    builder.selection = orm.Dict({'mode': 'window', 'top_k': 3, 'voltage_min': -1.0, 'voltage_max': 8.0})
    builder.verify = {'code': pw, 'settings': orm.Dict(verify['settings']), 'options': verify['options'],
                      'pseudo_family': orm.Str(verify['pseudo_family'])}
    builder.retrain = {'dataset': training, 'model': 'mlp'}  # the settings (3 epochs) are the screened model's
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    assert node.inputs.candidates.LiNiO2.working_ion.value == 'Li'  # given as a plain str

    summary = results['summary'].get_dict()
    assert summary['n_candidates'] == 4 and summary['n_selected'] == 3
    assert (summary['n_verified'], summary['n_not_verified'], summary['n_failed']) == (2, 1, 0)  # LiFePO4 counted
    assert 'host frameworks differ' in summary['rejected']['mixed']
    rows = {row['battery_id']: row for row in summary['rows']}
    # LiFePO4 is not submitted: VerifyWorkChain would refuse it at launch (no P pseudopotential); the row says why
    assert rows['LiFePO4']['status'].startswith('not verified: pseudopotential family ')
    assert 'has no pseudopotential for P (charged cell' in rows['LiFePO4']['status']
    for name in ('LiCoO2', 'LiNiO2'):
        assert rows[name]['status'] == 'verified'
        assert rows[name]['dft_voltage'] == results['dft_voltages'][name].value
        assert 2.5 < rows[name]['dft_voltage'] < 5.0
        assert rows[name]['difference'] == pytest.approx(rows[name]['ml_voltage'] - rows[name]['dft_voltage'])
    assert summary['mae_verified'] == pytest.approx(
        (abs(rows['LiCoO2']['difference']) + abs(rows['LiNiO2']['difference'])) / 2)

    # The batch prediction is one process over the three valid candidates; the Li metal ran once for both.
    assert results['predictions'].creator.process_type == 'aiida.calculations:voltnet.predict_voltages'
    assert results['predictions'].base.attributes.get('n_predictions') == 3
    called = node.base.links.get_outgoing(link_type=LinkType.CALL_WORK).all()
    assert sorted(link.link_label for link in called if link.link_label.startswith('dft_metal_')) == ['dft_metal_Li']
    verifications = [link.node for link in called if link.link_label.startswith('verify_')]
    assert sorted(v.base.links.get_incoming(link_type=LinkType.CALL_WORK).one().link_label
                  for v in verifications) == ['verify_LiCoO2', 'verify_LiNiO2']
    shared = {v.inputs.ion_energy.uuid for v in verifications}
    assert len(shared) == 1
    (metal_job,) = [link.node for link in called if link.link_label == 'dft_metal_Li']
    assert metal_job.inputs.pw.structure.creator.process_type == 'aiida.calculations:voltnet.ion_metal_cell'
    labels = {link.link_label for v in verifications for link in v.base.links.get_outgoing(link_type=LinkType.CALL_WORK).all()}
    assert labels == {'dft_charged', 'dft_discharged'}  # no verification computed the metal again

    # Active learning: the training records plus the two DFT-verified electrodes, and a model trained on them.
    grown = results['augmented_dataset']
    assert grown.n_records == training.n_records + 2
    assert sorted(grown.base.attributes.get('dft_verified_ids')) == ['dft:LiCoO2', 'dft:LiNiO2']
    verified_targets = {r.battery_id: r.average_voltage for r in grown.records() if r.battery_id.startswith('dft:')}
    assert verified_targets == {f'dft:{n}': results['dft_voltages'][n].value for n in ('LiCoO2', 'LiNiO2')}
    retrained = results['retrained_model']
    assert retrained.creator.inputs.dataset.uuid == grown.uuid
    # what retrain does not give is the screened model's recipe (the same nodes): it was train_model's defaults, a
    # 5-member model where the screened one had 2 (user walk)
    for key in ('featurizer', 'seed', 'settings'):
        assert retrained.creator.inputs[key].uuid == model.creator.inputs[key].uuid, key
    assert retrained.creator.inputs.model.value == 'mlp' and retrained.model_name == 'mlp'
    assert any("retraining with the screened model's featurizer, seed, settings" in log.message
               for log in orm.Log.collection.get_logs_for(node))
    assert retrained.model_version != model.model_version
    assert grown.creator.inputs.dataset.uuid == training.uuid


def test_screen_fails_cleanly_when_no_candidate_can_be_predicted(pw, small_model):
    model, _ = small_model
    coo2, _ = layered_oxide_pair('Co')
    _, linio2 = layered_oxide_pair('Ni')
    verify = VerifyWorkChain.get_protocol_inputs('ci')
    _, node = run_get_node(ScreenWorkChain, model=model, candidates={'mixed': _pair(coo2, linio2)},
                           verify={'code': pw, 'settings': orm.Dict(verify['settings'])})
    assert node.exit_status == ScreenWorkChain.exit_codes.ERROR_NO_VALID_CANDIDATES.status
    assert 'host frameworks differ' in node.exit_message


def test_screen_refuses_what_would_fail_only_after_the_dft(pw, small_model):
    """Bad retrain settings are refused at launch, an unusable cutoff stringency before any prediction: both
    used to fail only once the verifications had run."""
    model, dataset = small_model
    coo2, licoo2 = layered_oxide_pair('Co')
    settings = VerifyWorkChain.get_protocol_inputs('ci')['settings']
    candidates = {'LiCoO2': _pair(coo2, licoo2)}
    with pytest.raises(ValueError, match="retrain: ValueError: unknown model 'nonexistent'"):
        run_get_node(ScreenWorkChain, model=model, candidates=candidates,
                     verify={'code': pw, 'settings': orm.Dict(settings)},
                     retrain={'dataset': dataset, 'model': orm.Str('nonexistent')})
    with pytest.raises(ValueError, match='unknown training setting'):
        run_get_node(ScreenWorkChain, model=model, candidates=candidates,
                     verify={'code': pw, 'settings': orm.Dict(settings)},
                     retrain={'dataset': dataset, 'settings': orm.Dict({'bogus': 1})})
    # the verified electrodes are structure pairs with a DFT voltage: a retrain whose featurizer needs capacities
    # (paper), or whose target is not the voltage, failed with exit 303 once the DFT had run
    with pytest.raises(ValueError, match='retrain: ElectrodeDataError: .*LiCoO2.*capacity_grav'):
        run_get_node(ScreenWorkChain, model=model, candidates=candidates,
                     verify={'code': pw, 'settings': orm.Dict(settings)},
                     retrain={'dataset': dataset, 'featurizer': orm.Str('paper'), 'model': orm.Str('krr')})
    with pytest.raises(ValueError, match='retrained model must predict the average voltage, not max_delta_volume'):
        run_get_node(ScreenWorkChain, model=model, candidates=candidates,
                     verify={'code': pw, 'settings': orm.Dict(settings)},
                     retrain={'dataset': dataset, 'model': orm.Str('krr'),
                              'settings': orm.Dict({'target': 'max_delta_volume'})})
    # ranking by the ensemble spread of a one-member model (this MLP) picked the first candidates (review)
    with pytest.raises(ValueError, match='selection mode uncertainty ranks by the ensemble spread, and model mlp '
                                         r'\(one member\) has none'):
        run_get_node(ScreenWorkChain, model=model, candidates=candidates,
                     selection=orm.Dict({'mode': 'uncertainty', 'top_k': 1}),
                     verify={'code': pw, 'settings': orm.Dict(settings)})
    # a second active-learning round on round 1's augmented dataset: the candidate verified then would join as
    # 'dft:LiCoO2' again, which add_verified_records refused with exit 303 after the DFT of this round (review);
    # then the whole screen was refused at launch, though only that candidate was verified (review): now it is
    # left out with the reason, and the rest of the pool goes on (here there is no rest, so nothing is predicted)
    from aiida_voltnet.calculations.dft import add_verified_records

    round1 = add_verified_records(dataset, LiCoO2={**_pair(coo2, licoo2), 'dft_voltage': orm.Float(3.42)})
    _, node = run_get_node(ScreenWorkChain, model=model, candidates=candidates,
                           verify={'code': pw, 'settings': orm.Dict(settings)}, retrain={'dataset': round1})
    assert node.exit_status == ScreenWorkChain.exit_codes.ERROR_NO_VALID_CANDIDATES.status
    assert 'already verified: retrain.dataset holds dft:LiCoO2' in node.exit_message
    assert not [n for n in node.called if n.process_label == 'VerifyWorkChain']
    # a candidate named like an argument of summarize_screen/add_verified_records replaced that argument and its
    # DFT result was dropped (exit 302 after a successful verification, or a retrain without it)
    for name in ('outcomes', 'dataset', 'selected', 'predictions', 'metadata'):
        with pytest.raises(ValueError, match=f"candidates: rename '{name}'"):
            run_get_node(ScreenWorkChain, model=model, candidates={'LiCoO2': _pair(coo2, licoo2),
                                                                   name: _pair(coo2, licoo2)},
                         verify={'code': pw, 'settings': orm.Dict(settings)})
    # a model of another target: its predictions are no voltages to select and compare with DFT
    from aiida_voltnet.calculations.functions import train_model

    volume = train_model(dataset, model=orm.Str('krr'), settings=orm.Dict({'target': 'max_delta_volume'}))
    with pytest.raises(ValueError, match='model: .*trained to predict max_delta_volume'):
        run_get_node(ScreenWorkChain, model=volume, candidates=candidates,
                     verify={'code': pw, 'settings': orm.Dict(settings)})
    with pytest.raises(ValueError, match='model: .*trained to predict max_delta_volume'):
        run_get_node(VerifyWorkChain.get_builder_from_protocol(pw, coo2, licoo2, 'Li', protocol='ci',
                                                               overrides={'model': volume}))
    # a family without the asked cutoff stringency: refused at launch (the verify namespace has VerifyWorkChain's
    # launch check), before any candidate is predicted or stored
    before = count(orm.ProcessNode)
    with pytest.raises(ValueError, match="verify.*no cutoff stringency 'sssp'"):
        run_get_node(ScreenWorkChain, model=model, candidates=candidates,
                     verify={'code': pw, 'settings': orm.Dict({**settings, 'cutoff_stringency': 'sssp'})})
    assert count(orm.ProcessNode) == before


def test_screen_reports_when_every_verification_fails(pw, small_model):
    """Only LiFePO4 (no P pseudopotential) is selected: it is never submitted, so no verification failed and no
    metal reference runs for it: exit 201 'no verification could run' naming why, and the summary says it too. It
    ran the Li metal job first, then ended with 302 'every selected candidate failed', n_failed 1 (user walk)."""
    from aiida_voltnet.workflows.quickstart import shipped_structure_pairs

    model, _ = small_model
    lfp = shipped_structure_pairs()['LiFePO4']
    verify = VerifyWorkChain.get_protocol_inputs('ci')
    results, node = run_get_node(ScreenWorkChain, model=model,
                                 candidates={'LiFePO4': _pair(lfp['charged'], lfp['discharged'])},
                                 verify={'code': pw, 'settings': orm.Dict(verify['settings'])})
    assert node.exit_status == ScreenWorkChain.exit_codes.ERROR_UNKNOWN_PSEUDO_FAMILY.status
    assert node.exit_message.startswith('no verification could run: pseudopotential family ')
    assert 'has no pseudopotential for P (charged cell' in node.exit_message
    summary = results['summary'].get_dict()
    assert (summary['n_selected'], summary['n_verified'], summary['n_not_verified'], summary['n_failed']) == \
        (1, 0, 1, 0)
    assert summary['rows'][0]['status'].startswith('not verified: pseudopotential family ')
    assert 'has no pseudopotential for P (charged cell' in summary['rows'][0]['status']
    assert not [c for c in node.called if c.process_label in ('VerifyWorkChain', 'PwBaseWorkChain')]


def test_screen_reports_a_failed_metal_reference_as_a_dft_failure(aiida_localhost, pw, small_model):
    """The Li metal job fails (a pw code whose executable exits 1 at once): no candidate of Li is submitted. That
    is a failed DFT job, exit 304 naming it; it was exit 201 ERROR_UNKNOWN_PSEUDO_FAMILY, which sends the user to
    the pseudopotential family."""
    from aiida_voltnet.dft import pw_code

    model, _ = small_model
    broken = pw_code(aiida_localhost, label='pw-exits-1', executable='/bin/false')
    coo2, licoo2 = layered_oxide_pair('Co')
    verify = VerifyWorkChain.get_protocol_inputs('ci')
    results, node = run_get_node(ScreenWorkChain, model=model, candidates={'LiCoO2': _pair(coo2, licoo2)},
                                 verify={'code': broken, 'settings': orm.Dict(verify['settings'])})
    assert node.exit_status == ScreenWorkChain.exit_codes.ERROR_METAL_REFERENCE_FAILED.status, node.exit_message
    assert 'Li metal reference PwBaseWorkChain<' in node.exit_message
    summary = results['summary'].get_dict()
    assert list(summary['failed_references']) == ['Li']
    assert (summary['n_selected'], summary['n_verified'], summary['n_not_verified']) == (1, 0, 1)
    assert not [c for c in node.called if c.process_label == 'VerifyWorkChain']


def test_screen_reports_candidates_whose_host_elements_no_training_host_had(pw, small_model):
    """SrFeO3/LiSrFeO3 (no Sr in the 150 training rows) is predicted, flagged as extrapolation in the prediction
    array and the report; the window selects nothing, so no pw.x job starts."""
    from aiida.cmdline.utils.common import get_workchain_report
    from pymatgen.core import Lattice, Structure

    model, _ = small_model
    charged = Structure.from_spacegroup('Pm-3m', Lattice.cubic(3.9), ['Sr', 'Fe', 'O'], [[0, 0, 0], [.5, .5, .5],
                                                                                        [.5, .5, 0]])
    discharged = charged.copy()
    discharged.append('Li', [0.5, 0, 0])
    verify = VerifyWorkChain.get_protocol_inputs('ci')
    results, node = run_get_node(
        ScreenWorkChain, model=model,
        candidates={'SrFeO3': _pair(orm.StructureData(pymatgen=charged), orm.StructureData(pymatgen=discharged))},
        selection=orm.Dict({'mode': 'window', 'top_k': 1, 'voltage_min': 50.0, 'voltage_max': 60.0}),
        verify={'code': pw, 'settings': orm.Dict(verify['settings'])})
    assert node.is_finished_ok, node.exit_message
    assert results['predictions'].get_array('unseen_elements').tolist() == [True]
    assert results['predictions'].base.attributes.get('n_unseen_elements') == 1
    assert results['predictions'].get_array('ion_content_outside').tolist() == [False]
    assert results['selected'].get_list() == []
    assert 'extrapolation: the hosts of SrFeO3 have elements no training host had' in get_workchain_report(node, 'REPORT')
    assert not [c for c in node.called_descendants if c.process_label == 'PwCalculation']
