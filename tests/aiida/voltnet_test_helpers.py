"""Helpers of the AiiDA-layer tests (imported by module name: ``tests/aiida`` is on ``sys.path`` under pytest's
default import mode, and a package here would shadow ``aiida``)."""
from __future__ import annotations

import csv
import pathlib

from aiida import orm

FIXTURES = pathlib.Path(__file__).parent / 'fixtures'
CSV_150 = FIXTURES / 'electrodes_150.csv'
FAST_MLP = {'model': 'mlp', 'settings': {'train_overrides': {'epochs': 3}}}


def count_nodes(node_class=orm.Node) -> int:
    return orm.QueryBuilder().append(node_class).count()


def write_csv_with(path: pathlib.Path, row: int, **changes) -> pathlib.Path:
    """Copy the first 5 rows of the fixture CSV to ``path``, changing fields of data row ``row``."""
    with CSV_150.open(newline='') as handle:
        rows = list(csv.DictReader(handle))[:5]
    rows[row].update(changes)
    with path.open('w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
