"""Train/test splits: random, grouped by host framework (the default for evaluation), leave-one-ion-out, and the
paper's per-voltage-interval caps on training rows (Table S3)."""
from __future__ import annotations

import math

from typing import Iterator, Sequence

import numpy as np
from sklearn.model_selection import GroupKFold, GroupShuffleSplit, KFold, ShuffleSplit

from .records import ElectrodeRecord

__all__ = ['SPLIT_KINDS', 'check_test_fraction', 'make_split', 'kfold_splits', 'cap_per_voltage_interval', 'framework_groups']

SPLIT_KINDS = ('grouped', 'random', 'ion')


def framework_groups(records: Sequence[ElectrodeRecord]) -> np.ndarray:
    """Group label per record: the reduced host framework. Rows of one framework (other ions, other ion contents)
    never straddle a grouped split. One material may be an end member of two frameworks' electrodes (3 of the shared
    data's, 6 rows; docs/paper.md): those rows may."""
    return np.array([r.framework_formula for r in records])


def check_test_fraction(test_fraction) -> None:
    """A held-out share strictly between 0 and 1. scikit-learn reads an integer as a number of rows, so that
    ``test_fraction=1`` held out one row; that meaning is refused here, where the name says fraction.

    :raises ValueError: naming the value.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float, np.integer, np.floating)) \
            or not 0 < test_fraction < 1:
        raise ValueError(f'test_fraction must be a number between 0 and 1 (exclusive), got {test_fraction!r}')


def make_split(records: Sequence[ElectrodeRecord], kind: str = 'grouped', seed: int = 0,
               test_fraction: float = 0.1, ion: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One (train_idx, test_idx) split.

    :param kind: ``grouped`` (by host framework, default), ``random`` (the paper's 90/10), or ``ion`` (leave the
        working ion ``ion`` out: train on all others, test on it; the host frameworks of the left-out ion stay in
        training with the other ions, e.g. 236 of the 267 Na rows of the shared data, so it measures the transfer
        to a new ion on hosts mostly seen, not to new hosts).
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 32:
        # scikit-learn's own refusal was caught below and reported as an empty split
        raise ValueError(f'split seed must be an integer in 0..{2 ** 32 - 1}, got {seed!r}')
    if kind in ('random', 'grouped'):
        check_test_fraction(test_fraction)
    n = len(records)
    index = np.arange(n)
    if kind == 'random':
        try:
            train, test = next(ShuffleSplit(1, test_size=test_fraction, random_state=seed).split(index))
        except ValueError:  # scikit-learn's words: "With n_samples=..., the resulting train set will be empty"
            raise ValueError(f'a random split of {n} record(s) with test_fraction {test_fraction} leaves an empty '
                             'train or test set') from None
    elif kind == 'grouped':
        groups = framework_groups(records)
        try:
            train, test = next(GroupShuffleSplit(1, test_size=test_fraction, random_state=seed).split(
                index, groups=groups))
        except ValueError:  # its n_samples counts frameworks, which its message does not say
            raise ValueError(f'a grouped split of {n} record(s) from {len(set(groups))} host framework(s) with '
                             f'test_fraction {test_fraction} leaves an empty train or test set: it holds out whole '
                             'frameworks, so it needs at least two (or a random split, where the command offers '
                             'one)') from None
    elif kind == 'ion':
        if ion is None:
            raise ValueError('a leave-one-ion-out split needs ion=...')
        mask = np.array([r.working_ion == ion for r in records])
        if not mask.any():
            raise ValueError(f'no record has working ion {ion!r}')
        if mask.all():  # as the random and grouped splits refuse an empty side
            raise ValueError(f'every record has working ion {ion!r}: leaving it out leaves an empty train set')
        train, test = index[~mask], index[mask]
    else:
        raise ValueError(f'unknown split kind {kind!r}; choose one of {", ".join(SPLIT_KINDS)}')
    return np.sort(train), np.sort(test)


def kfold_splits(records: Sequence[ElectrodeRecord], k: int = 5, grouped: bool = True,
                 seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """k folds, grouped by host framework by default (shuffled group assignment, seeded)."""
    index = np.arange(len(records))
    if grouped:
        n_groups = len(set(framework_groups(records)))
        if n_groups < k:  # scikit-learn's words count 'samples', which are frameworks here
            raise ValueError(f'{k} folds grouped by host framework need at least {k} frameworks; the {len(records)} '
                             f'record(s) have {n_groups}')
        splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
        yield from splitter.split(index, groups=framework_groups(records))
    else:
        yield from KFold(n_splits=k, shuffle=True, random_state=seed).split(index)


def cap_per_voltage_interval(records: Sequence[ElectrodeRecord], train_idx: np.ndarray, cap: int,
                             width: float = 1.0, seed: int = 0) -> np.ndarray:
    """Table S3: keep at most ``cap`` training rows in each voltage interval of ``width`` volts (the paper does
    not state its intervals; 1 V bins are our reading). Rows are drawn at random with ``seed``."""
    if isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 1:
        raise ValueError(f'cap must be a positive integer (training rows per voltage interval), got {cap!r}')
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not 0 < width < math.inf:
        raise ValueError(f'width must be a positive number of volts, got {width!r}')
    missing = [records[i] for i in train_idx if records[i].average_voltage is None]
    if missing:
        raise ValueError(f'{len(missing)} training record(s) have no average_voltage to bin, e.g. battery_id '
                         f'{missing[0].battery_id!r}')
    rng = np.random.default_rng(seed)
    voltages = np.array([records[i].average_voltage for i in train_idx], dtype=float)
    bins = np.floor(voltages / width).astype(int)
    kept = []
    for value in np.unique(bins):
        members = np.asarray(train_idx)[bins == value]
        kept.extend(rng.choice(members, size=min(cap, len(members)), replace=False))
    return np.sort(np.array(kept, dtype=int))
