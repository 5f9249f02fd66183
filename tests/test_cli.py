"""The `voltnet train/predict` contract that scripts rely on (runs the installed console script)."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest

SHARED_CSV = Path(__file__).resolve().parents[1] / '..' / 'shared' / 'data' / 'mp_insertion_electrodes' / 'electrodes.csv'
VOLTNET = str(Path(sys.executable).parent / 'voltnet')


def run(*args, check=True):
    result = subprocess.run([VOLTNET, *args], capture_output=True, text=True, timeout=600)
    if check and result.returncode:
        raise AssertionError(result.stdout + result.stderr)
    return result


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp('cli')
    lines = SHARED_CSV.read_text().splitlines()
    train_csv = folder / 'train.csv'
    train_csv.write_text('\n'.join(lines[:201]) + '\n')
    # a prediction CSV without the target column
    rows = list(csv.DictReader(open(train_csv)))
    predict_csv = folder / 'predict.csv'
    with open(predict_csv, 'w', newline='') as handle:
        fields = [f for f in rows[0] if f != 'average_voltage']
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows[:25])
    run('train', '--data', str(train_csv), '--out', str(folder / 'model'), '--members', '2')
    return folder


def test_predict_csv_writes_every_row(trained):
    out = trained / 'pred.csv'
    run('predict', '--model', str(trained / 'model'), '--data', str(trained / 'predict.csv'), '--out', str(out))
    rows = list(csv.DictReader(open(out)))
    assert list(rows[0]) == ['battery_id', 'predicted_voltage', 'uncertainty'] and len(rows) == 25
    assert all(float(r['uncertainty']) >= 0 for r in rows)


def test_predict_single_pair(trained):
    result = run('predict', '--model', str(trained / 'model'), '--charged', 'FePO4', '--discharged', 'LiFePO4',
                 '--ion', 'Li')
    assert 'LiFePO4 / FePO4 (Li):' in result.stdout and ' V ' in result.stdout


def test_bad_inputs_exit_nonzero_with_a_message(trained):
    bad = run('predict', '--model', str(trained / 'model'), '--charged', 'FePO4', '--discharged', 'LiFeXx4',
              '--ion', 'Li', check=False)
    assert bad.returncode == 2 and 'formula_discharge' in bad.stderr
    weights = trained / 'model' / 'arrays.safetensors'
    broken = trained / 'broken'
    broken.mkdir()
    (broken / 'config.json').write_text((trained / 'model' / 'config.json').read_text())
    (broken / 'arrays.safetensors').write_bytes(weights.read_bytes()[:-8] + b'\0' * 8)
    bad = run('predict', '--model', str(broken), '--charged', 'FePO4', '--discharged', 'LiFePO4', '--ion', 'Li',
              check=False)
    assert bad.returncode == 3 and 'altered' in bad.stderr


def test_train_precision_reaches_the_stored_training_settings(tmp_path):
    import json

    train_csv = tmp_path / 'train.csv'
    train_csv.write_text('\n'.join(SHARED_CSV.read_text().splitlines()[:121]) + '\n')
    run('train', '--data', str(train_csv), '--out', str(tmp_path / 'bf16'), '--model', 'mlp', '--epochs', '2',
        '--precision', 'bf16')
    config = json.loads((tmp_path / 'bf16' / 'config.json').read_text())
    assert '"precision": "bf16"' in json.dumps(config)
    bad = run('train', '--data', str(train_csv), '--out', str(tmp_path / 'x'), '--precision', 'fp16', check=False)
    assert bad.returncode == 2 and "'fp16' is not one of" in bad.stderr


def test_train_offers_every_model_spec():
    """`voltnet train --model` lists its choices without importing torch; they must be the specs that exist."""
    from aiida_voltnet.cli import train
    from aiida_voltnet.ml.models import MODEL_SPECS

    option = next(p for p in train.params if p.name == 'model_name')
    assert sorted(option.type.choices) == sorted(MODEL_SPECS)
