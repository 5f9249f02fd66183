"""Evaluation protocols: several seeds, grouped splits by default, featurizers fitted on training rows only, early
stopping on a validation split carved from the training rows. Nothing here selects on test rows; the defaults the
protocols run were chosen earlier on validation rows of which some are test rows of other seeds (random 90/10) and
of the grouped folds (docs/results.md, "Validation rows outside every test set"): no nested selection. Spreads are
the population standard deviation over seeds (numpy's default, ddof=0)."""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .metrics import regression_metrics
from .models import train_voltage_model, training_targets
from .records import ElectrodeRecord
from .splits import kfold_splits, make_split

__all__ = ['EvaluationResult', 'evaluate', 'PROTOCOLS']

#: protocol name -> how test rows are chosen
PROTOCOLS = {
    'random': 'random 90/10 split, one per seed (the paper\'s protocol)',
    'grouped': '5-fold cross-validation grouped by host framework (seed shuffles the group assignment)',
}


@dataclass
class EvaluationResult:
    featurizer: str
    model: str
    protocol: str
    seeds: list[int]
    runs: list[dict] = field(default_factory=list)  # one per (seed, fold): metrics of its test rows
    predictions: list[dict] = field(default_factory=list)  # battery_id, y, mean, std, ion, seed, fold
    wall_time_s: float = 0.0

    def summary(self) -> dict:
        """Mean and standard deviation over seeds of MAE/RMSE/R2 (pooled over folds within a seed)."""
        per_seed = {}
        for seed in self.seeds:
            rows = [p for p in self.predictions if p['seed'] == seed]
            per_seed[seed] = regression_metrics([p['y'] for p in rows], [p['mean'] for p in rows])
        out = {'featurizer': self.featurizer, 'model': self.model, 'protocol': self.protocol, 'seeds': self.seeds,
               'n_test_rows_per_seed': int(np.mean([m['n'] for m in per_seed.values()]))}
        for key in ('mae', 'rmse', 'r2'):
            values = np.array([m[key] for m in per_seed.values()])
            out[key] = float(values.mean())
            out[f'{key}_std'] = float(values.std())
        out['wall_time_s'] = self.wall_time_s
        return out


def evaluate(records: Sequence[ElectrodeRecord], featurizer: str = 'leakfree', model: str = 'voltnet',
             protocol: str = 'grouped', seeds: Sequence[int] = (0, 1, 2, 3, 4), folds: int = 5,
             device: str = 'auto', train_overrides: dict | None = None, members: int | None = None,
             target: str = 'average_voltage', log: Callable[[str], None] | None = None,
             calibrate: bool = True, model_params: dict | None = None) -> EvaluationResult:
    """Train and test ``model`` under ``protocol`` for each seed; return every test prediction.

    :param calibrate: calibrate ensemble spreads (doubles the training cost; the means, hence MAE/RMSE/R2, do not
        depend on it).
    :param model_params: hyper-parameters of a tree or kernel model overriding its spec's (``train_voltage_model``).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f'unknown protocol {protocol!r}; choose one of {", ".join(PROTOCOLS)}')
    # every record is trained or tested on: one without its target, named here (a test row's None was a TypeError
    # after training, and NaN in the metrics before that: found by review)
    training_targets(records, target)
    started = time.perf_counter()
    # by name: a featurizer object (each fold fits its own copy) printed as its repr in the summary and the log
    name = featurizer if isinstance(featurizer, str) else getattr(featurizer, 'name', type(featurizer).__name__)
    result = EvaluationResult(name, model, protocol, list(seeds))
    for seed in seeds:
        if protocol == 'random':
            splits = [make_split(records, 'random', seed=seed, test_fraction=0.1)]
        else:
            splits = list(kfold_splits(records, k=folds, grouped=True, seed=seed))
        for fold, (train_idx, test_idx) in enumerate(splits):
            train = [records[i] for i in train_idx]
            test = [records[i] for i in test_idx]
            # test rows of a working ion no training row has (a rare ion whose few frameworks all fell in the test
            # fold) are left out, as TrainWorkChain and the report's provenance mode leave them out
            trained_ions = {r.working_ion for r in train}
            dropped = sum(r.working_ion not in trained_ions for r in test)
            if dropped:
                test = [r for r in test if r.working_ion in trained_ions]
                if log:
                    log(f'  seed {seed} fold {fold}: {dropped} test row(s) of ion(s) absent from training dropped')
                if not test:
                    result.runs.append({'seed': seed, 'fold': fold, 'n': 0, 'dropped_unseen_ion_rows': dropped})
                    continue
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                fitted = train_voltage_model(train, featurizer=featurizer, model=model, seed=seed, device=device,
                                             train_overrides=train_overrides, members=members, target=target,
                                             calibrate=calibrate, model_params=model_params)
            mean, std = fitted.predict(test, device=device, check_ions=False)
            y = np.array([getattr(r, target) for r in test])
            metrics = regression_metrics(y, mean, [r.working_ion for r in test])
            result.runs.append({'seed': seed, 'fold': fold, **metrics, 'dropped_unseen_ion_rows': dropped})
            result.predictions.extend(
                {'battery_id': r.battery_id, 'working_ion': r.working_ion, 'y': float(t), 'mean': float(m),
                 'std': float(s), 'seed': seed, 'fold': fold} for r, t, m, s in zip(test, y, mean, std))
            if log:
                unit = ' V' if target == 'average_voltage' else f' ({target})'
                log(f'{name}/{model}/{protocol} seed {seed} fold {fold}: MAE {metrics["mae"]:.3f}{unit} '
                    f'on {metrics["n"]} rows')
    result.wall_time_s = round(time.perf_counter() - started, 1)
    return result
