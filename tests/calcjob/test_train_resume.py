"""Checkpoints and resume of ``voltnet-train`` (no AiiDA): a training stopped or killed part-way and resumed from its
checkpoint ends with the same model, bit for bit on CPU, as an uninterrupted one."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from aiida_voltnet.cli import train_entry
from aiida_voltnet.ml.records import records_to_json
from aiida_voltnet.ml.training import CheckpointError, TrainingCheckpoint

from conftest import records_50, voltnet_train_executable

#: An ensemble of 2 dropout MLPs with a cosine schedule: calibration (2 members) + final (2 members), 3 epochs each.
MLP_ENSEMBLE = {'model': 'voltnet_mlp',
                'settings': {'members': 2, 'train_overrides': {'epochs': 3, 'scheduler': 'cosine'}}}


@pytest.fixture
def job(tmp_path, csv_60):
    """``job(name, **config)``: a fresh job directory with records.json and config.json (50 rows)."""
    records = records_to_json(records_50(csv_60))

    def make(name, **config):
        directory = tmp_path / name
        directory.mkdir()
        (directory / 'records.json').write_text(records)
        config = {'featurizer': 'leakfree', 'model': 'voltnet', 'seed': 2, 'settings': {}, **config}
        (directory / 'config.json').write_text(json.dumps(config))
        return directory

    return make


def _main(directory, *extra):
    return train_entry.main(['--config', str(directory / 'config.json'), '--records', str(directory / 'records.json'),
                             '--output', str(directory), *map(str, extra)])


def _status(directory):
    return json.loads((directory / 'status.json').read_text())


def _model(directory):
    """What identifies a saved model: the weights' sha256 and the content hash (config without timings)."""
    config = json.loads((directory / 'model' / 'config.json').read_text())
    return config['arrays_sha256'], config['model_version']


def _run_until_done(job, config, *extra, max_runs=10):
    """Run, and on exit 3 (TIME_LIMIT) run again in a new job directory resumed from the last one's checkpoint, as
    the restart work chain does. Returns the job directories."""
    runs = [job('run0', **config)]
    code = _main(runs[-1], *extra)
    while code == train_entry.EXIT_TIME_LIMIT:
        assert len(runs) < max_runs
        assert _status(runs[-1])['status'] == 'TIME_LIMIT'
        previous = runs[-1] / 'checkpoint'
        runs.append(job(f'run{len(runs)}', **config))
        code = _main(runs[-1], '--resume', previous, *extra)
    assert code == 0, _status(runs[-1])
    return runs


def test_torch_ensemble_stopped_mid_member_resumes_to_the_same_model(job):
    reference = job('reference', **MLP_ENSEMBLE)
    assert _main(reference) == 0
    assert not (reference / 'checkpoint').exists()  # removed once the model is written

    runs = _run_until_done(job, MLP_ENSEMBLE, '--stop-after-epochs', 5)
    assert len(runs) == 3  # 12 epochs, 5 per run
    first = _status(runs[0])
    assert first == {**first, 'status': 'TIME_LIMIT', 'member': 'calibration.1', 'epoch': 2}
    resumed = json.loads((runs[1] / 'metrics.json').read_text()) if (runs[1] / 'metrics.json').exists() else None
    assert resumed is None  # the middle run stopped too
    metrics = json.loads((runs[-1] / 'metrics.json').read_text())
    assert metrics['resumed'] is True
    assert metrics['resumed_from']['members'] == ['calibration.0', 'calibration.1', 'final.0']
    assert metrics['resumed_from']['current'] == {'member': 'final.1', 'epoch': 1}
    log = (runs[-1] / 'train.log').read_text()
    assert 'member final.0 restored from the checkpoint' in log and 'continuing the training loop after epoch 1' in log
    assert _model(runs[-1]) == _model(reference)


def test_tree_ensemble_resume_skips_finished_members(job, monkeypatch):
    from aiida_voltnet.ml import models

    fitted = []
    fit = models.GradientBoostedTrees.fit

    def counting_fit(self, X, *args, **kwargs):
        fitted.append(len(X))
        return fit(self, X, *args, **kwargs)

    monkeypatch.setattr(models.GradientBoostedTrees, 'fit', counting_fit)
    config = {'model': 'voltnet', 'settings': {'members': 2}}
    reference = job('reference', **config)
    assert _main(reference) == 0
    uninterrupted = list(fitted)
    assert len(uninterrupted) == 4  # 2 calibration members + 2 final members
    fitted.clear()

    runs = _run_until_done(job, config, '--stop-after-members', 3)
    assert len(runs) == 2
    assert fitted == uninterrupted  # every member trained exactly once over the two runs
    status = _status(runs[0])
    assert status['member'] == 'final.0' and status['epoch'] is None
    log = (runs[1] / 'train.log').read_text()
    assert log.count('restored from the checkpoint (not trained again)') == 3
    assert _model(runs[-1]) == _model(reference)


def test_max_seconds_stops_with_a_checkpoint(job):
    directory = job('run', model='mlp', settings={'train_overrides': {'epochs': 50}})
    assert _main(directory, '--max-seconds', 0.001) == train_entry.EXIT_TIME_LIMIT
    status = _status(directory)
    assert status['status'] == 'TIME_LIMIT' and status['reason'].startswith('time limit')
    assert status['epoch'] == 1 and 'VOLTNET_STATUS TIME_LIMIT' in (directory / 'train.log').read_text()
    state = TrainingCheckpoint.read_state(directory / 'checkpoint')
    assert state['current']['member'] == 'final.0' and state['current']['epoch'] == 1


def test_a_checkpoint_of_another_training_or_altered_is_not_used(job):
    config = {'model': 'voltnet', 'settings': {'members': 2}}
    first = job('first', **config)
    assert _main(first, '--stop-after-members', 1) == train_entry.EXIT_TIME_LIMIT
    checkpoint = first / 'checkpoint'

    other_seed = job('other_seed', **{**config, 'seed': 3})
    assert _main(other_seed, '--resume', checkpoint) == 0
    metrics = json.loads((other_seed / 'metrics.json').read_text())
    assert metrics['resumed'] is False and 'differs in seed' in metrics['resume_rejected']

    other_settings = job('other_settings', model='voltnet', settings={'members': 2, 'target': 'max_delta_volume'})
    assert _main(other_settings, '--resume', checkpoint, '--stop-after-members', 1) == train_entry.EXIT_TIME_LIMIT
    assert 'differs in settings' in (other_settings / 'train.log').read_text()
    # review: an interrupted run's status did not say that its restart_folder was refused (the parser and the
    # restart work chain say it from there)
    assert 'differs in settings' in _status(other_settings)['resume_rejected']
    assert _status(other_seed)['status'] == 'OK' and 'differs in seed' in _status(other_seed)['resume_rejected']
    assert 'resume_rejected' not in _status(first)

    altered = job('altered_source', **config)
    shutil.copytree(checkpoint, altered / 'restart')
    member = next((altered / 'restart').glob('member-*.safetensors'))
    member.write_bytes(member.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match='sha256'):
        TrainingCheckpoint.read_state(altered / 'restart')
    assert _main(altered, '--resume', altered / 'restart') == 0
    assert 'sha256 mismatch' in json.loads((altered / 'metrics.json').read_text())['resume_rejected']

    state = json.loads((checkpoint / 'state.json').read_text())
    state['members']['calibration.0']['history']['n_trees'] = 1  # edited by hand: the state hash no longer matches
    (checkpoint / 'state.json').write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match='altered'):
        TrainingCheckpoint.read_state(checkpoint)


def test_a_kill_while_writing_leaves_the_previous_checkpoint_valid(job, monkeypatch):
    """Interrupt the rename of a new state.json (as a kill would): the previous one and its files still load, and
    resuming from it still gives the uninterrupted model."""
    from aiida_voltnet.ml import training

    reference = job('reference', **MLP_ENSEMBLE)
    assert _main(reference) == 0

    killed = job('killed', **MLP_ENSEMBLE)
    replace, calls = os.replace, []

    def dying_replace(source, target):
        calls.append(str(target))
        if str(target).endswith('state.json') and len([c for c in calls if c.endswith('state.json')]) == 5:
            raise KeyboardInterrupt('killed while renaming state.json')  # the new files are written, not named
        return replace(source, target)

    monkeypatch.setattr(training.os, 'replace', dying_replace)
    with pytest.raises(KeyboardInterrupt):
        _main(killed, '--checkpoint-every-epochs', 1)
    monkeypatch.undo()
    checkpoint = killed / 'checkpoint'
    # checkpoints 1-3: calibration.0 after epochs 1, 2 and finished; 4: calibration.1 after epoch 1; 5 was killed
    state = TrainingCheckpoint.read_state(checkpoint)  # the fourth state.json, intact
    assert state['serial'] == 4 and list(state['members']) == ['calibration.0']
    assert state['current'] == {**state['current'], 'member': 'calibration.1', 'epoch': 1}
    assert (checkpoint / 'current-000005.safetensors').is_file()  # written, never named: ignored
    resumed = job('resumed', **MLP_ENSEMBLE)
    assert _main(resumed, '--resume', checkpoint) == 0
    assert _model(resumed) == _model(reference)


def _start(directory, *extra):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.Popen([voltnet_train_executable(), '--config', 'config.json', '--records', 'records.json',
                             '--output', '.', *map(str, extra)], cwd=directory, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_for_epoch(process, checkpoint, epoch, timeout=60):
    """Wait until the running ``process`` has checkpointed at least ``epoch`` of its member."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f'voltnet-train ended ({process.returncode}) before epoch {epoch}: {process.stderr.read()}')
        try:
            current = TrainingCheckpoint.read_state(checkpoint).get('current')
        except (CheckpointError, OSError, ValueError, KeyError):
            current = None  # not there yet (or replaced while being read)
        if current and current['epoch'] >= epoch:
            return current['epoch']
        time.sleep(0.02)
    pytest.fail(f'no checkpoint of epoch {epoch} within {timeout} s')


#: A single MLP long enough to be caught mid-training (checkpointing every epoch slows it down further).
LONG_MLP = {'model': 'mlp', 'settings': {'train_overrides': {'epochs': 400, 'patience': None}}}


def test_sigkill_mid_training_then_resume_gives_the_same_model(job):
    """A real kill -9 of the running script: the last periodic checkpoint survives and resuming from it finishes
    with the uninterrupted model."""
    killed = job('killed', **LONG_MLP)
    process = _start(killed, '--checkpoint-every-epochs', 1)
    try:
        _wait_for_epoch(process, killed / 'checkpoint', 3)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        process.kill()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL and not (killed / 'status.json').exists()
    state = TrainingCheckpoint.read_state(killed / 'checkpoint')
    stopped_at = state['current']['epoch']
    assert 3 <= stopped_at < 400

    resumed = job('resumed', **LONG_MLP)
    assert _main(resumed, '--resume', killed / 'checkpoint') == 0
    assert json.loads((resumed / 'metrics.json').read_text())['resumed_from']['current']['epoch'] == stopped_at
    reference = job('reference', **LONG_MLP)
    assert _main(reference) == 0
    assert _model(resumed) == _model(reference)


def test_sigterm_stops_at_the_end_of_the_epoch_with_a_checkpoint(job):
    """SIGTERM (what Slurm sends at the walltime, before SIGKILL): exit 3 with a checkpoint of the last epoch."""
    directory = job('run', **LONG_MLP)
    process = _start(directory, '--checkpoint-every-epochs', 1)
    try:
        _wait_for_epoch(process, directory / 'checkpoint', 2)
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(60)
    finally:
        process.kill()
        process.stderr.close()
    assert returncode == train_entry.EXIT_TIME_LIMIT
    status = _status(directory)
    assert status['status'] == 'TIME_LIMIT' and status['reason'] == 'received SIGTERM'
    assert TrainingCheckpoint.read_state(directory / 'checkpoint')['current']['epoch'] == status['epoch']


if __name__ == '__main__':  # pragma: no cover
    sys.exit(pytest.main([__file__, '-q']))


def test_a_checkpoint_of_other_code_or_an_unrestorable_loop_trains_from_scratch(job, monkeypatch):
    """Found by review: a checkpoint identified its training by data and settings only, so a cluster install updated
    between two runs of one job resumed it (members of two versions in one model, no word); and a loop state that
    the new code could not restore ended the job with an exception (exit 1, no handler) where the docs promise a
    fresh start recorded as ``resume_rejected``."""
    from aiida_voltnet.calculations import sources
    from aiida_voltnet.ml import models

    config = {'model': 'voltnet', 'settings': {'members': 2}}
    first = job('first', **config)
    assert _main(first, '--stop-after-members', 1) == train_entry.EXIT_TIME_LIMIT
    fresh = job('fresh', **config)
    assert _main(fresh) == 0

    real = sources.sources_fingerprint()
    monkeypatch.setattr(sources, 'sources_fingerprint', lambda: 'another install')
    updated = job('updated', **config)
    assert _main(updated, '--resume', first / 'checkpoint') == 0
    metrics = json.loads((updated / 'metrics.json').read_text())
    assert metrics['resumed'] is False and 'differs in sources' in metrics['resume_rejected']
    monkeypatch.setattr(sources, 'sources_fingerprint', lambda: real)

    train, calls = models.train_voltage_model, []

    def loop_state_refused_once(*args, **kwargs):
        calls.append(kwargs['checkpoint'].resumed_from)
        if len(calls) == 1:
            raise CheckpointError('the saved loop state belongs to training settings {...}')
        return train(*args, **kwargs)

    monkeypatch.setattr(models, 'train_voltage_model', loop_state_refused_once)
    refused = job('refused', **config)
    assert _main(refused, '--resume', first / 'checkpoint') == 0
    metrics = json.loads((refused / 'metrics.json').read_text())
    assert calls[0] is not None and calls[1] is None  # resumed, then a fresh checkpoint
    assert metrics['resumed'] is False and 'could not be restored' in metrics['resume_rejected']
    assert _model(refused) == _model(fresh)  # the same model as a training that never stopped


def test_a_config_key_it_does_not_know_is_bad_input(job):
    """Review: a hand-written config with 'modle' trained the default model and exited 0."""
    typo = job('typo', modle='voltnet_mlp')
    assert _main(typo) == train_entry.STATUS_EXIT['BAD_INPUT']
    status = _status(typo)
    assert status['status'] == 'BAD_INPUT' and 'unknown config key(s) modle' in status['message']
    assert not (typo / 'model').exists()
    listed = job('listed')
    (listed / 'config.json').write_text('[]')
    assert _main(listed) == train_entry.STATUS_EXIT['BAD_INPUT']
    assert 'must be a JSON object' in _status(listed)['message']
    # a seed that is no integer was made one by int() before the check: 1.9 trained as 1, true as 1 (review)
    for seed in (1.9, True, -0.5, '3'):
        odd = job(f'seed_{seed}', seed=seed)
        assert _main(odd) == train_entry.STATUS_EXIT['BAD_INPUT'], seed
        assert 'seed must be an integer' in _status(odd)['message'] and not (odd / 'model').exists()


def test_a_python_without_torch_is_no_bad_input(job, monkeypatch):
    """Review: a cluster Python without torch was reported as BAD_INPUT (302, 'refused its input files'), which
    sends the user to config.json and records.json; it is the code's environment (EXCEPTION, 310), said so."""
    monkeypatch.setitem(sys.modules, 'torch', None)  # import torch raises ImportError
    plain = job('plain')
    assert _main(plain) == train_entry.STATUS_EXIT['EXCEPTION']
    status = _status(plain)
    assert status['status'] == 'EXCEPTION'
    assert f"voltnet-train's Python ({sys.executable}) cannot import what training needs" in status['message']
    assert "install aiida-voltnet with torch in the code's environment" in status['message']


def test_cuda_memory_running_out_scoring_the_saved_model_scores_it_on_the_cpu(job, monkeypatch):
    """Review: the metrics' prediction after training ran out of CUDA memory with the status of a training that
    did, so the restart work chain threw complete models away and retrained with halved batches until it gave up.
    The saved model is now scored on the CPU (simulated: the default device's prediction raises CUDA's error)."""
    import torch

    from aiida_voltnet.ml import models

    predict = models.VoltageModel.predict
    devices = []

    def scarce(self, records, *args, device='auto', **kwargs):
        devices.append(device)
        if device != 'cpu':
            raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')
        return predict(self, records, *args, device=device, **kwargs)

    monkeypatch.setattr(models.VoltageModel, 'predict', scarce)
    directory = job('scored', model='voltnet', settings={'members': 2})
    assert _main(directory) == 0, _status(directory)
    assert devices[-2:] == ['auto', 'cpu'] and _status(directory)['status'] == 'OK'
    assert 'scoring them on the CPU' in (directory / 'train.log').read_text()
    assert json.loads((directory / 'metrics.json').read_text())['train']['mae'] >= 0
