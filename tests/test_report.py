"""``voltnet report --quick --no-provenance`` on a small subsample: every table heading and every figure is there."""
import json

from click.testing import CliRunner

from aiida_voltnet.cli import cli
from aiida_voltnet.report import CAPS, DEFAULT_CSV, FIGURES, HEADINGS, REPORT_FILES, S3_PAPER_HEADING


def test_quick_report_has_every_table_and_figure(tmp_path, write_csv):
    import csv

    from aiida_voltnet.ml.records import read_electrodes_csv
    from aiida_voltnet.report import subsample

    # review: a row outside the --rows subsample without energy_grav ended the run in the leak figure with a
    # TypeError, after every table was trained, leaving the new figures beside the old report.md
    kept = {record.battery_id for record in subsample(read_electrodes_csv(DEFAULT_CSV), 300)}
    rows = list(csv.DictReader(DEFAULT_CSV.open(newline='')))
    unused = next(row for row in rows if row['battery_id'] not in kept)
    unused['energy_grav'] = ''
    data = write_csv('electrodes.csv', rows, list(rows[0]))
    out = tmp_path / 'report'
    out.mkdir()
    (out / 'report.json').write_text(json.dumps({'settings': {}, 'table_s2': {}}))  # an earlier report's
    (out / 'report.md').write_text('old')
    result = CliRunner().invoke(cli, ['report', '--out', str(out), '--quick', '--no-provenance', '--rows', '300',
                                      '--epochs', '2', '--folds', '2', '--data', str(data), '--seeds', '0,1'])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert f'Replacing the report in {out}' in result.output
    assert sorted(path.name for path in out.iterdir()) == sorted(REPORT_FILES)  # no staged file left
    markdown = (out / 'report.md').read_text()
    # review: the "all rows" line of Table S3 was Table S2's mean over every seed beside caps of the first seed
    assert "| — (all; Table S2 voltnet leak-free grouped row's test predictions, seed(s) 0) |" in markdown
    assert "| — (all; Table S2 paper row's test predictions, seed(s) 0) |" in markdown
    for heading in HEADINGS + [S3_PAPER_HEADING]:
        assert heading in markdown.splitlines(), heading
    for name in FIGURES:
        assert (out / name).is_file() and (out / name).stat().st_size > 1000, name
        assert f'({name})' in markdown or f'`{name}`' in markdown, f'{name} not referenced in report.md'
    report = json.loads((out / 'report.json').read_text())
    for key in ('table_s1', 'table_s2', 'table_s3', 'table_s3_paper', 'table_s4', 'fig_s5', 'leak', 'calibration', 'learning_curve',
                'provenance', 'versions', 'git_commit', 'data', 'timings_s', 'settings'):
        assert report[key] not in (None, {}, []), key
    assert report['data']['n_rows_used'] == 300 and len(report['data']['sha256']) == 64
    assert report['leak']['max_abs_voltage_minus_energy_over_capacity'] < 1e-6
    assert report['leak']['n_rows'] == 3826  # the row without energy_grav left out of the leak, as of its figure
    hull = report['leak']['energies_above_hull']  # the second leak, over all rows of the data
    assert hull['n_pairs'] == 2847 and hull['p99_abs_mismatch'] < 1e-3
    assert 'A second, partial leak' in markdown
    assert report['provenance']['enabled'] is False
    models = {'mha_resnet', 'mlp', 'svr', 'krr', 'lstm', 'voltnet'}
    assert set(report['table_s2']) == models
    for row in report['table_s2'].values():
        assert set(row) == {'paper', 'paper_minus_leak', 'leakfree_random', 'leakfree_grouped'}
    assert set(report['table_s3']) == {'200', '150', '100', '50', 'none'}
    # Table S3 as the paper ran it (MHA-ResNet, leaking features, random 90/10), beside the leak-free caps
    assert set(report['table_s3_paper']) == {'200', '150', '100', '50', 'none'}
    for cap in CAPS:
        row = report['table_s3_paper'][str(cap)]
        assert row['n_seeds'] >= 1 and row['n_test_rows_per_seed'] > 0 and 0 < row['mean_training_rows'], cap
        assert row['mae'] == row['mae'] and row['mae'] > 0, cap  # not NaN
    for table, whole in (('table_s3_paper', report['table_s2']['mha_resnet']['paper']),
                         ('table_s3', report['table_s2']['voltnet']['leakfree_grouped'])):
        none = report[table]['none']
        assert whole['n_seeds'] == 2 and none['n_seeds'] == report[table]['50']['n_seeds'] == 1, table
        assert none['mae'] != whole['mae'] and none['mae'] > 0, table
    section = markdown.split(S3_PAPER_HEADING, 1)[1].split('### ', 1)[0]
    table_rows = [line for line in section.splitlines() if line.startswith('| ') and '---' not in line]
    assert len(table_rows) == 1 + 1 + len(CAPS), section  # header, all rows, one per cap
    assert 'paper-protocol caps not run' not in markdown
    assert 0 <= report['calibration']['coverage_1sigma'] <= report['calibration']['coverage_2sigma'] <= 1
    assert 'QUICK' in markdown
    # review: one seed prints no spread (Table S4 printed '± 0.000'); the rows used are named as a subsample that
    # keeps Table S1's rows; the sentence on the features without the leak columns is measured, per model
    all_rows = [line for line in markdown.splitlines() if line.startswith('| — (all; ')]
    assert len(all_rows) == 2 and not any('±' in line for line in all_rows), all_rows  # one seed: no spread
    assert 'rows 300 of 3827 (a subsample, seed 0: the rows of SI Table S1 always, the others at random)' in markdown
    assert 'Compared with our leak-free features on the same random split, they do worse for ' in markdown
    # stdout: the leak-free numbers first, the paper protocol labelled as leaking
    assert 'leak-free first; the paper protocol leaks the target' in result.output
    assert all(line.index('leak-free grouped') < line.index('paper protocol (leaks)')
               for line in result.output.splitlines() if 'paper protocol (leaks)' in line)


def test_report_names_a_missing_default_csv(tmp_path, monkeypatch):
    """Without --data, a clone with no shared CSV beside it gave a FileNotFoundError traceback (exit 1)."""
    import aiida_voltnet.report as report

    missing = tmp_path / 'shared' / 'electrodes.csv'
    monkeypatch.setattr(report, 'DEFAULT_CSV', missing)
    result = CliRunner().invoke(cli, ['report', '--out', str(tmp_path / 'r'), '--quick', '--no-provenance'])
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert f'{missing}: no such file; pass --data CSV' in result.output


def test_report_refuses_repeated_seeds_and_too_few_rows_without_leaving_a_directory(tmp_path):
    """Review: --seeds 0,0 averaged one seed twice ('± 0.000', Table S4 with 334 Li test rows of a 300-row file); a
    20-row --data ended in a ValueError traceback and left an empty --out directory."""
    repeated = CliRunner().invoke(cli, ['report', '--out', str(tmp_path / 'r'), '--quick', '--no-provenance',
                                        '--seeds', '0,0'])
    assert repeated.exit_code == 2 and "--seeds '0,0' repeats a seed" in repeated.output, repeated.output
    for empty in ('', ' '):  # review: an unset "$SEEDS" started the full 5-seed report
        result = CliRunner().invoke(cli, ['report', '--out', str(tmp_path / 'r'), '--no-provenance', '--seeds', empty])
        assert result.exit_code == 2 and '--seeds is empty' in result.output, result.output
    assert not (tmp_path / 'r').exists()
    small = tmp_path / 'small.csv'
    small.write_text('\n'.join(DEFAULT_CSV.read_text().splitlines()[:21]) + '\n')
    result = CliRunner().invoke(cli, ['report', '--out', str(tmp_path / 'small'), '--quick', '--no-provenance',
                                      '--data', str(small)])
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert '20 rows are too few for the report: the training part of the ' in result.output
    assert 'and voltnet needs at least 40' in result.output
    assert not (tmp_path / 'small').exists()
    # review: a directory named report.json was found at the end of the run; a report.md of another program was
    # replaced with only a notice. Both are refused before anything runs.
    for name, make in (('report.json', lambda path: path.mkdir()), ('report.md', lambda path: path.write_text('mine'))):
        out = tmp_path / f'out-{name}'
        out.mkdir()
        make(out / name)
        result = CliRunner().invoke(cli, ['report', '--out', str(out), '--quick', '--no-provenance'])
        assert result.exit_code == 2, result.output + repr(result.exception)
        assert (f'{out / name} exists and is not a file' if name == 'report.json'
                else f'{out / name} is no voltnet report (no report.json of one beside it)') in result.output
        assert [path.name for path in out.iterdir()] == [name]


def test_report_refuses_data_without_the_volume_steps_or_a_voltage_before_it_trains(tmp_path, write_csv):
    """Found by review: a CSV without adj_pairs ran every table and then failed in Fig. S5 with scikit-learn's
    'n_splits=3 greater than the number of samples: n_samples=0', leaving the --out parents it had made; a row
    outside the --rows subsample without its voltage ended in a TypeError traceback (Table S1, the leak)."""
    import csv

    rows = list(csv.DictReader(DEFAULT_CSV.open(newline='')))
    columns = list(rows[0])

    write = write_csv

    no_steps = write('no_adj.csv', rows[:600], [c for c in columns if c != 'adj_pairs'])
    out = tmp_path / 'nest' / 'a' / 'b'
    result = CliRunner().invoke(cli, ['report', '--out', str(out), '--quick', '--no-provenance', '--rows', '200',
                                      '--data', str(no_steps)])
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert ('Fig. S5 learns the volume change max_delta_volume, which the adj_pairs column gives: 0 of 200 rows have '
            'it') in result.output
    assert not (tmp_path / 'nest').exists()
    missing = [dict(row) for row in rows[:600]]
    missing[450]['average_voltage'] = 'NaN'
    missing_csv = write('missing.csv', missing, columns)
    result = CliRunner().invoke(cli, ['report', '--out', str(out), '--quick', '--no-provenance', '--rows', '200',
                                      '--data', str(missing_csv)])
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert (f"{missing_csv}, line 452, battery_id '{rows[450]['battery_id']}', field 'average_voltage': the report trains and "
            'tests on every row: it needs the voltage') in result.output
    assert not (tmp_path / 'nest').exists()


def test_report_text_follows_the_epoch_budget():
    """With `--epochs 1000` the report said the MHA-ResNet had 'far fewer epochs than the paper's 1000'."""
    from types import SimpleNamespace

    from aiida_voltnet.report import _full_mode_budget_note

    settings = SimpleNamespace(torch_epochs={'mha_resnet': 1000, 'lstm': 1000, 'mlp': 1000}, leakfree_epochs={})
    assert _full_mode_budget_note(settings, 1000, 1000, True).startswith("- Full mode with the paper's budget")
    cpu = SimpleNamespace(torch_epochs={'mha_resnet': 200, 'lstm': 40, 'mlp': 200}, leakfree_epochs={'mha_resnet': 3})
    note = _full_mode_budget_note(cpu, 200, 3, False)
    assert 'CPU budgets' in note and 'MHA-ResNet at most 200 epochs on the paper features and 3' in note
    assert 'about 19 s' in note


def test_the_feature_cache_follows_the_record_not_its_battery_id():
    """The cache of raw features lives as long as the process and was keyed by battery_id: a second dataset in
    the same process (a corrected CSV, live MP data under the same ids) got the first one's features (review)."""
    import dataclasses

    import numpy as np

    from aiida_voltnet.ml.featurizers import get_featurizer
    from aiida_voltnet.ml.records import read_electrodes_csv
    from aiida_voltnet.report import cached_featurizer

    records = read_electrodes_csv(DEFAULT_CSV)[:6]
    first = cached_featurizer('leakfree').raw(records)
    edited = [dataclasses.replace(records[0], formula_charge=records[5].formula_charge,
                                  formula_discharge=records[5].formula_discharge, working_ion=records[5].working_ion,
                                  framework_formula=records[5].framework_formula)] + records[1:]
    again = cached_featurizer('leakfree').raw(edited)
    assert np.array_equal(again, get_featurizer('leakfree', _quiet=True).raw(edited))
    assert not np.array_equal(again[0], first[0]) and np.array_equal(again[1:], first[1:])


def test_aux_seeds_outside_the_seeds_are_refused_before_the_run():
    """Review: Table S3's all-rows line reads the main rows' predictions of the aux seeds; one outside the seeds
    gave an empty mean and a ValueError at the very end of the run."""
    import pytest

    from aiida_voltnet.report import ReportSettings

    with pytest.raises(ValueError, match=r'aux_seeds \[5\] are not among the seeds \[0, 1\]'):
        ReportSettings.make(False, seeds=[0, 1], aux_seeds=[5])
    assert ReportSettings.make(False, seeds=[0, 1]).aux_seeds == [0]
