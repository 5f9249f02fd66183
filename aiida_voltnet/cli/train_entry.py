"""``voltnet-train``: the training script run by ``VoltnetTrainCalculation`` on the (GPU) computer.

It needs no AiiDA profile: it reads ``config.json`` (featurizer, model, seed, settings) and ``records.json`` (the
electrode records of an ``ElectrodeDataset``, JSON, no pickle), trains with ``train_voltage_model`` on device
``auto`` unless told otherwise, and writes into the output directory:

- ``model/`` (``config.json`` + ``arrays.safetensors``, the format of ``VoltageModel.save``), written as soon as
  training ends;
- ``metrics.json`` (fit on the training records, device, whether and from where the run resumed,
  ``warnings``: the package's own warnings of the training, such as a rough uncertainty calibration, and
  ``sources``: the fingerprint of the installed plugin code that trained, see ``calculations/sources.py``);
- ``status.json`` (``{"status": ..., "message": ..., "epoch": ...}``) and ``train.log``;
- ``checkpoint/`` while training (removed once the model and metrics are written): see "Checkpoints" below.

Failures have distinct exit codes *and* a ``VOLTNET_STATUS <status>`` marker line in ``train.log`` (the parser
reads ``status.json`` and falls back to the marker):

=====  ======================  ==================================================
exit   status                  cause
=====  ======================  ==================================================
0      ``OK``
2      ``BAD_INPUT``           config.json / records.json missing or invalid
3      ``TIME_LIMIT``          stopped early after writing a checkpoint: ``--max-seconds``, SIGTERM/SIGUSR1,
                               or a ``--stop-after-*`` test hook
4      ``LOSS_DIVERGED``       ``TrainingDiverged``: the loss became NaN/inf
5      ``CUDA_OUT_OF_MEMORY``  ``torch.cuda.OutOfMemoryError``
1      ``EXCEPTION``           any other exception of the trainer
=====  ======================  ==================================================

Checkpoints (``--checkpoint-dir``, default ``checkpoint/``; :class:`~aiida_voltnet.ml.training.TrainingCheckpoint`):
every finished ensemble member is saved (the ``voltnet`` tree ensemble: after each member), and the torch member in
training every ``--checkpoint-every-epochs`` epochs / ``--checkpoint-every-seconds`` seconds (default 300 s) and
before any early stop: weights, Adam and scheduler state, best-so-far weights, early-stopping counters and RNG
states. Files are safetensors + JSON (no pickle), each written to a temporary name and renamed, ``state.json`` last,
so a kill at any moment leaves the previous checkpoint valid. ``--max-seconds`` (the CalcJob derives it from the
walltime) stops the run with a checkpoint when the next epoch or member would end after that many seconds;
SIGTERM or SIGUSR1 (Slurm's warning before the walltime kill) stops it at the end of the current epoch or member.

Resuming (``--resume DIR``): a checkpoint is used when its ``state.json`` and the sha256 of every file check out
and it was written by the same training (featurizer, model, seed, settings except ``device``, the sha256 of
``records.json`` and the fingerprint of the package's sources); finished members are then restored instead of
retrained and the interrupted member continues after its saved epoch, which gives the same model as an
uninterrupted run (bit for bit on CPU). A ``DIR`` holding a complete model of the same training (``config.json`` +
``arrays.safetensors``) is reused as it is. Anything else (a saved loop state this code cannot restore included)
is reported in the log and ``metrics.json`` (``resume_rejected``) and the training starts from scratch.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import pathlib
import shutil
import signal
import sys
import time
import traceback

EXIT_OK, EXIT_EXCEPTION, EXIT_BAD_INPUT, EXIT_TIME_LIMIT, EXIT_DIVERGED, EXIT_OOM = 0, 1, 2, 3, 4, 5
STATUS_EXIT = {'OK': EXIT_OK, 'EXCEPTION': EXIT_EXCEPTION, 'BAD_INPUT': EXIT_BAD_INPUT, 'TIME_LIMIT': EXIT_TIME_LIMIT,
               'LOSS_DIVERGED': EXIT_DIVERGED, 'CUDA_OUT_OF_MEMORY': EXIT_OOM}
MARKER = 'VOLTNET_STATUS'
#: Keys of config.json's ``settings`` handed to ``train_voltage_model``.
SETTINGS_KEYS = ('members', 'train_overrides', 'model_params', 'device', 'featurizer_options', 'target')
#: Settings that do not change the trained model's identity (a checkpoint written on a GPU may resume on a CPU).
NOT_IDENTITY = ('device',)
CHECKPOINT_DIR = 'checkpoint'
#: Beside a complete model: what identifies the training that made it (as a checkpoint's state records it).
TRAINING_FILE = 'training.json'
#: Keyword arguments of ``TrainingCheckpoint`` set from the command line (see ``main``).
CHECKPOINT_OPTIONS = ('every_epochs', 'every_seconds', 'max_seconds', 'stop_after_epochs', 'stop_after_members')

LOGGER = logging.getLogger('voltnet-train')


def _setup_logging(log_path: pathlib.Path) -> None:
    formatter = logging.Formatter('%(asctime)s %(levelname)s %(message)s')
    handlers = [logging.FileHandler(log_path, mode='a'), logging.StreamHandler(sys.stdout)]
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in [h for h in root.handlers if getattr(h, '_voltnet_train', False)]:
        root.removeHandler(handler)  # an earlier main() in the same interpreter (tests)
        handler.close()
    for handler in handlers:
        handler._voltnet_train = True
        handler.setFormatter(formatter)
        root.addHandler(handler)


@contextlib.contextmanager
def _voltnet_warnings_logged(said: list[str]):
    """The package's own warnings raised in the block (a rough uncertainty calibration, the paper featurizer's
    leak, rounded host amounts), each once: logged to ``train.log`` and appended to ``said`` as
    ``'Category: message'`` (``metrics.json``'s ``warnings``, which the parser writes to the calculation's log).
    Other warnings that pass the filters are shown as Python shows them."""
    import warnings

    from aiida_voltnet.ml.featurizers import InputWarning, TargetLeakWarning
    from aiida_voltnet.ml.models import CalibrationWarning

    categories = (CalibrationWarning, TargetLeakWarning, InputWarning)
    caught: list = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            for category in categories:
                warnings.simplefilter('always', category)
            yield
    finally:  # after the block, not in it: a warning re-shown inside it was recorded into the list being walked,
        for warning in caught:  # an endless loop that filled the memory (review: a DeviceWarning did it)
            if not issubclass(warning.category, categories):
                warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
            elif (line := f'{warning.category.__name__}: {warning.message}') not in said:
                said.append(line)
                LOGGER.warning('%s', line)


#: The keys of the training config (``config.json``) that ``VoltnetTrainCalculation`` writes.
CONFIG_KEYS = ('featurizer', 'model', 'seed', 'settings', 'resume')


def _finish(output: pathlib.Path, status: str, message: str = '', **extra) -> int:
    (output / 'status.json').write_text(json.dumps({'status': status, 'message': message, **extra}, indent=1))
    LOGGER.info('%s %s %s', MARKER, status, json.dumps({'message': message, **extra}))
    for handler in logging.getLogger().handlers:
        handler.flush()
    return STATUS_EXIT[status]


def _resumable(resume: pathlib.Path | None, training: dict):
    """The model saved under ``resume`` when it is complete and its ``training.json`` is ``training`` (featurizer,
    model, seed, settings and the records' sha256, as a checkpoint's); otherwise None. A model of another
    dataset or other settings must not become this job's output."""
    from aiida_voltnet.ml.models import VoltageModel

    if resume is None or not (resume / 'config.json').is_file():
        return None
    try:
        model = VoltageModel.load(resume)
        recorded = json.loads((resume / TRAINING_FILE).read_text())
    except Exception as exception:  # noqa: BLE001 - an unusable checkpoint means: train again
        LOGGER.warning('checkpoint %s is unusable (%s); training from scratch', resume, exception)
        return None
    if recorded != training:
        differ = sorted(key for key in set(recorded) | set(training) if recorded.get(key) != training.get(key))
        LOGGER.warning('checkpoint %s belongs to another training (it differs in %s); training from scratch',
                       resume, ', '.join(differ))
        return None
    return model


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def _stop_on_signals(checkpoint):
    """SIGTERM / SIGUSR1 ask ``checkpoint`` to stop after the current epoch or member; a second one kills."""
    def handler(signum, _frame):
        name = signal.Signals(signum).name
        if checkpoint.stop_requested:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        checkpoint.request_stop(f'received {name}')

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        try:
            previous[signum] = signal.signal(signum, handler)
        except (ValueError, OSError):  # not the main thread
            pass
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def run(config_path: pathlib.Path, records_path: pathlib.Path, output: pathlib.Path,
        resume: pathlib.Path | None = None, checkpoint_dir: str | pathlib.Path = CHECKPOINT_DIR,
        checkpoint_options: dict | None = None, started: float | None = None) -> int:
    """Train as ``config_path`` says; write the outputs and checkpoints into ``output``; return the exit code."""
    started = time.monotonic() if started is None else started
    output.mkdir(parents=True, exist_ok=True)
    try:  # the code's environment first: a Python without torch (a module not loaded on a cluster) is no bad input
        import numpy  # noqa: F401
        import torch  # noqa: F401

        from aiida_voltnet.ml import featurizers, models, records  # noqa: F401
    except ImportError as exception:
        LOGGER.error('cannot import what training needs: %s', exception)
        return _finish(output, 'EXCEPTION', f"{type(exception).__name__}: voltnet-train's Python ({sys.executable}) "
                                            f'cannot import what training needs ({exception}): install aiida-voltnet '
                                            "with torch in the code's environment")
    try:
        config = json.loads(config_path.read_text())
        if not isinstance(config, dict):
            raise ValueError(f'the config must be a JSON object, got a JSON {type(config).__name__}')
        unknown = sorted(set(config) - set(CONFIG_KEYS))  # a misspelt 'modle' trained the default model (review)
        if unknown:
            raise ValueError(f'unknown config key(s) {", ".join(unknown)}; known: {", ".join(CONFIG_KEYS)}')
        settings = dict(config.get('settings') or {})
        unknown = sorted(set(settings) - set(SETTINGS_KEYS))
        if unknown:
            raise ValueError(f'unknown setting(s) {", ".join(unknown)}')
        from aiida_voltnet.ml.records import records_from_json

        records = records_from_json(records_path.read_text())
        records_sha256 = _sha256(records_path)
        config = {'featurizer': config.get('featurizer', 'leakfree'), 'model': config.get('model', 'voltnet'),
                  'seed': config.get('seed', 0), 'settings': settings, 'resume': config.get('resume')}
        from aiida_voltnet.ml.models import CHECKED_SETTINGS, check_training_options

        # the CalcJob checked these before submitting; a config written by hand gets the same checks here, as bad
        # input (exit 2) rather than an exception in the middle of training
        check_training_options(seed=config['seed'], model=config['model'], n_rows=len(records),
                               **{k: settings[k] for k in CHECKED_SETTINGS if k in settings})
        from aiida_voltnet.ml.featurizers import get_featurizer

        # the featurizer and its options too: a config of a newer install than this one is bad input, not an
        # exception in the middle of training (exit 1, which the work chain cannot tell from a crash)
        get_featurizer(config['featurizer'], _quiet=True, **(settings.get('featurizer_options') or {}))
        options = dict(checkpoint_options or {})
        unknown = sorted(set(options) - set(CHECKPOINT_OPTIONS))
        if unknown:
            raise ValueError(f'unknown checkpoint option(s) {", ".join(unknown)}')
    except Exception as exception:  # noqa: BLE001
        LOGGER.error('bad input: %s', exception)
        return _finish(output, 'BAD_INPUT', f'{type(exception).__name__}: {exception}')

    import numpy as np
    import torch

    from aiida_voltnet.ml.metrics import regression_metrics
    from aiida_voltnet.ml.models import spec_train_setting, train_voltage_model
    from aiida_voltnet.ml.training import (CheckpointError, TrainingCheckpoint, TrainingDiverged, TrainingInterrupted,
                                           _atomic_write)

    arguments = {**settings}
    arguments.setdefault('device', 'auto')
    target = arguments.get('target', 'average_voltage')
    LOGGER.info('training %s (featurizer %s, seed %d) on %d records, device %s, torch %s, cuda available: %s',
                config['model'], config['featurizer'], config['seed'], len(records), arguments['device'],
                torch.__version__, torch.cuda.is_available())
    from aiida_voltnet.calculations.sources import sources_fingerprint

    # the code that trains is part of what a checkpoint belongs to: a cluster install updated between two runs of
    # one job would otherwise mix members of two versions (a changed default) in one model, with no word
    training = {'featurizer': config['featurizer'], 'model': config['model'], 'seed': config['seed'],
                'settings': {k: v for k, v in settings.items() if k not in NOT_IDENTITY},
                'records_sha256': records_sha256, 'sources': sources_fingerprint()}
    checkpoint = TrainingCheckpoint(output / checkpoint_dir, training, started=started, **options)
    resume = resume or (pathlib.Path(config['resume']) if config.get('resume') else None)
    model, resumed_from, rejected = None, None, None
    if resume is not None and (resume / 'state.json').is_file():
        try:
            resumed_from = checkpoint.resume(resume)
        except CheckpointError as exception:
            rejected = str(exception)
            LOGGER.warning('not resuming: %s; training from scratch', exception)
    elif resume is not None:
        model = _resumable(resume, training)
        if model is None:
            rejected = f'{resume} holds no usable checkpoint or complete model of this training'
    reused_model = model is not None
    resumed = reused_model or resumed_from is not None

    def finish(status, message='', **extra):
        """``_finish`` with the reason a resume was refused, for every status (review: only metrics.json of a
        finished job had it, so a refused checkpoint of an interrupted run was said nowhere the user looks)."""
        return _finish(output, status, message, **extra, **({'resume_rejected': rejected} if rejected else {}))

    said: list[str] = []  # the voltnet warnings of the training, 'Category: message', for metrics.json

    def progress(message):
        LOGGER.info('%s', message)

    def out_of_memory(exception, when=''):
        LOGGER.error('CUDA out of memory%s: %s', when, exception)
        return finish('CUDA_OUT_OF_MEMORY', str(exception).splitlines()[0] if str(exception) else '',
                      batch_size=(arguments.get('train_overrides') or {}).get('batch_size')
                      or spec_train_setting(config['model'], 'batch_size'))

    def fit():
        with _stop_on_signals(checkpoint), _voltnet_warnings_logged(said):
            return train_voltage_model(records, featurizer=config['featurizer'], model=config['model'],
                                       seed=config['seed'], progress=progress, checkpoint=checkpoint, **arguments)

    try:
        if reused_model:
            LOGGER.info('resuming: reusing the complete model in %s', resume)
        else:
            try:
                model = fit()
            except CheckpointError as exception:  # a loop state that cannot be restored: as any unusable one
                if resumed_from is None:
                    raise
                rejected = f'the checkpoint could not be restored ({exception})'
                LOGGER.warning('not resuming: %s; training from scratch', rejected)
                shutil.rmtree(checkpoint.directory, ignore_errors=True)
                checkpoint = TrainingCheckpoint(output / checkpoint_dir, training, started=started, **options)
                resumed_from, resumed = None, False
                said.clear()
                model = fit()
    except TrainingInterrupted as exception:
        LOGGER.warning('%s', exception)
        return finish('TIME_LIMIT', str(exception), reason=exception.reason, **exception.where,
                      checkpoint=str(checkpoint_dir), serial=checkpoint.serial)
    except TrainingDiverged as exception:
        LOGGER.error('training diverged: %s', exception)
        return finish('LOSS_DIVERGED', str(exception), epoch=exception.epoch)
    except torch.cuda.OutOfMemoryError as exception:
        return out_of_memory(exception)
    except Exception as exception:  # noqa: BLE001 - reported through status.json and the exit code
        LOGGER.error('trainer raised:\n%s', traceback.format_exc())
        return finish('EXCEPTION', f'{type(exception).__name__}: {exception}')

    try:  # a failure here (CUDA memory in the prediction, a full disk) keeps the exit-code contract
        model_dir = output / 'model'
        if not reused_model:
            model.save(model_dir)
            (model_dir / TRAINING_FILE).write_text(json.dumps(training, indent=1, sort_keys=True))
        elif resume.resolve() != model_dir.resolve():
            model_dir.mkdir(exist_ok=True)
            for name in ('config.json', 'arrays.safetensors', TRAINING_FILE):
                shutil.copyfile(resume / name, model_dir / name)
        LOGGER.info('model written to %s (%.1f s)', model_dir, time.monotonic() - started)
        with _voltnet_warnings_logged(said):  # a reused model's records warn here (rounded host amounts), if at all
            try:
                mean, _ = model.predict(records)
            except torch.cuda.OutOfMemoryError as exception:  # the model is saved: score it on the CPU (review:
                LOGGER.warning('CUDA out of memory scoring the training records (%s); scoring them on the CPU',
                               str(exception).splitlines()[0] if str(exception) else '')  # it was retrained with
                torch.cuda.empty_cache()  # ever smaller batches, which cannot change the scoring's memory)
                mean, _ = model.predict(records, device='cpu')
        devices = sorted({h['device'] for h in model.metadata.get('train_history', []) if h.get('device')})
        metrics = {'train': regression_metrics([getattr(r, target) for r in records], mean),
                   'device': devices[0] if len(devices) == 1 else (devices or 'cpu'),
                   'resumed': resumed, 'wall_time_s': round(time.monotonic() - started, 3),
                   'checkpoints_written': checkpoint.saves}
        if resumed_from is not None:
            metrics['resumed_from'] = resumed_from
        if rejected is not None:
            metrics['resume_rejected'] = rejected
        if said:
            metrics['warnings'] = said
        metrics['sources'] = training['sources']  # the code that trained, which the parser compares with the job's

        def safe(value):
            if isinstance(value, dict):
                return {str(k): safe(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [safe(v) for v in value]
            if isinstance(value, (np.floating, np.integer)):
                value = value.item()
            if isinstance(value, float) and not np.isfinite(value):
                return None
            return value

        text = json.dumps(safe(metrics), indent=1, sort_keys=True)
        _atomic_write(output / 'metrics.json', lambda path: path.write_text(text))  # a kill leaves none, not half
    except torch.cuda.OutOfMemoryError as exception:
        return out_of_memory(exception, ' after training')
    except Exception as exception:  # noqa: BLE001 - reported through status.json and the exit code
        LOGGER.error('writing the outputs raised:\n%s', traceback.format_exc())
        return finish('EXCEPTION', f'{type(exception).__name__}: {exception}')
    if checkpoint.directory.is_dir():
        shutil.rmtree(checkpoint.directory)  # the model is complete: nothing to resume, nothing to retrieve
    return finish('OK', f'trained {config["model"]} on {len(records)} records')


def main(argv=None) -> int:
    started = time.monotonic()
    parser = argparse.ArgumentParser(prog='voltnet-train', description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', default='config.json', help='training configuration (JSON)')
    parser.add_argument('--records', default='records.json', help='electrode records (JSON of an ElectrodeDataset)')
    parser.add_argument('--output', default='.', help='directory for model/, metrics.json, status.json')
    parser.add_argument('--log', default='train.log', help='log file (relative to --output)')
    parser.add_argument('--resume', default=None, help='checkpoint (or complete model) directory to resume from')
    parser.add_argument('--checkpoint-dir', default=CHECKPOINT_DIR, help='where checkpoints go (relative to --output)')
    parser.add_argument('--checkpoint-every-epochs', type=int, default=0, metavar='N',
                        help='checkpoint a torch network every N epochs (0: off)')
    parser.add_argument('--checkpoint-every-seconds', type=float, default=300.0, metavar='S',
                        help='checkpoint a torch network after S seconds since the last checkpoint (0: off)')
    parser.add_argument('--max-seconds', type=float, default=None, metavar='S',
                        help='stop with a checkpoint (exit 3) before S seconds have passed since the start')
    parser.add_argument('--stop-after-epochs', type=int, default=None, metavar='N',
                        help='test hook: stop with a checkpoint (exit 3) after N epochs trained in this run')
    parser.add_argument('--stop-after-members', type=int, default=None, metavar='N',
                        help='test hook: stop with a checkpoint (exit 3) after N ensemble members trained in this run')
    args = parser.parse_args(argv)
    output = pathlib.Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    _setup_logging(output / args.log)
    try:
        from aiida_voltnet.ml.training import default_threads

        default_threads()
    except Exception:  # noqa: BLE001
        pass
    options = {'every_epochs': args.checkpoint_every_epochs or None,
               'every_seconds': args.checkpoint_every_seconds or None, 'max_seconds': args.max_seconds,
               'stop_after_epochs': args.stop_after_epochs, 'stop_after_members': args.stop_after_members}
    return run(pathlib.Path(args.config), pathlib.Path(args.records), output,
               resume=pathlib.Path(args.resume) if args.resume else None, checkpoint_dir=args.checkpoint_dir,
               checkpoint_options=options, started=started)


if __name__ == '__main__':
    sys.exit(main())
