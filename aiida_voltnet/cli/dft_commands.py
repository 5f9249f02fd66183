"""``voltnet dft-setup``: what DFT verification needs in an AiiDA profile (a pseudopotential family from Debian's
files, a localhost computer and a pw.x code), and ``voltnet verify``: the DFT voltage of one pair beside its ML
prediction."""
from __future__ import annotations

from pathlib import Path

import click

from . import _fail, cli, single_member_warning
from .aiida_commands import QUICKSTART_PROFILE, _load_node, _load_profile, ensure_embedded_profile


def _pw_path(pw_executable: str, computer_label: str) -> str:
    """The pw.x path to store in the code: on a local computer an absolute path that exists (``pw.x`` is looked up
    on PATH, ``bin/pw.x`` made absolute: stored as given, every job looked for it in its own work directory); on a
    remote one an absolute path, which is not checked here."""
    import os
    import shutil
    from pathlib import PurePosixPath

    from aiida import orm
    from aiida.common.exceptions import NotExistent

    try:
        local = orm.load_computer(computer_label).transport_type == 'core.local'
    except NotExistent:
        local = True  # created below on localhost
    if not local:
        if not PurePosixPath(pw_executable).is_absolute():
            raise ValueError(f'--pw {pw_executable}: give the absolute path of pw.x on computer {computer_label}')
        return pw_executable
    found = shutil.which(pw_executable) if os.sep not in pw_executable else pw_executable
    if not found or not Path(found).is_file():
        raise FileNotFoundError(f'{pw_executable} not found: install Quantum ESPRESSO (bash scripts/dft.sh installs '
                                "Debian's quantum-espresso) or pass --pw")
    return os.path.abspath(found)  # not resolved: /usr/bin/pw.x stays the path codes were stored with


def setup_dft(computer_label: str = 'localhost', workdir: str | None = None, pw_executable: str = '/usr/bin/pw.x',
              echo=click.echo):
    """Install the Debian PBEsol family, and a ``core.direct`` localhost computer and a pw.x code when missing, in
    the loaded profile. :returns: ``(family, code)``."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent
    from aiida.manage.configuration import get_config

    from aiida_voltnet.dft import install_debian_pbesol_family, pw_code

    pw_executable = _pw_path(pw_executable, computer_label)
    family = install_debian_pbesol_family()
    echo(f'pseudopotential family {family.label}: {", ".join(sorted(family.elements))} '
         f'(cutoff stringencies {", ".join(family.get_cutoff_stringencies())})')
    try:
        computer = orm.load_computer(computer_label)
    except NotExistent:
        workdir = workdir or str(Path(get_config().dirpath) / 'voltnet-work')
        computer = orm.Computer(label=computer_label, hostname='localhost', transport_type='core.local',
                                scheduler_type='core.direct', workdir=workdir).store()
        computer.set_minimum_job_poll_interval(0.0)
        computer.configure()
        echo(f'computer {computer.label}: core.direct scheduler, work directory {workdir}')
    else:
        user = orm.User.collection.get_default()
        if not computer.is_user_configured(user):  # e.g. imported from an archive, which carries no configuration
            if computer.transport_type != 'core.local':
                raise ValueError(f'computer {computer.label} is not configured for user {user.email}: `verdi '
                                 f'computer configure {computer.transport_type} {computer.label}` first')
            computer.configure(user=user)
            echo(f'computer {computer.label}: configured for user {user.email} (it was not)')
    code = pw_code(computer, executable=pw_executable)
    echo(f'code {code.full_label}: {code.get_executable()}')
    return family, code


@cli.command('dft-setup')
@click.option('--profile', default=None, help='AiiDA profile (default: the default profile; with --embedded the '
                                              f'SQLite profile {QUICKSTART_PROFILE!r}).')
@click.option('--embedded', is_flag=True, help='Create or reuse the SQLite-backed profile of the quickstart.')
@click.option('--computer', 'computer_label', default='localhost', show_default=True,
              help='Computer for pw.x (created with the direct scheduler when missing).')
@click.option('--pw', 'pw_executable', default='/usr/bin/pw.x', show_default=True, help='pw.x executable.')
def dft_setup(profile, embedded, computer_label, pw_executable):
    """Install the PBEsol pseudopotential family from Debian's quantum-espresso-data, and a pw.x code."""
    if embedded:
        ensure_embedded_profile(profile or QUICKSTART_PROFILE)
    else:
        _load_profile(profile, hint=', or pass --embedded for the quickstart\'s SQLite profile')
    try:
        setup_dft(computer_label, pw_executable=pw_executable)
    except (FileNotFoundError, ValueError) as exception:
        _fail(str(exception))


def _pw_code(code_label: str | None):
    """The pw.x code ``code_label``, or the one ``voltnet dft-setup`` made; or exit naming what is wrong."""
    from aiida import orm

    given = code_label is not None
    if code_label is None:  # the code dft-setup made, on whichever computer it was given
        codes = orm.QueryBuilder().append(orm.InstalledCode, filters={'label': 'pw-debian'}).all(flat=True)
        if len(codes) > 1:
            _fail(f'several pw.x codes from `voltnet dft-setup` ({", ".join(c.full_label for c in codes)}): choose '
                  'one with --code')
        code_label = codes[0].full_label if codes else 'pw-debian@localhost'
    try:
        code = orm.load_code(code_label)
    except Exception as exception:  # noqa: BLE001 - NotExistent and friends
        if given:  # a pk or uuid of another kind of node was said to be 'no Code found'
            try:
                other = orm.load_node(code_label)
            except Exception:  # noqa: BLE001 - no node of that identifier either: the code's message stands
                other = None
            if other is not None and not isinstance(other, orm.AbstractCode):
                _fail(f'--code {code_label}: node {code_label} is {type(other).__name__}<{other.pk}>, not a Code '
                      '(`verdi code list` lists the codes)')
            _fail(f'--code {code_label}: {exception} (`verdi code list` lists the codes; `voltnet dft-setup` '
                  'creates pw-debian@localhost)')
        _fail(f'no pw.x code: {exception}; run `voltnet dft-setup` first')
    from aiida_voltnet.calculations.functions import check_code_plugin

    problem = check_code_plugin(code, 'quantumespresso.pw', '--code',
                                'give a pw.x code (`voltnet dft-setup` creates pw-debian@localhost)')
    if problem:  # the work chains' own launch check, said before anything else is read
        _fail(problem)
    if isinstance(code, orm.InstalledCode) and code.computer.transport_type == 'core.local':
        # a missing executable ran the jobs into the scheduler's 'No such file or directory', which the work chain
        # told as 'an unhandled failure' (exit 402) after storing dozens of nodes; a remote computer is not asked
        # (its transport may need a password or an agent)
        from aiida.common.exceptions import ValidationError

        try:
            code.validate_filepath_executable()
        except ValidationError as exception:
            _fail(f'--code {code.full_label}: {exception}')
    return code


def _run_in_interpreter(builder, process_class):
    """Run ``builder`` in this interpreter (:func:`~aiida_voltnet.cli.running.run_interruptible`) and return
    ``(outputs, node)``; or exit: 2 for inputs refused at launch (nothing stored, e.g. a model that never saw the
    ion), 1 for a ``ValueError`` raised by a step once the work chain ran (named, with its pk), 130 for Ctrl-C or
    SIGTERM (the unfinished processes marked killed, named)."""
    from aiida import orm

    from .running import Interrupted, run_interruptible

    newest = orm.QueryBuilder().append(orm.Node, project='id').order_by({orm.Node: {'id': 'desc'}}).first(flat=True)
    try:
        return run_interruptible(builder)
    except Interrupted as exception:
        _fail(str(exception), 130)
    except ValueError as exception:
        ran = orm.QueryBuilder().append(process_class, filters={'id': {'>': newest or 0}}, project='id').first()
        if ran:
            _fail(f'{process_class.__name__}<{ran[0]}> excepted: {type(exception).__name__}: {exception} '
                  f'(verdi process report {ran[0]})', 1)
        _fail(f'refused before any pw.x job: {_in_option_names(exception)}')


#: ``--cutoff-stringency`` of ``verify`` and ``screen``.
_CUTOFF_STRINGENCY = click.option(
    '--cutoff-stringency', default=None,
    help="Which of the family's recommended cutoffs  [default: the protocol's: ci for ci, normal for balanced, "
         'precise for precise]. A family installed with aiida-pseudo (e.g. `aiida-pseudo install sssp`) recommends '
         'normal only.')


def _in_option_names(exception) -> str:
    """A launch refusal in this command's option names: the work chains' ``settings.cutoff_stringency`` is
    ``--cutoff-stringency`` here."""
    return str(exception).replace('settings.cutoff_stringency', '--cutoff-stringency')


@cli.command()
@click.option('--model', 'model_id', default=None, help='pk or uuid of a voltage model to compare with.')
@click.option('--pair', default=None, type=click.Choice(['LiCoO2', 'LiNiO2']),
              help='Built-in layered-oxide pair (R-3m, Li removed for the charged cell)  [default: LiCoO2, unless '
                   '--charged/--discharged are given]')
@click.option('--charged', type=click.Path(exists=True, dir_okay=False),
              help='Structure file of your own charged (ion-poor) member: CIF, POSCAR, ... whatever pymatgen reads; '
                   'with --discharged and --ion, instead of --pair.')
@click.option('--discharged', type=click.Path(exists=True, dir_okay=False),
              help='Structure file of the discharged (ion-rich) member, the same host framework.')
@click.option('--ion', default=None, help='Working ion of --charged/--discharged, e.g. Li.')
@click.option('--protocol', default='balanced', show_default=True, type=click.Choice(['ci', 'balanced', 'precise']),
              help='DFT settings (see docs/dft.md).')
@click.option('--code', 'code_label', default=None, help='pw.x code label (default: the one voltnet dft-setup made).')
@click.option('--pseudo-family', default=None,
              help="aiida-pseudo family label (default: the protocol's, voltnet/debian/PBEsol from dft-setup, which "
                   'has Li, Co, Fe, Ni and O only).')
@_CUTOFF_STRINGENCY
@click.option('--profile', default=None, help='AiiDA profile (default: the default profile).')
def verify(model_id, pair, charged, discharged, ion, protocol, code_label, pseudo_family, cutoff_stringency, profile):
    """DFT-verify a pair with Quantum ESPRESSO (runs here, in this interpreter) beside the ML prediction.

    The pair is a built-in one (--pair) or your own two structure files (--charged, --discharged, --ion), which
    become the StructureData inputs of VerifyWorkChain: ci and balanced take the cells as given (bring relaxed
    ones), precise relaxes both first.
    """
    import time

    from aiida import orm

    from aiida_voltnet.dft import layered_oxide_pair
    from aiida_voltnet.workflows.verify import VerifyWorkChain

    from aiida_voltnet.data.model import VoltageModelData

    files = [option for option, value in (('--charged', charged), ('--discharged', discharged), ('--ion', ion))
             if value is not None]
    if files and pair is not None:
        _fail(f'--pair {pair} and {", ".join(files)}: give a built-in pair or your own structure files, not both')
    if files and len(files) < 3:
        missing = sorted({'--charged', '--discharged', '--ion'} - set(files))
        _fail(f'{", ".join(files)} without {", ".join(missing)}: your own pair needs --charged, --discharged and --ion')
    structures = None
    if files:  # read before the profile: a file pymatgen cannot read stops here
        from . import read_structure_pair

        structures = read_structure_pair(charged, discharged)
        from aiida_voltnet.ml.featurizers import input_warnings_collected
        from aiida_voltnet.ml.structures import record_from_structures

        with input_warnings_collected() as said:  # two hosts that are not one framework, rounded occupancies
            try:
                record_from_structures(*structures, ion, battery_id=f'{charged} -> {discharged}')
            except ValueError:
                pass  # VerifyWorkChain refuses the pair at launch, before anything is stored, and says why
        for message in said:
            click.echo(f'Warning: {message}', err=True)
    model = _load_node(model_id, profile, VoltageModelData) if model_id else _load_profile(profile)
    if model_id:
        from aiida_voltnet.calculations.functions import check_voltage_model

        message = check_voltage_model(model)  # before any pw.x job, as VerifyWorkChain's validator would
        if message:
            _fail(f'--model {model_id}: {message}')
    code = _pw_code(code_label)
    if structures is not None:
        cells = [_structure_node(Path(file), structure) for file, structure in zip((charged, discharged), structures)]
        name = f'{structures[1].composition.reduced_formula} / {structures[0].composition.reduced_formula} ({ion})'
    else:
        pair = pair or 'LiCoO2'
        cells, ion, name = layered_oxide_pair(pair[2:4]), 'Li', pair
    overrides = {**({'model': model} if model_id else {}),
                 **({'pseudo_family': orm.Str(pseudo_family)} if pseudo_family else {}),
                 **({'settings': {'cutoff_stringency': cutoff_stringency}} if cutoff_stringency else {})}
    try:  # the builder validates each input as it is set (the code's computer, say)
        builder = VerifyWorkChain.get_builder_from_protocol(code, *cells, ion, protocol=protocol, overrides=overrides)
    except ValueError as exception:
        _fail(f'refused before any pw.x job: {_in_option_names(exception)}')
    started = time.perf_counter()
    results, node = _run_in_interpreter(builder, VerifyWorkChain)
    if not node.is_finished_ok:
        if 'ml_voltage' in node.outputs:  # predicted before the DFT failed
            spread = f' +/- {node.outputs.ml_uncertainty.value:.3f}' if 'ml_uncertainty' in node.outputs else ''
            click.echo(f'{name}: ML {node.outputs.ml_voltage.value:.3f}{spread} V (no DFT voltage to compare)')
        _fail(f'VerifyWorkChain<{node.pk}> failed with exit status {node.exit_status}: {node.exit_message}', 1)
    line = f'{name}: DFT {results["dft_voltage"].value:.3f} V'
    if 'ml_voltage' in results:
        spread = f' +/- {results["ml_uncertainty"].value:.3f}' if 'ml_uncertainty' in results else ''
        line += f', ML {results["ml_voltage"].value:.3f}{spread} V, ML - DFT {results["difference"].value:+.3f} V'
    click.echo(f'{line}  (VerifyWorkChain<{node.pk}>, {time.perf_counter() - started:.0f} s)')
    unseen = results['ml_unseen_elements'].get_list() if 'ml_unseen_elements' in results else []
    outside = [phrase for name in ('ml_ion_content_outside', 'ml_features_outside') if name in results
               for phrase in results[name].get_list()]
    if 'ml_uncertainty' in results and model.base.attributes.get('n_members', 2) < 2:  # as `voltnet predict` says
        click.echo(f'Warning: {single_member_warning(f"model<{model.pk}>", model.model_name)}', err=True)
    if unseen or outside:  # as `voltnet predict` warns for the same prediction
        click.echo('Warning: the ML prediction is extrapolation: '
                   + '; '.join(([f'the host has {", ".join(unseen)}, which no training host had'] if unseen else [])
                               + outside), err=True)


#: The columns of a `voltnet screen` candidates file.
CANDIDATE_COLUMNS = ('name', 'charged', 'discharged', 'working_ion')


def read_candidates(path: str) -> tuple[dict[str, dict], dict[Path, object]]:
    """The candidates of a CSV file with the columns :data:`CANDIDATE_COLUMNS` (structure file paths relative to
    the CSV's folder): ``({name: {charged, discharged: resolved file Path, working_ion: str}}, {file: pymatgen
    Structure})``, each file read once however many rows name it. Or exit naming the line and the column of what is
    wrong, a pair that is not one electrode of its ion included (reversed, the same cell twice, an ion in neither)."""
    import csv

    from aiida_voltnet.ml.featurizers import input_warnings_collected
    from aiida_voltnet.ml.structures import record_from_structures
    from aiida_voltnet.workflows.ports import pair_name_problem

    from . import read_structure_file

    folder = Path(path).resolve().parent
    try:
        text = Path(path).read_text(encoding='utf-8-sig')
    except (OSError, UnicodeDecodeError) as exception:
        _fail(f'--candidates {path}: cannot read it ({exception})')
    reader = csv.DictReader(text.splitlines())
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [name for name in CANDIDATE_COLUMNS if name not in header]
    if missing:
        _fail(f'--candidates {path}: missing column(s) {", ".join(missing)}; the header must name '
              f'{",".join(CANDIDATE_COLUMNS)}')
    candidates, lines, structures, checked = {}, {}, {}, set()
    for row in reader:
        line = reader.line_num
        row = {(key or '').strip(): (value or '').strip() for key, value in row.items() if key is not None}
        empty = [name for name in CANDIDATE_COLUMNS if not row.get(name)]
        if empty:
            _fail(f'--candidates {path}, line {line}: {", ".join(empty)} empty')
        name = row['name']
        problem = pair_name_problem(name)
        if problem:
            _fail(f'--candidates {path}, line {line}, name: {problem}')
        if name in candidates:
            _fail(f'--candidates {path}, line {line}: name {name!r} is given twice (first on line {lines[name]})')
        lines[name] = line
        files = {}
        for column in ('charged', 'discharged'):
            file = (Path(row[column]) if Path(row[column]).is_absolute() else folder / row[column]).resolve()
            where = f'--candidates {path}, line {line}, {column}'
            if not file.is_file():
                _fail(f'{where}: {file} is not a file')
            if file not in structures:
                structures[file] = read_structure_file(where + ':', str(file))
            files[column] = file
        pair = (files['charged'], files['discharged'], row['working_ion'])
        if pair not in checked:  # once a pair: rows repeating it would repeat its symmetry analysis
            try:  # as voltnet verify refuses it; the screen would only list it as not predicted, after storing it
                with input_warnings_collected() as said:  # two hosts that are not one framework, say
                    record_from_structures(structures[pair[0]], structures[pair[1]], pair[2], battery_id=name)
            except ValueError as exception:
                _fail(f'--candidates {path}, line {line}: {exception}')
            for message in said:
                click.echo(f'Warning: --candidates {path}, line {line}: {message}', err=True)
            checked.add(pair)
        candidates[name] = {**files, 'working_ion': row['working_ion']}
    if not candidates:
        _fail(f'--candidates {path}: no candidate rows below the header')
    return candidates, structures


@cli.command()
@click.option('--model', 'model_id', required=True, help='pk or uuid of the voltage model that screens.')
@click.option('--candidates', 'candidates_file', required=True, type=click.Path(exists=True, dir_okay=False),
              help='CSV with the columns name,charged,discharged,working_ion: a candidate a row, its two structure '
                   'files (paths relative to the CSV) and its working ion. A name becomes the battery_id and a '
                   'link label (letters, digits, single underscores; at most 200 characters).')
@click.option('--top-k', default=1, show_default=True, type=click.IntRange(min=1),
              help='How many candidates to verify with DFT.')
@click.option('--mode', default='window', show_default=True, type=click.Choice(['window', 'uncertainty']),
              help='window: the top-k highest predicted voltages; uncertainty: the top-k largest ensemble spreads '
                   '(both within --voltage-min..--voltage-max).')
@click.option('--voltage-min', type=float, default=None, help='Only candidates predicted at or above this (V).')
@click.option('--voltage-max', type=float, default=None, help='Only candidates predicted at or below this (V).')
@click.option('--protocol', default='balanced', show_default=True, type=click.Choice(['ci', 'balanced', 'precise']),
              help='DFT settings of every verification (see docs/dft.md).')
@click.option('--code', 'code_label', default=None, help='pw.x code label (default: the one voltnet dft-setup made).')
@click.option('--pseudo-family', default=None,
              help="aiida-pseudo family label (default: the protocol's, voltnet/debian/PBEsol from dft-setup).")
@_CUTOFF_STRINGENCY
@click.option('--retrain-dataset', default=None,
              help='pk or uuid of an ElectrodeDataset (e.g. the records the model was trained on): retrain on it '
                   'plus the verified candidates, with the screened model\'s recipe (one active-learning round). '
                   'A candidate it already holds as dft:<name> (verified by an earlier round) is left out.')
@click.option('--profile', default=None, help='AiiDA profile (default: the default profile).')
def screen(model_id, candidates_file, top_k, mode, voltage_min, voltage_max, protocol, code_label, pseudo_family,
           cutoff_stringency, retrain_dataset, profile):
    """Screen candidate electrodes with a model and DFT-verify the best (ScreenWorkChain, run in this interpreter).

    One batch prediction with uncertainty, a selection, one working-ion metal reference per ion, a VerifyWorkChain
    per selected candidate; prints the ML-vs-DFT table of the selected. Exit 1 when the work chain failed (its
    table is printed where it has one).
    """
    import math
    import time

    from aiida import orm

    from aiida_voltnet.calculations.dft import check_selection
    from aiida_voltnet.data import ElectrodeDataset
    from aiida_voltnet.data.model import VoltageModelData
    from aiida_voltnet.workflows.screen import ScreenWorkChain
    from aiida_voltnet.workflows.verify import VerifyWorkChain

    selection = {'mode': mode, 'top_k': top_k}
    for key, value in (('voltage_min', voltage_min), ('voltage_max', voltage_max)):
        if value is not None:
            if not math.isfinite(value):
                _fail(f'--{key.replace("_", "-")} must be a finite number of volts, got {value}')
            selection[key] = value
    message = check_selection(selection)
    if message:  # in the options' names, not the selection Dict's keys
        for key in ('voltage_min', 'voltage_max'):  # --top-k and --mode are checked by click
            message = message.replace(f'selection {key}', key).replace(key, f'--{key.replace("_", "-")}')
        _fail(message)
    candidates, structures = read_candidates(candidates_file)  # before the profile: a bad file stops here
    model = _load_node(model_id, profile, VoltageModelData)
    from aiida_voltnet.calculations.functions import check_voltage_model

    message = check_voltage_model(model)
    if message:
        _fail(f'--model {model_id}: {message}')
    dataset = _load_node(retrain_dataset, profile, ElectrodeDataset) if retrain_dataset else None
    code = _pw_code(code_label)
    inputs = VerifyWorkChain.get_protocol_inputs(protocol)
    if cutoff_stringency:
        inputs['settings']['cutoff_stringency'] = cutoff_stringency
    builder = ScreenWorkChain.get_builder()
    try:  # the builder validates each input as it is set (the code's computer, say)
        builder.model = model
        cells = {file: _structure_node(file, structure) for file, structure in structures.items()}  # one a file
        ions = {ion: orm.Str(ion) for ion in {pair['working_ion'] for pair in candidates.values()}}  # one an ion
        builder.candidates = {name: {'charged': cells[pair['charged']], 'discharged': cells[pair['discharged']],
                                     'working_ion': ions[pair['working_ion']]}
                              for name, pair in candidates.items()}
        builder.selection = orm.Dict(selection)
        builder.verify = {'code': code, 'settings': orm.Dict(inputs['settings']), 'options': inputs['options'],
                          'pseudo_family': orm.Str(pseudo_family or inputs['pseudo_family'])}
        if dataset is not None:
            builder.retrain = {'dataset': dataset}
    except ValueError as exception:
        _fail(f'refused before any pw.x job: {_in_option_names(exception)}')
    started = time.perf_counter()
    results, node = _run_in_interpreter(builder, ScreenWorkChain)
    _echo_screen(results, node, time.perf_counter() - started, retrain=dataset is not None)
    if not node.is_finished_ok:
        _fail(f'ScreenWorkChain<{node.pk}> failed with exit status {node.exit_status}: {node.exit_message}', 1)


def _structure_node(file: Path, structure):
    """The ``StructureData`` of a structure file: labelled with the file's name, described by its path and sha256,
    so that the graph says which file a cell came from. Oxidation states (a CIF's ``_atom_type_oxidation_number``,
    as pymatgen and ICSD write them) are dropped: ``StructureData`` fails on them with a TypeError, and pw.x takes
    none (the ML prediction ignores them as well)."""
    import hashlib

    from aiida import orm

    structure = structure.copy()
    structure.remove_oxidation_states()
    node = orm.StructureData(pymatgen=structure)
    node.label = file.name[:255]
    node.description = f'{file} (sha256 {hashlib.sha256(file.read_bytes()).hexdigest()})'
    return node


def _echo_screen(results: dict, node, seconds: float, retrain: bool = False) -> None:
    """The screen's summary: counts, the rejected candidates, the table of the selected and the MAE."""
    if 'summary' not in results:
        return
    summary = results['summary'].get_dict()
    click.echo(f'{summary["n_predicted"]} of {summary["n_candidates"]} candidate(s) predicted, '
               f'{summary["n_selected"]} selected for DFT, {summary["n_verified"]} verified, '
               f'{summary["n_not_verified"]} not submitted, {summary["n_failed"]} failed')
    for name, why in summary['rejected'].items():
        click.echo(f'  not predicted: {name}: {why}')
    for ion, why in summary['failed_references'].items():
        click.echo(f'  {ion} metal reference: {why}')
    if summary['rows']:
        width = max(len('candidate'), *(len(row['battery_id']) for row in summary['rows']))
        ml = [f'{row["ml_voltage"]:.3f} +/- {row["ml_uncertainty"]:.3f}' for row in summary['rows']]
        ml_width = max(len('ML (V)'), *map(len, ml))
        click.echo(f'  {"candidate":<{width}}  ion  {"ML (V)":<{ml_width}}  DFT (V)  ML-DFT (V)  status')
        for row, prediction in zip(summary['rows'], ml):
            dft = f'{row["dft_voltage"]:7.3f}' if row['dft_voltage'] is not None else f'{"-":>7}'
            difference = f'{row["difference"]:+10.3f}' if row['difference'] is not None else f'{"-":>10}'
            click.echo(f'  {row["battery_id"]:<{width}}  {row["working_ion"]:<3}  {prediction:<{ml_width}}  {dft}  '
                       f'{difference}  {row["status"]}')
    screened = node.inputs.model
    if summary['rows'] and screened.base.attributes.get('n_members', 2) < 2:  # as `voltnet predict` says
        click.echo(f'Warning: {single_member_warning(f"model<{screened.pk}>", screened.model_name)}', err=True)
    mae = summary['mae_verified']
    click.echo((f'ML-DFT MAE of the verified: {mae:.3f} V  ' if mae is not None else '')
               + f'(ScreenWorkChain<{node.pk}>, {seconds:.0f} s; the table: verdi node attributes '
               f'{results["summary"].pk}'
               + (f'; every candidate\'s ML voltage: ArrayData<{results["predictions"].pk}>'
                  if 'predictions' in results else '') + ')')
    if 'retrained_model' in results:
        model = results['retrained_model']
        click.echo(f'retrained: VoltageModelData<{model.pk}> version {model.model_version[:12]} on '
                   f'{results["augmented_dataset"].n_records} records')
        for added, known in sorted(results['augmented_dataset'].base.attributes.get('dft_composition_matches',
                                                                                  {}).items()):
            click.echo(f'Warning: {added} has the composition of training record(s) {", ".join(known)}: the model '
                       'was trained on both targets (this DFT beside their source, e.g. GGA+U for Materials '
                       'Project records)', err=True)
    elif retrain and not summary['n_verified']:
        click.echo('not retrained: no candidate was verified (--retrain-dataset needs at least one DFT voltage)')
