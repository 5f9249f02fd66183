"""The production stack: ``core.psql_dos`` storage + ``core.rabbitmq`` broker + a daemon with two workers.

One module-scoped profile and daemon serve all tests (setup about 10 s); each test submits real processes with
``aiida.engine.submit`` (in a subprocess with its own ``AIIDA_PATH``, see ``conftest.py``) and waits for them.
"""
from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.production


def test_profile_uses_postgres_and_rabbitmq(running_daemon, psql_database):
    """The profile is psql_dos + RabbitMQ, every service is reachable, the database is C.UTF-8, 2 workers run."""
    profile = running_daemon
    show = profile.verdi('profile', 'show', profile.name).stdout
    assert 'core.psql_dos' in show and 'core.rabbitmq' in show
    status = profile.verdi('-p', profile.name, 'status', check=False)
    text = status.stdout + status.stderr
    assert status.returncode == 0, text
    assert re.search(r'storage:\s+Storage for .* @ postgresql', text), text
    assert re.search(r'broker:\s+RabbitMQ v[\d.]+ @ amqp://', text), text
    assert re.search(r'daemon:\s+Daemon is running', text), text
    daemon = profile.verdi('-p', profile.name, 'daemon', 'status').stdout
    assert 'Active workers [2]' in daemon, daemon
    timeout = profile.verdi('-p', profile.name, 'config', 'get', 'daemon.timeout').stdout.strip()
    assert timeout == '45'

    assert psql_database['locale'] == ('C.UTF-8', 'C.UTF-8')


def test_submitted_calcfunctions_finish(running_daemon):
    """Four ``voltnet.dft_voltage`` calcfunctions submitted to the daemon finish with exit 0 and the right value."""
    payload = running_daemon.scenario('dft_voltage')
    assert len(payload['processes']) == 4
    for process in payload['processes']:
        assert process['process_type'] == 'aiida.calculations:voltnet.dft_voltage'
        assert (process['state'], process['exit_status']) == ('finished', 0), process
        assert process['result'] == pytest.approx(process['expected'], rel=1e-9)
        # the worker hashes the fingerprint of the code it runs (here the same files as this interpreter's)
        from aiida_voltnet.calculations.sources import sources_fingerprint

        assert process['version']['sources'] == sources_fingerprint(), process['version']


def test_a_kill_of_a_training_chain_takes_effect_after_the_running_step(running_daemon):
    """Review: `verdi process kill` of a TrainWorkChain whose train_model ran answered 'Problem killing Process'
    and the chain went on to evaluate and Finished [0]: its calculation-function steps never gave the worker's event
    loop a turn. The kill now takes effect at the step boundary after train_model: no evaluation, chain killed."""
    payload = running_daemon.scenario('kill_between_steps')
    assert payload['training_running_at_kill'], payload
    assert payload['chain']['state'] == 'killed' and payload['answer'] == 'killed', payload
    assert payload['training']['state'] == 'finished', payload  # a running calcfunction is not interrupted
    assert payload['called'] == ['assemble', 'split', 'train'], payload
    assert 'model' in payload['outputs'] and 'metrics' not in payload['outputs'], payload


def test_train_then_predict_workchains(running_daemon):
    """``voltnet.train`` (40-row CSV, 3-epoch MLP) then ``voltnet.predict`` on its test set, both via the daemon."""
    payload = running_daemon.scenario('train_predict')
    assert payload['train']['process_type'] == 'aiida.workflows:voltnet.train'
    assert (payload['train']['state'], payload['train']['exit_status']) == ('finished', 0), payload
    assert {'model', 'metrics', 'test_dataset'} <= set(payload['train_outputs'])
    assert (payload['predict']['state'], payload['predict']['exit_status']) == ('finished', 0), payload
    assert {'mean', 'std'} <= set(payload['prediction_arrays'])
    assert payload['n_predictions'] == payload['n_test'] == 10


def test_processes_survive_a_killed_worker(running_daemon):
    """SIGKILL one of the two workers while four trainings run: circus respawns it, RabbitMQ requeues its tasks,
    and all four still finish with exit 0."""
    payload = running_daemon.scenario('kill_worker')
    assert payload['active_at_kill'] >= 1, payload
    assert payload['victim'] not in payload['workers_after'], payload
    assert len(payload['workers_after']) == 2, payload
    for process in payload['processes']:
        assert (process['state'], process['exit_status']) == ('finished', 0), process


def test_fifty_predictions_and_five_trainings_survive_a_daemon_restart(running_daemon):
    """Daemon at scale: 5 trainings, then 50 predict work chains on 2 workers, with ``verdi daemon restart`` while
    they are queued or running; nothing is lost, every process finishes with exit 0."""
    payload = running_daemon.scenario('scale', timeout=900)
    assert len(payload['trains']) == 5
    for process in payload['trains']:
        assert (process['state'], process['exit_status']) == ('finished', 0), process
    assert payload['restart_rc'] == 0, payload['restart_output']
    assert len(payload['predicts']) == 50
    for process in payload['predicts']:
        assert (process['state'], process['exit_status']) == ('finished', 0), process


def test_screen_with_real_pw_jobs_on_the_daemon(running_daemon):
    """``voltnet.screen`` through the daemon: a tiny model, LiCoO2 and LiNiO2 verified with real pw.x jobs (ci
    protocol) submitted by the workers to localhost's direct scheduler; both verified, 5 pw.x jobs (1 Li metal)."""
    import os
    import shutil

    if shutil.which('pw.x') is None:
        reason = 'pw.x not on PATH (bash scripts/dft.sh)'
        if os.environ.get('VOLTNET_REQUIRE_DFT') == '1':
            pytest.fail(f'{reason} (VOLTNET_REQUIRE_DFT=1: not skipping)', pytrace=False)
        pytest.skip(reason)
    payload = running_daemon.scenario('screen', timeout=600)
    assert (payload['screen']['state'], payload['screen']['exit_status']) == ('finished', 0), payload
    summary = payload['summary']
    assert summary['n_selected'] == summary['n_verified'] == 2, summary
    assert all(2.5 < row['dft_voltage'] < 5.0 for row in summary['rows']), summary
    assert len(payload['pw_jobs']) == 5 and all(job['exit_status'] == 0 for job in payload['pw_jobs']), payload
