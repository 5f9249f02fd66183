"""Fixtures of the AiiDA-layer tests: a 150-row slice of the shared MP CSV (every 25th row, all ten ions) and a
small trained model (3-epoch MLP, seconds)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiida import orm
from voltnet_test_helpers import CSV_150, FAST_MLP


@pytest.fixture
def csv_node():
    return orm.SinglefileData(CSV_150)


@pytest.fixture(scope='module')
def trained(aiida_profile):
    """csv -> dataset -> random 80/20 split -> 3-epoch MLP, all through the calculation functions."""
    from aiida_voltnet.calculations.functions import assemble_dataset_from_csv, split_dataset, train_model

    csv_file = orm.SinglefileData(CSV_150)
    dataset = assemble_dataset_from_csv(csv_file)
    split = split_dataset(dataset, kind='random', seed=0, test_fraction=0.2)
    model = train_model(split['train'], **FAST_MLP)
    return SimpleNamespace(csv=csv_file, dataset=dataset, train=split['train'], test=split['test'], model=model)


@pytest.fixture
def shipped_nodes():
    """``{name: (charged StructureData, discharged StructureData, ion)}`` of pymatgen's shipped pairs."""
    from aiida_voltnet.workflows.quickstart import shipped_structure_pairs

    return {pair['name']: (pair['charged'], pair['discharged'], pair['working_ion'].value)
            for pair in shipped_structure_pairs().values()}
