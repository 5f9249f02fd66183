"""Typed, validated insertion-electrode records and the seed-format CSV reader.

The CSV layout is the one of the seed paper's repository (Materials Project
insertion electrodes, 21 columns). Only the columns needed to *describe* an
electrode are required; everything that MP computes (voltages, capacities,
stabilities, steps) is optional so that the same reader serves prediction
inputs that lack a target.

``adj_pairs`` is Python-repr text from an untrusted file. It is parsed with
:mod:`ast` into a syntax tree whose nodes are checked one by one (only lists,
the two known constructors, keywords and literal numbers/strings are
accepted); nothing is ever evaluated.
"""
from __future__ import annotations

import ast
import contextlib
import csv
import dataclasses
import difflib
import functools
from fractions import Fraction
import hashlib
import io
import json
import logging
import math
import os
import re
import secrets
import stat
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from pymatgen.core import Composition, Element

LOGGER = logging.getLogger(__name__)

__all__ = [
    'WORKING_IONS',
    'CRYSTAL_SYSTEMS',
    'ElectrodeDataError',
    'VoltageStep',
    'ElectrodeRecord',
    'parse_formula',
    'electrode_composition_key',
    'parse_adj_pairs',
    'decode_csv',
    'read_electrodes_csv',
    'records_from_rows',
    'write_electrodes_csv',
    'records_to_json',
    'records_from_json',
    'file_sha256',
    'is_validated',
]

#: The ten working ions of the Materials Project insertion-electrode collection, in a fixed order.
WORKING_IONS: tuple[str, ...] = ('Li', 'Na', 'K', 'Rb', 'Cs', 'Mg', 'Ca', 'Zn', 'Al', 'Y')
#: The seven crystal systems, in a fixed order (vocabulary of the featurizers).
CRYSTAL_SYSTEMS: tuple[str, ...] = (
    'Triclinic', 'Monoclinic', 'Orthorhombic', 'Tetragonal', 'Trigonal', 'Hexagonal', 'Cubic'
)

REQUIRED_COLUMNS = ('battery_id', 'formula_charge', 'formula_discharge', 'working_ion')
FLOAT_COLUMNS = (
    'stability_charge', 'stability_discharge', 'capacity_grav', 'energy_grav', 'capacity_vol', 'energy_vol',
    'average_voltage',
)
CSV_COLUMNS = (
    'battery_id', 'battery_formula', 'formula_charge', 'formula_discharge', 'framework_formula', 'working_ion',
    'num_steps', 'stability_charge', 'stability_discharge', 'adj_pairs', 'capacity_grav', 'energy_grav',
    'capacity_vol', 'energy_vol', 'average_voltage', 'id_charge', 'id_discharge', 'charge_crystal_system',
    'charge_space_group_number', 'discharge_crystal_system', 'discharge_space_group_number',
)


class ElectrodeDataError(ValueError):
    """Invalid electrode data; the message names the source, line, battery and field."""

    def __init__(self, message: str, *, field: str | None = None, battery_id: str | None = None,
                 line: int | None = None, source: str | None = None):
        self.reason = message  # the message without the prefix naming the place
        self.field = field
        self.battery_id = battery_id
        self.line = line
        self.source = source
        where = []
        if source:
            where.append(str(source))
        if line is not None:
            where.append(f'line {line}')
        if battery_id:
            where.append(f'battery_id {battery_id!r}')
        if field:
            where.append(f'field {field!r}')
        prefix = ', '.join(where)
        super().__init__(f'{prefix}: {message}' if prefix else message)


@dataclass(frozen=True)
class VoltageStep:
    """One adjacent pair (voltage step) of an insertion electrode, as in MP's ``InsertionVoltagePairDoc``."""

    average_voltage: float
    capacity_grav: float | None = None
    capacity_vol: float | None = None
    energy_grav: float | None = None
    energy_vol: float | None = None
    max_delta_volume: float | None = None
    frac_charge: float | None = None
    frac_discharge: float | None = None
    formula_charge: str | None = None
    formula_discharge: str | None = None
    stability_charge: float | None = None
    stability_discharge: float | None = None
    id_charge: str | None = None
    id_discharge: str | None = None


@dataclass(frozen=True)
class ElectrodeRecord:
    """One insertion electrode: a charged (ion-poor) and a discharged (ion-rich) end member."""

    battery_id: str
    formula_charge: str
    formula_discharge: str
    working_ion: str
    framework_formula: str = ''
    battery_formula: str | None = None
    num_steps: int | None = None
    stability_charge: float | None = None
    stability_discharge: float | None = None
    steps: tuple[VoltageStep, ...] = ()
    capacity_grav: float | None = None
    energy_grav: float | None = None
    capacity_vol: float | None = None
    energy_vol: float | None = None
    average_voltage: float | None = None
    id_charge: str | None = None
    id_discharge: str | None = None
    charge_crystal_system: str | None = None
    charge_space_group_number: int | None = None
    discharge_crystal_system: str | None = None
    discharge_space_group_number: int | None = None
    line: int | None = field(default=None, compare=False)

    # Parsed once per record: featurizers read these several times, and pymatgen's parser dominates their cost.
    # (cached_property writes to the instance __dict__, which a frozen dataclass allows; equality ignores it.)
    @functools.cached_property
    def composition_charge(self) -> Composition:
        return parse_formula(self.formula_charge)

    @functools.cached_property
    def composition_discharge(self) -> Composition:
        return parse_formula(self.formula_discharge)

    @functools.cached_property
    def ion_fractions(self) -> tuple[float, float]:
        """Working-ion atoms per host-framework atom in the charged and the discharged end member."""
        result = []
        for composition in (self.composition_charge, self.composition_discharge):
            # the host's own sum: num_atoms - ions loses the host in float rounding when the ions are many
            host = _framework_amounts(composition, self.working_ion)[1]
            result.append(composition[self.working_ion] / host)
        return result[0], result[1]

    @property
    def end_members_reversed(self) -> bool:
        """True where the source lists the ion-rich member as 'charged' (no Materials Project electrode
        does; the seed CSV's formula columns seemed to in 22 rows, an artefact of their rounding, see
        :func:`end_members_from_steps`)."""
        x_charge, x_discharge = self.ion_fractions
        return x_discharge < x_charge

    @property
    def max_delta_volume(self) -> float | None:
        """Largest volume change over the steps (the paper's second target, Fig. S5)."""
        values = [s.max_delta_volume for s in self.steps if s.max_delta_volume is not None]
        return max(values) if values else None

    def to_dict(self) -> dict[str, Any]:
        """All fields but ``line``, steps as dicts: ``dataclasses.asdict`` without ``line``, without its deep
        copies where every value is an immutable str/int/float/None (always, for validated records)."""
        try:
            fields = self.__dict__
            data = {name: fields[name] for name in _RECORD_FIELDS}
            steps = data['steps']
            if type(steps) is tuple and all(type(step) is VoltageStep for step in steps) and \
                    _IMMUTABLE_TYPES.issuperset(map(type, (data[name] for name in _SCALAR_FIELDS))):
                data['steps'] = tuple({name: step.__dict__[name] for name in _STEP_FIELDS} for step in steps)
                if all(_IMMUTABLE_TYPES.issuperset(map(type, step.values())) for step in data['steps']):
                    return data
        except (AttributeError, KeyError):
            pass
        data = dataclasses.asdict(self)
        data.pop('line')
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> 'ElectrodeRecord':
        data = dict(data)
        data['steps'] = tuple(VoltageStep(**s) for s in data.get('steps') or ())
        return validate_record(cls(**data))


_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(ElectrodeRecord) if f.name != 'line')
_STEP_FIELDS = tuple(f.name for f in dataclasses.fields(VoltageStep))
_SCALAR_FIELDS = tuple(name for name in _RECORD_FIELDS if name != 'steps')
_IMMUTABLE_TYPES = frozenset((str, int, float, type(None)))


#: Largest |average voltage| a record may give, in V vs the working-ion metal (the shared MP data span -0.98 to 6.95).
MAX_ABS_VOLTAGE = 20

#: Most atoms of one element per formula unit that a formula may give (the shared MP data reach 149, in Mg149V).
MAX_FORMULA_AMOUNT = 10_000


#: An element symbol in a formula's text (pymatgen's formula grammar: a capital and an optional small letter).
_ELEMENT_SYMBOL = re.compile(r'[A-Z][a-z]?')
#: Symbols pymatgen reads as another element's atoms: deuterium and tritium are hydrogen to its Composition
_ISOTOPES = {'D': 'H', 'T': 'H'}

#: An amount written with a leading zero (``Co02``, ``FeP04``): pymatgen reads ``02`` as 2, so a zero typed for the
#: letter O gave another compound and a prediction for it. A lone ``0`` (``Li0CoO2``) and ``0.5`` are amounts, and
#: so is an exponent's (``Li1e-05CoO2``); ``Ce02`` is still a typo of CeO2.
_LEADING_ZERO_AMOUNT = re.compile(r'(?<![\d.])(?<!\d[eE])(?<!\d[eE][+-])0\d')


#: A hydrate written with a dot (``FePO4.2H2O``, ``Fe(PO4).2H2O``): pymatgen reads ``O4.2`` as a decimal amount,
#: Fe1 P1 O5.2 H2. The dot follows a closing bracket or an amount that is a whole number other than 0 (``Ni0.75`` is
#: a decimal amount), and the water closes the formula or its group (``Co0.25Ni0.75H2O2`` is a hydroxide).
_DOTTED_HYDRATE = re.compile(r'(\)|[A-Z][a-z]?(?:[1-9]\d*)?)\.(\d*\.?\d+)H2O(?![a-z\d])')


def parse_formula(formula: str) -> Composition:
    """Parse a formula with pymatgen, keeping explicit zero counts (``Li0CoO2``) and refusing dummy species."""
    if not isinstance(formula, str) or not formula.strip():
        raise ValueError('empty formula')
    typo = _LEADING_ZERO_AMOUNT.search(formula)
    if typo:
        letter = formula[:typo.start()] + 'O' + formula[typo.start() + 1:]
        raise ValueError(f'formula {formula!r} has an amount with a leading zero ({formula[typo.start():]!r}): a '
                         f'zero typed for the letter O, {letter!r}? (pymatgen would read it as another compound)')
    hydrate = _DOTTED_HYDRATE.search(formula)
    if hydrate:  # review: predicted for O5.2 H2 with no word
        explicit = (formula[:hydrate.start()] + hydrate.group(1) + f'(H2O){hydrate.group(2)}'
                    + formula[hydrate.end():])
        raise ValueError(f'formula {formula!r} reads {hydrate.group(0)!r} as one decimal amount followed by H2O: a '
                         f'hydrate written with a dot? write {explicit!r}')
    try:
        composition = Composition(formula.strip())
    except Exception as exception:  # pymatgen raises ValueError or its own errors on garbage
        raise ValueError(f'cannot parse formula {formula!r}: {exception}') from exception
    for species in composition:
        if not isinstance(species, Element):
            raise ValueError(f'formula {formula!r} contains {species}, which is not a chemical element')
    if composition.num_atoms <= 0:
        raise ValueError(f'formula {formula!r} has no atoms')
    for element, amount in composition.items():
        if amount > MAX_FORMULA_AMOUNT:
            raise ValueError(f'formula {formula!r} has {amount:g} {element} atoms per formula unit: more than '
                             f'{MAX_FORMULA_AMOUNT:,} is taken for a typo (and would overflow the features)')
    return composition


def host_framework(composition: Composition, ion: str) -> Composition:
    """``composition`` without the working ``ion``: the host framework, in the formula unit as written."""
    amounts = {el: amt for el, amt in composition.get_el_amt_dict().items() if el != ion}
    return Composition(amounts)


def _framework_amounts(composition: Composition, ion: str) -> tuple[dict[str, float], float]:
    """``(amounts, num_atoms)`` of ``host_framework(composition, ion)`` without building the Composition: the same
    numbers (pymatgen keeps amounts >= ``Composition.amount_tolerance`` and sums their absolute values in order)."""
    tolerance = Composition.amount_tolerance
    amounts = {el: amt for el, amt in composition.get_el_amt_dict().items() if el != ion and abs(amt) >= tolerance}
    atoms = 0
    for amount in amounts.values():
        atoms += abs(amount)
    return amounts, atoms


def framework_key(composition: Composition) -> str:
    """One spelling per host framework, the group of framework-grouped splits: pymatgen's reduced formula of the
    smallest integer formula, so that ``Co0.5Ni0.5O2``, ``CoNiO4`` and ``Co2Ni2O8`` are all ``CoNiO4`` (the reduced
    formula alone keeps a fractional host as written, and put those in two groups)."""
    amounts = composition.get_el_amt_dict()
    if all(abs(amount - round(amount)) < 1e-8 for amount in amounts.values()):
        return composition.reduced_formula
    formula, _ = composition.get_integer_formula_and_factor()  # as featurizers.host_atoms_per_formula_unit
    return Composition(formula).reduced_formula


def electrode_composition_key(record: ElectrodeRecord) -> tuple:
    """The electrode a record is by composition, whatever its id and formula unit: the working ion, the host
    framework (:func:`framework_key` of the discharged end's host) and the ion atoms per host atom at either end
    (the nearest fractions of denominator <= 1000, in increasing order). ``Li0NiO2``/``LiNiO2`` and ``NiO2``/``Li2Ni2O4`` share it;
    ``Li0.5NiO2``/``LiNiO2`` (another step of the same host) does not. Polymorphs share it too (the shared data's
    anatase, rutile and brookite TiO2 do): one key is one composition, not always one electrode."""
    host = framework_key(host_framework(record.composition_discharge, record.working_ion))
    # as fractions of denominator <= 1000: rounding to 1e-3 split 0.1875 (3/16) from its float noise 0.18749999...
    fractions = tuple(sorted(Fraction(x).limit_denominator(1000) for x in record.ion_fractions))
    return record.working_ion, host, fractions


@functools.lru_cache(maxsize=8192)
def _framework_fractions(formula: str) -> tuple[dict[str, float], str]:
    """Atom fractions and the :func:`framework_key` of a framework formula (parsed once per distinct string:
    frameworks repeat across ions)."""
    composition = parse_formula(formula)
    fractions = {el: amount / composition.num_atoms for el, amount in composition.get_el_amt_dict().items()}
    return fractions, framework_key(composition)


def _almost_equal_amounts(a: dict[str, float], b: dict[str, float], rtol: float, atol: float) -> bool:
    """``Composition(a).almost_equals(Composition(b), rtol, atol)`` on amount dicts."""
    for el in set(a) | set(b):
        x, y = a.get(el, 0), b.get(el, 0)
        if abs(y - x) > atol + rtol * (abs(x) + abs(y)) / 2:
            return False
    return True


# --------------------------------------------------------------------------------------------- adj_pairs parsing

#: ``InsertionVoltagePairDoc`` key -> :class:`VoltageStep` attribute (CSV ``adj_pairs`` and the MP API alike).
STEP_FIELDS = {
    'average_voltage': 'average_voltage', 'capacity_grav': 'capacity_grav', 'capacity_vol': 'capacity_vol',
    'energy_grav': 'energy_grav', 'energy_vol': 'energy_vol', 'max_delta_volume': 'max_delta_volume',
    'fracA_charge': 'frac_charge', 'fracA_discharge': 'frac_discharge', 'formula_charge': 'formula_charge',
    'formula_discharge': 'formula_discharge', 'stability_charge': 'stability_charge',
    'stability_discharge': 'stability_discharge', 'id_charge': 'id_charge', 'id_discharge': 'id_discharge',
}


@functools.lru_cache(maxsize=16)
def _may_hold_python_only_numbers(source: str) -> bool:
    """Whether a cell could hold a number literal only Python reads (``1_5``, ``0x1F``, ``0o7``, ``0b1``): the
    per-number check of its text (slow) runs only then."""
    return re.search(r'\d_\d|\b0[xXoObB]', source) is not None


def _literal(node: ast.AST, source: str) -> Any:
    """Turn one whitelisted syntax node into a Python value without evaluating anything."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float, str)) and not isinstance(
            node.value, bool):
        text = ast.get_source_segment(source, node) if not isinstance(node.value, str) and \
            _may_hold_python_only_numbers(source) else None
        if text is not None and not _number_text(text):  # Python's 1_5, 0x1F, ...: no number a table writes
            raise ValueError(f'{text!r} at column {node.col_offset} is not a plain decimal number')
        return node.value
    if isinstance(node, ast.Constant) and node.value is None:
        return None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        if isinstance(node.operand, ast.UnaryOp):  # one sign per number: no recursion on '---...1'
            raise ValueError('more than one sign on a number')
        value = _literal(node.operand, source)
        if not isinstance(value, (int, float)):
            raise ValueError('sign applied to a non-number')
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Constant) and isinstance(node.value, bool):
        raise ValueError(f'{node.value} at column {node.col_offset} is not a number (a value of a step is a number, a '
                         'text or None)')
    if isinstance(node, ast.Name) and node.id in ('nan', 'inf'):
        return float(node.id)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == 'MPID':
        if len(node.args) != 1 or node.keywords:
            raise ValueError('MPID(...) takes exactly one id')
        text = ast.get_source_segment(source, node.args[0])
        text = (text or '').strip().strip('\'"')
        if not text or not all(c.isalnum() or c in '-_' for c in text):
            raise ValueError(f'invalid material id {text!r}')
        return text
    raise ValueError(f'unexpected syntax {type(node).__name__} at column {getattr(node, "col_offset", "?")}')


def parse_adj_pairs(text: str) -> tuple[VoltageStep, ...]:
    """Parse the ``adj_pairs`` column: a list of ``InsertionVoltagePairDoc(...)`` reprs.

    :raises ValueError: on anything but the expected grammar (the caller adds row and field).
    """
    text = (text or '').strip()
    if not text:
        return ()
    try:
        tree = ast.parse(text, mode='eval')
    except SyntaxError as exception:
        raise ValueError(f'not a list of InsertionVoltagePairDoc: {exception.msg}') from exception
    except (RecursionError, MemoryError):  # the parser gives up on absurd nesting such as '-' * 5000
        raise ValueError('not a list of InsertionVoltagePairDoc: nested too deeply') from None
    if not isinstance(tree.body, ast.List):
        raise ValueError('expected a list [...]')
    steps = []
    for index, call in enumerate(tree.body.elts):
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
                and call.func.id == 'InsertionVoltagePairDoc' and not call.args):
            raise ValueError(f'element {index} is not InsertionVoltagePairDoc(key=value, ...)')
        values = {}
        names = [keyword.arg for keyword in call.keywords]
        repeated = sorted({name for name in names if name is not None and names.count(name) > 1})
        if repeated:  # ast.parse accepts f(a=1, a=2); which value would be meant is anybody's guess
            raise ValueError(f'element {index}: key(s) {", ".join(map(repr, repeated))} given more than once')
        for keyword in call.keywords:
            if keyword.arg is None:
                raise ValueError(f'element {index}: ** expansion is not allowed')
            try:
                value = _literal(keyword.value, text)
            except ValueError as exception:
                raise ValueError(f'element {index}, key {keyword.arg!r}: {exception}') from exception
            if keyword.arg in STEP_FIELDS:
                values[STEP_FIELDS[keyword.arg]] = value
        if 'average_voltage' not in values:
            raise ValueError(f'element {index} has no average_voltage')
        for key, value in values.items():
            if key.startswith(('formula', 'id_')):
                if value is not None and not isinstance(value, str):
                    raise ValueError(f'element {index}, key {key!r}: expected text')
            elif value is not None and not isinstance(value, (int, float)):
                raise ValueError(f'element {index}, key {key!r}: expected a number, got {value!r}')
            elif value is not None:
                try:
                    values[key] = float(value)
                except OverflowError:
                    raise ValueError(f'element {index}, key {key!r}: number out of range') from None
                if not math.isfinite(values[key]):  # as the row's own number columns: a step of inf volts is no datum
                    raise ValueError(f'element {index}, key {key!r}: must be a finite number, got {values[key]!r}')
        steps.append(VoltageStep(**values))
    return tuple(steps)


# ------------------------------------------------------------------------------------------------ validation

def _fail(message, record: ElectrodeRecord | None = None, field_name=None, line=None, source=None, battery_id=None):
    raise ElectrodeDataError(message, field=field_name, battery_id=battery_id or (record.battery_id if record else None),
                             line=line if line is not None else (record.line if record else None), source=source)


@functools.lru_cache(maxsize=None)
def space_group_crystal_system(number: int) -> str:
    """The crystal system of space group ``number`` (1..230), by pymatgen, as the CSV writes it (``Orthorhombic``)."""
    from types import SimpleNamespace

    from pymatgen.symmetry.groups import SpaceGroup

    try:  # the property reads only int_number: called on it alone, without building the group (5 ms each)
        return SpaceGroup.crystal_system.fget(SimpleNamespace(int_number=number)).capitalize()
    except AttributeError:  # a pymatgen whose property reads more of the group
        return SpaceGroup.from_int_number(number).crystal_system.capitalize()


def _control_character(text: str) -> str | None:
    """Why ``text`` cannot be an identifier: a control character or a line/paragraph separator (a NUL, which
    PostgreSQL refuses to store, a newline, which would split a printed line or a log), or None."""
    for position, char in enumerate(text, 1):
        if unicodedata.category(char) in ('Cc', 'Zl', 'Zp', 'Cf'):  # Cf: zero-width and direction marks, which
            return f'contains a control character (U+{ord(char):04X} at character {position})'  # hide a duplicate
    return None


def battery_id_key(battery_id: str) -> str:
    """What makes two battery ids one: their NFKC form ('é' and 'e' + U+0301, fullwidth 'ｍｐ' and 'mp' print
    alike and are one id)."""
    return unicodedata.normalize('NFKC', battery_id)


def validate_record(record: ElectrodeRecord, source: str | None = None) -> ElectrodeRecord:
    """Check one record; return it with derived fields (framework formula) filled in."""
    with warnings.catch_warnings():
        # pymatgen orders a reduced formula by electronegativity and warns, with its source line, for elements that
        # have none (Og, the noble gases): noise on the user's terminal, the formula is right
        warnings.filterwarnings('ignore', message='No Pauling electronegativity')
        return _validate_record(record, source)


#: The kind of value each field of a record and of a step holds (a record built by hand, or read from an edited
#: ``records.json``, is checked against it: ``True`` as a space group or a string voltage went through before).
_FIELD_KINDS = {'str': (str,), 'str | None': (str, type(None)), 'int | None': (int, type(None)),
                'float': (int, float), 'float | None': (int, float, type(None))}


def _kind_problem(item, skip=()) -> tuple[str, str] | None:
    """(field, why) for the first field of the dataclass ``item`` whose value is of another kind than it holds (a
    bool is no number), or a number that is not finite; None when all are."""
    for spec in dataclasses.fields(item):
        kinds = _FIELD_KINDS.get(spec.type)
        if spec.name in skip or kinds is None:
            continue
        value = getattr(item, spec.name)
        if value is None and type(None) not in kinds:
            return spec.name, f'{spec.name} is missing'
        if isinstance(value, bool) or not isinstance(value, kinds):
            wanted = 'a number' if float in kinds else 'an integer' if int in kinds else 'a string'
            return spec.name, f'{spec.name} must be {wanted}, got {type(value).__name__} {value!r:.40}'
        if isinstance(value, float) and not math.isfinite(value):
            return spec.name, f'{spec.name} must be a finite number, got {value!r}'
    return None


def _validate_record(record: ElectrodeRecord, source: str | None) -> ElectrodeRecord:
    fail = lambda message, name: _fail(message, record, name, source=source)  # noqa: E731
    problem = _kind_problem(record, skip=('line',))
    if problem:
        fail(problem[1], problem[0])
    if not isinstance(record.steps, (tuple, list)) or not all(isinstance(s, VoltageStep) for s in record.steps):
        fail(f'steps must be a sequence of VoltageStep, got {record.steps!r:.60}', 'adj_pairs')
    for index, step in enumerate(record.steps):
        problem = _kind_problem(step)
        if problem:
            fail(f'step {index}: {problem[1]}', 'adj_pairs')
    if not record.battery_id:
        fail('battery_id is empty', 'battery_id')
    for name in ('battery_id', 'battery_formula', 'id_charge', 'id_discharge'):
        control = _control_character(getattr(record, name) or '')
        if control:
            fail(control, name)
    if record.working_ion not in WORKING_IONS:
        fail(f'working ion {record.working_ion!r} is not one of {", ".join(WORKING_IONS)}', 'working_ion')
    compositions = {}
    for name in ('formula_charge', 'formula_discharge'):
        try:  # through the cached properties, so that featurizers later reuse the parsed compositions
            compositions[name] = getattr(record, name.replace('formula', 'composition'))
        except ValueError as exception:
            fail(str(exception), name)
    ion = record.working_ion
    # The frameworks as amount dicts (the same numbers as host_framework's Compositions, which are only built
    # where pymatgen's reduction is needed: frameworks that differ per formula unit, and a missing framework_formula).
    amounts_charge, atoms_charge = _framework_amounts(compositions['formula_charge'], ion)
    amounts_discharge, atoms_discharge = _framework_amounts(compositions['formula_discharge'], ion)
    if atoms_charge <= 0 or atoms_discharge <= 0:
        fail(f'no host framework left once {ion} is removed', 'formula_charge')
    x_charge = compositions['formula_charge'][ion] / atoms_charge
    x_discharge = compositions['formula_discharge'][ion] / atoms_discharge
    if x_charge == 0 and x_discharge == 0:
        fail(f'working ion {ion} is in neither formula ({record.formula_charge}, {record.formula_discharge})',
             'working_ion')
    for name in ('formula_charge', 'formula_discharge'):  # pymatgen drops a zero count: 'Fe0PO4' is PO4 to it
        formula = getattr(record, name)
        present = {str(el) for el in compositions[name]} | {ion}
        absent = sorted(symbol for symbol in set(_ELEMENT_SYMBOL.findall(formula))
                        if _ISOTOPES.get(symbol, symbol) not in present)
        if absent:
            fail(f'formula {formula!r} gives {", ".join(absent)} no atoms (a zero or vanishing count): only the '
                 f'working ion {ion} may be absent from a formula (as in Li0CoO2)', name)
    if math.isclose(x_charge, x_discharge, abs_tol=1e-9):
        fail(f'charged and discharged formulas hold the same amount of {ion} per host atom', 'formula_discharge')
    # x_discharge < x_charge happens in 22 Materials Project rows (e.g. mp-760302_Li, battery formula
    # Li4-1...): real MP data listing the end members the other way round. They are kept and reported by
    # read_electrodes_csv (see ElectrodeRecord.end_members_reversed).
    if not _almost_equal_amounts(amounts_charge, amounts_discharge, rtol=1e-3, atol=1e-6):
        # MP reduces each end member separately, and a user may write them in other formula units (Ni0.5Mn1.5O4
        # with Li2NiMn3O8): compare the frameworks per host atom (pymatgen's reduced composition leaves fractional
        # amounts as written, so Mn1.5Ni0.5O4 and Mn3NiO8 differed there)
        fractions_charge = {el: amount / atoms_charge for el, amount in amounts_charge.items()}
        fractions_discharge = {el: amount / atoms_discharge for el, amount in amounts_discharge.items()}
        if not _almost_equal_amounts(fractions_charge, fractions_discharge, rtol=1e-3, atol=1e-6):
            frame_charge, frame_discharge = Composition(amounts_charge), Composition(amounts_discharge)
            fail(f'charged and discharged host frameworks differ ({frame_charge.reduced_formula} vs '
                 f'{frame_discharge.reduced_formula})', 'formula_discharge')
    updates = {}
    if not record.framework_formula:
        updates['framework_formula'] = framework_key(Composition(amounts_discharge))
    else:
        # The grouping key of every framework-grouped split: a framework that is not the host of the formulas
        # would put the row into another group than its siblings (or a wrong one)
        try:
            given, reduced = _framework_fractions(record.framework_formula)
        except ValueError as exception:
            fail(str(exception), 'framework_formula')
        host = {el: amount / atoms_discharge for el, amount in amounts_discharge.items()}
        if not _almost_equal_amounts(given, host, rtol=1e-2, atol=1e-4):
            fail(f'framework {record.framework_formula!r} is not the host of {record.formula_discharge!r} without '
                 f'{ion} ({framework_key(Composition(amounts_discharge))})', 'framework_formula')
        if reduced != record.framework_formula:  # one spelling per framework ('O2Ti', 'Ti O2' -> 'TiO2')
            updates['framework_formula'] = reduced
    for side in ('charge', 'discharge'):
        number = getattr(record, f'{side}_space_group_number')
        if number is not None and not (isinstance(number, int) and 1 <= number <= 230):
            fail(f'space group number must be an integer in 1..230, got {number!r}', f'{side}_space_group_number')
        system = getattr(record, f'{side}_crystal_system')
        if system is not None:
            normalized = system.strip().capitalize()
            if normalized not in CRYSTAL_SYSTEMS:
                fail(f'crystal system {system!r} is not one of {", ".join(CRYSTAL_SYSTEMS)}', f'{side}_crystal_system')
            if normalized != system:
                updates[f'{side}_crystal_system'] = normalized
            if number is not None and normalized != space_group_crystal_system(number):  # both are features
                fail(f'space group {number} is {space_group_crystal_system(number)}, not {normalized} (the columns '
                     f'{side}_space_group_number and {side}_crystal_system disagree)', f'{side}_crystal_system')
    if record.num_steps is not None and (not isinstance(record.num_steps, int) or record.num_steps < 1):
        fail(f'num_steps must be a positive integer, got {record.num_steps!r}', 'num_steps')
    if record.num_steps is not None and record.steps and record.num_steps != len(record.steps):
        fail(f'num_steps is {record.num_steps} but adj_pairs lists {len(record.steps)} step(s)', 'num_steps')
    for name in ('capacity_grav', 'capacity_vol'):
        if (getattr(record, name) or 0) < 0:
            fail(f'{name} must not be negative, got {getattr(record, name)!r}', name)
    if record.average_voltage is not None and abs(record.average_voltage) > MAX_ABS_VOLTAGE:
        fail(f'average_voltage {record.average_voltage:g} V lies beyond +/-{MAX_ABS_VOLTAGE} V, which no insertion '
             'electrode reaches (a value in mV?)', 'average_voltage')
    for index, step in enumerate(record.steps):  # as the row's own columns; max_delta_volume is also a target
        problem = _step_problem(step)
        if problem:
            fail(f'step {index}: {problem}', 'adj_pairs')
    if updates:
        checked = dataclasses.replace(record, **updates)
        for name in ('composition_charge', 'composition_discharge'):  # same formulas: keep the parsed ones
            if name in record.__dict__:
                checked.__dict__[name] = record.__dict__[name]
    else:
        checked = record
    checked.__dict__[_VALIDATED] = True  # immutable record (frozen), so it stays valid; see is_validated
    return checked


def _step_problem(step: VoltageStep) -> str | None:
    """What is impossible in one voltage step (``adj_pairs`` element): a negative capacity or volume change, an ion
    fraction outside 0..1, a voltage no insertion electrode reaches; or None."""
    for name in ('capacity_grav', 'capacity_vol', 'max_delta_volume'):
        value = getattr(step, name)
        if value is not None and value < 0:
            return f'{name} must not be negative, got {value!r}'
    for name, key in (('frac_charge', 'fracA_charge'), ('frac_discharge', 'fracA_discharge')):
        value = getattr(step, name)
        if value is not None and not 0 <= value <= 1:
            return f'{key} is the fraction of the working ion, in 0..1, got {value!r}'
    if abs(step.average_voltage) > MAX_ABS_VOLTAGE:
        return (f'average_voltage {step.average_voltage:g} V lies beyond +/-{MAX_ABS_VOLTAGE} V, which no insertion '
                'electrode reaches')
    return None


#: Key in a record's ``__dict__`` set by :func:`validate_record` (not a field: equality, hashing, ``to_dict``,
#: ``dataclasses.replace`` and the JSON ignore it; a changed copy made by ``replace`` is not marked).
_VALIDATED = '_voltnet_validated'


def is_validated(record: ElectrodeRecord) -> bool:
    """Whether ``record`` is one that :func:`validate_record` returned (so it needs no second check)."""
    return getattr(record, '__dict__', {}).get(_VALIDATED) is True


#: A number as a CSV writes it: ASCII digits, a point, an exponent (``float`` alone also takes ``1_5`` as 15 and
#: other scripts' digits, so a typo became another value); inf is read to be refused as not finite (nan is missing).
_NUMBER = re.compile(r'[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(nan|inf|infinity)', re.ASCII | re.IGNORECASE)


def _number_text(value: str) -> bool:
    return _NUMBER.fullmatch(value) is not None


#: How spreadsheets, pandas (``na_rep``) and R write a missing number: read as an empty field, as ``pandas.read_csv``
#: reads them (a candidate list exported with ``NaN`` or ``NA`` in ``average_voltage`` is a list without voltages).
_MISSING = frozenset({'nan', '-nan', '+nan', 'na', 'n/a', '#n/a', '<na>', 'null', 'none'})


def _missing_text(value: str) -> bool:
    return not value or value.lower() in _MISSING


def _parse_int(value: str, name: str) -> int | None:
    value = value.strip()
    if _missing_text(value):
        return None
    try:
        if not _number_text(value):
            raise ValueError(value)
        number = float(value)
    except ValueError:
        raise ValueError(f'{name} must be an integer, got {value!r}') from None
    if not number.is_integer():
        raise ValueError(f'{name} must be an integer, got {value!r}')
    if abs(number) > 2 ** 31:  # a count or a space group, read through float: 1e300 is no datum
        raise ValueError(f'{name} is out of range: {value!r}')
    return int(number)


def _parse_float(value: str, name: str) -> float | None:
    value = value.strip()
    if _missing_text(value):
        return None
    try:
        if not _number_text(value):
            raise ValueError(value)
        number = float(value)
    except ValueError:
        raise ValueError(f'{name} must be a number, got {value!r}') from None
    if not math.isfinite(number):
        raise ValueError(f'{name} must be finite, got {value!r}')
    return number


def _ion_per_host_atom(composition: Composition, ion: str) -> tuple[float, Composition]:
    host = host_framework(composition, ion)
    return (composition[ion] / host.num_atoms if host.num_atoms else math.nan), host


def end_members_from_steps(formula_charge: str, formula_discharge: str, working_ion: str,
                           steps: Sequence[VoltageStep]) -> tuple[str, str] | None:
    """The end-member formulas, their ion content taken from the voltage steps, where the CSV's own formula
    columns disagree with them; None where they agree (or the steps name no formulas or another host).

    The seed-format CSV writes ``formula_charge`` / ``formula_discharge`` from ``battery_formula`` (emmet's
    ``'{:.2f}'`` text with its zeros stripped), so 1/8 reads 0.12 and 7/8 0.88, and a count of 10 loses its zero:
    ``Li0-10Fe5Co3O16`` became ``Li0-1...``, so 22 Li rows came to list the ion-rich member as charged. The steps
    of ``adj_pairs`` carry the Materials Project's own reduced formulas of the end members (the first step's charged
    member, the last step's discharged one), which the capacities agree with. The returned formulas keep the
    columns' host amount and change only the working ion's count (``Li0.12FeBO3`` -> ``Li0.125FeBO3``).
    """
    if not steps or not steps[0].formula_charge or not steps[-1].formula_discharge or working_ion not in WORKING_IONS:
        return None  # an ion outside the ten ('li', 'LI'): validate_record names it
    try:
        columns = [Composition(formula_charge), Composition(formula_discharge)]
        members = [Composition(steps[0].formula_charge), Composition(steps[-1].formula_discharge)]
    except Exception:  # noqa: BLE001 - the columns are checked by validate_record, the steps' text is informative
        return None
    formulas, changed = [], False
    for text, column, member in zip((formula_charge, formula_discharge), columns, members):
        x_column, host_column = _ion_per_host_atom(column, working_ion)
        x_member, host_member = _ion_per_host_atom(member, working_ion)
        if not (host_column.num_atoms and host_member.num_atoms and host_column.fractional_composition.almost_equals(
                host_member.fractional_composition, rtol=1e-3, atol=1e-6)):
            return None  # another host: not a rounding of the same electrode
        if math.isclose(x_column, x_member, rel_tol=1e-6, abs_tol=1e-9):
            formulas.append(text)
            continue
        # only the text emmet's battery_formula makes of the exact count: per the member's reduced host, computed as
        # emmet computes it (the float path decides a .xx5 rounding), '{:.2f}', '.00' dropped, then trailing zeros
        # (10 -> '1'); any other disagreement, or a host emmet would not write (not reduced), is the user's own
        reduced, factor = host_member.get_reduced_composition_and_factor()
        if not host_column.almost_equals(reduced, rtol=1e-6, atol=1e-9):
            return None
        exact = member[working_ion] / factor
        if not math.isclose(x_column * host_column.num_atoms, float(battery_formula_subscript(exact)),
                            rel_tol=1e-9, abs_tol=1e-9):
            return None
        changed = True
        count = f'{exact:.12g}'
        match = re.match(rf'{working_ion}(?![a-z])(\d+\.?\d*|\.\d+)?', text)
        if match:  # the column's own text, but for the ion's count
            formulas.append(f'{working_ion}{count}{text[match.end():]}')
        else:
            formulas.append(f'{working_ion}{count}{reduced.reduced_formula}')
    return tuple(formulas) if changed else None


def battery_formula_subscript(amount: float) -> str:
    """The working ion's count as emmet's ``get_battery_formula`` writes it (emmet.core.electrode)."""
    text = re.sub('.00$', '', f'{amount:.2f}')
    return text if text == '0' else text.rstrip('0')


def records_from_rows(rows: Iterable[dict[str, str]], source: str | None = None,
                      first_line: int = 2) -> list[ElectrodeRecord]:
    """Convert CSV-like rows (text values) into validated records.

    :param first_line: file line number of the first row (2 for a file with a header line).
    """
    return _records_from_numbered_rows(enumerate(rows, first_line), source)


def _records_from_numbered_rows(numbered_rows: Iterable[tuple[int, dict[str, str]]],
                                source: str | None) -> list[ElectrodeRecord]:
    """:func:`records_from_rows` for ``(file line, row)`` pairs."""
    records, corrected = [], []
    seen: dict[str, tuple[int, str]] = {}  # NFKC form of each battery_id -> (its line, the id as written)
    for line, row in numbered_rows:
        battery_id = (row.get('battery_id') or '').strip()
        for name in REQUIRED_COLUMNS:
            if not (row.get(name) or '').strip():
                _fail('required value is missing', field_name=name, line=line, source=source, battery_id=battery_id)
        same = battery_id_key(battery_id)  # 'é' and 'e' + U+0301, 'ｍｐ' and 'mp': one id (review)
        if same in seen:
            first, written = seen[same]
            spelt = '' if written == battery_id else ', spelt with other Unicode code points for the same text'
            _fail(f'duplicate battery_id (first seen on line {first}{spelt})', field_name='battery_id', line=line,
                  source=source, battery_id=battery_id)
        seen[same] = (line, battery_id)
        values: dict[str, Any] = {'battery_id': battery_id, 'line': line}
        current = None
        try:
            for name in ('formula_charge', 'formula_discharge', 'working_ion', 'framework_formula'):
                current = name
                values[name] = (row.get(name) or '').strip()
            for name in ('battery_formula', 'id_charge', 'id_discharge', 'charge_crystal_system',
                         'discharge_crystal_system'):
                current = name
                text = (row.get(name) or '').strip()
                # a pandas or R export writes a missing text as NaN or NA, as it does a missing number; a battery
                # formula 'Na' is sodium, not a gap, so that column keeps its text
                missing = _missing_text(text) and not (name == 'battery_formula' and text.lower() == 'na')
                values[name] = None if missing else text
            for name in ('num_steps', 'charge_space_group_number', 'discharge_space_group_number'):
                current = name
                values[name] = _parse_int(row.get(name) or '', name)
            for name in FLOAT_COLUMNS:
                current = name
                values[name] = _parse_float(row.get(name) or '', name)
            current = 'adj_pairs'
            text = (row.get('adj_pairs') or '').strip()
            values['steps'] = parse_adj_pairs('' if _missing_text(text) else text)
        except ValueError as exception:
            _fail(str(exception), field_name=current, line=line, source=source, battery_id=battery_id)
        exact = end_members_from_steps(values['formula_charge'], values['formula_discharge'], values['working_ion'],
                                       values['steps'])
        if exact:
            values['formula_charge'], values['formula_discharge'] = exact
            corrected.append(battery_id)
        records.append(validate_record(ElectrodeRecord(**values), source=source))
    if corrected:
        LOGGER.info('%s: %d row(s) take the end members\' ion content from adj_pairs, where formula_charge / '
                    'formula_discharge were rounded (0.12 for 1/8) or lost a zero (Li1 for Li10): %s', source,
                    len(corrected), ', '.join(corrected[:5]) + (' ...' if len(corrected) > 5 else ''))
    return records


def _rows_of_header_width(reader: csv.DictReader, width: int,
                          source: str | None) -> Iterator[tuple[int, dict[str, str]]]:
    """``(file line, row)`` for the rows of ``reader``, the line where the row starts (DictReader skips blank
    lines, and a quoted field may span lines, so rows and lines differ), refusing a row with more or fewer fields
    than the header (DictReader would file the extra ones under ``None`` and fill missing ones with ``None``: a row
    cut short after ``adj_pairs`` would load with no voltage and no symmetry)."""
    for row in reader:
        if all(not (value or '').strip() for value in [*row.values(), *(row.get(None) or ())] if isinstance(value, str)):
            continue  # a row of empty fields (',,,,' as spreadsheets write below the data, or spaces): a blank line
        line = reader.line_num - sum(value.count('\n') for value in row.values() if isinstance(value, str)) \
            - sum(value.count('\n') for value in row.get(None) or ())
        if None in row or None in row.values():
            count = width + len(row.get(None) or ()) if None in row else sum(v is not None for v in row.values())
            raise ElectrodeDataError(f'the row has {count} fields, the header {width}', source=source,
                                     line=line, battery_id=(row.get('battery_id') or '').strip() or None)
        yield line, row


def decode_csv(data: bytes, source: str | None = None) -> str:
    """The text of a CSV file's bytes: UTF-8, a leading byte-order mark (Excel's "CSV UTF-8") dropped, since it is
    not part of a column name. :raises ElectrodeDataError: naming the line of the first byte that is not UTF-8."""
    try:
        return data.decode('utf-8-sig')
    except UnicodeDecodeError as exception:
        line = data.count(b'\n', 0, exception.start) + 1
        raise ElectrodeDataError(f'not UTF-8 text: byte {data[exception.start]:#04x} at offset {exception.start} '
                                 '(save the file as UTF-8)', source=source, line=line) from None


def _refuse_unclosed_quote(text: str, source: str | None) -> None:
    """Refuse a CSV text with a quoted field that is never closed, naming the line where it opens. As the csv
    module reads it (the excel dialect), a double quote opens a quoted field only at the start of a field; inside
    one, a doubled quote is a quote and a single one closes it; elsewhere a quote is text (``12" pellet``). A
    field left open runs to the end of the file, or to the next quoted field's opening quote, which then ends it
    inside a field: both are refused here. The csv module read the rest of the file into that field, and the row
    then had 'the wrong number of fields' (68, say), or the line before the quote was named."""
    quotes = [match.start() for match in re.finditer('"', text)]
    quoted, opened, k = False, None, 0
    while k < len(quotes):
        position = quotes[k]
        if quoted:
            if k + 1 < len(quotes) and quotes[k + 1] == position + 1:
                k += 2  # a doubled quote inside the field
                continue
            after = text[position + 1:position + 81].lstrip(' \t')[:1]
            if after and after not in ',\r\n':
                break  # not the end of a field: the quote that opened it was never closed (or one is not doubled)
            quoted = False
        elif position == 0 or text[position - 1] in ',\r\n':
            quoted, opened = True, position
        k += 1
    else:
        if not quoted:
            return
    opened_on = text.count('\n', 0, opened) + 1
    first = text.split('\n')[opened_on - 1]
    battery_id = first.split(',', 1)[0].strip().strip('"') or None
    raise ElectrodeDataError('a double quote opened on this line is never closed, or a quote inside its field is not '
                             'doubled (the csv reader would read the rest of the file, or up to the next quote, into '
                             'one field)', source=source, line=opened_on, battery_id=battery_id)


def read_electrodes_csv(path: str | os.PathLike | io.TextIOBase, source: str | None = None,
                        report_reversed: bool = True) -> list[ElectrodeRecord]:
    """Read a seed-format CSV into validated :class:`ElectrodeRecord` objects. Column names are read without
    surrounding spaces; a column the reader does not know is left out, with a warning where its name is close to
    one it knows (a typo would otherwise drop, say, the space groups in silence).

    :param report_reversed: log a warning for rows that list the ion-rich end member as charged (callers that
        report them otherwise turn it off).
    :raises ElectrodeDataError: naming the line, battery_id and field of the first bad value.
    """
    if isinstance(path, (str, os.PathLike)):
        source = source or os.fspath(path)
        with open(path, 'rb') as handle:
            text = decode_csv(handle.read(), source)
        return read_electrodes_csv(io.StringIO(text, newline=''), source=source, report_reversed=report_reversed)
    if source is None:  # a handle of a file: named as the file is (it was 'None: ...')
        name = getattr(path, 'name', None)
        source = name if isinstance(name, str) else '<stream>'
    if isinstance(path, io.StringIO) and path.tell() == 0:  # a file's text, or a SinglefileData's
        _refuse_unclosed_quote(path.getvalue(), source)
    reader = csv.DictReader(path)
    try:
        # a byte-order mark that the handle's encoding kept ('utf-8', not 'utf-8-sig': Excel's CSV) is no name
        header = [name.strip() for name in reader.fieldnames or []]
        if header:
            header[0] = header[0].lstrip('\ufeff').strip()
        reader.fieldnames = header
        for name in header:
            if name not in CSV_COLUMNS:
                close = difflib.get_close_matches(name, CSV_COLUMNS, n=1, cutoff=0.8)
                if close:
                    LOGGER.warning('%s: column %r is not read (did you mean %r?)', source, name, close[0])
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            hint = ''
            for delimiter, name in ((';', 'semicolons'), ('\t', 'tabs')):  # a spreadsheet's regional CSV, a TSV
                if any(delimiter in column and sum(c in column for c in missing) >= 2 for column in header):
                    hint = (f' (the header is separated by {name}, not commas: save the file as comma-separated '
                            'values)')
                    break
            raise ElectrodeDataError(f'missing required column(s): {", ".join(missing)}{hint}', source=source,
                                     line=1)
        repeated = sorted({c for c in header if c and header.count(c) > 1})  # unnamed ones are not read (Excel
        # writes empty columns after the last one)
        if repeated:  # DictReader would keep the last of them
            raise ElectrodeDataError(f'column(s) {", ".join(repeated)} appear more than once in the header',
                                     source=source, line=1)
        records = _records_from_numbered_rows(_rows_of_header_width(reader, len(header), source), source)
    except csv.Error as exception:  # e.g. a field over csv.field_size_limit(); line_num: the lines read before it
        raise ElectrodeDataError(f'not readable as CSV: {exception}', source=source,
                                 line=reader.line_num + 1) from None
    if not records:
        raise ElectrodeDataError('no electrode rows', source=source)
    reversed_ids = [r.battery_id for r in records if r.end_members_reversed]
    if reversed_ids and report_reversed:
        LOGGER.warning('%s: %d row(s) list the ion-rich end member as charged (kept as given): %s', source,
                       len(reversed_ids), ', '.join(reversed_ids[:5]) + (' ...' if len(reversed_ids) > 5 else ''))
    return records


def _step_repr(step: VoltageStep) -> str:
    inverse = {v: k for k, v in STEP_FIELDS.items()}
    parts = []
    for f in dataclasses.fields(step):
        value = getattr(step, f.name)
        if value is None:
            continue
        key = inverse[f.name]
        if key.startswith('id_'):
            parts.append(f'{key}=MPID({value})')
        elif isinstance(value, str):
            parts.append(f'{key}={value!r}')
        else:
            parts.append(f'{key}={value!r}')
    return 'InsertionVoltagePairDoc(' + ', '.join(parts) + ')'


def write_electrodes_csv(records: Sequence[ElectrodeRecord], path: str | os.PathLike) -> None:
    """Write records back in the seed's CSV layout (``adj_pairs`` in the same repr grammar)."""
    with open(path, 'w', newline='', encoding='utf-8') as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, lineterminator='\n')  # LF, as Unix tools expect
        writer.writeheader()
        for record in records:
            row = {}
            for name in CSV_COLUMNS:
                if name == 'adj_pairs':
                    row[name] = '[' + ', '.join(_step_repr(s) for s in record.steps) + ']' if record.steps else ''
                else:
                    value = getattr(record, name)
                    row[name] = '' if value is None else value
            writer.writerow(row)


def records_to_json(records: Sequence[ElectrodeRecord]) -> str:
    return json.dumps([r.to_dict() for r in records], sort_keys=True)


def records_from_json(text: str) -> list[ElectrodeRecord]:
    return [ElectrodeRecord.from_dict(d) for d in json.loads(text)]


def write_files_atomically(directory: str | os.PathLike, contents: dict[str, bytes]) -> None:
    """Write ``{file name: bytes}`` into ``directory`` whole or not at all: every file goes to a temporary name
    first and is renamed into place only once all of them are written; what is left of a failed attempt is removed.

    The temporary names are short and unique (``.voltnet-<random>.partial``): a name of 250 characters can be written,
    and two writers into one directory never share a temporary file. A file that replaces another keeps that one's
    permissions (a private ``chmod 600`` output stayed private only until the first rewrite); a new one gets those a
    plain ``open`` gives (the umask's). SIGINT and SIGTERM are held back while the files are renamed into place, so
    that a Ctrl-C cannot land between two renames and leave one new file beside an old one (a model's new weights
    beside its old config, found by review); they act once the renames are done. A SIGKILL or a crash there still
    can: the model's sha256 checks then refuse the mix."""
    directory = Path(directory)
    staged = []
    try:
        for name, content in contents.items():
            while True:
                partial = directory / f'.voltnet-{secrets.token_hex(6)}.partial'
                try:
                    handle = open(partial, 'xb')  # noqa: SIM115 - closed below; 'x': never another's file
                except FileExistsError:
                    continue
                break
            staged.append((partial, directory / name))
            with handle:
                handle.write(content)
            try:
                mode = os.stat(directory / name).st_mode
            except OSError:
                mode = None
            if mode is not None and stat.S_ISREG(mode):
                os.chmod(partial, stat.S_IMODE(mode))
        with termination_deferred():
            for partial, final in staged:
                os.replace(partial, final)
    finally:
        for partial, _ in staged:
            partial.unlink(missing_ok=True)


@contextlib.contextmanager
def termination_deferred():
    """SIGINT and SIGTERM held back for the block and raised again when it ends, to the handlers that were there
    (a Ctrl-C then raises KeyboardInterrupt, a SIGTERM without a handler ends the process). Python runs signal
    handlers in the main thread whichever thread the kernel gave the signal to, so holding handlers are installed
    there; blocking the signal in the main thread alone let another thread of the process (torch's, AiiDA's) take
    it. Elsewhere than in the main thread, or for a handler not set from Python, nothing is held."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {}
    for number in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(number)
        if handler is not None:  # None: set outside Python, which could not be put back
            previous[number] = handler
            signal.signal(number, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in dict.fromkeys(caught):
            signal.raise_signal(number)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()
