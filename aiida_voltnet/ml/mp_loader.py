"""Live loader for Materials Project insertion electrodes (through the official ``mp-api`` client).

:func:`fetch_mp_electrodes` queries ``/materials/insertion_electrodes/`` for the electrode documents and
``/materials/summary/`` for the symmetry (crystal system, space-group number) of each electrode's charged and
discharged end member, and converts every document into an :class:`~aiida_voltnet.ml.records.ElectrodeRecord`
that means the same as a row of the seed CSV read by :func:`~aiida_voltnet.ml.records.read_electrodes_csv`.

Design notes

* This module does not import AiiDA, and imports ``mp_api`` only when it has to build a client itself
  (``pip install aiida-voltnet[mp]``), so a caller may pass any object with the same ``rester`` interface.
* The client is created with ``use_document_model=False``: documents arrive as plain JSON dictionaries and all
  validation happens here, so a bad value is reported as :class:`ElectrodeDataError` naming the battery and the
  field instead of a pydantic error deep inside the client. Documents given as pydantic models (a ``rester``
  built with document models) are converted to the same plain form first.
* Only the fields the records need are requested (``_fields``); the large ``host_structure`` and
  ``electrode_object`` fields are never downloaded. Without any filter mp-api would switch from the REST API to a
  bulk download of the whole collection from S3 into ``~/mp_datasets``; the loader always passes ``num_chunks``
  so the (paginated) REST API is used.
* Nothing is pickled; the provenance dictionary is plain JSON.
"""
from __future__ import annotations

import datetime
import enum
import logging
import math
import os
import re
from collections.abc import Mapping
from typing import Any

from pymatgen.core import Element

from .records import (FLOAT_COLUMNS, STEP_FIELDS, WORKING_IONS, ElectrodeDataError, ElectrodeRecord, VoltageStep,
                      end_members_from_steps, host_framework, space_group_crystal_system, validate_record)

LOGGER = logging.getLogger(__name__)

__all__ = [
    'ELECTRODE_FIELDS',
    'SUMMARY_FIELDS',
    'InvalidAPIKeyError',
    'MPRequestError',
    'MissingAPIKeyError',
    'fetch_mp_electrodes',
    'battery_id_of',
    'record_from_mp_doc',
    'symmetry_from_summary_docs',
]

#: Value of ``ElectrodeDataError.source`` for errors raised here.
SOURCE = 'Materials Project'
#: Where a key comes from, as the loader and ``voltnet fetch-mp`` say it.
KEY_SOURCES = ('set the MP_API_KEY environment variable (or PMG_MAPI_KEY in ~/.config/.pmgrc.yaml, as mp-api reads '
               'it; get a key at https://next-gen.materialsproject.org/api)')

#: Fields requested from ``/materials/insertion_electrodes/`` (``battery_id`` is not a field of emmet's
#: ``InsertionElectrodeDoc``: it is derived from ``material_ids`` and ``working_ion``, see :func:`battery_id_of`).
ELECTRODE_FIELDS: tuple[str, ...] = (
    'material_ids', 'battery_formula', 'working_ion', 'num_steps', 'framework_formula', 'formula_charge',
    'formula_discharge', 'stability_charge', 'stability_discharge', 'adj_pairs', 'capacity_grav', 'capacity_vol',
    'energy_grav', 'energy_vol', 'average_voltage', 'id_charge', 'id_discharge',
)
#: Fields requested from ``/materials/summary/`` for the end members.
SUMMARY_FIELDS: tuple[str, ...] = ('material_id', 'symmetry')

#: ``InsertionVoltagePairDoc`` key -> :class:`VoltageStep` attribute (same mapping as the CSV ``adj_pairs``).
PAIR_FIELDS: dict[str, str] = STEP_FIELDS
_PAIR_TEXT = frozenset({'formula_charge', 'formula_discharge', 'id_charge', 'id_discharge'})
_RECORD_FLOATS = FLOAT_COLUMNS

#: Largest page the MP API serves.
MAX_CHUNK_SIZE = 1000
#: Page limit passed as ``num_chunks`` when all matches are wanted (keeps mp-api on the REST API, see above).
_ALL_PAGES = 100_000
#: Material ids per summary request (keeps the URL short; mp-api also splits on HTTP 414/422).
SUMMARY_BATCH_SIZE = 200

_MPID = re.compile(r'^(?P<prefix>[A-Za-z]+)-(?P<number>\d+)$')


class MissingAPIKeyError(RuntimeError):
    """No Materials Project API key was given and ``MP_API_KEY`` is not set."""


class InvalidAPIKeyError(ValueError):
    """A Materials Project API key that mp-api refuses before any request (not 32 characters)."""


class MPRequestError(RuntimeError):
    """The Materials Project could not be reached, or refused a request (a wrong key, a server error)."""


#: The length of every Materials Project API key; mp-api refuses others before sending anything.
API_KEY_LENGTH = 32


def api_key_problem(key: str, *, given: bool = True) -> str | None:
    """Why mp-api would refuse ``key`` before any request, naming where it came from; None for a usable one.

    :param given: whether the key was passed as ``api_key`` (else it came from the environment).
    """
    if len(key) != API_KEY_LENGTH:
        source = 'api_key=...' if given else 'MP_API_KEY, else PMG_MAPI_KEY in ~/.config/.pmgrc.yaml'
        return (f'the Materials Project API key has {len(key)} characters, not {API_KEY_LENGTH} (from {source}); '
                'copy it again from https://next-gen.materialsproject.org/api')
    return None


# ------------------------------------------------------------------------------------------------ public API

def fetch_mp_electrodes(api_key: str | None = None, *, working_ion: str | None = None,
                        elements: list[str] | None = None, battery_ids: list[str] | None = None,
                        max_entries: int | None = None, rester=None) -> tuple[list[ElectrodeRecord], dict]:
    """Fetch insertion electrodes from the Materials Project as validated records.

    :param api_key: MP API key; defaults to the ``MP_API_KEY`` environment variable. Not needed with ``rester``.
    :param working_ion: only electrodes of this working ion (one of :data:`~aiida_voltnet.ml.records.WORKING_IONS`).
    :param elements: only electrodes whose framework contains all these elements (MP's ``elements`` filter).
    :param battery_ids: only these electrodes, e.g. ``['mp-2657_Li']``.
    :param max_entries: at most this many electrodes (the first ones the API returns).
    :param rester: an open ``mp_api.client.MPRester`` (or an object with the same interface) to use instead of
        creating one; it is not closed here.
    :returns: ``(records, provenance)``; records sorted by battery id, provenance a JSON-serialisable dict with
        ``source``, ``database_version``, ``query`` (the arguments passed to ``insertion_electrodes.search``),
        ``battery_ids``, ``material_ids`` (sorted unique ids of all end members, of the electrodes and of their
        voltage steps), ``mp_api_version`` and ``fetched_at`` (ISO 8601, UTC).
    :raises MissingAPIKeyError: without ``rester``, ``api_key`` and ``MP_API_KEY``.
    :raises InvalidAPIKeyError: for a key that is not 32 characters long (before any request).
    :raises MPRequestError: when the Materials Project cannot be reached, refuses a request (a wrong key) or answers
        with something that is no API response (a proxy's error page, a maintenance heartbeat).
    :raises ElectrodeDataError: for a document that cannot be converted (names the battery id and the field).
    :raises ValueError: for invalid arguments.
    """
    check_fetch_arguments(working_ion=working_ion, elements=elements, battery_ids=battery_ids,
                          max_entries=max_entries)
    arguments = dict(working_ion=working_ion, elements=list(elements) if elements else None,
                     battery_ids=list(battery_ids) if battery_ids else None, max_entries=max_entries)
    if rester is not None:
        return _fetch(rester, **arguments)
    given = (api_key or '').strip()
    key = given or configured_api_key()
    if not key:
        raise MissingAPIKeyError(f'no Materials Project API key: pass api_key=... or {KEY_SOURCES}')
    problem = api_key_problem(key, given=bool(given))
    if problem:
        raise InvalidAPIKeyError(problem)
    try:
        import requests
        from mp_api.client import MPRester
        from mp_api.client.core.client import MPRestError
    except ImportError as exception:  # pragma: no cover - depends on the installation
        raise ImportError('fetching from the Materials Project needs the mp-api client: '
                          'pip install "aiida-voltnet[mp]"') from exception
    try:
        with MPRester(key, use_document_model=False) as client:
            return _fetch(client, **arguments)
    except (MPRestError, requests.exceptions.RequestException) as exception:
        raise MPRequestError(f'the Materials Project request failed ({type(exception).__name__}): '
                             f'{str(exception)[:500]}') from exception
    except (KeyError, ValueError, TypeError) as exception:
        if isinstance(exception, ElectrodeDataError) or not _in_client(exception):  # ours: a document that is no
            raise  # electrode (named by battery id and field), or a bug here, not the server's answer
        # mp-api reading a body that is no API response: a proxy's HTML error page (JSONDecodeError), a
        # maintenance heartbeat without 'version', a response without 'data'
        raise MPRequestError(f'the Materials Project answered with something that is no API response '
                             f'({type(exception).__name__}: {str(exception)[:300]}); a proxy or maintenance page? '
                             'try again later') from exception


def _in_client(exception: BaseException) -> bool:
    """Whether ``exception`` was raised inside the mp-api client, requests or a JSON parser (its innermost frame),
    that is, while reading what the server sent; not in this module's own conversion of the documents."""
    import traceback

    frames = traceback.extract_tb(exception.__traceback__)
    return bool(frames) and any(part in frames[-1].filename for part in ('mp_api', 'requests', 'json', 'orjson',
                                                                         'emmet'))


def configured_api_key() -> str | None:
    """The Materials Project API key of the environment: ``MP_API_KEY``, else pymatgen's ``PMG_MAPI_KEY`` setting
    (``~/.config/.pmgrc.yaml`` or the environment), which mp-api's own ``MPRester()`` reads; surrounding white space
    (a key pasted with its newline) dropped. None without one."""
    key = (os.environ.get('MP_API_KEY') or '').strip()
    if not key:
        try:
            from pymatgen.core import SETTINGS
        except ImportError:  # pragma: no cover - pymatgen is a dependency
            SETTINGS = {}
        key = str(SETTINGS.get('PMG_MAPI_KEY') or '').strip()
    return key or None


#: A battery id as the Materials Project writes them: a material id and the working ion (mp-2657_Li).
_BATTERY_ID = re.compile(r'(mp|mvc)-\d+_([A-Z][a-z]?)')


def check_fetch_arguments(working_ion=None, elements=None, battery_ids=None, max_entries=None, *,
                          names: Mapping[str, str] | None = None) -> None:
    """Refuse arguments of :func:`fetch_mp_electrodes` that no query can serve, before anything is fetched.

    :param names: how messages name each argument (``{'working_ion': '--ion'}`` for a command line); by default
        the argument's own name.
    :raises ValueError: naming the argument and the value.
    """
    name_of = {name: name for name in ('working_ion', 'elements', 'battery_ids', 'max_entries')}
    name_of.update(names or {})
    if working_ion is not None and working_ion not in WORKING_IONS:
        raise ValueError(f'{name_of["working_ion"]} must be one of {", ".join(WORKING_IONS)}, got {working_ion!r}')
    if max_entries is not None and (isinstance(max_entries, bool) or not isinstance(max_entries, int)
                                    or max_entries < 1):
        raise ValueError(f'{name_of["max_entries"]} must be a positive integer, got {max_entries!r}')
    for name, values in (('elements', elements), ('battery_ids', battery_ids)):
        if values is not None and (isinstance(values, str) or not isinstance(values, (list, tuple))
                                   or not all(isinstance(value, str) for value in values)):
            raise ValueError(f'{name_of[name]} must be a list of strings, got {values!r:.80}')
        if values is not None and not values:  # not "no filter": an empty id list would fetch every electrode
            raise ValueError(f'{name_of[name]} is empty: pass None (no filter) or at least one value')
    for element in elements or ():
        if not Element.is_valid_symbol(element):
            raise ValueError(f'{name_of["elements"]}: {element!r} is not a chemical element symbol')
    for battery_id in battery_ids or ():
        match = _BATTERY_ID.fullmatch(battery_id)
        if not match or match.group(2) not in WORKING_IONS:
            raise ValueError(f'{name_of["battery_ids"]}: {battery_id!r} is no Materials Project battery id (a material '
                             f'id and a working ion, e.g. mp-2657_Li; ions: {", ".join(WORKING_IONS)})')
        if working_ion is not None and match.group(2) != working_ion:  # no electrode can pass both filters
            raise ValueError(f'{name_of["battery_ids"]}: {battery_id!r} is an electrode of {match.group(2)}, and '
                             f'{name_of["working_ion"]} is {working_ion}: the query could return none')


def battery_id_of(doc: Mapping[str, Any]) -> str:
    """The battery id of a plain electrode document: ``battery_id`` if present, else emmet's rule.

    emmet-core defines the id as the smallest non-``mvc`` material id of ``material_ids`` joined to the working
    ion with ``_`` (``mp-2657_Li``); the legacy ``mp-NNN`` spelling is kept as the API returns it.
    """
    given = doc.get('battery_id')
    if isinstance(given, str) and given.strip():
        return given.strip()
    ion = doc.get('working_ion')
    ids = doc.get('material_ids')
    if not isinstance(ion, str) or not ion.strip():
        raise ElectrodeDataError('cannot determine the battery id: working_ion is missing', field='working_ion',
                                 source=SOURCE)
    if not isinstance(ids, list) or not ids:
        raise ElectrodeDataError('cannot determine the battery id: material_ids is missing or empty',
                                 field='material_ids', source=SOURCE)
    candidates = [str(i) for i in ids if i is not None and not str(i).startswith('mvc')]
    if not candidates:
        raise ElectrodeDataError(f'cannot determine the battery id from material_ids {ids!r}', field='material_ids',
                                 source=SOURCE)
    return f'{min(candidates, key=_mpid_key)}_{ion.strip()}'


def symmetry_from_summary_docs(docs) -> dict[str, dict[str, Any]]:
    """Map material id -> ``symmetry`` dict (``crystal_system``, ``number``, ...) of summary documents."""
    result = {}
    for doc in docs:
        doc = _plain(doc)
        if not isinstance(doc, Mapping) or not doc.get('material_id'):
            continue
        symmetry = doc.get('symmetry')
        result[str(doc['material_id'])] = symmetry if isinstance(symmetry, Mapping) else {}
    return result


def record_from_mp_doc(doc, symmetry: Mapping[str, Mapping[str, Any]] | None = None) -> ElectrodeRecord:
    """Convert one insertion-electrode document (dict or pydantic model) into a validated record.

    :param symmetry: material id -> summary ``symmetry`` dict, for the crystal systems and space groups of
        ``id_charge`` and ``id_discharge`` (missing ids give ``None``).
    :raises ElectrodeDataError: naming the battery id and the field.
    """
    doc = _plain(doc)
    if not isinstance(doc, Mapping):
        raise ElectrodeDataError(f'expected a JSON object, got {type(doc).__name__}', source=SOURCE)
    battery_id = battery_id_of(doc)
    symmetry = symmetry or {}
    reader = _Reader(doc, battery_id)
    values: dict[str, Any] = {'battery_id': battery_id}
    for name in ('formula_charge', 'formula_discharge', 'working_ion'):
        values[name] = reader.text(name, required=True)
    values['framework_formula'] = reader.text('framework_formula') or ''
    for name in ('battery_formula', 'id_charge', 'id_discharge'):
        values[name] = reader.text(name)
    values['num_steps'] = reader.integer('num_steps')
    for name in _RECORD_FLOATS:
        values[name] = reader.number(name)
    values['steps'] = reader.steps('adj_pairs')
    for name in ('formula_charge', 'formula_discharge'):  # MP's reduced formulas, written as the seed CSV writes them
        values[name] = _csv_style_formula(values[name], values['working_ion'])
    # the same end members as the CSV reader gives (a document whose formulas are emmet's rounded battery-formula
    # text, as the seed-format CSV's are, takes the steps' exact ion content)
    exact = end_members_from_steps(values['formula_charge'], values['formula_discharge'], values['working_ion'],
                                   values['steps'])
    if exact:
        values['formula_charge'], values['formula_discharge'] = exact
    for side in ('charge', 'discharge'):
        material_id = values[f'id_{side}']
        block = symmetry.get(material_id) if material_id else None
        values[f'{side}_crystal_system'] = None
        values[f'{side}_space_group_number'] = None
        if block is None:
            continue
        if not isinstance(block, Mapping):
            reader.fail(f'symmetry of {material_id} is not an object', f'{side}_crystal_system')
        symmetry_reader = _Reader(block, battery_id, prefix=f'symmetry of {material_id}: ')
        values[f'{side}_crystal_system'] = symmetry_reader.text('crystal_system', field=f'{side}_crystal_system')
        number = values[f'{side}_space_group_number'] = symmetry_reader.integer(
            'number', field=f'{side}_space_group_number')
        if values[f'{side}_crystal_system'] is None and number is not None and 1 <= number <= 230:
            values[f'{side}_crystal_system'] = space_group_crystal_system(number)  # follows from the group
    return validate_record(ElectrodeRecord(**values), source=SOURCE)


# ------------------------------------------------------------------------------------------------ internals

def _csv_style_formula(formula: str, working_ion: str) -> str:
    """An end member's formula as the seed CSV writes it: the working ion first with its count per reduced host
    formula unit, then that formula (emmet's ``battery_formula`` convention): MP's ``TiO2`` and ``Li3Ti4O8`` are
    ``Li0TiO2`` and ``Li0.75TiO2``. A formula that does not parse is left for the record's validation to name."""
    from pymatgen.core import Composition

    if working_ion not in WORKING_IONS:  # 'li', 'LI': validate_record names the field
        return formula
    try:
        composition = Composition(formula)
    except Exception:  # noqa: BLE001 - validate_record names the field
        return formula
    host = host_framework(composition, working_ion)
    if not host.num_atoms:
        return formula
    reduced, factor = host.get_reduced_composition_and_factor()
    return f'{working_ion}{composition[working_ion] / factor:.12g}{reduced.reduced_formula}'


def _fetch(rester, *, working_ion, elements, battery_ids, max_entries) -> tuple[list[ElectrodeRecord], dict]:
    query: dict[str, Any] = {}
    if battery_ids:
        query['battery_ids'] = battery_ids
    if working_ion:
        query['working_ion'] = working_ion
    if elements:
        query['elements'] = elements
    query['fields'] = list(ELECTRODE_FIELDS)
    if max_entries is None:
        query['chunk_size'], query['num_chunks'] = MAX_CHUNK_SIZE, _ALL_PAGES
    else:
        chunks = math.ceil(max_entries / MAX_CHUNK_SIZE)
        query['chunk_size'], query['num_chunks'] = math.ceil(max_entries / chunks), chunks

    docs = [_plain(doc) for doc in (rester.materials.insertion_electrodes.search(**query) or [])]
    # max_entries reached: the electrodes asked for and not returned may exist beyond it, not be "missing"
    capped = max_entries is not None and len(docs) >= max_entries
    if max_entries is not None:
        docs = docs[:max_entries]

    if battery_ids:  # the id asked for where emmet's rule gives another: MP stores some as mvc-... (mvc-11882_Al)
        asked = {tuple(battery_id.rsplit('_', 1)): battery_id for battery_id in battery_ids}
        for doc in docs:
            if not isinstance(doc, Mapping) or doc.get('battery_id') or not isinstance(doc.get('material_ids'), list):
                continue
            ion = str(doc.get('working_ion'))
            matches = {asked[(str(i), ion)] for i in doc['material_ids'] if (str(i), ion) in asked}
            if len(matches) != 1:
                continue
            try:
                ruled = battery_id_of(doc)
            except ElectrodeDataError:  # only mvc- material ids: emmet's rule names none, the asked id does
                ruled = None
            if ruled not in battery_ids:
                doc['battery_id'] = matches.pop()
    seen: set[str] = set()
    for doc in docs:
        battery_id = battery_id_of(doc) if isinstance(doc, Mapping) else None
        if battery_id in seen:
            raise ElectrodeDataError('the API returned this battery twice', field='battery_id',
                                     battery_id=battery_id, source=SOURCE)
        if battery_id:
            seen.add(battery_id)
    if battery_ids:
        missing = sorted(set(battery_ids) - seen)
        if missing and capped:
            LOGGER.warning('max_entries=%d reached: not fetched (they may exist beyond it): %s', max_entries,
                           ', '.join(missing))
        elif missing and elements:  # review: said 'MP has no ...' of electrodes the elements filter left out
            LOGGER.warning('not returned: %s (not in the Materials Project, or without all of the elements %s in '
                           'their framework)', ', '.join(missing), ', '.join(elements))
        elif missing:
            LOGGER.warning('the Materials Project has no insertion electrode(s) %s', ', '.join(missing))

    for doc in docs:  # a document that cannot be a record fails now, not after every summary was downloaded
        record_from_mp_doc(doc, {})
    end_members = sorted({str(doc.get(name)) for doc in docs if isinstance(doc, Mapping)
                          for name in ('id_charge', 'id_discharge') if doc.get(name)})
    symmetry = _fetch_symmetry(rester, end_members)
    absent = [m for m in end_members if m not in symmetry]
    if absent:
        LOGGER.warning('no summary document (symmetry) for %d end member(s), their crystal system and space group '
                       'stay empty: %s', len(absent), _first_ten(absent))
    no_group = [m for m in end_members if m in symmetry and not _has_space_group(symmetry[m])]
    if no_group:  # the model then lacks its symmetry features, as for an absent document
        LOGGER.warning('no space-group number in the summary symmetry of %d end member(s), their space group stays '
                       'empty: %s', len(no_group), _first_ten(no_group))

    records = sorted((record_from_mp_doc(doc, symmetry) for doc in docs), key=lambda r: r.battery_id)
    material_ids = set()
    for record in records:
        material_ids.update(i for i in (record.id_charge, record.id_discharge) if i)
        for step in record.steps:
            material_ids.update(i for i in (step.id_charge, step.id_discharge) if i)
    provenance = {
        'source': 'materials_project',
        'database_version': _database_version(rester),
        'query': _plain(query),
        'battery_ids': [r.battery_id for r in records],
        'material_ids': sorted(material_ids),
        'mp_api_version': _mp_api_version(),
        'fetched_at': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
    }
    return records, provenance


def _first_ten(ids: list[str]) -> str:
    return ', '.join(ids[:10]) + (' ...' if len(ids) > 10 else '')


def _has_space_group(block) -> bool:
    return isinstance(block, Mapping) and block.get('number') not in (None, '')


def _fetch_symmetry(rester, material_ids: list[str]) -> dict[str, dict[str, Any]]:
    if not material_ids:
        return {}
    batches = [material_ids[i:i + SUMMARY_BATCH_SIZE] for i in range(0, len(material_ids), SUMMARY_BATCH_SIZE)]
    summary = rester.materials.summary
    result: dict[str, dict[str, Any]] = {}
    if len(batches) == 1:
        result.update(symmetry_from_summary_docs(
            summary.search(material_ids=batches[0], fields=list(SUMMARY_FIELDS)) or []))
        return result
    from tqdm.auto import tqdm

    # one bar over all batches instead of one mp-api bar per batch; mp-api hands out sub-resters wrapped in a
    # LazyImport proxy (with __slots__), so the flag is set on the wrapped rester where there is one
    target = getattr(summary, '_obj', None) or summary
    muted = getattr(target, 'mute_progress_bars', None)
    if isinstance(muted, bool):
        try:
            target.mute_progress_bars = True
        except AttributeError:  # not settable: leave mp-api's own bars on
            muted = None
    else:
        muted = None
    try:
        with tqdm(total=len(material_ids), desc='Retrieving end-member symmetry', unit='material') as bar:
            for batch in batches:
                result.update(symmetry_from_summary_docs(
                    summary.search(material_ids=batch, fields=list(SUMMARY_FIELDS)) or []))
                bar.update(len(batch))
    finally:
        if muted is not None:
            target.mute_progress_bars = muted
    return result


def _database_version(rester) -> str | None:
    version = getattr(rester, 'db_version', None)  # mp-api >= 0.45; get_database_version() is deprecated there
    if not version and callable(getattr(rester, 'get_database_version', None)):
        version = rester.get_database_version()
    return str(version) if version else None


def _mp_api_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version('mp-api')
    except PackageNotFoundError:
        return None


def _mpid_key(material_id: str) -> tuple:
    """Order ``mp-99`` before ``mp-100`` (numeric within a prefix), like emmet's ``MPID``."""
    match = _MPID.match(material_id)
    if match:
        return (0, match['prefix'], int(match['number']), material_id)
    return (1, '', 0, material_id)


def _plain(value: Any) -> Any:
    """Turn API data (pydantic models, enums, pymatgen elements, MPIDs) into plain JSON-like Python values.

    Pydantic models are read attribute by attribute rather than with ``model_dump``: emmet serialises material
    ids in the new AlphaID spelling (``mp-aaaaadyf``) while the validated attribute keeps the legacy spelling
    (``mp-2657``) that the API sends and the seed CSV uses.
    """
    if isinstance(value, enum.Enum):  # pymatgen Element, emmet CrystalSystem, ...
        return _plain(value.value) if isinstance(value.value, (str, int, float)) else str(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return str(value)  # MPID/AlphaID are str subclasses; str() gives their canonical spelling
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    fields = getattr(type(value), 'model_fields', None)
    if isinstance(fields, Mapping):
        data = {name: getattr(value, name, None) for name in fields}
        data.update(getattr(value, 'model_extra', None) or {})
        return _plain(data)
    symbol = getattr(value, 'symbol', None)
    if isinstance(symbol, str):
        return symbol
    return str(value)  # datetime, ...


class _Reader:
    """Typed access to one JSON object; every error names the battery and the field."""

    def __init__(self, data: Mapping[str, Any], battery_id: str, prefix: str = ''):
        self.data = data
        self.battery_id = battery_id
        self.prefix = prefix

    def fail(self, message: str, field: str):
        raise ElectrodeDataError(self.prefix + message, field=field, battery_id=self.battery_id, source=SOURCE)

    def text(self, key: str, *, required: bool = False, field: str | None = None) -> str | None:
        value = self.data.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                self.fail('required value is missing', field or key)
            return None
        if not isinstance(value, str):
            self.fail(f'expected text, got {value!r}', field or key)
        return value.strip()

    def number(self, key: str, *, field: str | None = None) -> float | None:
        return _as_number(self.data.get(key), lambda message: self.fail(message, field or key))

    def integer(self, key: str, *, field: str | None = None) -> int | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(f'expected an integer, got {value!r}', field or key)
        return value

    def steps(self, key: str) -> tuple[VoltageStep, ...]:
        pairs = self.data.get(key)
        if pairs is None:
            return ()
        if not isinstance(pairs, list):
            self.fail(f'expected a list of voltage pairs, got {type(pairs).__name__}', key)
        steps = []
        for index, pair in enumerate(pairs):
            if not isinstance(pair, Mapping):
                self.fail(f'element {index} is not an object', key)
            values: dict[str, Any] = {}
            for api_name, name in PAIR_FIELDS.items():
                value = pair.get(api_name)
                if api_name in _PAIR_TEXT:
                    if isinstance(value, bool) or (value is not None and not isinstance(value, (str, int))):
                        self.fail(f'element {index}, key {api_name!r}: expected text, got {value!r}', key)
                    values[name] = None if value is None else str(value)
                else:
                    values[name] = _as_number(value, lambda message, k=api_name: self.fail(
                        f'element {index}, key {k!r}: {message}', key))
            if values['average_voltage'] is None:
                self.fail(f'element {index} has no average_voltage', key)
            steps.append(VoltageStep(**values))
        return tuple(steps)


def _as_number(value: Any, fail) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(f'expected a number, got {value!r}')
    try:
        value = float(value)
    except OverflowError:  # an int beyond the float range: 10**400
        fail(f'expected a finite number, got an integer of {len(str(abs(value)))} digits')
    if not math.isfinite(value):
        fail(f'expected a finite number, got {value!r}')
    return value
