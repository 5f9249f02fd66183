"""The `voltnet train/predict` contract that scripts rely on (runs the installed console script)."""
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

SHARED_CSV = Path(__file__).resolve().parents[1] / '..' / 'shared' / 'data' / 'mp_insertion_electrodes' / 'electrodes.csv'
VOLTNET = str(Path(sys.executable).parent / 'voltnet')


def run(*args, check=True, cwd=None, env=None):
    result = subprocess.run([VOLTNET, *args], capture_output=True, text=True, timeout=600, cwd=cwd, env=env)
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
    assert 'Warning' not in result.stderr  # Fe, P and O are in the training hosts
    spaced = run('predict', '--model', str(trained / 'model'), '--charged', ' FePO4', '--discharged', 'LiFePO4 ',
                 '--ion', ' Li')  # read as a CSV's values are: ' Li' was refused as an unknown working ion
    assert spaced.stdout == result.stdout
    # a host with rounded amounts is read as written (300 atoms per integer formula unit): the CLI says so
    rounded = run('predict', '--model', str(trained / 'model'), '--charged', 'Ni0.33Mn0.33Co0.34O2',
                  '--discharged', 'LiNi0.33Mn0.33Co0.34O2', '--ion', 'Li')
    assert 'Warning: host amounts that look rounded: Mn0.33Co0.34Ni0.33O2 is read as 300 atoms' in rounded.stderr
    assert 'Traceback' not in rounded.stderr and 'featurizers.py' not in rounded.stderr


def test_a_host_element_no_training_host_had_is_called_extrapolation(trained):
    # the 200 training rows have no Sr in any host (see test_featurizers for the element set itself)
    result = run('predict', '--model', str(trained / 'model'), '--charged', 'SrFeO3', '--discharged', 'LiSrFeO3',
                 '--ion', 'Li')
    assert 'LiSrFeO3 / SrFeO3 (Li):' in result.stdout
    assert ("Warning: 1 of 1 record(s) have host elements that no training electrode contained (Sr: 1; the first "
            "is battery_id 'SrFeO3->LiSrFeO3')") in result.stderr and 'extrapolation' in result.stderr


def test_an_ion_content_beyond_the_training_range_is_called_extrapolation(trained):
    # a valid formula (a typo for LiFePO4, say) with 100 Li per 6 host atoms: no training Li electrode has over 3
    result = run('predict', '--model', str(trained / 'model'), '--charged', 'FePO4', '--discharged', 'Li100FePO4',
                 '--ion', 'Li')
    assert 'Li100FePO4 / FePO4 (Li):' in result.stdout
    assert ("Warning: 1 of 1 record(s) have an ion content outside the training electrodes' range (the first is "
            "battery_id 'FePO4->Li100FePO4': Li ions per host atom 16.7 (training ") in result.stderr
    assert 'Li change 16.7' in result.stderr and 'extrapolation' in result.stderr


def test_a_trace_of_a_transition_metal_is_called_extrapolation(trained, tmp_path):
    """Found by review: 0.05 at.% of Co in Sb2S3 gives a formal Co oxidation state of +12,000 by charge balance
    (and a 2-member MLP predicted 324 V), with no word of extrapolation: its elements and ion content were all seen
    in training. Features far beyond the training range are now flagged, in the warning and the column."""
    model = str(trained / 'model')
    trace = run('predict', '--model', model, '--charged', 'Sb1.999Co0.001S3', '--discharged', 'Li2Sb1.999Co0.001S3',
                '--ion', 'Li')
    assert "record(s) have features far beyond the training electrodes' range (the first is battery_id " \
           "'Sb1.999Co0.001S3->Li2Sb1.999Co0.001S3': " in trace.stderr, trace.stderr
    assert re.search(r'\d+ of \d+ features beyond the training range \(the farthest by [\d.e+]+ times its width\)',
                     trace.stderr)
    data = tmp_path / 'trace.csv'
    data.write_text('battery_id,formula_charge,formula_discharge,working_ion\n'
                    'plain,CrF6,K3CrF6,K\ntrace,Sb1.999Co0.001S3,Li2Sb1.999Co0.001S3,Li\n')  # plain: a training row
    run('predict', '--model', model, '--data', str(data), '--out', str(tmp_path / 'p.csv'), '--extrapolation-column')
    rows = list(csv.DictReader(open(tmp_path / 'p.csv')))
    assert 'features beyond the training range' not in rows[0]['extrapolation']
    assert 'features beyond the training range (the farthest by' in rows[1]['extrapolation']


def test_a_data_row_with_its_end_members_swapped_is_called_extrapolation(trained, tmp_path):
    """--charged/--discharged refuses the ion-rich member as charged; a --data row is predicted as given (MP has
    22 such rows), with one warning that says so, not the reader's log line as well."""
    data, out = tmp_path / 'swapped.csv', tmp_path / 'out.csv'
    data.write_text('battery_id,formula_charge,formula_discharge,working_ion\nfwd,FePO4,LiFePO4,Li\n'
                    'rev,LiFePO4,FePO4,Li\n')
    result = run('predict', '--model', str(trained / 'model'), '--data', str(data), '--out', str(out))
    assert len(list(csv.DictReader(open(out)))) == 2
    data.write_text('battery_id,formula_charge,formula_discharge,working_ion\nfwd,FePO4,LiFePO4,Li\n')
    one = run('predict', '--model', str(trained / 'model'), '--data', str(data), '--out', str(tmp_path / 'one.csv'))
    assert one.stdout.strip() == f'Wrote 1 prediction to {tmp_path / "one.csv"}'  # not '1 predictions'
    assert ("Warning: 1 of 2 record(s) list the ion-rich end member as charged (the first is battery_id 'rev', "
            "line 3)") in result.stderr and 'swap the formulas' in result.stderr, result.stderr
    assert 'kept as given' not in result.stderr and result.stderr.count('ion-rich') == 1, result.stderr
    swapped = run('predict', '--model', str(trained / 'model'), '--charged', 'LiFePO4', '--discharged', 'FePO4',
                  '--ion', 'Li', check=False)
    assert swapped.returncode == 2 and 'swap them' in swapped.stderr


def test_the_extrapolation_column_flags_every_such_row(trained, tmp_path):
    """Found by review: the warning named only the first of several extrapolated rows, and OUT.csv said nothing of
    them; --extrapolation-column adds a column with each row's reasons (off by default: the three-column contract)."""
    data, out = tmp_path / 'mixed.csv', tmp_path / 'out.csv'
    data.write_text('battery_id,formula_charge,formula_discharge,working_ion\nfwd,FePO4,LiFePO4,Li\n'
                    'sr,SrFeO3,LiSrFeO3,Li\nrev,LiFePO4,FePO4,Li\nrich,FePO4,Li100FePO4,Li\n')
    plain = run('predict', '--model', str(trained / 'model'), '--data', str(data), '--out', str(out))
    assert list(next(csv.DictReader(open(out)))) == ['battery_id', 'predicted_voltage', 'uncertainty']
    assert plain.stdout.strip() == f'Wrote 4 predictions to {out}'
    assert '--extrapolation-column flags each such row' in plain.stderr
    again = run('predict', '--model', str(trained / 'model'), '--data', str(data), '--out', str(out),
                '--extrapolation-column')
    assert again.stdout.strip() == f'Wrote 4 predictions to {out} (it replaces the file that was there)'
    flags = {row['battery_id']: row['extrapolation'] for row in csv.DictReader(open(out))}
    assert flags['fwd'] == '' and flags['rev'] == 'end members reversed'
    assert flags['sr'].startswith('unseen host elements Sr')  # and maybe features beyond the range: Sr's properties
    assert flags['rich'].startswith('Li ions per host atom 16.7 (training ')
    # lines end in '\n' as the seed's CSV: with '\r\n', awk and grep saw fwd's empty field as '\r', flagged (review)
    assert b'\r' not in out.read_bytes() and out.read_text().splitlines()[1].endswith(',')
    single = run('predict', '--model', str(trained / 'model'), '--charged', 'FePO4', '--discharged', 'LiFePO4',
                 '--ion', 'Li', '--extrapolation-column', check=False)
    assert single.returncode == 2 and '--extrapolation-column goes with --data' in single.stderr


def test_predict_out_writes_through_links_and_into_special_files(trained, tmp_path):
    """Found by review: OUT.csv was renamed into place over whatever --out named, so a symlink became a regular file
    (its target untouched), a device node or FIFO was replaced (as root, `--out /dev/null` would have replaced the
    system's /dev/null), and a 250-character name failed (its temporary name was 9 characters longer)."""
    import os
    import threading

    model, data = str(trained / 'model'), str(trained / 'predict.csv')
    (tmp_path / 'results').mkdir()
    real = tmp_path / 'results' / 'real.csv'
    real.write_text('old\n')
    link = tmp_path / 'link.csv'
    link.symlink_to(real)
    result = run('predict', '--model', model, '--data', data, '--out', str(link))
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert len(list(csv.DictReader(open(real)))) == 25
    assert result.stdout.strip() == f'Wrote 25 predictions to {link} (it replaces the file that was there)'
    dangling = tmp_path / 'dangling.csv'
    dangling.symlink_to(tmp_path / 'results' / 'new.csv')
    run('predict', '--model', model, '--data', data, '--out', str(dangling))
    assert dangling.is_symlink() and len(list(csv.DictReader(open(tmp_path / 'results' / 'new.csv')))) == 25

    fifo = tmp_path / 'pipe'
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    result = run('predict', '--model', model, '--data', data, '--out', str(fifo))
    reader.join(timeout=60)
    assert fifo.exists() and not fifo.is_file()  # still the FIFO
    assert received[0].startswith('battery_id,predicted_voltage,uncertainty\n') and received[0].count('\n') == 26
    assert result.stdout == '' and result.stderr.strip().endswith(f'Wrote 25 predictions to {fifo}')
    assert not list(tmp_path.glob('.*.partial')) and not list((tmp_path / 'results').glob('.*.partial'))

    to_stdout = run('predict', '--model', model, '--data', data, '--out', '/dev/stdout')
    assert to_stdout.stdout.startswith('battery_id,predicted_voltage,uncertainty\n')
    assert to_stdout.stdout.count('\n') == 26 and 'Wrote 25 predictions to /dev/stdout' in to_stdout.stderr

    long_name = tmp_path / ('p' * 246 + '.csv')
    run('predict', '--model', model, '--data', data, '--out', str(long_name))
    assert len(list(csv.DictReader(open(long_name)))) == 25


def test_a_single_member_model_says_its_uncertainty_is_no_error_bar(tmp_path):
    train_csv = tmp_path / 'train.csv'
    train_csv.write_text('\n'.join(SHARED_CSV.read_text().splitlines()[:121]) + '\n')
    run('train', '--data', str(train_csv), '--out', str(tmp_path / 'svr'), '--model', 'svr')
    result = run('predict', '--model', str(tmp_path / 'svr'), '--charged', 'FePO4', '--discharged', 'LiFePO4',
                 '--ion', 'Li')
    assert '+/- 0.000 V' in result.stdout
    assert 'is a single svr model, no ensemble: its uncertainty is 0, not an error bar' in result.stderr


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
    # a directory that holds no model is a wrong argument (2), not an altered model (3)
    bad = run('predict', '--model', str(trained), '--charged', 'FePO4', '--discharged', 'LiFePO4', '--ion', 'Li',
              check=False)
    assert bad.returncode == 2 and 'is not a voltnet model directory: config.json is missing' in bad.stderr


def test_train_precision_reaches_the_stored_training_settings(tmp_path):
    train_csv = tmp_path / 'train.csv'
    train_csv.write_text('\n'.join(SHARED_CSV.read_text().splitlines()[:121]) + '\n')
    run('train', '--data', str(train_csv), '--out', str(tmp_path / 'bf16'), '--model', 'mlp', '--epochs', '2',
        '--precision', 'bf16')
    config = json.loads((tmp_path / 'bf16' / 'config.json').read_text())
    assert '"precision": "bf16"' in json.dumps(config)
    bad = run('train', '--data', str(train_csv), '--out', str(tmp_path / 'x'), '--precision', 'fp16', check=False)
    assert bad.returncode == 2 and "'fp16' is not one of" in bad.stderr


def test_train_model_params_reach_the_model_and_bad_ones_are_refused(tmp_path):
    train_csv = tmp_path / 'train.csv'
    train_csv.write_text('\n'.join(SHARED_CSV.read_text().splitlines()[:121]) + '\n')
    run('train', '--data', str(train_csv), '--out', str(tmp_path / 'm'), '--members', '1',
        '--model-param', 'max_iter=3', '--model-param', 'loss=squared_error')
    config = json.loads((tmp_path / 'm' / 'config.json').read_text())
    assert config['metadata']['model_params'] == {'max_iter': 3, 'loss': 'squared_error'}
    for arguments, message in [(['--model-param', 'max_iter'], "'max_iter' is not NAME=VALUE"),
                               (['--model-param', 'max_iter=3', '--model-param', 'max_iter=4'],
                                'max_iter is given twice'),
                               (['--model-param', 'max_iter=0'], 'max_iter of model voltnet must be an integer >= 1'),
                               (['--model', 'mlp', '--model-param', 'max_iter=3'], 'model mlp is a torch network'),
                               (['--epochs', '3'], '--epochs: model voltnet is no torch network and trains no epochs')]:
        bad = run('train', '--data', str(train_csv), '--out', str(tmp_path / 'x'), *arguments, check=False)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr
        assert not (tmp_path / 'x' / 'config.json').exists() and 'Training ' not in bad.stderr


def test_cuda_asked_for_a_tree_model_is_said_to_be_ignored(tmp_path, monkeypatch):
    """A tree model fits on the CPU: on a machine with CUDA, --device cuda was accepted and ignored in silence
    (found by review). Here torch is told that CUDA is present, as on a GPU machine; the trees never ask for it."""
    import torch
    from click.testing import CliRunner

    from aiida_voltnet.cli import cli

    train_csv = tmp_path / 'train.csv'
    train_csv.write_text('\n'.join(SHARED_CSV.read_text().splitlines()[:121]) + '\n')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    result = CliRunner().invoke(cli, ['train', '--data', str(train_csv), '--out', str(tmp_path / 'm'), '--members',
                                      '1', '--model-param', 'max_iter=3', '--device', 'cuda'])
    assert result.exit_code == 0, result.output + repr(result.exception)
    warning = "WARNING: model voltnet is fitted by scikit-learn on the CPU: device 'cuda' applies to torch models " \
              "only (mha_resnet, mlp, lstm"
    assert warning in result.output
    assert result.output.index(warning) < result.output.index('Wrote ')  # said when the training starts


def test_model_param_values_read_as_python_numbers_never_evaluated():
    """Found by review: values were read by JSON's grammar, so learning_rate=.1, 1., +5 and 05 were text and
    refused, and max_iter=5e1 was the float 50.0, refused as no integer."""
    from aiida_voltnet.cli import _model_param

    given = ('a=.1', 'b=1.', 'c=+5', 'd=05', 'e=5e1', 'f=1.0', 'g=squared_error', 'h=1_000', 'i=nan', 'j=__import__')
    assert _model_param(None, None, given) == {'a': 0.1, 'b': 1.0, 'c': 5, 'd': 5, 'e': 50, 'f': 1.0,
                                               'g': 'squared_error', 'h': 1000, 'i': pytest.approx(float('nan'),
                                                                                                   nan_ok=True),
                                               'j': '__import__'}
    assert [type(v) for v in _model_param(None, None, ('x=5e1', 'y=5.0e1', 'z=1e400')).values()] == [int, float, float]


def test_train_offers_every_model_spec():
    """`voltnet train --model` lists its choices without importing torch; they must be the specs that exist."""
    from aiida_voltnet.cli import train
    from aiida_voltnet.ml.models import MODEL_SPECS

    option = next(p for p in train.params if p.name == 'model_name')
    assert sorted(option.type.choices) == sorted(MODEL_SPECS)


def test_train_seed_bound_is_the_models_bound():
    """`voltnet train --seed` states its range as a literal (importing the models would load torch); it must be
    the one `check_training_options` enforces."""
    from aiida_voltnet.cli import train
    from aiida_voltnet.ml.models import MAX_SEED

    option = next(p for p in train.params if p.name == 'seed')
    assert (option.type.min, option.type.max) == (0, MAX_SEED)


def test_bad_arguments_are_refused_before_any_work(trained, tmp_path):
    """Each refusal exits 2 with a message naming the argument, and leaves no file or directory behind."""
    model, data = str(trained / 'model'), str(trained / 'train.csv')
    not_a_dir = tmp_path / 'plain.txt'
    not_a_dir.write_text('x')
    (tmp_path / 'dangling').symlink_to(tmp_path / 'missing')
    cases = [
        (('train', '--data', data, '--out', str(tmp_path / 'm'), '--members', '0'), "'--members': 0 is not in the range"),
        (('train', '--data', data, '--out', str(not_a_dir / 'm')), 'is a file, not a directory'),
        (('train', '--data', data, '--out', str(tmp_path / 'm'), '--device', 'foo'), "unknown device 'foo'"),
        # a dangling link trained in full, then failed with 'File exists' (found by review)
        (('train', '--data', data, '--out', str(tmp_path / 'dangling')), 'dangling: a symbolic link to '),
        (('predict', '--model', model, '--data', data, '--out', str(tmp_path / 'nodir' / 'p.csv')),
         'does not exist'),
        (('predict', '--model', model, '--charged', 'LiFePO4', '--discharged', 'FePO4', '--ion', 'Li'),
         'must hold more Li per host atom than --charged LiFePO4'),
        (('report', '--out', str(tmp_path / 'r'), '--seeds', 'a,b', '--no-provenance'), '--seeds must be'),
        (('report', '--out', str(tmp_path / 'r'), '--seeds', '-1', '--no-provenance'), '--seeds must lie in 0..'),
        # int() read '1_0' as seed 10 and '\u0663' (Arabic-Indic three) as seed 3 (found by review)
        (('report', '--out', str(tmp_path / 'r'), '--seeds', '1_0', '--no-provenance'), '--seeds must be comma-sep'),
        (('report', '--out', str(tmp_path / 'r'), '--seeds', '0,\u0663', '--no-provenance'), '--seeds must be comma'),
        (('report', '--out', str(tmp_path / 'r'), '--epochs', '0', '--no-provenance'), "'--epochs': 0 is not in"),
        # a profile named and missing: it went on, quietly without provenance
        (('report', '--out', str(tmp_path / 'r'), '--quick', '--profile', 'nosuch'),
         '--profile nosuch: no loadable AiiDA profile'),
        (('train', '--data', data, '--out', str(tmp_path / 'm'), '--seed', '4294967295'), "'--seed': 4294967295"),
        # a directory nothing can be created in (/proc), found before training, not by a traceback after it
        (('train', '--data', data, '--out', '/proc/voltnet-model'), 'cannot create files in /proc'),
        (('predict', '--model', model, '--data', data, '--out', '/proc/p.csv'), 'cannot create files in /proc'),
    ]
    for args, message in cases:
        result = run(*args, check=False)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['dangling', 'plain.txt']


def test_model_config_that_is_not_an_object_is_a_bad_model(trained, tmp_path):
    broken = tmp_path / 'broken'
    broken.mkdir()
    (broken / 'arrays.safetensors').write_bytes((trained / 'model' / 'arrays.safetensors').read_bytes())
    (broken / 'config.json').write_text('[1, 2]')
    bad = run('predict', '--model', str(broken), '--charged', 'FePO4', '--discharged', 'LiFePO4', '--ion', 'Li',
              check=False)
    assert bad.returncode == 3 and 'expected a JSON object' in bad.stderr


@pytest.mark.parametrize('edit, resign, message', [
    (lambda c: c.update(metadata=None), False, '"metadata" must be a JSON object'),
    (lambda c: c.update(members=[]), True, '"members" must be a non-empty list'),
    (lambda c: c.update(featurizer=[]), True, 'malformed model config (TypeError'),
    (lambda c: c['members'][0].pop('kind'), True, "malformed model config (KeyError: 'kind')"),
])
def test_a_structurally_edited_model_config_is_a_bad_model(trained, tmp_path, edit, resign, message):
    """An edited config.json, re-signed (its model_version recomputed) or not, is refused with exit 3 and a
    message, not a traceback (exit 1) or an error at prediction time."""
    import shutil

    from aiida_voltnet.ml.models import VoltageModel

    edited = tmp_path / 'edited'
    shutil.copytree(trained / 'model', edited)
    config = json.loads((edited / 'config.json').read_text())
    edit(config)
    if resign:
        config['model_version'] = VoltageModel.version_hash(config)
    (edited / 'config.json').write_text(json.dumps(config))
    bad = run('predict', '--model', str(edited), '--charged', 'FePO4', '--discharged', 'LiFePO4', '--ion', 'Li',
              check=False)
    assert bad.returncode == 3 and message in bad.stderr and 'Traceback' not in bad.stderr, bad.stderr


def test_train_replaces_a_model_but_not_a_users_files(tmp_path):
    """--out a directory with the user's own config.json: it was overwritten, with 'Replacing the model in ...'."""
    data = tmp_path / 'train.csv'
    data.write_text('\n'.join(SHARED_CSV.read_text().splitlines()[:61]) + '\n')
    project = tmp_path / 'project'
    project.mkdir()
    (project / 'config.json').write_text('{"my": "project settings"}')
    (tmp_path / 'weights').mkdir()
    (tmp_path / 'weights' / 'arrays.safetensors').write_bytes(b'not mine to replace')
    for out, why in ((project, 'its config.json is no voltnet model config'),
                     (tmp_path / 'weights', 'it holds arrays.safetensors without a config.json')):
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        bad = run('train', '--data', str(data), '--out', str(out), '--model', 'krr', check=False)
        assert bad.returncode == 2 and f'--out {out}: {why}' in bad.stderr, bad.stderr
        assert 'Training ' not in bad.stderr and {p.name: p.read_bytes() for p in out.iterdir()} == before
    model = tmp_path / 'model'
    run('train', '--data', str(data), '--out', str(model), '--model', 'krr')
    again = run('train', '--data', str(data), '--out', str(model), '--model', 'krr', '--seed', '1')
    assert f'Replacing the model in {model}' in again.stderr


def test_a_training_row_without_a_voltage_is_named_with_its_file(tmp_path):
    lines = SHARED_CSV.read_text().splitlines()
    header = lines[0].split(',')
    rows = list(csv.reader(lines[1:41]))
    rows[6][header.index('average_voltage')] = ''
    data = tmp_path / 'no_voltage.csv'
    with open(data, 'w', newline='') as handle:
        csv.writer(handle).writerows([header, *rows])
    result = run('train', '--data', str(data), '--out', str(tmp_path / 'm'), '--model', 'krr', check=False)
    assert result.returncode == 2, result.stderr
    assert f"{data}: line 8, battery_id '{rows[6][0]}'" in result.stderr and 'average_voltage' in result.stderr
    assert not (tmp_path / 'm').exists() and 'Training ' not in result.stderr  # refused, not a training that failed


def test_one_host_framework_trains_with_an_uncalibrated_spread(tmp_path):
    """The default ensemble's spread calibration holds out frameworks; with a single one it cannot, so the model
    is trained without it and a warning says so (it failed with scikit-learn's message about an empty train set)."""
    lines = SHARED_CSV.read_text().splitlines()
    column = next(csv.reader(lines[:1])).index('framework_formula')
    same = [line for line in lines[1:] if next(csv.reader([line]))[column] == 'NiO2']
    assert len(same) == 55  # the trees need 40 rows to split at all
    data = tmp_path / 'one_framework.csv'
    data.write_text('\n'.join([lines[0], *same]) + '\n')
    result = run('train', '--data', str(data), '--out', str(tmp_path / 'm'), '--members', '2')
    assert 'WARNING: the uncertainty calibration needs electrodes of at least two host frameworks' in result.stderr
    config = json.loads((tmp_path / 'm' / 'config.json').read_text())
    assert 'uncertainty_calibration' not in config['metadata']


def test_predict_refuses_a_model_of_another_target(trained, tmp_path):
    """A max_delta_volume model (trained through the API or a work chain) printed its volume changes as
    "+/- ... V" and wrote them under predicted_voltage."""
    from aiida_voltnet.ml.models import train_voltage_model
    from aiida_voltnet.ml.records import read_electrodes_csv

    records = read_electrodes_csv(trained / 'train.csv')
    train_voltage_model(records, model='krr', target='max_delta_volume').save(tmp_path / 'volume')
    for arguments in (['--charged', 'FePO4', '--discharged', 'LiFePO4', '--ion', 'Li'],
                      ['--data', str(trained / 'predict.csv'), '--out', str(tmp_path / 'p.csv')]):
        result = run('predict', '--model', str(tmp_path / 'volume'), *arguments, check=False)
        assert result.returncode == 2, result.stdout + result.stderr
        assert 'was trained to predict max_delta_volume, not the average voltage' in result.stderr
    assert not (tmp_path / 'p.csv').exists()


def test_quickstart_tells_a_launch_refusal_from_an_error_of_the_run(tmp_path):
    """A ValueError of the run (a step that failed after the work chain started) was reported as if the launch had
    refused the CSV (exit 2, no pointer to the process); now it is exit 1 with the process to inspect. The error is
    injected into the real quickstart command: once before anything is stored, once after a real process ran."""
    import os
    import sys

    script = tmp_path / 'inject.py'
    script.write_text(
        'import sys\n'
        'from aiida.engine import calcfunction\n'
        'from aiida_voltnet.workflows import quickstart\n'
        'from aiida_voltnet.calculations.functions import assemble_dataset_from_csv\n'
        'from aiida import orm\n'
        '@calcfunction\n'
        'def step(dataset):\n'
        '    raise ValueError("an error of the injected kind")\n'
        'def failing(csv_path, **kwargs):\n'
        '    if sys.argv[1] != "refused":\n'
        '        dataset = assemble_dataset_from_csv(orm.SinglefileData(str(csv_path)))\n'
        '        if sys.argv[1] == "excepted":\n'
        '            step(dataset)\n'
        '    raise ValueError("an error of the injected kind")\n'
        'quickstart.run_quickstart = failing\n'
        'from aiida_voltnet.cli import cli\n'
        'cli(["quickstart", "--data", sys.argv[2]])\n')
    data = tmp_path / 'data.csv'
    data.write_text('\n'.join(SHARED_CSV.read_text().splitlines()[:151]) + '\n')
    env = {**os.environ, 'AIIDA_PATH': str(tmp_path / 'aiida'), 'OMP_NUM_THREADS': '1'}

    def quickstart(case):
        return subprocess.run([sys.executable, str(script), case, str(data)], capture_output=True, text=True,
                              env=env, timeout=600)

    refused = quickstart('refused')
    assert refused.returncode == 2 and f'Error: {data}: an error of the injected kind' in refused.stderr, \
        refused.stderr
    excepted = quickstart('excepted')
    assert excepted.returncode == 1, excepted.stderr  # aiida-core logs the step's traceback; the CLI's word is last
    pk = re.fullmatch(r'Error: the run failed: ValueError: an error of the injected kind \(verdi process report (\d+) '
                      r'says where\)', excepted.stderr.rstrip().splitlines()[-1])
    assert pk, excepted.stderr
    report = subprocess.run([str(Path(VOLTNET).parent / 'verdi'), 'process', 'show', pk.group(1)],
                            capture_output=True, text=True, env=env, timeout=600)
    assert 'step' in report.stdout and 'Excepted' in report.stdout, report.stdout
    later = quickstart('later')
    assert later.returncode == 1 and 'Error: the run stopped after its training: a later launch was refused: an ' \
        'error of the injected kind' in later.stderr, later.stderr


def test_aiida_commands_without_a_profile_or_with_bad_data_store_nothing(trained, tmp_path):
    """quickstart checks the CSV before it creates a profile; provenance without any profile says what to do."""
    import os

    rows = list(csv.DictReader(open(trained / 'train.csv')))[:3]
    rows[0]['working_ion'] = 'Xx'
    bad_csv = tmp_path / 'bad.csv'
    with open(bad_csv, 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    env = {**os.environ, 'AIIDA_PATH': str(tmp_path / 'aiida')}
    bad = subprocess.run([VOLTNET, 'quickstart', '--data', str(bad_csv)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert bad.returncode == 2 and "line 2" in bad.stderr and "field 'working_ion'" in bad.stderr, bad.stderr
    assert not (tmp_path / 'aiida' / '.aiida' / 'repository').exists()
    # too few rows for the protocol's trees once its grouped split has held out the test frameworks: refused before
    # the profile too (43 records passed a check of the whole file, and the work chain then failed at the training)
    tiny = tmp_path / 'tiny.csv'
    tiny.write_text('\n'.join(SHARED_CSV.read_text().splitlines()[:44]) + '\n')
    few = subprocess.run([VOLTNET, 'quickstart', '--data', str(tiny)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert few.returncode == 2 and f'{tiny}: model voltnet needs at least 40 training rows, got 38' in few.stderr \
        and 'the grouped split of the 43 records holds 5 out for the test' in few.stderr, few.stderr
    assert 'Warning' not in few.stderr, few.stderr  # aiida-core's creation of its folder, a bare Python warning
    assert not (tmp_path / 'aiida' / '.aiida' / 'repository').exists()
    # what the work chain's launch refused with a ValueError traceback (exit 1), after creating the profile: a row
    # without the voltage; the paper protocol on a CSV without the columns its featurizer needs
    table = list(csv.DictReader(SHARED_CSV.read_text().splitlines()[:151]))
    no_voltage, minimal = tmp_path / 'no_voltage.csv', tmp_path / 'minimal.csv'
    for path, fields, edit in ((no_voltage, list(table[0]), {'average_voltage': ''}),
                               (minimal, ['battery_id', 'formula_charge', 'formula_discharge', 'working_ion',
                                          'average_voltage'], {})):
        with open(path, 'w', newline='') as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction='ignore')
            writer.writeheader()
            writer.writerows([{**row, **(edit if i == 3 else {})} for i, row in enumerate(table)])
    for path, protocol, message in (
            (no_voltage, 'fast', f'Error: {no_voltage}: 1 record(s) have no average_voltage to train or evaluate on, '
                                 f"e.g. line 5 (battery_id '{table[3]['battery_id']}')"),
            (minimal, 'paper', f"Error: {minimal}: line 2, battery_id '{table[0]['battery_id']}', field "
                               "'capacity_grav': the paper featurizer needs capacity_grav")):
        refused = subprocess.run([VOLTNET, 'quickstart', '--data', str(path), '--protocol', protocol],
                                 capture_output=True, text=True, env=env, timeout=600)
        assert refused.returncode == 2 and refused.stderr.startswith(message), refused.stderr
        assert not (tmp_path / 'aiida' / '.aiida' / 'repository').exists()
    lost = subprocess.run([VOLTNET, 'provenance', '1'], capture_output=True, text=True, env=env, timeout=600)
    assert lost.returncode == 2 and 'no default AiiDA profile: pass --profile NAME' in lost.stderr, lost.stderr
    # a profile whose SQLite storage is gone: a message, not a FileNotFoundError traceback
    import shutil

    subprocess.run([str(Path(VOLTNET).parent / 'verdi'), 'presto', '--profile-name', 'gone'], capture_output=True,
                   env=env, check=True, timeout=600)
    for storage in (tmp_path / 'aiida' / '.aiida' / 'repository').glob('sqlite_dos_*'):
        shutil.rmtree(storage)
    subprocess.run([str(Path(VOLTNET).parent / 'verdi'), 'presto', '--profile-name', 'empty'], capture_output=True,
                   env=env, check=True, timeout=600)
    absent = subprocess.run([VOLTNET, 'provenance', '99', '--profile', 'empty'], capture_output=True, text=True,
                            env=env, timeout=600)  # which profile was searched: one may have several
    assert absent.returncode == 2 and "no unique node '99' in AiiDA profile 'empty'" in absent.stderr, absent.stderr
    gone = subprocess.run([VOLTNET, 'provenance', '1', '--profile', 'gone'], capture_output=True, text=True, env=env,
                          timeout=600)
    assert gone.returncode == 2 and "cannot open the storage of AiiDA profile 'gone': FileNotFoundError" \
        in gone.stderr and 'Traceback' not in gone.stderr, gone.stderr
    # quickstart reusing it said 'Reusing ...' and then printed a FileNotFoundError traceback (exit 1)
    reused = subprocess.run([VOLTNET, 'quickstart', '--data', str(tiny.parent / 'minimal.csv'), '--profile', 'gone',
                             '--protocol', 'fast'], capture_output=True, text=True, env=env, timeout=600)
    assert reused.returncode == 2 and "cannot open the storage of AiiDA profile 'gone': FileNotFoundError" \
        in reused.stderr and 'Traceback' not in reused.stderr, reused.stderr
    script = Path(__file__).resolve().parents[1] / 'examples' / 'aiida_provenance.py'
    example = subprocess.run([sys.executable, str(script), '--profile', 'gone'], capture_output=True, text=True,
                             env=env, timeout=600)
    assert example.returncode == 1 and "cannot open the storage of profile 'gone' (FileNotFoundError" \
        in example.stderr and 'Traceback' not in example.stderr, example.stderr
    # voltnet report blamed the CSV ('...database.sqlite: no such file; pass --data CSV')
    full = tmp_path / 'full.csv'
    full.write_text('\n'.join(SHARED_CSV.read_text().splitlines()[:151]) + '\n')
    report = subprocess.run([VOLTNET, 'report', '--out', str(tmp_path / 'report'), '--quick', '--data', str(full),
                             '--profile', 'gone'], capture_output=True, text=True, env=env, timeout=600)
    assert report.returncode == 2 and '--profile gone: no loadable AiiDA profile (gone: FileNotFoundError: ' \
        in report.stderr and 'pass --data' not in report.stderr, report.stderr
    # a profile name verdi refuses: it was added to the configuration (verdi could then neither use nor delete it)
    # and the run died with a logging traceback; '' used the default profile while saying 'Reusing profile ''
    config = tmp_path / 'aiida' / '.aiida' / 'config.json'
    profiles = json.loads(config.read_text())['profiles'].keys()
    for name in ('a/b', ''):
        named = subprocess.run([VOLTNET, 'quickstart', '--data', str(tiny.parent / 'minimal.csv'), '--profile', name],
                               capture_output=True, text=True, env=env, timeout=600)
        assert named.returncode == 2 and "Invalid value for '--profile'" in named.stderr, named.stderr
        assert json.loads(config.read_text())['profiles'].keys() == profiles


def test_provenance_tree_prints_lists_of_records_as_items(capsys):
    """A work chain's `predictions` (and a dataset's `splits`) are lists of dicts: they printed as one line of
    Python repr, all battery_ids included."""
    from aiida_voltnet.cli.aiida_commands import _print_tree

    _print_tree({'workflow': {'pk': 1}, 'predictions': [{'pk': 2, 'battery_ids': list(range(20))}, {'pk': 3}],
                 'ions': ['Li', 'Na']})
    assert capsys.readouterr().out.splitlines() == [
        'workflow:', '  pk: 1', 'predictions: (2)', '  - [0]', '    pk: 2',
        '    battery_ids: [0, 1, 2, 3, 4, 5, 6, 7] ... (20 in all)', '  - [1]', '    pk: 3', "ions: ['Li', 'Na']"]
    # the answer for a process has no prediction node ('prediction: None' opened it); warnings are sentences
    warning = 'CalibrationWarning: the uncertainty calibration saw only 10 held-out rows'
    ids = [f'mp-{number}_Li-a-long-battery-id-of-more-than-forty-characters' for number in range(12)]
    _print_tree({'prediction': None, 'process': {'pk': 29}, 'training_warnings': [warning], 'none': [],
                 'battery_ids': ids})
    assert capsys.readouterr().out.splitlines() == ['process:', '  pk: 29', 'training_warnings: (1)',
                                                    f'  - {warning}', 'none: []',
                                                    f'battery_ids: {ids[:8]} ... (12 in all)']


def test_train_example_checks_its_save_directory_before_training(tmp_path, capsys):
    """``examples/train_and_predict.py --save FILE/model`` trained for minutes, then failed with NotADirectoryError."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / 'examples' / 'train_and_predict.py'
    spec = importlib.util.spec_from_file_location('train_and_predict_example', path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    blocker = tmp_path / 'a-file'
    blocker.write_text('')
    for target, message in ((blocker / 'model', f'{blocker} is not a directory'),
                            (blocker, 'exists and is not a directory')):
        with pytest.raises(SystemExit) as exit_info:
            example.main(['--save', str(target)])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    foreign = tmp_path / 'foreign'  # review: a config.json of its own was found only after the training
    foreign.mkdir()
    (foreign / 'config.json').write_text('{"mine": true}')
    with pytest.raises(SystemExit) as exit_info:
        example.main(['--save', str(foreign)])
    assert exit_info.value.code == 2 and 'its config.json is no voltnet model config' in capsys.readouterr().err
    assert (foreign / 'config.json').read_text() == '{"mine": true}'


def test_train_example_prints_the_calibration_warning_of_a_small_csv(tmp_path):
    """The example kept the warnings whose file was in aiida_voltnet; the calibration's, raised with the stack level
    of its caller, names the caller's file, and was dropped exactly when a user trains on a small CSV of their own."""
    import os

    small = tmp_path / 'small.csv'
    small.write_text('\n'.join(SHARED_CSV.read_text().splitlines()[:120]) + '\n')
    example = Path(__file__).resolve().parents[1] / 'examples' / 'train_and_predict.py'
    run = subprocess.run([sys.executable, str(example), '--data', str(small)], capture_output=True, text=True,
                         env={**os.environ, 'OMP_NUM_THREADS': '1'}, timeout=600)
    assert run.returncode == 0, run.stderr
    assert 'warning: the uncertainty calibration saw only' in run.stdout, run.stdout


def test_predict_a_pair_of_structure_files(trained, tmp_path, cobalt_oxide_frameworks):
    """``--charged``/``--discharged`` take structure files (a relaxed DFT cell): 'FePO4.cif' was parsed as a formula
    and refused. The files' pair is the record ``record_from_structures`` builds, with its symmetry, so the voltage
    is the core's for the same structures; a file beside a formula, an unreadable file and a reversed pair are
    refused with the option and file named."""
    from aiida_voltnet.ml.models import VoltageModel
    from aiida_voltnet.ml.structures import record_from_structures, shipped_pair

    charged, discharged, ion = shipped_pair('LiFePO4')
    files = {name: tmp_path / name for name in ('FePO4.cif', 'LiFePO4.cif', 'POSCAR')}
    charged.to(filename=str(files['FePO4.cif']))
    discharged.to(filename=str(files['LiFePO4.cif']))
    discharged.to(filename=str(files['POSCAR']))
    model = str(trained / 'model')
    mean, std = VoltageModel.load(model).predict([record_from_structures(charged, discharged, ion)])
    for discharged_file in ('LiFePO4.cif', 'POSCAR'):
        result = run('predict', '--model', model, '--charged', str(files['FePO4.cif']), '--discharged',
                     str(files[discharged_file]), '--ion', 'Li')
        assert result.stdout.startswith(f'LiFePO4 ({files[discharged_file]}) / FePO4 ({files["FePO4.cif"]}) (Li): '
                                        f'{mean[0]:.3f} +/- {std[0]:.3f} V'), result.stdout
    assert 'Warning' not in result.stderr, result.stderr
    _, rutile, layered = cobalt_oxide_frameworks  # one host composition, two frameworks: said, predicted
    rutile.to(filename=str(tmp_path / 'rutile.cif'))
    layered.to(filename=str(tmp_path / 'layered.cif'))
    two = run('predict', '--model', model, '--charged', str(tmp_path / 'rutile.cif'), '--discharged',
              str(tmp_path / 'layered.cif'), '--ion', 'Li')
    assert 'structures are not one host framework (pymatgen StructureMatcher, Li ignored' in two.stderr, two.stderr
    assert two.stdout.startswith('LiCoO2 ('), two.stdout
    junk = tmp_path / 'junk.cif'
    junk.write_text('not a cif\n')
    both = tmp_path / 'both.cif'  # pymatgen read the first data block and said nothing of the second (review)
    both.write_text(files['FePO4.cif'].read_text() + '\n' + files['LiFePO4.cif'].read_text().replace(
        'data_LiFePO4', 'data_second', 1))
    for arguments, message in (
            ((both, files['LiFePO4.cif']), f'--charged {both}: the file holds 2 structures (data blocks FePO4, '
                                           'second): give one structure per file'),
            ((files['FePO4.cif'], 'LiFePO4'), f'--charged and --discharged are both structure files or both formulas: '
                                              f'{files["FePO4.cif"]} is a file, LiFePO4 is none'),
            ((junk, files['LiFePO4.cif']), f'--charged {junk}: not a structure file pymatgen can read'),
            ((files['LiFePO4.cif'], files['FePO4.cif']), 'the discharged structure (FePO4) must hold more Li per host '
                                                         'formula unit than the charged one (LiFePO4): the charged '
                                                         'member is the ion-poor one, swap them'),
            ((tmp_path / 'FePO4.vasp', files['LiFePO4.cif']), f'--charged {tmp_path / "FePO4.vasp"}: no such file'),
            (('FePO4', 'structures/LiFePO4.cif'), '--discharged structures/LiFePO4.cif: no such file')):
        refused = run('predict', '--model', model, '--charged', str(arguments[0]), '--discharged',
                      str(arguments[1]), '--ion', 'Li', check=False)
        assert refused.returncode == 2 and message in refused.stderr and 'Traceback' not in refused.stderr, \
            refused.stderr
    # A file that happens to be called like a formula (FePO4 beside the command) leaves the formula a formula; a
    # file named neither like a formula nor like a structure file is refused with what to do (pymatgen reads by name).
    formulas = run('predict', '--model', model, '--charged', 'FePO4', '--discharged', 'LiFePO4', '--ion', 'Li')
    (tmp_path / 'FePO4').write_text('not a structure\n')
    (tmp_path / 'olivine').write_text(files['LiFePO4.cif'].read_text())
    beside = run('predict', '--model', model, '--charged', 'FePO4', '--discharged', 'LiFePO4', '--ion', 'Li',
                 cwd=tmp_path)
    assert beside.stdout == formulas.stdout
    named = run('predict', '--model', model, '--charged', 'FePO4.cif', '--discharged', 'LiFePO4.cif', '--ion', 'Li',
                cwd=tmp_path)
    assert named.stdout.startswith('LiFePO4 (LiFePO4.cif) / FePO4 (FePO4.cif) (Li): '
                                   f'{mean[0]:.3f} +/- {std[0]:.3f} V'), named.stdout
    nameless = run('predict', '--model', model, '--charged', 'FePO4.cif', '--discharged', 'olivine', '--ion', 'Li',
                   cwd=tmp_path, check=False)
    assert nameless.returncode == 2 and '--discharged olivine: pymatgen reads a structure file by its name' in \
        nameless.stderr and 'rename it' in nameless.stderr, nameless.stderr
    # pymatgen's CIF parser warns of what it guessed (here: no symmetry operations, the H-M symbol used), twice, and
    # the CLI printed both raw with pymatgen's source line; now once, naming the option and the file
    bare = tmp_path / 'bare.cif'
    bare.write_text(files['FePO4.cif'].read_text().replace(
        "loop_\n _symmetry_equiv_pos_site_id\n _symmetry_equiv_pos_as_xyz\n  1  'x, y, z'\n", ''))
    assert bare.read_text() != files['FePO4.cif'].read_text()
    guessed = run('predict', '--model', model, '--charged', str(bare), '--discharged', str(files['LiFePO4.cif']),
                  '--ion', 'Li')
    assert guessed.stdout.split(':')[1] == named.stdout.split(':')[1], guessed.stdout  # the same voltage
    lines = [line for line in guessed.stderr.splitlines() if 'symmetry_equiv_pos_as_xyz' in line]
    assert lines == [f'Warning: --charged {bare}: Issues encountered while parsing CIF: No '
                     '_symmetry_equiv_pos_as_xyz type key found. Spacegroup from _symmetry_space_group_name_H-M used.'], \
        guessed.stderr
    assert 'UserWarning' not in guessed.stderr and 'warnings.warn' not in guessed.stderr, guessed.stderr


def test_predict_structure_files_in_json_or_yaml_import_no_module(trained, tmp_path):
    """pymatgen hands a site's properties to monty's decoder, which imports whatever module an ``@module`` key names:
    a JSON structure file made ``voltnet predict`` import (and run) any installed module. Such a file is refused,
    naming the place; plain JSON and YAML structure files (gzipped too) still predict as the CIF pair does."""
    import gzip
    import json as json_module
    import os

    from ruamel.yaml import YAML

    from aiida_voltnet.ml.structures import shipped_pair

    charged, discharged, _ = shipped_pair('LiFePO4')
    model = str(trained / 'model')
    charged.to(filename=str(tmp_path / 'FePO4.cif'))
    discharged.to(filename=str(tmp_path / 'LiFePO4.cif'))
    expected = run('predict', '--model', model, '--charged', str(tmp_path / 'FePO4.cif'), '--discharged',
                   str(tmp_path / 'LiFePO4.cif'), '--ion', 'Li').stdout.split(': ', 1)[1]
    (tmp_path / 'FePO4.json').write_text(json_module.dumps(charged.as_dict()))
    with gzip.open(tmp_path / 'LiFePO4.json.gz', 'wt') as handle:
        handle.write(json_module.dumps(discharged.as_dict()))
    with open(tmp_path / 'LiFePO4.yaml', 'w') as handle:
        YAML(typ='safe', pure=True).dump(json_module.loads(json_module.dumps(discharged.as_dict())), handle)
    for discharged_file in ('LiFePO4.json.gz', 'LiFePO4.yaml'):
        plain = run('predict', '--model', model, '--charged', str(tmp_path / 'FePO4.json'), '--discharged',
                    str(tmp_path / discharged_file), '--ion', 'Li')
        assert plain.stdout.split(': ', 1)[1] == expected, plain.stdout

    marker = tmp_path / 'imported'
    module = tmp_path / 'voltnet_evil_module.py'
    module.write_text(f'open({str(marker)!r}, "w").write("ran")\n')
    evil = discharged.as_dict()
    evil['sites'][0]['properties'] = {'x': {'@module': 'voltnet_evil_module', '@class': 'Anything'}}
    (tmp_path / 'evil_LiFePO4.json').write_text(json_module.dumps(evil))
    env = {**os.environ, 'PYTHONPATH': str(tmp_path)}
    refused = run('predict', '--model', model, '--charged', str(tmp_path / 'FePO4.json'), '--discharged',
                  str(tmp_path / 'evil_LiFePO4.json'), '--ion', 'Li', check=False, env=env)
    assert refused.returncode == 2 and not marker.exists(), (refused.stdout, refused.stderr)
    assert (f'--discharged {tmp_path / "evil_LiFePO4.json"}: sites[0].properties.x names a Python class to load '
            '(voltnet_evil_module.Anything)') in refused.stderr, refused.stderr
    # YAML's !!pairs loads as a list of tuples, which pymatgen re-encodes into the same @module dictionary
    yaml_text = (tmp_path / 'LiFePO4.yaml').read_text()
    (tmp_path / 'evil_LiFePO4.yaml').write_text(yaml_text.replace(
        'properties: {}', "properties: {x: !!pairs [{a: {'@module': voltnet_evil_module, '@class': X}}]}", 1))
    assert (tmp_path / 'evil_LiFePO4.yaml').read_text() != yaml_text
    refused = run('predict', '--model', model, '--charged', str(tmp_path / 'FePO4.json'), '--discharged',
                  str(tmp_path / 'evil_LiFePO4.yaml'), '--ion', 'Li', check=False, env=env)
    assert refused.returncode == 2 and not marker.exists() and 'names a Python class' in refused.stderr, \
        (refused.stdout, refused.stderr)
    # what monty's dumpfn writes for numpy site properties (ASE's velocities) and non-collinear moments still reads
    import numpy as np
    from monty.serialization import dumpfn
    from pymatgen.electronic_structure.core import Magmom

    rich = discharged.copy()
    rich.add_site_property('velocities', [np.zeros(3) for _ in rich])
    rich.add_site_property('magmom', [Magmom([0, 0, 1]) for _ in rich])
    dumpfn(rich, str(tmp_path / 'rich_LiFePO4.json'))
    assert '"@module": "numpy"' in (tmp_path / 'rich_LiFePO4.json').read_text()
    rich_run = run('predict', '--model', model, '--charged', str(tmp_path / 'FePO4.json'), '--discharged',
                   str(tmp_path / 'rich_LiFePO4.json'), '--ion', 'Li')
    assert rich_run.stdout.split(': ', 1)[1] == expected, rich_run.stdout
    (tmp_path / 'molecule.json').write_text(json_module.dumps({**charged.as_dict(), '@class': 'Molecule'}))
    other = run('predict', '--model', model, '--charged', str(tmp_path / 'molecule.json'), '--discharged',
                str(tmp_path / 'LiFePO4.yaml'), '--ion', 'Li', check=False)
    assert other.returncode == 2 and 'not a pymatgen Structure' in other.stderr, other.stderr


def test_predict_refuses_to_overwrite_its_data_and_names_the_file_of_an_unseen_ion(trained, tmp_path):
    """``--out`` equal to ``--data`` replaced the electrodes with the predictions; an ion the model never saw was
    refused without the file's name, which every other refusal of a CSV gives."""
    data = tmp_path / 'candidates.csv'
    data.write_text((trained / 'predict.csv').read_text())
    before = data.read_text()
    same = run('predict', '--model', str(trained / 'model'), '--data', str(data), '--out', str(data), check=False)
    assert same.returncode == 2 and f'--out {data} is the --data file' in same.stderr, same.stderr
    import os

    linked = tmp_path / 'linked.csv'  # the same file under another name (a hard link; on macOS also another case)
    os.link(data, linked)
    other = run('predict', '--model', str(trained / 'model'), '--data', str(data), '--out', str(linked), check=False)
    assert other.returncode == 2 and f'--out {linked} is the --data file' in other.stderr, other.stderr
    assert data.read_text() == before
    lithium = tmp_path / 'lithium.csv'  # a model that never saw Na: a kernel model on the Li rows, instant
    table = list(csv.DictReader(open(trained / 'train.csv')))
    with open(lithium, 'w', newline='') as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows([row for row in table if row['working_ion'] == 'Li'])
    run('train', '--data', str(lithium), '--out', str(tmp_path / 'li_model'), '--model', 'krr')
    # the candidates hold K, Na, ... rows beside Li ones
    refused = run('predict', '--model', str(tmp_path / 'li_model'), '--data', str(data), '--out',
                  str(tmp_path / 'o.csv'), check=False)
    assert refused.returncode == 2 and refused.stderr.startswith(f'Error: {data}: line '), refused.stderr
    assert 'never saw' in refused.stderr and not (tmp_path / 'o.csv').exists()
    unseen = sum(row['working_ion'] != 'Li' for row in csv.DictReader(open(data)))
    total = sum(1 for _ in csv.DictReader(open(data)))
    assert f': {unseen} of {total} records; leave them out' in refused.stderr, refused.stderr
    # --out among the model's files: the weights were replaced by the predictions (the model then refused to load)
    import shutil

    shutil.copytree(tmp_path / 'li_model', tmp_path / 'victim')
    weights = (tmp_path / 'victim' / 'arrays.safetensors').read_bytes()
    for out in (tmp_path / 'victim' / 'arrays.safetensors', tmp_path / 'victim' / 'predictions.csv'):
        inside = run('predict', '--model', str(tmp_path / 'victim'), '--data', str(lithium), '--out', str(out),
                     check=False)
        assert inside.returncode == 2 and 'is inside the --model directory' in inside.stderr, inside.stderr
    assert (tmp_path / 'victim' / 'arrays.safetensors').read_bytes() == weights


def test_train_records_the_sha256_of_the_bytes_it_trained_on(trained, tmp_path):
    """--data was read twice, to parse and to hash: from a pipe (bash's <(...)) the model recorded the sha256 of
    nothing (e3b0c442...), and a file changed during training was recorded as its new bytes."""
    import hashlib

    table = (trained / 'train.csv').read_bytes()
    lines = table.decode().splitlines(keepends=True)
    small = ''.join(lines[:41]).encode()
    result = subprocess.run(['bash', '-c', f'{VOLTNET} train --data <(cat {trained / "train.csv"} | head -41) '
                             f'--out {tmp_path / "m"} --model krr'], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    recorded = json.loads((tmp_path / 'm' / 'config.json').read_text())['metadata']['training_data']
    assert recorded['sha256'] == hashlib.sha256(small).hexdigest()
    # a pipe's name (/proc/PID/fd/pipe:[inode]) changed each run, and with it the model version (review)
    assert recorded['path'] is None
    again = subprocess.run(['bash', '-c', f'{VOLTNET} train --data <(cat {trained / "train.csv"} | head -41) '
                            f'--out {tmp_path / "again"} --model krr'], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    versions = [json.loads((tmp_path / name / 'config.json').read_text())['model_version'] for name in ('m', 'again')]
    assert versions[0] == versions[1]


def test_train_writes_its_model_when_the_csv_is_gone_by_the_end(trained, tmp_path, monkeypatch):
    """The pipe check stat()ed --data after the training: a CSV removed meanwhile threw the finished model away
    with a FileNotFoundError traceback (review). The bytes read at the start are what the model records."""
    import hashlib
    import shutil

    from click.testing import CliRunner

    from aiida_voltnet.cli import cli
    from aiida_voltnet.ml import models

    data = tmp_path / 'gone.csv'
    shutil.copy(trained / 'train.csv', data)
    train = models.train_voltage_model

    def train_then_remove(*args, **kwargs):
        data.unlink()
        return train(*args, **kwargs)

    monkeypatch.setattr(models, 'train_voltage_model', train_then_remove)
    content = data.read_bytes()
    result = CliRunner().invoke(cli, ['train', '--data', str(data), '--out', str(tmp_path / 'm'), '--model', 'krr'])
    assert result.exit_code == 0, result.output
    recorded = json.loads((tmp_path / 'm' / 'config.json').read_text())['metadata']['training_data']
    assert recorded == {'path': str(data.resolve()), 'sha256': hashlib.sha256(content).hexdigest()}


def test_quickstart_interrupted_while_it_checks_the_csv_exits_130(tmp_path, monkeypatch):
    """Ctrl-C in the checks before the profile (about 10 s on the shared CSV) was click's 'Aborted!', exit 1
    (review); docs/usage.md says 130."""
    from click.testing import CliRunner

    from aiida_voltnet.cli import cli
    from aiida_voltnet.ml import records

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(records, 'read_electrodes_csv', interrupted)
    monkeypatch.setenv('AIIDA_PATH', str(tmp_path / 'aiida'))
    result = CliRunner().invoke(cli, ['quickstart', '--data', str(SHARED_CSV)])
    assert result.exit_code == 130, result.output
    assert 'interrupted: before the training started: nothing was trained or predicted' in result.output
    assert not (tmp_path / 'aiida').exists()


def test_quickstart_interrupted_names_what_it_stopped_without_a_traceback(tmp_path):
    """Ctrl-C during the training ended in about 90 lines of plumpy's KilledError traceback."""
    import os
    import signal
    import time

    env = {**os.environ, 'AIIDA_PATH': str(tmp_path / 'aiida'), 'OMP_NUM_THREADS': '1'}
    process = subprocess.Popen([VOLTNET, 'quickstart', '--data', str(SHARED_CSV), '--protocol', 'fast'],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen = []
    deadline = time.monotonic() + 300
    for line in process.stdout:  # the split is reported just before the training starts
        seen.append(line)
        if '|split]: split ' in line or time.monotonic() > deadline:
            break
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=300)
    output = ''.join(seen) + rest
    assert process.returncode == 130, output
    assert 'Error: interrupted: ' in output and 'TrainWorkChain<' in output, output
    assert 'Traceback' not in output and 'KilledError' not in output, output


def test_a_ctrl_c_while_the_quickstart_profile_is_made_leaves_a_usable_profile(tmp_path):
    """Found by review: a Ctrl-C a few seconds into the first quickstart left a storage folder without a profile
    (every later run: a StorageMigrationError traceback) or a profile without its default user. The signal now acts
    once the profile is whole; here it arrives in the middle of create_profile."""
    import os

    script = tmp_path / 'interrupt.py'
    script.write_text('''
import os, signal, time
import aiida.manage.configuration as configuration
from aiida_voltnet.cli import aiida_commands

real = configuration.create_profile
def create_profile(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)  # the handler would run here
    return real(*args, **kwargs)
configuration.create_profile = create_profile
try:
    aiida_commands.ensure_embedded_profile('qs')
except KeyboardInterrupt:
    print('interrupted after the profile was made')
''')
    env = {**os.environ, 'AIIDA_PATH': str(tmp_path / 'aiida')}
    interrupted = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert 'interrupted after the profile was made' in interrupted.stdout, interrupted.stdout + interrupted.stderr
    again = subprocess.run([sys.executable, '-c', 'from aiida_voltnet.cli import aiida_commands\n'
                            'aiida_commands.ensure_embedded_profile("qs")\n'
                            'from aiida import orm; print("user", orm.User.collection.get_default().email)'],
                           capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and "Reusing AiiDA profile 'qs'" in again.stdout, again.stdout + again.stderr
    assert 'user voltnet@localhost' in again.stdout


def test_ctrl_c_of_train_exits_130_and_leaves_the_previous_model(trained, tmp_path):
    """Found by review: a Ctrl-C printed click's bare 'Aborted!' and exited 1."""
    import os
    import shutil
    import signal
    import time

    out = tmp_path / 'model'
    shutil.copytree(trained / 'model', out)
    before = {name: (out / name).read_bytes() for name in ('config.json', 'arrays.safetensors')}
    process = subprocess.Popen([VOLTNET, 'train', '--data', str(SHARED_CSV), '--out', str(out), '--model', 'mlp',
                                '--epochs', '500'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, 'OMP_NUM_THREADS': '1'})
    deadline = time.monotonic() + 120
    for line in process.stderr:  # 'Training mlp ...' comes before the epochs
        if line.startswith('Training ') or time.monotonic() > deadline:
            break
    time.sleep(2)
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=120)
    assert process.returncode == 130, rest
    assert 'Error: interrupted: --out holds what it held before, or the whole new model' in rest, rest
    assert 'Aborted!' not in rest and 'Traceback' not in rest
    assert {name: (out / name).read_bytes() for name in before} == before


def test_quickstart_on_a_profile_whose_broker_is_not_running_and_a_bad_aiida_path(tmp_path):
    """Found by review: the quickstart's runner connected to the profile's broker, so on what plain `verdi presto
    --use-zeromq` makes (a ZeroMQ broker that runs only with the daemon) it waited 10 s and printed a traceback,
    although it runs everything in its own interpreter; an AIIDA_PATH that cannot hold a configuration, and a
    300-character profile name, were ConfigurationError and OSError tracebacks."""
    import os

    env = {**os.environ, 'AIIDA_PATH': str(tmp_path / 'aiida'), 'OMP_NUM_THREADS': '1'}
    subprocess.run([str(Path(VOLTNET).parent / 'verdi'), 'presto', '--profile-name', 'zmq', '--use-zeromq'],
                   capture_output=True, env=env, check=True, timeout=600)
    data = tmp_path / 'rows.csv'
    data.write_text('\n'.join(SHARED_CSV.read_text().splitlines()[:151]) + '\n')
    run = subprocess.run([VOLTNET, 'quickstart', '--data', str(data), '--profile', 'zmq'], capture_output=True,
                         text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Reusing AiiDA profile 'zmq'" in run.stdout and 'voltnet provenance <pk>' in run.stdout
    blocked = tmp_path / 'a-file'
    blocked.write_text('not a folder')
    for command in (['quickstart', '--data', str(data)], ['provenance', '1'], ['predictions', '--model', '1']):
        bad = subprocess.run([VOLTNET, *command], capture_output=True, text=True, timeout=600,
                             env={**env, 'AIIDA_PATH': str(blocked)})
        assert bad.returncode == 2 and f'cannot use the AiiDA configuration folder under AIIDA_PATH={blocked}' \
            in bad.stderr and 'Traceback' not in bad.stderr, (command, bad.stderr)
    long = subprocess.run([VOLTNET, 'quickstart', '--data', str(data), '--profile', 'p' * 300], capture_output=True,
                          text=True, env=env, timeout=600)
    assert long.returncode == 2 and 'a profile name of at most 100 characters, got 300' in long.stderr, long.stderr
