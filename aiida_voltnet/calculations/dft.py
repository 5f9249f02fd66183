"""Calculation functions of the DFT verification (``voltnet.verify`` and ``voltnet.screen``): energies per host
formula unit from pw.x outputs, the ML - DFT difference, the selection of candidates from a batch prediction, the
ML-vs-DFT summary of a screen, and the training set grown by the verified electrodes (one active-learning round).

The voltage itself is ``voltnet.dft_voltage`` in :mod:`aiida_voltnet.calculations.functions`.
"""
from __future__ import annotations

import math

from aiida import orm
from aiida.engine import calcfunction

from aiida_voltnet.calculations.functions import _validated_by
from aiida_voltnet.calculations.sources import record_sources
from aiida_voltnet.dft import ion_charge, ion_metal_structure

def _host_units_and_ions(structure: orm.StructureData, ion: str) -> tuple[float, float]:
    """(formula units of the reduced host framework in the cell, working ions per host formula unit)."""
    from aiida_voltnet.ml.structures import host_framework

    composition = structure.get_pymatgen_structure().composition
    _, units = host_framework(composition, ion).get_reduced_composition_and_factor()
    return units, composition[ion] / units


@record_sources
@calcfunction
def electrode_energies(charged: orm.StructureData, discharged: orm.StructureData, working_ion: orm.Str,
                       charged_parameters: orm.Dict, discharged_parameters: orm.Dict):
    """Total energies of the two electrode cells per formula unit of their common host framework, the number of
    working ions inserted per formula unit (Δx) and the ion's charge z: the inputs of ``voltnet.dft_voltage``.

    :param charged_parameters: ``output_parameters`` of the charged cell's pw.x calculation (``energy`` in eV).
    :param discharged_parameters: the same for the discharged cell.
    """
    ion = working_ion.value
    units_charged, ions_charged = _host_units_and_ions(charged, ion)
    units_discharged, ions_discharged = _host_units_and_ions(discharged, ion)
    return {
        'e_charged': orm.Float(charged_parameters['energy'] / units_charged),
        'e_discharged': orm.Float(discharged_parameters['energy'] / units_discharged),
        'delta_ions': orm.Float(ions_discharged - ions_charged),
        'ion_charge': orm.Int(ion_charge(ion)),
    }


@record_sources
@calcfunction
def ion_metal_cell(working_ion: orm.Str) -> orm.StructureData:
    """The working ion's elemental metal cell, whose energy per atom is the reference of the DFT voltage
    (``aiida_voltnet.dft.ion_metal_structure``: ASE's bulk crystal, primitive cell), made by a process so that the
    graph says where the cell came from."""
    return ion_metal_structure(working_ion.value)


@record_sources
@calcfunction
def energy_per_atom(structure: orm.StructureData, parameters: orm.Dict):
    """Total energy per atom (eV) of an elemental cell, from its pw.x ``output_parameters``."""
    return orm.Float(parameters['energy'] / len(structure.sites))


@record_sources
@calcfunction
def compare_voltages(ml_voltage: orm.Float, dft_voltage: orm.Float):
    """``difference`` = ML prediction - DFT voltage (V): links the prediction to its verification in the graph."""
    return {'difference': orm.Float(ml_voltage.value - dft_voltage.value)}




# -- screening -----------------------------------------------------------------------------------------------------
SELECTION_MODES = ('window', 'uncertainty')
SELECTION_KEYS = ('mode', 'top_k', 'voltage_min', 'voltage_max')


def check_selection(selection: dict) -> str | None:
    """Error message for a bad ``selection`` of :func:`select_candidates`, or None."""
    unknown = sorted(set(selection) - set(SELECTION_KEYS))
    if unknown:
        return f'unknown selection key(s) {", ".join(unknown)}; known: {", ".join(SELECTION_KEYS)}'
    mode = selection.get('mode', 'window')
    if mode not in SELECTION_MODES:
        return f'selection mode must be one of {", ".join(SELECTION_MODES)}, not {mode!r}'
    top_k = selection.get('top_k', 1)
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        return f'selection top_k must be a positive integer, got {top_k!r}'
    low, high = selection.get('voltage_min', float('-inf')), selection.get('voltage_max', float('inf'))
    for key in ('voltage_min', 'voltage_max'):
        value = selection.get(key, 0.0)  # left out: no bound; given: a finite number (the database stores no inf)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f'selection {key} must be a finite number (V; leave it out for no bound), got {value!r}'
    if not low < high:
        return f'selection voltage_min ({low}) must be below voltage_max ({high})'
    return None


@record_sources
@calcfunction
def select_candidates(predictions: orm.ArrayData, selection: orm.Dict):
    """The battery ids to verify with DFT, from a batch prediction (``voltnet.predict_voltages`` output).

    ``selection``: ``mode`` ``window`` (default) keeps the predictions with ``voltage_min <= mean <= voltage_max``
    and takes the ``top_k`` highest voltages; ``uncertainty`` takes the ``top_k`` largest ensemble standard
    deviations inside the window (the most informative ones for an active-learning round). Ties keep input order.
    """
    import numpy as np

    rules = selection.get_dict()
    message = check_selection(rules)
    if message:
        raise ValueError(message)
    mean, std = predictions.get_array('mean'), predictions.get_array('std')
    ids = predictions.get_array('battery_ids')
    inside = np.flatnonzero((mean >= rules.get('voltage_min', -np.inf)) & (mean <= rules.get('voltage_max', np.inf)))
    key = std if rules.get('mode', 'window') == 'uncertainty' else mean
    order = inside[np.argsort(-key[inside], kind='stable')]
    return orm.List([str(ids[i]) for i in order[:rules.get('top_k', 1)]])


@record_sources
@calcfunction
def summarize_screen(predictions: orm.ArrayData, selected: orm.List, outcomes: orm.Dict, **verified):
    """The ML-vs-DFT table of a screen: one row per selected candidate, with its prediction (from ``predictions``),
    the DFT voltage of the verified ones (``verified``: ``{battery_id: Float}``) and why the others failed
    (``outcomes``: ``{battery_id: message}`` from the work chain). The candidates predicted and not selected have no
    row: their voltage and uncertainty are in ``predictions`` alone, so that the summary's size is bounded by the
    selection (``top_k``), not by the number of candidates screened.

    :returns: ``Dict`` with ``rows`` (battery_id, working_ion, ml_voltage, ml_uncertainty, dft_voltage, difference,
        status), ``rejected`` (candidates that could not be predicted, with why), ``failed_references``
        (``{ion: message}`` of a failed metal reference), ``n_candidates``, ``n_predicted``, ``n_selected``,
        ``n_verified``, ``n_not_verified`` (selected but not submitted: its status says why), ``n_failed``
        (submitted and failed) and ``mae_verified``.
    """
    mean, std = predictions.get_array('mean'), predictions.get_array('std')
    ids, ions = predictions.get_array('battery_ids'), predictions.get_array('working_ions')
    chosen, messages = set(selected.get_list()), outcomes.get_dict()
    predicted = [str(battery_id) for battery_id in ids]
    unknown = sorted(chosen - set(predicted))
    if unknown:
        raise ValueError(f'selected candidate(s) {", ".join(map(repr, unknown))} are not among the predictions')
    rows, errors = [], []
    for i, battery_id in enumerate(predicted):
        if battery_id not in chosen:
            continue
        row = {'battery_id': battery_id, 'working_ion': str(ions[i]), 'ml_voltage': float(mean[i]),
               'ml_uncertainty': float(std[i]), 'dft_voltage': None, 'difference': None,
               'status': messages.get(battery_id, 'failed')}
        if battery_id in verified:
            row['dft_voltage'] = verified[battery_id].value
            row['difference'] = row['ml_voltage'] - row['dft_voltage']
            row['status'] = 'verified'
            errors.append(abs(row['difference']))
        rows.append(row)
    # selected but never submitted (VerifyWorkChain would have refused it, or its metal reference failed): not a
    # failed verification
    not_verified = sum(1 for row in rows if row['status'].startswith('not verified'))
    known = set(predicted)
    # the work chain's failed metal references are keyed 'metal:<ion>': not candidates, so not 'rejected'
    references = {name[len('metal:'):]: message for name, message in messages.items() if name.startswith('metal:')}
    rejected = {name: message for name, message in messages.items()
                if name not in known and not name.startswith('metal:')}
    return orm.Dict({
        'rows': rows,
        'rejected': rejected,
        'failed_references': references,
        'n_candidates': len(predicted) + len(rejected),
        'n_predicted': len(predicted),
        'n_selected': len(rows),
        'n_verified': len(errors),
        'n_not_verified': not_verified,
        'n_failed': len(rows) - len(errors) - not_verified,
        'mae_verified': sum(errors) / len(errors) if errors else None,
    })


def _verified_records(dataset, verified: dict) -> list:
    """The records of ``add_verified_records``: ``dataset``'s plus one per verified pair (target: its DFT voltage)."""
    import dataclasses

    from aiida_voltnet.calculations.functions import dataset_records, pair_record

    records = list(dataset_records(dataset))
    seen = {r.battery_id for r in records}
    for name, pair in verified.items():
        keys = {'charged', 'discharged', 'working_ion', 'dft_voltage'}
        missing, extra = sorted(keys - set(pair)), sorted(set(pair) - keys)
        if missing:
            raise ValueError(f'verified pair {name!r}: missing {", ".join(missing)}')
        if extra:  # stored as inputs and ignored before
            raise ValueError(f'verified pair {name!r}: unknown key(s) {", ".join(extra)}; known: {", ".join(sorted(keys))}')
        record = pair_record(pair['charged'], pair['discharged'], pair['working_ion'].value, battery_id=f'dft:{name}')
        if record.battery_id in seen:
            raise ValueError(f'verified pair {name!r}: the dataset already holds a record {record.battery_id!r}')
        records.append(dataclasses.replace(record, average_voltage=pair['dft_voltage'].value))
    return records


def _validate_verified(inputs):
    from aiida_voltnet.ml.records import validate_record

    records = _verified_records(inputs['dataset'],
                                {k: v for k, v in inputs.items() if k not in ('dataset', 'metadata')})
    for record in records[inputs['dataset'].n_records:]:
        validate_record(record)
    return None


@_validated_by(_validate_verified)
@record_sources
@calcfunction
def add_verified_records(dataset, **verified):
    """The training set of one active-learning round: ``dataset``'s records plus one record per verified electrode,
    whose target is its DFT voltage (battery_id ``dft:<name>``).

    :param dataset: an ``ElectrodeDataset`` (e.g. the records the model was trained on).
    :param verified: ``{name: {'charged': StructureData, 'discharged': StructureData, 'working_ion': Str,
        'dft_voltage': Float}}``.
    """
    from aiida_voltnet.data.dataset import ElectrodeDataset

    records = _verified_records(dataset, verified)
    added = records[dataset.n_records:]
    matches = composition_matches(records[:dataset.n_records], added)
    # The source fields are the parent's (its CSV or MP query); dataset_origin follows this process back to them
    # and lists the DFT-verified records it added.
    grown = ElectrodeDataset(records, derived_from=dataset)
    grown.base.attributes.set('dft_verified_ids', [r.battery_id for r in added])
    # a verified electrode of a training record's composition gives the model a second target for it, from other
    # DFT settings (e.g. PBEsol without +U beside Materials Project's GGA+U): said, not refused, since polymorphs
    # share a composition too
    grown.base.attributes.set('dft_composition_matches', matches)
    return grown


def composition_matches(records, added) -> dict[str, list[str]]:
    """``{battery_id: [battery_id, ...]}``: each record of ``added`` that has the composition
    (:func:`~aiida_voltnet.ml.records.electrode_composition_key`) of records of ``records``, with theirs."""
    from aiida_voltnet.ml.records import electrode_composition_key

    by_key = {}
    for record in records:
        by_key.setdefault(electrode_composition_key(record), []).append(record.battery_id)
    return {record.battery_id: by_key[key] for record in added
            if (key := electrode_composition_key(record)) in by_key}
