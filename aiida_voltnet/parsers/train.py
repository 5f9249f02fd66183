"""Parser of ``VoltnetTrainCalculation``: ``model/`` -> ``VoltageModelData``, ``metrics.json`` -> ``Dict``.

The status the ``voltnet-train`` script reports (``status.json``, or the ``VOLTNET_STATUS`` marker in ``train.log``)
is mapped to the calculation's exit codes; a walltime kill reported by the scheduler (120) is kept unless a
complete model was retrieved anyway.

When training did not finish, because the script stopped itself before the walltime (status ``TIME_LIMIT``: exit
code 400) or the job was killed (120 from the scheduler, or no final status at all), the retrieved ``checkpoint/``
is checked (``state.json``, the sha256 of every file it names) and exposed as the ``checkpoint`` output, which
``VoltnetTrainBaseWorkChain`` passes as ``restart_folder`` to the next run.
"""
from __future__ import annotations

import json
import pathlib
import shutil
import tempfile

from aiida import orm
from aiida.engine import ExitCode
from aiida.parsers import Parser

from aiida_voltnet.data.model import VoltageModelData, json_safe

__all__ = ('VoltnetTrainParser',)

MARKER = 'VOLTNET_STATUS'
CHECKPOINT_DIR = 'checkpoint'


def read_status(names, read) -> dict | None:
    """The script's final status: ``status.json``, else the last ``VOLTNET_STATUS`` line of ``train.log``."""
    if 'status.json' in names:
        try:
            status = json.loads(read('status.json'))
        except (ValueError, RecursionError):
            status = None
        if isinstance(status, dict):  # a JSON string or list is no status the script writes: read train.log
            return status
    if 'train.log' in names:
        for line in reversed(read('train.log').splitlines()):
            if MARKER in line:
                rest = line.split(MARKER, 1)[1].strip()
                status, _, extra = rest.partition(' ')
                try:
                    details = json.loads(extra) if extra else {}
                except (ValueError, RecursionError):
                    details = {'message': extra}
                if not isinstance(details, dict):
                    details = {'message': extra}
                return {'status': status, **details}
    return None


class VoltnetTrainParser(Parser):
    """Create the ``model`` and ``metrics`` outputs of a ``VoltnetTrainCalculation``."""

    def parse(self, **kwargs):
        retrieved = self.retrieved
        names = set(retrieved.base.repository.list_object_names())
        model_names = (set(retrieved.base.repository.list_object_names('model'))
                       if 'model' in names else set())

        def read(name):
            return retrieved.base.repository.get_object_content(name)

        status = read_status(names, read)
        scheduler_exit = self.node.exit_status  # set by the scheduler output parser, e.g. 120 (walltime)
        kind = (status or {}).get('status')
        if (status or {}).get('resume_rejected'):  # said in train.log only, before (review)
            self.logger.warning(f'restart_folder not resumed from, the job trained from scratch: '
                                f'{status["resume_rejected"]}')
        if kind == 'LOSS_DIVERGED':
            return self.exit_codes.ERROR_LOSS_DIVERGED.format(epoch=status.get('epoch', '?'))
        if kind == 'CUDA_OUT_OF_MEMORY':
            return self.exit_codes.ERROR_CUDA_OUT_OF_MEMORY.format(batch_size=status.get('batch_size'),
                                                                   message=status.get('message', ''))
        if kind == 'EXCEPTION':
            return self.exit_codes.ERROR_TRAINING_FAILED.format(exception=status.get('message', ''))
        if kind == 'BAD_INPUT':
            return self.exit_codes.ERROR_BAD_INPUT_FILES.format(message=status.get('message', ''))
        if kind == 'TIME_LIMIT':
            self._expose_checkpoint(names)
            where = f'member {status.get("member", "?")}'
            if status.get('epoch') is not None:
                where += f' epoch {status["epoch"]}'
            return self.exit_codes.ERROR_OUT_OF_WALLTIME.format(reason=status.get('reason', '?'), where=where)

        missing = [f'model/{n}' for n in ('config.json', 'arrays.safetensors') if n not in model_names]
        metrics = None
        if 'metrics.json' not in names:
            missing.append('metrics.json')
        else:  # written after the model, not atomically: a kill while writing leaves it cut short
            try:
                metrics = json.loads(read('metrics.json'))
            except RecursionError:
                missing.append('metrics.json (unreadable: nested too deeply)')
            except ValueError as exception:
                missing.append(f'metrics.json (unreadable, not JSON: {exception})')
            else:
                if not isinstance(metrics, dict):
                    missing.append(f'metrics.json (a JSON {type(metrics).__name__}, not an object)')
                elif not isinstance(metrics.get('warnings', []), list):  # a string became a warning per character
                    missing.append('metrics.json (its "warnings" is not a list)')
                elif not isinstance(metrics.get('train', {}), dict):
                    missing.append('metrics.json (its "train" is not an object)')
        if missing:
            if kind is None:  # killed before it could report: its last checkpoint is what is left
                self._expose_checkpoint(names)
            if scheduler_exit == self.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME.status:
                return self.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME
            if kind is None and scheduler_exit:
                return None  # keep the scheduler's exit code (e.g. 110 out of memory)
            said = self._last_words(names, read) if kind is None else ''
            return self.exit_codes.ERROR_MISSING_OUTPUT_FILES.format(
                missing=', '.join(missing) + (f'; the job never reported a status, and its last words were: {said}'
                                              if said else ''))

        from aiida_voltnet.ml.models import VoltageModel

        try:
            with tempfile.TemporaryDirectory() as directory:
                for name in ('config.json', 'arrays.safetensors'):
                    content = retrieved.base.repository.get_object_content(f'model/{name}', mode='rb')
                    (pathlib.Path(directory) / name).write_bytes(content)
                core = VoltageModel.load(directory)
        except Exception as exception:  # noqa: BLE001 - reported as the exit message
            return self.exit_codes.ERROR_INVALID_MODEL.format(exception=f'{type(exception).__name__}: {exception}')
        other = self._another_training(core, model_names, read)
        if other:  # a valid model, but not this job's: it would be linked to inputs it was not trained on
            return self.exit_codes.ERROR_INVALID_MODEL.format(
                exception=f'the retrieved model was not trained by this job: {other}')
        said = [str(line) for line in metrics.get('warnings') or []]
        for line in said:  # the training's own warnings, in the calculation's log
            self.logger.warning(line)
        model_metrics = {'train': metrics.get('train', {}), 'device': metrics.get('device', 'cpu'), 'warnings': said}
        self.out('model', VoltageModelData(core, metrics=model_metrics))
        self.out('metrics', orm.Dict(json_safe(metrics)))
        from aiida_voltnet.calculations.train_job import remote_sources_differ
        differ = remote_sources_differ(self.node, metrics.get('sources'))
        if differ:
            self.logger.warning(differ)
        return ExitCode(0)  # explicit: a complete model overrides a walltime kill reported by the scheduler

    def _another_training(self, core, model_names, read) -> str:
        """Where the retrieved model disagrees with this job's inputs ('' where it does not): its featurizer,
        model, seed, target and number of training rows, and ``model/training.json`` (what the script records of
        the training: these inputs, the settings and the sha256 of ``records.json``)."""
        from aiida_voltnet.cli.train_entry import NOT_IDENTITY, TRAINING_FILE

        inputs = self.node.inputs
        settings = inputs.settings.get_dict() if 'settings' in inputs else {}
        dataset = inputs.dataset
        expected = {'featurizer': inputs.featurizer.value, 'model': inputs.model.value, 'seed': inputs.seed.value,
                    'target': settings.get('target', 'average_voltage'),
                    'n_training_rows': dataset.base.attributes.get('n_records', None)}
        found = {'featurizer': core.featurizer.name, 'model': core.model_name, 'seed': core.metadata.get('seed'),
                 'target': core.metadata.get('target', 'average_voltage'),
                 'n_training_rows': core.metadata.get('n_training_rows')}
        differ = [f'{key} {found[key]!r}, not {value!r}' for key, value in expected.items() if found[key] != value]
        if TRAINING_FILE in model_names:  # written by every voltnet-train that retrieves it; read, never run
            try:
                recorded = json.loads(read(f'model/{TRAINING_FILE}'))
            except (ValueError, RecursionError):
                recorded = None
            if not isinstance(recorded, dict):
                differ.append(f'model/{TRAINING_FILE} is no JSON object')
            else:
                job = {'featurizer': expected['featurizer'], 'model': expected['model'], 'seed': expected['seed'],
                       'settings': {k: v for k, v in settings.items() if k not in NOT_IDENTITY},
                       'records_sha256': dataset.base.attributes.get('records_sha256', None)}
                differ.extend(f'model/{TRAINING_FILE} has another {key}' for key, value in job.items()
                              if recorded.get(key) != value)
        return '; '.join(differ)

    def _last_words(self, names, read, lines: int = 3) -> str:
        """The last lines of the job's stderr, else the scheduler's, else ``train.log``: why a job that never
        reported a status ended (``voltnet-train: No such file or directory`` for a code whose executable is
        missing, say)."""
        from aiida_voltnet.calculations.train_job import VoltnetTrainCalculation as job

        for name in (job._STDERR, self.node.get_option('scheduler_stderr') or '_scheduler-stderr.txt', job._LOG):
            if name in names:
                text = [line.strip() for line in read(name).splitlines() if line.strip()]
                if text:
                    return ' | '.join(text[-lines:])[:500]
        return ''

    def _expose_checkpoint(self, names) -> bool:
        """Output ``checkpoint`` (``state.json`` + the files it names) when the retrieved one checks out."""
        if CHECKPOINT_DIR not in names:
            return False
        from aiida_voltnet.ml.training import CHECKPOINT_STATE, CheckpointError, TrainingCheckpoint

        repository = self.retrieved.base.repository
        with tempfile.TemporaryDirectory() as directory:
            directory = pathlib.Path(directory)
            try:
                state = json.loads(repository.get_object_content(f'{CHECKPOINT_DIR}/{CHECKPOINT_STATE}'))
                for name in [CHECKPOINT_STATE, *TrainingCheckpoint.files(state)]:
                    with repository.open(f'{CHECKPOINT_DIR}/{name}', 'rb') as source, \
                            (directory / name).open('wb') as target:
                        shutil.copyfileobj(source, target)
                TrainingCheckpoint.read_state(directory)
            except (CheckpointError, FileNotFoundError, KeyError, TypeError, ValueError, OSError, AttributeError,
                    RecursionError) as exception:
                said = str(exception).replace(f'{directory}/', f'{CHECKPOINT_DIR}/').replace(
                    str(directory), CHECKPOINT_DIR)  # the retrieved folder, not the parser's deleted temp copy
                self.logger.warning(f'the retrieved checkpoint (retrieved folder {self.retrieved.pk}) is unusable, '
                                    f'not exposed: {said}')
                return False
            folder = orm.FolderData(tree=directory)
        self.out('checkpoint', folder)
        return True
