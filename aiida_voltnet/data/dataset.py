"""``ElectrodeDataset``: a set of insertion-electrode records stored as ``records.json`` in the node repository.

Only what one queries goes into attributes (size, working ions, where the records came from); the records
themselves and the full Materials Project provenance (every material id) live in repository files.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

from aiida.orm import Data

from aiida_voltnet.ml.records import (ElectrodeDataError, ElectrodeRecord, battery_id_key, is_validated,
                                      records_from_json, records_to_json, validate_record)

from ._empty import RefusesEmpty

__all__ = ('ElectrodeDataset',)

#: ``records``: built in Python from records, with no file, query or structures behind them on record
SOURCES = ('csv', 'materials_project', 'structures', 'records')


class ElectrodeDataset(RefusesEmpty, Data):
    """Insertion-electrode records (``aiida_voltnet.ml.records.ElectrodeRecord``) with their origin.

    Attributes: ``n_records``, ``working_ions`` (sorted), ``source`` (``csv``, ``materials_project``,
    ``structures``, or ``records`` for records given in Python; a split subset keeps its parent's),
    ``records_sha256``; ``source_sha256`` when built from a CSV
    file; ``mp_database_version`` and ``mp_n_material_ids`` when fetched from the Materials Project (the ids
    themselves and the query are in the repository file ``mp_provenance.json``, see :meth:`mp_provenance`).
    """

    # ElectrodeDataset() without records cannot be stored: every reader of it would fail
    _REQUIRED_ATTRIBUTE = 'records_sha256'
    _EMPTY_MESSAGE = 'an ElectrodeDataset without records cannot be stored: give the records, ElectrodeDataset(records)'
    _READ_BACK_ERROR = ElectrodeDataError

    RECORDS_FILENAME = 'records.json'
    MP_PROVENANCE_FILENAME = 'mp_provenance.json'

    def __init__(self, records: Sequence[ElectrodeRecord] | None = None, *, source: str = 'records',
                 source_sha256: str | None = None, mp_provenance: dict[str, Any] | None = None,
                 derived_from: 'ElectrodeDataset | None' = None, **kwargs):
        """
        :param records: the electrode records (validated core records).
        :param source: where they came from, one of ``csv``, ``materials_project``, ``structures``, ``records``
            (the default: records built in Python; the assembling calcfunctions set the others). Only a dataset
            made by one of those calcfunctions has its origin in the graph; ``dataset_origin`` says which.
        :param source_sha256: sha256 of the CSV file the records were read from.
        :param mp_provenance: the provenance dict of ``fetch_mp_electrodes`` (database version, material ids, ...).
        :param derived_from: a dataset these records are a subset of (a split): its source fields are copied, so
            every subset still answers where its records came from.
        """
        super().__init__(**kwargs)
        if derived_from is not None:
            source, source_sha256 = derived_from.source, derived_from.source_sha256
            mp_provenance = derived_from.mp_provenance()
        if records is not None:
            self._set_records(records, source=source, source_sha256=source_sha256, mp_provenance=mp_provenance)

    def _set_records(self, records, *, source, source_sha256=None, mp_provenance=None) -> None:
        records = list(records)
        if not records:
            raise ElectrodeDataError('an electrode dataset needs at least one record')
        if not all(isinstance(r, ElectrodeRecord) for r in records):
            raise TypeError('records must be aiida_voltnet.ml.records.ElectrodeRecord instances')
        if source not in SOURCES:
            raise ValueError(f'source must be one of {", ".join(SOURCES)}, not {source!r}')
        # a record built by hand (not by a reader) is checked here: stored unchecked, every reader refused the node
        records = [r if is_validated(r) else validate_record(r) for r in records]
        ids = [battery_id_key(r.battery_id) for r in records]  # one id however its characters are spelt
        if len(set(ids)) != len(ids):
            duplicated = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise ElectrodeDataError(f'duplicate battery_id(s) {", ".join(duplicated)}', field='battery_id')
        content = records_to_json(records).encode()
        sha256 = hashlib.sha256(content).hexdigest()
        self.base.repository.put_object_from_bytes(content, self.RECORDS_FILENAME)
        self.base.attributes.set('n_records', len(records))
        self.base.attributes.set('working_ions', sorted({r.working_ion for r in records}))
        self.base.attributes.set('source', source)
        self.base.attributes.set('records_sha256', sha256)
        # Records that validate_record returned are what records() would parse back from this file: keep them
        # (in this Python object only), so that a dataset built and used in one process is not parsed twice.
        self._checked_records = (sha256, tuple(records)) if all(is_validated(r) for r in records) else None
        if source_sha256 is not None:
            self.base.attributes.set('source_sha256', source_sha256)
        if mp_provenance is not None:
            text = json.dumps(mp_provenance, sort_keys=True, indent=1, default=str)
            self.base.repository.put_object_from_bytes(text.encode(), self.MP_PROVENANCE_FILENAME)
            version = mp_provenance.get('database_version')
            if version:  # the heartbeat may not say (403, a mirror): no attribute rather than the text 'None'
                self.base.attributes.set('mp_database_version', str(version))
            self.base.attributes.set('mp_n_material_ids', len(mp_provenance.get('material_ids') or []))

    # -- queryable properties ---------------------------------------------------------------------------------------
    @property
    def n_records(self) -> int:
        return self.base.attributes.get('n_records')

    @property
    def working_ions(self) -> list[str]:
        return list(self.base.attributes.get('working_ions'))

    @property
    def source(self) -> str:
        return self.base.attributes.get('source')

    @property
    def source_sha256(self) -> str | None:
        return self.base.attributes.get('source_sha256', None)

    @property
    def mp_database_version(self) -> str | None:
        return self.base.attributes.get('mp_database_version', None)

    # -- content ----------------------------------------------------------------------------------------------------
    def records(self) -> list[ElectrodeRecord]:
        """The core records, validated: parsed and checked from ``records.json`` (whose sha256 must match the
        recorded one), or, for a dataset built in this process from records that ``validate_record`` returned,
        those same records once the file is verified to be the one written from them (the records equal what
        parsing the file gives; only their ``line``, which the file does not hold, is kept)."""
        label = f'ElectrodeDataset<{self.pk if self.is_stored else "unstored"}>'
        recorded = self.base.attributes.get('records_sha256', None)
        if recorded is None:  # every dataset with records has it: one without was altered (or never given records)
            raise ElectrodeDataError(f'{label}: attribute records_sha256 is missing, so {self.RECORDS_FILENAME} '
                                     'cannot be checked; refusing to read it')
        try:
            content = self.base.repository.get_object_content(self.RECORDS_FILENAME, mode='rb')
        except FileNotFoundError:
            raise ElectrodeDataError(f'{label}: the repository has no {self.RECORDS_FILENAME}') from None
        actual = hashlib.sha256(content).hexdigest()
        if actual != recorded:
            raise ElectrodeDataError(f'{label}: {self.RECORDS_FILENAME} does not match the sha256 recorded when the '
                                     'node was created')
        checked = getattr(self, '_checked_records', None)
        if checked is not None and checked[0] == actual == recorded:
            records = list(checked[1])
            self._check_attributes(records, label)  # set by hand since: refused here too, not only elsewhere
            return records
        try:
            records = records_from_json(content.decode())
        except ElectrodeDataError as exception:
            raise ElectrodeDataError(f'{label}: {self.RECORDS_FILENAME}: {exception}') from None
        except (ValueError, TypeError, AttributeError, KeyError, OverflowError, RecursionError) as exception:
            # JSON, UTF-8 or shape; a number a float cannot hold, brackets nested too deeply
            raise ElectrodeDataError(f'{label}: {self.RECORDS_FILENAME} is not a list of electrode records '
                                     f'({type(exception).__name__}: {exception})') from None
        ids = [battery_id_key(r.battery_id) for r in records]
        if len(set(ids)) != len(ids):
            duplicated = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise ElectrodeDataError(f'{label}: {self.RECORDS_FILENAME} repeats battery_id(s) {", ".join(duplicated)}')
        self._check_attributes(records, label)
        return records

    def _check_attributes(self, records, label: str) -> None:
        """The queryable attributes must say what the file holds (an edited ``n_records`` fed
        add_verified_records' count of the verified records, and queries select on them)."""
        expected = {'n_records': len(records), 'working_ions': sorted({r.working_ion for r in records})}
        altered = sorted(key for key, value in expected.items() if self.base.attributes.get(key, None) != value)
        if altered:
            raise ElectrodeDataError(f'{label}: attribute(s) {", ".join(altered)} differ from '
                                     f'{self.RECORDS_FILENAME}')

    def _read_back(self) -> None:
        """Not stored: a dataset whose records cannot be read back or whose attributes contradict them."""
        self.records()

    def battery_ids(self) -> list[str]:
        return [r.battery_id for r in self.records()]

    def mp_provenance(self) -> dict[str, Any] | None:
        """The full Materials Project provenance (query, database version, material and battery ids), or None."""
        if self.MP_PROVENANCE_FILENAME not in self.base.repository.list_object_names():
            return None
        return json.loads(self.base.repository.get_object_content(self.MP_PROVENANCE_FILENAME))

    def __len__(self) -> int:
        return int(self.n_records or 0)
