"""``VoltnetTrainCalculation``: train a voltage model on a remote (GPU) computer through its scheduler.

The production counterpart of the ``train_model`` calculation function: the same inputs (dataset, featurizer,
model, seed, settings) and the same kind of ``model`` output (``VoltageModelData``), but the training runs as the
``voltnet-train`` console script of this package, installed on the computer and registered as an ``InstalledCode``
with ``default_calc_job_plugin='voltnet.train'``. Nothing is pickled: the dataset's ``records.json`` is copied from
the repository (``local_copy_list``, not duplicated in the calculation's repository) and the settings go in as
``config.json``.

Checkpoints: ``voltnet-train`` writes ``checkpoint/`` while it trains (every finished ensemble member; the torch
loop state every ``checkpointing.every_epochs`` epochs / ``every_seconds`` seconds) and stops with a checkpoint
before the walltime (``--max-seconds``, derived from ``metadata.options.max_wallclock_seconds``) or on SIGTERM. The
folder is in the ``retrieve_list``, so it comes back also when the job is killed; the parser then exposes it as the
``checkpoint`` output (exit 400, or the scheduler's 120), and a job given it as ``restart_folder`` continues the
training from it (``--resume``) instead of starting again.

GPUs are requested through ``metadata.options.custom_scheduler_commands`` (e.g. ``#SBATCH --gres=gpu:1``), which
the Slurm plugin writes into the ``#SBATCH`` header; ``resources`` has no GPU field (aiida-core issue #5612). See the
``voltnet.train_base`` protocols (``workflows/protocols/train_job.yaml``).
"""
from __future__ import annotations

import json

from aiida import orm
from aiida.common import datastructures
from aiida.engine import CalcJob

from aiida_voltnet.calculations.sources import KEY as SOURCES_KEY
from aiida_voltnet.calculations.sources import sources_fingerprint
from aiida_voltnet.data.dataset import ElectrodeDataset
from aiida_voltnet.data.model import VoltageModelData

__all__ = ('VoltnetTrainCalculation',)


def _value(node):
    return node.value if isinstance(node, orm.BaseType) else node


#: Keys of the ``checkpointing`` input: how many (``int``) or how long (seconds).
CHECKPOINTING_KEYS = {'every_epochs': int, 'every_seconds': float, 'max_seconds': float,
                      'stop_margin_seconds': float, 'stop_after_epochs': int, 'stop_after_members': int}


def validate_checkpointing(checkpointing, _ctx=None):
    """Known keys, non-negative numbers of the right kind."""
    if checkpointing is None:
        return None
    values = checkpointing.get_dict()
    unknown = sorted(set(values) - set(CHECKPOINTING_KEYS))
    if unknown:
        return f'checkpointing: unknown key(s) {", ".join(unknown)}; known: {", ".join(CHECKPOINTING_KEYS)}'
    for key, value in values.items():
        kinds = (int,) if CHECKPOINTING_KEYS[key] is int else (int, float)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds) or value < 0):
            return f'checkpointing.{key} must be a non-negative {CHECKPOINTING_KEYS[key].__name__}, got {value!r}'
    return None


def validate_restart_folder(folder, _ctx=None):
    """A ``FolderData`` must hold a checkpoint (``state.json``, or ``checkpoint/``) or a complete ``model/``."""
    if isinstance(folder, orm.FolderData):
        names = set(folder.base.repository.list_object_names())
        if not names & {'state.json', VoltnetTrainCalculation._CHECKPOINT_DIR, VoltnetTrainCalculation._MODEL_DIR}:
            return ('restart_folder holds neither a checkpoint (state.json or checkpoint/) nor a model/: '
                    f'{", ".join(sorted(names)) or "it is empty"}')
    return None


def validate_inputs(inputs, ctx=None):
    """aiida-core's own checks of a calculation job (resources that fit the scheduler, the code's computer), then:
    featurizer, model and settings must be known and every record must have the target (the same checks as
    ``train_model``), before the job waits in a queue only to fail remotely."""
    from aiida.engine.processes.calcjobs.calcjob import validate_calc_job

    from aiida_voltnet.calculations import functions

    message = validate_calc_job(inputs, ctx) if ctx is not None else None  # the validator this one replaced
    if message:
        return message
    if ctx is None or 'code' in ctx:
        code = inputs.get('code')
        if code is None and 'remote_folder' not in inputs:  # an AttributeError of aiida-core's once stored
            return 'code: give the InstalledCode of voltnet-train (docs/production.md: verdi code create ...)'
        # another plugin's code ran its executable with voltnet-train's arguments (the computer's configuration is
        # aiida-core's to check, at upload)
        message = functions.check_code_plugin(code, 'voltnet.train', 'code', 'give the code of voltnet-train, created '
                                              'with --default-calc-job-plugin voltnet.train (docs/production.md)',
                                              check_computer=False)
        if message:
            return message
        restart = inputs.get('restart_folder')
        if isinstance(restart, orm.RemoteData) and code is not None and restart.computer is not None \
                and code.computer is not None and restart.computer.uuid != code.computer.uuid:
            # aiida-core cannot copy between two computers: the job was stored, then its upload failed five times
            # and it waited paused for good (review)
            return (f'restart_folder: a RemoteData on computer {restart.computer.label!r}, but the code runs on '
                    f'{code.computer.label!r}; AiiDA copies remote folders only within one computer: give the '
                    'checkpoint output (a FolderData) of the interrupted job instead')
    message = functions.walltime_problem((inputs.get('metadata') or {}).get('options'))
    if message:
        return message
    try:
        settings = inputs['settings'].get_dict() if 'settings' in inputs else {}
        # members, train_overrides (keys and values), device name, target: whether CUDA is there is the remote
        # computer's business (the script checks it there)
        functions._train_arguments(_value(inputs.get('featurizer', 'leakfree')), _value(inputs.get('model', 'voltnet')),
                                   settings, _value(inputs.get('seed', 0)),
                                   functions.dataset_records(inputs['dataset']) if 'dataset' in inputs else None)
        if 'dataset' in inputs:
            return functions.check_training_targets(inputs['dataset'], settings)
    except Exception as exception:  # noqa: BLE001 - the message names the problem
        return f'{type(exception).__name__}: {exception}'
    return None


def remote_sources_differ(node: orm.CalcJobNode, remote: str | None) -> str | None:
    """Why the model of the training job ``node`` comes from other plugin code than the one that submitted it:
    ``remote``, the fingerprint ``voltnet-train`` wrote in ``metrics.json``, against the job's
    ``cache_version.sources``; None when they agree, or when the job recorded none (submitted before the
    fingerprint was: its hash matches no submission of today's code anyway)."""
    recorded = node.base.attributes.get(VoltnetTrainCalculation.KEY_CACHE_VERSION, {}).get(SOURCES_KEY)
    if recorded is None or remote == recorded:
        return None
    ran = remote or 'not recorded: older than this check'
    return (f'voltnet-train on the computer ran other aiida-voltnet code (sources {ran}) than the installation '
            f'that submitted the job (sources {recorded}): the model is that code\'s, and the job is not offered '
            'to the cache; install the same aiida-voltnet on both')


class VoltnetTrainCalculation(CalcJob):
    """Train a voltage model (featurizer + regressor ensemble) on an ``ElectrodeDataset`` on a (GPU) computer."""

    #: Bump when the files written by ``prepare_for_submission`` or the meaning of the outputs change. A change of
    #: the code that trains (``aiida_voltnet.ml``, the ``voltnet-train`` script, the parser) needs no bump: the node
    #: also hashes ``cache_version.sources``, the fingerprint of that code (``_setup_version_info``).
    CACHE_VERSION = 3  # 3: model/training.json retrieved (what made the model, checked before a restart reuses it)

    _CONFIG = 'config.json'
    _RECORDS = 'records.json'
    _LOG = 'train.log'
    _STDERR = 'voltnet-train.err'
    _STATUS = 'status.json'
    _METRICS = 'metrics.json'
    _MODEL_DIR = 'model'
    _RESTART_DIR = 'restart'
    _CHECKPOINT_DIR = 'checkpoint'
    _MODEL_FILES = ('config.json', 'arrays.safetensors', 'training.json')  # training.json: what made the model

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
                   help='Optional `members`, `train_overrides` (epochs, lr, batch_size, ... of torch models), '
                        '`model_params` (max_iter, learning_rate, ... of tree and kernel models), `device` (default '
                        'auto: CUDA when the job sees one), `featurizer_options`, `target`.')
        spec.input('restart_folder', valid_type=(orm.RemoteData, orm.FolderData), required=False,
                   validator=validate_restart_folder,
                   help='What to resume from: the `checkpoint` output of an interrupted run (or its retrieved '
                        'folder, or its remote working directory on the code\'s computer, whose `checkpoint/` is '
                        'copied). voltnet-train '
                        'uses it when it checks out and belongs to this same training, else trains from scratch. '
                        'A folder with a complete `model/` of the same training is reused as it is.')
        spec.input('checkpointing', valid_type=orm.Dict, required=False, serializer=orm.to_aiida_type,
                   validator=validate_checkpointing,
                   help='Optional: `every_epochs` (torch loop state every N epochs; default off), `every_seconds` '
                        '(default 300), `max_seconds` (stop with a checkpoint after this long; default '
                        'max_wallclock_seconds minus `stop_margin_seconds`, default 5 % within [60, 600] s), and '
                        'the test hooks `stop_after_epochs` / `stop_after_members` (per run).')
        spec.inputs.validator = validate_inputs
        options = spec.inputs['metadata']['options']
        options['parser_name'].default = 'voltnet.train'
        options['resources'].default = lambda: {'num_machines': 1, 'num_mpiprocs_per_machine': 1}
        options['withmpi'].default = False
        options['input_filename'].default = cls._CONFIG
        options['output_filename'].default = cls._LOG

        spec.output('model', valid_type=VoltageModelData, help='The trained model (fitted featurizer + weights).')
        spec.output('metrics', valid_type=orm.Dict,
                    help="Fit on the training records, the device, wall time, the training's warnings.")
        spec.output('checkpoint', valid_type=orm.FolderData, required=False,
                    help='The last checkpoint of a run stopped or killed before training ended (state.json + '
                         'safetensors files); pass it as `restart_folder` to continue.')

        spec.exit_code(300, 'ERROR_MISSING_OUTPUT_FILES', invalidates_cache=True,
                       message='The model files or metrics were not retrieved: {missing}.')
        spec.exit_code(301, 'ERROR_INVALID_MODEL', invalidates_cache=True,
                       message='The retrieved model could not be loaded: {exception}')
        spec.exit_code(302, 'ERROR_BAD_INPUT_FILES', invalidates_cache=True,
                       message='voltnet-train refused its input files: {message}')
        spec.exit_code(310, 'ERROR_TRAINING_FAILED', invalidates_cache=True,
                       message='The trainer raised: {exception}')
        spec.exit_code(400, 'ERROR_OUT_OF_WALLTIME', invalidates_cache=True,
                       message='voltnet-train stopped before the walltime ({reason}) after checkpointing {where}.')
        spec.exit_code(410, 'ERROR_LOSS_DIVERGED', invalidates_cache=True,
                       message='The training loss became NaN/inf at epoch {epoch}.')
        spec.exit_code(420, 'ERROR_CUDA_OUT_OF_MEMORY', invalidates_cache=True,
                       message='CUDA ran out of memory (batch_size {batch_size}): {message}')

    @classmethod
    def is_valid_cache(cls, node: orm.ProcessNode) -> bool:
        """Also not a cache source when ``voltnet-train`` on the computer ran other plugin code than the submitting
        installation's: the hash covers the submitter's fingerprint (``cache_version.sources``), the model is the
        remote code's (``metrics.sources``), so a later submission would reuse a model its own code would not
        make. A job whose metrics carry no fingerprint ran a ``voltnet-train`` older than this check."""
        if not super().is_valid_cache(node):
            return False
        if 'metrics' not in node.outputs:
            return True  # a failed job, judged by its exit code above
        return remote_sources_differ(node, node.outputs.metrics.get('sources')) is None

    def _setup_version_info(self):
        """Add the fingerprint of the plugin's computing code to ``cache_version``, which the node's hash covers
        (it leaves ``version`` out), so that a model trained by other code is not reused from the cache."""
        info = super()._setup_version_info()
        cache_version = dict(self.node.base.attributes.get(self.KEY_CACHE_VERSION, {}))
        cache_version[SOURCES_KEY] = sources_fingerprint()
        self.node.base.attributes.set(self.KEY_CACHE_VERSION, cache_version)
        return info

    def _checkpoint_arguments(self) -> list[str]:
        """``voltnet-train`` options of the ``checkpointing`` input; ``--max-seconds`` from the walltime."""
        values = self.inputs.checkpointing.get_dict() if 'checkpointing' in self.inputs else {}
        values = {k: v for k, v in values.items() if v is not None}
        if 'max_seconds' not in values:
            walltime = self.inputs.metadata.options.get('max_wallclock_seconds')
            if walltime:
                margin = values.get('stop_margin_seconds', max(60.0, min(0.05 * walltime, 600.0)))
                values['max_seconds'] = max(walltime - margin, 0.5 * walltime)
        flags = {'every_epochs': '--checkpoint-every-epochs', 'every_seconds': '--checkpoint-every-seconds',
                 'max_seconds': '--max-seconds', 'stop_after_epochs': '--stop-after-epochs',
                 'stop_after_members': '--stop-after-members'}
        arguments = ['--checkpoint-dir', self._CHECKPOINT_DIR]
        for key, flag in flags.items():
            if key in values:
                value = values[key]
                arguments += [flag, str(int(value)) if CHECKPOINTING_KEYS[key] is int else f'{float(value):.10g}']
        return arguments

    def _stage_restart(self, calcinfo) -> str | None:
        """Copy the checkpoint (or complete model) of ``restart_folder`` to ``restart/``; its path, or None."""
        if 'restart_folder' not in self.inputs:
            return None
        restart = self.inputs.restart_folder
        if isinstance(restart, orm.RemoteData):  # a missing remote checkpoint/ is skipped with a warning by aiida
            calcinfo.remote_copy_list.append((restart.computer.uuid,
                                              f'{restart.get_remote_path()}/{self._CHECKPOINT_DIR}',
                                              self._RESTART_DIR))
            return self._RESTART_DIR
        names = restart.base.repository.list_object_names()
        if 'state.json' in names:  # the `checkpoint` output of an interrupted run
            source = '.'
        elif self._CHECKPOINT_DIR in names:  # the retrieved folder of an interrupted run
            source = self._CHECKPOINT_DIR
        else:  # a retrieved folder with a complete model/ (validated by validate_restart_folder)
            source = self._MODEL_DIR
        calcinfo.local_copy_list.append((restart.uuid, source, self._RESTART_DIR))
        return self._RESTART_DIR

    def prepare_for_submission(self, folder):
        """Write ``config.json``; copy ``records.json`` from the dataset's repository (and the checkpoint to resume
        from); run ``voltnet-train``."""
        settings = self.inputs.settings.get_dict() if 'settings' in self.inputs else {}
        config = {'featurizer': self.inputs.featurizer.value, 'model': self.inputs.model.value,
                  'seed': self.inputs.seed.value, 'settings': settings}
        calcinfo = datastructures.CalcInfo()
        calcinfo.local_copy_list = [(self.inputs.dataset.uuid, ElectrodeDataset.RECORDS_FILENAME, self._RECORDS)]
        calcinfo.remote_copy_list = []
        resume = self._stage_restart(calcinfo)
        with folder.open(self._CONFIG, 'w') as handle:
            json.dump(config, handle, indent=1, sort_keys=True)

        codeinfo = datastructures.CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = ['--config', self._CONFIG, '--records', self._RECORDS, '--output', '.',
                                   '--log', self._LOG, *self._checkpoint_arguments(),
                                   *(['--resume', resume] if resume else [])]
        codeinfo.stdout_name = 'voltnet-train.out'
        codeinfo.stderr_name = self._STDERR
        codeinfo.withmpi = False
        calcinfo.codes_info = [codeinfo]
        # (remote, local folder, depth 2): keep the files under model/ in the retrieved folder. checkpoint/ (only
        # there when training did not finish) is retrieved whole, also from a job killed by the scheduler.
        calcinfo.retrieve_list = [self._LOG, self._STATUS, self._METRICS, codeinfo.stderr_name,
                                  *((f'{self._MODEL_DIR}/{name}', '.', 2) for name in self._MODEL_FILES),
                                  self._CHECKPOINT_DIR]
        return calcinfo
