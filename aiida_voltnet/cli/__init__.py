"""The ``voltnet`` command line (click).

``train`` and ``predict`` need no AiiDA profile: they are the core, on files. ``quickstart``, ``provenance`` and
``predictions`` work on an AiiDA profile (the embedded SQLite one by default).
"""
from __future__ import annotations

import csv
import json
import io
import logging
import math
import os
import stat
import sys
import tempfile
import warnings
from pathlib import Path

import click

EXIT_BAD_INPUT = 2
EXIT_BAD_MODEL = 3


def _fail(message: str, code: int = EXIT_BAD_INPUT):
    click.echo(f'Error: {message}', err=True)
    sys.exit(code)


def _interrupt_exits_130(what: str):
    """A command's Ctrl-C exits 130 (as the shell's own convention and ``voltnet quickstart``), saying ``what`` it
    left, not click's bare 'Aborted!' and exit 1 (found by review)."""
    import functools

    def decorate(command):
        @functools.wraps(command)
        def wrapper(*args, **kwargs):
            try:
                return command(*args, **kwargs)
            except KeyboardInterrupt:
                _fail(f'interrupted: {what}', 130)
        return wrapper
    return decorate


def single_member_warning(model: str, name: str) -> str:
    """What ``voltnet predict``, ``verify`` and ``screen`` say of a one-member model's ``+/- 0``."""
    return (f'{model} is a single {name} model, no ensemble: its uncertainty is 0, not an error bar (train an '
            'ensemble, such as the default voltnet model or --members 5, for one)')


@click.group(context_settings={'help_option_names': ['-h', '--help']})
@click.version_option(package_name='aiida-voltnet')
@click.option('-v', '--verbose', is_flag=True, help='Show info-level log messages.')
def cli(verbose):
    """aiida-voltnet: average voltages of insertion electrodes, with provenance."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format='%(levelname)s: %(message)s')
    # aiida-core warns, as a bare Python warning with its source line, when its import creates the configuration
    # folder (a fresh machine's first command); the commands that then create a profile say where it is
    warnings.filterwarnings('ignore', message='Creating AiiDA configuration folder', category=UserWarning)


def _model_param(ctx, param, values) -> dict:
    """``NAME=VALUE`` pairs of ``--model-param`` as a dict; a VALUE that reads as a number stays a number (as
    Python's ``int``/``float`` read it: ``500``, ``0.1``, ``.1``, ``+5``; ``1e3`` without a decimal point is the integer
    1000), any other is text (``squared_error``). Whether the model takes them is checked by training, before any
    work."""
    params = {}
    for value in values:
        name, sep, text = value.partition('=')
        if not sep or not name.strip() or not text.strip():
            raise click.BadParameter(f'{value!r} is not NAME=VALUE (e.g. max_iter=500)', ctx=ctx, param=param)
        if name.strip() in params:
            raise click.BadParameter(f'{name.strip()} is given twice', ctx=ctx, param=param)
        params[name.strip()] = _number_or_text(text.strip())
    return params


def _number_or_text(text: str):
    """``text`` as an ``int`` or ``float`` where it reads as one, else the text itself (never evaluated)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return text
    if math.isfinite(number) and number.is_integer() and '.' not in text:  # 5e1 is 50 (max_iter=5e1)
        return int(number)
    return number


@cli.command()
@click.option('--data', 'data', required=True, type=click.Path(exists=True, dir_okay=False),
              help='Training CSV in the seed format (needs average_voltage).')
@click.option('--out', 'out', required=True, type=click.Path(file_okay=False),
              help='Directory to write the model to (config.json + arrays.safetensors).')
@click.option('--featurizer', default='leakfree', show_default=True,
              type=click.Choice(['leakfree', 'paper']),
              help='Feature set. "paper" reproduces the seed, including its target leak (warns).')
@click.option('--model', 'model_name', default='voltnet', show_default=True,
              type=click.Choice(['voltnet', 'voltnet_large', 'voltnet_mlp', 'mha_resnet', 'mlp', 'lstm', 'svr',
                                 'krr']),
              help='Model to train (voltnet: our leak-free ensemble; voltnet_large: the same with 500 trees per '
                   'member, about 1 % more accurate and 2x slower).')
@click.option('--seed', default=0, show_default=True, type=click.IntRange(0, 4_000_000),
              help='Random seed (member i of an ensemble trains with seed * 1000 + i).')
@click.option('--device', default='auto', show_default=True,
              help='auto (CUDA when present), cpu or cuda[:N]. Torch models only: tree and kernel models are fitted by '
                   'scikit-learn on the CPU (a warning says so when cuda is asked for).')
@click.option('--epochs', default=None, type=click.IntRange(min=1),
              help='Override the number of epochs of torch models (refused for tree and kernel models, which '
                   'train no epochs).')
@click.option('--members', default=None, type=click.IntRange(min=1),
              help='Override the ensemble size (1 for svr and krr, whose members would be identical).')
@click.option('--precision', default='fp32', show_default=True, type=click.Choice(['fp32', 'bf16']),
              help='Arithmetic of torch models\' training: fp32, or bf16 (bfloat16 autocast products: faster on '
                   'CPUs with AVX512-BF16, about 1.5x for MHA-ResNet on a Zen 5 core, and on GPUs; emulated and '
                   'about 20x slower on CPUs without it, which a warning says; not bit-equal to fp32). Ignored by '
                   'tree and kernel models.')
@click.option('--model-param', 'model_params', multiple=True, callback=_model_param, metavar='NAME=VALUE',
              help='Set a hyper-parameter of a tree or kernel model, e.g. --model-param max_iter=500 '
                   '--model-param learning_rate=0.1 (voltnet, voltnet_large: loss, max_iter, learning_rate, '
                   'max_leaf_nodes, min_samples_leaf, l2_regularization, subsample, max_features; svr: C, epsilon, '
                   'gamma; krr: alpha, gamma). Recorded in the model. Repeat for several.')
@_interrupt_exits_130('--out holds what it held before, or the whole new model if the signal came as it was '
                      'renamed into place (the renames hold Ctrl-C back): never a mix')
def train(data, out, featurizer, model_name, seed, device, epochs, members, precision, model_params):
    """Train on all rows of a CSV and write a model directory."""
    from aiida_voltnet.ml.featurizers import InputWarning
    from aiida_voltnet.ml.models import MODEL_SPECS, check_training_options, ignored_device_message, \
        train_voltage_model, training_targets
    import hashlib

    from aiida_voltnet.ml.records import ElectrodeDataError, decode_csv, read_electrodes_csv

    _check_output_path(out, directory=True)
    _check_replaceable_model(out)
    _check_device(device)
    try:  # read once: the sha256 recorded in the model is that of the bytes trained on (a pipe reads only once,
        content = Path(data).read_bytes()  # and a file may change while the model trains)
        # a pipe (<(...)) is named /proc/PID/fd/pipe:[inode], another name each run, which made each training of
        # the same bytes another model version: only a regular file's path is recorded (the sha256 always)
        data_path = str(Path(data).resolve()) if stat.S_ISREG(os.stat(data).st_mode) else None
    except OSError as exception:
        _fail(f'--data {data}: cannot read it: {exception.strerror or exception}')
    try:
        records = read_electrodes_csv(io.StringIO(decode_csv(content, data), newline=''), source=data)
    except ElectrodeDataError as exception:
        _fail(str(exception))
    if featurizer == 'paper':
        click.secho('WARNING: the paper featurizer feeds capacity_grav and energy_grav, whose ratio is the target '
                    'average_voltage: its scores measure the leak.', fg='yellow', err=True)
    torch_model = MODEL_SPECS[model_name]['kind'] == 'torch'
    if epochs is not None and not torch_model:
        _fail(f'--epochs: model {model_name} is no torch network and trains no epochs (its hyper-parameters: '
              '--model-param)')
    overrides = {**({'epochs': epochs} if epochs is not None else {}),
                 **({'precision': precision} if precision != 'fp32' and torch_model else {})}  # documented: ignored
    overrides = overrides or None
    try:  # before saying 'Training ...': a refused option is no training that started
        check_training_options(members=members, train_overrides=overrides, device=device, seed=seed, model=model_name,
                               n_rows=len(records), model_params=model_params or None)
    except ValueError as exception:
        _fail(str(exception))
    try:  # a row without the voltage, named by its line, before the training is announced
        training_targets(records)
    except ElectrodeDataError as exception:
        _fail(f'{data}: {exception}')
    click.echo(f'Training {model_name} ({featurizer} features) on {len(records)} electrodes from {data}', err=True)
    ignored = ignored_device_message(model_name, device)
    if ignored:
        click.secho(f'WARNING: {ignored}', fg='yellow', err=True)
    try:
        with warnings.catch_warnings(record=True) as caught:  # the leak was said above; library noise is dropped
            warnings.simplefilter('always')
            model = train_voltage_model(records, featurizer=featurizer, model=model_name, seed=seed, device=device,
                                        members=members, train_overrides=overrides, show_progress=True,
                                        model_params=model_params or None)
    except ElectrodeDataError as exception:  # a record without the target: name the file too
        _fail(f'{data}: {exception}')
    except ValueError as exception:
        _fail(str(exception))
    for warning in caught:
        if str(warning.message).startswith('the uncertainty calibration') \
                or issubclass(warning.category, InputWarning):
            click.secho(f'WARNING: {warning.message}', fg='yellow', err=True)
    model.metadata['training_data'] = {'path': data_path, 'sha256': hashlib.sha256(content).hexdigest()}
    if (Path(out) / 'config.json').is_file():
        click.echo(f'Replacing the model in {out}', err=True)
    try:
        directory = model.save(out)
    except OSError as exception:
        _fail(f'--out {out}: cannot write the model: {exception.strerror or exception}')
    config = json.loads((directory / 'config.json').read_text())
    click.echo(f'Wrote {directory} (model version {config["model_version"][:16]}, '
               f'{model.n_parameters} parameters, {model.metadata["wall_time_s"]:.1f} s)')


def _check_replaceable_model(out):
    """Fail before any work when directory ``out`` holds a ``config.json`` or ``arrays.safetensors`` that is not a
    voltnet model's: the training writes both there, and a user's own ``config.json`` was overwritten with 'Replacing
    the model'."""
    from aiida_voltnet.ml.models import replaceable_model_problem

    why = replaceable_model_problem(out)
    if why:
        _fail(f'--out {out}: {why}; voltnet train writes config.json and arrays.safetensors there and would '
              'overwrite them: choose another directory')


def _check_output_path(path, directory: bool):
    """Fail before any work when ``path`` cannot be written: a file where a directory is wanted (or the reverse),
    or a parent that is not a directory."""
    target = Path(path)
    if target.exists() and target.is_dir() != directory:
        _fail(f'--out {path}: exists and is {"a file" if directory else "a directory"}')
    if directory and target.is_symlink() and not target.exists():  # the save's mkdir said 'File exists', after
        _fail(f'--out {path}: a symbolic link to {os.readlink(target)}, which does not exist: create that '  # training
              'directory or choose another --out')
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        _fail(f'--out {path}: {parent} is a file, not a directory')
    if not directory and not target.parent.is_dir():
        _fail(f'--out {path}: directory {target.parent} does not exist')
    # Can files be created there? (permissions, a read-only or immutable directory, /proc): a real probe, since
    # os.access says yes to root whatever the file system says
    probe_dir = target if directory and target.is_dir() else parent
    try:
        with tempfile.TemporaryFile(dir=probe_dir, prefix='.voltnet-write-probe-'):
            pass
    except OSError as exception:
        _fail(f'--out {path}: cannot create files in {probe_dir} ({exception.strerror or exception})')


def _has_structure_name(value: str) -> bool:
    """Whether ``Structure.from_file`` knows a reader for the file's name (``*.cif``, ``POSCAR``, ``*.vasp``, ...;
    a POSCAR is a formula too: P O S C Ar)."""
    name = Path(value).name
    try:
        from pymatgen.io.registry import get_structure_format
    except ImportError:  # a pymatgen before its format registry: the patterns of its Structure.from_file
        import fnmatch

        return any(fnmatch.fnmatch(name.lower(), pattern) for pattern in (
            '*.cif*', '*.mcif*', '*poscar*', '*contcar*', '*.vasp', '*.json*', '*.yaml*', '*.xsf', '*.cssr*',
            '*.res', '*.config*', 'vasprun*.xml*', '*.pwscf*'))
    try:
        return bool(get_structure_format(filename=name))
    except ValueError:
        return False


def _is_structure_file(option: str, value: str) -> bool:
    """Whether ``value`` of ``--charged``/``--discharged`` names a structure file rather than a formula: it has a
    path separator or a name pymatgen reads by (``.cif``, ``POSCAR``, ...) and must then exist, or it is an existing
    file that is no formula: a file called ``FePO4`` beside the command leaves the formula ``FePO4`` a formula."""
    from pymatgen.core import Composition

    path = Path(value)
    named = _has_structure_name(value) or '/' in value or os.sep in value
    if named:
        if not path.is_file():
            _fail(f'{option} {value}: no such file' + (' (a directory)' if path.is_dir() else ''))
        return True
    if not path.is_file():
        return False
    try:
        Composition(value)
    except Exception:  # noqa: BLE001 - pymatgen raises ValueError, KeyError, ... for what is no formula
        return True
    return False


def _class_names(value, where: str):
    """Where a parsed JSON/YAML document names a Python class or module (``@module``/``@class`` keys) below its
    top level: ``(place, name)`` pairs."""
    if isinstance(value, dict):
        if where and ('@module' in value or '@class' in value):
            name = f"{value.get('@module', '')}.{value.get('@class', '')}".strip('.')
            if name not in _DECODED_CLASSES_ALLOWED:
                yield where, name
        for key, item in value.items():
            yield from _class_names(item, f'{where}.{key}' if where else str(key))
    elif isinstance(value, (list, tuple, set, frozenset)):  # YAML's !!pairs loads as a list of tuples
        for index, item in enumerate(value):
            yield from _class_names(item, f'{where}[{index}]')
    elif not (value is None or isinstance(value, (str, int, float, bool))):
        yield where, f'a YAML {type(value).__name__}'


#: What monty's decoder may build from a structure file's site properties: numpy arrays (``dumpfn`` writes
#: ASE's velocities so) and pymatgen's non-collinear magnetic moments; nothing else is imported.
_DECODED_CLASSES_ALLOWED = frozenset({'numpy.array', 'pymatgen.electronic_structure.core.Magmom'})


def _read_structure_file(option: str, path: str):
    """``Structure.from_file``, except that a JSON or YAML file is parsed here first and refused where it names a
    Python class below its top level: pymatgen hands site properties to monty's decoder, which imports whatever
    module an ``@module`` key names (a file could make ``voltnet predict`` import and run any installed module)."""
    import fnmatch

    from pymatgen.core import IStructure, Structure

    try:
        from pymatgen.io.registry import get_structure_format
    except ImportError:  # a pymatgen before its format registry: the patterns its Structure.from_file goes by
        name = Path(path).name.lower()
        fmt = next((fmt for fmt, patterns in (('json', ('*.json*', '*.mson*')), ('yaml', ('*.yaml*', '*.yml*')))
                    if any(fnmatch.fnmatch(name, pattern) for pattern in patterns)), None)
    else:
        try:
            fmt = get_structure_format(filename=Path(path).name).name
        except ValueError:
            fmt = None
    if fmt == 'cif':  # pymatgen reads the first data block of a CIF and says nothing of the others
        from pymatgen.io.cif import CifFile

        blocks = [name for name, block in CifFile.from_file(path).data.items()
                  if {'_atom_site_fract_x', '_atom_site_Cartn_x'} & set(block.data)]
        if len(blocks) > 1:
            _fail(f'{option} {path}: the file holds {len(blocks)} structures (data blocks '
                  f'{", ".join(blocks[:5])}{", ..." if len(blocks) > 5 else ""}): give one structure per file')
    if fmt not in ('json', 'yaml'):
        return Structure.from_file(path)
    from monty.io import zopen

    with zopen(path, mode='rt', encoding='utf-8') as handle:
        text = handle.read()
    if fmt == 'json':
        document = json.loads(text)
    else:
        from ruamel.yaml import YAML

        document = YAML(typ='safe', pure=True).load(text)
    if not isinstance(document, dict):
        raise ValueError(f'the file holds a {type(document).__name__}, not the dictionary of a structure')
    known = {(f'{cls.__module__}', cls.__name__) for cls in (Structure, IStructure)}
    top = (document.get('@module'), document.get('@class'))
    if top != (None, None) and top not in known:
        _fail(f'{option} {path}: the file is a {".".join(filter(None, top))}, not a pymatgen Structure')
    for where, name in _class_names(document, ''):
        _fail(f'{option} {path}: {where} names a Python class to load ({name}); a structure file may not '
              '(pymatgen would import that module): refused')
    return Structure.from_dict(document)


def read_structure_file(where: str, path: str):
    """The pymatgen ``Structure`` of file ``path``, or exit naming ``where`` it was given (an option, a line of a
    file) and why pymatgen could not read it."""
    if not _has_structure_name(path):  # pymatgen picks the reader by the name alone
        _fail(f'{where} {path}: pymatgen reads a structure file by its name (*.cif, POSCAR, *.vasp, *.json, '
              '...), and this one has none of them: rename it')
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            structure = _read_structure_file(where, path)
    except Exception as exception:  # noqa: BLE001 - pymatgen raises many kinds for a file it cannot read
        _fail(f'{where} {path}: not a structure file pymatgen can read ({type(exception).__name__}: {exception})')
    for message in _reader_warnings(caught):
        click.echo(f'Warning: {where} {path}: {message}', err=True)
    return structure


def _reader_warnings(caught) -> list[str]:
    """What a structure reader warned of, once each, without library deprecation noise: pymatgen's CIF parser
    warns an issue, then again inside "Issues encountered while parsing CIF: ...", and printed both raw, with its
    source line (``.../pymatgen/io/cif.py:1290: UserWarning: ... warnings.warn(``)."""
    noise = (DeprecationWarning, PendingDeprecationWarning, FutureWarning, ImportWarning, ResourceWarning)
    messages = list(dict.fromkeys(str(w.message).strip() for w in caught if not issubclass(w.category, noise)))
    return [m for m in messages if m and not any(m != other and m in other for other in messages)]


def read_structure_pair(charged: str, discharged: str) -> list:
    """The pymatgen ``Structure``s of the files ``charged`` and ``discharged``, or exit naming the option and the
    file pymatgen could not read."""
    return [read_structure_file(option, path)
            for option, path in (('--charged', charged), ('--discharged', discharged))]


def _structure_pair_record(charged: str, discharged: str, ion: str):
    """The record of a pair of structure files (:func:`~aiida_voltnet.ml.structures.record_from_structures`), or
    exit with the file pymatgen could not read."""
    from aiida_voltnet.ml.structures import record_from_structures

    return record_from_structures(*read_structure_pair(charged, discharged), ion, battery_id=f'{charged}->{discharged}')


def _check_device(device):
    from aiida_voltnet.ml.training import resolve_device

    try:
        resolve_device(device)
    except ValueError as exception:
        _fail(f'--device: {exception}')


def _read_model(path):
    from aiida_voltnet.ml.models import ModelIntegrityError, VoltageModel

    try:
        return VoltageModel.load(path)
    except FileNotFoundError as exception:  # a directory that holds no model: the argument is wrong, not the model
        _fail(f'--model {path}: {exception}')
    except (ModelIntegrityError, ValueError, KeyError) as exception:
        _fail(f'cannot load model {path}: {exception}', EXIT_BAD_MODEL)


@cli.command()
@click.option('--model', 'model_dir', required=True, type=click.Path(exists=True, file_okay=False),
              help='Model directory written by "voltnet train".')
@click.option('--data', 'data', type=click.Path(exists=True, dir_okay=False),
              help='CSV of electrodes to predict (average_voltage may be absent).')
@click.option('--out', 'out', type=click.Path(dir_okay=False),
              help='Output CSV: battery_id,predicted_voltage,uncertainty (with --data).')
@click.option('--charged', help='The charged (ion-poor) member: a formula, e.g. FePO4, or a structure file '
                                '(CIF, POSCAR, ... whatever pymatgen reads; symmetry from spglib).')
@click.option('--discharged', help='The discharged (ion-rich) member: a formula, e.g. LiFePO4, or a structure file.')
@click.option('--ion', help='Working ion, e.g. Li.')
@click.option('--device', default='auto', show_default=True, help='auto, cpu or cuda[:N].')
@click.option('--extrapolation-column', is_flag=True,
              help='With --data: add a fourth column, extrapolation, to OUT.csv: empty, or why that row\'s '
                   'prediction is extrapolation (unseen host elements, ion content outside the training range, '
                   'features far beyond the training range, end members reversed; several joined by "; ").')
@_interrupt_exits_130('--out, if given, holds what it held before or all of the new predictions, never a part')
def predict(model_dir, data, out, charged, discharged, ion, device, extrapolation_column):
    """Predict average voltages for a CSV, or for one charged/discharged pair of formulas or structure files.

    A pair given as formulas has no symmetry (the model was trained with it; a pair of structure files has it).
    The uncertainty is the ensemble's calibrated spread; a one-member model (svr, krr, --members 1) has none and
    writes 0, with a warning.
    """
    from aiida_voltnet.ml.featurizers import input_warnings_collected
    from aiida_voltnet.ml.records import (ElectrodeDataError, ElectrodeRecord, read_electrodes_csv, validate_record,
                                          write_files_atomically)

    single = any(v is not None for v in (charged, discharged, ion))
    from_structures: list[str] = []
    if single == bool(data):
        _fail('give either --data CSV --out OUT.csv, or --charged F --discharged F --ion ION')
    if single and out:
        _fail('--out goes with --data (a single pair is printed)')
    if single and extrapolation_column:
        _fail('--extrapolation-column goes with --data (a single pair prints its warning)')
    if out:
        _check_output_path(out, directory=False)
        if data and Path(out).exists() and os.path.samefile(out, data):  # a link, another case on macOS, ...
            _fail(f'--out {out} is the --data file: the predictions would replace the electrodes; choose another '
                  'name')
        if Path(out).resolve().parent.is_dir() and os.path.samefile(Path(out).resolve().parent, model_dir):
            _fail(f'--out {out} is inside the --model directory {model_dir}: the predictions would sit among (or '
                  'replace) the model\'s files; choose a path outside it')
    _check_device(device)
    model = _read_model(model_dir)
    target = model.metadata.get('target', 'average_voltage')
    if target != 'average_voltage':  # e.g. a max_delta_volume model of the report: its numbers are no volts
        _fail(f'--model {model_dir} was trained to predict {target}, not the average voltage: "voltnet predict" '
              'writes voltages')
    try:
        if single:
            if None in (charged, discharged, ion):
                _fail('--charged, --discharged and --ion go together')
            charged, discharged, ion = charged.strip(), discharged.strip(), ion.strip()  # as a CSV's values are
            files = [_is_structure_file(option, value)
                     for option, value in (('--charged', charged), ('--discharged', discharged))]
            if any(files):
                if not all(files):
                    _fail('--charged and --discharged are both structure files or both formulas: '
                          f'{charged if files[0] else discharged} is a file, {discharged if files[0] else charged} '
                          'is none')
                with input_warnings_collected() as from_structures:  # occupancies such as 0.33 for 1/3
                    records = [_structure_pair_record(charged, discharged, ion)]
                from pymatgen.core import Composition

                charged = f'{Composition(records[0].formula_charge).reduced_formula} ({charged})'  # formula (file)
                discharged = f'{Composition(records[0].formula_discharge).reduced_formula} ({discharged})'
            else:
                records = [validate_record(ElectrodeRecord(battery_id=f'{charged}->{discharged}',
                                                           formula_charge=charged, formula_discharge=discharged,
                                                           working_ion=ion))]
            if records[0].end_members_reversed:
                _fail(f'--discharged {discharged} must hold more {ion} per host atom than --charged {charged} '
                      '(the charged member is the ion-poor one): swap them')
        else:
            if not out:
                _fail('--data needs --out OUT.csv')
            records = read_electrodes_csv(data, report_reversed=False)  # the warning below names them
    except (ElectrodeDataError, ValueError) as exception:
        _fail(str(exception))
    try:
        with input_warnings_collected() as rounded:
            mean, std = model.predict(records, device=device)
    except (ElectrodeDataError, ValueError) as exception:  # e.g. an ion the model never saw: the file, as above
        _fail(f'{data}: {exception}' if data and not str(exception).startswith(str(data)) else str(exception))
    for message in [*from_structures, *rounded]:
        click.echo(f'Warning: {message}', err=True)
    warning = model.extrapolation_warning(records)
    if warning:
        hint = '' if single or extrapolation_column else ' (--extrapolation-column flags each such row in --out)'
        click.echo(f'Warning: {warning}{hint}', err=True)
    if len(model.members) == 1:
        click.echo(f'Warning: {single_member_warning(model_dir, model.model_name)}', err=True)
    if single:
        click.echo(f'{discharged} / {charged} ({ion}): {mean[0]:.3f} +/- {std[0]:.3f} V '
                   f'(model {model.saved_version[:16]})')
        return
    table = io.StringIO(newline='')
    writer = csv.writer(table, lineterminator='\n')  # '\r\n' left '\r' in an empty last field for awk and grep
    flags = model.extrapolation_flags(records) if extrapolation_column else None
    writer.writerow(['battery_id', 'predicted_voltage', 'uncertainty'] + (['extrapolation'] if flags is not None else []))
    for index, (record, m, s) in enumerate(zip(records, mean, std)):
        writer.writerow([record.battery_id, f'{m:.6f}', f'{s:.6f}'] + ([flags[index]] if flags is not None else []))
    try:
        mode = os.stat(out).st_mode  # through links
    except OSError:
        mode = None
    # /dev/stdout on a shell's `> file` is that regular file: written into too, not replaced under the shell
    regular = mode is not None and stat.S_ISREG(mode) and not os.path.abspath(out).startswith(('/dev/', '/proc/'))
    try:
        if mode is not None and not regular:  # /dev/stdout, /dev/null, a FIFO: written into, as `>` would
            with open(out, 'wb') as handle:
                handle.write(table.getvalue().encode())
        else:  # a link is written through (its target replaced, the link kept); never half an OUT.csv
            final = Path(os.path.realpath(out))
            write_files_atomically(final.parent, {final.name: table.getvalue().encode()})
    except OSError as exception:
        _fail(f'--out {out}: cannot write: {exception.strerror or exception}')
    click.echo(f'Wrote {len(records)} prediction{"" if len(records) == 1 else "s"} to {out}'
               + (' (it replaces the file that was there)' if regular else ''), err=mode is not None and not regular)


from . import aiida_commands  # noqa: E402,F401  (registers quickstart, provenance, predictions)
from . import report_command  # noqa: E402,F401  (registers report)
from . import dft_commands  # noqa: E402,F401  (registers dft-setup, verify)
from . import mp_command  # noqa: E402,F401  (registers fetch-mp)
