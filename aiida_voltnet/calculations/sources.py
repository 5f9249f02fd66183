"""What a cached result depends on beyond its inputs: a fingerprint of the plugin code that computes it.

AiiDA hashes a calculation function with the aiida-core version, the plugin's ``__version__`` (which does not
change between releases) and the source file of the function's own module. The featurizers, models and training
loop live elsewhere (``aiida_voltnet.ml``), so a change there left the hash as it was, and with caching enabled a
new run reused a prediction or a model that the current code would not make. Every calculation of this plugin
therefore records ``sources_fingerprint()`` and hashes it: a calculation function in its ``version`` attribute
(``version.sources``), the training ``CalcJob`` in its ``cache_version`` attribute (``cache_version.sources``; a
``CalcJobNode`` leaves ``version`` out of its hash).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ('SOURCE_PATTERNS', 'fingerprint_of', 'record_sources', 'sources_fingerprint')

#: The modules, relative to the package, whose code decides what a calculation of this plugin outputs: the ML core,
#: the data node classes that write and read datasets and models, the calculations themselves, the training job's
#: parser and script, and the DFT and report helpers. The workflows, the query helpers and the CLI are not among
#: them: they decide what runs, not what a calculation with given inputs returns.
SOURCE_PATTERNS = ('ml/*.py', 'data/*.py', 'calculations/*.py', 'parsers/*.py', 'cli/train_entry.py', 'dft.py',
                   'report.py')

#: The key of the fingerprint in a node's ``version`` (calculation function) or ``cache_version`` (CalcJob).
KEY = 'sources'


def sources_fingerprint() -> str:
    """The fingerprint of the plugin's computing code as this interpreter imported it: read once, when the
    calculation modules import this one (with the ML core), so that files changed on disk later (an upgrade while
    a daemon worker or a notebook keeps running the old code) do not label the old code's results with the new
    code's fingerprint."""
    return _IMPORTED_FINGERPRINT


def fingerprint_of(root: Path) -> str:
    """The sha256 (16 hex digits) of the modules in ``SOURCE_PATTERNS`` under the package directory ``root``, each
    with its path, in sorted order."""
    root = Path(root)
    paths = sorted({path for pattern in SOURCE_PATTERNS for path in root.glob(pattern) if path.is_file()})
    if not paths:
        raise RuntimeError(f'no source file of aiida_voltnet matches {SOURCE_PATTERNS} under {root}')
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.relative_to(root).as_posix().encode() + b'\0')
        digest.update(path.read_bytes() + b'\0')
    return digest.hexdigest()[:16]


def record_sources(function):
    """Make the calculation function ``function`` record ``version.sources`` on its node before it is stored and
    hashed, so that a change of the computing code is a cache miss. Returns ``function``."""
    process_class = function.process_class
    setup_version_info = process_class._setup_version_info

    def _setup_version_info(self):
        info = setup_version_info(self)
        version = {**info.get('version', {}), KEY: sources_fingerprint()}
        self.node.base.attributes.set('version', version)
        return {**info, 'version': version}

    process_class._setup_version_info = _setup_version_info
    return function


_IMPORTED_FINGERPRINT = fingerprint_of(Path(__file__).resolve().parent.parent)
