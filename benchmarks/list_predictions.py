"""``list_predictions`` (``voltnet predictions``) on a profile with many structure-pair predictions: time per row
as the profile grows, so that a cost that grows faster than the number of predictions shows as a ratio above 1.

Builds ``--sizes`` finished ``voltnet.predict_structure_pair`` processes of one model (the graph a real prediction
stores: model, charged and discharged ``StructureData`` and the working ion in, voltage, uncertainty and the two
extrapolation lists out; the bodies are not run, so building is cheap) in an embedded SQLite profile in a temporary
``AIIDA_PATH``, the way ``ensure_embedded_profile`` creates it, deleted at the end. After each size it times
``list_predictions(model)`` (every row) and ``list_predictions(model, min_voltage=100)`` (a filter that keeps
none), ``--repeats`` times each, and prints the median per row and its ratio to the smallest size's.

Before 2026-12-06 the function loaded every output node and made two queries per pair prediction, each of which
re-processed every node already loaded: on a review's profile 403 rows took 22.5 s and the empty filter 21.1 s,
against 1.65 s and 0.40 s after (the same rows, compared field by field).

    python benchmarks/list_predictions.py [--sizes 250 1000 2000] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

from common import git_commit, positive_int, run


def build(model, structures, ion, count: int, start: int) -> None:
    """``count`` finished pair predictions of ``model``, stored in one transaction."""
    from aiida import orm
    from aiida.common.links import LinkType
    from aiida.manage import get_manager

    from aiida_voltnet.provenance import PREDICT_PAIR

    with get_manager().get_profile_storage().transaction():
        for i in range(start, start + count):
            process = orm.CalcFunctionNode()
            process.set_process_type(PREDICT_PAIR)
            for label, node in (('model', model), ('charged', structures[0]), ('discharged', structures[1]),
                                ('working_ion', ion)):
                process.base.links.add_incoming(node, LinkType.INPUT_CALC, label)
            process.set_process_state('finished')
            process.set_exit_status(0)
            process.store()
            for label, node in (('voltage', orm.Float(3.0 + 1e-6 * i)), ('uncertainty', orm.Float(0.1)),
                                ('unseen_elements', orm.List([])), ('ion_content_outside', orm.List([]))):
                node.base.links.add_incoming(process, LinkType.CREATE, label)
                node.store()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', type=positive_int, nargs='+', default=[250, 1000, 2000],
                        help='numbers of pair predictions to time at, ascending')
    parser.add_argument('--repeats', type=positive_int, default=3)
    args = parser.parse_args()
    sizes = sorted(set(args.sizes))
    aiida_path = tempfile.mkdtemp(prefix='voltnet-bench-aiida-')
    os.environ['AIIDA_PATH'] = aiida_path
    try:
        from aiida import orm

        from aiida_voltnet.cli.aiida_commands import ensure_embedded_profile
        from aiida_voltnet.data.model import VoltageModelData
        from aiida_voltnet.ml.models import train_voltage_model
        from aiida_voltnet.ml.records import ElectrodeRecord, validate_record
        from aiida_voltnet.ml.structures import shipped_pair
        from aiida_voltnet.provenance import list_predictions

        ensure_embedded_profile('voltnet-bench', echo=lambda message: None)
        records = [validate_record(ElectrodeRecord(battery_id=f'r{i}', formula_charge=charged, working_ion='Li',
                                                   formula_discharge=discharged, average_voltage=voltage))
                   for i, (charged, discharged, voltage) in enumerate(
                       [('FePO4', 'LiFePO4', 3.4), ('CoO2', 'LiCoO2', 3.9), ('Mn2O4', 'LiMn2O4', 4.0),
                        ('NiO2', 'LiNiO2', 3.8), ('TiS2', 'LiTiS2', 2.1), ('V2O5', 'LiV2O5', 3.3)] * 10)]
        model = VoltageModelData(train_voltage_model(records, model='krr')).store()
        charged, discharged, _ = shipped_pair('LiFePO4')
        structures = [orm.StructureData(pymatgen=charged).store(), orm.StructureData(pymatgen=discharged).store()]
        ion = orm.Str('Li').store()
        print(f'commit {git_commit()}; python {sys.version.split()[0]}; {args.repeats} repeats, median')
        print(f'{"predictions":>11} {"all rows (s)":>12} {"ms/row":>7} {"ratio":>6} {"empty filter (s)":>16} '
              f'{"ms/row":>7} {"ratio":>6}')
        built, first = 0, None
        for size in sizes:
            build(model, structures, ion, size - built, built)
            built = size
            times = {'all': [], 'none': []}
            for _ in range(args.repeats):
                start = time.perf_counter()
                rows = list_predictions(model)
                times['all'].append(time.perf_counter() - start)
                assert len(rows) == size, (len(rows), size)
                start = time.perf_counter()
                assert not list_predictions(model, min_voltage=100.0)
                times['none'].append(time.perf_counter() - start)
            median = {key: statistics.median(value) for key, value in times.items()}
            per_row = {key: 1000 * value / size for key, value in median.items()}
            first = first or per_row
            print(f'{size:>11} {median["all"]:>12.2f} {per_row["all"]:>7.2f} {per_row["all"] / first["all"]:>6.2f} '
                  f'{median["none"]:>16.2f} {per_row["none"]:>7.2f} {per_row["none"] / first["none"]:>6.2f}')
        print('ratio: ms per row against the smallest size (1.00 = linear in the number of predictions)')
    finally:
        shutil.rmtree(aiida_path, ignore_errors=True)
    return 0


if __name__ == '__main__':
    run(main)
