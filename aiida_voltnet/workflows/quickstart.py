"""``run_quickstart``: the whole tour in one call (for ``voltnet quickstart``): import a CSV, train with a
protocol, predict the three pymatgen-shipped electrode pairs, and explain each prediction from the graph."""
from __future__ import annotations

import os
import re
from typing import Any, Callable

from aiida import orm
from aiida.engine import run_get_node

from aiida_voltnet.ml.structures import SHIPPED_PAIRS, shipped_pair
from aiida_voltnet.provenance import prediction_provenance

from .predict import PredictWorkChain
from .train import TrainWorkChain

__all__ = ('run_quickstart', 'shipped_structure_pairs', 'structure_node')


def _port_name(name: str) -> str:
    """A valid link label from a pair name: ``Li3V2(PO4)3`` -> ``Li3V2_PO4_3``."""
    return re.sub(r'_+', '_', re.sub(r'\W', '_', name)).strip('_')


def structure_node(structure) -> orm.StructureData:
    """``StructureData`` of a pymatgen structure, with oxidation states (and the spin property pymatgen attaches
    to ``Species``) dropped: aiida-core 2.9 refuses ``Species(..., spin=None)``, as in pymatgen's shipped
    ``Li3V2(PO4)3``, and neither enters an electrode record."""
    structure = structure.copy()
    structure.remove_oxidation_states()
    return orm.StructureData(pymatgen=structure)


def shipped_structure_pairs(names=None) -> dict[str, dict[str, Any]]:
    """``{port_name: {'charged', 'discharged', 'working_ion', 'name'}}`` for pymatgen's shipped pairs, as nodes."""
    pairs = {}
    for name in names or SHIPPED_PAIRS:
        charged, discharged, ion = shipped_pair(name)
        pairs[_port_name(name)] = {'charged': structure_node(charged), 'discharged': structure_node(discharged),
                                   'working_ion': orm.Str(ion), 'name': name}
    return pairs


def _provenance_line(answer: dict) -> str:
    """One line of provenance: inputs -> predict process -> model version <- training <- data source."""
    inputs = answer.get('inputs', {})
    structures = ', '.join(f'{k} StructureData<{v["pk"]}>' for k, v in inputs.items() if isinstance(v, dict))
    dataset = answer.get('training_dataset', {})
    source = dataset.get('origin', {})
    where = (f'CSV {source.get("file", {}).get("filename")} sha256 {str(source.get("sha256"))[:12]}'
             if source.get('kind') == 'csv' else f'{source.get("kind")}')
    return (f'{"":>14}from {structures} by {answer["process"]["process_type"].split(":")[-1]}<{answer["process"]["pk"]}>'
            f' with model version {answer["model_version"][:12]} trained by '
            f'{answer["training_process"]["process_type"].split(":")[-1]}<{answer["training_process"]["pk"]}> on '
            f'{dataset.get("n_records")} records from {where}')


def run_quickstart(csv_path: str | os.PathLike, protocol: str = 'fast', echo: Callable[[str], Any] = print,
                   overrides: dict | None = None, run: Callable = run_get_node) -> dict[str, Any]:
    """Train on ``csv_path`` with ``protocol`` and predict the shipped pairs; needs a loaded profile.

    ``run`` runs each work chain and returns ``(outputs, node)`` (aiida-core's ``run_get_node`` by default;
    ``voltnet quickstart`` passes :func:`aiida_voltnet.cli.running.run_interruptible`).

    :returns: ``{'train_workchain', 'model', 'metrics', 'predict_workchain', 'predictions', 'skipped'}``;
        ``predictions[name]`` has ``voltage``, ``uncertainty`` (V), ``working_ion`` and ``provenance`` (the
        answer of :func:`aiida_voltnet.provenance.prediction_provenance` for its voltage node).
    :raises RuntimeError: if the training work chain does not finish successfully.
    """
    csv = orm.SinglefileData(os.path.abspath(csv_path))
    builder = TrainWorkChain.get_builder_from_protocol(csv, protocol=protocol, overrides=overrides)
    echo(f'Training with protocol {protocol!r} on {os.path.basename(str(csv_path))} ...')
    outputs, train_node = run(builder)
    if not train_node.is_finished_ok:
        raise RuntimeError(f'TrainWorkChain<{train_node.pk}> failed with exit status {train_node.exit_status}: '
                           f'{train_node.exit_message}')
    model, metrics = outputs['model'], outputs['metrics'].get_dict()
    echo(f'Model<{model.pk}> {model.model_name} version {model.model_version[:12]}: held-out MAE '
         f'{metrics["mae"]:.3f} V on {metrics["n"]} records')

    from aiida_voltnet.calculations.functions import _check_model_can_predict, pair_record

    pairs, skipped = {}, {}
    for port, pair in shipped_structure_pairs().items():
        ion = pair['working_ion'].value
        # the checks PredictWorkChain makes: an ion the model never saw; a field its featurizer needs that a
        # structure pair has not (the paper featurizer's capacity_grav and energy_grav)
        reason = _check_model_can_predict(model, [pair_record(pair['charged'], pair['discharged'], ion, pair['name'])])
        if reason:
            skipped[pair['name']] = reason
        if pair['name'] in skipped:
            echo(f'Skipping {pair["name"]}: {skipped[pair["name"]]}')
            continue
        pairs[port] = pair
    predictions: dict[str, Any] = {}
    predict_node = None
    if pairs:
        structures = {port: {k: v for k, v in pair.items() if k != 'name'} for port, pair in pairs.items()}
        results, predict_node = run(PredictWorkChain, model=model, structures=structures)
        if not predict_node.is_finished_ok:
            raise RuntimeError(f'PredictWorkChain<{predict_node.pk}> failed: {predict_node.exit_message}')
        for port, pair in pairs.items():
            voltage, uncertainty = results['voltages'][port], results['uncertainties'][port]
            predictions[pair['name']] = {'voltage': voltage.value, 'uncertainty': uncertainty.value,
                                         'working_ion': pair['working_ion'].value, 'node': voltage.uuid,
                                         'provenance': prediction_provenance(voltage)}
            echo(f'{pair["name"]:>12s}: {voltage.value:.2f} ± {uncertainty.value:.2f} V vs '
                 f'{pair["working_ion"].value}/{pair["working_ion"].value}+  (Float<{voltage.pk}>)')
            echo(_provenance_line(predictions[pair['name']]['provenance']))
        from aiida.manage.configuration import get_config, get_profile

        name = get_profile().name  # the pks are this profile's: another one has other nodes under them (review)
        other = get_config().default_profile_name != name
        echo(f'Full answer for any prediction: voltnet provenance <pk>{f" --profile {name}" if other else ""}'
             + ('' if other else '  (add --profile if it is not the default)'))
    return {'train_workchain': train_node.pk, 'model': {'pk': model.pk, 'uuid': model.uuid,
                                                        'model_version': model.model_version},
            'metrics': metrics, 'predict_workchain': predict_node.pk if predict_node else None,
            'predictions': predictions, 'skipped': skipped}
