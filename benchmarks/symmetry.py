"""What does a record without symmetry cost? ``voltnet predict --charged F --discharged F --ion I`` and CSV rows
without the space-group and crystal-system columns reach the model with its symmetry features marked missing, a
case no training row of the shared CSV had (every one has both space groups). Test MAE of the default model under
the evaluation default (5 folds grouped by host framework), three ways on the same held-out records:

* ``with symmetry``: trained and tested with the space groups and crystal systems (the benchmark's number);
* ``tested without``: the same model, the held-out records stripped of their symmetry (the formula-only path);
* ``trained without``: a model trained on the stripped training records, tested on the stripped records (what a
  composition-only companion model would give on that path).

Prints per seed and pooled, with the seeds and the git commit.

    OMP_NUM_THREADS=2 python benchmarks/symmetry.py [--seeds 0 1] [--folds 5]
"""
from __future__ import annotations

import argparse
import dataclasses
import time
import warnings

import numpy as np
from common import DEFAULT_CSV, Distinct, at_least, existing_file, git_commit, read_data, run, seed_int

from aiida_voltnet.ml.models import train_voltage_model
from aiida_voltnet.ml.splits import kfold_splits

SYMMETRY_FIELDS = ('charge_space_group_number', 'discharge_space_group_number', 'charge_crystal_system',
                   'discharge_crystal_system')


def without_symmetry(records):
    return [dataclasses.replace(r, **dict.fromkeys(SYMMETRY_FIELDS)) for r in records]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', type=existing_file, default=str(DEFAULT_CSV))
    parser.add_argument('--seeds', type=seed_int, nargs='+', action=Distinct, default=[0, 1])
    parser.add_argument('--folds', type=at_least(2), default=5)
    args = parser.parse_args()
    records = read_data(args.data)
    started = time.perf_counter()
    rows = ('with symmetry', 'tested without', 'trained without')
    errors = {row: {seed: [] for seed in args.seeds} for row in rows}
    for seed in args.seeds:
        for train_index, test_index in kfold_splits(records, k=args.folds, grouped=True, seed=seed):
            train = [records[i] for i in train_index]
            ions = {r.working_ion for r in train}
            test = [records[i] for i in test_index if records[i].working_ion in ions]
            if len(test) < len(test_index):  # an ion whose every framework fell in this fold (never in the shared
                # CSV's folds): the model cannot be asked for it, and TrainWorkChain leaves such records out too
                print(f'seed {seed}: {len(test_index) - len(test)} test record(s) of working ion(s) the fold\'s '
                      'training records lack left out', flush=True)
            y = np.array([r.average_voltage for r in test])
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                model = train_voltage_model(train, seed=seed, calibrate=False)
                bare = train_voltage_model(without_symmetry(train), seed=seed, calibrate=False)
            errors['with symmetry'][seed] += list(np.abs(model.predict(test)[0] - y))
            errors['tested without'][seed] += list(np.abs(model.predict(without_symmetry(test))[0] - y))
            errors['trained without'][seed] += list(np.abs(bare.predict(without_symmetry(test))[0] - y))
            print(f'seed {seed}: fold done ({time.perf_counter() - started:.0f} s)', flush=True)
    print(f'\nTest MAE (V) of the default voltnet, {args.folds} folds grouped by host framework, seeds '
          f'{" ".join(map(str, args.seeds))}, commit {git_commit()}, {time.perf_counter() - started:.0f} s')
    print(f'{"":<18}' + ''.join(f'{"seed " + str(s):>10}' for s in args.seeds) + f'{"pooled":>10}{"ratio":>8}')
    pooled_base = np.mean([e for s in args.seeds for e in errors['with symmetry'][s]])
    for row in rows:
        pooled = np.mean([e for s in args.seeds for e in errors[row][s]])
        print(f'{row:<18}' + ''.join(f'{np.mean(errors[row][s]):10.3f}' for s in args.seeds)
              + f'{pooled:10.3f}{pooled / pooled_base:7.2f}x')


if __name__ == '__main__':
    run(main)
