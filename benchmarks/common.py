"""What the benchmark scripts share: the default CSV, the git commit they report, argparse value checks, and a clean
exit for bad input found after parsing (an unreadable or invalid ``--data`` file).

Scripts run as ``python benchmarks/X.py``, which puts this folder on ``sys.path``: ``from common import ...``.
Nothing heavy is imported at module level (``gpu_training.py`` runs where pymatgen and AiiDA are missing).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

ROOT = Path(__file__).resolve().parents[1]
#: The shared Materials Project insertion-electrode CSV (``../shared`` next to the repository).
DEFAULT_CSV = ROOT / '..' / 'shared' / 'data' / 'mp_insertion_electrodes' / 'electrodes.csv'


def git_commit() -> str:
    """The commit the benchmark started at (when this module was imported: the code it runs), 12 hex digits, plus
    ``' (+ uncommitted changes)'`` when tracked files differed from it; ``'unknown'`` without git or outside a git
    checkout. Where the checkout moved during the run, ``'; HEAD <commit> when it ended'`` follows: a run of an hour
    printed the commit of its end, not of its code (found when this session's paper-protocol run did)."""
    now = _git_commit_now()
    return _STARTED_AT if now == _STARTED_AT else f'{_STARTED_AT}; HEAD {now} when it ended'


def _git_commit_now() -> str:
    try:
        commit = subprocess.run(['git', 'rev-parse', '--short=12', 'HEAD'], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'
    if not commit:
        return 'unknown'
    return commit + (' (+ uncommitted changes)' if dirty else '')


_STARTED_AT = _git_commit_now()


# -- argparse types: each raises ArgumentTypeError naming the value, which argparse prints as one line with exit 2


def _integer(value: str) -> int:
    if not re.fullmatch(r'\s*[+-]?[0-9]+\s*', value):  # int() also reads '1_0' as 10 and '٣' as 3 (review)
        raise argparse.ArgumentTypeError(f'{value!r} is not an integer')
    return int(value)


class Distinct(argparse.Action):
    """An argparse action for a list option (``nargs='+'``): each value once. A repeated seed was averaged as a
    second seed, counting its test rows twice and printing a spread of 0 (review; ``voltnet report`` refuses it too)."""

    def __call__(self, parser, namespace, values, option_string=None):
        repeated = sorted({value for value in values if values.count(value) > 1})
        if repeated:
            parser.error(f'argument {option_string}: repeats {", ".join(map(str, repeated))}: give each once')
        setattr(namespace, self.dest, values)


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum``."""

    def check(value: str) -> int:
        number = _integer(value)
        if number < minimum:
            raise argparse.ArgumentTypeError(f'must be an integer >= {minimum}, got {value!r}')
        return number

    check.__name__ = f'integer >= {minimum}'
    return check


#: An argparse type: an integer >= 1 (counts: rows, epochs, repeats, members, threads, ...).
positive_int = at_least(1)
positive_int.__name__ = 'positive_int'
#: An argparse type: an integer >= 0 (seeds, warm-up epochs).
non_negative_int = at_least(0)
non_negative_int.__name__ = 'non_negative_int'


def seed_int(value: str) -> int:
    """An argparse type: a training seed, an integer in 0..``aiida_voltnet.ml.models.MAX_SEED`` (member i of an
    ensemble trains with seed * 1000 + i, and numpy's seeds stop at 2**32 - 1)."""
    number = non_negative_int(value)
    from aiida_voltnet.ml.models import MAX_SEED

    if number > MAX_SEED:
        raise argparse.ArgumentTypeError(f'must be an integer in 0..{MAX_SEED}, got {value!r}')
    return number


def _existing(kind: str, is_kind: Callable[[Path], bool]) -> Callable[[str], str]:
    """An argparse type: the path of an existing ``kind`` (file or directory), returned as given."""

    def check(value: str) -> str:
        path = Path(value)
        if not path.exists():
            raise argparse.ArgumentTypeError(f'no such {kind}: {value!r}')
        if not is_kind(path):
            raise argparse.ArgumentTypeError(f'not a {kind}: {value!r}')
        return value

    check.__name__ = f'existing_{kind}'
    return check


def new_file(value: str) -> Path:
    """An argparse type: a file path that can be written (its folder exists and is writable, and it is no
    folder), checked before any measurement, so a long run does not end in a traceback at its last line."""
    path = Path(value)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f'is a directory: {value!r}')
    folder = path.parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f'no such directory: {str(folder)!r} (for {value!r})')
    if not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f'directory not writable: {str(folder)!r} (for {value!r})')
    return path


def device_name(value: str) -> str:
    """An argparse type: a training device (``auto``, ``cpu``, ``cuda``, ``cuda:N``) that this machine has, checked
    before any row runs: a bad one failed at the first torch row, after the others, and lost their ``--json``."""
    from aiida_voltnet.ml.training import resolve_device

    try:
        resolve_device(value)
    except ValueError as exception:
        raise argparse.ArgumentTypeError(str(exception)) from None
    return value


#: An argparse type: the path of an existing file (returned as given).
existing_file = _existing('file', Path.is_file)
#: An argparse type: the path of an existing directory (returned as given).
existing_dir = _existing('directory', Path.is_dir)


# -- bad input found after parsing


class InputError(Exception):
    """Bad input found after the command line was parsed (e.g. a ``--data`` file that cannot be read as electrode
    records); :func:`run` prints its message as ``PROG: error: MESSAGE`` and exits with status 2."""


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f'{error.strerror}: {error.filename}'
    return str(error) or type(error).__name__


def read_data(path, option: str = '--data', reader: Callable[[Any], Any] | None = None):
    """``reader(path)`` (default ``aiida_voltnet.ml.records.read_electrodes_csv``), with the ``OSError`` or
    ``ValueError`` it raises (``ElectrodeDataError`` included, whose message names the file, line and field)
    re-raised as :class:`InputError`: ``cannot read OPTION: PROBLEM``. Other errors propagate unchanged."""
    if reader is None:
        from aiida_voltnet.ml.records import read_electrodes_csv as reader
    try:
        return reader(path)
    except (OSError, ValueError) as error:
        raise InputError(f'cannot read {option}: {_describe(error)}') from error


def run(main: Callable[[], int | None]) -> NoReturn:
    """``sys.exit(main())``, with an :class:`InputError` turned into one line on stderr, ``PROG: error: MESSAGE``
    (PROG as argparse names the script), and exit status 2, as argparse does for a bad argument."""
    try:
        status = main()
    except InputError as error:
        sys.stdout.flush()
        sys.stderr.write(f'{os.path.basename(sys.argv[0])}: error: {error}\n')
        sys.exit(2)
    sys.exit(status)
