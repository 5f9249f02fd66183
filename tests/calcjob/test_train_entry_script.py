"""The ``voltnet-train`` script in-process (no AiiDA): exit codes, status markers, resuming from a checkpoint."""
from __future__ import annotations

import json

import pytest

from aiida_voltnet.cli import train_entry
from aiida_voltnet.ml.records import read_electrodes_csv, records_to_json


@pytest.fixture
def workdir(tmp_path, csv_60):
    with csv_60.open(newline='') as handle:
        records = read_electrodes_csv(handle, source=csv_60.name)[:30]
    (tmp_path / 'records.json').write_text(records_to_json(records))

    def write_config(**config):
        config = {'featurizer': 'leakfree', 'model': 'krr', 'seed': 0, 'settings': {}, **config}
        (tmp_path / 'config.json').write_text(json.dumps(config))
        return tmp_path

    return write_config


def _main(path):
    return train_entry.main(['--config', str(path / 'config.json'), '--records', str(path / 'records.json'),
                             '--output', str(path)])


def test_ok_writes_model_metrics_status(workdir):
    path = workdir()
    assert _main(path) == 0
    assert {p.name for p in (path / 'model').iterdir()} == {'config.json', 'arrays.safetensors', 'training.json'}
    assert json.loads((path / 'status.json').read_text())['status'] == 'OK'
    assert json.loads((path / 'metrics.json').read_text())['train']['n'] == 30


def test_model_params_in_the_config_reach_the_model(workdir):
    """``settings.model_params`` of the CalcJob's config (a kernel model's alpha here) train the model; an unknown
    one is bad input (exit 2), not silently dropped."""
    path = workdir(settings={'model_params': {'alpha': 3.0}})
    assert _main(path) == 0
    config = json.loads((path / 'model' / 'config.json').read_text())
    assert config['metadata']['model_params'] == {'alpha': 3.0}
    assert _main(workdir(settings={'model_params': {'C': 3.0}})) == 2
    assert 'unknown hyper-parameter(s) C in model_params of model krr' in (path / 'status.json').read_text()


def test_the_trainings_own_warnings_go_to_the_log_and_metrics(workdir):
    """The paper featurizer's leak warning went to the job's stderr as a bare Python warning: it is in train.log
    and in metrics.json's ``warnings`` now, once; a leak-free kernel model has none."""
    path = workdir(featurizer='paper')
    assert _main(path) == 0
    said = json.loads((path / 'metrics.json').read_text())['warnings']
    assert len(said) == 1 and said[0].startswith('TargetLeakWarning: the paper featurizer includes capacity_grav')
    assert 'WARNING TargetLeakWarning: the paper featurizer' in (path / 'train.log').read_text()
    clean = workdir()
    assert _main(clean) == 0
    assert 'warnings' not in json.loads((clean / 'metrics.json').read_text())


def test_a_warning_of_another_category_is_shown_once_and_the_training_ends(workdir):
    """Found by review: a warning outside the package's own categories (here the DeviceWarning of a kernel model
    asked for device cuda) was re-shown inside the block that records warnings, into the list being walked: an
    endless loop that filled the memory until the job was killed. Run as the job runs it, in its own process,
    under a memory cap and a time limit, so the old behaviour fails here instead of taking the machine."""
    import resource
    import subprocess
    import sys

    path = workdir(settings={'device': 'cuda'})

    def cap():  # 6 GB of address space: torch's import fits, an endless list of warnings does not
        resource.setrlimit(resource.RLIMIT_AS, (6 * 1024 ** 3, 6 * 1024 ** 3))

    done = subprocess.run([sys.executable, '-m', 'aiida_voltnet.cli.train_entry', '--config', str(path / 'config.json'),
                           '--records', str(path / 'records.json'), '--output', str(path)],
                          capture_output=True, text=True, timeout=300, preexec_fn=cap)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count('DeviceWarning') == 1, done.stderr[-2000:]
    assert json.loads((path / 'status.json').read_text())['status'] == 'OK'


def test_cuda_out_of_memory_is_exit_5(workdir, monkeypatch):
    import torch

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')

    monkeypatch.setattr('aiida_voltnet.ml.models.train_voltage_model', oom)
    path = workdir(model='mlp', settings={'train_overrides': {'batch_size': 256}})
    assert _main(path) == train_entry.EXIT_OOM
    status = json.loads((path / 'status.json').read_text())
    assert status['status'] == 'CUDA_OUT_OF_MEMORY' and status['batch_size'] == 256
    assert 'VOLTNET_STATUS CUDA_OUT_OF_MEMORY' in (path / 'train.log').read_text()
    path = workdir(model='mlp')  # no override: the batch size that ran out is the spec's (it said None)
    assert _main(path) == train_entry.EXIT_OOM
    assert json.loads((path / 'status.json').read_text())['batch_size'] == 128


def test_other_exception_is_exit_1_and_bad_input_exit_2(workdir, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError('boom')

    monkeypatch.setattr('aiida_voltnet.ml.models.train_voltage_model', boom)
    path = workdir()
    assert _main(path) == train_entry.EXIT_EXCEPTION
    assert json.loads((path / 'status.json').read_text())['message'] == 'RuntimeError: boom'
    path = workdir(settings={'epochs': 3})
    assert _main(path) == train_entry.EXIT_BAD_INPUT


def test_resume_reuses_a_matching_checkpoint(workdir, monkeypatch):
    path = workdir()
    assert _main(path) == 0
    checkpoint = path / 'restart'
    (path / 'model').rename(checkpoint)

    def must_not_train(*args, **kwargs):
        raise AssertionError('a complete checkpoint must be reused')

    monkeypatch.setattr('aiida_voltnet.ml.models.train_voltage_model', must_not_train)
    path = workdir(resume=str(checkpoint))
    assert _main(path) == 0
    assert json.loads((path / 'metrics.json').read_text())['resumed'] is True
    assert (path / 'model' / 'arrays.safetensors').read_bytes() == (checkpoint / 'arrays.safetensors').read_bytes()
    monkeypatch.undo()
    path = workdir(resume=str(checkpoint), seed=1)  # another seed: the checkpoint is not this training's
    assert _main(path) == 0
    assert json.loads((path / 'metrics.json').read_text())['resumed'] is False


def test_a_complete_model_of_other_records_or_settings_is_not_reused(workdir, tmp_path):
    """Model name, seed and featurizer alike, but trained on other records or with other settings: reusing it
    would store a model of dataset A as the output of a job on dataset B."""
    path = workdir()
    assert _main(path) == 0
    checkpoint = path / 'restart'
    (path / 'model').rename(checkpoint)
    records = json.loads((path / 'records.json').read_text())
    (path / 'records.json').write_text(json.dumps(records[:25] if isinstance(records, list) else
                                                  {**records, 'records': records['records'][:25]}))
    assert _main(workdir(resume=str(checkpoint))) == 0
    metrics = json.loads((path / 'metrics.json').read_text())
    assert metrics['resumed'] is False and metrics['train']['n'] == 25
    (path / 'model').rename(path / 'restart25')
    assert _main(workdir(resume=str(path / 'restart25'), settings={'featurizer_options': {}})) == 0
    assert json.loads((path / 'metrics.json').read_text())['resumed'] is False
    (path / 'restart25' / 'training.json').unlink()  # no record of what made it: not reused either
    assert _main(workdir(resume=str(path / 'restart25'))) == 0
    assert json.loads((path / 'metrics.json').read_text())['resumed'] is False


def test_a_featurizer_this_install_lacks_is_bad_input(workdir):
    """Found by review: the featurizer and its options were checked only inside the training, so a config of a
    newer install than the cluster's was exit 1 (the trainer raised), not 2 (bad input)."""
    for config, message in (({'featurizer': 'nope'}, "unknown featurizer 'nope'"),
                            ({'settings': {'featurizer_options': {'bogus': 1}}}, 'bogus')):
        path = workdir(**config)
        assert _main(path) == train_entry.EXIT_BAD_INPUT
        status = json.loads((path / 'status.json').read_text())
        assert status['status'] == 'BAD_INPUT' and message in status['message'], status


def test_a_failure_after_training_keeps_the_exit_code_contract(workdir, monkeypatch):
    """Found by review: saving, predicting and the metrics ran outside every handler, so CUDA memory running out
    in the prediction on the training rows left no status.json, no marker and a traceback (exit 300 and resumed
    into the same failure)."""
    import torch

    from aiida_voltnet.ml.models import VoltageModel

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 1.00 GiB')

    monkeypatch.setattr(VoltageModel, 'predict', oom)
    path = workdir()
    assert _main(path) == train_entry.EXIT_OOM
    assert json.loads((path / 'status.json').read_text())['status'] == 'CUDA_OUT_OF_MEMORY'
    assert 'VOLTNET_STATUS CUDA_OUT_OF_MEMORY' in (path / 'train.log').read_text()

    def boom(*args, **kwargs):
        raise OSError('No space left on device')

    monkeypatch.setattr(VoltageModel, 'predict', boom)
    path = workdir()
    assert _main(path) == train_entry.EXIT_EXCEPTION
    assert json.loads((path / 'status.json').read_text())['message'] == 'OSError: No space left on device'
