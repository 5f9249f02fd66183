"""The benchmark scripts refuse bad input with one argparse-style line and exit status 2: they gave tracebacks (a
missing --data, --rows 0, --folds 1, an unknown candidate), or NaN tables (--seeds with no value)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / 'benchmarks'


def bench(script, *arguments):
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *arguments], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, env={'PATH': '/usr/bin:/bin', 'OMP_NUM_THREADS': '1'})


@pytest.mark.parametrize('script, arguments, message', [
    ('accuracy.py', ['--rows', 'nope:leakfree:random'], "bad row 'nope:leakfree:random': unknown model 'nope'"),
    ('accuracy.py', ['--rows', 'krr:leakfree'], "bad row 'krr:leakfree': give model:featurizer:protocol"),
    ('accuracy.py', ['--seeds'], 'argument --seeds: expected at least one argument'),
    ('accuracy.py', ['--seeds', '-1'], "argument --seeds: must be an integer >= 0, got '-1'"),
    ('accuracy.py', ['--data', '/no/such.csv'], "argument --data: no such file: '/no/such.csv'"),
    ('epoch_speed.py', ['--rows', '0'], "argument --rows: must be an integer >= 2, got '0'"),
    ('epoch_speed.py', ['--threads', '-1'], "argument --threads: must be an integer >= 1, got '-1'"),
    ('symmetry.py', ['--folds', '1'], "argument --folds: must be an integer >= 2, got '1'"),
    ('predict_throughput.py', ['--n', '0'], "argument --n: must be an integer >= 1, got '0'"),
    ('tune_voltnet.py', ['--candidates', 'nope'], "argument --candidates: invalid choice: 'nope'"),
    # checked before any measurement (it failed with a traceback after the first step, spending GPU time)
    ('gpu_training.py', ['--features', 'README.md', '--out', '/no/such/dir/gpu.json'],
     "argument --out: no such directory: '/no/such/dir' (for '/no/such/dir/gpu.json')"),
    ('gpu_training.py', ['--features', 'README.md', '--out', 'benchmarks'], "argument --out: is a directory: 'benchmarks'"),
])
def test_bad_arguments_exit_2_with_one_line(script, arguments, message):
    result = bench(script, *arguments)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and 'Traceback' not in result.stderr, result.stderr


def test_an_unreadable_data_file_is_named(tmp_path):
    bad = tmp_path / 'bad.csv'
    bad.write_text('a,b\n1,2\n')
    result = bench('accuracy.py', '--data', str(bad), '--rows', 'krr:leakfree:random', '--seeds', '0')
    assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines() == [
        f'accuracy.py: error: cannot read --data: {bad}, line 1: missing required column(s): battery_id, '
        'formula_charge, formula_discharge, working_ion']


def test_quick_shortens_every_torch_model():
    """``--quick`` left voltnet_mlp at its full epochs: the quick epochs now go to every model of kind torch."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import accuracy
    finally:
        sys.path.remove(str(BENCHMARKS))
    from aiida_voltnet.ml.models import MODEL_SPECS

    assert set(accuracy.torch_models()) == {name for name, spec in MODEL_SPECS.items() if spec['kind'] == 'torch'}
    assert {'mha_resnet', 'mlp', 'lstm', 'voltnet_mlp'} <= set(accuracy.torch_models())
