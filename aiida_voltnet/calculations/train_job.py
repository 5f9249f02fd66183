"""``VoltnetTrainCalculation``: train a voltage model on a remote (GPU) computer through its scheduler.

The production counterpart of the ``train_model`` calculation function: the same inputs (dataset, featurizer,
model, seed, settings) and the same kind of ``model`` output (``VoltageModelData``), but the training runs as the
``voltnet-train`` console script of this package, installed on the computer and registered as an ``InstalledCode``
with ``default_calc_job_plugin='voltnet.train'``. Nothing is pickled: the dataset's ``records.json`` is copied from
the repository (``local_copy_list``, not duplicated in the calculation's repository) and the settings go in as
``config.json``.

GPUs are requested through ``metadata.options.custom_scheduler_commands`` (e.g. ``#SBATCH --gres=gpu:1``), which
the Slurm plugin writes into the ``#SBATCH`` header; ``resources`` has no GPU field (aiida-core issue #5612). See the
``voltnet.train_base`` protocols (``workflows/protocols/train_job.yaml``).
"""
from __future__ import annotations

import json

from aiida import orm
from aiida.common import datastructures
from aiida.engine import CalcJob

from aiida_voltnet.data.dataset import ElectrodeDataset
from aiida_voltnet.data.model import VoltageModelData

__all__ = ('VoltnetTrainCalculation',)


def _value(node):
    return node.value if isinstance(node, orm.BaseType) else node


def validate_inputs(inputs, _ctx=None):
    """Featurizer, model and settings must be known (the same checks as ``train_model``), before anything runs."""
    from aiida_voltnet.calculations import functions

    try:
        settings = inputs['settings'].get_dict() if 'settings' in inputs else {}
        functions._train_arguments(_value(inputs.get('featurizer', 'leakfree')), _value(inputs.get('model', 'voltnet')),
                                   settings)
        overrides = settings.get('train_overrides', {})
        if not isinstance(overrides, dict):
            return 'settings.train_overrides must be a dict (epochs, lr, batch_size, ...)'
        if 'batch_size' in overrides and (not isinstance(overrides['batch_size'], int) or overrides['batch_size'] < 1):
            return f'settings.train_overrides.batch_size must be a positive integer, got {overrides["batch_size"]!r}'
    except Exception as exception:  # noqa: BLE001 - the message names the problem
        return f'{type(exception).__name__}: {exception}'
    return None


class VoltnetTrainCalculation(CalcJob):
    """Train a voltage model (featurizer + regressor ensemble) on an ``ElectrodeDataset`` on a (GPU) computer."""

    #: Bump when the files written by ``prepare_for_submission`` or the meaning of the outputs change.
    CACHE_VERSION = 1

    _CONFIG = 'config.json'
    _RECORDS = 'records.json'
    _LOG = 'train.log'
    _STATUS = 'status.json'
    _METRICS = 'metrics.json'
    _MODEL_DIR = 'model'
    _RESTART_DIR = 'restart'
    _MODEL_FILES = ('config.json', 'arrays.safetensors')

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('dataset', valid_type=ElectrodeDataset, help='The training records (all of them are trained on).')
        spec.input('featurizer', valid_type=orm.Str, default=lambda: orm.Str('leakfree'), serializer=orm.to_aiida_type,
                   help='`leakfree` (default) or `paper` (leaks the target through capacity and energy).')
        spec.input('model', valid_type=orm.Str, default=lambda: orm.Str('voltnet'), serializer=orm.to_aiida_type,
                   help='A model spec: voltnet (default), voltnet_mlp, mha_resnet, mlp, lstm, svr, krr.')
        spec.input('seed', valid_type=orm.Int, default=lambda: orm.Int(0), serializer=orm.to_aiida_type,
                   help='Training seed (member i of an ensemble uses seed * 1000 + i).')
        spec.input('settings', valid_type=orm.Dict, required=False, serializer=orm.to_aiida_type,
                   help='Optional `members`, `train_overrides` (epochs, lr, batch_size, ...), `device` (default '
                        'auto: CUDA when the job sees one), `featurizer_options`, `target`.')
        spec.input('restart_folder', valid_type=(orm.RemoteData, orm.FolderData), required=False,
                   help='Folder of an earlier run (its remote working directory or its retrieved files) whose '
                        '`model/` checkpoint is resumed from when it is complete and matches these inputs.')
        spec.inputs.validator = validate_inputs
        options = spec.inputs['metadata']['options']
        options['parser_name'].default = 'voltnet.train'
        options['resources'].default = lambda: {'num_machines': 1, 'num_mpiprocs_per_machine': 1}
        options['withmpi'].default = False
        options['input_filename'].default = cls._CONFIG
        options['output_filename'].default = cls._LOG

        spec.output('model', valid_type=VoltageModelData, help='The trained model (fitted featurizer + weights).')
        spec.output('metrics', valid_type=orm.Dict, help='Fit on the training records, the device, wall time.')

        spec.exit_code(300, 'ERROR_MISSING_OUTPUT_FILES', invalidates_cache=True,
                       message='The model files or metrics were not retrieved: {missing}.')
        spec.exit_code(301, 'ERROR_INVALID_MODEL', invalidates_cache=True,
                       message='The retrieved model could not be loaded: {exception}')
        spec.exit_code(302, 'ERROR_BAD_INPUT_FILES', invalidates_cache=True,
                       message='voltnet-train refused its input files: {message}')
        spec.exit_code(310, 'ERROR_TRAINING_FAILED', invalidates_cache=True,
                       message='The trainer raised: {exception}')
        spec.exit_code(410, 'ERROR_LOSS_DIVERGED', invalidates_cache=True,
                       message='The training loss became NaN/inf at epoch {epoch}.')
        spec.exit_code(420, 'ERROR_CUDA_OUT_OF_MEMORY', invalidates_cache=True,
                       message='CUDA ran out of memory (batch_size {batch_size}): {message}')

    def prepare_for_submission(self, folder):
        """Write ``config.json``; copy ``records.json`` from the dataset's repository; run ``voltnet-train``."""
        settings = self.inputs.settings.get_dict() if 'settings' in self.inputs else {}
        config = {'featurizer': self.inputs.featurizer.value, 'model': self.inputs.model.value,
                  'seed': self.inputs.seed.value, 'settings': settings, 'resume': None}
        calcinfo = datastructures.CalcInfo()
        calcinfo.local_copy_list = [(self.inputs.dataset.uuid, ElectrodeDataset.RECORDS_FILENAME, self._RECORDS)]
        calcinfo.remote_copy_list = []
        if 'restart_folder' in self.inputs:
            restart = self.inputs.restart_folder
            config['resume'] = self._RESTART_DIR
            if isinstance(restart, orm.RemoteData):
                calcinfo.remote_copy_list.append((restart.computer.uuid,
                                                  f'{restart.get_remote_path()}/{self._MODEL_DIR}', self._RESTART_DIR))
            else:
                names = restart.base.repository.list_object_names()
                if self._MODEL_DIR in names:
                    calcinfo.local_copy_list.append((restart.uuid, self._MODEL_DIR, self._RESTART_DIR))
        with folder.open(self._CONFIG, 'w') as handle:
            json.dump(config, handle, indent=1, sort_keys=True)

        codeinfo = datastructures.CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = ['--config', self._CONFIG, '--records', self._RECORDS, '--output', '.',
                                   '--log', self._LOG]
        codeinfo.stdout_name = 'voltnet-train.out'
        codeinfo.stderr_name = 'voltnet-train.err'
        codeinfo.withmpi = False
        calcinfo.codes_info = [codeinfo]
        # (remote, local folder, depth 2): keep the files under model/ in the retrieved folder
        calcinfo.retrieve_list = [self._LOG, self._STATUS, self._METRICS, codeinfo.stderr_name,
                                  *((f'{self._MODEL_DIR}/{name}', '.', 2) for name in self._MODEL_FILES)]
        return calcinfo
