"""``TrainWorkChain``: assemble a dataset (from a CSV file or a given dataset), split it, train a model on the
training part and evaluate it on the held-out part.

Training runs in the work chain's own interpreter (the ``train_model`` calculation function) unless ``train_code``
names an installed ``voltnet-train`` code: then it runs as a ``VoltnetTrainCalculation`` on that code's computer,
through its scheduler, wrapped in ``VoltnetTrainBaseWorkChain`` (restarts on CUDA OOM, NaN loss, walltime), with
``train_options`` as the job's ``metadata.options``. Both paths give the same kind of ``model`` output.
"""
from __future__ import annotations

from aiida import orm
from aiida.engine import ToContext, WorkChain, if_

from aiida_voltnet.calculations import functions
from aiida_voltnet.calculations.functions import assemble_dataset_from_csv, evaluate_model, split_dataset, train_model
from aiida_voltnet.calculations.report import report_drop_unseen_ions
from aiida_voltnet.data.dataset import ElectrodeDataset
from aiida_voltnet.data.model import VoltageModelData

from .protocols import ProtocolMixin

__all__ = ('TrainWorkChain',)

#: The training job's resources when ``train_options`` gives none: one process on one machine, as the
#: ``voltnet.train`` CalcJob's own default (schedulers that want a parallel environment, such as SGE, need theirs).
DEFAULT_JOB_RESOURCES = {'num_machines': 1, 'num_mpiprocs_per_machine': 1}


def _value(node):
    return node.value if isinstance(node, orm.BaseType) else node


def called(node, label: str) -> bool:
    """Whether work chain ``node`` called a process with link ``label``: a calculation function refused by its
    validator stores none, one that raised while running is stored (excepted). Each label is used once per run."""
    return bool(node.base.links.get_outgoing(link_label_filter=label).all())


#: Prefix of the context keys of :func:`step_boundary`.
STEP_BOUNDARY = '_step_'
#: How long a work chain waits at a step boundary before it goes on (s): the broker's message reader needs a few
#: turns of the event loop to hand a kill or pause that came during the step to the process (with aiida-core's own
#: ``call_soon`` resumption the chain went on to its next step first, in a daemon test).
STEP_BOUNDARY_SECONDS = 0.2


def step_boundary(node: orm.ProcessNode, key: str) -> ToContext:
    """What a work chain step returns after running the calculation function ``node`` inline: a wait on that
    finished node (see :class:`StepBoundaries`). A calculation function runs inside the worker's event loop and a
    chain of them never gave that loop a turn, so ``verdi process kill`` or ``pause`` sent while one ran was handled
    only once the whole chain had ended ('Problem killing Process', then ``Finished [0]``: review)."""
    return ToContext(**{f'{STEP_BOUNDARY}{key}': node})


class StepBoundaries:
    """Mixin of a work chain whose steps end in :func:`step_boundary`: the chain goes on
    :data:`STEP_BOUNDARY_SECONDS` after the step, so that a kill or pause that came meanwhile takes effect before the
    next step starts (a killed chain calls nothing more; a paused one waits for ``verdi process play``)."""

    def _on_awaitable_finished(self, awaitable) -> None:
        if not str(getattr(awaitable, 'key', '')).startswith(STEP_BOUNDARY):
            super()._on_awaitable_finished(awaitable)
            return
        finish = super()._on_awaitable_finished  # resumes only a chain still waiting (not a killed one)
        self.loop.call_later(STEP_BOUNDARY_SECONDS, finish, awaitable)


def step_metadata(process, label: str) -> dict:
    """The ``metadata`` of a calculation-function step of work chain ``process``: its call link ``label``, and
    ``disable_cache`` where the work chain's own ``metadata.disable_cache`` is set (a work chain is never taken
    from the cache itself, so the flag means its steps)."""
    return {'call_link_label': label, **({'disable_cache': True} if process.inputs.metadata.get('disable_cache')
                                         else {})}


class TrainWorkChain(StepBoundaries, ProtocolMixin, WorkChain):
    """Train a voltage model with full provenance: source -> dataset -> split -> model -> held-out metrics."""

    _protocol_file = 'train.yaml'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('csv', valid_type=orm.SinglefileData, required=False,
                   help='Electrode CSV in the seed format; assembled into an ElectrodeDataset. Give this or `dataset`.')
        spec.input('dataset', valid_type=ElectrodeDataset, required=False,
                   help='An existing ElectrodeDataset (e.g. from the Materials Project). Give this or `csv`.')
        spec.expose_inputs(split_dataset.process_class, namespace='split', exclude=('dataset',),
                           namespace_options={'help': 'How to hold out the test records (see `split_dataset`).'})
        spec.expose_inputs(train_model.process_class, namespace='train', exclude=('dataset',),
                           namespace_options={'help': 'Featurizer, model and settings (see `train_model`).'})
        # Calculation functions have dynamic namespaces; these exposed ones take only the function's own ports. The
        # functions' validators (copied by expose_inputs) need the dataset, so they run when the functions are
        # called; ``validate_inputs`` below checks what can be checked up front.
        for namespace in ('split', 'train'):
            spec.inputs[namespace].dynamic = False
            spec.inputs[namespace].validator = None
        spec.input('train_code', valid_type=orm.AbstractCode, required=False,
                   help='An installed `voltnet-train` code (plugin voltnet.train): train through its computer\'s '
                        'scheduler with VoltnetTrainBaseWorkChain instead of the train_model calculation function.')
        spec.input('train_options', valid_type=dict, non_db=True, required=False,
                   help='`metadata.options` of the training job when `train_code` is given (resources, '
                        'max_wallclock_seconds, custom_scheduler_commands such as "#SBATCH --gres=gpu:1", ...).')
        spec.inputs.validator = cls.validate_inputs
        spec.outline(
            if_(cls.should_assemble)(cls.assemble),
            cls.split,
            if_(cls.should_train_with_code)(
                cls.train_with_code,
                cls.inspect_train_with_code,
            ).else_(
                cls.train,
            ),
            cls.evaluate,
            cls.results,
        )
        spec.output('model', valid_type=VoltageModelData, help='The trained model (fitted featurizer + weights).')
        spec.output('metrics', valid_type=orm.Dict, help='Metrics of the model on the held-out test records.')
        spec.output('dataset', valid_type=ElectrodeDataset, help='All records (assembled from `csv` or as given).')
        spec.output('train_dataset', valid_type=ElectrodeDataset, help='The records the model was trained on.')
        spec.output('test_dataset', valid_type=ElectrodeDataset,
                    help='The held-out records it was evaluated on (but for any of a working ion that no training '
                         'record had: those are left out of the metrics, with a report).')
        spec.exit_code(300, 'ERROR_INVALID_DATA', message='The input data were refused: {exception}')
        spec.exit_code(310, 'ERROR_TRAINING_JOB_FAILED',
                       message='The training job through `train_code` failed: {message}')
        spec.exit_code(320, 'ERROR_NOTHING_TO_EVALUATE',
                       message='The model (an output) was trained, but no test record has a working ion it was '
                               'trained on: {message}')

    @classmethod
    def validate_inputs(cls, inputs, ctx=None):
        """Exactly one of csv/dataset; a CSV is parsed here so that a bad row is refused before anything runs (where
        this chain's inputs are exposed without the data, when this chain is launched)."""
        if functions.lacks_ports(ctx, ('csv', 'dataset')):
            return None
        if ('csv' in inputs) == ('dataset' in inputs):
            return 'give exactly one of `csv` and `dataset`'
        for namespace in ('split', 'train'):
            link = ((inputs.get(namespace) or {}).get('metadata') or {}).get('call_link_label')
            if link not in (None, 'CALL', namespace):  # the steps find their processes by it ('CALL': the default)
                return (f'{namespace}.metadata.call_link_label is the step\'s own ({namespace!r}); got {link!r}: '
                        'label and description are passed on')
        if 'train_options' in inputs and 'train_code' not in inputs:
            return '`train_options` are the options of the training job: give `train_code` too'
        if 'train_code' in inputs:  # found when the job was built, after the dataset and the split were stored
            from aiida_voltnet.calculations.train_job import VoltnetTrainCalculation

            message = functions.check_code_plugin(inputs['train_code'], 'voltnet.train', 'train_code',
                                                  'give a `voltnet-train` code')
            if message:
                return message
            options = inputs.get('train_options') or {}
            message = functions.check_job_options(options, VoltnetTrainCalculation)
            if message:
                return f'train_options: {message}'
            message = functions.check_job_resources({'resources': DEFAULT_JOB_RESOURCES, **options},
                                                    inputs['train_code'])
            if message:  # the hint only where the resources refused are the defaults (review: it blamed them for
                given = 'resources' in options  # a misspelt option or a walltime of 0)
                return f'train_options: {message}' + ('' if given else ' (the default resources, as none were '
                                                      'given: set train_options["resources"] for this scheduler)')
        try:
            if 'csv' in inputs:
                records, _ = functions.csv_records(inputs['csv'])
            else:
                records = functions.dataset_records(inputs['dataset'])
            train = inputs.get('train', {})
            settings = train['settings'].get_dict() if 'settings' in train else {}
            functions._train_arguments(_value(train.get('featurizer', 'leakfree')),
                                       _value(train.get('model', 'voltnet')), settings, _value(train.get('seed', 0)),
                                       records)
            if 'train_code' not in inputs:  # train_model trains here: CUDA must be present if asked for (a job's
                functions.resolve_device(settings.get('device', 'auto'))  # computer is another machine)
            # every record is trained or evaluated on: each needs the target (refused here, before the dataset,
            # the split and the training run, not by train_model after them)
            message = functions.check_training_targets(list(records), settings, purpose='train or evaluate on')
            if message:
                return message
            split = inputs.get('split', {})
            # the split the chain will make: its training part must be large enough for the model (train_model
            # refused it after the dataset and the split were stored)
            functions.check_split_leaves_enough_to_train(
                list(records), _value(split.get('kind', 'grouped')), _value(split.get('seed', 0)),
                _value(split.get('test_fraction', 0.1)), _value(train.get('model', 'voltnet')), settings.get('members'),
                settings.get('model_params'))
        except Exception as exception:  # noqa: BLE001 - the message names row and field
            return f'{type(exception).__name__}: {exception}'
        return None

    @classmethod
    def get_builder_from_protocol(cls, csv_or_dataset, protocol: str | None = 'fast', overrides: dict | None = None,
                                  **_):
        """A fully populated builder for ``protocol`` (``fast``, ``default`` or ``paper``; None: the file's default,
        which is ``fast``).

        :param csv_or_dataset: a ``SinglefileData`` CSV, an ``ElectrodeDataset``, or a path to a CSV file.
        :param overrides: nested dict of inputs overriding the protocol's (unknown keys raise).
        """
        import os

        from aiida_voltnet.ml.models import MODEL_SPECS

        inputs = cls.get_protocol_inputs(protocol, overrides)
        train = inputs.get('train', {})
        settings = train.get('settings') or {}
        settings = settings.get_dict() if isinstance(settings, orm.Dict) else settings
        asked = (((overrides or {}).get('train') or {}).get('settings') or {})
        asked = asked.get_dict() if isinstance(asked, orm.Dict) else asked
        if ('members' in settings and 'members' not in asked
                and MODEL_SPECS.get(_value(train.get('model')), {}).get('kind') == 'kernel'):
            # the protocol's ensemble size is for the tree ensembles; a kernel model's members would be identical
            train['settings'] = {k: v for k, v in settings.items() if k != 'members'}
        if isinstance(csv_or_dataset, (str, os.PathLike)):
            csv_or_dataset = orm.SinglefileData(os.path.abspath(csv_or_dataset))
        builder = cls.get_builder()
        if isinstance(csv_or_dataset, ElectrodeDataset):
            builder.dataset = csv_or_dataset
        elif isinstance(csv_or_dataset, orm.SinglefileData):
            builder.csv = csv_or_dataset
        else:
            raise TypeError(f'expected a SinglefileData CSV or an ElectrodeDataset, got {type(csv_or_dataset)}')
        builder._merge(inputs)  # every input the protocol and the overrides name (check_overrides refused the rest)
        return builder

    # -- outline -------------------------------------------------------------------------------------------------------
    def should_assemble(self):
        return 'csv' in self.inputs

    def _no_cache(self, namespace_metadata=None) -> bool:
        """``metadata.disable_cache`` of this work chain (every step) or of a step's namespace (that step): a work
        chain is never cached itself, so its flag is passed on, where it was dropped."""
        return bool(self.inputs.metadata.get('disable_cache') or (namespace_metadata or {}).get('disable_cache'))

    def _report_as_step(self, message: str) -> None:
        """``report`` under the name of the outline step that called ``_call`` (``report`` names its own caller,
        which here would be ``_call``)."""
        import sys

        from aiida.common.log import LOG_LEVEL_REPORT

        step = sys._getframe(2).f_code.co_name  # the frame's name only: inspect.stack() reads every frame's source
        self.logger.log(LOG_LEVEL_REPORT, f'[{self.node.pk}|{self.__class__.__name__}|{step}]: {message}')

    @staticmethod
    def _passed_on(namespace_metadata) -> dict:
        """The ``label`` and ``description`` of a step's ``metadata`` namespace, which its process takes (they were
        dropped); its ``call_link_label`` is the step's own, which validate_inputs keeps."""
        return {key: namespace_metadata[key] for key in ('label', 'description') if key in (namespace_metadata or {})}

    def _call(self, function, label, namespace_metadata=None, **inputs):
        """Run a calculation function; its validator's refusal becomes exit code 300 (nothing is stored). An
        error raised while it ran (its node stored and excepted, so not a refusal) is not relabelled: it
        propagates, and this work chain excepts with it, the traceback on both nodes."""
        metadata = {'call_link_label': label, **self._passed_on(namespace_metadata)}
        if self._no_cache(namespace_metadata):
            metadata['disable_cache'] = True
        try:
            return function(**inputs, metadata=metadata), None
        except ValueError as exception:
            if called(self.node, label):
                raise  # the function ran and failed: a bug or a resource problem, not bad input
            self._report_as_step(f'{label} refused its inputs: {exception}')
            return None, self.exit_codes.ERROR_INVALID_DATA.format(exception=str(exception))

    def assemble(self):
        self.ctx.dataset, error = self._call(assemble_dataset_from_csv, 'assemble', csv=self.inputs.csv)
        return error or step_boundary(self.ctx.dataset.creator, 'assemble')

    def split(self):
        dataset = self.ctx.dataset if 'dataset' in self.ctx else self.inputs.dataset
        self.ctx.dataset = dataset
        inputs = self.exposed_inputs(split_dataset.process_class, namespace='split')
        result, error = self._call(split_dataset, 'split', inputs.pop('metadata', None), dataset=dataset, **inputs)
        if error:
            return error
        self.ctx.train_dataset, self.ctx.test_dataset = result['train'], result['test']
        self.out('dataset', dataset)
        self.out('train_dataset', self.ctx.train_dataset)
        self.out('test_dataset', self.ctx.test_dataset)
        self.report(f'split {dataset.n_records} records into {self.ctx.train_dataset.n_records} training and '
                    f'{self.ctx.test_dataset.n_records} test records')
        return step_boundary(self.ctx.train_dataset.creator, 'split')

    def train(self):
        inputs = self.exposed_inputs(train_model.process_class, namespace='train')
        self.ctx.model, error = self._call(train_model, 'train', inputs.pop('metadata', None),
                                           dataset=self.ctx.train_dataset, **inputs)
        if error:
            return error
        self.out('model', self.ctx.model)  # whatever the evaluation then says, the trained model is an output
        self.report(f'trained {self.ctx.model.model_name} model<{self.ctx.model.pk}> version '
                    f'{self.ctx.model.model_version[:12]}')
        self._relay_training_warnings()
        return step_boundary(self.ctx.model.creator, 'train')

    def _relay_training_warnings(self) -> None:
        """The warnings in the report of the process that trained the model (a rough uncertainty calibration, the
        paper's leak), in this work chain's report too: ``verdi process report`` of a work chain descends into its
        child work chains, not into its calculation functions or jobs."""
        from aiida_voltnet.provenance import NO_TRAINING_WARNINGS, training_warnings

        lines = training_warnings(self.ctx.model.creator, self.ctx.model)
        for line in lines:
            self.report(f'the training warned: {line}')
        if not lines:  # said, so that a reader of this report knows it once the training's own report is gone
            self.report(NO_TRAINING_WARNINGS)

    def should_train_with_code(self):
        return 'train_code' in self.inputs

    def train_with_code(self):
        from .train_restart import VoltnetTrainBaseWorkChain

        train = self.exposed_inputs(train_model.process_class, namespace='train')
        job_metadata = {'options': {'resources': dict(DEFAULT_JOB_RESOURCES), 'withmpi': False}}
        job_metadata['options'].update(self.inputs.get('train_options', {}) or {})
        namespace_metadata = train.pop('metadata', None)
        if self._no_cache(namespace_metadata):
            job_metadata['disable_cache'] = True
        inputs = {'train': {**train, 'code': self.inputs.train_code, 'dataset': self.ctx.train_dataset,
                            'metadata': job_metadata},
                  'metadata': {'call_link_label': 'train', **self._passed_on(namespace_metadata)}}
        running = self.submit(VoltnetTrainBaseWorkChain, **inputs)
        self.report(f'training through {self.inputs.train_code.full_label}: {running.process_label}<{running.pk}>')
        return ToContext(train_job=running)

    def inspect_train_with_code(self):
        node = self.ctx.train_job
        if not node.is_finished_ok:
            message = f'{node.process_label}<{node.pk}> exit status {node.exit_status}: ' \
                      f'{(node.exit_message or "no message").rstrip(".")}'
            jobs = [child for child in node.called if isinstance(child, orm.CalcJobNode)]
            if jobs:  # the job's own reason (302 bad input, 310 the trainer raised, ...), not only 'unhandled'
                last = max(jobs, key=lambda job: job.ctime)
                message += f'; its last job {last.process_label}<{last.pk}>: exit status {last.exit_status}: ' \
                           f'{last.exit_message or last.process_state.value}'
            self.report(message)
            return self.exit_codes.ERROR_TRAINING_JOB_FAILED.format(message=message)
        self.ctx.model = node.outputs.model
        self.out('model', self.ctx.model)
        self.report(f'trained {self.ctx.model.model_name} model<{self.ctx.model.pk}> version '
                    f'{self.ctx.model.model_version[:12]} through {self.inputs.train_code.full_label}')
        self._relay_training_warnings()
        return None

    def evaluate(self):
        """Metrics on the test records; those of a working ion that no training record had (a rare ion whose few
        frameworks all fell on the test side of the split) cannot be predicted and are left out, with a report."""
        test = self.ctx.test_dataset
        unseen = sorted(set(test.working_ions) - set(self.ctx.train_dataset.working_ions))
        if unseen:
            if set(test.working_ions) <= set(unseen):
                return self.exit_codes.ERROR_NOTHING_TO_EVALUATE.format(
                    message=f'test ions {", ".join(test.working_ions)}, training ions '
                            f'{", ".join(self.ctx.train_dataset.working_ions)}')
            metadata = {'call_link_label': 'drop_unseen_ions'}
            if self._no_cache():
                metadata['disable_cache'] = True
            test = report_drop_unseen_ions(test=test, train=self.ctx.train_dataset, metadata=metadata)
            self.report(f'left out of the evaluation: {self.ctx.test_dataset.n_records - test.n_records} test '
                        f'record(s) of working ion(s) {", ".join(unseen)}, which no training record had')
        # the train namespace's disable_cache reaches the evaluation; its label and description are the training's
        train_metadata = self.inputs.train.get('metadata') or {}
        self.ctx.metrics, error = self._call(evaluate_model, 'evaluate',
                                             {'disable_cache': True} if train_metadata.get('disable_cache') else None,
                                             model=self.ctx.model, dataset=test)
        if error:
            return error
        metrics = self.ctx.metrics.get_dict()
        target = self.ctx.model.base.attributes.get('target', 'average_voltage')
        unit = ' V' if target == 'average_voltage' else f' ({target})'  # max_delta_volume is a fraction, no volts
        # R2 is undefined (stored as None) for a single test record or test records of one voltage
        r2 = 'undefined' if metrics.get('r2') is None else f'{metrics["r2"]:.3f}'
        self.report(f'held-out MAE {metrics["mae"]:.3f}{unit}, R2 {r2} on {metrics["n"]} records')
        return None

    def results(self):
        self.out('metrics', self.ctx.metrics)
