"""Fixtures of the production-stack tests: a throwaway PostgreSQL role + database, a ``core.psql_dos`` +
``core.rabbitmq`` AiiDA profile in a temporary ``AIIDA_PATH``, and a real daemon with two workers.

Everything AiiDA-side runs in subprocesses (``verdi`` and ``prod_scenarios.py``) with their own ``AIIDA_PATH``: the
pytest process keeps the sqlite profile that ``aiida.tools.pytest_fixtures`` (loaded by ``tests/conftest.py``) gives
the rest of the suite, and the two never meet.

The tests skip, with the reason, when PostgreSQL (127.0.0.1:5432) or RabbitMQ (127.0.0.1:5672) cannot be reached;
with ``VOLTNET_REQUIRE_SERVICES=1`` (set by ``.ci/run``) they fail instead, so that CI cannot go green by skipping.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import uuid

import pytest

HERE = pathlib.Path(__file__).parent
SCENARIOS = HERE / 'prod_scenarios.py'
PG_HOST, PG_PORT, PG_SUPERUSER = '127.0.0.1', 5432, os.environ.get('VOLTNET_PG_SUPERUSER', 'postgres')
RMQ_HOST, RMQ_PORT = '127.0.0.1', 5672
DAEMON_WORKERS = 2


def _reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _skip_or_fail(reason: str):
    if os.environ.get('VOLTNET_REQUIRE_SERVICES') == '1':
        pytest.fail(f'{reason} (VOLTNET_REQUIRE_SERVICES=1: not skipping)', pytrace=False)
    pytest.skip(reason)


def _pg_connect(dbname: str = 'postgres'):
    import psycopg

    return psycopg.connect(host=PG_HOST, port=PG_PORT, user=PG_SUPERUSER, dbname=dbname, autocommit=True,
                           connect_timeout=5)


@pytest.fixture(scope='session')
def production_services():
    """Skip (or fail, see module docstring) unless PostgreSQL and RabbitMQ accept connections."""
    missing = [f'{name} on {host}:{port}' for name, host, port in
               (('PostgreSQL', PG_HOST, PG_PORT), ('RabbitMQ', RMQ_HOST, RMQ_PORT)) if not _reachable(host, port)]
    if missing:
        _skip_or_fail(f'production stack unreachable: {", ".join(missing)} (run scripts/services.sh)')
    try:
        with _pg_connect() as connection:
            connection.execute('SELECT 1')
    except Exception as exception:  # noqa: BLE001 - any failure means we cannot create the throwaway database
        _skip_or_fail(f'cannot connect to PostgreSQL as {PG_SUPERUSER!r} on {PG_HOST}:{PG_PORT}: {exception}')


@pytest.fixture(scope='module')
def psql_database(production_services):
    """A throwaway role + database (``C.UTF-8``, ``TEMPLATE template0``); dropped at teardown."""
    from psycopg import sql

    name = f'voltnet_prod_{uuid.uuid4().hex[:12]}'
    password = uuid.uuid4().hex
    with _pg_connect() as connection:
        connection.execute(sql.SQL('CREATE ROLE {} LOGIN PASSWORD {}').format(sql.Identifier(name),
                                                                               sql.Literal(password)))
        connection.execute(sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' LC_COLLATE 'C.UTF-8' "
                                   "LC_CTYPE 'C.UTF-8' TEMPLATE template0").format(sql.Identifier(name),
                                                                                    sql.Identifier(name)))
        locale = connection.execute('SELECT datcollate, datctype FROM pg_database WHERE datname = %s',
                                    (name,)).fetchone()
    try:
        yield {'name': name, 'user': name, 'password': password, 'locale': tuple(locale)}
    finally:
        with _pg_connect() as connection:
            # WITH (FORCE) ends leftover connections of a daemon that did not stop cleanly (PostgreSQL >= 13).
            connection.execute(sql.SQL('DROP DATABASE IF EXISTS {} WITH (FORCE)').format(sql.Identifier(name)))
            connection.execute(sql.SQL('DROP ROLE IF EXISTS {}').format(sql.Identifier(name)))


_DELETE_QUEUE = f'''
import asyncio, sys
import aio_pika

async def main(name):
    connection = await aio_pika.connect('amqp://guest:guest@{RMQ_HOST}:{RMQ_PORT}/')
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(name)

asyncio.run(main(sys.argv[1]))
'''


class ProductionProfile:
    """A ``core.psql_dos`` + ``core.rabbitmq`` profile in its own ``AIIDA_PATH``, driven through subprocesses."""

    def __init__(self, name: str, aiida_path: pathlib.Path):
        self.name = name
        self.aiida_path = aiida_path
        bin_dir = str(pathlib.Path(sys.executable).parent)  # the venv's bin: the daemon needs `verdi` on PATH
        self.env = dict(os.environ, AIIDA_PATH=str(aiida_path), PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
                        OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1')
        self.env.pop('AIIDA_PROFILE', None)
        self.verdi_executable = shutil.which('verdi', path=bin_dir) or 'verdi'

    def verdi(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run([self.verdi_executable, *args], env=self.env, capture_output=True, text=True,
                                timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f'verdi {" ".join(args)} failed ({result.returncode}):\n'
                                 f'{result.stdout}\n{result.stderr}')
        return result

    def profile_uuid(self) -> str | None:
        try:
            config = json.loads((self.aiida_path / '.aiida' / 'config.json').read_text())
            return config['profiles'][self.name]['PROFILE_UUID']
        except (OSError, KeyError, ValueError):
            return None

    def daemon_log(self) -> str:
        log = self.aiida_path / '.aiida' / 'daemon' / 'log' / f'aiida-{self.name}.log'
        return log.read_text(errors='replace')[-6000:] if log.exists() else '(no daemon log)'

    def scenario(self, name: str, timeout: float = 240) -> dict:
        """Run ``prod_scenarios.py NAME`` against this profile; return its JSON."""
        result = subprocess.run([sys.executable, str(SCENARIOS), name, self.name], env=self.env, capture_output=True,
                                text=True, timeout=timeout, check=False)
        lines = [line for line in result.stdout.splitlines() if line.startswith('{')]
        if result.returncode != 0 or not lines:
            raise AssertionError(f'scenario {name} failed ({result.returncode}):\n{result.stdout[-4000:]}\n'
                                 f'{result.stderr[-6000:]}\n--- daemon log ---\n{self.daemon_log()}')
        return json.loads(lines[-1])  # a module that does not import fails the scenario, never skips it


@pytest.fixture(scope='module')
def production_profile(psql_database, tmp_path_factory):
    """Set up the profile with ``verdi profile setup core.psql_dos`` (exactly as docs/production.md says)."""
    database = psql_database
    aiida_path = tmp_path_factory.mktemp('aiida_production')
    profile = ProductionProfile(database['name'], aiida_path)
    profile.verdi('profile', 'setup', 'core.psql_dos', '--non-interactive', '--profile-name', profile.name,
                  '--no-set-as-default', '--email', 'production-test@localhost', '--first-name', 'Production',
                  '--last-name', 'Test', '--institution', 'aiida-voltnet', '--broker', 'core.rabbitmq',
                  '--database-hostname', PG_HOST, '--database-port', str(PG_PORT),
                  '--database-username', database['user'], '--database-password', database['password'],
                  '--database-name', database['name'], '--repository-uri', f'file://{aiida_path / "repository"}')
    profile.verdi('-p', profile.name, 'config', 'set', 'daemon.timeout', '45')
    profile.verdi('-p', profile.name, 'config', 'set', 'warnings.rabbitmq_version', 'False')
    try:
        yield profile
    finally:
        # Removes the profile from the temporary config and its RabbitMQ queues' owner; the database is dropped
        # by ``psql_database`` (``--keep-data``: dropping is done there with FORCE).
        profile_uuid = profile.profile_uuid()
        profile.verdi('profile', 'delete', '--force', '--keep-data', profile.name, check=False)
        if profile_uuid:  # the durable task queue of the profile would otherwise stay in RabbitMQ for good
            subprocess.run([sys.executable, '-c', _DELETE_QUEUE, f'aiida-{profile_uuid}.process.queue'],
                           env=profile.env, capture_output=True, timeout=60, check=False)


@pytest.fixture(scope='module')
def running_daemon(production_profile):
    """``verdi daemon start 2`` on the production profile; stopped at teardown."""
    profile = production_profile
    profile.verdi('-p', profile.name, 'daemon', 'start', str(DAEMON_WORKERS), timeout=120)
    try:
        yield profile
    finally:
        stop = profile.verdi('-p', profile.name, 'daemon', 'stop', check=False, timeout=120)
        if stop.returncode != 0:  # a stop can report a timeout under load although it stopped: check, then retry
            status = profile.verdi('-p', profile.name, 'daemon', 'status', check=False)
            if 'not running' not in (status.stdout + status.stderr):
                profile.verdi('-p', profile.name, 'daemon', 'stop', check=False, timeout=120)
