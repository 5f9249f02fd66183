"""Verify ML voltage predictions with DFT: LiCoO2/CoO2 and LiNiO2/NiO2 through ``voltnet.verify`` (Quantum
ESPRESSO pw.x from Debian, PBEsol PSLibrary pseudopotentials from Debian's quantum-espresso-data), printing the ML
prediction, the DFT voltage and the Materials Project value of the shared data set where it has the electrode,
with the run time of each verification.

Needs ``bash scripts/dft.sh`` (installs pw.x and the UPF files) once. Uses an SQLite-backed profile without services
(``voltnet-dft-example`` unless ``--profile``), installs the pseudopotential family and a pw.x code in it
(``voltnet dft-setup``), and trains a model with the ``fast`` protocol on the shared CSV unless the profile already
has one (or ``--model PK`` names one). ``--data`` (default: ``$VOLTNET_DATA`` if set, else the shared CSV, as for
``voltnet quickstart``) is that CSV and the source of the Materials Project column; it is checked before any DFT.

    python examples/verify_layered_oxides.py [--protocol balanced|ci|precise] [--pairs Co Ni] [--profile NAME] [--data CSV]
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_CSV = ROOT.parent / 'shared' / 'data' / 'mp_insertion_electrodes' / 'electrodes.csv'


#: The columns of the MP CSV that :func:`mp_values` reads.
MP_COLUMNS = ('battery_id', 'framework_formula', 'working_ion', 'formula_charge', 'formula_discharge', 'average_voltage')


def mp_values(data: Path, framework: str, ion: str = 'Li') -> list[dict]:
    """Rows of the MP CSV ``data`` for the full-range electrode of ``framework`` (charged end member with zero ion)
    whose discharged end member holds one ion per formula unit."""
    with data.open(newline='') as handle:
        return [row for row in csv.DictReader(handle)
                if row['framework_formula'] == framework and row['working_ion'] == ion
                and row['formula_charge'] == f'{ion}0{framework}' and row['formula_discharge'] == f'{ion}1{framework}']


def latest_model(orm):
    """The newest ``voltnet`` model of the profile that predicts the average voltage (not another target)."""
    from aiida_voltnet.data.model import VoltageModelData

    query = orm.QueryBuilder().append(VoltageModelData, tag='m', filters={
        'attributes.model_name': 'voltnet',
        'or': [{'attributes.target': 'average_voltage'}, {'attributes': {'!has_key': 'target'}}]})
    query.order_by({'m': {'ctime': 'desc'}}).limit(1)
    found = query.all(flat=True)
    return found[0] if found else None


def _given_model(parser, pk, profile):
    """The voltage model ``--model`` names, or exit 2 saying why it cannot be used."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    from aiida_voltnet.calculations.functions import check_voltage_model
    from aiida_voltnet.data.model import VoltageModelData

    try:
        model = orm.load_node(pk)
    except NotExistent:
        parser.exit(2, f'{parser.prog}: error: --model {pk}: no node with this pk in profile {profile!r}\n')
    if not isinstance(model, VoltageModelData):
        parser.exit(2, f'{parser.prog}: error: --model {pk}: {type(model).__name__}<{pk}> is not a voltage model '
                       '(VoltageModelData)\n')
    problem = check_voltage_model(model)
    if problem:
        parser.exit(2, f'{parser.prog}: error: --model {pk}: {problem}\n')
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--profile', default='voltnet-dft-example', help='SQLite profile to create or reuse')
    parser.add_argument('--protocol', default='balanced', choices=['ci', 'balanced', 'precise'])
    parser.add_argument('--pairs', nargs='+', default=['Co', 'Ni'], choices=['Co', 'Ni'])
    parser.add_argument('--model', type=int, default=None, help='pk of a voltage model (default: latest or train one)')
    parser.add_argument('--data', default=os.environ.get('VOLTNET_DATA') or str(SHARED_CSV.resolve()),
                        help='MP CSV: training data when a model is trained, and the MP column (default: '
                             '$VOLTNET_DATA, else the shared CSV)')
    args = parser.parse_args(argv)
    data = Path(args.data)
    if not data.is_file():  # before any DFT: found missing after the verifications had run, with no table printed
        parser.error(f'--data {args.data}: no such file (set --data or VOLTNET_DATA to the MP insertion-electrode CSV)')
    with data.open(newline='') as handle:  # and a CSV without the columns the MP column reads, as late (review)
        header = next(csv.reader(handle), [])
    lacking = [name for name in MP_COLUMNS if name not in header]
    if lacking:
        parser.error(f'--data {args.data}: no column {", ".join(lacking)}: not an MP insertion-electrode CSV')

    from aiida_voltnet.cli.aiida_commands import ensure_embedded_profile

    ensure_embedded_profile(args.profile)
    from aiida import orm
    from aiida.engine import run_get_node

    from aiida_voltnet.cli.dft_commands import setup_dft
    from aiida_voltnet.dft import layered_oxide_pair
    from aiida_voltnet.workflows.train import TrainWorkChain
    from aiida_voltnet.workflows.verify import VerifyWorkChain

    model = None
    if args.model is not None:
        model = _given_model(parser, args.model, args.profile)
    _, code = setup_dft()
    model = model or latest_model(orm)
    if model is None:
        print(f'training a model (protocol fast) on {data} ...', flush=True)
        outputs, _ = run_get_node(TrainWorkChain.get_builder_from_protocol(str(data), protocol='fast'))
        model = outputs['model']
    trained_on = set()  # a model without a creator (imported from a model directory) has no recorded training set
    training = [] if model.creator is None else \
        [link.node for link in model.creator.base.links.get_incoming().all() if link.link_label == 'dataset']
    if training:
        trained_on = set(training[0].battery_ids())
    print(f'model: VoltageModelData<{model.pk}> {model.model_name} version {model.model_version[:12]}')

    rows = []
    for metal in args.pairs:
        charged, discharged = layered_oxide_pair(metal)
        builder = VerifyWorkChain.get_builder_from_protocol(code, charged, discharged, 'Li', protocol=args.protocol,
                                                            overrides={'model': model})
        started = time.perf_counter()
        results, node = run_get_node(builder)
        seconds = time.perf_counter() - started
        name = f'Li{metal}O2'
        if not node.is_finished_ok:
            print(f'{name}: VerifyWorkChain<{node.pk}> failed ({node.exit_status}): {node.exit_message}')
            continue
        mp = mp_values(data, f'{metal}O2')
        mp_text = ', '.join(f'{float(r["average_voltage"]):.2f} ({r["battery_id"]}'
                            + (', in the training set' if r['battery_id'] in trained_on else '') + ')' for r in mp)
        rows.append((name, results['ml_voltage'].value, results['ml_uncertainty'].value, results['dft_voltage'].value,
                     mp_text or 'not in the shared data', seconds, node.pk))

    print(f'\nprotocol {args.protocol}: {VerifyWorkChain.get_available_protocols()[args.protocol]["description"]}\n')
    print(f'{"pair":<8} {"ML (V)":>13} {"DFT (V)":>8}  {"time":>6}  {"process":<22} MP GGA(+U) in the shared data')
    for name, ml, std, dft, mp_text, seconds, pk in rows:
        print(f'{name:<8} {ml:7.2f} ± {std:4.2f} {dft:8.2f}  {seconds:5.0f}s  VerifyWorkChain<{pk}>{"":<5} {mp_text}')
    print('\nPBEsol without U underestimates the voltages of these oxides (experiment: LiCoO2 about 3.9-4.1 V); the '
          'MP values use GGA+U.')
    return 0 if len(rows) == len(args.pairs) else 1


if __name__ == '__main__':
    sys.exit(main())
