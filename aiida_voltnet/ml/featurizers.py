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

import functools
import math
import warnings
from fractions import Fraction
from typing import Any, Sequence

import numpy as np
from pymatgen.core import Composition, Element

from .records import CRYSTAL_SYSTEMS, WORKING_IONS, ElectrodeRecord

__all__ = [
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

#: Record fields that are functions of the target (``average_voltage``): energies equal voltage x capacity, and
#: the steps carry per-step voltages. Any of them as a feature leaks the answer.
LEAKING_COLUMNS = ('average_voltage', 'energy_grav', 'energy_vol', 'steps', 'adj_pairs')


class TargetLeakWarning(UserWarning):
    """The chosen features contain the target (the paper's protocol)."""


class LeakageError(ValueError):
    """A leak-free featurizer was asked to use a column that is a function of the target."""


@functools.lru_cache(maxsize=None)
def _element(z: int) -> Element:
    return Element.from_Z(z)


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


class Featurizer:
    """Base class: ``fit`` on training records, ``transform`` any records, state as arrays + JSON config."""

    name: str = ''
    version: int = 0
    leaks_target: bool = False

    def __init__(self, **options):
        self.options = options
        self.arrays: dict[str, np.ndarray] = {}
        self.fitted = False

    # -- the per-record raw vector, before fitted transforms ---------------------------------------------------
    def raw(self, records: Sequence[ElectrodeRecord]) -> np.ndarray:
        raise NotImplementedError

    def fit(self, records: Sequence[ElectrodeRecord]) -> 'Featurizer':
        self._fit_raw(self.raw(records))
        self.fitted = True
        return self

    def transform(self, records: Sequence[ElectrodeRecord]) -> np.ndarray:
        if not self.fitted:
            raise RuntimeError(f'featurizer {self.name!r} is not fitted')
        return self._transform_raw(self.raw(records)).astype(np.float32)

    def fit_transform(self, records: Sequence[ElectrodeRecord]) -> np.ndarray:
        raw = self.raw(records)
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

    # -- state ---------------------------------------------------------------------------------------------------
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
        if int(config.get('version', -1)) != cls.version:
            raise ValueError(f'featurizer {cls.name!r} state has version {config.get("version")}, this code reads '
                             f'version {cls.version}')
        featurizer = cls(_quiet=True, **config.get('options', {}))
        featurizer.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        featurizer.fitted = bool(config.get('fitted', True))
        return featurizer


class PaperFeaturizer(Featurizer):
    """The seed paper's features, exactly as its notebook builds them (see ``docs/paper.md``).

    Per row: integer element counts of the charged and the discharged formula (118 + 118), a 10-dimensional
    random (untrained, seeded, stored) embedding of each space-group number (10 + 10), one-hot working ion (10),
    one-hot number of steps (1..10), one-hot crystal systems (7 + 7), ``capacity_grav`` and ``energy_grav``.
    Then PCA keeping 99 % of the variance and min-max scaling, both fitted on training rows only.

    Differences from the seed, on purpose: formulas are parsed with pymatgen, so parenthesised groups such as
    ``(SO4)2`` are counted (the seed's regex drops the multiplier); vocabularies are fixed rather than taken from
    ``pd.get_dummies`` of whatever rows are present.
    """

    name = 'paper'
    version = 1
    leaks_target = True
    MAX_STEPS = 10
    EMBEDDING_DIM = 10

    def __init__(self, seed: int = 0, pca_variance: float = 0.99, _quiet: bool = False, **options):
        super().__init__(seed=seed, pca_variance=pca_variance, **options)
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

    def raw(self, records):
        embedding = self.arrays['space_group_embedding']
        rows = []
        for record in records:
            missing = [name for name in ('charge_space_group_number', 'discharge_space_group_number',
                                         'charge_crystal_system', 'discharge_crystal_system', 'capacity_grav',
                                         'energy_grav', 'num_steps') if getattr(record, name) is None]
            if missing:
                raise ValueError(f'battery {record.battery_id!r}: the paper featurizer needs {", ".join(missing)}')
            rows.append(np.concatenate([
                _integer_counts(record.composition_charge),
                _integer_counts(record.composition_discharge),
                embedding[record.charge_space_group_number - 1],
                embedding[record.discharge_space_group_number - 1],
                _one_hot(record.working_ion, WORKING_IONS),
                _one_hot(min(record.num_steps, self.MAX_STEPS), range(1, self.MAX_STEPS + 1)),
                _one_hot(record.charge_crystal_system, CRYSTAL_SYSTEMS),
                _one_hot(record.discharge_crystal_system, CRYSTAL_SYSTEMS),
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
    version = 1

    def __init__(self, extra_columns: Sequence[str] = (), _quiet: bool = False, **options):
        leaking = [c for c in extra_columns if c in LEAKING_COLUMNS]
        if leaking:
            raise LeakageError(f'column(s) {", ".join(leaking)} are functions of the target average_voltage '
                               '(energy = voltage x capacity); use the "paper" featurizer to reproduce the leak')
        super().__init__(extra_columns=list(extra_columns), **options)

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
                raise ValueError(f'battery {record.battery_id!r}: extra column {column!r} is missing')
            extras.append(float(value))
        return np.concatenate([
            _one_hot(record.working_ion, WORKING_IONS),
            table[ion_z - 1],
            [x_charge, x_discharge, delta, electrons_per_host_atom, electrons_per_tm, tm_fraction, capacity,
             math.log(host_atoms), float(record.end_members_reversed)],
            redox,
            host / host_atoms,
            self._stats(host, table),
            self._stats(tm, table),
            *symmetry, [same_group],
            extras,
        ])

    def raw(self, records):
        return np.asarray([self._row(r) for r in records], dtype=np.float64)

    def _fit_raw(self, raw):
        mean = raw.mean(axis=0)
        std = raw.std(axis=0)
        self.arrays.update(mean=mean, scale=np.where(std > 1e-12, std, 1.0))

    def _transform_raw(self, raw):
        return (raw - self.arrays['mean']) / self.arrays['scale']

    @property
    def n_features(self) -> int:
        return int(self.arrays['mean'].shape[0]) if 'mean' in self.arrays else 0


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
