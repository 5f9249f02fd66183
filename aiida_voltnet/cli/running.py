"""Running a process in the command's own interpreter so that Ctrl-C stops it cleanly: what ``voltnet quickstart``,
``voltnet verify`` and ``voltnet screen`` run their work chains with.

aiida-core's ``run_get_node`` binds SIGINT to asking the running process to kill itself. Without a broker that
request cannot reach the children the process runs, so Ctrl-C printed a traceback (plumpy's KilledError, or a
thousand lines of ``DetachedInstanceError`` that did not return) and left processes 'Waiting' for good, which a
profile without a broker cannot ``verdi process kill``. :func:`run_interruptible` handles the signals itself.
"""
from __future__ import annotations

import signal

__all__ = ('Interrupted', 'run_interruptible')


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped a run; the message names the processes marked killed and the jobs cancelled."""


def run_interruptible(builder, **inputs):
    """Run ``builder`` (a process builder, or a process class with ``inputs``) in this interpreter, as aiida-core's
    ``run_get_node``, and return ``(outputs, node)``.

    Inputs refused at launch raise as with ``run_get_node`` and store nothing. An interrupt while the process and
    its inputs are being stored waits until they are (no unlinked inputs left); once it runs, the interrupt stops
    the event loop between two of its callbacks, never inside a database write (raised there, it left the session
    unusable for the clean-up); a second one stops at once. Then every process stored since the call that has not
    terminated is marked killed, the scheduler job of a calculation that has one is cancelled, and
    :class:`Interrupted` is raised, naming them. Must be called from the main thread (it sets signal handlers).
    """
    from aiida import orm
    from aiida.engine.processes import functions
    from aiida.engine.utils import loop_scope
    from aiida.manage import get_manager

    newest = orm.QueryBuilder().append(orm.Node, project='id').order_by({orm.Node: {'id': 'desc'}}).first(flat=True)
    # a local runner without a communicator, as aiida-core's run_get_node makes: the manager's own connects to the
    # profile's broker, and a profile whose broker is not running (verdi presto's ZeroMQ one without a daemon, a
    # RabbitMQ that is down) ended in a connection traceback although nothing here needs one (review)
    runner = get_manager().create_runner(communicator=None)
    root = None
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {number: signal.getsignal(number) for number in signals}
    deferred = []

    def defer(number, _frame):
        deferred.append(number)

    def interrupt():
        raise KeyboardInterrupt  # from a loop callback: asyncio lets it through, between two callbacks

    def stop(_number, _frame):
        if deferred:  # the second interrupt: do not wait for the loop (a long calculation function blocks it)
            raise KeyboardInterrupt
        deferred.append(_number)
        import click

        click.echo('Interrupted: stopping at the next step (Ctrl-C again to stop at once) ...', err=True)
        runner.loop.call_soon_threadsafe(interrupt)

    try:
        for number in signals:
            signal.signal(number, defer)
        # a calculation function run inside the work chain binds SIGINT to killing itself while it runs (aiida-core's
        # functions.py, for runs outside a daemon): an interrupt then killed only it and the work chain went on.
        # It sees a stand-in of the signal module here, which leaves the handler to this function.
        functions.signal = _SignalsKept
        with loop_scope(runner.loop):
            process = runner.instantiate_process(builder, **inputs)  # validates (a refusal stores nothing), stores
            root = process.node
            if deferred:
                raise KeyboardInterrupt
            for number in signals:
                signal.signal(number, stop)
            process.execute()
        return process.outputs, process.node
    except KeyboardInterrupt:
        for number in signals:  # a second Ctrl-C must not cut the clean-up short
            signal.signal(number, signal.SIG_IGN)
        _quiet_loop(runner.loop)
        raise Interrupted(_stop_interrupted(newest, root.pk if root is not None else None)) from None
    finally:
        functions.signal = signal
        for number, handler in previous.items():
            signal.signal(number, handler)


def _quiet_loop(loop) -> None:
    """The interrupted loop's tasks: the interrupt's own exception marked as seen, the rest cancelled, and asyncio's
    report of what is left at exit silenced (it printed 'Task exception was never retrieved' with a traceback)."""
    import asyncio

    loop.set_exception_handler(lambda _loop, _context: None)
    for task in asyncio.all_tasks(loop):
        if task.done():
            if not task.cancelled():
                task.exception()
        else:
            task.cancel()


class _SignalsKept:
    """The part of the signal module that aiida-core's process functions use, leaving the handlers as they are
    (see :func:`run_interruptible`): ``getsignal`` answers None, so that nothing is restored afterwards."""

    SIGINT = signal.SIGINT

    @staticmethod
    def getsignal(_number):
        return None

    @staticmethod
    def signal(_number, _handler):
        return None


def _stop_interrupted(newest: int | None, root: int | None) -> str:
    """After an interrupt: the process ``root`` this call ran and every process it called, stored after node
    ``newest``, that has not terminated is marked killed (state, status, sealed) and the scheduler job of a
    calculation that has one is cancelled; a message naming them. They ran in this interpreter, which is ending:
    left as they were, they stayed 'Waiting' or 'Running' for good, and a profile without a broker cannot kill them
    (`verdi process kill` needs one). Processes of other sessions on the profile stored meanwhile are left alone
    (review: a second quickstart's Ctrl-C killed the first one's work chain)."""
    from aiida import orm
    from aiida.engine import ProcessState
    from aiida.manage import get_manager

    try:  # a second interrupt may have cut a database transaction short
        session = get_manager().get_profile_storage().get_session()
    except Exception:  # noqa: BLE001 - a storage without a session has nothing to roll back
        session = None
    for step in ('rollback', 'close'):  # close: a session left mid-commit refuses even a rollback's next query
        try:
            getattr(session, step)()
        except Exception:  # noqa: BLE001 - the best the session allows
            pass
    active = [ProcessState.CREATED.value, ProcessState.WAITING.value, ProcessState.RUNNING.value]
    left = orm.QueryBuilder().append(orm.ProcessNode, filters={
        'id': {'>': newest or 0},
        'or': [{'attributes.process_state': {'in': active}}, {'attributes': {'!has_key': 'process_state'}}]},
        project='*').order_by({orm.ProcessNode: {'id': 'asc'}}).all(flat=True)
    ours = set()
    if root is not None:
        top = orm.load_node(root)
        ours = {top.pk} | {node.pk for node in top.called_descendants}
    stopped, jobs = [], []
    for node in left:
        if node.pk not in ours:
            continue
        if isinstance(node, orm.CalcJobNode) and node.get_job_id():
            jobs.append(_cancel_job(node))
        try:
            node.set_process_state(ProcessState.KILLED)
            node.set_process_status('killed: the command that ran it was interrupted')
            node.seal()
        except Exception:  # noqa: BLE001 - sealed meanwhile: it terminated on its own
            continue
        stopped.append(f'{node.process_label}<{node.pk}>')
    message = 'interrupted'
    if stopped:
        message += f': marked killed {", ".join(stopped[:6])}' + (f' and {len(stopped) - 6} more' if len(stopped) > 6
                                                                  else '')
    if jobs:
        message += f'; {"; ".join(jobs)}'
    return message + ' (what finished before stays stored: verdi process list -a)'


def _cancel_job(node) -> str:
    """Cancel the scheduler job of calculation ``node`` (its pw.x, say); a sentence saying what happened."""
    job_id = node.get_job_id()
    try:
        with node.computer.get_transport() as transport:
            scheduler = node.computer.get_scheduler()
            scheduler.set_transport(transport)
            scheduler.kill_job(job_id)
    except Exception as exception:  # noqa: BLE001 - the job may have ended; say so rather than fail the clean-up
        return f'job {job_id} of {node.process_label}<{node.pk}> could not be cancelled ({exception})'
    return f"sent the scheduler's kill to job {job_id} of {node.process_label}<{node.pk}>"
