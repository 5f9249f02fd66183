"""``voltnet.verify`` with real pw.x (Debian's Quantum ESPRESSO 6.7) on LiCoO2/CoO2 with the ``ci`` protocol
(tiny settings, about 20 s here), and its refusals: frameworks that differ, an element without a pseudopotential,
a pw.x run that fails."""
from __future__ import annotations

import csv

import pytest
from aiida import orm
from aiida.engine import run_get_node
from conftest import CSV_150, count

from aiida_voltnet.dft import layered_oxide_pair
from aiida_voltnet.workflows.verify import VerifyWorkChain

pytestmark = pytest.mark.dft


def _pw_jobs():
    return orm.QueryBuilder().append(orm.CalcJobNode, filters={'process_type': 'aiida.calculations:quantumespresso.pw'}).count()


@pytest.fixture(scope='module')
def model_without_co(aiida_profile, tmp_path_factory):
    """A 3-epoch MLP on the fixture rows whose framework has no Co, so that LiCoO2 is an extrapolation for it."""
    from pymatgen.core import Composition

    from aiida_voltnet.calculations.functions import assemble_dataset_from_csv, train_model

    with CSV_150.open(newline='') as handle:
        rows = list(csv.DictReader(handle))
    kept = [row for row in rows if 'Co' not in {str(e) for e in Composition(row['framework_formula']).elements}]
    assert 0 < len(kept) < len(rows)
    path = tmp_path_factory.mktemp('csv') / 'no_co.csv'
    with path.open('w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    dataset = assemble_dataset_from_csv(orm.SinglefileData(path))
    return train_model(dataset, model='mlp', settings={'train_overrides': {'epochs': 3}})


def test_verify_licoo2_links_dft_to_the_prediction(pw, model_without_co):
    from aiida.cmdline.utils.common import get_workchain_report

    model = model_without_co
    charged, discharged = layered_oxide_pair('Co')
    builder = VerifyWorkChain.get_builder_from_protocol(pw, charged, discharged, 'Li', protocol='ci',
                                                        overrides={'model': model})
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    # The model never saw a Co host: the prediction is made, stored as an extrapolation and reported as one.
    assert results['ml_unseen_elements'].get_list() == ['Co']
    assert results['ml_unseen_elements'].creator.uuid == results['ml_voltage'].creator.uuid
    assert results['ml_ion_content_outside'].get_list() == []
    assert results['ml_features_outside'].creator.uuid == results['ml_voltage'].creator.uuid
    assert 'extrapolation: the host has Co, which no training host had' in get_workchain_report(node, 'REPORT')
    dft, ml = results['dft_voltage'].value, results['ml_voltage'].value
    # PBEsol without U at 30 Ry, unrelaxed cells: ~3.5 V (converged PBEsol gives 3.4-3.6 V, shared/notes/qe_offline.md).
    assert 3.0 < dft < 4.0
    assert results['difference'].value == pytest.approx(ml - dft)
    assert results['delta_ions'].value == pytest.approx(1.0)
    assert set(results['energies']) == {'e_charged', 'e_discharged', 'e_ion_metal'}

    # Provenance: the DFT voltage comes from the three pw.x calculations run on the input structures...
    voltage = results['dft_voltage']
    assert voltage.creator.process_type == 'aiida.calculations:voltnet.dft_voltage'
    ancestors = orm.QueryBuilder().append(orm.Float, filters={'id': voltage.pk}, tag='v').append(
        orm.CalcJobNode, with_descendants='v', project='id', filters={
            'process_type': 'aiida.calculations:quantumespresso.pw'}).all(flat=True)
    assert len(set(ancestors)) == 3
    structures = orm.QueryBuilder().append(orm.Float, filters={'id': voltage.pk}, tag='v').append(
        orm.StructureData, with_descendants='v', project='uuid').all(flat=True)
    assert {charged.uuid, discharged.uuid} <= set(structures)
    # the Li metal cell was made by a process from the working ion (it had no origin in the graph)
    ancestors = orm.QueryBuilder().append(orm.Float, filters={'id': voltage.pk}, tag='v').append(
        orm.StructureData, with_descendants='v').all(flat=True)
    (metal,) = {s.uuid: s for s in ancestors if s.get_formula() == 'Li'}.values()
    assert metal.creator.process_type == 'aiida.calculations:voltnet.ion_metal_cell'
    assert metal.creator.inputs.working_ion.uuid == node.inputs.working_ion.uuid
    # ... and the ML number it is compared with was made by the model from the same two structures.
    predict = results['ml_voltage'].creator
    assert predict.process_type == 'aiida.calculations:voltnet.predict_structure_pair'
    assert predict.inputs.model.uuid == model.uuid
    assert {predict.inputs.charged.uuid, predict.inputs.discharged.uuid} == {charged.uuid, discharged.uuid}
    compare = results['difference'].creator
    assert (compare.inputs.ml_voltage.uuid, compare.inputs.dft_voltage.uuid) == (results['ml_voltage'].uuid, voltage.uuid)


def test_verify_refuses_frameworks_that_differ(pw):
    charged, _ = layered_oxide_pair('Co')
    _, discharged = layered_oxide_pair('Ni')
    before = count(orm.Node)
    with pytest.raises(ValueError, match='not one electrode of the working ion: .*host frameworks differ: charged '
                                         'CoO2, discharged NiO2'):
        run_get_node(VerifyWorkChain.get_builder_from_protocol(pw, charged, discharged, 'Li', protocol='ci'))
    assert count(orm.Node) == before  # refused at launch: nothing stored, no DFT started
    # the ion as a Str, as every other input: it was wrapped again, and the ion 'uuid: ... value: Li' refused
    coo2, licoo2 = layered_oxide_pair('Co')
    builder = VerifyWorkChain.get_builder_from_protocol(pw, coo2, licoo2, orm.Str('Li'), protocol='ci')
    assert builder.working_ion.value == 'Li'


def test_verify_refuses_at_launch_a_wrong_metal_or_misspelt_job_options(pw):
    """A nickel cell given as the Li metal gave exit 0 and -2285.5 V; a misspelt option was found only when the
    jobs were built, after storing."""
    from aiida_voltnet.dft import ion_metal_structure

    charged, discharged = layered_oxide_pair('Co')
    before = _pw_jobs()
    with pytest.raises(ValueError, match='ion_metal must be a cell of Li metal only .*not of Ni'):
        run_get_node(VerifyWorkChain.get_builder_from_protocol(pw, charged, discharged, 'Li', protocol='ci',
                                                               overrides={'ion_metal': ion_metal_structure('Ni')}))
    with pytest.raises(ValueError, match="unknown job option.s. 'max_walclock_seconds'"):
        run_get_node(VerifyWorkChain.get_builder_from_protocol(pw, charged, discharged, 'Li', protocol='ci',
                                                               overrides={'options': {'max_walclock_seconds': 10}}))
    # review: a walltime of 0 was refused by a Slurm computer's submit script only, after 41 nodes were stored
    with pytest.raises(ValueError, match="'max_wallclock_seconds' must be a positive number of seconds, got 0"):
        run_get_node(VerifyWorkChain.get_builder_from_protocol(pw, charged, discharged, 'Li', protocol='ci',
                                                               overrides={'options': {'max_wallclock_seconds': 0}}))
    # and an infinite setting reached the database ('nan and inf/-inf can not be serialized'), 3 nodes stored first
    with pytest.raises(ValueError, match='settings.degauss must be a finite number, got inf'):
        run_get_node(VerifyWorkChain.get_builder_from_protocol(pw, charged, discharged, 'Li', protocol='ci',
                                                               overrides={'settings': {'degauss': float('inf')}}))
    assert _pw_jobs() == before


def test_verify_names_the_element_without_pseudopotential(pw):
    from aiida_voltnet.workflows.quickstart import shipped_structure_pairs

    pair = shipped_structure_pairs()['LiFePO4']
    before = count(orm.Node)
    with pytest.raises(ValueError, match=r'has no pseudopotential for P \(charged cell'):
        run_get_node(VerifyWorkChain.get_builder_from_protocol(pw, pair['charged'], pair['discharged'], 'Li',
                                                               protocol='ci'))
    assert count(orm.Node) == before


def test_verify_refuses_a_cutoff_stringency_the_family_lacks(pw, small_model):
    """Refused at launch: it raised inside the DFT step, after the ML prediction was stored, and then exited 203
    after storing the work chain; now nothing is stored. A family that is not installed, likewise."""
    model, _ = small_model
    charged, discharged = layered_oxide_pair('Co')
    before = count(orm.Node)
    with pytest.raises(ValueError, match=r"has no cutoff stringency 'sssp' \(settings.cutoff_stringency\); it has"):
        run_get_node(VerifyWorkChain.get_builder_from_protocol(
            pw, charged, discharged, 'Li', protocol='ci', overrides={'model': model,
                                                                    'settings': {'cutoff_stringency': 'sssp'}}))
    with pytest.raises(ValueError, match="pseudopotential family 'SSSP/9.9' is not installed in this profile"):
        run_get_node(VerifyWorkChain.get_builder_from_protocol(
            pw, charged, discharged, 'Li', protocol='ci', overrides={'pseudo_family': 'SSSP/9.9'}))
    assert count(orm.Node) == before


def test_verify_refuses_at_launch_a_pair_the_model_refuses(pw, small_model):
    """A working ion the model never saw: refused before anything is stored (it exited 204 after storing)."""
    from aiida_voltnet.calculations.functions import train_model
    from aiida_voltnet.data import ElectrodeDataset

    _, dataset = small_model
    li_only = train_model(ElectrodeDataset([r for r in dataset.records() if r.working_ion == 'Li']), model='krr')
    charged, discharged = layered_oxide_pair('Co')
    sodiated = discharged.get_pymatgen_structure()
    sodiated.replace_species({'Li': 'Na'})
    before = count(orm.Node)
    with pytest.raises(ValueError, match=r'the ML prediction was refused: .*never saw working ion Na'):
        run_get_node(VerifyWorkChain.get_builder_from_protocol(pw, charged, orm.StructureData(pymatgen=sodiated),
                                                               'Na', protocol='ci', overrides={'model': li_only}))
    assert count(orm.Node) == before


def test_verify_reports_a_failed_pw_run(pw):
    """Two Li atoms on the same site: pw.x stops with 'atoms 1 and 2 overlap'; the exit code names the cell."""
    charged, discharged = layered_oxide_pair('Co')
    metal = orm.StructureData(cell=[[3.0, 0, 0], [0, 3.0, 0], [0, 0, 3.0]])
    metal.append_atom(position=(0.0, 0.0, 0.0), symbols='Li')
    metal.append_atom(position=(0.0, 0.0, 0.0001), symbols='Li')
    builder = VerifyWorkChain.get_builder_from_protocol(pw, charged, discharged, 'Li', protocol='ci',
                                                        overrides={'ion_metal': metal})
    _, node = run_get_node(builder)
    assert node.exit_status == VerifyWorkChain.exit_codes.ERROR_DFT_FAILED.status
    assert 'DFT calculation of the ion_metal cell failed: ion_metal: PwBaseWorkChain<' in node.exit_message
    assert 'dft_voltage' not in node.outputs


def test_verify_with_relaxation(pw):
    """relax_type positions: both electrode cells go through PwRelaxWorkChain (pw.x `relax`), the metal through a
    plain SCF; the voltage comes from the relaxed energies (about 2 min here under load)."""
    from aiida.common.links import LinkType

    charged, discharged = layered_oxide_pair('Co')
    builder = VerifyWorkChain.get_builder_from_protocol(pw, charged, discharged, 'Li', protocol='ci',
                                                        overrides={'settings': {'relax_type': 'positions'}})
    results, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    called = {link.link_label: link.node for link in node.base.links.get_outgoing(link_type=LinkType.CALL_WORK).all()}
    assert {label: sub.process_label for label, sub in called.items()} == {
        'dft_charged': 'PwRelaxWorkChain', 'dft_discharged': 'PwRelaxWorkChain', 'dft_ion_metal': 'PwBaseWorkChain'}
    for label in ('dft_charged', 'dft_discharged'):
        relax = called[label]
        assert relax.is_finished_ok and 'output_structure' in relax.outputs
        calculations = [c for c in relax.called_descendants if c.process_label == 'PwCalculation']
        assert calculations and all(c.inputs.parameters['CONTROL']['calculation'] == 'relax' for c in calculations)
    assert 3.0 < results['dft_voltage'].value < 4.0
