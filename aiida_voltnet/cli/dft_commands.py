"""``voltnet dft-setup``: what DFT verification needs in an AiiDA profile (a pseudopotential family from Debian's
files, a localhost computer and a pw.x code), and ``voltnet verify``: the DFT voltage of one pair beside its ML
prediction."""
from __future__ import annotations

from pathlib import Path

import click

from . import _fail, cli
from .aiida_commands import QUICKSTART_PROFILE, _load_node, _load_profile, ensure_embedded_profile


def setup_dft(computer_label: str = 'localhost', workdir: str | None = None, pw_executable: str = '/usr/bin/pw.x',
              echo=click.echo):
    """Install the Debian PBEsol family, and a ``core.direct`` localhost computer and a pw.x code when missing, in
    the loaded profile. :returns: ``(family, code)``."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent
    from aiida.manage.configuration import get_config

    from aiida_voltnet.dft import install_debian_pbesol_family, pw_code

    if not Path(pw_executable).is_file():
        raise FileNotFoundError(f'{pw_executable} not found: install Quantum ESPRESSO (bash scripts/dft.sh installs '
                                "Debian's quantum-espresso) or pass --pw")
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
@click.option('--profile', default=None, help='AiiDA profile (default: the default profile).')
def verify(model_id, pair, charged, discharged, ion, protocol, code_label, pseudo_family, profile):
    """DFT-verify a pair with Quantum ESPRESSO (runs here, in this interpreter) beside the ML prediction.

    The pair is a built-in one (--pair) or your own two structure files (--charged, --discharged, --ion), which
    become the StructureData inputs of VerifyWorkChain: ci and balanced take the cells as given (bring relaxed
    ones), precise relaxes both first.
    """
    import time

    from aiida import orm
    from aiida.engine import run_get_node

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
    model = _load_node(model_id, profile, VoltageModelData) if model_id else _load_profile(profile)
    if model_id:
        from aiida_voltnet.calculations.functions import check_voltage_model

        message = check_voltage_model(model)  # before any pw.x job, as VerifyWorkChain's validator would
        if message:
            _fail(f'--model {model_id}: {message}')
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
    if code.default_calc_job_plugin != 'quantumespresso.pw':
        _fail(f'--code {code_label}: its default plugin is {code.default_calc_job_plugin!r}, not quantumespresso.pw '
              '(a pw.x code; `voltnet dft-setup` creates pw-debian@localhost)')
    if structures is not None:
        cells = [orm.StructureData(pymatgen=structure) for structure in structures]
        name = f'{structures[1].composition.reduced_formula} / {structures[0].composition.reduced_formula} ({ion})'
    else:
        pair = pair or 'LiCoO2'
        cells, ion, name = layered_oxide_pair(pair[2:4]), 'Li', pair
    overrides = {**({'model': model} if model_id else {}),
                 **({'pseudo_family': orm.Str(pseudo_family)} if pseudo_family else {})}
    builder = VerifyWorkChain.get_builder_from_protocol(code, *cells, ion, protocol=protocol, overrides=overrides)
    started = time.perf_counter()
    newest = orm.QueryBuilder().append(orm.Node, project='id').order_by({orm.Node: {'id': 'desc'}}).first(flat=True)
    try:
        results, node = run_get_node(builder)
    except ValueError as exception:
        # refused at launch, nothing stored (e.g. a model that never saw Li); or raised by a step of the work
        # chain once it ran, which has a node and was not refused before its pw.x jobs
        ran = orm.QueryBuilder().append(VerifyWorkChain, filters={'id': {'>': newest or 0}}, project='id').first()
        if ran:
            _fail(f'VerifyWorkChain<{ran[0]}> excepted: {type(exception).__name__}: {exception} '
                  f'(verdi process report {ran[0]})', 1)
        _fail(f'refused before any pw.x job: {exception}')
    if not node.is_finished_ok:
        _fail(f'VerifyWorkChain<{node.pk}> failed with exit status {node.exit_status}: {node.exit_message}', 1)
    line = f'{name}: DFT {results["dft_voltage"].value:.3f} V'
    if 'ml_voltage' in results:
        spread = f' +/- {results["ml_uncertainty"].value:.3f}' if 'ml_uncertainty' in results else ''
        line += f', ML {results["ml_voltage"].value:.3f}{spread} V, ML - DFT {results["difference"].value:+.3f} V'
    click.echo(f'{line}  (VerifyWorkChain<{node.pk}>, {time.perf_counter() - started:.0f} s)')
    unseen = results['ml_unseen_elements'].get_list() if 'ml_unseen_elements' in results else []
    outside = results['ml_ion_content_outside'].get_list() if 'ml_ion_content_outside' in results else []
    if unseen or outside:  # as `voltnet predict` warns for the same prediction
        click.echo('Warning: the ML prediction is extrapolation: '
                   + '; '.join(([f'the host has {", ".join(unseen)}, which no training host had'] if unseen else [])
                               + outside), err=True)
