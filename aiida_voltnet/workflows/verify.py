"""``VerifyWorkChain`` (``voltnet.verify``): the DFT average voltage of one electrode, from Quantum ESPRESSO total
energies of its charged cell, its discharged cell and the working-ion metal, linked to the machine-learning
prediction for the same pair.

Each total energy is a ``PwBaseWorkChain`` (or a ``PwRelaxWorkChain`` when ``settings.relax_type`` asks for it) of
aiida-quantumespresso, all three with the same cutoffs, k-point density and smearing so that their energies can be
subtracted. The voltage is computed by the ``voltnet.dft_voltage`` calculation function from energies per formula
unit of the host framework, V = -[E(discharged) - E(charged) - Δx·E(metal)] / (Δx·z), so the graph reads: structures
-> pw.x calculations -> energies -> DFT voltage, and beside it model -> ML voltage -> difference.
"""
from __future__ import annotations

import math

from aiida import orm
from aiida.engine import ToContext, WorkChain, if_

from aiida_voltnet.calculations import functions
from aiida_voltnet.calculations.dft import compare_voltages, electrode_energies, energy_per_atom, ion_metal_cell
from aiida_voltnet.calculations.functions import dft_voltage, predict_structure_pair
from aiida_voltnet.data.model import VoltageModelData
from aiida_voltnet.dft import DEBIAN_PBESOL_FAMILY, ion_metal_structure, missing_pseudos
from aiida_voltnet.ml.featurizers import InputWarning

from .protocols import ProtocolMixin, merge_job_options
from .train import step_metadata

__all__ = ('VerifyWorkChain', 'SETTINGS_KEYS', 'pw_builder', 'load_pseudo_family')

#: Keys of the ``settings`` Dict (see ``protocols/verify.yaml`` for their meaning and defaults).
SETTINGS_KEYS = ('cutoff_stringency', 'kpoints_distance', 'spin_polarized', 'magnetic_moment', 'relax_type',
                 'smearing', 'degauss', 'conv_thr_per_atom')
RELAX_TYPES = ('none', 'positions', 'positions_cell')
#: The smearing names pw.x reads (SYSTEM.smearing).
SMEARINGS = ('gaussian', 'gauss', 'methfessel-paxton', 'm-p', 'mp', 'marzari-vanderbilt', 'cold', 'm-v', 'mv',
             'fermi-dirac', 'f-d', 'fd')


# -- building the pw.x work chains -----------------------------------------------------------------------------------
def load_pseudo_family(label: str, stringency: str | None = None):
    """The aiida-pseudo family ``label``; with ``stringency``, one that recommends cutoffs at that stringency.

    :raises ValueError: naming the command that installs the family, or the stringencies it has.
    """
    from aiida_pseudo.groups.family import PseudoPotentialFamily

    families = orm.QueryBuilder().append(PseudoPotentialFamily, filters={'label': label}).all(flat=True)
    if len(families) != 1:
        raise ValueError(f'pseudopotential family {label!r} is not installed in this profile (found {len(families)}); '
                         f'`voltnet dft-setup` installs {DEBIAN_PBESOL_FAMILY!r} from Debian\'s quantum-espresso-data')
    family = families[0]
    if stringency is not None:
        if not hasattr(family, 'get_cutoff_stringencies'):
            raise ValueError(f'pseudopotential family {label!r} recommends no cutoffs; settings.cutoff_stringency '
                             'needs a family that does (e.g. `voltnet dft-setup`\'s)')
        if stringency not in family.get_cutoff_stringencies():
            raise ValueError(f'pseudopotential family {label!r} has no cutoff stringency {stringency!r} '
                             f'(settings.cutoff_stringency); it has {", ".join(family.get_cutoff_stringencies())}')
    return family


def _is_magnetic_symbol(symbol: str) -> bool:
    """Whether atoms of ``symbol`` start with a magnetic moment: transition metals and rare earths, except those
    without open d or f shells in any compound or metal here: group 12 (Zn, Cd, Hg: d10) and Sc, Y (only ever 3+,
    d0; both working ions or their metal references, which docs/dft.md says get no spin)."""
    from pymatgen.core import Element

    element = Element(symbol)
    if element.group == 12 or symbol in ('Sc', 'Y'):
        return False
    return element.is_transition_metal or element.is_rare_earth


def _is_magnetic(structure: orm.StructureData) -> bool:
    return any(_is_magnetic_symbol(symbol) for symbol in structure.get_symbols_set())


def pw_builder(code: orm.AbstractCode, structure: orm.StructureData, settings: dict, options: dict,
               pseudo_family: str, relax: str = 'none', cutoff_elements=None):
    """A ``PwBaseWorkChain`` (``relax == 'none'``) or ``PwRelaxWorkChain`` builder for ``structure`` with the
    verification ``settings``: aiida-quantumespresso's ``fast`` protocol, then our cutoffs (the family's recommended
    ones at ``cutoff_stringency``), k-point distance, smearing and convergence threshold on top. ``options`` update
    the job options of our default protocol (serial pw.x, one process).

    :param cutoff_elements: the elements whose recommended cutoffs are taken (the highest of them), default the
        structure's: the cells whose energies are subtracted must share them (charged, discharged and metal), and a
        family such as SSSP recommends other cutoffs per element."""
    from aiida_quantumespresso.common.types import RelaxType, SpinType
    from aiida_quantumespresso.workflows.pw.base import PwBaseWorkChain
    from aiida_quantumespresso.workflows.pw.relax import PwRelaxWorkChain

    # The protocol's job options, updated by the given ones; `withmpi` follows the code when the code says, and
    # an explicit `withmpi` that contradicts the code is refused (it was silently replaced by the code's value)
    conflict = _withmpi_conflict(code, options)
    if conflict:  # VerifyWorkChain refuses this at launch
        raise ValueError(conflict)
    options = job_options(options)
    if getattr(code, 'with_mpi', None) is not None:
        options['withmpi'] = bool(code.with_mpi)
    family = load_pseudo_family(pseudo_family)
    elements = tuple(sorted(set(cutoff_elements) | structure.get_symbols_set())) if cutoff_elements else None
    ecutwfc, ecutrho = family.get_recommended_cutoffs(
        **({'elements': elements} if elements else {'structure': structure}),
        stringency=settings['cutoff_stringency'], unit='Ry')
    base = {
        'pseudo_family': pseudo_family,
        'kpoints_distance': settings['kpoints_distance'],
        'meta_parameters': {'conv_thr_per_atom': settings['conv_thr_per_atom']},
        'pw': {'parameters': {'SYSTEM': {'ecutwfc': ecutwfc, 'ecutrho': ecutrho, 'smearing': settings['smearing'],
                                         'degauss': settings['degauss']}}},
    }
    spin = {'spin_type': SpinType.NONE}
    if settings['spin_polarized'] and _is_magnetic(structure):
        # Start every transition metal at `magnetic_moment` (low spin), not at aiida-quantumespresso's 5 muB for Co
        # and Ni: from 5 muB the SCF of CoO2 oscillated for 50+ steps and LiCoO2 stayed in a magnetic state here.
        spin = {'spin_type': SpinType.COLLINEAR, 'initial_magnetic_moments': {
            kind.name: settings['magnetic_moment'] if _is_magnetic_symbol(kind.symbol) else 0.0
            for kind in structure.kinds}}
    if relax == 'none':
        return PwBaseWorkChain.get_builder_from_protocol(code, structure, protocol='fast', overrides=base,
                                                         options=options, **spin)
    relax_type = {'positions': RelaxType.POSITIONS, 'positions_cell': RelaxType.POSITIONS_CELL}[relax]
    return PwRelaxWorkChain.get_builder_from_protocol(
        code, structure, protocol='fast', overrides={'base_relax': base, 'base_init_relax': base},
        relax_type=relax_type, options=options, **spin)


def job_options(options: dict | None, protocol_options: dict | None = None) -> dict:
    """The pw.x jobs' ``metadata.options``: ``options`` over ``protocol_options`` (default: the default protocol's),
    by :func:`~aiida_voltnet.workflows.protocols.merge_job_options` (given ``resources`` replace the protocol's
    whole)."""
    if protocol_options is None:
        protocol_options = VerifyWorkChain.get_protocol_inputs()['options']
    return merge_job_options(protocol_options, options)


def _withmpi_conflict(code, options) -> str | None:
    """Why the job ``options``' explicit ``withmpi`` cannot be used with ``code`` (whose fixed ``with_mpi`` says
    otherwise), or None."""
    asked = (options or {}).get('withmpi')
    if code is None or asked is None or getattr(code, 'with_mpi', None) is None or bool(asked) == bool(code.with_mpi):
        return None
    return (f'options withmpi={asked} contradicts code {code.full_label}, stored with with_mpi={code.with_mpi}: use '
            'a code without a fixed with_mpi (`voltnet dft-setup` now creates one), or drop withmpi')


def _validate_code(code, _):
    """A pw.x code: its default plugin is quantumespresso.pw (another code ran three jobs and failed with 402)."""
    return functions.check_code_plugin(code, 'quantumespresso.pw', 'code',
                                       'give a pw.x code (`voltnet dft-setup` creates pw-debian@localhost)')


def _validate_cutoff_elements(elements, _ctx=None):
    from pymatgen.core import Element

    wrong = [value for value in elements.get_list() if not (isinstance(value, str) and Element.is_valid_symbol(value))]
    if wrong:
        return f'cutoff_elements must be element symbols (Li, Co, ...), got {", ".join(map(repr, wrong))}'
    return None


def _validate_options(options, _ctx=None):
    """The pw.x jobs' ``metadata.options``: keys and value types a PwCalculation takes."""
    from aiida.plugins import CalculationFactory

    return functions.check_job_options(options, CalculationFactory('quantumespresso.pw'))


def _validate_settings(settings, _ctx=None):
    values = settings.get_dict()
    unknown = sorted(set(values) - set(SETTINGS_KEYS))
    if unknown:
        return f'unknown key(s) {", ".join(unknown)} in settings; known: {", ".join(SETTINGS_KEYS)}'
    missing = sorted(set(SETTINGS_KEYS) - set(values))
    if missing:
        return f'settings lack {", ".join(missing)} (get_builder_from_protocol fills every key)'
    if values['relax_type'] not in RELAX_TYPES:
        return f'settings.relax_type must be one of {", ".join(RELAX_TYPES)}, not {values["relax_type"]!r}'
    # value types and ranges, checked here: a string where a number belongs raised a TypeError when the jobs were
    # built (after the ML prediction was stored), and spin_polarized 'no' (truthy) ran spin-polarized
    if not isinstance(values['spin_polarized'], bool):
        return f'settings.spin_polarized must be true or false, got {values["spin_polarized"]!r}'
    for key in ('kpoints_distance', 'degauss', 'conv_thr_per_atom', 'magnetic_moment'):
        value = values[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f'settings.{key} must be a finite number, got {value!r}'
        if key != 'magnetic_moment' and not value > 0:
            return f'settings.{key} must be positive, got {value}'
    if values['smearing'] not in SMEARINGS:
        return f'settings.smearing must be one of pw.x\'s {", ".join(SMEARINGS)}, not {values["smearing"]!r}'
    if not isinstance(values['cutoff_stringency'], str):
        return f'settings.cutoff_stringency must be a name, got {values["cutoff_stringency"]!r}'
    return None


def _cells(inputs, make_metal=None) -> dict:
    """The cells the DFT runs: charged, discharged and, unless ``ion_energy`` is given, the ion metal (the
    ``ion_metal`` input, else ``make_metal()``, else an unstored ``ion_metal_structure`` for a check)."""
    cells = {'charged': inputs['charged'], 'discharged': inputs['discharged']}
    if 'ion_energy' not in inputs:
        cells['ion_metal'] = inputs.get('ion_metal') or (
            make_metal() if make_metal else ion_metal_structure(functions._value(inputs['working_ion'])))
    return cells


def launch_refusal(inputs) -> tuple[str, dict] | None:
    """What no DFT run can fix, as (exit code label, the arguments of its message), or None: a pair that is not one
    electrode (201), an element without a pseudopotential (202), a family that is not installed or lacks the cutoff
    stringency (203), a model that refuses the pair (204), a cell with partial occupancies or vacancies (205).

    ``VerifyWorkChain.validate_inputs`` refuses these at launch, before anything is stored, and ``setup`` checks
    again when the step runs. In ``voltnet.screen``'s ``verify`` namespace (no pair) only the family is checked.
    """
    pair = all(key in inputs for key in ('charged', 'discharged', 'working_ion'))
    for which in ('charged', 'discharged', 'ion_metal'):  # a pw.x cell: one element per site, every site occupied
        structure = inputs.get(which)
        if structure is not None and (structure.is_alloy or structure.has_vacancies):
            return 'ERROR_DISORDERED_STRUCTURE', {'which': which, 'formula': structure.get_formula()}
    if pair:
        try:
            record = functions.pair_record(inputs['charged'], inputs['discharged'],
                                           functions._value(inputs['working_ion']))
        except Exception as exception:  # noqa: BLE001 - ElectrodeDataError names the problem
            return 'ERROR_HOST_MISMATCH', {'message': str(exception)}
        if 'model' in inputs:
            message = functions._check_model_can_predict(inputs['model'], [record])
            if message:
                return 'ERROR_PREDICTION_REFUSED', {'message': message}
    if 'pseudo_family' not in inputs or 'settings' not in inputs:
        return None
    try:  # the stringency too: get_recommended_cutoffs would raise only once the ML prediction is stored
        family = load_pseudo_family(functions._value(inputs['pseudo_family']), inputs['settings']['cutoff_stringency'])
    except ValueError as exception:
        return 'ERROR_UNKNOWN_PSEUDO_FAMILY', {'message': str(exception)}
    if pair:
        for which, structure in _cells(inputs).items():
            missing = missing_pseudos(family, structure)
            if missing:
                return 'ERROR_MISSING_PSEUDO', {
                    'family': family.label, 'elements': ', '.join(missing),
                    'where': f'{which} cell {structure.get_formula()}; the family has {", ".join(sorted(family.elements))}'}
    extra = inputs.get('cutoff_elements')  # get_recommended_cutoffs would raise once the cells were stored
    missing = sorted(set(extra.get_list()) - set(family.elements)) if extra is not None else []
    if missing:
        return 'ERROR_MISSING_PSEUDO', {
            'family': family.label, 'elements': ', '.join(map(str, missing)),
            'where': f'cutoff_elements; the family has {", ".join(sorted(family.elements))}'}
    return None


class VerifyWorkChain(ProtocolMixin, WorkChain):
    """DFT (Quantum ESPRESSO) average voltage of a charged/discharged pair, compared with the ML prediction."""

    _protocol_file = 'verify.yaml'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('charged', valid_type=orm.StructureData, help='The ion-poor end member (e.g. CoO2).')
        spec.input('discharged', valid_type=orm.StructureData,
                   help='The ion-rich end member with the same host framework (e.g. LiCoO2).')
        spec.input('working_ion', valid_type=orm.Str, serializer=orm.to_aiida_type, help='The working ion, e.g. Li.')
        spec.input('code', valid_type=orm.AbstractCode, validator=_validate_code,
                   help='A pw.x code (plugin quantumespresso.pw).')
        spec.input('pseudo_family', valid_type=orm.Str, serializer=orm.to_aiida_type,
                   default=lambda: orm.Str(DEBIAN_PBESOL_FAMILY),
                   help='Label of an aiida-pseudo family with recommended cutoffs (`voltnet dft-setup` installs '
                        f'{DEBIAN_PBESOL_FAMILY}).')
        spec.input('settings', valid_type=orm.Dict, serializer=orm.to_aiida_type, validator=_validate_settings,
                   help=f'DFT settings shared by the three calculations: {", ".join(SETTINGS_KEYS)} (see the '
                        'protocols in protocols/verify.yaml).')
        spec.input('options', valid_type=dict, non_db=True, required=False, validator=_validate_options,
                   help='`metadata.options` of every pw.x job (resources, max_wallclock_seconds, withmpi, ...).')
        spec.input('model', valid_type=VoltageModelData, required=False,
                   help='A trained model: its prediction for the pair (voltnet.predict_structure_pair) is compared.')
        spec.input('ml_voltage', valid_type=orm.Float, required=False,
                   help='An existing ML prediction (V) for this pair, compared instead of predicting with `model`.')
        spec.input('ion_metal', valid_type=orm.StructureData, required=False,
                   help='The working-ion metal reference cell (default: ASE\'s reference structure of the element).')
        spec.input('ion_energy', valid_type=orm.Float, required=False,
                   help='Energy per atom (eV) of the working-ion metal computed with the same settings; when given, '
                        'the metal calculation is skipped (voltnet.screen shares one per ion).')
        spec.input('cutoff_elements', valid_type=orm.List, serializer=orm.to_aiida_type, required=False,
                   validator=_validate_cutoff_elements,
                   help='More elements whose recommended cutoffs count: every cell takes the highest cutoffs of the '
                        'elements of the charged and discharged cells, the working ion and these (voltnet.screen '
                        'gives those of every candidate of the ion, whose metal reference shares them).')
        spec.inputs.validator = cls.validate_inputs
        spec.outline(
            cls.setup,
            if_(cls.should_predict)(cls.predict),
            cls.run_dft,
            cls.inspect_dft,
            cls.compute_voltage,
            if_(cls.has_prediction)(cls.compare),
        )
        spec.output('dft_voltage', valid_type=orm.Float, help='DFT average voltage (V vs the ion metal).')
        spec.output('ml_voltage', valid_type=orm.Float, required=False, help='The ML prediction (V) it is compared to.')
        spec.output('ml_uncertainty', valid_type=orm.Float, required=False,
                    help='Ensemble standard deviation (V) of the ML prediction, when predicted here.')
        spec.output('ml_unseen_elements', valid_type=orm.List, required=False,
                    help='When predicted here: the host elements no training host had (empty: none; otherwise the '
                         'ML prediction extrapolates).')
        spec.output('ml_ion_content_outside', valid_type=orm.List, required=False,
                    help='When predicted here: how the ion content lies outside the training electrodes\' range '
                         '(empty: inside; otherwise the ML prediction extrapolates).')
        spec.output('ml_features_outside', valid_type=orm.List, required=False,
                    help='When predicted here: which features lie far beyond the training rows\' range (empty: '
                         'none; otherwise the ML prediction extrapolates).')
        spec.output('difference', valid_type=orm.Float, required=False, help='ML - DFT voltage (V).')
        spec.output_namespace('energies', valid_type=orm.Float, dynamic=True,
                              help='e_charged and e_discharged (eV per host formula unit), e_ion_metal (eV/atom).')
        spec.output('delta_ions', valid_type=orm.Float, help='Working ions inserted per host formula unit (Δx).')
        spec.exit_code(201, 'ERROR_HOST_MISMATCH',
                       message='charged and discharged structures are not one electrode of the working ion: '
                               '{message}')
        spec.exit_code(202, 'ERROR_MISSING_PSEUDO',
                       message='pseudopotential family {family} has no pseudopotential for {elements} ({where})')
        spec.exit_code(203, 'ERROR_UNKNOWN_PSEUDO_FAMILY', message='{message}')
        spec.exit_code(204, 'ERROR_PREDICTION_REFUSED', message='the ML prediction was refused: {message}')
        spec.exit_code(205, 'ERROR_DISORDERED_STRUCTURE',
                       message='the {which} cell {formula} has partial occupancies or vacancies; pw.x needs an '
                               "ordered cell (order it first, e.g. with pymatgen's "
                               'OrderDisorderedStructureTransformation)')
        spec.exit_code(401, 'ERROR_DFT_FAILED', message='the DFT calculation of the {which} failed: {failures}')

    @classmethod
    def validate_inputs(cls, inputs, _ctx=None):
        if 'model' in inputs and 'ml_voltage' in inputs:
            return 'give `model` (to predict here) or `ml_voltage` (an existing prediction), not both'
        if 'ion_metal' in inputs and 'ion_energy' in inputs:
            return 'give `ion_metal` (to compute its energy) or `ion_energy`, not both'
        if 'model' in inputs:  # its prediction is compared with the DFT voltage
            message = functions.check_voltage_model(inputs['model'])
            if message:
                return f'model: {message}'
        if 'ion_metal' in inputs and 'working_ion' in inputs:  # its energy per atom is the ion's reference
            symbols = sorted(inputs['ion_metal'].get_symbols_set())
            ion = functions._value(inputs['working_ion'])
            if symbols != [ion]:
                return (f'ion_metal must be a cell of {ion} metal only (the working ion\'s reference energy), not of '
                        f'{", ".join(symbols)}')
        message = _withmpi_conflict(inputs.get('code'), inputs.get('options'))
        if message:
            return message
        if inputs.get('code') is not None:  # aiida-core checks them when each job is launched, after the cells
            message = functions.check_job_resources(job_options(inputs.get('options')), inputs['code'])
            if message:
                return f'options: {message}'
        refusal = launch_refusal(inputs)  # the pair, the model's verdict on it, the pseudopotentials: before any storing
        if refusal:
            label, arguments = refusal
            return cls.exit_codes[label].format(**arguments).message
        return None

    @classmethod
    def get_builder_from_protocol(cls, code, charged, discharged, working_ion: str | orm.Str,
                                  protocol: str | None = None, overrides: dict | None = None,
                                  options: dict | None = None):
        """A builder with the ``settings``, ``options`` and ``pseudo_family`` of ``protocol`` (``ci``, ``balanced``,
        ``precise``; None: ``balanced``), updated by ``overrides`` (e.g. ``{'settings': {'relax_type':
        'positions'}, 'model': model}``).

        :param options: the pw.x jobs' ``metadata.options`` over the protocol's, as aiida-quantumespresso's builders
            take them (the same as ``overrides={'options': ...}``; ``resources`` given here replace the protocol's
            whole). Any other keyword is refused (a misspelt ``protocl`` ran the default protocol)."""
        if options:
            overrides = {**(overrides or {}), 'options': {**((overrides or {}).get('options') or {}), **options}}
        inputs = cls.get_protocol_inputs(protocol, overrides)
        inputs['options'] = job_options((overrides or {}).get('options'), inputs['options'])  # given resources whole
        builder = cls.get_builder()
        builder.code, builder.charged, builder.discharged = code, charged, discharged
        # a Str as every other input is, or a plain 'Li' (orm.Str of a Str stored its repr as the ion)
        builder.working_ion = working_ion if isinstance(working_ion, orm.Str) else orm.Str(working_ion)
        builder.settings = orm.Dict(inputs.pop('settings'))
        family = inputs.pop('pseudo_family')  # a Str override as it is (orm.Str of a Str stored its repr)
        builder.pseudo_family = family if isinstance(family, orm.Str) else orm.Str(family)
        for key, value in inputs.items():
            builder[key] = value
        return builder

    # -- outline -------------------------------------------------------------------------------------------------------
    def setup(self):
        """Refuse, with an exit code, what no DFT run can fix. ``validate_inputs`` refused all of it at launch; this
        catches what changed in between (a pseudopotential family deleted or edited before the step ran)."""
        refusal = launch_refusal(self.inputs)
        if refusal:
            label, arguments = refusal
            return self.exit_codes[label].format(**arguments)
        with functions._warnings_reported(InputWarning):  # two hosts that are not one framework, rounded occupancies
            functions.pair_record(self.inputs.charged, self.inputs.discharged, self.inputs.working_ion.value,
                                  report=True)
        self.ctx.cells = _cells(self.inputs, make_metal=lambda: ion_metal_cell(  # by a process: linked in the graph
            self.inputs.working_ion, metadata=step_metadata(self, 'ion_metal_cell')))
        return None

    def should_predict(self):
        return 'model' in self.inputs

    def predict(self):
        try:
            result = predict_structure_pair(model=self.inputs.model, charged=self.inputs.charged,
                                            discharged=self.inputs.discharged, working_ion=self.inputs.working_ion,
                                            metadata=step_metadata(self, 'predict'))
        except ValueError as exception:
            return self.exit_codes.ERROR_PREDICTION_REFUSED.format(message=str(exception))
        self.ctx.ml_voltage = result['voltage']
        self.out('ml_voltage', result['voltage'])  # here, not at compare: a failed DFT keeps the prediction it had
        self.out('ml_uncertainty', result['uncertainty'])
        self.out('ml_unseen_elements', result['unseen_elements'])
        self.out('ml_ion_content_outside', result['ion_content_outside'])
        self.out('ml_features_outside', result['features_outside'])
        unseen = result['unseen_elements'].get_list()
        outside = result['ion_content_outside'].get_list() + result['features_outside'].get_list()
        self.report(f'ML prediction {result["voltage"].value:.3f} +/- {result["uncertainty"].value:.3f} V'
                    + (f'; extrapolation: the host has {", ".join(unseen)}, which no training host had' if unseen else '')
                    + ''.join(f'; extrapolation: {phrase}' for phrase in outside))
        return None

    def run_dft(self):
        settings = self.inputs.settings.get_dict()
        options = dict(self.inputs.get('options') or {})
        relax = settings['relax_type']
        running = {}
        # one pair of cutoffs for all cells, whose energies are subtracted: the highest any of their elements needs
        elements = set(self.inputs.cutoff_elements.get_list() if 'cutoff_elements' in self.inputs else ())
        elements |= self.inputs.charged.get_symbols_set() | self.inputs.discharged.get_symbols_set()
        elements.add(self.inputs.working_ion.value)
        for which, structure in self.ctx.cells.items():
            # A one-atom metal cell has no positions to relax; relax its cell only with positions_cell.
            cell_relax = relax if which != 'ion_metal' or relax == 'positions_cell' else 'none'
            builder = pw_builder(self.inputs.code, structure, settings, options, self.inputs.pseudo_family.value,
                                 relax=cell_relax, cutoff_elements=elements)
            builder.metadata.call_link_label = f'dft_{which}'
            node = self.submit(builder)
            self.report(f'{which} cell {structure.get_formula()}: {node.process_label}<{node.pk}>')
            running[f'dft_{which}'] = node
        return ToContext(**running)

    def inspect_dft(self):
        failed = [(which, self.ctx[f'dft_{which}']) for which in self.ctx.cells
                  if not self.ctx[f'dft_{which}'].is_finished_ok]
        if failed:  # every failed cell named, not the first only
            names = [which for which, _ in failed]
            return self.exit_codes.ERROR_DFT_FAILED.format(
                which=f'{names[0]} cell' if len(names) == 1 else f'{", ".join(names[:-1])} and {names[-1]} cells',
                failures='; '.join(f'{which}: {node.process_label}<{node.pk}> exit status {node.exit_status}: '
                                   f'{node.exit_message or "no message"}' for which, node in failed))
        return None

    def compute_voltage(self):
        outputs = {which: self.ctx[f'dft_{which}'].outputs.output_parameters for which in self.ctx.cells}
        energies = electrode_energies(self.inputs.charged, self.inputs.discharged, self.inputs.working_ion,
                                      outputs['charged'], outputs['discharged'],
                                      metadata=step_metadata(self, 'electrode_energies'))
        if 'ion_energy' in self.inputs:
            e_metal = self.inputs.ion_energy
        else:
            e_metal = energy_per_atom(self.ctx.cells['ion_metal'], outputs['ion_metal'],
                                      metadata=step_metadata(self, 'ion_metal_energy'))
        voltage = dft_voltage(e_charged=energies['e_charged'], e_discharged=energies['e_discharged'],
                              e_ion_metal=e_metal, delta_ions=energies['delta_ions'],
                              ion_charge=energies['ion_charge'], metadata=step_metadata(self, 'dft_voltage'))
        self.ctx.dft_voltage = voltage
        self.out('dft_voltage', voltage)
        self.out('delta_ions', energies['delta_ions'])
        self.out('energies.e_charged', energies['e_charged'])
        self.out('energies.e_discharged', energies['e_discharged'])
        self.out('energies.e_ion_metal', e_metal)
        self.report(f'DFT voltage {voltage.value:.3f} V')

    def has_prediction(self):
        return 'ml_voltage' in self.ctx or 'ml_voltage' in self.inputs

    def compare(self):
        ml_voltage = self.ctx.ml_voltage if 'ml_voltage' in self.ctx else self.inputs.ml_voltage
        difference = compare_voltages(ml_voltage, self.ctx.dft_voltage, metadata=step_metadata(self, 'compare'))
        if 'ml_voltage' not in self.ctx:  # given as input (predicted here: output by predict)
            self.out('ml_voltage', ml_voltage)
        self.out('difference', difference['difference'])
        self.report(f'ML {ml_voltage.value:.3f} V - DFT {self.ctx.dft_voltage.value:.3f} V = '
                    f'{difference["difference"].value:+.3f} V')
