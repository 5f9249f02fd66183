"""Caching follows the plugin's computing code: a calculation records the fingerprint of ``aiida_voltnet.ml`` and
the other modules that decide its outputs, and hashes it. Before, the hash covered only aiida-core's version, the
plugin's ``__version__`` (0.1.0 throughout) and ``functions.py``, so with caching on a changed featurizer or model
still got the old node's outputs."""
from __future__ import annotations

import shutil
from pathlib import Path

from aiida.manage.caching import enable_caching

import aiida_voltnet
from aiida_voltnet.calculations import functions as F
from aiida_voltnet.calculations import sources


def test_fingerprint_follows_the_computing_code_only(tmp_path):
    package = tmp_path / 'aiida_voltnet'
    shutil.copytree(Path(aiida_voltnet.__file__).parent, package, ignore=shutil.ignore_patterns('__pycache__'))
    original = sources.fingerprint_of(package)
    assert original == sources.sources_fingerprint()
    with (package / 'ml' / 'metrics.py').open('a') as handle:
        handle.write('\n# a change of the ML core\n')
    changed = sources.fingerprint_of(package)
    assert changed != original
    with (package / 'workflows' / 'predict.py').open('a') as handle:
        handle.write('\n# a workflow decides what runs, not what a calculation returns\n')
    assert sources.fingerprint_of(package) == changed


def test_a_calculation_of_other_code_is_not_a_cache_source(trained, monkeypatch):
    _, first = F.evaluate_model.run_get_node(trained.model, trained.test)
    assert first.base.attributes.get('version')['sources'] == sources.sources_fingerprint()
    with enable_caching(identifier='aiida.calculations:voltnet.evaluate_model'):
        _, same = F.evaluate_model.run_get_node(trained.model, trained.test)
        monkeypatch.setattr(sources, 'sources_fingerprint', lambda: '0123456789abcdef')
        _, other = F.evaluate_model.run_get_node(trained.model, trained.test)
    assert same.base.caching.get_cache_source() == first.uuid
    assert other.base.attributes.get('version')['sources'] == '0123456789abcdef'
    assert not other.base.caching.is_created_from_cache
    assert other.base.caching.get_hash() != first.base.caching.get_hash()
