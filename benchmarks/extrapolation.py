"""Are the extrapolation warnings of ``voltnet predict`` worth heeding? Test MAE of the default model on the held-out
records each flag marks against the ones it does not, under the evaluation default (5 folds grouped by host
framework). The two flags: the host has an element no training host had (``unseen elements``), and the ion content
lies outside the training electrodes' range for that working ion (``ion content``).

For each seed and fold: ``train_voltage_model`` with defaults on the training folds (the ensemble means do not
depend on the uncertainty calibration, so it is skipped), predictions for the held-out fold, and
``VoltageModel.unseen_host_elements`` / ``VoltageModel.ion_content_outside`` of each held-out record. Prints, per
flag, per seed and pooled, how many held-out records are flagged and the MAE of both groups, with their ratio, the
seeds and the git commit.

    OMP_NUM_THREADS=2 python benchmarks/extrapolation.py [--seeds 0 1 2] [--folds 5]
"""
from __future__ import annotations

import argparse
import collections
import time
import warnings

import numpy as np
from common import DEFAULT_CSV, Distinct, at_least, existing_file, git_commit, read_data, run, seed_int

from aiida_voltnet.ml.models import train_voltage_model
from aiida_voltnet.ml.splits import kfold_splits


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', type=existing_file, default=str(DEFAULT_CSV))
    parser.add_argument('--seeds', type=seed_int, nargs='+', action=Distinct, default=[0, 1, 2])
    parser.add_argument('--folds', type=at_least(2), default=5)
    args = parser.parse_args()
    records = read_data(args.data)
    started = time.perf_counter()
    flags = ('unseen elements', 'ion content')
    errors: dict[str, dict[int, dict[bool, list[float]]]] = {flag: {} for flag in flags}
    elements = collections.Counter()
    for seed in args.seeds:
        for flag in flags:
            errors[flag][seed] = {True: [], False: []}
        for fold, (train_idx, test_idx) in enumerate(kfold_splits(records, k=args.folds, grouped=True, seed=seed)):
            train, test = [records[i] for i in train_idx], [records[i] for i in test_idx]
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                model = train_voltage_model(train, seed=seed, calibrate=False)
            mean, _ = model.predict(test, check_ions=False)
            unseen = model.unseen_host_elements(test)
            outside = model.ion_content_outside(test)
            for record, predicted, new, out in zip(test, mean, unseen, outside):
                error = abs(predicted - record.average_voltage)
                errors['unseen elements'][seed][bool(new)].append(error)
                errors['ion content'][seed][bool(out)].append(error)
                elements.update(new)
            print(f'seed {seed} fold {fold}: of {len(test)} held-out records {sum(map(bool, unseen))} flagged for '
                  f'unseen elements, {sum(map(bool, outside))} for their ion content', flush=True)
    print(f'\ndefault voltnet, leak-free features, {args.folds} folds grouped by framework; commit {git_commit()}; '
          f'{time.perf_counter() - started:.0f} s')
    print(f'{"flag":<16} {"seed":<8} {"flagged":>8} {"MAE flagged (V)":>16} {"not flagged":>8} '
          f'{"MAE not flagged (V)":>20} {"ratio":>6}')
    for name in flags:
        pooled = {True: [], False: []}
        for seed in args.seeds:
            for flag in (True, False):
                pooled[flag] += errors[name][seed][flag]
        for label, table in [*((str(s), errors[name][s]) for s in args.seeds), ('pooled', pooled)]:
            flagged, rest = np.mean(table[True]) if table[True] else float('nan'), np.mean(table[False])
            print(f'{name:<16} {label:<8} {len(table[True]):>8} {flagged:>16.3f} {len(table[False]):>11} '
                  f'{rest:>20.3f} {flagged / rest:>6.2f}')
    print('flagged elements (record count over all seeds): '
          + ', '.join(f'{e} {n}' for e, n in elements.most_common(12)))


if __name__ == '__main__':
    run(main)
