"""Shared pytest configuration: the aiida-core fixtures (a temporary ``core.sqlite_dos`` profile without broker,
loaded automatically for the session; tests that do not touch AiiDA simply ignore it)."""
import pytest

pytest_plugins = ['aiida.tools.pytest_fixtures']


def pytest_collection_modifyitems(config, items):
    """Tests marked ``live`` (the real Materials Project API) run only when asked for with ``-m live``: a key in
    the environment alone must not make a plain test run talk to the internet (review)."""
    if 'live' in (config.getoption('markexpr') or ''):
        return
    skip = pytest.mark.skip(reason='live test of the real Materials Project API: run it with -m live and MP_API_KEY')
    for item in items:
        if 'live' in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def cobalt_oxide_frameworks():
    """(CoO2 of LiCoO2's layered R-3m framework, rutile CoO2, layered LiCoO2): the same host composition twice."""
    from pymatgen.core import Lattice, Structure

    layered = Structure.from_spacegroup('R-3m', Lattice.hexagonal(2.82, 14.05), ['Li', 'Co', 'O'],
                                        [[0, 0, 0.5], [0, 0, 0], [0, 0, 0.24]]).get_primitive_structure()
    host = layered.copy()
    host.remove_species(['Li'])
    rutile = Structure.from_spacegroup('P4_2/mnm', Lattice.tetragonal(4.5, 2.9), ['Co', 'O'],
                                       [[0, 0, 0], [0.3, 0.3, 0]])
    return host, rutile, layered


@pytest.fixture
def write_csv(tmp_path):
    """``write_csv(name, rows, columns)``: the CSV ``tmp_path / name`` of the dict ``rows`` under ``columns`` (a
    row's other keys left out); returns its path."""
    import csv

    def write(name, rows, columns):
        path = tmp_path / name
        with path.open('w', newline='') as handle:
            writer = csv.DictWriter(handle, columns, extrasaction='ignore')
            writer.writeheader()
            writer.writerows(rows)
        return path

    return write
