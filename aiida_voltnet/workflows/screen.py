"""``ScreenWorkChain`` (``voltnet.screen``): many candidate electrodes -> one batch ML prediction with uncertainty
-> a selection -> DFT verification of the selected (``voltnet.verify``) -> an ML-vs-DFT summary node, and
optionally one active-learning round: the verified electrodes join the training records and the model is
retrained, all in the provenance graph.

A candidate that cannot be featurized (host frameworks differ, a working ion the model never saw) is left out of
the prediction and listed in the summary's ``rejected``; a selected candidate whose verification fails (no
pseudopotential for an element, a failed pw.x) is listed with its exit status: the screen goes on with the others.
The working-ion metal is computed once per ion and shared by all verifications of that ion.
"""
from __future__ import annotations

from aiida import orm
from aiida.engine import ToContext, WorkChain, if_

from aiida_voltnet.calculations import functions
from aiida_voltnet.calculations.dft import (add_verified_records, check_selection, energy_per_atom, ion_metal_cell,
                                            select_candidates, summarize_screen)
from aiida_voltnet.calculations.functions import assemble_dataset_from_structures, predict_voltages, train_model
from aiida_voltnet.data.dataset import ElectrodeDataset
from aiida_voltnet.data.model import VoltageModelData
from aiida_voltnet.ml.featurizers import InputWarning, get_featurizer
from aiida_voltnet.ml.models import regressor_family

from .ports import StructurePairsNamespace
from .train import step_metadata
from .verify import VerifyWorkChain, launch_refusal, load_pseudo_family, pw_builder

__all__ = ('ScreenWorkChain',)


#: The training inputs that ``retrain`` takes from the screened model where not given.
RECIPE = ('featurizer', 'model', 'seed', 'settings')


def training_recipe(model: VoltageModelData) -> dict:
    """The ``featurizer``, ``model``, ``seed`` and ``settings`` nodes that trained ``model`` (by ``train_model`` or
    the ``voltnet.train`` job), those it was given; empty for a model without a recorded training."""
    creator = model.creator
    if creator is None or creator.process_type not in ('aiida.calculations:voltnet.train_model',
                                                       'aiida.calculations:voltnet.train'):
        return {}
    return {link.link_label: link.node for link in creator.base.links.get_incoming().all()
            if link.link_label in RECIPE}


def retrain_inputs(model: VoltageModelData, retrain) -> dict:
    """The inputs of the retraining: ``retrain`` over the screened ``model``'s training recipe. When ``retrain``
    names a model of another kind and no settings, the inherited settings lose what that model cannot take (a new
    ``Dict``): the torch ``train_overrides`` unless it is a torch network, the ``model_params`` of another
    regressor (trees, svr, krr), ``members`` for svr and krr (deterministic: one member). Inherited settings also
    lose a ``device`` ``cuda...`` where torch sees no CUDA device (the screened model trained on a GPU machine)."""
    recipe = training_recipe(model)
    inputs = {**recipe, **dict(retrain)}
    if 'settings' in recipe and 'settings' not in retrain:
        settings = recipe['settings'].get_dict()
        foreign = set()
        if 'model' in retrain:
            new, old = (regressor_family(getattr(name, 'value', name))
                        for name in (retrain['model'], recipe.get('model', 'voltnet')))
            if new is not None and new != old:
                foreign = {'model_params'} | ({'train_overrides'} if new != 'torch' else set())
            if new in ('svr', 'krr') and (settings.get('members') or 1) > 1:  # deterministic: one member only
                foreign.add('members')
        device = str(settings.get('device') or 'auto')
        if device.startswith('cuda'):  # the screened model trained on a GPU machine; this one may have none
            import torch

            if not torch.cuda.is_available():
                foreign.add('device')
        if foreign & set(settings):
            inputs['settings'] = orm.Dict({key: value for key, value in settings.items() if key not in foreign})
    return inputs


def dropped_settings_note(dropped, model: str, device: str | None) -> str:
    """Why the retraining left out inherited ``settings`` keys (``retrain_inputs``): those ``model`` cannot take,
    and a ``device`` because torch sees no CUDA device here (which ``model`` could take)."""
    foreign = [key for key in dropped if key != 'device']
    return ((f"; without its {', '.join(foreign)}, which model {model} cannot take" if foreign else '')
            + (f'; without its device {device}: torch sees no CUDA device here' if 'device' in dropped else ''))


class ScreenWorkChain(WorkChain):
    """Screen candidate electrodes with a model, verify the most promising with DFT, optionally retrain."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('model', valid_type=VoltageModelData, help='The trained model that screens the candidates.')
        spec.inputs['candidates'] = StructurePairsNamespace(
            'candidates', help='Candidate electrodes, `{name: {charged: StructureData, discharged: StructureData, '
                               'working_ion: Str (or a plain str)}}`; `name` becomes the battery_id.')
        spec.input('selection', valid_type=orm.Dict, serializer=orm.to_aiida_type,
                   default=lambda: orm.Dict({'mode': 'window', 'top_k': 1}),
                   help='Which predictions to verify: mode `window` (top_k highest voltages within voltage_min..'
                        'voltage_max) or `uncertainty` (top_k largest ensemble spreads within the window).')
        spec.expose_inputs(VerifyWorkChain, namespace='verify',
                           exclude=('charged', 'discharged', 'working_ion', 'model', 'ml_voltage', 'ion_metal',
                                    'ion_energy', 'cutoff_elements'),
                           namespace_options={'help': 'DFT settings of every verification (see voltnet.verify; '
                                                      'VerifyWorkChain.get_protocol_inputs gives them per protocol).'})
        spec.expose_inputs(train_model.process_class, namespace='retrain', exclude=RECIPE,
                           namespace_options={'required': False, 'populate_defaults': False,
                                              'help': 'Give `retrain.dataset` (e.g. the records the model was '
                                                      'trained on) to run one active-learning round: the verified '
                                                      'electrodes join it and a model is trained on the union with '
                                                      "the screened model's featurizer/model/seed/settings, each "
                                                      'replaced where given here.'})
        for key, valid_type in (('featurizer', orm.Str), ('model', orm.Str), ('seed', orm.Int),
                                ('settings', orm.Dict)):  # no default: what is not given is the screened model's
            spec.input(f'retrain.{key}', valid_type=valid_type, required=False, serializer=orm.to_aiida_type,
                       help=f"As train_model's {key}; default: the screened model's (train_model's own default "
                            'for a model without a recorded training).')
        spec.inputs['retrain'].dynamic = False
        spec.inputs['retrain'].validator = None
        spec.inputs.validator = cls.validate_inputs
        spec.outline(
            cls.setup,
            cls.predict,
            cls.select,
            if_(cls.has_selection)(
                cls.run_references,
                cls.inspect_references,
                cls.run_verifications,
                cls.inspect_verifications,
            ),
            cls.summarize,
            if_(cls.should_retrain)(cls.retrain),
            cls.finalize,
        )
        spec.output('predictions', valid_type=orm.ArrayData, help='Batch prediction of every valid candidate.')
        spec.output('selected', valid_type=orm.List, help='battery_ids chosen for DFT verification.')
        spec.output('summary', valid_type=orm.Dict, help='ML vs DFT table of the screen (see summarize_screen).')
        spec.output_namespace('dft_voltages', valid_type=orm.Float, dynamic=True,
                              help='DFT voltage (V) per verified candidate.')
        spec.output('augmented_dataset', valid_type=ElectrodeDataset, required=False,
                    help='retrain.dataset plus the verified electrodes (DFT voltage as target).')
        spec.output('retrained_model', valid_type=VoltageModelData, required=False,
                    help='The model trained on augmented_dataset.')
        # 201: the family cannot serve, or none of the selected could be submitted (each one VerifyWorkChain would
        # refuse at launch; the summary is still output)
        spec.exit_code(201, 'ERROR_UNKNOWN_PSEUDO_FAMILY', message='no verification could run: {message}')
        spec.exit_code(301, 'ERROR_NO_VALID_CANDIDATES', message='no candidate could be predicted: {message}')
        spec.exit_code(302, 'ERROR_ALL_VERIFICATIONS_FAILED',
                       message='every selected candidate that was submitted failed its verification; see the '
                               'summary output')
        spec.exit_code(303, 'ERROR_RETRAIN_FAILED', message='retraining on the verified electrodes failed: {message}')
        spec.exit_code(304, 'ERROR_METAL_REFERENCE_FAILED',
                       message='no verification could run: the DFT of a working-ion metal reference failed: '
                               '{message}')

    @classmethod
    def reserved_candidate_names(cls) -> set[str]:
        """Names a candidate cannot have: the verified candidates are passed by name as keyword arguments to
        ``summarize_screen`` and ``add_verified_records``, where a name equal to one of their own arguments
        (``outcomes``, ``dataset``, ...) would replace that argument without an error, and drop the DFT result."""
        return {name for function in (summarize_screen, add_verified_records)
                for name in function.process_class.spec().inputs}

    @staticmethod
    def _candidate_records(pairs) -> list:
        """The records of the candidates that make one electrode (the others are left out at the prediction, with
        the reason, and never reach the DFT)."""
        records = []
        for name, (charged, discharged, ion) in pairs.items():
            try:
                records.append(functions.pair_record(charged, discharged, ion, battery_id=name))
            except Exception:  # noqa: BLE001 - reported by setup, which leaves the candidate out
                continue
        return records

    @classmethod
    def validate_inputs(cls, inputs, ctx=None):
        if functions.lacks_ports(ctx, ('model', 'candidates', 'selection')):  # exposed with some left out: checked
            return None  # when this chain is launched
        clashes = sorted(set(inputs.get('candidates') or {}) & cls.reserved_candidate_names())
        if clashes:
            return (f'candidates: rename {", ".join(map(repr, clashes))}: a candidate may not be named '
                    f'{", ".join(sorted(cls.reserved_candidate_names()))} (the names of the arguments of the '
                    'calculation functions that take the verified candidates by name)')
        try:  # the same namespace check as the structure-pair calculation functions
            pairs = functions._pairs(inputs.get('candidates') or {})
        except ValueError as exception:
            return f'candidates: {exception}'
        message = functions.check_voltage_model(inputs['model'])
        if message:
            return f'model: {message}'
        message = check_selection(inputs['selection'].get_dict())
        if message:
            return message
        if inputs['selection'].get_dict().get('mode') == 'uncertainty' and \
                inputs['model'].base.attributes.get('n_members', 2) < 2:
            return (f'selection mode uncertainty ranks by the ensemble spread, and model {inputs["model"].model_name} '
                    '(one member) has none: every spread is 0, so it would pick the first candidates; use mode '
                    'window or an ensemble model')
        retrain = inputs.get('retrain') or {}
        if retrain and 'dataset' not in retrain:
            return 'retrain needs `retrain.dataset`, the records the verified electrodes join'
        if retrain:  # train_model's own checks, now rather than after hours of pw.x, on what it will be given
            try:
                functions.dataset_records(retrain['dataset'])
            except Exception as exception:  # noqa: BLE001 - the dataset's own error names it
                return f'retrain.dataset: {type(exception).__name__}: {exception}'
            retrain = retrain_inputs(inputs['model'], retrain)
            try:
                message = functions._validate_train(retrain)
                settings = retrain['settings'].get_dict() if 'settings' in retrain else {}
                target = settings.get('target', 'average_voltage')
                if not message and target != 'average_voltage':
                    message = (f'the verified electrodes join the training records with their DFT voltage only, so '
                               f'the retrained model must predict the average voltage, not {target}')
                if not message:  # the verified electrodes are structure pairs: the featurizer must describe them
                    featurizer = get_featurizer(functions._value(retrain.get('featurizer', 'leakfree')), _quiet=True,
                                                **settings.get('featurizer_options', {}))
                    featurizer.check_records(cls._candidate_records(pairs))
            except Exception as exception:  # noqa: BLE001 - the message names the setting
                return f'retrain: {type(exception).__name__}: {exception}'
            if message:
                return f'retrain: {message}'
        return None

    # -- outline -------------------------------------------------------------------------------------------------------
    def setup(self):
        """Check that verifications can run at all (the pseudopotential family and its cutoffs); leave out, with the
        reason, every candidate the model cannot predict; the rest go on."""
        verify = self._verify_inputs()
        try:
            load_pseudo_family(verify['pseudo_family'].value, verify['settings']['cutoff_stringency'])
        except ValueError as exception:
            return self.exit_codes.ERROR_UNKNOWN_PSEUDO_FAMILY.format(message=str(exception))
        self.ctx.outcomes = {}
        self.ctx.valid = {}
        self.ctx.dft_voltages = {}
        retrain = self.inputs.get('retrain') or {}
        # a verified candidate joins the retraining as 'dft:<name>': one an earlier round verified (its augmented
        # dataset given as retrain.dataset) is left out, so that the rest of the pool can be screened again
        held = {record.battery_id for record in functions.dataset_records(retrain['dataset'])} if retrain else set()
        for name, pair in self.inputs.candidates.items():
            if f'dft:{name}' in held:
                message = (f'already verified: retrain.dataset holds dft:{name} (an earlier round\'s); rename the '
                           'candidate to verify it again')
                self.ctx.outcomes[name] = f'rejected: {message}'
                self.report(f'candidate {name!r} left out: {message}')
                continue
            try:  # what the pair's input warns of (two hosts that are not one framework) goes to the report
                with functions._warnings_reported(InputWarning):
                    record = functions.pair_record(pair['charged'], pair['discharged'], pair['working_ion'].value,
                                                   battery_id=name, report=True)
                message = functions._check_model_can_predict(self.inputs.model, [record])
            except Exception as exception:  # noqa: BLE001 - ElectrodeDataError names pair and field
                message = f'{type(exception).__name__}: {exception}'
            if message:
                self.ctx.outcomes[name] = f'rejected: {message}'
                self.report(f'candidate {name!r} left out: {message}')
            else:
                self.ctx.valid[name] = pair
        if not self.ctx.valid:
            return self.exit_codes.ERROR_NO_VALID_CANDIDATES.format(message='; '.join(self.ctx.outcomes.values()))
        return None

    def predict(self):
        dataset = assemble_dataset_from_structures(**self.ctx.valid, metadata=step_metadata(self, 'assemble'))
        self.ctx.predictions = predict_voltages(model=self.inputs.model, dataset=dataset,
                                                metadata=step_metadata(self, 'predict'))
        self.out('predictions', self.ctx.predictions)
        self.report(f'predicted {len(self.ctx.valid)} candidate(s) in one batch')
        names = self.ctx.predictions.get_array('battery_ids')
        flagged = self.ctx.predictions.get_array('unseen_elements')
        if flagged.any():
            self.report(f'extrapolation: the hosts of {", ".join(names[flagged])} have elements no training host had')
        outside = self.ctx.predictions.get_array('ion_content_outside')
        if outside.any():
            self.report(f'extrapolation: the ion contents of {", ".join(names[outside])} lie outside the training '
                        'range')
        beyond = self.ctx.predictions.get_array('features_outside')
        if beyond.any():
            self.report(f'extrapolation: {", ".join(names[beyond])} have features far beyond the training range')

    def select(self):
        self.ctx.selected = select_candidates(self.ctx.predictions, self.inputs.selection,
                                              metadata=step_metadata(self, 'select'))
        self.out('selected', self.ctx.selected)
        self.report(f'selected for DFT: {", ".join(self.ctx.selected.get_list()) or "none"}')

    def has_selection(self):
        return bool(self.ctx.selected.get_list())

    def _verify_inputs(self):
        inputs = self.exposed_inputs(VerifyWorkChain, namespace='verify')
        inputs.pop('metadata', None)
        return inputs

    def _refusal(self, inputs, name, extra=None) -> str | None:
        """Why VerifyWorkChain would refuse candidate ``name`` at launch (e.g. an element without a pseudopotential),
        or None."""
        refusal = launch_refusal({**inputs, **self.ctx.valid[name], **(extra or {}), 'model': self.inputs.model})
        if not refusal:
            return None
        label, arguments = refusal
        return VerifyWorkChain.exit_codes[label].format(**arguments).message

    def run_references(self):
        """One metal calculation per working ion among the selected that can be verified: a candidate that
        VerifyWorkChain would refuse at launch is left out here, with the reason, so that no metal reference runs
        for it alone (skipped also where the family lacks the element)."""
        inputs = self._verify_inputs()
        settings = inputs['settings'].get_dict()
        family = load_pseudo_family(inputs['pseudo_family'].value)
        running = {}
        for name in self.ctx.selected.get_list():
            message = self._refusal(inputs, name)
            if message:
                self.ctx.outcomes[name] = f'not verified: {message}'
                self.report(f'verification of {name!r} cannot run ({message}); going on with the others')
        ion_nodes = {}  # a candidate's working_ion Str per ion: the metal cell is made from it
        for name in self.ctx.selected.get_list():
            if name not in self.ctx.outcomes:
                ion_nodes.setdefault(self.ctx.valid[name]['working_ion'].value, self.ctx.valid[name]['working_ion'])
        ions = sorted(ion_nodes)
        # the metal reference of an ion is subtracted from each of its candidates: all at the same cutoffs, the
        # highest that any of their elements needs
        self.ctx.cutoff_elements = {ion: sorted({ion}.union(*(
            self.ctx.valid[name][side].get_symbols_set() for name in self.ctx.selected.get_list()
            if name not in self.ctx.outcomes and self.ctx.valid[name]['working_ion'].value == ion
            for side in ('charged', 'discharged')))) for ion in ions}
        self.ctx.ion_metals = {}
        for ion in ions:
            if ion not in family.elements:
                continue  # each verification of this ion is then not run, naming the element
            metal = ion_metal_cell(ion_nodes[ion], metadata=step_metadata(self, f'ion_metal_cell_{ion}'))
            relax = 'positions_cell' if settings['relax_type'] == 'positions_cell' else 'none'
            builder = pw_builder(inputs['code'], metal, settings, dict(inputs.get('options') or {}),
                                 inputs['pseudo_family'].value, relax=relax,
                                 cutoff_elements=self.ctx.cutoff_elements[ion])
            builder.metadata.call_link_label = f'dft_metal_{ion}'
            node = self.submit(builder)
            self.ctx.ion_metals[ion] = metal
            self.report(f'{ion} metal reference: {node.process_label}<{node.pk}>')
            running[f'metal_{ion}'] = node
        return ToContext(**running)

    def inspect_references(self):
        self.ctx.ion_energies = {}
        for ion, metal in self.ctx.ion_metals.items():
            node = self.ctx[f'metal_{ion}']
            if node.is_finished_ok:
                self.ctx.ion_energies[ion] = energy_per_atom(metal, node.outputs.output_parameters,
                                                             metadata=step_metadata(self, f'metal_energy_{ion}'))
            else:
                self.ctx.outcomes[f'metal:{ion}'] = (f'{ion} metal reference {node.process_label}<{node.pk}> failed '
                                                     f'with exit status {node.exit_status}')

    def run_verifications(self):
        inputs = self._verify_inputs()
        running = {}
        for name in self.ctx.selected.get_list():
            if name in self.ctx.outcomes:  # refused before the references
                continue
            pair = self.ctx.valid[name]
            ion = pair['working_ion'].value
            if f'metal:{ion}' in self.ctx.outcomes:
                self.ctx.outcomes[name] = f'not verified: {self.ctx.outcomes[f"metal:{ion}"]}'
                continue
            extra = {'ion_energy': self.ctx.ion_energies[ion]} if ion in self.ctx.ion_energies else {}
            message = self._refusal(inputs, name, extra)  # again: the family may have changed since
            if message:
                self.ctx.outcomes[name] = f'not verified: {message}'
                self.report(f'verification of {name!r} cannot run ({message}); going on with the others')
                continue
            node = self.submit(VerifyWorkChain, **inputs, **pair, **extra, model=self.inputs.model,
                               cutoff_elements=orm.List(self.ctx.cutoff_elements[ion]),
                               metadata=step_metadata(self, f'verify_{name}'))
            self.report(f'verifying {name!r}: VerifyWorkChain<{node.pk}>')
            running[f'verify_{name}'] = node
        self.ctx.verifying = sorted(running)
        return ToContext(**running)

    def inspect_verifications(self):
        for key in self.ctx.verifying:
            node, name = self.ctx[key], key[len('verify_'):]
            if node.is_finished_ok:
                self.ctx.dft_voltages[name] = node.outputs.dft_voltage
                self.out(f'dft_voltages.{name}', node.outputs.dft_voltage)
            else:
                self.ctx.outcomes[name] = (f'failed: VerifyWorkChain<{node.pk}> exit status {node.exit_status}: '
                                           f'{node.exit_message}')
                self.report(f'verification of {name!r} failed ({node.exit_status}); going on with the others')

    def summarize(self):
        verified = dict(self.ctx.dft_voltages)
        self.ctx.summary = summarize_screen(self.ctx.predictions, self.ctx.selected, orm.Dict(self.ctx.outcomes),
                                            **verified, metadata=step_metadata(self, 'summarize'))
        self.out('summary', self.ctx.summary)
        summary = self.ctx.summary.get_dict()
        mae = summary['mae_verified']
        self.report(f'{summary["n_verified"]} of {summary["n_selected"]} selected verified'
                    + (f', ML-DFT MAE {mae:.3f} V' if mae is not None else ''))

    def should_retrain(self):
        return 'dataset' in (self.inputs.get('retrain') or {}) and bool(self.ctx.dft_voltages)

    def retrain(self):
        verified = {name: {**self.ctx.valid[name], 'dft_voltage': voltage}
                    for name, voltage in self.ctx.dft_voltages.items()}
        retrain = retrain_inputs(self.inputs.model, self.inputs.retrain)
        recipe = training_recipe(self.inputs.model)
        inherited = sorted(set(recipe) - set(self.inputs.retrain))
        if inherited:
            dropped = sorted(set(recipe['settings'].get_dict()) - set(retrain['settings'].get_dict())) \
                if 'settings' in inherited else []
            self.report(f"retraining with the screened model's {', '.join(inherited)} "
                        f'({self.inputs.model.creator.process_label}<{self.inputs.model.creator.pk}>)'
                        + dropped_settings_note(dropped, retrain['model'].value,
                                                recipe['settings'].get_dict().get('device')))
        metadata = {'call_link_label': 'retrain'}
        if (retrain.pop('metadata', None) or {}).get('disable_cache'):  # passed on, not dropped
            metadata['disable_cache'] = True
        try:
            grown = add_verified_records(retrain.pop('dataset'), **verified,
                                         metadata=step_metadata(self, 'add_verified'))
            model = train_model(dataset=grown, **retrain, metadata=metadata)
        except ValueError as exception:
            return self.exit_codes.ERROR_RETRAIN_FAILED.format(message=str(exception))
        matches = grown.base.attributes.get('dft_composition_matches', {})
        if matches:
            self.report('trained on two targets for one composition: '
                        + '; '.join(f'{added} beside {", ".join(known)}' for added, known in sorted(matches.items()))
                        + " (this DFT's settings beside the training records' source)")
        self.out('augmented_dataset', grown)
        self.out('retrained_model', model)
        self.report(f'retrained {model.model_name} on {grown.n_records} records ({len(verified)} from DFT): '
                    f'model<{model.pk}> version {model.model_version[:12]}')
        return None

    def finalize(self):
        summary = self.ctx.summary.get_dict()
        if summary['n_selected'] and not summary['n_verified']:
            if not summary['n_failed']:  # none could be submitted: no verification failed
                reasons = sorted({row['status'][len('not verified: '):] for row in summary['rows']
                                  if row['status'].startswith('not verified: ')})
                if summary['failed_references']:  # a failed DFT job, not a family that cannot serve
                    return self.exit_codes.ERROR_METAL_REFERENCE_FAILED.format(message='; '.join(reasons))
                return self.exit_codes.ERROR_UNKNOWN_PSEUDO_FAMILY.format(message='; '.join(reasons))
            return self.exit_codes.ERROR_ALL_VERIFICATIONS_FAILED
        return None
