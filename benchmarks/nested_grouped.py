"""Nested grouped cross-validation of the leak-free ``voltnet`` trees: a grouped k-fold MAE in which the
hyper-parameters are chosen again inside each outer fold, on inner grouped folds of that fold's training rows, so
that no choice saw the fold's test rows.

The plain grouped figure (``benchmarks/accuracy.py --rows voltnet:leakfree:grouped``) runs settings chosen earlier on
validation rows that its folds test on (docs/results.md, "Validation rows outside every test set"): every row is a
test row of some grouped fold. Here, for each seed and outer fold (``kfold_splits(records, FOLDS, grouped=True,
seed)``):

1. the outer training rows are split into ``--inner-folds`` grouped folds (seed + 100); on each, the leak-free
   featurizer is fitted on the inner training rows and every candidate of ``--candidates`` (``tune_voltnet.py``'s
   names) is fitted there with ``--inner-members`` member(s), a cheaper proxy of its ensemble, and scored (MAE) on
   the inner validation rows;
2. the candidate with the lowest mean inner MAE is fitted on all outer training rows with its own members and
   scored on the outer test rows;
3. the current default (``base``, 5 members) is fitted and scored on the same outer folds in the same run: the
   baseline, so that the nested MAE and the default's compare like with like (ratio printed).

MAE is pooled over the outer folds of a seed, then mean +/- std (ddof=0) over seeds, as in ``accuracy.py``.

``--split random`` does the same for the random 90/10 protocol: the outer split of each seed is ``accuracy.py``'s
(``make_split(records, 'random', seed, test_fraction=0.1)``, so the default's figure is that of
``--rows voltnet:leakfree:random``), and the inner folds are random k-folds of its training rows (seed + 100).

    OMP_NUM_THREADS=1 python benchmarks/nested_grouped.py --seeds 0            # about 15 min on one core
    OMP_NUM_THREADS=1 python benchmarks/nested_grouped.py --seeds 0 1 2 --json nested.json
    OMP_NUM_THREADS=1 python benchmarks/nested_grouped.py --split random --seeds 0 1 2 3 4
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import (DEFAULT_CSV, Distinct, InputError, at_least, existing_file, git_commit, new_file, positive_int,
                    read_data, run, seed_int)
from tune_voltnet import BASE, BASE_MEMBERS, CANDIDATES, leakfree_arrays

from aiida_voltnet.ml.models import GradientBoostedTrees
from aiida_voltnet.ml.splits import kfold_splits, make_split

#: The candidates scored inside each outer fold by default: the default, the round-1/2 winners (voltnet_large is
#: ``leaf10_lr0.1x500``) and the pool's best (round 5). Fixed before this script was first run.
DEFAULT_CANDIDATES = ('base', 'lr0.1x500', 'leaf10_lr0.1x500', 'leaf5_lr0.1x500')


def fit_and_score(train, test, name: str, seed: int, members: int | None = None) -> tuple[float, int]:
    """(sum of absolute errors, rows) of candidate ``name`` fitted on ``train`` (leak-free features fitted there)
    and scored on ``test``; ``members`` overrides the candidate's ensemble size."""
    changes, n_members = CANDIDATES[name]
    X, y, X_test, y_test = leakfree_arrays(train, test)
    fitted = [GradientBoostedTrees(**{**BASE, **changes}).fit(X, y, seed=seed * 1000 + i)
              for i in range(members or n_members)]  # member i: seed * 1000 + i, as train_voltage_model
    mean = np.mean(GradientBoostedTrees.predict_members(fitted, X_test), axis=0)
    return float(np.sum(np.abs(mean - y_test))), len(test)


def choose(train, names, seed: int, inner_folds: int, inner_members: int,
           grouped: bool = True) -> tuple[str, dict[str, float]]:
    """The candidate with the lowest mean MAE over ``inner_folds`` folds of ``train`` (grouped by host framework,
    or random) and every candidate's mean inner MAE; ties keep the order of ``names``."""
    scores = {name: [] for name in names}
    for inner_train_idx, val_idx in kfold_splits(train, k=inner_folds, grouped=grouped, seed=seed + 100):
        inner_train, val = [train[i] for i in inner_train_idx], [train[i] for i in val_idx]
        for name in names:
            total, n = fit_and_score(inner_train, val, name, seed, members=inner_members)
            scores[name].append(total / n)
    means = {name: float(np.mean(values)) for name, values in scores.items()}
    return min(names, key=lambda name: means[name]), means


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', type=existing_file, default=str(DEFAULT_CSV))
    parser.add_argument('--seeds', type=seed_int, nargs='+', action=Distinct, default=[0])
    parser.add_argument('--split', choices=('grouped', 'random'), default='grouped',
                        help='grouped: outer and inner folds grouped by host framework (default); random: the outer '
                             'split is accuracy.py\'s random 90/10 of each seed, the inner folds random')
    parser.add_argument('--folds', type=at_least(2), default=5, help='outer grouped folds (default 5; --split '
                                                                     'grouped only)')
    parser.add_argument('--inner-folds', type=at_least(2), default=3, help='inner folds (default 3)')
    parser.add_argument('--inner-members', type=positive_int, default=1,
                        help='members of each candidate inside the inner folds (default 1: a proxy)')
    parser.add_argument('--candidates', nargs='+', default=list(DEFAULT_CANDIDATES), choices=CANDIDATES,
                        metavar='NAME', help=f'candidates (default: {" ".join(DEFAULT_CANDIDATES)}); tune_voltnet.py '
                                             'names')
    parser.add_argument('--json', type=new_file, default=None, help='write the per-fold results here')
    args = parser.parse_args()
    records = read_data(args.data)
    grouped = args.split == 'grouped'
    groups = len({r.framework_formula for r in records})
    if grouped and groups < args.folds * args.inner_folds:
        raise InputError(f'--data has {groups} host framework(s): too few for {args.folds} outer x '
                         f'{args.inner_folds} inner grouped folds')
    outer = f'{args.folds} outer x {args.inner_folds} inner grouped folds' if grouped else \
        f'random 90/10 outer split x {args.inner_folds} inner random folds'
    print(f'nested {args.split} CV: {len(records)} records, {outer}, '
          f'candidates {", ".join(args.candidates)} ({args.inner_members} member(s) inside), commit {git_commit()}',
          flush=True)
    results = []
    for seed in args.seeds:
        nested, default = [0.0, 0], [0.0, 0]
        outer_splits = kfold_splits(records, k=args.folds, grouped=True, seed=seed) if grouped else \
            [make_split(records, 'random', seed=seed, test_fraction=0.1)]
        for fold, (train_idx, test_idx) in enumerate(outer_splits):
            started = time.perf_counter()
            train, test = [records[i] for i in train_idx], [records[i] for i in test_idx]
            chosen, inner = choose(train, args.candidates, seed, args.inner_folds, args.inner_members, grouped)
            total, n = fit_and_score(train, test, chosen, seed)
            base_total, _ = (total, n) if chosen == 'base' else fit_and_score(train, test, 'base', seed)
            nested = [nested[0] + total, nested[1] + n]
            default = [default[0] + base_total, default[1] + n]
            results.append({'seed': seed, 'fold': fold, 'n_test': n, 'inner_mae': inner, 'chosen': chosen,
                            'test_mae_chosen': total / n, 'test_mae_default': base_total / n})
            print(f'seed {seed} fold {fold}: inner MAE ' + ', '.join(f'{k} {v:.4f}' for k, v in inner.items())
                  + f' -> {chosen}; test MAE {total / n:.4f} V (default {base_total / n:.4f} V) on {n} rows '
                  f'({time.perf_counter() - started:.0f} s)', flush=True)
        results.append({'seed': seed, 'nested_mae': nested[0] / nested[1], 'default_mae': default[0] / default[1]})
    per_seed = [r for r in results if 'nested_mae' in r]
    nested_maes = np.array([r['nested_mae'] for r in per_seed])
    default_maes = np.array([r['default_mae'] for r in per_seed])
    print()
    print(f'{"seed":>6} {"nested MAE (V)":>15} {"default MAE (V)":>16} {"ratio":>7}')
    for r in per_seed:
        ratio = r['nested_mae'] / r['default_mae']
        print(f'{r["seed"]:>6} {r["nested_mae"]:15.4f} {r["default_mae"]:16.4f} {ratio:7.3f}')
    print(f'{"mean":>6} {nested_maes.mean():9.4f} +/- {nested_maes.std():.4f} {default_maes.mean():10.4f} +/- '
          f'{default_maes.std():.4f} {nested_maes.mean() / default_maes.mean():7.3f}')
    print(f'(base = the default voltnet, {BASE_MEMBERS} members, {BASE}; seeds {" ".join(map(str, args.seeds))}; '
          f'commit {git_commit()})')
    if args.json:
        Path(args.json).write_text(json.dumps({'args': {k: str(v) for k, v in vars(args).items()},
                                               'commit': git_commit(), 'results': results}, indent=1))


if __name__ == '__main__':
    run(main)
