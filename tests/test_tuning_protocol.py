"""``benchmarks/tune_voltnet.py``'s validation rows: under the default protocol no row that any seed of the accuracy
benchmark's random 90/10 split holds out as a test row is fitted or scored while choosing hyper-parameters."""
import importlib.util
import sys
from pathlib import Path

import pytest

from aiida_voltnet.ml.records import read_electrodes_csv
from aiida_voltnet.ml.splits import make_split

ROOT = Path(__file__).resolve().parents[1]
SHARED_CSV = ROOT / '..' / 'shared' / 'data' / 'mp_insertion_electrodes' / 'electrodes.csv'


@pytest.fixture(scope='module')
def tune():
    sys.path.insert(0, str(ROOT / 'benchmarks'))
    try:
        spec = importlib.util.spec_from_file_location('tune_voltnet', ROOT / 'benchmarks' / 'tune_voltnet.py')
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(ROOT / 'benchmarks'))


def _test_ids(records, seeds):
    return {records[i].battery_id for seed in seeds for i in make_split(records, 'random', seed=seed)[1]}


def test_pool_protocol_never_touches_a_benchmark_test_row(tune):
    records = read_electrodes_csv(SHARED_CSV)
    tested = _test_ids(records, tune.BENCHMARK_SEEDS)
    seen = set()
    for _seed, inner, val in tune.validation_splits(records, [0, 1, 2, 3, 4]):
        used = {r.battery_id for r in inner} | {r.battery_id for r in val}
        assert not used & tested
        assert not {r.battery_id for r in inner} & {r.battery_id for r in val}
        seen |= used
    assert len(seen) == len(records) - len(tested)  # the pool is everything else
    # the earlier protocol: each seed's validation rows hold test rows of the other seeds
    leaked = 0
    for seed, _inner, val in tune.validation_splits(records, [0, 1, 2, 3, 4], protocol='seed-train'):
        leaked += len({r.battery_id for r in val} & _test_ids(records, [s for s in tune.BENCHMARK_SEEDS if s != seed]))
    assert leaked > 0
    with pytest.raises(ValueError, match='unknown tuning protocol'):
        next(tune.validation_splits(records, [0], protocol='test'))
