"""``voltnet`` commands that work on an AiiDA profile: quickstart, provenance, predictions."""
from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from pathlib import Path

import click

from . import EXIT_BAD_INPUT, _fail, _interrupt_exits_130, cli

QUICKSTART_PROFILE = 'voltnet-quickstart'
SHARED_CSV = Path(__file__).resolve().parents[2] / '..' / 'shared' / 'data' / 'mp_insertion_electrodes' / 'electrodes.csv'


def ensure_embedded_profile(name: str = QUICKSTART_PROFILE, echo=click.echo):
    """Create (once) or reuse an SQLite-backed profile without a broker, and load it.

    ``core.sqlite_dos`` keeps the database and the file repository in one folder; with no broker the profile
    needs no running service (processes are run in this interpreter, not submitted to a daemon).
    """
    from aiida import load_profile
    from aiida.common.exceptions import ProfileConfigurationError
    from aiida.manage.configuration import create_profile

    config = _aiida_config()
    try:
        profile = config.get_profile(name)
        echo(f'Reusing AiiDA profile {name!r} ({profile.storage_backend}, '
             f'{"broker " + profile.process_control_backend if profile.process_control_backend else "no broker"})')
    except ProfileConfigurationError:
        import shutil

        from aiida_voltnet.ml.records import termination_deferred

        folder = Path(config.dirpath) / 'repository' / f'sqlite_dos_{name}'
        existed = folder.exists()
        # Whole or not at all: a Ctrl-C a few seconds in left a storage folder without a profile (every later run: a
        # StorageMigrationError traceback) or a profile without its default user ('the user cannot be None'; found
        # by review). SIGINT and SIGTERM act once the profile is made; a failure removes the folder it made.
        with termination_deferred():
            try:
                profile = create_profile(config, storage_backend='core.sqlite_dos',
                                         storage_config={'filepath': str(folder)}, broker_backend=None, name=name,
                                         email='voltnet@localhost')
                config.set_option('runner.poll.interval', 1, scope=name)
                default = config.default_profile_name is None  # the first profile: let load_profile() and verdi find it
                if default:
                    config.set_default_profile(name)
                config.store()
            except BaseException as exception:
                if not existed:
                    shutil.rmtree(folder, ignore_errors=True)
                if isinstance(exception, Exception):  # a read-only folder, a name too long for a file name
                    with contextlib.suppress(Exception):  # review: a StorageMigrationError traceback
                        config.remove_profile(name)
                    _fail(f'cannot create AiiDA profile {name!r} in {folder}: {type(exception).__name__}: '
                          f'{str(exception)[:300]}')
                raise
        echo(f'Created AiiDA profile {name!r} (core.sqlite_dos at {folder}, no broker, no services'
             + (', now the default profile)' if default else ')'))
    return _open_storage(load_profile(name, allow_switch=True))


def _aiida_config():
    """aiida-core's configuration, its folder created where missing; a folder that cannot be created or read (an
    AIIDA_PATH under /sys, a file, a read-only disk) is named, not a ConfigurationError traceback (review)."""
    try:
        from aiida.manage.configuration import get_config  # importing it creates the folder

        return get_config(create=True)
    except Exception as exception:  # noqa: BLE001 - ConfigurationError, OSError, ...
        where = os.environ.get('AIIDA_PATH')
        _fail(f'cannot use the AiiDA configuration folder{f" under AIIDA_PATH={where}" if where else ""}: '
              f'{type(exception).__name__}: {str(exception)[:300]}')


def _load_profile(profile, hint: str = ''):
    config = _aiida_config()  # before importing aiida, which reads (and creates) the configuration folder
    from aiida import load_profile

    if profile is None and config.default_profile_name is None:
        _fail('no default AiiDA profile: pass --profile NAME (voltnet quickstart creates voltnet-quickstart), '
              f'or make one the default with "verdi profile set-default NAME"{hint}')
    try:
        loaded = load_profile(profile, allow_switch=True)
    except Exception as exception:  # noqa: BLE001 - aiida raises several kinds here
        _fail(f'cannot load AiiDA profile {profile or "(default)"}: {exception}')
    return _open_storage(loaded)


def _open_storage(loaded):
    """Open the storage of the loaded profile ``loaded`` and return it, or exit with a message: it opens lazily,
    and a missing SQLite file or an unreachable database surfaced as a traceback at the first query."""
    from aiida.manage import get_manager

    try:
        get_manager().get_profile_storage()
    except Exception as exception:  # noqa: BLE001 - each storage backend raises its own kinds
        _fail(f'cannot open the storage of AiiDA profile {loaded.name!r}: {type(exception).__name__}: {exception} '
              f'(check it with "verdi -p {loaded.name} status")')
    return loaded


def _load_node(identifier, profile, node_class=None):
    """Load ``profile`` and the node with pk or uuid ``identifier`` (an instance of ``node_class`` when given), or
    exit with a message."""
    loaded = _load_profile(profile)
    from aiida.common.exceptions import MultipleObjectsError, NotExistent
    from aiida.orm import load_node

    try:
        node = load_node(identifier)
    except (NotExistent, MultipleObjectsError, ValueError) as exception:
        _fail(f'no unique node {identifier!r} in AiiDA profile {loaded.name!r}: {exception}')
    if node_class is not None and not isinstance(node, node_class):
        _fail(f'node {identifier!r} is {type(node).__name__}<{node.pk}>, not a {node_class.__name__}', EXIT_BAD_INPUT)
    return node


def _node_lookup(identifier, profile) -> str:
    """How many nodes ``identifier`` (a pk or uuid, or a prefix of one; a uuid is read first) names: ``'one'``,
    ``'none'``, or ``'several'`` (a prefix several share, or anything else ``_load_node`` will name)."""
    _load_profile(profile)
    from aiida.common.exceptions import NotExistent
    from aiida.orm import load_node

    try:
        load_node(identifier)
    except NotExistent:
        return 'none'
    except Exception:  # noqa: BLE001 - MultipleObjectsError, ValueError: _load_node says which
        return 'several'
    return 'one'


def _model_by_version(identifier, profile):
    """The first-made model node whose ``model_version`` starts with ``identifier`` (8 or more hex digits, not a
    pk), None if there is none; exit where the prefix names several versions."""
    import re

    if not re.fullmatch(r'[0-9a-f]{8,64}', identifier or '') or identifier.isdigit():
        return None
    _load_profile(profile)
    from aiida import orm

    from aiida_voltnet.data.model import VoltageModelData

    query = orm.QueryBuilder().append(VoltageModelData, filters={'attributes.model_version': {'like': f'{identifier}%'}},
                                      project=['*', 'attributes.model_version', 'ctime'])
    rows = query.all()
    versions = sorted({version for _, version, _ in rows})
    if len(versions) > 1:
        _fail(f'model version {identifier!r} is ambiguous: {", ".join(versions)}', EXIT_BAD_INPUT)
    return min(rows, key=lambda row: row[2])[0] if rows else None


def _profile_name(ctx, param, value):
    """verdi's rule for a profile name (aiida-core's ``LabelStringType``: letters, digits, ``_``, ``.``, ``-``; not
    empty): ``a/b`` made a profile verdi could neither use nor delete, and ``''`` used the default profile."""
    _aiida_config()  # importing aiida's command-line types reads the configuration: a bad AIIDA_PATH is named
    from aiida.cmdline.params.types import LabelStringType  # here: importing it costs every command ~70 ms

    if len(value) > 100:  # the profile's storage folder is named after it (a 300-character name: errno 36)
        raise click.BadParameter(f'a profile name of at most 100 characters, got {len(value)}')
    return LabelStringType().convert(value, param, ctx)


@cli.command()
@click.option('--data', 'data', type=click.Path(exists=True, dir_okay=False),
              help='Training CSV (default: $VOLTNET_DATA if set, else the shared MP insertion-electrode CSV).')
@click.option('--profile', default=QUICKSTART_PROFILE, show_default=True, callback=_profile_name,
              help='AiiDA profile to reuse as it is (any storage and broker), or to create, SQLite-backed and '
                   'without a broker, where none has this name.')
@click.option('--protocol', default='fast', show_default=True, type=click.Choice(['fast', 'default', 'paper']),
              help='Training protocol ("paper" trains the leaky paper protocol and predicts no structure pair: '
                   'its features need capacity_grav and energy_grav).')
@_interrupt_exits_130('before the training started: nothing was trained or predicted')  # the checks of the CSV
def quickstart(data, profile, protocol):
    """End-to-end demo: import the CSV, train with provenance, predict real structure pairs, show provenance."""
    import time

    data = data or os.environ.get('VOLTNET_DATA') or str(SHARED_CSV.resolve())
    if not Path(data).is_file():
        _fail(f'training CSV {data} not found' + ('' if not os.environ.get('VOLTNET_DATA') or data != os.environ[
            'VOLTNET_DATA'] else ' (from $VOLTNET_DATA)') + '; pass --data')
    from aiida_voltnet.ml import records

    started = time.perf_counter()
    records.LOGGER.disabled = True  # its warnings come once, from the training run below
    try:  # before the profile: a bad file stops here, with its line, battery_id and field, and stores nothing
        rows = records.read_electrodes_csv(data)
    except records.ElectrodeDataError as exception:
        _fail(str(exception))
    finally:
        records.LOGGER.disabled = False
    from aiida_voltnet.calculations.functions import (_train_arguments, check_split_leaves_enough_to_train,
                                                      check_training_targets)
    from aiida_voltnet.workflows.train import TrainWorkChain

    inputs = TrainWorkChain.get_protocol_inputs(protocol)
    train, split = inputs['train'], inputs['split']
    try:  # what the work chain's validator would refuse, found before the profile too: too few rows for the
        # protocol's model after its own split, a record without the voltage, a field its featurizer needs
        check_split_leaves_enough_to_train(rows, split['kind'], split['seed'], split['test_fraction'], train['model'],
                                           train['settings'].get('members'), train['settings'].get('model_params'))
        _train_arguments(train['featurizer'], train['model'], train['settings'], train['seed'], rows)
        missing = check_training_targets(rows, train['settings'], purpose='train or evaluate on')
        if missing:
            raise ValueError(missing)
    except ValueError as exception:
        _fail(f'{data}: {exception}')
    ensure_embedded_profile(profile)
    from aiida_voltnet.workflows.quickstart import run_quickstart

    from aiida import orm

    def last_process():
        return orm.QueryBuilder().append(orm.ProcessNode, project='id').order_by(
            {orm.ProcessNode: {'id': 'desc'}}).limit(1).first(flat=True)

    before = last_process()
    from .running import Interrupted, run_interruptible

    try:
        with _console_without_tracebacks():
            result = run_quickstart(data, protocol=protocol, echo=click.echo, run=run_interruptible)
    except Interrupted as exception:  # Ctrl-C or SIGTERM during a work chain: what it stopped, named
        _fail(str(exception), 130)
    except KeyboardInterrupt:  # between the work chains: nothing was running
        _fail('interrupted (what finished before stays stored: verdi process list -a)', 130)
    except RuntimeError as exception:  # a work chain that failed: its exit status and message, no traceback
        _fail(str(exception), 1)
    except ValueError as exception:
        if last_process() == before:  # refused at launch (nothing stored): a check the lines above do not make
            _fail(f'{data}: {exception}')
        excepted = orm.QueryBuilder().append(orm.ProcessNode, project='id', filters={
            'id': {'>': before or 0}, 'attributes.process_state': 'excepted'}).order_by(
            {orm.ProcessNode: {'id': 'desc'}}).limit(1).first(flat=True)
        if excepted is not None:  # a step raised: the process whose report holds the traceback
            _fail(f'the run failed: {type(exception).__name__}: {exception} (verdi process report {excepted} says '
                  'where)', 1)
        _fail(f'the run stopped after its training: a later launch was refused: {exception}', 1)
    click.echo(f'\nquickstart finished in {time.perf_counter() - started:.0f} s')
    return result


class _NoTraceback:
    """A console-handler filter: leaves out a process report that holds a traceback (a work chain's ``on_except``),
    which the process keeps in its log for ``verdi process report``; the command says which process to ask."""

    @staticmethod
    def filter(record) -> bool:
        return 'Traceback (most recent call last)' not in record.getMessage()


@contextlib.contextmanager
def _console_without_tracebacks():
    """:class:`_NoTraceback` on aiida's console handlers while the block runs (its database log handler, which
    stores the reports, is left alone)."""
    import logging

    from aiida.orm.utils.log import DBLogHandler

    handlers = [handler for handler in logging.getLogger('aiida').handlers
                if isinstance(handler, logging.StreamHandler) and not isinstance(handler, DBLogHandler)]
    for handler in handlers:
        handler.addFilter(_NoTraceback)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(_NoTraceback)


@cli.command()
@click.argument('identifier')
@click.option('--profile', default=None, help='AiiDA profile (default: the default profile).')
@click.option('--json', 'as_json', is_flag=True, help='Print the answer as JSON.')
def provenance(identifier, profile, as_json):
    """Where a prediction came from: model version, training process and data, and its inputs.

    IDENTIFIER is the pk or uuid (or a uuid prefix) of a prediction (the ArrayData of a batch, a pair's Float
    voltage or any other output of its process), of a predict process, or of a work chain that predicted
    (PredictWorkChain: one answer per prediction). For a model node, list what it predicted with voltnet
    predictions --model PK.
    """
    node = _load_node(identifier, profile)
    from aiida_voltnet.provenance import prediction_provenance

    try:
        answer = prediction_provenance(node)
    except ValueError as exception:
        _fail(str(exception))
    if as_json:
        click.echo(json.dumps(answer, indent=2, default=str))
        return
    _print_tree(answer)


def _print_tree(data, indent=0):
    for key, value in data.items():
        if key == 'prediction' and value is None:  # the answer for a process: no single prediction node to name
            continue
        if isinstance(value, dict):
            click.echo(' ' * indent + f'{key}:')
            _print_tree(value, indent + 2)
        elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
            click.echo(' ' * indent + f'{key}: ({len(value)})')  # a work chain's predictions, a model's splits
            for number, item in enumerate(value):
                click.echo(' ' * (indent + 2) + f'- [{number}]')
                _print_tree(item, indent + 4)
        elif key == 'training_warnings' and value:  # sentences: one a line, every one of them
            click.echo(' ' * indent + f'{key}: ({len(value)})')
            for item in value:
                click.echo(' ' * (indent + 2) + f'- {item}')
        elif isinstance(value, list) and len(value) > 8:
            click.echo(' ' * indent + f'{key}: {value[:8]} ... ({len(value)} in all)')
        else:
            click.echo(' ' * indent + f'{key}: {value}')


@cli.command()
@click.option('--model', 'model_id', required=True,
              help='pk or uuid of a voltage model node, or its model version (the hex hash, or its first 8+ '
                   'digits; a pk or uuid is read first).')
@click.option('--ion', default=None, help='Only this working ion.')
@click.option('--min-voltage', type=float, default=None, help='Only predictions at or above this voltage (V).')
@click.option('--max-voltage', type=float, default=None, help='Only predictions at or below this voltage (V).')
@click.option('--profile', default=None, help='AiiDA profile (default: the default profile).')
def predictions(model_id, ion, min_voltage, max_voltage, profile):
    """List what a model predicted (battery, ion, voltage, uncertainty, extrapolation, prediction node).

    The extrapolation column says `yes` where the host has an element that no training host had, the ion
    content lies outside the training electrodes' range for that ion, a feature lies far beyond the training rows'
    range, or the record lists the ion-rich end member as charged, `-` for predictions stored before those
    flags existed. Predictions of every node of the model's version are listed (a training taken from the cache
    makes another node of the same model)."""
    found = _node_lookup(model_id, profile)
    version = model_id.lower()  # a version is written in lower-case hex; 0CBBB151 was never tried as one (review)
    model = _model_by_version(version, profile) if found != 'one' else None
    if model is None and re.fullmatch(r'[0-9a-f]{1,7}', version) and not model_id.isdigit() and found == 'none':
        _fail(f'no node {model_id!r}: a model version prefix needs 8 or more hex digits, a pk only digits', EXIT_BAD_INPUT)
    if model is None and found == 'none' and re.fullmatch(r'[0-9a-f]{8,64}', version) and not model_id.isdigit():
        _fail(f'no node and no model version starting with {model_id!r} in this profile (voltnet predictions '
              '--model takes a pk, a uuid or a model version)', EXIT_BAD_INPUT)
    model = model or _load_node(model_id, profile)
    from aiida_voltnet.provenance import list_predictions

    try:
        rows = list_predictions(model, ion=ion, min_voltage=min_voltage, max_voltage=max_voltage)
    except (TypeError, ValueError) as exception:
        _fail(str(exception), EXIT_BAD_INPUT)
    click.echo(f'{"battery_id":<28} {"ion":<4} {"voltage":>8} {"+/-":>6} {"extrapolation":<13}  node')
    flags = {True: 'yes', False: 'no', None: '-'}
    for row in rows:
        click.echo(f'{row["battery_id"]:<28} {row["working_ion"]:<4} {row["voltage"]:8.3f} '
                   f'{row["uncertainty"]:6.3f} {flags[row["extrapolation"]]:<13}  {row["node"]}')
    click.echo(f'{len(rows)} prediction(s)', err=True)
    sys.stdout.flush()
