"""setup.json (AiiDA plugin-registry metadata) agrees with pyproject.toml, and every entry point loads."""
import json
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / 'pyproject.toml').read_text())['project']
SETUP = json.loads((ROOT / 'setup.json').read_text())


def test_setup_json_agrees_with_pyproject():
    import aiida_voltnet

    assert SETUP['name'] == PYPROJECT['name'] and SETUP['version'] == aiida_voltnet.__version__
    assert SETUP['install_requires'] == PYPROJECT['dependencies']
    assert SETUP['extras_require'] == PYPROJECT['optional-dependencies']
    assert SETUP['classifiers'] == PYPROJECT['classifiers'] and 'Framework :: AiiDA' in SETUP['classifiers']
    expected = {group: sorted(f'{k} = {v}' for k, v in items.items())
                for group, items in PYPROJECT['entry-points'].items()}
    expected['console_scripts'] = sorted(f'{k} = {v}' for k, v in PYPROJECT['scripts'].items())
    assert {g: sorted(v) for g, v in SETUP['entry_points'].items()} == expected


@pytest.mark.parametrize('group', sorted(PYPROJECT['entry-points']))
def test_entry_points_are_installed_and_load(group):
    declared = PYPROJECT['entry-points'][group]
    installed = {ep.name: ep for ep in entry_points(group=group)}
    for name, target in declared.items():
        assert name.startswith('voltnet.'), name
        assert name in installed and installed[name].value == target
        assert installed[name].load() is not None


@pytest.mark.parametrize('page', ['README.md', 'docs/usage.md'])
def test_every_entry_point_is_named_in_the_docs(page):
    """The lists of calculation functions, work chains, data and parser plugins in README.md and usage.md had lost
    `voltnet.ion_metal_cell`: every declared entry point appears there (the report helpers' group form counts)."""
    text = (ROOT / page).read_text()
    for short, names in (('`voltnet.report_subsample_dataset|_kfold_dataset|_drop_unseen_ions`',
                          ('report_subsample_dataset', 'report_kfold_dataset', 'report_drop_unseen_ions')),
                         ('`voltnet.assemble_dataset_from_csv|_from_mp|_from_structures`',
                          ('assemble_dataset_from_csv', 'assemble_dataset_from_mp',
                           'assemble_dataset_from_structures'))):
        text = text.replace(short, ' '.join(f'`voltnet.{name}`' for name in names))
    missing = sorted({name for items in PYPROJECT['entry-points'].values() for name in items
                      if f'`{name}`' not in text})
    assert not missing, f'{page} does not name {missing}'


def test_the_cli_runs_as_a_module():
    """``python -m aiida_voltnet.cli`` (review: 'No module named aiida_voltnet.cli.__main__') is the voltnet command."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, '-m', 'aiida_voltnet.cli', '--help'], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('Usage: voltnet [OPTIONS] COMMAND') and 'predict' in result.stdout
