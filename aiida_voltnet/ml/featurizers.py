"""Featurizers: named, versioned specs that turn electrode records into fixed-width arrays.

Every featurizer has fixed vocabularies (the ten working ions, 230 space groups, seven crystal systems, 118
elements) so that the column layout never depends on which rows a data frame happened to hold, and all of its
fitted state is a dict of numpy arrays plus a JSON-able config (no pickle), see :meth:`Featurizer.get_state`.

* ``paper``: the seed paper's features exactly (element counts, a random space-group embedding, one-hots,
  ``capacity_grav`` and ``energy_grav``), then PCA(0.99) and min-max scaling fitted on training rows only.
  ``average_voltage == energy_grav / capacity_grav`` for every MP row, so these features contain the target:
  choosing it warns (:class:`TargetLeakWarning`).
* ``leakfree``: the default. Composition statistics of the host framework (pymatgen element data), working-ion
  descriptors, ion content change and electrons per redox-active atom, and symmetry. It refuses any column that
  is a function of the target.
"""
from __future__ import annotations

import contextlib
import functools
import math
import warnings
from fractions import Fraction
from typing import Any, Sequence

import numpy as np
from pymatgen.core import Composition, Element

from .records import (CRYSTAL_SYSTEMS, FLOAT_COLUMNS, WORKING_IONS, ElectrodeDataError, ElectrodeRecord,
                      battery_formula_subscript)

__all__ = [
    'metastability_voltage',
    'hull_leak_check',
    'TargetLeakWarning',
    'LeakageError',
    'Featurizer',
    'PaperFeaturizer',
    'LeakFreeFeaturizer',
    'FEATURIZERS',
    'get_featurizer',
    'featurizer_from_state',
    'LEAKING_COLUMNS',
]

N_ELEMENTS = 118
N_SPACE_GROUPS = 230
FARADAY_MAH_PER_MOL = 26801.4815  # F / 3.6, mAh per mol of electrons

#: Record fields a leak-free featurizer refuses: the targets themselves, the functions of ``average_voltage``
#: (energies equal voltage x capacity), MP's per-step data (``steps``/``adj_pairs`` carry per-step voltages, and
#: ``max_delta_volume``, the largest volume change over the steps, is the paper's second target, Fig. S5), and the
#: end members' energies above the hull (``stability_charge``/``stability_discharge``): with the formulas they give
#: an exact additive part of the voltage, V = V_hull(compositions) + (n_c e_c - n_d e_d) / (x z) (atoms per host
#: atom n, energy above hull e, ions inserted per host atom x, ion charge z), checked on the shared data by
#: ``tests/test_records.py``. Any of them as a feature leaks an answer.
LEAKING_COLUMNS = ('average_voltage', 'energy_grav', 'energy_vol', 'steps', 'adj_pairs', 'max_delta_volume',
                   'stability_charge', 'stability_discharge')


def metastability_voltage(record: ElectrodeRecord) -> float | None:
    """The part of ``record``'s average voltage that its end members' energies above the hull give exactly:
    ``(n_c e_c - n_d e_d) / (x z)`` (atoms per host atom n and energy above the hull e of the charged and the
    discharged member, ions inserted per host atom x, ion charge z); the rest, V_hull, depends on the two
    compositions only. None when a stability is missing or no ion is inserted."""
    if record.stability_charge is None or record.stability_discharge is None:
        return None
    ion, charged, discharged = record.working_ion, record.composition_charge, record.composition_discharge
    host_c, host_d = charged.num_atoms - charged[ion], discharged.num_atoms - discharged[ion]
    if host_c <= 0 or host_d <= 0:
        return None
    x = discharged[ion] / host_d - charged[ion] / host_c
    if x == 0:
        return None
    z = max(Element(ion).common_oxidation_states)
    return (charged.num_atoms / host_c * record.stability_charge
            - discharged.num_atoms / host_d * record.stability_discharge) / (x * z)


def hull_leak_check(records: Sequence[ElectrodeRecord]) -> dict[str, float | int]:
    """How exactly the energies above the hull give part of the target: over every pair of records with the same
    working ion and end-member compositions (so the same V_hull), the mean |voltage difference| and the mean and
    99th percentile of |voltage difference - metastability_voltage difference| (0 up to rounding if the relation
    holds)."""
    import collections
    import itertools

    groups = collections.defaultdict(list)
    for record in records:
        term = metastability_voltage(record)
        if term is not None and record.average_voltage is not None:
            key = (record.working_ion, record.composition_charge.reduced_formula,
                   record.composition_discharge.reduced_formula)
            groups[key].append((record.average_voltage, term))
    pairs = np.array([(v1 - v2, t1 - t2) for members in groups.values()
                      for (v1, t1), (v2, t2) in itertools.combinations(members, 2)]).reshape(-1, 2)
    if not len(pairs):
        return {'n_pairs': 0}
    mismatch = np.abs(pairs[:, 0] - pairs[:, 1])
    return {'n_pairs': int(len(pairs)), 'mean_abs_voltage_difference': float(np.abs(pairs[:, 0]).mean()),
            'mean_abs_mismatch': float(mismatch.mean()), 'p99_abs_mismatch': float(np.quantile(mismatch, 0.99))}


#: The numeric record fields that ``LeakFreeFeaturizer(extra_columns=...)`` may add (the others are targets or
#: leak them, or are text).
EXTRA_COLUMNS = tuple(c for c in (*FLOAT_COLUMNS, 'num_steps') if c not in LEAKING_COLUMNS)


class TargetLeakWarning(UserWarning):
    """The chosen features contain the target (the paper's protocol)."""


class LeakageError(ValueError):
    """A leak-free featurizer was asked to use a column that is a function of the target."""


@functools.lru_cache(maxsize=None)
def _element(z: int) -> Element:
    return Element.from_Z(z)


class InputWarning(UserWarning):
    """An input that is read as written but may not be what its author meant (a rounded host, a pair of structures
    that are not one host framework): the CLI prints these, a calculation function writes them to its report."""


class RoundedAmountsWarning(InputWarning):
    """A host's amounts look rounded (``Ni0.33Mn0.33Co0.34O2`` for ``NiMnCoO6``): read as written, its smallest
    integer formula unit is far larger than that of the nearby simple fractions, and the features that count atoms
    per formula unit differ with it."""


@contextlib.contextmanager
def input_warnings_collected():
    """Collect the messages of :class:`InputWarning` (each once, in order) raised inside the block, for a caller
    that reports them its own way (the CLI, a process report); other warnings are shown as Python shows them. The
    list is filled when the block ends."""
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always', InputWarning)
        yield messages
    for warning in caught:
        if not issubclass(warning.category, InputWarning):
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
        elif str(warning.message) not in messages:
            messages.append(str(warning.message))


#: Rounded amounts: each within this of a fraction with a denominator up to ROUNDING_DENOMINATOR (thirds and
#: sixths, as in NMC111 or Na2/3 hosts; with sevenths to twelfths, exact two-decimal hosts such as Ni0.91Co0.09O2 or
#: Ni0.83Co0.17O2 looked rounded too).
ROUNDING_TOLERANCE, ROUNDING_DENOMINATOR = 0.01, 6


@functools.lru_cache(maxsize=65536)
def _integer_formula_units(amounts: tuple[tuple[int, float], ...]) -> tuple[float, str | None]:
    """How many units of its smallest integer formula a host with these non-integer ``(Z, amount)`` holds:
    pymatgen's ``get_integer_formula_and_factor`` (``Ni0.5Mn1.5O4`` is half a unit of Mn3NiO8); and, where the
    amounts look rounded, the formula they would have as simple fractions (else None)."""
    composition = Composition({_element(z): amount for z, amount in amounts})
    _, factor = composition.get_integer_formula_and_factor()
    snapped = {element: Fraction(amount).limit_denominator(ROUNDING_DENOMINATOR)
               for element, amount in composition.items()}
    if any(abs(float(fraction) - composition[element]) > ROUNDING_TOLERANCE or fraction <= 0
           for element, fraction in snapped.items()):
        return factor, None
    exact = Composition({element: float(fraction) for element, fraction in snapped.items()})
    formula, exact_factor = exact.get_integer_formula_and_factor()
    # rounded where the written amounts need a formula unit at least 4 times as large as the fractions' one
    rounded = composition.num_atoms / factor >= 4 * exact.num_atoms / exact_factor
    return factor, (formula if rounded else None)


def _plain_formula(composition: Composition) -> str:
    """``Mn0.33Co0.34Ni0.33O2``, ``MnCoNiO6``, ``Fe0.91Mn0.09PO4``: pymatgen's element order, without the 1s and
    the groups (``Co(Ni5O11)2``) of its reduced formulas."""
    ordered = sorted(composition.items(), key=lambda item: item[0].X)  # as Composition.formula orders them
    return ''.join(f'{element}{"" if amount == 1 else f"{amount:g}"}' for element, amount in ordered)


def host_atoms_per_formula_unit(host: np.ndarray) -> np.ndarray:
    """Atoms of each host (rows of amounts per element, index Z - 1) per unit of its smallest integer formula:
    the same for ``FePO4`` and ``Fe2P2O8`` (6), and for ``Ni0.5Mn1.5O4``, ``NiMn3O8`` and ``Ni2Mn6O16`` (12),
    where the atom count as written changed with the spelling, and with it a feature (featurizer version 1).

    Integer hosts (every MP record) are reduced by the greatest common divisor of their amounts, as pymatgen's
    ``get_reduced_composition_and_factor`` reduces them, here for a whole block at once; the others by pymatgen.
    """
    host = np.atleast_2d(host)
    rounded = np.rint(host)
    integral = (np.abs(host - rounded) < 1e-8).all(axis=1)
    counts = rounded[integral].astype(np.int64)
    atoms = host.sum(axis=1)
    units = np.ones(len(host))
    units[integral] = np.gcd.reduce(counts, axis=1) if len(counts) else 1
    rounded = {}
    for i in np.flatnonzero(~integral):
        nonzero = np.flatnonzero(host[i])
        amounts = tuple((int(z) + 1, float(host[i, z])) for z in nonzero)
        units[i], suggestion = _integer_formula_units(amounts)
        if suggestion is not None:
            written = Composition({_element(z): amount for z, amount in amounts})
            rounded[_plain_formula(written)] = (suggestion, atoms[i] / units[i])
    if rounded:
        listed = '; '.join(f'{formula} is read as {atoms:.0f} atoms per integer formula unit, where '
                           f'{_plain_formula(Composition(suggestion))} has {Composition(suggestion).num_atoms:.0f}'
                           for formula, (suggestion, atoms) in list(rounded.items())[:5])
        more = f' (and {len(rounded) - 5} more)' if len(rounded) > 5 else ''
        warnings.warn(f'host amounts that look rounded: {listed}{more}. The features count atoms per integer '
                      'formula unit, so a rounded host is featurized unlike the electrode it stands for: write '
                      'the exact fractions (0.333333, not 0.33) or the integer formula of the cell',
                      RoundedAmountsWarning, stacklevel=2)
    return atoms / units


# Element properties used for composition statistics, all read from pymatgen's element data.
_PROPERTY_NAMES = (
    'Z', 'X', 'row', 'group', 'atomic_mass', 'atomic_radius', 'mendeleev_no', 'molar_volume',
    'ionization_energy', 'electron_affinity', 'max_oxidation_state', 'min_oxidation_state', 'is_transition_metal',
    'block_s', 'block_p', 'block_d', 'block_f', 'valence_d',
)


def _float(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def _safe_attribute(element: Element, name: str):
    """pymatgen raises KeyError/AttributeError for data it lacks (e.g. electron affinity of superheavy elements)."""
    try:
        return getattr(element, name)
    except (KeyError, AttributeError, ValueError):
        return None


@functools.lru_cache(maxsize=1)
def element_property_table() -> np.ndarray:
    """(118, n_properties) table of element properties from pymatgen; missing values are filled by column means."""
    table = np.full((N_ELEMENTS, len(_PROPERTY_NAMES)), np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # pymatgen warns about missing data for heavy elements
        for z in range(1, N_ELEMENTS + 1):
            el = _element(z)
            get = functools.partial(_safe_attribute, el)
            oxidation = get('common_oxidation_states') or get('oxidation_states') or (0,)
            try:
                valence_d = sum(n for (shell, orbital, n) in el.full_electronic_structure
                                if orbital == 'd' and shell == el.row - 1)
            except Exception:  # noqa: BLE001 - pymatgen lacks structures for a few superheavy elements
                valence_d = math.nan
            block = get('block')
            values = (
                z, get('X'), get('row'), get('group'), get('atomic_mass'), get('atomic_radius'), get('mendeleev_no'),
                get('molar_volume'), get('ionization_energy'), get('electron_affinity'), max(oxidation),
                min(oxidation), float(bool(get('is_transition_metal'))), float(block == 's'), float(block == 'p'),
                float(block == 'd'), float(block == 'f'), valence_d,
            )
            table[z - 1] = [_float(v) for v in values]
    means = np.nanmean(table, axis=0)
    rows, cols = np.where(np.isnan(table))
    table[rows, cols] = means[cols]
    return table


def _amounts(composition: Composition) -> np.ndarray:
    vector = np.zeros(N_ELEMENTS)
    for el, amount in composition.get_el_amt_dict().items():
        vector[Element(el).Z - 1] += amount
    return vector


def _integer_counts(composition: Composition) -> np.ndarray:
    """The seed's encoding: counts made integer by the least common multiple of their denominators."""
    fractions = {el: Fraction(amount).limit_denominator() for el, amount in composition.get_el_amt_dict().items()}
    multiplier = math.lcm(*(f.denominator for f in fractions.values())) if fractions else 1
    vector = np.zeros(N_ELEMENTS)
    for el, fraction in fractions.items():
        vector[Element(el).Z - 1] = int(fraction * multiplier)
    return vector


def _seed_text_composition(composition: Composition, ion: str) -> Composition:
    """``composition`` with the working ion's count as the seed CSV writes it: emmet's ``battery_formula`` text,
    ``'{:.2f}'`` with its zeros stripped (:func:`~aiida_voltnet.ml.records.battery_formula_subscript`), so 1/8
    reads 0.12 and a count of 10 reads 1; the host's amounts as written. The seed counted elements in that text."""
    amount = composition[ion]
    written = float(battery_formula_subscript(amount))
    if written == amount:
        return composition
    amounts = composition.get_el_amt_dict()
    amounts[ion] = written
    return Composition({element: value for element, value in amounts.items() if value})


def _one_hot(value, vocabulary: Sequence, unknown_slot: bool = False) -> np.ndarray:
    vector = np.zeros(len(vocabulary) + int(unknown_slot))
    if value in vocabulary:
        vector[list(vocabulary).index(value)] = 1.0
    elif unknown_slot:
        vector[-1] = 1.0
    else:
        raise ValueError(f'{value!r} is not in the vocabulary {list(vocabulary)}')
    return vector


_HALIDES = ('F', 'Cl', 'Br', 'I')
_SOFT_ANIONS = ('S', 'Se', 'Te', 'N', 'P', 'As', 'Sb', 'C', 'H')


@functools.lru_cache(maxsize=1)
def _ionization_energies() -> np.ndarray:
    """(118, 12) successive ionization energies (eV) from pymatgen; NaN where pymatgen has none."""
    table = np.full((N_ELEMENTS, 12), np.nan)
    for z in range(1, N_ELEMENTS + 1):
        energies = _safe_attribute(_element(z), 'ionization_energies') or []
        values = [_float(e) for e in energies[:12]]
        table[z - 1, :len(values)] = values
    return table


@functools.lru_cache(maxsize=1)
def _redox_tables():
    """Per-element arrays for :func:`formal_redox_state`, computed once from pymatgen data."""
    table = element_property_table()
    is_tm = table[:, _PROPERTY_NAMES.index('is_transition_metal')] > 0.5
    highest = table[:, _PROPERTY_NAMES.index('max_oxidation_state')]
    lowest = table[:, _PROPERTY_NAMES.index('min_oxidation_state')]
    anion_charge = -np.abs(lowest)  # an anion takes its most negative common state (O -2, F -1, N -3, ...)
    z_of = {symbol: Element(symbol).Z - 1 for symbol in ('O', 'F') + _HALIDES + _SOFT_ANIONS}
    oxide_anions = np.zeros(N_ELEMENTS, dtype=bool)
    oxide_anions[[z_of[s] for s in ('O',) + _HALIDES]] = True
    other_anions = np.zeros(N_ELEMENTS, dtype=bool)
    other_anions[[z_of[s] for s in _HALIDES + _SOFT_ANIONS]] = True
    energies = _ionization_energies()
    level_means = np.nanmean(energies, axis=0)
    energies = np.where(np.isnan(energies), level_means[None, :], energies)
    return is_tm, highest, anion_charge, oxide_anions, other_anions, z_of['O'], z_of['F'], energies


def formal_redox_state(amounts: np.ndarray) -> tuple[float, float]:
    """Mean formal oxidation state of the transition metals by charge balance, and the mean ionization energy
    (eV) that takes each transition metal one step further up from that state.

    Anions take their most negative common oxidation state (pymatgen data): O and the halides whenever O or F is
    present (then S, N, P, C... are polyanion centres and cations), otherwise the chalcogen/pnictogen/halide
    set. Non-transition-metal cations take their highest common oxidation state; the transition metals share
    the rest. A descriptor, not chemistry: mixed valence and peroxides are averaged away.
    """
    is_tm, highest, anion_charge, oxide_anions, other_anions, o_index, f_index, energies = _redox_tables()
    present = amounts > 0
    anions = oxide_anions if (present[o_index] or present[f_index]) else other_anions
    tm = present & is_tm
    n_tm = amounts[tm].sum()
    if n_tm <= 0:
        return 0.0, 0.0
    cations = present & ~is_tm & ~anions
    charge = amounts[present & anions] @ anion_charge[present & anions] + amounts[cations] @ highest[cations]
    oxidation = -charge / n_tm
    level = int(np.clip(np.floor(oxidation + 1e-6), 0, energies.shape[1] - 1))
    return float(oxidation), float(amounts[tm] @ energies[tm, level] / n_tm)


def _row_dots(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[a[i] @ b_i for i]`` with ``b_i`` the (n, p) matrix ``b`` (2-D, shared) or ``b[i]`` (3-D), as (rows, p).

    numpy's matmul of a ``(rows, 1, n)`` stack calls BLAS gemv (dot where p is 1) once per row, with the strides
    of the 1-D product ``a[i] @ b_i`` (the same call, so the same bits), where ``a @ b`` on 2-D arrays would call
    gemm and sum in another order. A shared vector ``v`` of a 1-D ``a[i] @ v`` is passed as ``v[:, None]``
    (a view: its stride must be the one the 1-D product sees)."""
    return np.matmul(a[:, None, :], b)[:, 0]


def _masked_reduce(values: np.ndarray, mask: np.ndarray, other: np.ndarray | None = None) -> np.ndarray:
    """Per row ``values[i][mask[i]].sum()`` (``other is None``) or ``values[i][mask[i]] @ other[i][mask[i]]``,
    on compressed rows of the same length as the 1-D versions (rows grouped by their number of selected
    entries), so the same summation and the same BLAS call as for one row."""
    counts = mask.sum(axis=1)
    out = np.zeros(len(values))
    for k in np.unique(counts):
        if k == 0:
            continue  # an empty sum or dot is 0.0
        rows = np.flatnonzero(counts == k)
        selected = mask[rows]
        a = values[rows][selected].reshape(-1, k)
        if other is None:
            out[rows] = a.sum(axis=1)
        else:
            b = other[rows][selected].reshape(-1, k)
            out[rows] = np.matmul(a[:, None, :], b[:, :, None])[:, 0, 0]
    return out


def formal_redox_states(amounts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`formal_redox_state` of every row of ``amounts`` (rows, 118), vectorized with the same arithmetic."""
    is_tm, highest, anion_charge, oxide_anions, other_anions, o_index, f_index, energies = _redox_tables()
    n = len(amounts)
    present = amounts > 0
    oxide = present[:, o_index] | present[:, f_index]
    anions = np.where(oxide[:, None], oxide_anions[None, :], other_anions[None, :])
    tm = present & is_tm
    n_tm = _masked_reduce(amounts, tm)
    oxidation, energy = np.zeros(n), np.zeros(n)
    rows = np.flatnonzero(n_tm > 0)
    if len(rows):
        amounts, present, anions, tm, n_tm = amounts[rows], present[rows], anions[rows], tm[rows], n_tm[rows]
        cations = present & ~is_tm & ~anions
        charge = _masked_reduce(amounts, present & anions, np.broadcast_to(anion_charge, amounts.shape)) + \
            _masked_reduce(amounts, cations, np.broadcast_to(highest, amounts.shape))
        oxidation[rows] = -charge / n_tm
        level = np.clip(np.floor(oxidation[rows] + 1e-6), 0, energies.shape[1] - 1).astype(np.int64)
        energy[rows] = _masked_reduce(amounts, tm, energies.T[level]) / n_tm
    return oxidation, energy


def _stats_rows(weights: np.ndarray, table: np.ndarray) -> np.ndarray:
    """:meth:`LeakFreeFeaturizer._stats` of every row of ``weights`` (the same gemv calls per row)."""
    n, n_props = len(weights), table.shape[1]
    out = np.zeros((n, 4 * n_props))
    total = weights.sum(axis=1)
    rows = np.flatnonzero(total > 0)
    if not len(rows):
        return out
    weights = weights[rows]
    w = weights / total[rows, None]
    present = weights > 0
    mean = _row_dots(w, table)
    # w @ (table - mean) ** 2 per row, by gemv over all 118 elements as in _stats. Only the rows of present
    # elements are filled in: an element with weight 0 adds exactly 0 to the products whatever its (finite)
    # deviation, so the buffer's other rows may hold anything finite (zeros, or the last block's values).
    std = np.empty_like(mean)
    block = 256
    deviations = np.zeros((min(block, len(rows)), weights.shape[1], n_props))
    for start in range(0, len(rows), block):
        part = slice(start, start + block)
        buffer = deviations[:len(w[part])]
        row, element = np.nonzero(present[part])
        buffer[row, element] = (table[element] - mean[part][row]) ** 2
        std[part] = np.sqrt(np.maximum(_row_dots(w[part], buffer), 0.0))
    counts = present.sum(axis=1)
    low, high = np.empty_like(mean), np.empty_like(mean)
    for k in np.unique(counts):
        group = np.flatnonzero(counts == k)
        selected = table[np.nonzero(present[group])[1].reshape(-1, k)]  # (rows, k, n_props)
        low[group], high[group] = selected.min(axis=1), selected.max(axis=1)
    out[rows] = np.concatenate([mean, std, low, high], axis=1)
    return out


@functools.lru_cache(maxsize=1)
def _leakfree_tables() -> dict[str, Any]:
    """Per-element and per-ion lookups of the leak-free featurizer (pymatgen data, computed once)."""
    table = element_property_table()
    ions = [Element(ion) for ion in WORKING_IONS]
    return {
        'table': table,
        'mass': table[:, _PROPERTY_NAMES.index('atomic_mass')],  # a strided view, as _row reads it
        'tm_mask': table[:, _PROPERTY_NAMES.index('is_transition_metal')] > 0.5,
        'ion_index': {ion: i for i, ion in enumerate(WORKING_IONS)},
        'ion_z': np.array([el.Z - 1 for el in ions], dtype=np.int64),
        'ion_charge': np.array([max(el.common_oxidation_states) for el in ions], dtype=np.int64),
        'system_code': {system: i for i, system in enumerate(CRYSTAL_SYSTEMS)},
    }


def _refuse_unknown_options(name: str, options: dict, known: Sequence[str]) -> None:
    """A misspelt option (``extra_colums``) was stored in the model's config and silently did nothing."""
    if options:
        raise ValueError(f'unknown option(s) {", ".join(map(repr, sorted(options)))} of featurizer {name!r}; known: '
                         f'{", ".join(known)}')


def _records_to_fit(records: Sequence[ElectrodeRecord]) -> list[ElectrodeRecord]:
    records = list(records)
    if not records:
        raise ValueError('a featurizer cannot be fitted on no records')
    return records


class Featurizer:
    """Base class: ``fit`` on training records, ``transform`` any records, state as arrays + JSON config."""

    name: str = ''
    version: int = 0
    #: State versions :meth:`from_state` reads (a loaded featurizer keeps its version, and computes as it did).
    readable_versions: tuple[int, ...] = ()
    leaks_target: bool = False

    def __init__(self, **options):
        self.options = options
        self.arrays: dict[str, np.ndarray] = {}
        self.fitted = False

    # -- the per-record raw vector, before fitted transforms ---------------------------------------------------
    def raw(self, records: Sequence[ElectrodeRecord]) -> np.ndarray:
        raise NotImplementedError

    def check_records(self, records: Sequence[ElectrodeRecord]) -> None:
        """Refuse records :meth:`raw` could not featurize (a field it needs is missing), naming the first such
        record, without computing any feature: validators call this before anything is stored.

        :raises ValueError: naming the battery and the fields.
        """

    def fit(self, records: Sequence[ElectrodeRecord]) -> 'Featurizer':
        self._fit_raw(self.raw(_records_to_fit(records)))
        self.fitted = True
        return self

    def transform(self, records: Sequence[ElectrodeRecord]) -> np.ndarray:
        if not self.fitted:
            raise RuntimeError(f'featurizer {self.name!r} is not fitted')
        records = list(records)
        if not records:  # no rows, the fitted columns (raw() of nothing has no column count to transform)
            return np.zeros((0, self.n_features), dtype=np.float32)
        return self._transform_raw(self.raw(records)).astype(np.float32)

    def fit_transform(self, records: Sequence[ElectrodeRecord]) -> np.ndarray:
        raw = self.raw(_records_to_fit(records))
        self._fit_raw(raw)
        self.fitted = True
        return self._transform_raw(raw).astype(np.float32)

    def _fit_raw(self, raw: np.ndarray) -> None:
        raise NotImplementedError

    def _transform_raw(self, raw: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @property
    def n_features(self) -> int:
        raise NotImplementedError

    def training_host_elements(self) -> frozenset[str] | None:
        """The elements that some training record's host contained; ``None`` where the fitted state cannot tell."""
        return None

    # -- state ---------------------------------------------------------------------------------------------------
    def check_state(self) -> None:
        """Refuse a loaded state this featurizer cannot transform with: not fitted, or fitted arrays missing or of
        another width than the raw features its options make (a config re-signed after its options or arrays
        were edited transformed into a numpy broadcasting error, blamed on the records).

        :raises ValueError: naming the array.
        """
        if not self.fitted:
            raise ValueError(f'featurizer {self.name!r}: the saved state is not fitted')
        expected = self._state_shapes()
        for name, shape in expected.items():
            if name not in self.arrays:
                raise ValueError(f'featurizer {self.name!r}: fitted array {name!r} is missing')
        width = self.raw([_probe_record()]).shape[1]
        for name, shape in expected.items():
            shape = tuple(width if dim == 'raw' else dim for dim in shape)
            actual = tuple(self.arrays[name].shape)
            if len(actual) != len(shape) or any(want is not None and want != got for want, got in zip(shape, actual)):
                wanted = '(' + ', '.join('*' if dim is None else str(dim) for dim in shape) + (',)' if len(shape) == 1 else ')')
                raise ValueError(f'featurizer {self.name!r}: fitted array {name!r} has shape {actual}, where its '
                                 f'options make {width} raw features (expected {wanted})')
        for name in expected:  # review: NaN, inf or a zero scale loaded, and the prediction error blamed the records
            array = self.arrays[name]
            if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
                raise ValueError(f'featurizer {self.name!r}: fitted array {name!r} must hold finite floating-point '
                                 f'numbers (dtype {array.dtype})')
            if name in self._POSITIVE and not (array > 0).all():
                raise ValueError(f'featurizer {self.name!r}: fitted array {name!r} must be > 0 everywhere (a '
                                 'scale to divide by)')

    #: Fitted arrays that are divided by.
    _POSITIVE = ('scale', 'minmax_scale')

    def _state_shapes(self) -> dict[str, tuple]:
        """The fitted arrays and their shapes: an int, ``'raw'`` (the raw feature width) or ``None`` (any)."""
        return {}

    def get_config(self) -> dict[str, Any]:
        return {'name': self.name, 'version': self.version, 'options': dict(self.options),
                'leaks_target': self.leaks_target, 'fitted': self.fitted}

    def get_state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON-able config and a dict of arrays that together restore this featurizer exactly."""
        return self.get_config(), {k: np.asarray(v) for k, v in self.arrays.items()}

    @classmethod
    def from_state(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> 'Featurizer':
        if config.get('name') != cls.name:
            raise ValueError(f'state is for featurizer {config.get("name")!r}, not {cls.name!r}')
        version = config.get('version', -1)
        readable = cls.readable_versions or (cls.version,)
        if isinstance(version, bool) or not isinstance(version, int) or version not in readable:
            raise ValueError(f'featurizer {cls.name!r} state has version {version!r}, this code reads version(s) '
                             f'{", ".join(map(str, readable))}')
        featurizer = cls(_quiet=True, **config.get('options', {}))
        featurizer.version = version
        featurizer.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        featurizer.fitted = bool(config.get('fitted', True))
        return featurizer


class PaperFeaturizer(Featurizer):
    """The seed paper's features, exactly as its notebook builds them (see ``docs/paper.md``).

    Per row: integer element counts of the charged and the discharged formula as the seed read them (118 + 118;
    the working ion's count as the seed CSV writes it, 1/8 as 0.12, see :func:`_seed_text_composition`), a
    10-dimensional random (untrained, seeded, stored) embedding of each space-group number (10 + 10), one-hot
    working ion (10), one-hot number of steps (1..10), one-hot crystal systems (7 + 7), and the numeric columns the
    seed does not drop: the two space-group numbers as numbers (1..230; version 3) and ``capacity_grav`` and
    ``energy_grav``.
    Then PCA keeping 99 % of the variance and min-max scaling, both fitted on training rows only.

    Differences from the seed, on purpose: formulas are parsed with pymatgen, so parenthesised groups such as
    ``(SO4)2`` are counted (the seed's regex drops the multiplier); vocabularies are fixed rather than taken from
    ``pd.get_dummies`` of whatever rows are present.
    """

    name = 'paper'
    #: 2: element counts of the formulas as the seed read them, the working ion's count written as the seed CSV
    #: writes it (:func:`_seed_text_composition`; on the shared CSV, the counts of its own formula columns, row for
    #: row); 1 (models saved before 2026-12-07, still read and featurized as they were trained): counts of the
    #: records' exact formulas, which since 2026-12-06 take the ion content of the 201 rounded rows from
    #: ``adj_pairs``.
    #: 3: the two space-group numbers as numbers too, as the seed's ``preprocessing.py`` and notebook keep them
    #: beside the embeddings (its drop list leaves them in; found by review). Unscaled before PCA, their variance
    #: (about 5,100 each on the shared CSV) adds components: 9 at 99 % on all its rows (the seed's preprocessing
    #: keeps 8 or 9 by split; its notebook printed 8), against 7 without them.
    version = 3
    readable_versions = (1, 2, 3)
    leaks_target = True
    MAX_STEPS = 10
    EMBEDDING_DIM = 10

    def __init__(self, seed: int = 0, pca_variance: float = 0.99, _quiet: bool = False, **options):
        _refuse_unknown_options(self.name, options, ('seed', 'pca_variance'))
        # checked here, where a bad value is named: PCA raised its own error at fit time, once a calculation
        # function had stored its inputs
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f'paper featurizer option seed must be an integer >= 0, got {seed!r}')
        if isinstance(pca_variance, bool) or not isinstance(pca_variance, (int, float, np.floating)) \
                or not 0 < pca_variance < 1:
            raise ValueError(f'paper featurizer option pca_variance must be a fraction of the variance, '
                             f'0 < pca_variance < 1, got {pca_variance!r}')
        super().__init__(seed=seed, pca_variance=pca_variance)
        if not _quiet:
            warnings.warn('the paper featurizer includes capacity_grav and energy_grav; their ratio IS the average '
                          'voltage, so scores under this protocol measure the leak, not the model',
                          TargetLeakWarning, stacklevel=2)
        generator = np.random.default_rng(seed)
        # nn.Embedding initialises from N(0, 1); the seed never trains it, so a seeded N(0, 1) table is the same.
        self.arrays['space_group_embedding'] = generator.standard_normal((N_SPACE_GROUPS, self.EMBEDDING_DIM))

    @property
    def n_features(self) -> int:
        return int(self.arrays['pca_components'].shape[0]) if 'pca_components' in self.arrays else 0

    #: The record fields every row needs (a structure pair, for one, has no capacity, energy or steps).
    #: capacity_grav and energy_grav first: a pair of formulas or structures can never have them, so they are the
    #: field to name (a pair of formulas lacks the symmetry too, which could be given).
    NEEDED = ('capacity_grav', 'energy_grav', 'charge_space_group_number', 'discharge_space_group_number',
              'charge_crystal_system', 'discharge_crystal_system', 'num_steps')

    def check_records(self, records):
        for record in records:
            missing = [name for name in self.NEEDED if getattr(record, name) is None]
            if missing:
                raise ElectrodeDataError(f'the paper featurizer needs {", ".join(missing)}', field=missing[0],
                                         battery_id=record.battery_id, line=record.line)

    def raw(self, records):
        self.check_records(records)
        embedding = self.arrays['space_group_embedding']
        as_read = _seed_text_composition if self.version >= 2 else (lambda composition, ion: composition)
        rows = []
        for record in records:
            rows.append(np.concatenate([
                _integer_counts(as_read(record.composition_charge, record.working_ion)),
                _integer_counts(as_read(record.composition_discharge, record.working_ion)),
                embedding[record.charge_space_group_number - 1],
                embedding[record.discharge_space_group_number - 1],
                _one_hot(record.working_ion, WORKING_IONS),
                _one_hot(min(record.num_steps, self.MAX_STEPS), range(1, self.MAX_STEPS + 1)),
                _one_hot(record.charge_crystal_system, CRYSTAL_SYSTEMS),
                _one_hot(record.discharge_crystal_system, CRYSTAL_SYSTEMS),
                [record.charge_space_group_number, record.discharge_space_group_number] if self.version >= 3 else [],
                [record.capacity_grav, record.energy_grav],
            ]))
        return np.asarray(rows, dtype=np.float64)

    def _fit_raw(self, raw):
        from sklearn.decomposition import PCA

        pca = PCA(self.options['pca_variance'], svd_solver='full').fit(raw)
        projected = pca.transform(raw)
        low, high = projected.min(axis=0), projected.max(axis=0)
        scale = np.where(high > low, high - low, 1.0)
        self.arrays.update(pca_components=pca.components_, pca_mean=pca.mean_, minmax_low=low, minmax_scale=scale)

    def training_host_elements(self) -> frozenset[str] | None:
        """Read from the fitted PCA mean: the elements that some training formula (charged or discharged) held, the
        working ion included. An element no training row had is a count column of zero variance, which PCA weighs
        by 0: the features drop it from a host (review: a V host was featurized as if without its V, unflagged)."""
        mean = self.arrays.get('pca_mean')
        if mean is None:
            return None
        counts = mean[:N_ELEMENTS] + mean[N_ELEMENTS:2 * N_ELEMENTS]  # counts are never negative
        return frozenset(_element(int(z)).symbol for z in np.flatnonzero(counts > 0) + 1)

    def _state_shapes(self):
        components = self.arrays.get('pca_components')
        kept = components.shape[0] if components is not None and components.ndim == 2 else None
        return {'space_group_embedding': (N_SPACE_GROUPS, self.EMBEDDING_DIM), 'pca_mean': ('raw',),
                'pca_components': (kept, 'raw'), 'minmax_low': (kept,), 'minmax_scale': (kept,)}

    def _transform_raw(self, raw):
        projected = (raw - self.arrays['pca_mean']) @ self.arrays['pca_components'].T
        return (projected - self.arrays['minmax_low']) / self.arrays['minmax_scale']


class LeakFreeFeaturizer(Featurizer):
    """The default: descriptors that a user can compute for a new, never-calculated electrode.

    Blocks (all fixed-width):

    * working ion: one-hot over the ten ions and its element properties;
    * ion content: ions per host atom in the charged and discharged member, their difference, the electrons
      transferred per host atom and per redox-active (transition-metal) atom, gravimetric capacity from formulas;
    * host framework composition: element fractions (118) and weighted mean / std / min / max of pymatgen element
      properties; the same statistics over the transition metals alone (the redox centres);
    * symmetry (optional, 'unknown' allowed): one-hot crystal systems of both members and their space groups.

    Nothing in it uses energies, voltages or MP's per-step data. Extra numeric columns may be added with
    ``extra_columns``; any that is a function of the target raises :class:`LeakageError`.
    """

    name = 'leakfree'
    #: 2: the host's atom count per unit of its smallest integer formula (:func:`host_atoms_per_formula_unit`);
    #: 1 (models saved before 2026-12-03, still read and featurized as they were trained): as written.
    version = 2
    readable_versions = (1, 2)

    def __init__(self, extra_columns: Sequence[str] = (), _quiet: bool = False, **options):
        _refuse_unknown_options(self.name, options, ('extra_columns',))
        if isinstance(extra_columns, str) or not all(isinstance(c, str) for c in extra_columns):
            raise ValueError(f'extra_columns must be a list of column names, got {extra_columns!r}')
        leaking = [c for c in extra_columns if c in LEAKING_COLUMNS]
        unknown = [c for c in extra_columns if c not in LEAKING_COLUMNS and c not in EXTRA_COLUMNS]
        if unknown:
            raise ValueError(f'extra_columns: {", ".join(map(repr, unknown))} is no numeric column a leak-free '
                             f'featurizer may add; choose from {", ".join(EXTRA_COLUMNS)}')
        if leaking:
            raise LeakageError(f'column(s) {", ".join(leaking)} are targets or functions of one (energy = voltage x '
                               'capacity; the steps hold per-step voltages and volume changes; the energies above '
                               'the hull give the metastability part of the voltage exactly, see docs/paper.md); '
                               'use the "paper" featurizer to reproduce the leak')
        super().__init__(extra_columns=list(extra_columns))

    @staticmethod
    def _stats(weights: np.ndarray, table: np.ndarray) -> np.ndarray:
        n_props = table.shape[1]
        total = weights.sum()
        if total <= 0:
            return np.zeros(4 * n_props)
        w = weights / total
        present = weights > 0
        mean = w @ table
        std = np.sqrt(np.maximum(w @ (table - mean) ** 2, 0.0))
        return np.concatenate([mean, std, table[present].min(axis=0), table[present].max(axis=0)])

    def _host_atoms(self, host: np.ndarray) -> np.ndarray:
        """Each host's atom count, the feature's way for this version (see :attr:`version`)."""
        return host_atoms_per_formula_unit(host) if self.version >= 2 else host.sum(axis=1)

    def check_records(self, records):
        for column in self.options.get('extra_columns', ()):
            for record in records:
                value = getattr(record, column)
                if value is None or not math.isfinite(value):
                    raise ElectrodeDataError(f'extra column {column!r} is {"missing" if value is None else value}',
                                             field=column, battery_id=record.battery_id, line=record.line)

    def _row(self, record: ElectrodeRecord) -> np.ndarray:
        table = element_property_table()
        ion_z = Element(record.working_ion).Z
        charge = _amounts(record.composition_charge)
        discharge = _amounts(record.composition_discharge)
        host = discharge.copy()
        host[ion_z - 1] = 0.0
        host_atoms = host.sum()
        x_charge = charge[ion_z - 1] / max(charge.sum() - charge[ion_z - 1], 1e-12)
        x_discharge = discharge[ion_z - 1] / host_atoms
        ion_charge = max(Element(record.working_ion).common_oxidation_states)
        delta = x_discharge - x_charge
        electrons_per_host_atom = delta * ion_charge
        tm_mask = table[:, _PROPERTY_NAMES.index('is_transition_metal')] > 0.5
        tm = np.where(tm_mask, host, 0.0)
        tm_fraction = tm.sum() / host_atoms
        electrons_per_tm = electrons_per_host_atom / tm_fraction if tm_fraction > 0 else 0.0
        host_mass = host @ table[:, _PROPERTY_NAMES.index('atomic_mass')]
        mass_discharged = host_mass + discharge[ion_z - 1] * table[ion_z - 1, _PROPERTY_NAMES.index('atomic_mass')]
        capacity = delta * host_atoms * ion_charge * FARADAY_MAH_PER_MOL / mass_discharged
        symmetry = []
        for side in ('charge', 'discharge'):
            system = getattr(record, f'{side}_crystal_system')
            number = getattr(record, f'{side}_space_group_number')
            symmetry.append(_one_hot(system, CRYSTAL_SYSTEMS, unknown_slot=True))
            symmetry.append([0.0 if number is None else number / N_SPACE_GROUPS, float(number is None)])
        same_group = float(record.charge_space_group_number is not None
                           and record.charge_space_group_number == record.discharge_space_group_number)
        redox = [*formal_redox_state(charge), *formal_redox_state(discharge)]
        redox.append(redox[0] - redox[2])
        extras = []
        for column in self.options.get('extra_columns', ()):
            value = getattr(record, column)
            if value is None:
                raise ElectrodeDataError(f'extra column {column!r} is missing', field=column,
                                         battery_id=record.battery_id, line=record.line)
            extras.append(float(value))
        return np.concatenate([
            _one_hot(record.working_ion, WORKING_IONS),
            table[ion_z - 1],
            [x_charge, x_discharge, delta, electrons_per_host_atom, electrons_per_tm, tm_fraction, capacity,
             math.log(self._host_atoms(host[None, :])[0]), float(record.end_members_reversed)],
            redox,
            host / host_atoms,
            self._stats(host, table),
            self._stats(tm, table),
            *symmetry, [same_group],
            extras,
        ])

    #: Records per vectorized block (bounds the (rows, 118, n_properties) temporaries to a few MB).
    BLOCK_ROWS = 1024

    def raw(self, records):
        """The raw feature rows: :meth:`_row` of every record, computed a block of records at a time.

        The vectorized block computes every number exactly as :meth:`_row` does: the same elementwise IEEE
        operations, ``math.log``, and the same BLAS calls per row (numpy's matmul of ``(rows, 1, n)`` stacks
        calls dot/gemv once per row, as ``_row``'s 1-D products do, never gemm), sums over the same contiguous
        lengths. A block with anything :meth:`_row` would refuse or treat specially (an ion outside the ten,
        no host atoms, non-integer space groups, a bad extra column, ...) is computed by :meth:`_row` itself,
        which raises the same error for the same record.
        """
        records = list(records)
        if not records:
            return np.asarray([], dtype=np.float64)
        blocks = []
        for start in range(0, len(records), self.BLOCK_ROWS):
            block = records[start:start + self.BLOCK_ROWS]
            fast = self._raw_block(block)
            blocks.append(fast if fast is not None else np.asarray([self._row(r) for r in block], dtype=np.float64))
        return np.concatenate(blocks)

    def _raw_block(self, records) -> np.ndarray | None:
        """:meth:`_row` of every record, vectorized; ``None`` where a record needs :meth:`_row` itself."""
        tables = _leakfree_tables()
        table = tables['table']
        n = len(records)
        extra_columns = self.options.get('extra_columns', ())
        try:
            ions = [tables['ion_index'].get(r.working_ion) for r in records]
            if None in ions:
                return None
            # The amounts of the charged (first n rows) and the discharged members: get_el_amt_dict() as _amounts
            # reads it, for compositions of elements (one amount per symbol).
            compositions = [r.composition_charge for r in records] + [r.composition_discharge for r in records]
            counts = [len(c) for c in compositions]
            pairs = [pair for c in compositions for pair in c.items()]
            if not all(type(element) is Element for element, _ in pairs):
                return None
            cols = [element.Z - 1 for element, _ in pairs]
            values = [amount for _, amount in pairs]
            systems, numbers, missing_numbers = [], [], []
            for side in ('charge', 'discharge'):
                system_values = [getattr(r, f'{side}_crystal_system') for r in records]
                number_values = [getattr(r, f'{side}_space_group_number') for r in records]
                if not all(number is None or type(number) is int for number in number_values):
                    return None
                systems.append([tables['system_code'].get(v, len(CRYSTAL_SYSTEMS)) for v in system_values])
                numbers.append([0.0 if v is None else v / N_SPACE_GROUPS for v in number_values])
                missing_numbers.append([float(v is None) for v in number_values])
            same_group = np.array([float(r.charge_space_group_number is not None
                                         and r.charge_space_group_number == r.discharge_space_group_number)
                                   for r in records])
            reversed_members = np.array([float(r.end_members_reversed) for r in records])
            extras = np.zeros((n, len(extra_columns)))
            for j, column in enumerate(extra_columns):
                column_values = [getattr(r, column) for r in records]
                if any(value is None for value in column_values):
                    return None
                extras[:, j] = [float(value) for value in column_values]
        except Exception:  # noqa: BLE001 - _row raises the error the user needs, for the same record
            return None
        ions = np.asarray(ions, dtype=np.int64)
        symmetry_codes = np.asarray(systems, dtype=np.int64).T
        numbers, missing_numbers = np.asarray(numbers).T, np.asarray(missing_numbers).T
        rows = np.repeat(np.arange(2 * n), counts)
        amounts = np.zeros((2 * n, N_ELEMENTS))
        amounts[rows, np.asarray(cols, dtype=np.int64)] += np.asarray(values, dtype=float)
        if not (np.isfinite(amounts).all() and (amounts >= 0).all()):
            return None
        charge, discharge = amounts[:n], amounts[n:]
        everything = np.arange(n)
        ion_z = tables['ion_z'][ions]  # Z - 1 of each record's working ion
        host = discharge.copy()
        host[everything, ion_z] = 0.0
        host_atoms = host.sum(axis=1)
        if not (host_atoms > 0).all():
            return None
        charge_ion, discharge_ion = charge[everything, ion_z], discharge[everything, ion_z]
        x_charge = charge_ion / np.maximum(charge.sum(axis=1) - charge_ion, 1e-12)
        x_discharge = discharge_ion / host_atoms
        ion_charge = tables['ion_charge'][ions]
        delta = x_discharge - x_charge
        electrons_per_host_atom = delta * ion_charge
        tm = np.where(tables['tm_mask'], host, 0.0)
        tm_fraction = tm.sum(axis=1) / host_atoms
        electrons_per_tm = np.zeros(n)
        has_tm = tm_fraction > 0
        electrons_per_tm[has_tm] = electrons_per_host_atom[has_tm] / tm_fraction[has_tm]
        mass = tables['mass']
        host_mass = _row_dots(host, mass[:, None])[:, 0]
        mass_discharged = host_mass + discharge_ion * mass[ion_z]
        capacity = delta * host_atoms * ion_charge * FARADAY_MAH_PER_MOL / mass_discharged
        log_host_atoms = np.log(self._host_atoms(host))
        oxidation_charge, energy_charge = formal_redox_states(charge)
        oxidation_discharge, energy_discharge = formal_redox_states(discharge)
        symmetry_one_hot = np.zeros((n, 2, len(CRYSTAL_SYSTEMS) + 1))
        symmetry_one_hot[everything[:, None], [0, 1], symmetry_codes] = 1.0
        ion_one_hot = np.zeros((n, len(WORKING_IONS)))
        ion_one_hot[everything, ions] = 1.0
        return np.concatenate([
            ion_one_hot,
            table[ion_z],
            np.stack([x_charge, x_discharge, delta, electrons_per_host_atom, electrons_per_tm, tm_fraction,
                      capacity, log_host_atoms, reversed_members], axis=1),
            np.stack([oxidation_charge, energy_charge, oxidation_discharge, energy_discharge,
                      oxidation_charge - oxidation_discharge], axis=1),
            host / host_atoms[:, None],
            _stats_rows(host, table),
            _stats_rows(tm, table),
            symmetry_one_hot[:, 0], numbers[:, :1], missing_numbers[:, :1],
            symmetry_one_hot[:, 1], numbers[:, 1:], missing_numbers[:, 1:],
            same_group[:, None],
            extras,
        ], axis=1)

    def _fit_raw(self, raw):
        mean = raw.mean(axis=0)
        std = raw.std(axis=0)
        self.arrays.update(mean=mean, scale=np.where(std > 1e-12, std, 1.0))

    def _state_shapes(self):
        return {'mean': ('raw',), 'scale': ('raw',)}

    def _transform_raw(self, raw):
        standardized = raw - self.arrays['mean']
        standardized /= self.arrays['scale']  # in place: the same numbers as (raw - mean) / scale, one array less
        return standardized

    @property
    def n_features(self) -> int:
        return int(self.arrays['mean'].shape[0]) if 'mean' in self.arrays else 0

    def training_host_elements(self) -> frozenset[str] | None:
        """Read from the fitted state: an element's host-fraction column has a mean above zero exactly when some
        training host contained it (fractions are never negative)."""
        if 'mean' not in self.arrays:
            return None
        start = len(WORKING_IONS) + element_property_table().shape[1] + 9 + 5  # the blocks before the fractions
        fractions = self.arrays['mean'][start:start + N_ELEMENTS]
        return frozenset(_element(int(z)).symbol for z in np.flatnonzero(fractions > 0) + 1)


def _probe_record() -> ElectrodeRecord:
    """A record with every field a featurizer may read (FePO4 -> LiFePO4, numbers of the right kind): its raw
    feature width is that of every record, for :meth:`Featurizer.check_state`."""
    import dataclasses

    record = ElectrodeRecord(battery_id='probe', formula_charge='FePO4', formula_discharge='LiFePO4',
                             working_ion='Li', num_steps=1, charge_crystal_system='Orthorhombic',
                             charge_space_group_number=62, discharge_crystal_system='Orthorhombic',
                             discharge_space_group_number=62)
    return dataclasses.replace(record, **{column: 1.0 for column in FLOAT_COLUMNS})


FEATURIZERS: dict[str, type[Featurizer]] = {cls.name: cls for cls in (PaperFeaturizer, LeakFreeFeaturizer)}


def get_featurizer(name: str, **options) -> Featurizer:
    """A fresh (unfitted) featurizer by name; the ``paper`` one warns that it leaks the target."""
    return get_featurizer_class(name)(**options)


def featurizer_from_state(config: dict[str, Any], arrays: dict[str, np.ndarray]) -> Featurizer:
    return get_featurizer_class(config['name']).from_state(config, arrays)


def get_featurizer_class(name: str) -> type[Featurizer]:
    try:
        return FEATURIZERS[name]
    except KeyError:
        raise ValueError(f'unknown featurizer {name!r}; choose one of {", ".join(FEATURIZERS)}') from None
