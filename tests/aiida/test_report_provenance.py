"""``voltnet report`` in provenance mode: every table row comes from a stored AiiDA process whose outputs hold the
numbers printed, on one dataset node made from the CSV file."""
import json
import traceback

from aiida import orm
from click.testing import CliRunner

from aiida_voltnet.cli import cli
from aiida_voltnet.report import DEFAULT_CSV, HEADINGS


def test_quick_report_with_provenance_links_every_number_to_a_process(aiida_profile, tmp_path):
    out = tmp_path / 'report'
    result = CliRunner().invoke(cli, ['report', '--out', str(out), '--quick', '--rows', '200', '--epochs', '2',
                                      '--folds', '2', '--data', str(DEFAULT_CSV), '--profile', aiida_profile.name])
    assert result.exit_code == 0, result.output + ''.join(traceback.format_exception(*result.exc_info))
    report = json.loads((out / 'report.json').read_text())
    prov = report['provenance']
    assert prov['enabled'] is True
    dataset = orm.load_node(prov['dataset']['dataset'][1])
    assert dataset.n_records == report['data']['n_rows_used'] == 200
    # the dataset's ancestry reaches the CSV file
    csv = orm.load_node(prov['dataset']['csv'][1])
    assert isinstance(csv, orm.SinglefileData) and dataset.creator.inputs.dataset.creator.inputs.csv.uuid == csv.uuid

    # one work chain runs every analysis but the main voltnet rows
    workchain = orm.load_node(prov['workchain'][1])
    assert workchain.process_label == 'ReportWorkChain' and workchain.is_finished_ok
    assert workchain.inputs.dataset.uuid == dataset.uuid
    analyses = prov['analyses']
    assert {e['label'] for e in analyses} == set(workchain.outputs.metrics)
    sections = {(e['section'], e['analysis']) for e in analyses}
    # every Table S2 cell that is not a main voltnet row: 6 models x paper (with and without the leak columns),
    # 5 baselines x leak-free (random, grouped); then caps of both protocols, the volume target, the learning curve
    assert len([e for e in analyses if e['analysis'] == 'evaluate']) == 6 * 2 + 5 * 2 + 1
    assert {('Table S3 (leak-free)', 'caps'), ('Table S3 (paper protocol)', 'caps_paper'), ('Fig. S5', 'evaluate'),
            ('Learning curve', 'learning_curve'), ('The leak', 'evaluate')} <= sections
    for entry in analyses:
        node = orm.load_node(entry['uuid'])
        assert node.is_finished_ok, entry
        assert node.caller.uuid == workchain.uuid
        assert node.base.links.get_incoming(link_label_filter=entry['label']).one().node.uuid == workchain.uuid
        assert workchain.outputs.metrics[entry['label']].uuid == node.outputs.metrics.uuid
        assert node.inputs.dataset.uuid == dataset.uuid
        assert node.inputs.analysis.value == entry['analysis']
        stored = node.outputs.metrics.get_dict()
        if entry['analysis'] == 'evaluate':
            assert stored['summary']['mae'] == entry['mae']
            n_rows = node.outputs.predictions.get_array('p0_mean').shape[0]
            assert n_rows == stored['predictions']['n'] > 0

    # the printed numbers are the stored ones: Table S2 paper-protocol MLP and the paper-protocol caps
    def stored_result(section, **arguments):
        [entry] = [e for e in analyses if e['section'] == section
                   and all(e['arguments'].get(k) == v for k, v in arguments.items())]
        return orm.load_node(entry['uuid']).outputs.metrics.get_dict()

    mlp = stored_result('Table S2', model='mlp', featurizer='paper', protocol='random')
    assert report['table_s2']['mlp']['paper'] == mlp['summary']
    caps = stored_result('Table S3 (paper protocol)')
    assert report['table_s3_paper']['100'] == caps['parts']['100']['summary']

    # the main voltnet rows, fold by fold
    assert {e['protocol'] for e in prov['processes']} == {'random', 'grouped'}
    for entry in prov['processes']:
        assert orm.load_node(entry['evaluate_model'][1]).is_finished_ok
        model = orm.load_node(entry['model'][1])
        assert model.model_version == entry['model'][2]
        # quick mode's fewer boosting iterations are an input of train_model, not a patch of the global spec that
        # the process would not record (with caching on, its model would then stand in for a default training's)
        train = orm.load_node(entry['train_model'][1])
        assert train.inputs.settings.get_dict()['model_params'] == {'max_iter': 80}
        assert {member.hyper['max_iter'] for member in model.load_model().members} == {80}

    markdown = (out / 'report.md').read_text()
    assert HEADINGS[8] in markdown.splitlines()
    provenance_section = markdown.split(HEADINGS[8], 1)[1].split('\n## ', 1)[0]
    for entry in analyses:
        assert f'{entry["pk"]} ({entry["uuid"]})' in provenance_section


def test_report_refuses_bad_data_before_it_trains_or_stores_anything(aiida_profile, tmp_path, write_csv):
    """Found by a docs walk: in provenance mode, a CSV without the paper featurizer's columns trained and stored the
    main rows and then died with two tracebacks (exit 1); too few rows, or a row without the voltage, stored the
    CSV, dataset and split processes and then printed aiida-core's 'Error occurred validating port' (no line)."""
    import csv

    rows = list(csv.DictReader(DEFAULT_CSV.open(newline='')))[:400]
    minimal = ['battery_id', 'formula_charge', 'formula_discharge', 'framework_formula', 'working_ion',
               'average_voltage']

    write = write_csv

    no_voltage = [dict(row) for row in rows]
    no_voltage[6]['average_voltage'] = ''
    cases = [(write('minimal.csv', rows, minimal),
              f"line 2, battery_id '{rows[0]['battery_id']}', field 'capacity_grav': the paper featurizer needs"),
             (write('no_voltage.csv', no_voltage, list(rows[0])),
              f"line 8, battery_id '{rows[6]['battery_id']}', field 'average_voltage': the report trains and tests"),
             (write('r43.csv', rows[:43], list(rows[0])), '43 rows are too few for the report')]
    before = orm.QueryBuilder().append(orm.Node).count()
    for path, message in cases:
        result = CliRunner().invoke(cli, ['report', '--out', str(tmp_path / path.stem), '--quick', '--data', str(path),
                                          '--profile', aiida_profile.name])
        assert result.exit_code == 2 and message in result.output, result.output + repr(result.exception)
        assert not (tmp_path / path.stem).exists()
    assert orm.QueryBuilder().append(orm.Node).count() == before


def test_report_workchain_refuses_bad_analysis_parameters_at_launch(aiida_profile):
    """Found by review: voltnet.report checked the labels and analysis names only, so a misspelt setting or an
    unknown model ran, stored an excepted report_analysis with a traceback and ended with exit 320. Now the launch
    refuses it, naming the label and what is wrong, and stores nothing."""
    import pytest
    from aiida.engine import run_get_node
    from aiida.plugins import WorkflowFactory

    from aiida_voltnet.report import ReportSettings, analysis_parameters, check_analysis
    from aiida_voltnet.workflows.report import validate_analyses

    ReportWorkChain = WorkflowFactory('voltnet.report')
    good = analysis_parameters(ReportSettings.make(quick=True), {'model': 'krr'})
    assert check_analysis('evaluate', good) is None and check_analysis('caps', {**good, 'arguments': {}}) is None
    cases = [
        ('evaluate', {**good, 'settings': {**good['settings'], 'sedes': [0]}}, "analysis 'a': report analysis "
         "'evaluate': unknown setting(s) sedes; known: seeds,"),
        ('evaluate', {**good, 'arguments': {'model': 'xgboost'}}, "model 'xgboost' is not one of mha_resnet,"),
        ('evaluate', {**good, 'arguments': {}}, 'argument(s) model missing'),
        ('evaluate', {**good, 'arguments': {'model': 'krr', 'modle': 1}}, 'unknown argument(s) modle'),
        ('evaluate', {**good, 'arguments': {'model': 'krr', 'protocol': 'loio'}}, "protocol 'loio' is not one of"),
        ('evaluate', {**good, 'arguments': {'model': 'krr', 'featurizer': 'magpie'}}, "unknown featurizer 'magpie'"),
        ('evaluate', {**good, 'arguments': {'model': 'krr', 'calibrate': 'yes'}}, 'calibrate must be true or false'),
        ('evaluate', {**good, 'settings': {**good['settings'], 'folds': 1}}, 'setting folds must be an integer >= 2'),
        ('evaluate', {**good, 'settings': {**good['settings'], 'seeds': []}}, 'setting seeds must be a non-empty'),
        ('caps', good, "report analysis 'caps' takes no arguments, got model"),
    ]
    dataset = orm.load_node(_tiny_dataset())
    before = orm.QueryBuilder().append(orm.Node).count()
    for analysis, parameters, message in cases:
        value = orm.Dict({'a': {'analysis': analysis, 'section': 's', 'parameters': parameters}})
        assert message in validate_analyses(value), (validate_analyses(value), message)
        with pytest.raises(ValueError, match='analyses'):
            run_get_node(ReportWorkChain, dataset=dataset, analyses=value)
    assert orm.QueryBuilder().append(orm.Node).count() == before


def _tiny_dataset() -> int:
    """pk of a stored ElectrodeDataset of the first 50 rows of the shared CSV."""
    from aiida_voltnet.data import ElectrodeDataset
    from aiida_voltnet.ml.records import read_electrodes_csv

    return ElectrodeDataset(read_electrodes_csv(DEFAULT_CSV)[:50]).store().pk
