"""``PredictWorkChain``: predicted average voltages, with uncertainty, for a dataset (one batch process, one
``ArrayData``) and/or for named structure pairs (one ``Float`` voltage and uncertainty per pair, each linked to
its two ``StructureData``)."""
from __future__ import annotations

from aiida import orm
from aiida.engine import WorkChain, if_

from aiida_voltnet.calculations import functions
from aiida_voltnet.calculations.functions import predict_structure_pair, predict_voltages
from aiida_voltnet.workflows.ports import StructurePairsNamespace
from aiida_voltnet.workflows.train import called, step_metadata

__all__ = ('PredictWorkChain',)


class PredictWorkChain(WorkChain):
    """Predict average voltages with a trained model, for a dataset and/or a namespace of structure pairs."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(predict_voltages.process_class, include=('model', 'dataset'))
        # the calculation function's namespace is dynamic (any Data): a misspelt input ('datset') was stored and
        # ignored; and its help is the function's, not this chain's
        spec.inputs.valid_type = None  # not dynamic (valid_type Data, copied from the function, made it so
        spec.inputs.dynamic = False  # again in a work chain that exposes this one)
        spec.inputs.help = 'A model, and electrodes to predict: a `dataset`, `structures`, or both.'
        spec.inputs['dataset'].required = False
        spec.inputs['dataset'].help = 'Electrodes to predict in one batch (a screen of 10^4-10^5 is one process).'
        spec.inputs['model'].help = 'The trained model (a VoltageModelData, e.g. the `model` output of voltnet.train).'
        spec.inputs['structures'] = StructurePairsNamespace(
            'structures', required=False,
            help='Structure pairs, `{name: {charged: StructureData, discharged: StructureData, working_ion: Str (or '
                 'a plain str)}}`; each gives outputs voltages.<name> and uncertainties.<name>.')
        spec.inputs.validator = cls.validate_inputs
        spec.outline(
            cls.relay_training_warnings,
            if_(cls.has_dataset)(cls.predict_dataset),
            if_(cls.has_structures)(cls.predict_structures),
        )
        spec.output('predictions', valid_type=orm.ArrayData, required=False,
                    help='For `dataset`: arrays mean, std (V), index, battery_ids, working_ions, unseen_elements, '
                         'ion_content_outside, features_outside, end_members_reversed.')
        spec.output_namespace('voltages', valid_type=orm.Float, dynamic=True,
                              help='For `structures`: predicted average voltage (V) per pair name.')
        spec.output_namespace('uncertainties', valid_type=orm.Float, dynamic=True,
                              help='For `structures`: uncertainty (V) per pair name: the ensemble spread, times its '
                                   'calibration scale where training could calibrate it; 0 for a single model.')
        spec.output_namespace('unseen_elements', valid_type=orm.List, dynamic=True,
                              help='For `structures`: per pair name, the host elements no training host had '
                                   '(empty: none; otherwise the prediction extrapolates).')
        spec.output_namespace('ion_content_outside', valid_type=orm.List, dynamic=True,
                              help='For `structures`: per pair name, how its ion content lies outside the training '
                                   'electrodes\' range (empty: inside; otherwise the prediction extrapolates).')
        spec.output_namespace('features_outside', valid_type=orm.List, dynamic=True, required=False,
                              help='For `structures`: per pair name, which features lie far beyond the training '
                                   'rows\' range (empty: none; otherwise the prediction extrapolates).')
        spec.output_namespace('input_warnings', valid_type=orm.List, dynamic=True, required=False,
                              help='For `structures`: per pair name, the warnings its structures gave, as '
                                   '"Category: message" (two hosts that are not one framework, occupancies that look '
                                   'rounded; empty: none).')
        spec.exit_code(300, 'ERROR_INVALID_DATA', message='The input data were refused: {exception}')

    @classmethod
    def validate_inputs(cls, inputs, ctx=None):
        """Everything that can be refused is refused here, before any node is stored (where this chain's inputs
        are exposed with some left out, when this chain is launched)."""
        if functions.lacks_ports(ctx, ('model', 'dataset', 'structures')):
            return None
        if 'dataset' not in inputs and not inputs.get('structures'):
            return 'give a `dataset`, `structures`, or both'
        model = inputs['model']
        if 'metadata' in (inputs.get('structures') or {}):  # the calculation function's own metadata argument
            return "structures: rename 'metadata': a pair may not be named metadata"
        if 'dataset' in (inputs.get('structures') or {}):  # its call label would be the dataset step's own
            return ("structures: rename 'dataset': a pair may not be named dataset (its step would be called "
                    "predict_dataset, the label of the dataset's prediction)")
        try:
            message = functions.check_voltage_model(model)
            if message:
                return message
            if 'dataset' in inputs:
                message = functions._validate_model_dataset({'model': model, 'dataset': inputs['dataset']})
                if message:
                    return message
            for name, (charged, discharged, ion) in functions._pairs(inputs.get('structures', {})).items() \
                    if inputs.get('structures') else ():
                record = functions.pair_record(charged, discharged, ion, battery_id=name)
                message = functions._check_model_can_predict(model, [record])
                if message:
                    return f'pair {name!r}: {message}'
        except Exception as exception:  # noqa: BLE001 - the message names the pair and the problem
            return f'{type(exception).__name__}: {exception}'
        return None

    def relay_training_warnings(self):
        """What the model's training warned about (a rough uncertainty calibration, the paper's leak), in this
        report, where the predictions' user reads it; :func:`~aiida_voltnet.provenance.training_warnings`."""
        from aiida_voltnet.provenance import training_warnings

        for line in training_warnings(self.inputs.model.creator, self.inputs.model):
            self.report(f"the model's training warned: {line}")

    def has_dataset(self):
        return 'dataset' in self.inputs

    def has_structures(self):
        return bool(self.inputs.get('structures'))

    def predict_dataset(self):
        try:
            predictions = predict_voltages(model=self.inputs.model, dataset=self.inputs.dataset,
                                           metadata=step_metadata(self, 'predict_dataset'))
        except ValueError as exception:
            if called(self.node, 'predict_dataset'):
                raise  # it ran and failed (its node excepted): not a refusal of the inputs
            return self.exit_codes.ERROR_INVALID_DATA.format(exception=str(exception))
        self.out('predictions', predictions)
        total = predictions.base.attributes.get('n_predictions')
        flagged = predictions.base.attributes.get('n_unseen_elements', 0)
        if flagged:
            self.report(f'extrapolation: {flagged} of {total} record(s) have host elements no training host had '
                        '(array unseen_elements)')
        outside = predictions.base.attributes.get('n_ion_content_outside', 0)
        if outside:
            self.report(f'extrapolation: {outside} of {total} record(s) have an ion content outside the training '
                        'range (array ion_content_outside)')
        swapped = predictions.base.attributes.get('n_end_members_reversed', 0)
        if swapped:
            self.report(f'extrapolation: {swapped} of {total} record(s) list the ion-rich end member as charged, '
                        'as only a few training electrodes did (array end_members_reversed): swap the formulas '
                        'unless that order is meant')
        beyond = predictions.base.attributes.get('n_features_outside', 0)
        if beyond:
            self.report(f'extrapolation: {beyond} of {total} record(s) have features far beyond the training range '
                        '(array features_outside)')
        return None

    def predict_structures(self):
        flagged, said = [], []
        for name, pair in self.inputs.structures.items():
            try:
                result = predict_structure_pair(model=self.inputs.model, charged=pair['charged'],
                                                discharged=pair['discharged'], working_ion=pair['working_ion'],
                                                metadata=step_metadata(self, f'predict_{name}'))
            except ValueError as exception:
                if called(self.node, f'predict_{name}'):
                    raise  # it ran and failed (its node excepted): not a refusal of the inputs
                return self.exit_codes.ERROR_INVALID_DATA.format(exception=f'pair {name!r}: {exception}')
            self.out(f'voltages.{name}', result['voltage'])
            self.out(f'uncertainties.{name}', result['uncertainty'])
            self.out(f'unseen_elements.{name}', result['unseen_elements'])
            self.out(f'ion_content_outside.{name}', result['ion_content_outside'])
            self.out(f'features_outside.{name}', result['features_outside'])
            self.out(f'input_warnings.{name}', result['input_warnings'])
            said.extend(f'{name} ({message})' for message in result['input_warnings'].get_list())
            unseen = result['unseen_elements'].get_list()
            if unseen:
                flagged.append(f'{name} (host elements no training host had: {", ".join(unseen)})')
            flagged.extend(f'{name} ({phrase})' for phrase in result['ion_content_outside'].get_list())
            flagged.extend(f'{name} ({phrase})' for phrase in result['features_outside'].get_list())
        if said:  # the pair's own report has them too, but a cache clone has no report and a user reads this one
            self.report(f'input warnings: {"; ".join(said)}')
        if flagged:
            self.report(f'extrapolation: {"; ".join(flagged)}')
        return None
