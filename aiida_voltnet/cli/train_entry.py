"""``voltnet-train``: the training script run by ``VoltnetTrainCalculation`` on the (GPU) computer.

It needs no AiiDA profile: it reads ``config.json`` (featurizer, model, seed, settings) and ``records.json`` (the
electrode records of an ``ElectrodeDataset``, JSON, no pickle), trains with ``train_voltage_model`` on device
``auto`` unless told otherwise, and writes into the output directory:

- ``model/`` (``config.json`` + ``arrays.safetensors``, the format of ``VoltageModel.save``), written as soon as
  training ends; it doubles as the checkpoint a restart resumes from;
- ``metrics.json`` (fit on the training records, device);
- ``status.json`` (``{"status": ..., "message": ..., "epoch": ...}``) and ``train.log``.

Failures have distinct exit codes *and* a ``VOLTNET_STATUS <status>`` marker line in ``train.log`` (the parser
reads ``status.json`` and falls back to the marker):

=====  ======================  ==================================================
exit   status                  cause
=====  ======================  ==================================================
0      ``OK``
2      ``BAD_INPUT``           config.json / records.json missing or invalid
4      ``LOSS_DIVERGED``       ``TrainingDiverged``: the loss became NaN/inf
5      ``CUDA_OUT_OF_MEMORY``  ``torch.cuda.OutOfMemoryError``
1      ``EXCEPTION``           any other exception of the trainer
=====  ======================  ==================================================

Resuming: when ``config.json`` names a ``resume`` directory holding a complete model trained with the same
featurizer, model, seed and target (e.g. a job killed at the walltime after training but before it finished writing
its outputs), that model is reused instead of retrained. The core trainer has no epoch-level checkpoint hook, so a
job killed *during* training starts its training again.
"""
from __future__ import annotations

import argparse
import json
import logging
import pathlib
import shutil
import sys
import time
import traceback

EXIT_OK, EXIT_EXCEPTION, EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_OOM = 0, 1, 2, 4, 5
STATUS_EXIT = {'OK': EXIT_OK, 'EXCEPTION': EXIT_EXCEPTION, 'BAD_INPUT': EXIT_BAD_INPUT,
               'LOSS_DIVERGED': EXIT_DIVERGED, 'CUDA_OUT_OF_MEMORY': EXIT_OOM}
MARKER = 'VOLTNET_STATUS'
#: Keys of config.json's ``settings`` handed to ``train_voltage_model``.
SETTINGS_KEYS = ('members', 'train_overrides', 'device', 'featurizer_options', 'target')

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


def _finish(output: pathlib.Path, status: str, message: str = '', **extra) -> int:
    (output / 'status.json').write_text(json.dumps({'status': status, 'message': message, **extra}, indent=1))
    LOGGER.info('%s %s %s', MARKER, status, json.dumps({'message': message, **extra}))
    for handler in logging.getLogger().handlers:
        handler.flush()
    return STATUS_EXIT[status]


def _resumable(resume: pathlib.Path | None, config: dict):
    """The model saved under ``resume`` when it is complete and matches ``config``; otherwise None."""
    from aiida_voltnet.ml.models import VoltageModel

    if resume is None or not (resume / 'config.json').is_file():
        return None
    try:
        model = VoltageModel.load(resume)
    except Exception as exception:  # noqa: BLE001 - an unusable checkpoint means: train again
        LOGGER.warning('checkpoint %s is unusable (%s); training from scratch', resume, exception)
        return None
    saved = json.loads((resume / 'config.json').read_text())
    metadata = saved.get('metadata', {})
    expected = {'model_name': config['model'], 'seed': config['seed'],
                'target': config['settings'].get('target', 'average_voltage')}
    found = {'model_name': saved.get('model_name'), 'seed': metadata.get('seed'),
             'target': metadata.get('target', 'average_voltage')}
    if found != expected or saved.get('featurizer', {}).get('name') not in (config['featurizer'], None):
        LOGGER.warning('checkpoint %s belongs to another training (%s, expected %s); training from scratch',
                       resume, found, expected)
        return None
    return model


def run(config_path: pathlib.Path, records_path: pathlib.Path, output: pathlib.Path) -> int:
    output.mkdir(parents=True, exist_ok=True)
    try:
        config = json.loads(config_path.read_text())
        settings = dict(config.get('settings') or {})
        unknown = sorted(set(settings) - set(SETTINGS_KEYS))
        if unknown:
            raise ValueError(f'unknown setting(s) {", ".join(unknown)}')
        from aiida_voltnet.ml.records import records_from_json

        records = records_from_json(records_path.read_text())
        config = {'featurizer': config.get('featurizer', 'leakfree'), 'model': config.get('model', 'voltnet'),
                  'seed': int(config.get('seed', 0)), 'settings': settings, 'resume': config.get('resume')}
    except Exception as exception:  # noqa: BLE001
        LOGGER.error('bad input: %s', exception)
        return _finish(output, 'BAD_INPUT', f'{type(exception).__name__}: {exception}')

    import numpy as np
    import torch

    from aiida_voltnet.ml.metrics import regression_metrics
    from aiida_voltnet.ml.models import train_voltage_model
    from aiida_voltnet.ml.training import TrainingDiverged

    arguments = {**settings}
    arguments.setdefault('device', 'auto')
    target = arguments.get('target', 'average_voltage')
    LOGGER.info('training %s (featurizer %s, seed %d) on %d records, device %s, torch %s, cuda available: %s',
                config['model'], config['featurizer'], config['seed'], len(records), arguments['device'],
                torch.__version__, torch.cuda.is_available())
    started = time.perf_counter()
    resume = pathlib.Path(config['resume']) if config.get('resume') else None
    model = _resumable(resume, config)
    resumed = model is not None
    try:
        if resumed:
            LOGGER.info('resuming: reusing the complete model checkpoint in %s', resume)
        else:
            def progress(message):
                LOGGER.info('%s', message)

            model = train_voltage_model(records, featurizer=config['featurizer'], model=config['model'],
                                        seed=config['seed'], progress=progress, **arguments)
    except TrainingDiverged as exception:
        LOGGER.error('training diverged: %s', exception)
        return _finish(output, 'LOSS_DIVERGED', str(exception), epoch=exception.epoch)
    except torch.cuda.OutOfMemoryError as exception:
        LOGGER.error('CUDA out of memory: %s', exception)
        return _finish(output, 'CUDA_OUT_OF_MEMORY', str(exception).splitlines()[0] if str(exception) else '',
                       batch_size=(arguments.get('train_overrides') or {}).get('batch_size'))
    except Exception as exception:  # noqa: BLE001 - reported through status.json and the exit code
        LOGGER.error('trainer raised:\n%s', traceback.format_exc())
        return _finish(output, 'EXCEPTION', f'{type(exception).__name__}: {exception}')

    model_dir = output / 'model'
    if resumed and resume.resolve() != model_dir.resolve():
        model_dir.mkdir(exist_ok=True)
        for name in ('config.json', 'arrays.safetensors'):
            shutil.copyfile(resume / name, model_dir / name)
    elif not resumed:
        model.save(model_dir)  # written first: it is also the checkpoint of a restart
    LOGGER.info('model written to %s (%.1f s)', model_dir, time.perf_counter() - started)
    mean, _ = model.predict(records)
    devices = sorted({h['device'] for h in model.metadata.get('train_history', []) if h.get('device')})
    metrics = {'train': regression_metrics([getattr(r, target) for r in records], mean),
               'device': devices[0] if len(devices) == 1 else (devices or 'cpu'),
               'resumed': resumed, 'wall_time_s': round(time.perf_counter() - started, 3)}

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

    (output / 'metrics.json').write_text(json.dumps(safe(metrics), indent=1, sort_keys=True))
    return _finish(output, 'OK', f'trained {config["model"]} on {len(records)} records')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='voltnet-train', description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', default='config.json', help='training configuration (JSON)')
    parser.add_argument('--records', default='records.json', help='electrode records (JSON of an ElectrodeDataset)')
    parser.add_argument('--output', default='.', help='directory for model/, metrics.json, status.json')
    parser.add_argument('--log', default='train.log', help='log file (relative to --output)')
    args = parser.parse_args(argv)
    output = pathlib.Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    _setup_logging(output / args.log)
    try:
        from aiida_voltnet.ml.training import default_threads

        default_threads()
    except Exception:  # noqa: BLE001
        pass
    return run(pathlib.Path(args.config), pathlib.Path(args.records), output)


if __name__ == '__main__':
    sys.exit(main())
