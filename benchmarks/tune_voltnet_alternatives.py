"""Alternatives to the tree ensemble, scored like ``tune_voltnet.py``: on validation rows only, never the test rows.

Two ideas tried for the 0.33 V leak-free target, with the validation rows of ``tune_voltnet.py`` (``--protocol``:
the tuning pool by default; the table in docs/results.md used ``seed-train``, the inner 90/10 split of each
seed's training rows, seeds 0 1 2):

* blends: the tree ensemble (current default, and the ``leaf10_lr0.1x500`` validation winner) averaged with an
  RBF SVR (C 10 or 30), RBF kernel ridge or 3 residual MLPs (``voltnet_mlp``), weights 0.2 / 0.3 / 0.5;
* steps as extra training rows: every voltage step of a multi-step *training* electrode (from its ``adj_pairs``)
  added as a row with the step's formulas and voltage (symmetry only where the step's end is the electrode's
  own end member). Only the training electrodes' steps are used; validation rows are whole electrodes as usual.

    OMP_NUM_THREADS=2 python benchmarks/tune_voltnet_alternatives.py [--seeds 0 1 2] [--skip-mlp]
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import time

import numpy as np
from common import DEFAULT_CSV, Distinct, existing_file, read_data, run, seed_int
from tune_voltnet import BASE, CANDIDATES, PROTOCOLS, leakfree_arrays, validation_splits

from aiida_voltnet.ml.models import MODEL_SPECS, GradientBoostedTrees, build_regressor

TREES = {'trees': {}, 'trees_leaf10_lr0.1x500': CANDIDATES['leaf10_lr0.1x500'][0]}
KERNELS = {'svr': dict(method='svr', C=10.0, epsilon=0.05), 'svr_C30': dict(method='svr', C=30.0, epsilon=0.05),
           'krr': dict(method='krr', alpha=0.1)}
WEIGHTS = (0.2, 0.3, 0.5)


def tree_ensemble(X, y, X_val, seed, changes, members=5):
    fitted = [GradientBoostedTrees(**{**BASE, **changes}).fit(X, y, seed=seed * 1000 + i) for i in range(members)]
    return np.mean(GradientBoostedTrees.predict_members(fitted, X_val), axis=0)


def step_rows(record):
    """The voltage steps of a multi-step electrode as electrode records of their own (none for one step)."""
    if len(record.steps) < 2:
        return []
    last = len(record.steps) - 1
    return [dataclasses.replace(
        record, battery_id=f'{record.battery_id}#step{k}', formula_charge=step.formula_charge,
        formula_discharge=step.formula_discharge, average_voltage=step.average_voltage, steps=(), num_steps=1,
        charge_crystal_system=record.charge_crystal_system if k == 0 else None,
        charge_space_group_number=record.charge_space_group_number if k == 0 else None,
        discharge_crystal_system=record.discharge_crystal_system if k == last else None,
        discharge_space_group_number=record.discharge_space_group_number if k == last else None)
        for k, step in enumerate(record.steps) if step.formula_charge and step.formula_discharge]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', type=existing_file, default=str(DEFAULT_CSV))
    parser.add_argument('--seeds', type=seed_int, nargs='+', action=Distinct, default=[0, 1, 2])
    parser.add_argument('--protocol', choices=PROTOCOLS, default='pool',
                        help='validation rows: pool (outside every benchmark test set, default) or '
                             'seed-train (the protocol of the earlier tables; see tune_voltnet.py)')
    parser.add_argument('--skip-mlp', action='store_true', help='leave out the MLP blends (the slow part)')
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    records = read_data(args.data)
    table: dict[str, dict[int, float]] = {}
    for seed, inner, val in validation_splits(records, args.seeds, args.protocol):
        started = time.perf_counter()
        X, y, X_val, y_val = leakfree_arrays(inner, val)
        predictions = {name: tree_ensemble(X, y, X_val, seed, changes) for name, changes in TREES.items()}
        others = {name: build_regressor('kernel', params).fit(X, y).predict(X_val) for name, params in KERNELS.items()}
        if not args.skip_mlp:
            spec = MODEL_SPECS['voltnet_mlp']['params']
            others['mlp'] = np.mean([build_regressor('torch', spec).fit(X, y, seed=seed * 1000 + i, device='cpu')
                                     .predict(X_val) for i in range(3)], axis=0)
        for name, prediction in {**predictions, **others}.items():
            table.setdefault(name, {})[seed] = float(np.mean(np.abs(prediction - y_val)))
        for trees, base in predictions.items():
            for other, prediction in others.items():
                for w in WEIGHTS:
                    blend = (1 - w) * base + w * prediction
                    table.setdefault(f'{trees} + {w} {other}', {})[seed] = float(np.mean(np.abs(blend - y_val)))
        extra = [row for record in inner for row in step_rows(record)]
        X_s, y_s, X_val_s, _ = leakfree_arrays(inner + extra, val)
        for name, changes in TREES.items():
            prediction = tree_ensemble(X_s, y_s, X_val_s, seed, changes)
            table.setdefault(f'{name}, steps as rows', {})[seed] = float(np.mean(np.abs(prediction - y_val)))
        print(f'seed {seed}: {len(inner)} inner rows (+{len(extra)} step rows), {len(val)} validation rows, '
              f'{time.perf_counter() - started:.0f} s', flush=True)
    where = ('80/20 of the tuning pool (rows outside every benchmark test set)' if args.protocol == 'pool' else
             "inner 90/10 of each seed's training rows (other seeds' test rows among them)")
    print(f'\nvalidation MAE (V), {where}; sorted by the mean')
    print(f'{"candidate":<44}' + ''.join(f' {"seed " + str(s):>8}' for s in args.seeds) + f' {"mean":>8}')
    for name in sorted(table, key=lambda n: np.mean(list(table[n].values()))):
        values = [table[name][s] for s in args.seeds]
        print(f'{name:<44}' + ''.join(f' {v:8.4f}' for v in values) + f' {np.mean(values):8.4f}')


if __name__ == '__main__':
    run(main)
