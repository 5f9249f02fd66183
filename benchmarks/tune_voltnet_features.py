"""Candidate extra feature blocks for the leak-free featurizer, scored like ``tune_voltnet.py``: on validation rows
only (``--protocol``: the tuning pool by default; the tables in docs/results.md used ``seed-train``, the inner 90/10
split of each seed's training rows), never the seed's own test rows.

Blocks, each appended to the leak-free features of the same rows:

* ``oxi``: oxidation states per element from pymatgen's ``Composition.oxi_state_guesses`` (ICSD-based; the
  counts made integer first, at most 24 sites, then 12 with all states; NaN where pymatgen finds no charge-balanced
  guess) for both end members, and from them the redox couple: elements whose state changes, electrons per host
  atom, the transition-metal and anion shares of those electrons, the ionization energy per transferred electron
  (mean, max, min), and the main redox element's states and d count;
* ``anion_cation``: composition statistics (mean/std/min/max of 9 element properties) over the host's anions and
  over its non-transition-metal cations, their fractions, and the working ion's properties minus the anions' mean;
* ``symmetry``: per end member, pymatgen's space-group data beyond the number and crystal system the featurizer
  already has: log of the group order and of the point-group order, an inversion centre, the lattice centring
  (P, A, B, C, I, F, R); and the change of both orders on insertion;
* ``volume`` (a later session): what relaxed structures would add, from the CSV: the discharged member's density
  (``capacity_vol / capacity_grav``), its volume per atom and per host atom, and the steps' largest volume change;
* ``siblings``: target encoding, the median/mean voltage and count of the *other* training electrodes with the
  same host framework (same ion, and any ion); leave-one-out on the training rows.

    OMP_NUM_THREADS=2 python benchmarks/tune_voltnet_features.py [--seeds 0 1 2 3 4]
"""
from __future__ import annotations

import argparse
import collections
import functools
import logging
import math
import time
import warnings
from fractions import Fraction

import numpy as np
import scipy.constants
from pymatgen.core import Composition, Element
from pymatgen.symmetry.groups import SpaceGroup
from common import DEFAULT_CSV, Distinct, existing_file, read_data, run, seed_int
from tune_voltnet import BASE, CANDIDATES, PROTOCOLS, leakfree_arrays, validation_splits

from aiida_voltnet.ml import featurizers
from aiida_voltnet.ml.models import GradientBoostedTrees

TABLE = featurizers.element_property_table()
NAMES = featurizers._PROPERTY_NAMES
IS_TM, _, _, OXIDE_ANIONS, OTHER_ANIONS, O_INDEX, F_INDEX, ENERGIES = featurizers._redox_tables()
SUBSET = [NAMES.index(p) for p in ('Z', 'X', 'row', 'group', 'atomic_radius', 'ionization_energy',
                                   'electron_affinity', 'max_oxidation_state', 'molar_volume')]


def host_amounts(record):
    host = featurizers._amounts(record.composition_discharge)
    host[Element(record.working_ion).Z - 1] = 0.0
    return host


def anion_cation_block(record):
    host = host_amounts(record)
    present = host > 0
    anions = OXIDE_ANIONS if (present[O_INDEX] or present[F_INDEX]) else OTHER_ANIONS
    anion, cation = np.where(anions, host, 0.0), np.where(~anions & ~IS_TM, host, 0.0)
    table = TABLE[:, SUBSET]
    stats = featurizers.LeakFreeFeaturizer._stats  # the featurizer's own mean / std / min / max
    a, c = stats(anion, table), stats(cation, table)
    ion = TABLE[Element(record.working_ion).Z - 1, SUBSET]
    return np.concatenate([a, c, [anion.sum() / host.sum(), cation.sum() / host.sum()], ion - a[:len(SUBSET)]])


_GUESSES: dict[str, dict | None] = {}


def oxidation_guess(composition) -> dict | None:
    """pymatgen's most probable charge-balanced oxidation states (element -> mean state), or None."""
    key = composition.formula
    if key not in _GUESSES:
        fractions = {el: Fraction(a).limit_denominator(100) for el, a in composition.get_el_amt_dict().items() if a > 0}
        multiplier = math.lcm(*(f.denominator for f in fractions.values()))
        integer = Composition({el: int(f * multiplier) for el, f in fractions.items()})
        guesses = ()
        for max_sites, all_states in ((24, False), (12, True)):
            try:
                guesses = integer.oxi_state_guesses(max_sites=-max_sites if integer.num_atoms > max_sites else None,
                                                    all_oxi_states=all_states)
            except ValueError:  # cannot be reduced to that many sites
                guesses = ()
            if guesses:
                break
        _GUESSES[key] = guesses[0] if guesses else None
    return _GUESSES[key]


def ionization_between(z, low, high):
    """Ionization energy (eV) to take element ``z`` (0-based) from state ``low`` to ``high``, linear in between."""
    total, state = 0.0, low
    while state < high - 1e-9:
        level = int(np.clip(np.floor(state + 1e-9), 0, ENERGIES.shape[1] - 1))
        step = min(high, np.floor(state + 1e-9) + 1) - state
        total += step * ENERGIES[z, level]
        state += step
    return total


def oxi_block(record):
    charged, discharged = oxidation_guess(record.composition_charge), oxidation_guess(record.composition_discharge)
    if charged is None or discharged is None:
        return np.full(10, np.nan)
    amounts = {el: a for el, a in record.composition_discharge.get_el_amt_dict().items() if el != record.working_ion}
    host_atoms = sum(amounts.values())
    electrons = weighted_ie = tm_electrons = anion_electrons = 0.0
    ie_max, ie_min, changed, main, main_electrons = -np.inf, np.inf, 0, None, 0.0
    for el, amount in amounts.items():
        a, b = discharged.get(el, 0.0), charged.get(el, 0.0)
        if abs(b - a) < 1e-6:
            continue
        z = Element(el).Z - 1
        n = amount * (b - a)
        changed += 1
        electrons += n
        if min(a, b) >= 0:
            ie = ionization_between(z, min(a, b), max(a, b)) / abs(b - a)
            weighted_ie += abs(n) * ie
            ie_max, ie_min = max(ie_max, ie), min(ie_min, ie)
        tm_electrons += n if IS_TM[z] else 0.0
        anion_electrons += n if min(a, b) < 0 else 0.0
        if abs(n) > main_electrons:
            main, main_electrons = (z, a, b), abs(n)
    if main is None:
        return np.array([0.0, 0.0, 0.0, 0.0] + [np.nan] * 6)
    z, a, b = main
    scale = max(abs(electrons), 1e-12)
    return np.array([changed, electrons / host_atoms, tm_electrons / scale, anion_electrons / scale,
                     weighted_ie / scale, ie_max if np.isfinite(ie_max) else np.nan,
                     ie_min if np.isfinite(ie_min) else np.nan, a, b, TABLE[z, NAMES.index('group')] - a])


CENTRINGS = 'PABCIFR'


@functools.lru_cache(maxsize=None)
def space_group_row(number):
    group = SpaceGroup.from_int_number(number)
    rotations = {tuple(op.rotation_matrix.ravel().round(6)) for op in group.symmetry_ops}
    inversion = any(np.allclose(op.rotation_matrix, -np.eye(3)) for op in group.symmetry_ops)
    return [math.log(group.order), math.log(len(rotations)), float(inversion)] + \
        [float(group.symbol[0] == c) for c in CENTRINGS]


def symmetry_block(record):
    numbers = (record.charge_space_group_number, record.discharge_space_group_number)
    rows = [space_group_row(n) if n else [np.nan] * (3 + len(CENTRINGS)) for n in numbers]
    change = [rows[0][i] - rows[1][i] for i in (0, 1)] if all(numbers) else [np.nan, np.nan]
    return np.array(rows[0] + rows[1] + change)


def sibling_block(train, rows, leave_one_out):
    """Median/mean/count of the training voltages of the same framework (same ion; any ion), per row."""
    same_ion, any_ion = collections.defaultdict(list), collections.defaultdict(list)
    for i, r in enumerate(train):
        same_ion[(r.framework_formula, r.working_ion)].append((i, r.average_voltage))
        any_ion[r.framework_formula].append((i, r.average_voltage))
    out = []
    for j, r in enumerate(rows):
        row = []
        for table, key in ((same_ion, (r.framework_formula, r.working_ion)), (any_ion, r.framework_formula)):
            values = [v for i, v in table.get(key, []) if not (leave_one_out and i == j)]
            row += [np.median(values), np.mean(values), len(values)] if values else [np.nan, np.nan, 0]
        out.append(row)
    return np.array(out, dtype=float)


#: Å^3 per (g/mol / (g/cm^3)): 1e24 / Avogadro's number
CM3_PER_MOL_TO_A3 = 1e24 / scipy.constants.Avogadro


def volume_block(record):
    """What relaxed structures would add: the discharged member's density (capacity_vol / capacity_grav, g/cm^3,
    which is how MP computes capacity_vol) and volume per atom and per host atom (Å^3), and the steps' largest
    volume change. None of them is a function of the voltage (energy_vol is not used)."""
    discharged = record.composition_discharge
    density = record.capacity_vol / record.capacity_grav
    volume = discharged.weight / density * CM3_PER_MOL_TO_A3  # per formula unit
    host_atoms = discharged.num_atoms - discharged[record.working_ion]
    change = record.max_delta_volume
    return np.array([density, volume / discharged.num_atoms, volume / host_atoms,
                     np.nan if change is None else change])


def dft_block(record):
    """What MP's DFT adds without the voltage: the end members' energies above the hull (eV/atom) and the number
    of voltage steps (stable intermediate phases). Neither is a function of the target, but neither is known for a
    candidate that was never calculated, so they could only ever be an option, never the default's features."""
    return np.array([record.stability_charge, record.stability_discharge, record.num_steps], dtype=float)


def stability_block(record):
    """The two energies above the hull alone (eV/atom)."""
    return np.array([record.stability_charge, record.stability_discharge], dtype=float)


def steps_block(record):
    """The number of voltage steps alone."""
    return np.array([record.num_steps], dtype=float)


def blocks(names, inner, val):
    """The extra columns of ``names`` for the inner and the validation rows."""
    extra_inner, extra_val = [], []
    for name in names:
        if name == 'siblings':
            extra_inner.append(sibling_block(inner, inner, True))
            extra_val.append(sibling_block(inner, val, False))
        else:
            function = {'oxi': oxi_block, 'anion_cation': anion_cation_block, 'symmetry': symmetry_block,
                        'volume': volume_block, 'dft': dft_block, 'stability': stability_block,
                        'steps': steps_block}[name]
            extra_inner.append(np.array([function(r) for r in inner]))
            extra_val.append(np.array([function(r) for r in val]))
    return extra_inner, extra_val


#: name -> (tree parameter changes, extra blocks)
CANDIDATES_FEATURES = {
    'default trees': ({}, []),
    'default trees + oxi': ({}, ['oxi']),
    'default trees + anion_cation': ({}, ['anion_cation']),
    'default trees + siblings': ({}, ['siblings']),
    'default trees + symmetry': ({}, ['symmetry']),
    'leaf10_lr0.1x500': (CANDIDATES['leaf10_lr0.1x500'][0], []),
    'leaf10_lr0.1x500 + oxi': (CANDIDATES['leaf10_lr0.1x500'][0], ['oxi']),
    'default trees + volume': ({}, ['volume']),
    'leaf10_lr0.1x500 + volume': (CANDIDATES['leaf10_lr0.1x500'][0], ['volume']),
    'default trees + dft': ({}, ['dft']),
    'default trees + stability': ({}, ['stability']),
    'default trees + steps': ({}, ['steps']),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data', type=existing_file, default=str(DEFAULT_CSV))
    parser.add_argument('--seeds', type=seed_int, nargs='+', action=Distinct, default=[0, 1, 2, 3, 4])
    parser.add_argument('--protocol', choices=PROTOCOLS, default='pool',
                        help='validation rows: pool (outside every benchmark test set, default) or '
                             'seed-train (the protocol of the earlier tables; see tune_voltnet.py)')
    parser.add_argument('--candidates', nargs='+', default=list(CANDIDATES_FEATURES),
                        choices=CANDIDATES_FEATURES, metavar='NAME',
                        help='candidates to score (default: all; quote names with spaces): '
                             + ', '.join(repr(name) for name in CANDIDATES_FEATURES))
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    warnings.simplefilter('ignore')
    records = read_data(args.data)
    started = time.perf_counter()
    for r in records:
        oxidation_guess(r.composition_charge), oxidation_guess(r.composition_discharge)
    guessed = time.perf_counter() - started
    missing = sum(g is None for g in _GUESSES.values())
    print(f'oxidation-state guesses: {len(_GUESSES)} distinct compositions in {guessed:.1f} s '
          f'({guessed / len(_GUESSES) * 1e3:.2f} ms each), none found for {missing}', flush=True)
    table: dict[str, dict[int, float]] = {name: {} for name in args.candidates}
    for seed, inner, val in validation_splits(records, args.seeds, args.protocol):
        X, y, X_val, y_val = leakfree_arrays(inner, val)
        for name in args.candidates:
            changes, names = CANDIDATES_FEATURES[name]
            extra_inner, extra_val = blocks(names, inner, val)
            A, B = np.hstack([X, *extra_inner]), np.hstack([X_val, *extra_val])
            members = [GradientBoostedTrees(**{**BASE, **changes}).fit(A, y, seed=seed * 1000 + i) for i in range(5)]
            prediction = np.mean(GradientBoostedTrees.predict_members(members, B), axis=0)
            table[name][seed] = float(np.mean(np.abs(prediction - y_val)))
            print(f'seed {seed} {name:<30} {A.shape[1]} columns, validation MAE {table[name][seed]:.4f} V', flush=True)
    where = ('80/20 of the tuning pool (rows outside every benchmark test set)' if args.protocol == 'pool' else
             "inner 90/10 of each seed's training rows (other seeds' test rows among them)")
    print(f'\nvalidation MAE (V), {where}, 5 tree members')
    print(f'{"candidate":<32}' + ''.join(f' {"seed " + str(s):>8}' for s in args.seeds) + f' {"mean":>8}')
    for name in args.candidates:
        values = [table[name][s] for s in args.seeds]
        print(f'{name:<32}' + ''.join(f' {v:8.4f}' for v in values) + f' {np.mean(values):8.4f}')


if __name__ == '__main__':
    run(main)
