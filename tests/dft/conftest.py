"""Fixtures of the DFT-verification tests: Debian's pw.x as an AiiDA code on the test profile's localhost computer,
the PBEsol family built from Debian's UPF files, and a small trained model (3-epoch MLP on 150 MP rows, seconds).

Without pw.x or the UPF files the tests that run pw.x are skipped; with ``VOLTNET_REQUIRE_DFT=1`` (set by
``.ci/run``, which runs ``scripts/dft.sh`` first) they fail instead, so that CI cannot go green by skipping.
"""
from __future__ import annotations

import os
import pathlib
import shutil

import pytest
from aiida import orm

from aiida_voltnet.dft import DEBIAN_PBESOL_PSEUDOS, DEBIAN_PSEUDO_DIR

CSV_150 = pathlib.Path(__file__).parents[1] / 'aiida' / 'fixtures' / 'electrodes_150.csv'


def _missing() -> str | None:
    if shutil.which('pw.x') is None:
        return 'pw.x not on PATH'
    absent = [name for name in DEBIAN_PBESOL_PSEUDOS.values() if not (DEBIAN_PSEUDO_DIR / name).is_file()]
    if absent:
        return f'UPF file(s) {", ".join(absent)} not in {DEBIAN_PSEUDO_DIR}'
    return None


@pytest.fixture(scope='session')
def quantum_espresso():
    reason = _missing()
    if reason:
        reason += ' (bash scripts/dft.sh installs Debian quantum-espresso and quantum-espresso-data)'
        if os.environ.get('VOLTNET_REQUIRE_DFT') == '1':
            pytest.fail(f'{reason} (VOLTNET_REQUIRE_DFT=1: not skipping)', pytrace=False)
        pytest.skip(reason)
    return shutil.which('pw.x')


@pytest.fixture
def pseudo_family(aiida_profile, quantum_espresso):
    from aiida_voltnet.dft import install_debian_pbesol_family

    return install_debian_pbesol_family()


@pytest.fixture
def pw(aiida_localhost, quantum_espresso, pseudo_family):
    """The pw.x code, made by the same helper ``voltnet dft-setup`` uses."""
    from aiida_voltnet.dft import pw_code

    return pw_code(aiida_localhost, executable=quantum_espresso)


@pytest.fixture(scope='module')
def small_model(aiida_profile):
    """(model, its training dataset): the 150-row fixture CSV, all of it, a 3-epoch MLP (knows Li, Na, ...)."""
    from aiida_voltnet.calculations.functions import assemble_dataset_from_csv, train_model

    dataset = assemble_dataset_from_csv(orm.SinglefileData(CSV_150))
    return train_model(dataset, model='mlp', settings={'train_overrides': {'epochs': 3}}), dataset


def count(node_class) -> int:
    return orm.QueryBuilder().append(node_class).count()
