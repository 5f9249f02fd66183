"""``voltnet fetch-mp``: insertion electrodes fetched live from the Materials Project into a seed-format CSV."""
from __future__ import annotations

import json
from pathlib import Path

import click

from . import _check_output_path, _fail, _interrupt_exits_130, cli


def _comma_list(ctx, param, value):
    """``Fe,P`` -> ['Fe', 'P'] (None when not given); an empty item is refused, naming the option."""
    if value is None:
        return None
    items = [item.strip() for item in value.split(',')]
    if not all(items):
        raise click.BadParameter(f'a comma-separated list without empty items, got {value!r}')
    return items


@cli.command('fetch-mp')
@click.option('--out', 'out', required=True, type=click.Path(dir_okay=False),
              help='CSV to write, in the seed format (what voltnet train, predict, report and quickstart read); '
                   'the fetch\'s provenance goes beside it as OUT.mp.json.')
@click.option('--ion', 'working_ion', default=None, help='Only electrodes of this working ion, e.g. Li.')
@click.option('--elements', default=None, callback=_comma_list,
              help='Only electrodes whose framework contains all these elements, comma-separated: Fe,P.')
@click.option('--battery-id', 'battery_ids', multiple=True,
              help='Only this electrode, e.g. mp-2657_Li (repeat the option for more).')
@click.option('--max-entries', type=click.IntRange(min=1), default=None,
              help='At most this many electrodes (the first the API returns).')
@_interrupt_exits_130('--out and OUT.mp.json hold what they held before (they are written only at the end)')
def fetch_mp(out, working_ion, elements, battery_ids, max_entries):
    """Fetch insertion electrodes from the Materials Project into a seed-format CSV.

    Reads the API key from MP_API_KEY (or PMG_MAPI_KEY in ~/.config/.pmgrc.yaml) and never writes it. The records
    are validated as the CSV reader validates them, with the end members' space groups and crystal systems from
    MP's summary documents. OUT.mp.json records the query, the database version, every material id and the time
    of the fetch. In AiiDA, the calcfunction voltnet.assemble_dataset_from_mp makes the same records into an
    ElectrodeDataset with that provenance on the node.
    """
    from aiida_voltnet.ml.mp_loader import (KEY_SOURCES, InvalidAPIKeyError, MissingAPIKeyError, MPRequestError,
                                            check_fetch_arguments, fetch_mp_electrodes)
    from aiida_voltnet.ml.records import ElectrodeDataError, write_electrodes_csv, write_files_atomically

    arguments = dict(working_ion=working_ion, elements=elements, battery_ids=list(battery_ids) or None,
                     max_entries=max_entries)
    try:
        check_fetch_arguments(**arguments, names={'working_ion': '--ion', 'elements': '--elements',
                                                  'battery_ids': '--battery-id', 'max_entries': '--max-entries'})
    except ValueError as exception:
        _fail(str(exception))
    _check_output_path(out, directory=False)
    target = Path(out)
    sidecar = target.with_name(target.name + '.mp.json')
    if sidecar.is_dir():
        _fail(f'--out {out}: {sidecar} is a directory; the fetch\'s provenance goes there')
    click.echo('Fetching insertion electrodes from the Materials Project ...', err=True)
    try:
        records, provenance = fetch_mp_electrodes(**arguments)
    except MissingAPIKeyError:  # the loader's own message names its api_key argument, which this command has not
        _fail(f'no Materials Project API key: {KEY_SOURCES}')
    except InvalidAPIKeyError as exception:
        _fail(str(exception))
    except MPRequestError as exception:
        _fail(str(exception), 1)
    except ImportError as exception:  # mp-api is the optional [mp] extra
        _fail(str(exception))
    except ElectrodeDataError as exception:  # a document the loader cannot take: named by battery id and field
        _fail(f'the Materials Project returned a document that is no valid electrode: {exception}', 1)
    if not records:
        _fail(f'the query matched no insertion electrode (database version {provenance.get("database_version")})', 1)
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:  # the writer's layout, then both files renamed into place at once
        staged = Path(scratch) / 'electrodes.csv'
        write_electrodes_csv(records, staged)
        contents = {target.name: staged.read_bytes(),
                    sidecar.name: (json.dumps(provenance, indent=1, sort_keys=True) + '\n').encode()}
    try:
        write_files_atomically(target.parent, contents)
    except OSError as exception:
        _fail(f'--out {out}: cannot write it: {exception.strerror or exception}')
    ions = sorted({record.working_ion for record in records})
    click.echo(f'Wrote {len(records)} electrode(s) ({", ".join(ions)}) to {out}, MP database version '
               f'{provenance.get("database_version")}; provenance in {sidecar}')
