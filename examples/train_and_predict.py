"""Train the default model on the shared CSV and predict LiFePO4/FePO4, with the core only (no AiiDA profile).

Predicts the electrode twice: from the two formulas (a minimal record, as ``voltnet predict --charged FePO4
--discharged LiFePO4 --ion Li`` builds it) and from pymatgen's shipped LiFePO4 structure with every Li removed
as the charged cell (``shipped_pair`` + ``record_from_structures``, which also fill in space groups and crystal
systems).

    python examples/train_and_predict.py [--data electrodes.csv] [--save model_dir/]

``--data`` defaults to ``$VOLTNET_DATA`` if set, else the shared CSV.
"""
from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

from aiida_voltnet.ml.models import DEFAULT_FEATURIZER, DEFAULT_MODEL, replaceable_model_problem, train_voltage_model
from aiida_voltnet.ml.records import ElectrodeDataError, ElectrodeRecord, read_electrodes_csv, validate_record
from aiida_voltnet.ml.structures import record_from_structures, shipped_pair

DEFAULT_CSV = Path(__file__).resolve().parents[1] / '..' / 'shared' / 'data' / 'mp_insertion_electrodes' / 'electrodes.csv'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', default=os.environ.get('VOLTNET_DATA') or str(DEFAULT_CSV.resolve()),
                        help='training CSV (default: $VOLTNET_DATA, else the shared MP CSV)')
    parser.add_argument('--save', default=None, help='also write the model to this directory')
    args = parser.parse_args(argv)
    if args.save:  # checked before the training: a directory it cannot write was found only after it
        target = Path(args.save)
        if target.exists() and not target.is_dir():
            parser.error(f'--save {args.save}: exists and is not a directory')
        existing = next(path for path in (target, *target.absolute().parents) if path.exists())
        if not existing.is_dir():
            parser.error(f'--save {args.save}: {existing} is not a directory')
        if not os.access(existing, os.W_OK | os.X_OK):
            parser.error(f'--save {args.save}: cannot write in {existing}')
        why = replaceable_model_problem(target) if target.is_dir() else None
        if why:  # a config.json of its own: found only after the training (review)
            parser.error(f'--save {args.save}: {why}; the model\'s config.json and arrays.safetensors would replace '
                         'them: choose another directory')

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        try:
            records = read_electrodes_csv(args.data)
        except (OSError, ElectrodeDataError) as exception:
            parser.exit(2, f'{parser.prog}: error: --data {args.data}: {exception}\n')
        print(f'Training {DEFAULT_MODEL} ({DEFAULT_FEATURIZER} features) on {len(records)} electrodes ...')
        started = time.perf_counter()
        try:
            model = train_voltage_model(records)  # the defaults: leak-free features, the voltnet ensemble
        except (ValueError, ElectrodeDataError) as exception:  # e.g. a row without average_voltage
            parser.exit(2, f'{parser.prog}: error: --data {args.data}: {exception}\n')
    for warning in caught:  # ours (about the data, the calibration), by their class; the libraries' noise is dropped
        if warning.category.__module__.startswith('aiida_voltnet'):
            print(f'warning: {warning.message}')
    print(f'trained in {time.perf_counter() - started:.0f} s: {len(model.members)} members, '
          f'{model.n_parameters} parameters')
    if args.save:
        model.save(args.save)
        print(f'saved to {args.save}')

    from_formulas = validate_record(ElectrodeRecord(battery_id='FePO4->LiFePO4 (formulas)', formula_charge='FePO4',
                                                    formula_discharge='LiFePO4', working_ion='Li'))
    charged, discharged, ion = shipped_pair('LiFePO4')
    from_structures = record_from_structures(charged, discharged, ion, battery_id='LiFePO4 (pymatgen structures)')

    batch = [from_formulas, from_structures]
    mean, std = model.predict(batch)
    print()
    for record, voltage, spread in zip(batch, mean, std):
        print(f'{record.battery_id:<32} {record.formula_charge} -> {record.formula_discharge}: '
              f'{voltage:.2f} +/- {spread:.2f} V vs {record.working_ion}/{record.working_ion}+ '
              f'(space groups {record.charge_space_group_number} -> {record.discharge_space_group_number})')
    print('Experiment: about 3.4-3.45 V vs Li/Li+ for LiFePO4.')


if __name__ == '__main__':
    main()
