"""Scenarios of the production-stack tests, run in a SUBPROCESS (``python prod_scenarios.py NAME PROFILE``) with
the throwaway ``AIIDA_PATH`` of ``conftest.py``, so that they never touch the sqlite profile that
``aiida.tools.pytest_fixtures`` loads into the pytest process.

Every scenario submits to the running daemon (``aiida.engine.submit``), waits for the processes and prints ONE line
of JSON (the last line of stdout) that the test asserts on. A module of ``aiida_voltnet`` that does not import
ends the scenario with its traceback, and the test fails (it skipped, when the layer was being built: review).
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import sys
import time

FIXTURE_CSV = pathlib.Path(__file__).parent / 'fixtures' / 'electrodes_li_40.csv'
#: Training settings of the tiny model: 3-epoch MLP on 30 Li rows (seconds on one CPU core).
TINY_TRAIN = {'model': 'mlp', 'featurizer': 'leakfree', 'settings': {'train_overrides': {'epochs': 3}}}
TINY_SPLIT = {'kind': 'random', 'seed': 0, 'test_fraction': 0.25}


def emit(payload: dict) -> None:
    print(json.dumps(payload), flush=True)


def await_nodes(nodes, timeout: float) -> float:
    """Wait until every node is terminated; return the seconds waited. Raise ``TimeoutError`` with states."""
    start = time.monotonic()
    while not all(node.is_terminated for node in nodes):
        if time.monotonic() - start > timeout:
            states = {node.pk: str(node.process_state) for node in nodes}
            raise TimeoutError(f'processes not terminated after {timeout} s: {states}')
        time.sleep(0.25)
    return time.monotonic() - start


def describe(node) -> dict:
    return {'pk': node.pk, 'process_type': node.process_type, 'state': node.process_state.value,
            'exit_status': node.exit_status, 'exit_message': node.exit_message}




# -- scenarios ---------------------------------------------------------------------------------------------------------
def scenario_dft_voltage() -> None:
    """Submit four ``voltnet.dft_voltage`` calcfunctions to the daemon; report their states and results."""
    from aiida import engine, orm

    from aiida_voltnet.calculations.functions import dft_voltage
    cases = [(-100.0, -110.0, -1.9, 2.0, 1), (-50.0, -58.0, -2.0, 2.0, 2), (-10.0, -14.0, -1.0, 1.0, 1),
             (-20.0, -25.5, -1.5, 3.0, 1)]
    nodes = [engine.submit(dft_voltage, e_charged=orm.Float(ch), e_discharged=orm.Float(dis),
                           e_ion_metal=orm.Float(ion), delta_ions=orm.Float(dx), ion_charge=orm.Int(z))
             for ch, dis, ion, dx, z in cases]
    waited = await_nodes(nodes, timeout=60)
    results = []
    for node, (ch, dis, ion, dx, z) in zip(nodes, cases):
        row = describe(node)
        row['result'] = node.outputs.result.value if 'result' in node.outputs else None
        row['expected'] = -(dis - ch - dx * ion) / (dx * z)
        row['version'] = node.base.attributes.get('version', None)  # what the daemon worker recorded
        results.append(row)
    emit({'processes': results, 'seconds': waited})


def _submit_train(epochs: int = 3, seed: int = 0):
    from aiida import engine, orm

    from aiida_voltnet.workflows.train import TrainWorkChain
    train = dict(TINY_TRAIN, settings={'train_overrides': {'epochs': epochs}})
    return engine.submit(TrainWorkChain, csv=orm.SinglefileData(FIXTURE_CSV),
                         split={key: orm.to_aiida_type(value) for key, value in dict(TINY_SPLIT, seed=seed).items()},
                         train={key: orm.to_aiida_type(value) for key, value in train.items()})


def scenario_train_predict() -> None:
    """Submit ``voltnet.train`` on the 40-row CSV, then ``voltnet.predict`` on its held-out records."""
    from aiida import engine

    from aiida_voltnet.workflows.predict import PredictWorkChain
    train = _submit_train()
    waited_train = await_nodes([train], timeout=120)
    payload = {'train': describe(train), 'train_seconds': waited_train}
    if not train.is_finished_ok:
        emit(payload)
        return
    model, test = train.outputs.model, train.outputs.test_dataset
    predict = engine.submit(PredictWorkChain, model=model, dataset=test)
    payload['predict_seconds'] = await_nodes([predict], timeout=60)
    payload['predict'] = describe(predict)
    if predict.is_finished_ok:
        predictions = predict.outputs.predictions
        payload['prediction_arrays'] = sorted(predictions.get_arraynames())
        payload['n_predictions'] = int(predictions.get_array('mean').shape[0])
        payload['n_test'] = getattr(test, 'n_records', None)
        payload['train_outputs'] = sorted(train.outputs)
        payload['metrics'] = sorted(train.outputs.metrics.get_dict())
    emit(payload)


def scenario_kill_worker() -> None:
    """Submit four trainings, SIGKILL one daemon worker while they run, and check that all still finish."""
    from aiida.engine.daemon.client import get_daemon_client

    client = get_daemon_client()
    nodes = [_submit_train(epochs=40, seed=seed) for seed in range(4)]
    # Wait until the workers have picked the work up (some process has left the `created` state).
    start = time.monotonic()
    while not any(node.process_state is not None and node.process_state.value in ('running', 'waiting')
                  for node in nodes):
        if time.monotonic() - start > 60:
            raise TimeoutError('no submitted process started within 60 s')
        time.sleep(0.1)
    workers_before = sorted(int(pid) for pid in client.get_worker_info()['info'])
    victim = workers_before[0]
    active_at_kill = sum(not node.is_terminated for node in nodes)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    waited = await_nodes(nodes, timeout=150)
    # circus respawns the killed worker; give it a moment to show up in the info.
    deadline = time.monotonic() + 20
    while True:
        workers_after = sorted(int(pid) for pid in client.get_worker_info()['info'])
        if len(workers_after) == len(workers_before) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    emit({'processes': [describe(node) for node in nodes], 'victim': victim, 'workers_before': workers_before,
          'workers_after': workers_after, 'active_at_kill': active_at_kill,
          'seconds_after_kill': time.monotonic() - killed_at, 'seconds': waited})


def scenario_scale() -> None:
    """5 trainings, then 50 predict work chains on 2 workers, with ``verdi daemon restart`` while they run."""
    import subprocess

    from aiida import engine

    from aiida_voltnet.workflows.predict import PredictWorkChain
    trains = [_submit_train(seed=seed) for seed in range(5)]
    waited_train = await_nodes(trains, timeout=240)
    payload = {'trains': [describe(node) for node in trains], 'train_seconds': waited_train}
    if not trains[0].is_finished_ok:
        emit(payload)
        return
    model, test = trains[0].outputs.model, trains[0].outputs.test_dataset
    predicts = [engine.submit(PredictWorkChain, model=model, dataset=test) for _ in range(50)]
    finished_before_restart = sum(node.is_terminated for node in predicts)
    restart = subprocess.run(['verdi', '-p', PROFILE, 'daemon', 'restart'], capture_output=True, text=True,
                             timeout=180, check=False)
    payload.update(finished_before_restart=finished_before_restart, restart_rc=restart.returncode,
                   restart_output=(restart.stdout + restart.stderr)[-500:])
    payload['predict_seconds'] = await_nodes(predicts, timeout=480)
    payload['predicts'] = [describe(node) for node in predicts]
    emit(payload)


def scenario_screen() -> None:
    """Submit ``voltnet.screen`` (LiCoO2 and LiNiO2 with the ``ci`` DFT protocol, real pw.x jobs through the
    daemon's direct scheduler on localhost) with a tiny model; report the summary."""
    from aiida import engine, orm

    from aiida_voltnet.cli.dft_commands import setup_dft
    from aiida_voltnet.dft import layered_oxide_pair
    from aiida_voltnet.workflows.screen import ScreenWorkChain
    from aiida_voltnet.workflows.verify import VerifyWorkChain

    _, code = setup_dft(echo=lambda *_: None)
    train = _submit_train()
    await_nodes([train], timeout=120)
    if not train.is_finished_ok:
        emit({'train': describe(train)})
        return
    candidates = {}
    for metal in ('Co', 'Ni'):
        charged, discharged = layered_oxide_pair(metal)
        candidates[f'Li{metal}O2'] = {'charged': charged, 'discharged': discharged, 'working_ion': orm.Str('Li')}
    verify = VerifyWorkChain.get_protocol_inputs('ci')
    screen = engine.submit(ScreenWorkChain, model=train.outputs.model, candidates=candidates,
                           selection=orm.Dict({'top_k': 2}),
                           verify={'code': code, 'settings': orm.Dict(verify['settings']),
                                   'options': verify['options']})
    waited = await_nodes([screen], timeout=400)
    payload = {'screen': describe(screen), 'seconds': waited}
    if screen.is_finished_ok:
        payload['summary'] = screen.outputs.summary.get_dict()
        payload['pw_jobs'] = [describe(node) for node in screen.called_descendants
                              if node.process_type == 'aiida.calculations:quantumespresso.pw']
    emit(payload)


def scenario_kill_between_steps() -> None:
    """Submit ``voltnet.train`` with a training of some seconds, ``verdi process kill`` it (through aiida-core's
    ``kill_processes``, what the command calls) while its ``train_model`` runs, and report where it stopped."""
    from aiida.engine.processes import control

    chain = _submit_train(epochs=1500)
    started = time.monotonic()
    training = None
    while training is None:
        if chain.is_terminated or time.monotonic() - started > 120:
            emit({'chain': describe(chain), 'error': 'the training step was never seen running'})
            return
        links = chain.base.links.get_outgoing(link_label_filter='train').all()
        training = links[0].node if links else None
        time.sleep(0.1)
    training_running = not training.is_terminated
    try:  # answered once the worker handles it: at the step boundary after train_model, within the timeout
        control.kill_processes([chain], timeout=120)
        answer = 'killed'
    except Exception as exception:  # noqa: BLE001 - what verdi would print as 'Problem killing Process'
        answer = f'{type(exception).__name__}: {exception}'
    waited = await_nodes([chain, training], timeout=120)
    emit({'chain': describe(chain), 'training': describe(training), 'training_running_at_kill': training_running,
          'called': sorted(link.link_label for link in chain.base.links.get_outgoing().all()
                           if link.node.node_type.startswith('process.')),
          'outputs': sorted(chain.outputs), 'answer': answer, 'seconds': waited})


SCENARIOS = {'dft_voltage': scenario_dft_voltage, 'train_predict': scenario_train_predict,
             'kill_worker': scenario_kill_worker, 'scale': scenario_scale, 'screen': scenario_screen,
             'kill_between_steps': scenario_kill_between_steps}
PROFILE = None


def main() -> None:
    global PROFILE
    name, profile = sys.argv[1], sys.argv[2]
    PROFILE = profile
    from aiida import load_profile

    load_profile(profile, allow_switch=True)
    SCENARIOS[name]()


if __name__ == '__main__':
    main()
