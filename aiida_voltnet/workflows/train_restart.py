"""``VoltnetTrainBaseWorkChain``: run ``VoltnetTrainCalculation`` and recover from the usual GPU-job failures.

Handlers (``BaseRestartWorkChain`` process handlers, highest priority first):

- 420 CUDA out of memory: halve ``settings.train_overrides.batch_size`` (from the model spec's when unset);
- 410 loss became NaN/inf: halve ``settings.train_overrides.lr``;
- 120 (killed at the walltime by the scheduler) and 400 (``voltnet-train`` stopped itself before the walltime):
  resume from the calculation's ``checkpoint`` output when there is one (``restart_folder``: finished ensemble
  members are kept, the interrupted torch member continues after its last saved epoch); else reuse a complete
  retrieved ``model/``; else run again from scratch with the same inputs;
- 140 (the scheduler says the node failed): resume from the ``checkpoint`` output when there is one, else run again
  with the same inputs;
- 300 (no model and no report: killed without the scheduler saying why, e.g. preempted, or under a scheduler that
  reports no walltime): resume from its ``checkpoint`` output when it left one; otherwise the failure stands.
"""
from __future__ import annotations

import copy

from aiida import orm
from aiida.common import AttributeDict
from aiida.engine import BaseRestartWorkChain, ProcessHandlerReport, process_handler, while_

from aiida_voltnet.calculations.train_job import VoltnetTrainCalculation
from aiida_voltnet.ml.models import spec_train_setting

from .protocols import ProtocolMixin, merge_job_options, recursive_merge

__all__ = ('VoltnetTrainBaseWorkChain',)


class VoltnetTrainBaseWorkChain(ProtocolMixin, BaseRestartWorkChain):
    """Train a voltage model through the scheduler, restarting on OOM, NaN loss and walltime."""

    _process_class = VoltnetTrainCalculation
    _protocol_file = 'train_job.yaml'

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(VoltnetTrainCalculation, namespace='train',
                           namespace_options={'help': 'Inputs of the VoltnetTrainCalculation.'})
        # not dynamic (an exposed CalcJob namespace is, as the CalcJob's own is, whatever namespace_options say): a
        # misspelt input ('restart_fodler') would be stored under the work chain and never reach the job
        spec.inputs['train'].dynamic = False
        spec.outline(
            cls.setup,
            while_(cls.should_run_process)(
                cls.run_process,
                cls.inspect_process,
            ),
            cls.results,
        )
        spec.expose_outputs(VoltnetTrainCalculation)
        spec.exit_code(310, 'ERROR_CANNOT_REDUCE_FURTHER',
                       message='Cannot recover: {message}')

    @classmethod
    def get_builder_from_protocol(cls, code, dataset, protocol: str | None = None, overrides: dict | None = None,
                                  options: dict | None = None):
        """A populated builder: the protocol's inputs, then ``overrides``, then ``options`` (``metadata.options``).

        :param code: the ``InstalledCode`` of ``voltnet-train`` on the (GPU) computer.
        :param dataset: the ``ElectrodeDataset`` to train on.
        :param protocol: ``gpu`` (default), ``gpu_long`` or ``cpu``.
        :param options: the job's ``metadata.options`` over the protocol's (the same as ``overrides={'train':
            {'metadata': {'options': ...}}}``); ``resources`` given in either replace the protocol's whole, so that
            ``{'parallel_env': 'smp', 'tot_num_mpiprocs': 8}`` for SGE does not keep the protocol's
            ``num_machines``. Any other keyword is refused (a misspelt ``protocl`` ran the default protocol).
        """
        if not isinstance(code, orm.AbstractCode):
            raise ValueError(f'code must be the InstalledCode of voltnet-train, got {code!r:.80} (docs/production.md)')
        asked = (((overrides or {}).get('train') or {}).get('metadata') or {}).get('options') or {}
        if options:
            asked = merge_job_options(asked, options)
            overrides = recursive_merge(overrides or {}, {'train': {'metadata': {'options': options}}})
        inputs = cls.get_protocol_inputs(protocol, overrides)
        if asked:  # over the merged options: given resources replace the protocol's whole, the rest is merged already
            metadata = inputs.setdefault('train', {}).setdefault('metadata', {})
            metadata['options'] = merge_job_options(metadata.get('options'), asked)
        options = inputs.get('train', {}).get('metadata', {}).get('options', {})
        if not options.get('custom_scheduler_commands'):
            options.pop('custom_scheduler_commands', None)
        builder = cls.get_builder()
        builder._merge(inputs)  # every input the protocol and the overrides name (check_overrides refused the rest)
        builder.train.code = code
        builder.train.dataset = dataset
        return builder

    def setup(self):
        super().setup()
        self.ctx.inputs = AttributeDict(self.exposed_inputs(VoltnetTrainCalculation, 'train'))

    # -- helpers ----------------------------------------------------------------------------------------------------
    def _settings(self) -> dict:
        settings = self.ctx.inputs.get('settings')
        return copy.deepcopy(settings.get_dict()) if settings is not None else {}

    def _spec_train_value(self, key):
        return spec_train_setting(self.ctx.inputs.model.value if 'model' in self.ctx.inputs else 'voltnet', key)

    def _set_override(self, settings: dict, key, value) -> None:
        if not settings.get('train_overrides'):  # absent, or given as null (which the validators accept)
            settings['train_overrides'] = {}
        settings['train_overrides'][key] = value
        self.ctx.inputs.settings = orm.Dict(settings)

    # -- handlers ---------------------------------------------------------------------------------------------------
    @process_handler(priority=600, exit_codes=[VoltnetTrainCalculation.exit_codes.ERROR_CUDA_OUT_OF_MEMORY])
    def handle_out_of_memory(self, node):
        """CUDA out of memory: halve the batch size and run again."""
        settings = self._settings()
        current = (settings.get('train_overrides') or {}).get('batch_size') or self._spec_train_value('batch_size')
        if current is None or current < 2:
            message = f'CUDA out of memory with batch_size {current}; cannot halve it further'
            self.report(message)
            return ProcessHandlerReport(True, self.exit_codes.ERROR_CANNOT_REDUCE_FURTHER.format(message=message))
        new = current // 2
        self._set_override(settings, 'batch_size', new)
        self.ctx.inputs.pop('restart_folder', None)
        self.report(f'{node.process_label}<{node.pk}> ran out of CUDA memory: batch_size {current} -> {new}')
        return ProcessHandlerReport(True)

    @process_handler(priority=500, exit_codes=[VoltnetTrainCalculation.exit_codes.ERROR_LOSS_DIVERGED])
    def handle_loss_diverged(self, node):
        """NaN/inf loss: halve the learning rate and run again."""
        settings = self._settings()
        current = (settings.get('train_overrides') or {}).get('lr') or self._spec_train_value('lr')
        if current is None:
            message = f'model {self.ctx.inputs.model.value} has no learning rate to reduce'
            return ProcessHandlerReport(True, self.exit_codes.ERROR_CANNOT_REDUCE_FURTHER.format(message=message))
        new = current / 2
        self._set_override(settings, 'lr', new)
        self.ctx.inputs.pop('restart_folder', None)
        self.report(f'{node.process_label}<{node.pk}> diverged (NaN loss): lr {current:g} -> {new:g}')
        return ProcessHandlerReport(True)

    @process_handler(priority=400, exit_codes=[VoltnetTrainCalculation.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME,
                                               VoltnetTrainCalculation.exit_codes.ERROR_OUT_OF_WALLTIME])
    def handle_out_of_walltime(self, node):
        """Out of walltime: resume from the ``checkpoint`` output (or a complete retrieved ``model/``) if any, else
        run the same inputs again."""
        retrieved = node.outputs.retrieved if 'retrieved' in node.outputs else None
        names = set()
        if retrieved is not None and 'model' in retrieved.base.repository.list_object_names():
            names = set(retrieved.base.repository.list_object_names('model'))
        if retrieved is not None:  # a refused restart_folder: this run started over (review: said in train.log only)
            from aiida_voltnet.parsers.train import read_status

            status = read_status(set(retrieved.base.repository.list_object_names()),
                                 retrieved.base.repository.get_object_content) or {}
            if status.get('resume_rejected'):
                self.report(f'{node.process_label}<{node.pk}> did not resume from its restart_folder, it trained '
                            f'from scratch: {status["resume_rejected"]}')
        if 'checkpoint' in node.outputs:
            checkpoint = node.outputs.checkpoint
            self.ctx.inputs.restart_folder = checkpoint
            self.report(f'{node.process_label}<{node.pk}> ran out of walltime: resuming from its checkpoint '
                        f'{checkpoint.__class__.__name__}<{checkpoint.pk}>')
        elif {'config.json', 'arrays.safetensors'} <= names:
            self.ctx.inputs.restart_folder = retrieved
            self.report(f'{node.process_label}<{node.pk}> ran out of walltime: reusing its complete model')
        else:  # killed before its first checkpoint: the same inputs, i.e. the same restart_folder if it had one
            start = 'its restart_folder' if 'restart_folder' in self.ctx.inputs else 'scratch'
            self.report(f'{node.process_label}<{node.pk}> ran out of walltime before any checkpoint: '
                        f'running again with the same inputs (from {start})')
        return ProcessHandlerReport(True)

    @process_handler(priority=350, exit_codes=[VoltnetTrainCalculation.exit_codes.ERROR_SCHEDULER_NODE_FAILURE])
    def handle_node_failure(self, node):
        """The scheduler says the node failed (140), which is no fault of the training: resume from the checkpoint
        the parser exposed, or with none run the same inputs again (``max_iterations`` bounds the tries)."""
        if 'checkpoint' in node.outputs:
            checkpoint = node.outputs.checkpoint
            self.ctx.inputs.restart_folder = checkpoint
            self.report(f'{node.process_label}<{node.pk}> was lost with its node: resuming from its checkpoint '
                        f'{checkpoint.__class__.__name__}<{checkpoint.pk}>')
        else:
            start = 'its restart_folder' if 'restart_folder' in self.ctx.inputs else 'scratch'
            self.report(f'{node.process_label}<{node.pk}> was lost with its node before any checkpoint: running '
                        f'again with the same inputs (from {start})')
        return ProcessHandlerReport(True)

    @process_handler(priority=300, exit_codes=[VoltnetTrainCalculation.exit_codes.ERROR_MISSING_OUTPUT_FILES])
    def handle_killed_with_checkpoint(self, node):
        """Killed before it could report, for no reason the scheduler gave (preemption, a direct scheduler, no
        accounting): resume from the checkpoint the parser exposed; with none, leave the failure unhandled."""
        if 'checkpoint' not in node.outputs:
            return None
        checkpoint = node.outputs.checkpoint
        self.ctx.inputs.restart_folder = checkpoint
        self.report(f'{node.process_label}<{node.pk}> stopped without a model or a report: resuming from its '
                    f'checkpoint {checkpoint.__class__.__name__}<{checkpoint.pk}>')
        return ProcessHandlerReport(True)
