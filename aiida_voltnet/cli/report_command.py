"""``voltnet report``: the seed paper's supplementary tables, reproduced honestly (see ``aiida_voltnet.report``)."""
from __future__ import annotations

import re
import time
from pathlib import Path

import click

from . import _check_device, _check_output_path, _fail, cli


@cli.command()
@click.option('--out', 'out', required=True, type=click.Path(file_okay=False),
              help='Directory for report.md, report.json and the PNG figures.')
@click.option('--quick', is_flag=True, help='Smoke settings (1 seed, 3 folds, few epochs, 1500 rows): < 5 min.')
@click.option('--no-provenance', 'no_provenance', is_flag=True,
              help='Compute in-process, without storing AiiDA processes (no profile needed; same numbers).')
@click.option('--seeds', default=None,
              help='Comma-separated seeds (default: 0 in quick mode, 0,1,2,3,4 in full mode; the caps of both '
                   'protocols, the volume target and the learning curve use the first one).')
@click.option('--data', 'data', type=click.Path(exists=True, dir_okay=False),
              help='CSV in the seed format (default: the shared MP insertion-electrode CSV).')
@click.option('--profile', default=None,
              help='AiiDA profile for provenance mode (default: the default profile, else voltnet-quickstart).')
@click.option('--device', default='auto', show_default=True, help='auto (CUDA when present), cpu or cuda[:N].')
@click.option('--rows', default=None, type=click.IntRange(min=2), hidden=True,
              help='Random subsample of N rows (tests).')
@click.option('--epochs', default=None, type=click.IntRange(min=1),
              help='Epochs of every torch model, on both feature sets (default: CPU budgets that fit the full '
                   'report in 60 min; the paper trains MHA-ResNet 1000 epochs: --epochs 1000 on a GPU).')
@click.option('--folds', default=None, type=click.IntRange(min=2), hidden=True, help='Cross-validation folds.')
@click.option('--threads', default=1, show_default=True, type=click.IntRange(min=1), hidden=True,
              help='CPU threads for torch and OpenMP (1 avoids oversubscription on a shared CPU).')
def report(out, quick, no_provenance, seeds, data, profile, device, rows, epochs, folds, threads):
    """Reproduce the paper's Tables S1-S4 and Figures S3-S5, with and without its target leak."""
    from aiida_voltnet.ml.models import MAX_SEED
    from aiida_voltnet.ml.records import ElectrodeDataError
    from aiida_voltnet.report import ReportSettings, build_report

    if seeds is not None and not seeds.strip():  # an unset "$SEEDS" ran the full 5-seed report (review)
        _fail('--seeds is empty: give comma-separated seeds such as 0,1,2, or leave the option out for the default')
    parts = [part.strip() for part in seeds.split(',')] if seeds else []
    if not all(re.fullmatch('-?[0-9]+', part) for part in parts):  # int() also read '1_0' as 10 and '٣' as 3
        _fail(f'--seeds must be comma-separated integers such as 0,1,2, got {seeds!r}')
    seed_list = [int(part) for part in parts] or None
    if seed_list is not None and not all(0 <= seed <= MAX_SEED for seed in seed_list):
        _fail(f'--seeds must lie in 0..{MAX_SEED}, got {seeds!r}')
    if seed_list is not None and len(set(seed_list)) != len(seed_list):  # a repeat was averaged as a second seed
        _fail(f'--seeds {seeds!r} repeats a seed: each seed once (a repeat counted its test rows twice and gave a '
              'spread of 0)')
    _check_output_path(out, directory=True)
    from aiida_voltnet.report import report_output_problem

    problem = report_output_problem(out)
    if problem:
        _fail(f'--out {out}: {problem}')
    _check_device(device)
    if profile is not None and not no_provenance:  # a profile asked for by name: missing is an error, not a
        from aiida_voltnet.report import load_profile_for_report  # quiet fall back to a report without provenance

        loaded, message = load_profile_for_report(profile)
        if not loaded:
            _fail(f'--profile {profile}: {message}; or pass --no-provenance')
    settings = ReportSettings.make(quick, seeds=seed_list, rows=rows, threads=threads,
                                   provenance=not no_provenance, profile=profile, device=device)
    if epochs is not None:
        settings.torch_epochs = {k: epochs for k in settings.torch_epochs}
        settings.leakfree_epochs = {}
    if folds is not None:
        settings.folds = folds
    if (Path(out) / 'report.md').is_file():
        click.echo(f'Replacing the report in {out}', err=True)
    started = time.perf_counter()
    made = [path for path in (Path(out).absolute(), *Path(out).absolute().parents) if not path.exists()]
    try:
        result = build_report(out, settings, data=data, log=lambda m: click.echo(m, err=True))
    except (ElectrodeDataError, FileNotFoundError, ValueError) as exception:
        for path in made:  # made for this report (--out and its missing parents), which wrote nothing: not left
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        if isinstance(exception, FileNotFoundError) and data is None:  # the shared CSV beside the repository
            _fail(f'{exception.filename}: no such file; pass --data CSV')
        if isinstance(exception, FileNotFoundError):  # not the CSV, which click found: say what is missing
            _fail(f'{exception.filename}: no such file ({exception.strerror})')
        _fail(str(exception))  # e.g. too few rows of --data for the folds' training parts
    s2 = result['table_s2']
    click.echo(f'Table S2 of {out}/report.md ({time.perf_counter() - started:.0f} s), MAE in V, leak-free first; '
               'the paper protocol leaks the target:')
    for model, row in s2.items():
        click.echo(f'  {model:<11} leak-free grouped {row["leakfree_grouped"]["mae"]:.3f}  random '
                   f'{row["leakfree_random"]["mae"]:.3f}  |  paper protocol (leaks) {row["paper"]["mae"]:.3f}  '
                   f'without the leak columns {row["paper_minus_leak"]["mae"]:.3f} V')
