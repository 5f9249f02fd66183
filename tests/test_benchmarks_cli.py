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
    # review: a repeated seed was averaged as two (spread 0); int() read '1_0' as 10; --json failed after the run
    ('accuracy.py', ['--seeds', '0', '0'], 'argument --seeds: repeats 0: give each once'),
    ('symmetry.py', ['--seeds', '1', '2', '1'], 'argument --seeds: repeats 1: give each once'),
    ('accuracy.py', ['--seeds', '1_0'], "argument --seeds: '1_0' is not an integer"),
    ('accuracy.py', ['--json', '/no/such/dir/acc.json'],
     "argument --json: no such directory: '/no/such/dir' (for '/no/such/dir/acc.json')"),
    ('accuracy.py', ['--data', '/no/such.csv'], "argument --data: no such file: '/no/such.csv'"),
    ('epoch_speed.py', ['--rows', '0'], "argument --rows: must be an integer >= 2, got '0'"),
    ('epoch_speed.py', ['--threads', '-1'], "argument --threads: must be an integer >= 1, got '-1'"),
    ('symmetry.py', ['--folds', '1'], "argument --folds: must be an integer >= 2, got '1'"),
    ('predict_throughput.py', ['--n', '0'], "argument --n: must be an integer >= 1, got '0'"),
    ('list_predictions.py', ['--sizes', '0'], "argument --sizes: must be an integer >= 1, got '0'"),
    ('tune_voltnet.py', ['--candidates', 'nope'], "argument --candidates: invalid choice: 'nope'"),
    ('nested_grouped.py', ['--inner-folds', '1'], "argument --inner-folds: must be an integer >= 2, got '1'"),
    ('nested_grouped.py', ['--candidates', 'nope'], "argument --candidates: invalid choice: 'nope'"),
    # hyper-parameters and members for every row, checked against each row's model before any training
    ('accuracy.py', ['--model-params', '[1]'], "a JSON object of hyper-parameters is needed, got '[1]'"),
    ('accuracy.py', ['--rows', 'voltnet:leakfree:grouped', '--model-params', '{"max_iter": "x"}'],
     "row voltnet:leakfree:grouped: model_params max_iter of model voltnet must be an integer >= 1, got 'x'"),
    ('accuracy.py', ['--rows', 'mlp:leakfree:random', '--model-params', '{"max_iter": 3}'],
     'row mlp:leakfree:random: model mlp is a torch network: model_params'),
    ('accuracy.py', ['--rows', 'krr:leakfree:random', '--members', '3'], 'row krr:leakfree:random: model krr is '
     'deterministic'),
    # checked before any measurement (it failed with a traceback after the first step, spending GPU time)
    ('gpu_training.py', ['--features', 'README.md', '--out', '/no/such/dir/gpu.json'],
     "argument --out: no such directory: '/no/such/dir' (for '/no/such/dir/gpu.json')"),
    ('gpu_training.py', ['--features', 'README.md', '--out', 'benchmarks'], "argument --out: is a directory: 'benchmarks'"),
    # review: a device this machine lacks failed at the first torch row, after the others, losing their --json;
    # tune_voltnet's --json failed after the whole run
    ('accuracy.py', ['--device', 'bogus'], "argument --device: unknown device 'bogus': use auto, cpu, cuda or cuda:N"),
    ('epoch_speed.py', ['--device', 'tpu'], "argument --device: unknown device 'tpu'"),
    ('gpu_training.py', ['--device', 'mps'], "argument --device: device 'mps' is not supported"),
    ('tune_voltnet.py', ['--json', '/no/such/dir/t.json'],
     "argument --json: no such directory: '/no/such/dir' (for '/no/such/dir/t.json')"),
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


def test_tune_test_runs_accuracy_with_the_candidate_as_model_params(tmp_path):
    """``tune_voltnet.py --test NAME`` patched MODEL_SPECS['voltnet'] in its process; it now hands the candidate to
    accuracy.py as --model-params and --members, which the JSON records: 'members10' is BASE with 10 members, and
    'leaf10' trains with min_samples_leaf 10 (another MAE than the base's on the same rows and seed)."""
    import json

    csv = tmp_path / 'rows.csv'
    lines = (ROOT.parent / 'shared/data/mp_insertion_electrodes/electrodes.csv').read_text().splitlines(True)
    csv.write_text(''.join(lines[:121]))
    tables = {}
    for name in ('base', 'leaf10', 'members10'):
        out = tmp_path / f'{name}.json'
        result = bench('tune_voltnet.py', '--test', name, '--rows', 'voltnet:leakfree:grouped', '--seeds', '0',
                       '--data', str(csv), '--json', str(out))
        assert result.returncode == 0, result.stderr
        tables[name] = json.loads(out.read_text())['table'][0]
    assert tables['base']['model_params'] == {'loss': 'absolute_error', 'max_iter': 250, 'learning_rate': 0.2,
                                              'subsample': 1.0, 'max_features': 0.5}
    assert tables['base']['members'] == 5
    assert tables['leaf10']['model_params']['min_samples_leaf'] == 10
    assert tables['leaf10']['mae'] != tables['base']['mae']
    assert tables['members10']['members'] == 10 and tables['members10']['model_params'] == tables['base'][
        'model_params'] and tables['members10']['mae'] != tables['base']['mae']  # 10 members trained, not 5
    # the candidate is a voltnet ensemble: rows of other models, or a second --model-params, are refused up front
    for arguments, message in ((['--rows', 'krr:leakfree:grouped'], 'give --rows voltnet:FEATURIZER:PROTOCOL'),
                               ([], 'no --rows, i.e. every model of accuracy.py'),
                               (['--rows', 'voltnet:leakfree:grouped', '--members', '3'],
                                "--model-params and --members are the candidate 'base'")):
        refused = bench('tune_voltnet.py', '--test', 'base', *arguments, '--seeds', '0', '--data', str(csv))
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr


def test_nested_grouped_chooses_inside_each_outer_fold(tmp_path):
    """The nested estimate: a candidate chosen per outer fold from inner folds of its training rows, the default
    scored on the same folds; too few host frameworks for the folds is named."""
    import json

    data = tmp_path / 'small.csv'
    data.write_text('\n'.join((ROOT / '..' / 'shared' / 'data' / 'mp_insertion_electrodes' / 'electrodes.csv')
                              .read_text().splitlines()[:241]) + '\n')
    result = bench('nested_grouped.py', '--data', str(data), '--folds', '2', '--inner-folds', '2', '--candidates',
                   'base', 'lr0.1x500', '--json', str(tmp_path / 'n.json'))
    assert result.returncode == 0, result.stderr
    folds = [r for r in json.loads((tmp_path / 'n.json').read_text())['results'] if 'fold' in r]
    assert [r['fold'] for r in folds] == [0, 1] and sum(r['n_test'] for r in folds) == 240
    for r in folds:
        assert r['chosen'] == min(r['inner_mae'], key=r['inner_mae'].get)
        assert r['chosen'] != 'base' or r['test_mae_chosen'] == r['test_mae_default']
    assert 'nested MAE (V)' in result.stdout
    few = bench('nested_grouped.py', '--data', str(data), '--folds', '50', '--inner-folds', '10')
    assert few.returncode == 2 and 'too few for 50 outer x 10 inner grouped folds' in few.stderr, few.stderr


def test_nested_random_uses_the_benchmark_split(tmp_path):
    """``--split random``: one outer split per seed, accuracy.py's random 90/10, with random inner folds."""
    import json

    from aiida_voltnet.ml.records import read_electrodes_csv
    from aiida_voltnet.ml.splits import make_split

    data = tmp_path / 'small.csv'
    data.write_text('\n'.join((ROOT / '..' / 'shared' / 'data' / 'mp_insertion_electrodes' / 'electrodes.csv')
                              .read_text().splitlines()[:241]) + '\n')
    result = bench('nested_grouped.py', '--data', str(data), '--split', 'random', '--inner-folds', '2',
                   '--candidates', 'base', 'lr0.1x500', '--seeds', '3', '--json', str(tmp_path / 'n.json'))
    assert result.returncode == 0, result.stderr
    assert 'random 90/10 outer split x 2 inner random folds' in result.stdout
    folds = [r for r in json.loads((tmp_path / 'n.json').read_text())['results'] if 'fold' in r]
    _train, test = make_split(read_electrodes_csv(data), 'random', seed=3, test_fraction=0.1)
    assert [r['fold'] for r in folds] == [0] and folds[0]['n_test'] == len(test) == 24
    assert folds[0]['chosen'] == min(folds[0]['inner_mae'], key=folds[0]['inner_mae'].get)


def test_the_commit_a_benchmark_prints_is_that_of_its_start(monkeypatch):
    """An hour-long run printed the commit of HEAD when it ended, which later commits had moved past its code."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import common
    finally:
        sys.path.remove(str(BENCHMARKS))
    monkeypatch.setattr(common, '_STARTED_AT', 'aaaaaaaaaaaa')
    monkeypatch.setattr(common, '_git_commit_now', lambda: 'aaaaaaaaaaaa')
    assert common.git_commit() == 'aaaaaaaaaaaa'
    monkeypatch.setattr(common, '_git_commit_now', lambda: 'bbbbbbbbbbbb')
    assert common.git_commit() == 'aaaaaaaaaaaa; HEAD bbbbbbbbbbbb when it ended'


def test_a_cuda_device_without_cuda_is_refused_before_any_row():
    """On a machine without CUDA (this one: the tests install the CPU build of torch), --device cuda is refused
    before the first row; it failed at the first torch row, after the kernel rows, and lost their --json."""
    import torch

    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    for script in ('accuracy.py', 'epoch_speed.py'):
        result = bench(script, '--device', 'cuda', '--rows', 'svr:leakfree:random', '--seeds', '0') \
            if script == 'accuracy.py' else bench(script, '--device', 'cuda')
        assert result.returncode == 2 and "argument --device: device 'cuda' was asked for but torch sees no CUDA " \
            'device' in result.stderr, result.stderr
        assert 'MAE' not in result.stdout  # nothing ran
