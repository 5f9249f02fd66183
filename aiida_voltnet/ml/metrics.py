"""Regression metrics, overall and per working ion."""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ['mae', 'rmse', 'r2', 'regression_metrics', 'interval_coverage']


def mae(y, p) -> float:
    return float(np.mean(np.abs(np.asarray(y) - np.asarray(p))))


def rmse(y, p) -> float:
    return float(np.sqrt(np.mean((np.asarray(y) - np.asarray(p)) ** 2)))


def r2(y, p) -> float:
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    total = np.sum((y - y.mean()) ** 2)
    return float(1.0 - np.sum((y - p) ** 2) / total) if total > 0 else float('nan')


def regression_metrics(y_true, y_pred, ions: Sequence[str] | None = None) -> dict:
    """``{'mae', 'rmse', 'r2', 'n', 'per_ion': {ion: {...}}}`` (per_ion only when ``ions`` is given)."""
    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    result = {'n': int(len(y_true)), 'mae': mae(y_true, y_pred), 'rmse': rmse(y_true, y_pred),
              'r2': r2(y_true, y_pred)}
    if ions is not None:
        ions = np.asarray(ions)
        result['per_ion'] = {
            str(ion): {'n': int((ions == ion).sum()), 'mae': mae(y_true[ions == ion], y_pred[ions == ion]),
                       'rmse': rmse(y_true[ions == ion], y_pred[ions == ion]),
                       'r2': r2(y_true[ions == ion], y_pred[ions == ion]) if (ions == ion).sum() > 1 else None}
            for ion in sorted(set(ions.tolist()))}
    return result


def interval_coverage(y_true, mean, std, z: float) -> float:
    """Fraction of true values inside mean +/- z * std (calibration of the ensemble's uncertainty)."""
    y_true, mean, std = (np.asarray(a, dtype=float) for a in (y_true, mean, std))
    return float(np.mean(np.abs(y_true - mean) <= z * std))
