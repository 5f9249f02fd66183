"""Questions to the provenance graph that users should never have to hand-write as traversals.

* :func:`prediction_provenance` - given a prediction (the ``ArrayData`` of a batch, a ``Float`` voltage or
  uncertainty, the predict process, or a ``PredictWorkChain``): which model version made it, which process trained
  that model on which dataset, where the dataset came from (file sha256, or MP database version and material
  ids, or structures), and which records or structures were predicted.
* :func:`list_predictions` - every prediction a model has made, optionally filtered by ion and voltage.
"""
from __future__ import annotations

import copy
import math
import numbers
import re
from typing import Any

import numpy as np
from aiida import orm
from aiida.common.links import LinkType

from aiida_voltnet.data.dataset import ElectrodeDataset
from aiida_voltnet.data.model import VoltageModelData

__all__ = ('prediction_provenance', 'dataset_origin', 'list_predictions', 'training_workflow', 'training_warnings',
           'PREDICTION_PROCESS_TYPES')

_PREFIX = 'aiida.calculations:voltnet.'
PREDICT_BATCH = _PREFIX + 'predict_voltages'
PREDICT_PAIR = _PREFIX + 'predict_structure_pair'
PREDICTION_PROCESS_TYPES = (PREDICT_BATCH, PREDICT_PAIR)


def _ref(node: orm.Node | None) -> dict[str, Any] | None:
    if node is None:
        return None
    ref = {'pk': node.pk, 'uuid': node.uuid, 'type': node.__class__.__name__}
    if isinstance(node, orm.ProcessNode):
        ref['process_type'] = node.process_type
    return ref


def _inputs(process: orm.ProcessNode) -> dict[str, orm.Node]:
    """Input nodes of a process by link label (nested namespaces keep their ``a__b`` labels)."""
    return {link.link_label: link.node
            for link in process.base.links.get_incoming(link_type=LinkType.INPUT_CALC).all()}


def _creator(node: orm.Data) -> orm.CalculationNode | None:
    """The calculation that created ``node`` (via the CREATE link), or None for a node made by hand."""
    links = node.base.links.get_incoming(link_type=LinkType.CREATE).all()
    return links[0].node if links else None


#: Work chains that only wrap a training job (restarts, error handlers): the workflow that asked for the model is
#: their caller.
TRAINING_JOB_WRAPPERS = ('aiida.workflows:voltnet.train_base',)


def training_workflow(training: orm.ProcessNode | None) -> orm.WorkflowNode | None:
    """The workflow that asked for the model a ``training`` process made (``TrainWorkChain``, which holds the
    held-out test set and metrics; ``ScreenWorkChain`` for a retrain), past the ``voltnet.train_base`` wrapper of a
    model trained through a code: one level up was that wrapper, not the TrainWorkChain. The wrapper itself where
    nothing called it (``VoltnetTrainBaseWorkChain`` submitted alone, as docs/production.md's recipe does: it was
    answered None). None if no workflow called the training."""
    caller = training.caller if training is not None else None
    while caller is not None and caller.process_type in TRAINING_JOB_WRAPPERS and caller.caller is not None:
        caller = caller.caller
    return caller


def _structure(node: orm.StructureData) -> dict[str, Any]:
    return {**_ref(node), 'formula': node.get_formula(mode='hill_compact')}


#: Calcfunctions whose output dataset is a subset of their input dataset (label of that input).
_SUBSET_STEPS = {'split_dataset': 'dataset', 'report_subsample_dataset': 'dataset', 'report_kfold_dataset': 'dataset',
                 'report_drop_unseen_ions': 'test'}


def dataset_origin(dataset: ElectrodeDataset) -> dict[str, Any]:
    """Where a dataset's records came from, following subset steps (splits, the report's subsamples and folds) and
    active-learning steps (``add_verified_records``) back to the assembling process.

    :returns: ``{'kind': 'csv'|'materials_project'|'structures'|'records'|'unknown', 'dataset': root dataset ref,
        'process': assembling process ref, 'in_graph': bool, 'splits': [subset step refs], 'added': [...], ...}``;
        ``in_graph`` is False where the root dataset was stored directly, not by an assembling calcfunction, so that
        ``kind`` is only what the node declares (its ``source``) and no file, query or structures back it; with ``file`` +
        ``sha256`` for a CSV, ``query`` + ``database_version`` + ``material_ids`` for the Materials Project,
        ``structures`` for pairs; ``added`` lists each ``add_verified_records`` step on the way with the battery
        ids of the DFT-verified records it added (their targets are DFT voltages, not the root's).
    """
    if not isinstance(dataset, ElectrodeDataset):
        raise TypeError(f'dataset_origin takes an ElectrodeDataset, got {type(dataset).__name__}')
    splits, added = [], []
    current = dataset
    while True:
        creator = _creator(current)
        step = creator.process_type[len(_PREFIX):] if creator is not None and creator.process_type and \
            creator.process_type.startswith(_PREFIX) else None
        if step in _SUBSET_STEPS:
            splits.append(_ref(creator))
            current = _inputs(creator)[_SUBSET_STEPS[step]]
            continue
        if step == 'add_verified_records':
            added.append({'process': _ref(creator),
                          'dft_verified_ids': list(current.base.attributes.get('dft_verified_ids', []))})
            current = _inputs(creator)['dataset']
            continue
        break
    origin: dict[str, Any] = {'kind': current.source, 'dataset': _ref(current), 'process': _ref(creator),
                              'in_graph': creator is not None, 'splits': splits}
    if added:
        origin['added'] = added
    if creator is None:
        origin['kind'] = 'unknown' if current.source is None else current.source
    inputs = _inputs(creator) if creator is not None else {}
    if current.source == 'csv':
        csv = inputs.get('csv')
        origin['file'] = {**_ref(csv), 'filename': csv.filename} if csv is not None else None
        origin['sha256'] = current.source_sha256
    elif current.source == 'materials_project':
        provenance = current.mp_provenance() or {}
        origin['query'] = inputs['query'].get_dict() if 'query' in inputs else provenance.get('query')
        origin['database_version'] = current.mp_database_version
        origin['material_ids'] = list(provenance.get('material_ids') or [])
    elif current.source == 'structures':
        pairs: dict[str, dict] = {}
        for label, node in inputs.items():
            name, _, role = label.rpartition('__')
            value = _structure(node) if isinstance(node, orm.StructureData) else getattr(node, 'value', None)
            pairs.setdefault(name, {})[role] = value
        origin['structures'] = pairs
    return origin


def _dataset_summary(dataset: ElectrodeDataset, battery_ids: bool = True) -> dict[str, Any]:
    summary = {**_ref(dataset), 'n_records': dataset.n_records, 'working_ions': dataset.working_ions,
               'source': dataset.source}
    # the fingerprint of the source, where it has one: a CSV file's sha256, the Materials Project's database version
    # (the other's key was printed as None for every dataset)
    for key, value in (('source_sha256', dataset.source_sha256), ('mp_database_version', dataset.mp_database_version)):
        if value is not None:
            summary[key] = value
    summary['origin'] = dataset_origin(dataset)
    if battery_ids:
        summary['battery_ids'] = dataset.battery_ids()
    return summary


#: A warning of the package in a training process's log: ``CalibrationWarning: ...`` (a ``train_model`` report
#: reads ``[PK|train_model|warning]: CalibrationWarning: ...``; the training CalcJob's parser logs the bare line).
_WARNING_LOG = re.compile(r'^(?:\[[^\]]*\|warning\]: )?([A-Z]\w*Warning: .*)$', re.DOTALL)
#: What TrainWorkChain reports when its training warned nothing (read where the training's own report is gone).
NO_TRAINING_WARNINGS = 'the training warned nothing'
#: TrainWorkChain's repetition of them in its own report.
_REPEATED_WARNING_LOG = re.compile(r'^(?:\[[^\]]*\]: )?the training warned: ([A-Z]\w*Warning: .*)$', re.DOTALL)


def training_warnings(training: orm.ProcessNode | None, model: VoltageModelData | None = None) -> list[str]:
    """The package's warnings of the training of ``model``: those its node holds (``metrics['warnings']``, which a
    training taken from the cache and an archive carry), for a model stored before they were, or without ``model``:
    the warnings that the process which trained a model logged (``verdi process report PK``), e.g.
    ``'CalibrationWarning: the uncertainty calibration saw only 10 held-out rows ...'``, in order, also those in a
    training CalcJob's ``metrics`` output and those of the processes it was cloned from when it was taken from the
    cache (the chain of cache sources, as far as they still exist) and those the training's work chain repeated in
    its report (``the training warned: ...``); ``[]`` when none (or for a model trained before they were logged);
    one line saying they are unknown for a model without a training process that holds none.
    Where the chain of cache sources breaks at a process not in the profile and nothing else tells (TrainWorkChain
    says ``the training warned nothing`` when there were none), one line says the warnings are unknown."""
    held = (model.base.attributes.get('metrics', None) or {}).get('warnings') if model is not None else None
    if isinstance(held, list):
        return [str(line) for line in held]
    if training is None:  # a model stored by hand, or imported without its creator: nothing tells
        return ['unknown: no process in this profile created this model, and its node holds no warnings']
    processes, seen, lost = [training], {training.uuid}, None
    while (source := processes[-1].base.caching.get_cache_source()) is not None and source not in seen:
        seen.add(source)  # a process taken from the cache has no logs of its own: those of its source (and its)
        try:
            processes.append(orm.load_node(source))
        except Exception:  # noqa: BLE001 - the cache source may have been deleted since, or was not exported
            lost = source
            break
    found = []

    def add(messages, pattern):
        for message in messages:
            match = pattern.match(message)
            if match and match.group(1) not in found:
                found.append(match.group(1))

    for process in processes:
        messages = [log.message for log in sorted(orm.Log.collection.get_logs_for(process), key=lambda log: log.pk)]
        metrics = process.outputs.metrics if 'metrics' in process.outputs else None  # voltnet-train's metrics.json
        if isinstance(metrics, orm.Dict):
            messages += [str(line) for line in metrics.get('warnings') or []]
        add(messages, _WARNING_LOG)
    workflow = training_workflow(training)  # TrainWorkChain repeated them when it ran, while the source existed
    told_none = False
    if workflow is not None:
        messages = [log.message for log in sorted(orm.Log.collection.get_logs_for(workflow), key=lambda log: log.pk)]
        add(messages, _REPEATED_WARNING_LOG)
        told_none = any(message.endswith(NO_TRAINING_WARNINGS) for message in messages)
    if lost is not None and not found and not told_none:
        found.append(f'unknown: the training was taken from the cache of process {lost}, which is not in this '
                     'profile (deleted, or not exported), and its report with it')
    return found


def _cached_model_summary(model: VoltageModelData, summaries: dict | None) -> dict[str, Any]:
    """:func:`_model_summary`, computed once per model node in ``summaries`` (a copy each time: the answers of a
    work chain's predictions must not share dicts that a caller could edit)."""
    if summaries is None:
        return _model_summary(model)
    if model.pk not in summaries:
        summaries[model.pk] = _model_summary(model)
    return copy.deepcopy(summaries[model.pk])


def _model_summary(model: VoltageModelData) -> dict[str, Any]:
    training = _creator(model)
    summary: dict[str, Any] = {
        'model': {**_ref(model), 'model_version': model.model_version, 'arrays_sha256': model.arrays_sha256,
                  'model_name': model.model_name, 'architecture': model.architecture,
                  'featurizer': model.base.attributes.get('featurizer_name'),
                  'training_ions': model.training_ions},
        'model_version': model.model_version,
        'training_process': _ref(training),
        'training_workflow': _ref(training_workflow(training)),
        'training_warnings': training_warnings(training, model),
        'training_dataset': None,
    }
    if training is not None:
        inputs = _inputs(training)
        summary['training_settings'] = {key: getattr(inputs[key], 'value', None)
                                        for key in ('featurizer', 'model', 'seed') if key in inputs}
        if 'settings' in inputs:
            summary['training_settings']['settings'] = inputs['settings'].get_dict()
        if 'dataset' in inputs:
            summary['training_dataset'] = _dataset_summary(inputs['dataset'], battery_ids=False)
    return summary


def _predict_process(node: orm.Node) -> orm.CalcFunctionNode:
    if isinstance(node, orm.CalcFunctionNode):
        process = node
    elif isinstance(node, orm.Data):
        process = _creator(node)
        if process is None:
            raise ValueError(f'{node.__class__.__name__}<{node.pk}> was not created by a process, so it is not a '
                             'prediction')
    else:
        raise ValueError(f'{type(node).__name__}<{node.pk}> is neither a prediction nor a predict process')
    if process.process_type not in PREDICTION_PROCESS_TYPES:
        raise ValueError(f'{node.__class__.__name__}<{node.pk}> comes from {process.process_type}, not from a '
                         'voltnet prediction')
    return process


def prediction_provenance(node: orm.Node | int | str, _summaries: dict | None = None) -> dict[str, Any]:
    """Everything the graph knows about how a prediction was made (see the module docstring).

    :param node: the ``ArrayData`` of ``predict_voltages``, a ``Float`` output of ``predict_structure_pair``, one of
        those processes, a ``PredictWorkChain`` node, or a pk/uuid of any of these.
    :returns: a JSON-serialisable dict with keys ``prediction``, ``process``, ``model_version``, ``model``,
        ``training_process``, ``training_workflow``, ``training_warnings`` (:func:`training_warnings`: a rough
        uncertainty calibration, the paper featurizer's leak), ``training_settings``, ``training_dataset`` (with its
        ``origin``), ``inputs`` (the predicted dataset with its battery ids and origin, or the two structures
        and the working ion) and ``extrapolation`` (``n_unseen_elements``, ``n_ion_content_outside``,
        ``n_end_members_reversed`` and ``n_features_outside`` of a batch (None where the prediction predates it), or a pair's ``unseen_elements``, the host elements no training host had, and
        ``ion_content_outside``, how its ion content lies outside the training range; None for predictions stored
        before the flag), and for a pair ``input_warnings``, the warnings its structures gave (two frameworks,
        rounded occupancies; None before the output existed). For a work chain: ``{'workflow': ...,
        'predictions': [one dict per process]}``.
    """
    if not isinstance(node, orm.Node):
        node = orm.load_node(node)
    if isinstance(node, orm.WorkflowNode):
        processes = [child for child in node.called_descendants
                     if isinstance(child, orm.CalcFunctionNode) and child.process_type in PREDICTION_PROCESS_TYPES
                     and child.is_finished_ok]
        if not processes:
            raise ValueError(f'{node.__class__.__name__}<{node.pk}> ({node.process_type}) called no voltnet '
                             'prediction process')
        summaries: dict = {}  # the model's part once per model, not once per prediction (100 pairs took 15 s)
        return {'workflow': _ref(node),
                'predictions': [prediction_provenance(p, summaries) for p in sorted(processes, key=lambda p: p.ctime)]}
    process = _predict_process(node)
    if not process.is_finished_ok:
        state = 'excepted' if process.is_excepted else f'is not finished ok (exit status {process.exit_status})'
        raise ValueError(f'{process.__class__.__name__}<{process.pk}> {state}: it made no prediction')
    inputs = _inputs(process)
    outputs = {link.link_label: link.node
               for link in process.base.links.get_outgoing(link_type=LinkType.CREATE).all()}
    result: dict[str, Any] = {
        'prediction': _ref(node) if isinstance(node, orm.Data) else None,
        'outputs': {label: _ref(out) for label, out in sorted(outputs.items())},
        'process': _ref(process),
        **_cached_model_summary(inputs['model'], _summaries),
    }
    if process.process_type == PREDICT_BATCH:
        result['inputs'] = {'dataset': _dataset_summary(inputs['dataset'])}
        attributes = outputs['result'].base.attributes
        result['extrapolation'] = {key: attributes.get(key) for key in ('n_unseen_elements', 'n_ion_content_outside',
                                                                        'n_end_members_reversed',
                                                                        'n_features_outside')}
    else:
        result['inputs'] = {'charged': _structure(inputs['charged']), 'discharged': _structure(inputs['discharged']),
                            'working_ion': inputs['working_ion'].value}
        result['extrapolation'] = {key: outputs[key].get_list() if key in outputs else None
                                   for key in ('unseen_elements', 'ion_content_outside', 'features_outside')}
        result['input_warnings'] = outputs['input_warnings'].get_list() if 'input_warnings' in outputs else None
    return result


def list_predictions(model: VoltageModelData | int | str, ion: str | None = None, min_voltage: float | None = None,
                     max_voltage: float | None = None) -> list[dict[str, Any]]:
    """Every prediction made by ``model`` (by finished processes), one row per predicted electrode: by this node and
    by every other node of its ``model_version`` (the same trained model, made again by a training taken from the
    cache).

    :param ion: keep only this working ion.
    :param min_voltage: keep only predicted voltages >= this (V).
    :param max_voltage: keep only predicted voltages <= this (V).
    :returns: rows ``{'battery_id', 'label', 'working_ion', 'voltage', 'uncertainty', 'extrapolation', 'node',
        'node_uuid', 'node_pk', 'index', 'process_pk'}``, sorted by process creation time and then index.
        ``extrapolation`` is True where the host has an element no training host had, the ion content lies
        outside the training range, the features lie far beyond the training electrodes' (``features_outside``)
        or a batch's record lists the ion-rich member as charged, None for predictions stored before the flags
        existed (a prediction stored before the ion-content flag is judged by its elements alone). For a batch,
        ``battery_id`` is the record's and ``index`` its row in the predicted dataset; for a structure pair,
        ``battery_id`` is ``'<charged formula> -> <discharged formula>'`` and ``index`` is None. ``node`` reads
        ``ArrayData<pk>[index]`` or ``Float<pk>``.
    :raises TypeError: if ``model`` is not a ``VoltageModelData``.
    :raises ValueError: if ``ion`` is not one of the working ions (an empty list would hide a typo such as 'li'),
        ``min_voltage`` or ``max_voltage`` is not a finite number, or ``min_voltage`` is above ``max_voltage``.
    """
    from aiida_voltnet.ml.records import WORKING_IONS

    if ion is not None and ion not in WORKING_IONS:
        raise ValueError(f'unknown working ion {ion!r}; choose one of {", ".join(WORKING_IONS)}')
    for name, bound in (('min_voltage', min_voltage), ('max_voltage', max_voltage)):
        if bound is not None and (isinstance(bound, bool) or not isinstance(bound, numbers.Real)
                                  or not math.isfinite(bound)):
            raise ValueError(f'{name} must be a finite number of volts, not {bound!r}')
    if min_voltage is not None and max_voltage is not None and min_voltage > max_voltage:
        raise ValueError(f'min_voltage {min_voltage} V is above max_voltage {max_voltage} V: no prediction can match')
    if not isinstance(model, orm.Node):
        model = orm.load_node(model)
    if not isinstance(model, VoltageModelData):
        raise TypeError(f'{type(model).__name__}<{model.pk}> is not a voltage model (VoltageModelData)')
    query = orm.QueryBuilder()  # every node of the model's version: a training taken from the cache (or a
    # re-import) made another node of the same model, whose predictions are this model's too
    query.append(VoltageModelData, filters={'or': [{'id': model.pk},
                                                   {'attributes.model_version': model.model_version}]}
                 if model.model_version else {'id': model.pk}, tag='model')
    query.append(orm.CalcFunctionNode, with_incoming='model', tag='process', project=['id', 'ctime'],
                 filters={'process_type': {'in': list(PREDICTION_PROCESS_TYPES)}, 'attributes.exit_status': 0})
    # the outputs' columns, not their nodes: a profile of 100k predictions must not hold 400k nodes in the session
    # (each later query then re-processed all of them); a batch's ArrayData is loaded when its rows are read
    query.append(orm.Data, with_incoming='process', edge_project=['label'], tag='output', edge_tag='link',
                 project=['id', 'uuid', 'node_type', 'attributes'], edge_filters={'type': LinkType.CREATE.value})
    by_process: dict[int, dict] = {}
    for row in query.iterdict():
        process_pk, ctime = row['process']['id'], row['process']['ctime']
        entry = by_process.setdefault(process_pk, {'ctime': ctime, 'outputs': {}})
        entry['outputs'][row['link']['label']] = row['output']
    pairs = {}  # a structure pair's voltage filter first, then its inputs for all pairs in two queries
    for process_pk, entry in by_process.items():
        outputs = entry['outputs']
        if not _is_array(outputs.get('result')) and 'voltage' in outputs:
            value = outputs['voltage']['attributes'].get('value')
            if (min_voltage is None or value >= min_voltage) and (max_voltage is None or value <= max_voltage):
                pairs[process_pk] = {}
    pairs.update(_pair_inputs(list(pairs), ion))  # those of another ion stay empty: left out below
    rows = []
    for process_pk, entry in sorted(by_process.items(), key=lambda item: item[1]['ctime']):
        outputs = entry['outputs']
        if _is_array(outputs.get('result')):
            array = orm.load_node(outputs['result']['id'])
            mean, std = array.get_array('mean'), array.get_array('std')
            ions, ids, index = array.get_array('working_ions'), array.get_array('battery_ids'), array.get_array('index')
            names = array.get_arraynames()
            unseen = array.get_array('unseen_elements') if 'unseen_elements' in names else None
            for flag in ('ion_content_outside', 'end_members_reversed', 'features_outside'):  # the other marks
                if unseen is not None and flag in names:
                    unseen = unseen | array.get_array(flag)
            keep = np.ones(len(mean), dtype=bool)
            if ion is not None:
                keep &= ions == ion
            if min_voltage is not None:
                keep &= mean >= min_voltage
            if max_voltage is not None:
                keep &= mean <= max_voltage
            rows.extend({'battery_id': str(ids[i]), 'label': str(ids[i]), 'working_ion': str(ions[i]),
                         'voltage': float(mean[i]), 'uncertainty': float(std[i]),
                         'extrapolation': None if unseen is None else bool(unseen[i]),
                         'node': f'ArrayData<{array.pk}>[{int(index[i])}]', 'node_uuid': array.uuid,
                         'node_pk': array.pk, 'index': int(index[i]), 'process_pk': process_pk}
                        for i in np.flatnonzero(keep))
        elif pairs.get(process_pk):
            inputs, voltage = pairs[process_pk], outputs['voltage']
            label = f'{inputs["charged"]} -> {inputs["discharged"]}'
            flags = [outputs[name]['attributes'].get('list') or []
                     for name in ('unseen_elements', 'ion_content_outside', 'features_outside') if name in outputs]
            rows.append({'battery_id': label, 'label': label, 'working_ion': inputs['working_ion'],
                         'voltage': voltage['attributes']['value'],
                         'uncertainty': outputs['uncertainty']['attributes']['value'] if 'uncertainty' in outputs
                         else None,
                         'extrapolation': any(flags) if 'unseen_elements' in outputs else None,
                         'node': f'Float<{voltage["id"]}>', 'node_uuid': voltage['uuid'], 'node_pk': voltage['id'],
                         'index': None, 'process_pk': process_pk})
    return rows


def _is_array(output: dict | None) -> bool:
    """Whether a projected output (``node_type`` column) is an ``ArrayData`` (or a subclass)."""
    return output is not None and output['node_type'].startswith('data.core.array.')


def _pair_inputs(process_pks: list[int], ion: str | None) -> dict[int, dict]:
    """``{process pk: {'working_ion': 'Li', 'charged': formula, 'discharged': formula}}`` of structure-pair
    predictions, in two queries whatever their number (the ions, then the structures of those of ``ion``); the
    formulas are ``StructureData.get_formula(mode='hill_compact')``."""
    result: dict[int, dict] = {}
    for chunk in (process_pks[start:start + 10000] for start in range(0, len(process_pks), 10000)):
        query = orm.QueryBuilder().append(orm.CalcFunctionNode, filters={'id': {'in': chunk}}, tag='p',
                                          project=['id'])
        query.append(orm.Str, with_outgoing='p', edge_filters={'label': 'working_ion'},
                     project=['attributes.value'])
        ions = {pk: value for pk, value in query.all() if ion is None or value == ion}
        if not ions:
            continue
        query = orm.QueryBuilder().append(orm.CalcFunctionNode, filters={'id': {'in': list(ions)}}, tag='p',
                                          project=['id'])
        query.append(orm.StructureData, with_outgoing='p', edge_filters={'label': {'in': ['charged', 'discharged']}},
                     edge_project=['label'], project=['*'])
        for pk, structure, label in query.all():
            result.setdefault(pk, {'working_ion': ions[pk]})[label] = structure.get_formula(mode='hill_compact')
    return {pk: inputs for pk, inputs in result.items() if {'charged', 'discharged'} <= set(inputs)}
