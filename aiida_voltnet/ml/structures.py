"""Electrode records from a pair of pymatgen structures (e.g. relaxed DFT cells of the charged and discharged
end members), so that the featurizers see the same fields as for Materials Project rows."""
from __future__ import annotations

import math
import numbers
import warnings
from collections import defaultdict
from fractions import Fraction

import numpy as np
from pymatgen.core import Composition, DummySpecies, Element, IStructure, Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

from .featurizers import ROUNDING_DENOMINATOR, ROUNDING_TOLERANCE, InputWarning, RoundedAmountsWarning
from .records import (WORKING_IONS, ElectrodeDataError, ElectrodeRecord, framework_key, host_framework,
                      validate_record)

__all__ = ['record_from_structures', 'symmetry_of', 'host_framework', 'same_framework', 'FrameworkMismatchWarning',
           'SHIPPED_PAIRS', 'shipped_pair']


def _symprec_problem(symprec) -> str | None:
    if isinstance(symprec, bool) or not isinstance(symprec, numbers.Real) or not 0 < symprec < math.inf:
        return f'symprec must be a positive finite tolerance in angstrom, got {symprec!r}'
    return None


def _bare(structure: Structure) -> Structure:
    """``structure`` without oxidation states (a copy where it had any, Li0+ included; itself otherwise)."""
    if any(getattr(species, 'oxi_state', None) is not None for species in structure.composition):
        structure = structure.copy()
        structure.remove_oxidation_states()
    return structure


def _geometry_problem(structure: Structure) -> str | None:
    """Why the cell of ``structure`` cannot be analysed (spglib crashes the interpreter on NaN geometry), or None."""
    if not np.isfinite(structure.lattice.matrix).all():
        return 'its lattice vectors are not all finite numbers'
    if len(structure) and not np.isfinite(structure.frac_coords).all():
        bad = int(np.flatnonzero(~np.isfinite(structure.frac_coords).all(axis=1))[0])
        return f'site {bad} ({structure[bad].species_string}) has coordinates that are not finite numbers'
    if not structure.lattice.volume > 1e-8:
        return f'its cell has no volume ({structure.lattice.volume:g} A^3)'
    return None


def symmetry_of(structure: Structure, symprec: float = 0.1) -> tuple[int, str]:
    """Space-group number and crystal system (capitalized, as in MP) of ``structure``.

    :raises ValueError: for a ``symprec`` that is not a positive finite number (spglib crashed the interpreter on
        a negative or NaN one).
    """
    message = _symprec_problem(symprec)
    if message:
        raise ValueError(message)
    problem = _geometry_problem(structure)
    if problem:
        raise ValueError(problem)
    # Fe2+ and Fe3+ on sites of one orbit are one element to the Materials Project's symmetry (its structures carry
    # no oxidation states): a cell decorated per site had a lower space group than the same atoms bare
    structure = _bare(structure)
    analyzer = SpacegroupAnalyzer(structure, symprec=symprec)
    return analyzer.get_space_group_number(), analyzer.get_crystal_system().capitalize()


def _element_composition(structure: Structure, name: str, label: str) -> Composition:
    """The element amounts of ``structure`` (oxidation states dropped); refuses dummy species and vacancies, which
    are no atoms of the electrode."""
    dummies = sorted({str(species) for species in structure.composition
                      if isinstance(species, DummySpecies) or not Element.is_valid_symbol(species.symbol)})
    if dummies:
        raise ElectrodeDataError(f'the {name} structure has dummy or vacancy species {", ".join(dummies)}: give the '
                                 'atoms of the electrode only (a partly occupied site holds its elements with their '
                                 'occupancies)', battery_id=label, field='structures')
    return structure.composition.element_composition


def _formula(composition: Composition, working_ion: str) -> str:
    """Formula with the working ion first and an explicit zero count, as MP writes charged members (Li0CoO2)."""
    amounts = composition.get_el_amt_dict()
    ion_amount = amounts.pop(working_ion, 0.0)
    rest = Composition(amounts).formula.replace(' ', '')
    nearest = round(ion_amount, 9)  # 100.00000000000287 (float noise of the scaling) is 100
    if abs(nearest - ion_amount) <= 1e-12 * max(1.0, abs(ion_amount)):
        ion_amount = nearest
    count = f'{ion_amount:g}'
    if float(count) != ion_amount:  # 1/3 is not 0.333333: the shortest text that reads back as the same number
        count = repr(ion_amount)
    return f'{working_ion}{count}{rest}'


def _rounded_occupancies(structure: Structure, working_ion: str, name: str) -> str | None:
    """Why the partial occupancies of ``structure`` look rounded (0.33 for 1/3, as CIFs of NMC111 often give
    them), or None: as for a formula such as ``Ni0.33Mn0.33Co0.34O2`` (``featurizers.RoundedAmountsWarning``), the
    host's smallest integer formula unit is then far larger than with the simple fractions, and so are the
    features that count atoms per formula unit. Each occupancy is compared with the nearest fraction of
    denominator up to ``ROUNDING_DENOMINATOR``."""
    snapped, changed = defaultdict(float), False
    for site in structure:
        for species, occupancy in site.species.items():
            if species.symbol == working_ion:  # the ion's content is free (Li0.1); only the host's amounts count
                continue
            amount = occupancy
            if occupancy < 1:
                fraction = Fraction(occupancy).limit_denominator(ROUNDING_DENOMINATOR)
                if fraction <= 0 or abs(float(fraction) - occupancy) > ROUNDING_TOLERANCE:
                    return None  # not near a simple fraction: a composition as meant
                amount, changed = float(fraction), changed or float(fraction) != occupancy
            snapped[species.symbol] += amount
    if not changed:
        return None
    written = host_framework(structure.composition.element_composition, working_ion)
    simple = host_framework(Composition(snapped), working_ion)
    (_, written_units), (formula, simple_units) = (written.get_integer_formula_and_factor(),
                                                   simple.get_integer_formula_and_factor())
    written_atoms, simple_atoms = written.num_atoms / written_units, simple.num_atoms / simple_units
    if written_atoms < 4 * simple_atoms:
        return None
    return (f'the {name} structure\'s partial occupancies look rounded: its host is read as {written_atoms:.0f} '
            f'atoms per integer formula unit, where {Composition(formula).reduced_formula} (the occupancies as '
            f'simple fractions) has {simple_atoms:.0f}. The features count atoms per integer formula unit, so a '
            'rounded host is featurized unlike the electrode it stands for: give the exact fractions (0.333333, '
            'not 0.33)')


class FrameworkMismatchWarning(InputWarning):
    """The charged and discharged structures have the same host composition but are not one host framework:
    pymatgen's ``StructureMatcher`` (the working ion ignored, volumes scaled, supercells tried) finds no match, as
    between rutile and layered CoO2. A voltage between them includes the energy of a phase change of the host, as no
    Materials Project insertion electrode's does (and so no training row's)."""


def _host_sublattice(structure: Structure, working_ion: str) -> Structure:
    """``structure`` without oxidation states and without the working ion (a copy): the host framework's sites."""
    host = _bare(structure).copy()
    host.remove_species([working_ion])
    return host


def same_framework(charged: Structure, discharged: Structure, working_ion: str) -> bool | None:
    """Whether ``charged`` and ``discharged`` are one host framework (see :class:`FrameworkMismatchWarning`); None
    where they are not compared: a disordered host (partial occupancies of the host's own sites have no one
    arrangement to match), an empty one, and cells that the matcher fails on. Partial occupancies of the working
    ion's sites alone (``Li0.5CoO2`` written as half-filled Li sites) do not stop the comparison: the ion is left out
    of it (review: such a cell switched the check off)."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    # The match is between element arrangements of the host: Li+ is the Li left out, and Fe2+ in one member is the
    # Fe3+ of the other (a relaxation's output decorated by oxidation-state guesses is no other framework)
    charged, discharged = (_host_sublattice(structure, working_ion) for structure in (charged, discharged))
    if not (len(charged) and len(discharged) and charged.is_ordered and discharged.is_ordered):
        return None
    matcher = StructureMatcher(scale=True, attempt_supercell=True)
    try:
        return bool(matcher.fit(charged, discharged))
    except Exception:  # noqa: BLE001 - a matcher failure is no finding about the pair
        return None


def record_from_structures(charged: Structure, discharged: Structure, working_ion: str,
                           battery_id: str | None = None, symprec: float = 0.1) -> ElectrodeRecord:
    """Build an :class:`ElectrodeRecord` from the charged (ion-poor) and discharged (ion-rich) structures.

    The two formulas are written per the same amount of host framework, so the ion content change is right.

    :raises ElectrodeDataError: if the working ion is unknown, the host frameworks differ, or the discharged
        structure does not hold more of the working ion than the charged one.
    """
    label = battery_id or 'structure pair'
    if working_ion not in WORKING_IONS:
        raise ElectrodeDataError(f'working ion {working_ion!r} is not one of {", ".join(WORKING_IONS)}',
                                 battery_id=label, field='working_ion')
    message = _symprec_problem(symprec)
    if message:
        raise ElectrodeDataError(message, battery_id=label, field='symprec')
    for name, structure in (('charged', charged), ('discharged', discharged)):
        if not isinstance(structure, IStructure):  # a Molecule has no lattice (an AttributeError, before)
            raise ElectrodeDataError(f'the {name} structure is a {type(structure).__name__}, not a periodic '
                                     'pymatgen Structure: a bulk electrode crystal is needed', battery_id=label,
                                     field='structures')
        if not len(structure):
            raise ElectrodeDataError(f'the {name} structure has no sites', battery_id=label, field='structures')
        problem = _geometry_problem(structure)
        if problem:
            raise ElectrodeDataError(f'the {name} structure ({structure.composition.reduced_formula}): {problem}',
                                     battery_id=label, field='structures')
    # an immutable IStructure as a Structure: the steps below work on copies they change
    charged, discharged = (s if isinstance(s, Structure) else Structure.from_sites(s) for s in (charged, discharged))
    # Element amounts: a site of Li and one of Li+ are both Li (pymatgen's Composition[Element] sums the species of
    # a symbol, so dividing a mixed composition counted some twice).
    compositions = {name: _element_composition(structure, name, label)
                    for name, structure in (('charged', charged), ('discharged', discharged))}
    if compositions['charged'][working_ion] == 0 and compositions['discharged'][working_ion] == 0:
        raise ElectrodeDataError(f'working ion {working_ion} is in neither structure '
                                 f'({charged.composition.reduced_formula}, {discharged.composition.reduced_formula})',
                                 battery_id=label, field='working_ion')
    host_charged = host_framework(compositions['charged'], working_ion)
    host_discharged = host_framework(compositions['discharged'], working_ion)
    for name, host, structure in (('charged', host_charged, charged), ('discharged', host_discharged, discharged)):
        if host.num_atoms == 0:
            raise ElectrodeDataError(f'the {name} structure ({structure.composition.reduced_formula}) holds nothing '
                                     f'but {working_ion}: no host framework', battery_id=label, field='structures')
    # One unit of the smallest integer formula of each host (a disordered Co0.5Ni0.5O2 cell is half a CoNiO4, and
    # its ordered 2x1x1 supercell one): pymatgen's reduced composition leaves fractional amounts as they are.
    (formula_charged, units), (formula_discharged, units_discharged) = (
        host_charged.get_integer_formula_and_factor(), host_discharged.get_integer_formula_and_factor())
    rounded = {name: _rounded_occupancies(structure, working_ion, name)
               for name, structure in (('charged', charged), ('discharged', discharged))}
    if Composition(formula_charged) == Composition(formula_discharged):
        charged_comp = compositions['charged'] / units
        discharged_comp = compositions['discharged'] / units_discharged
    elif host_charged.fractional_composition.almost_equals(host_discharged.fractional_composition, rtol=1e-3):
        # the same host within the tolerance formulas get (occupancies 0.3333 in one cell, 1/3 in the other):
        # both written per the smaller of the two integer formula units (the exact cell's), by their host atoms,
        # whichever of the two cells is the rounded one
        # ... and both hosts written AS the exact cell's integer formula (review: only the scale was taken from it,
        # so a rounded discharged host stayed Mn0.9999Co1.0002Ni0.9999O6 and was featurized as a 30000-atom unit)
        formula_charged = min(formula_charged, formula_discharged, key=lambda formula: Composition(formula).num_atoms)
        exact = Composition(formula_charged)
        # the ion per unit of the host's most abundant element (the anion, whose sites are whole), not per host
        # atom: a host rounded to 0.333 has 8.997 atoms where the exact one has 9 (review: x = 3.001 one way round)
        anchor = max(exact, key=lambda element: (exact[element], str(element)))
        charged_comp, discharged_comp = (
            exact + Composition({working_ion: compositions[name][working_ion] * exact[anchor] / host[anchor]})
            for name, host in (('charged', host_charged), ('discharged', host_discharged)))
        rounded = {}  # both hosts are the exact cell's formula unit: the rounded cell's amounts are not used
    else:
        hint = ''.join(f'; {message}' for message in rounded.values() if message)
        raise ElectrodeDataError(
            f'host frameworks differ: charged {Composition(formula_charged).reduced_formula}, discharged '
            f'{Composition(formula_discharged).reduced_formula} (both must be the same framework with different '
            f'{working_ion} content){hint}', battery_id=label, field='structures')
    rounded_messages = [message for message in rounded.values() if message]
    if discharged_comp[working_ion] <= charged_comp[working_ion] + 1e-9:
        raise ElectrodeDataError(
            f'the discharged structure ({discharged.composition.reduced_formula}) must hold more {working_ion} per '
            f'host formula unit than the charged one ({charged.composition.reduced_formula}): the charged member is '
            'the ion-poor one' + (', swap them' if charged_comp[working_ion] > discharged_comp[working_ion] + 1e-9
                                  else ''),
            battery_id=label, field='structures')
    symmetry = {}
    for side, structure in (('charge', charged), ('discharge', discharged)):
        try:
            symmetry[side] = symmetry_of(structure, symprec)
        except ValueError as exception:  # spglib found none: pymatgen's bare 'Unable to determine symmetry'
            raise ElectrodeDataError(
                f'the {side}d structure ({structure.composition.reduced_formula}): its symmetry could not be '
                f'determined ({exception}; atoms closer than symprec {symprec} A to each other?)',
                battery_id=label, field=f'{side}_space_group_number') from None
    (sg_charge, system_charge), (sg_discharge, system_discharge) = symmetry['charge'], symmetry['discharge']
    record = ElectrodeRecord(
        battery_id=label,
        formula_charge=_formula(charged_comp, working_ion),
        formula_discharge=_formula(discharged_comp, working_ion),
        working_ion=working_ion,
        framework_formula=framework_key(Composition(formula_charged)),
        charge_space_group_number=sg_charge,
        charge_crystal_system=system_charge,
        discharge_space_group_number=sg_discharge,
        discharge_crystal_system=system_discharge,
        num_steps=1,
    )
    try:
        record = validate_record(record)
    except ElectrodeDataError as exception:  # e.g. 0.3333 occupancies read as a 30000-atom unit with 20000 O
        if not rounded_messages:
            raise
        raise ElectrodeDataError(f'{exception.reason}; {"; ".join(rounded_messages)}', battery_id=label,
                                 field=exception.field) from None
    for message in rounded_messages:
        warnings.warn(f'{label}: {message}', RoundedAmountsWarning, stacklevel=2)
    if same_framework(charged, discharged, working_ion) is False:
        warnings.warn(
            f'{label}: the charged ({charged.composition.reduced_formula}, space group {sg_charge}) and discharged '
            f'({discharged.composition.reduced_formula}, space group {sg_discharge}) structures are not one host '
            f'framework (pymatgen StructureMatcher, {working_ion} ignored, volumes scaled): a voltage between them '
            'includes a phase change of the host, unlike any Materials Project insertion electrode the model learnt '
            f'from; give two members of one framework (the charged cell made from the discharged one by removing '
            f'{working_ion}, say, then relaxed)', FrameworkMismatchWarning, stacklevel=2)
    return record


#: Example pairs built from structures that ship with pymatgen (``pymatgen/util/structures``): the discharged
#: cell as shipped, the charged one with every working ion removed (an unrelaxed delithiated host).
SHIPPED_PAIRS = {
    'LiFePO4': ('LiFePO4', 'Li'),
    'NaFePO4': ('NaFePO4', 'Na'),
    'Li3V2(PO4)3': ('Li3V2(PO4)3', 'Li'),
}


def shipped_pair(name: str) -> tuple[Structure, Structure, str]:
    """(charged, discharged, working_ion) for one of :data:`SHIPPED_PAIRS`, from pymatgen's own files."""
    import os

    import pymatgen.util

    try:
        filename, ion = SHIPPED_PAIRS[name]
    except KeyError:
        raise ValueError(f'unknown shipped pair {name!r}; choose one of {", ".join(SHIPPED_PAIRS)}') from None
    path = os.path.join(os.path.dirname(pymatgen.util.__file__), 'structures', f'{filename}.json')
    discharged = Structure.from_file(path)
    discharged.remove_oxidation_states()  # some shipped files carry oxidation states that StructureData refuses
    charged = discharged.copy()
    charged.remove_species([species for species in charged.composition if species.symbol == ion])
    return charged, discharged, ion
