"""Batch prediction throughput: the bare core vs the ``voltnet.predict_voltages`` calcfunction, same run, interleaved.

Records: the rows of the shared MP CSV repeated up to ``--n`` (default 10,000), each copy with a unique
``battery_id`` (``<id>#<copy>``), written to a CSV file and read back with ``read_electrodes_csv``: parsed,
validated records, as a user has them (the read is timed as (d)). Formulas therefore repeat, but nothing in
aiida-voltnet caches by formula or by record: the featurizers keep only per-element property tables
(``functools.lru_cache``, filled on the first call and warm in every timed run) and the trees only the model's
own compiled predictors. pymatgen's formula parser has its own 512-entry LRU cache; the copies of a formula are
7,600+ parses apart, so the repetition gives it no hits (its hits, about 11 % of parses, come from formulas
shared by neighbouring rows of the CSV itself).

Model: ``train_voltage_model(records, model='voltnet', members=--members)`` on the shared rows (or ``--model DIR``
written by ``voltnet train``), wrapped in a ``VoltageModelData`` and stored.

Measured, interleaved, ``--repeats`` times each, after one untimed warm-up of each:

(a) core:     ``model.predict(records)`` (featurize + infer), in memory, on those records (their formulas were
              parsed when they were read)
(b) calcfn:   ``ElectrodeDataset(records)`` + ``predict_voltages(model_node, dataset)`` from call to return: building
              and storing the dataset input (``records.json``), validation, the process node, links, the
              ``ArrayData`` output. The dataset node keeps the validated records it was built from (with the
              sha256 of the file written from them), so the calcfunction does not parse them a second time.
(c) calcfn, stored input: the same call on a dataset node stored beforehand (untimed) and loaded back from the
              profile with ``load_node`` (timed: a fresh node object, so ``records.json`` is read, hash-checked,
              parsed and every record validated again, as for any dataset stored earlier)
(d) for scale, not part of (a)-(c): ``read_electrodes_csv`` of that CSV file

Overhead = (b - a) / a (and (c - a) / a). The AiiDA profile is an embedded SQLite one (``core.sqlite_dos``, no
broker) created the way ``ensure_embedded_profile`` creates it, in a temporary ``AIIDA_PATH`` set before aiida is
imported and deleted at the end, so the user's profiles are never touched.

    python benchmarks/predict_throughput.py [--n 10000] [--repeats 3] [--model DIR] [--members 5] [--keep]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common
from common import DEFAULT_CSV, existing_dir, existing_file, git_commit, positive_int, read_data


def device_description() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device (trees run on CPU anyway)'
    return (f'{cpu}; {os.cpu_count()} logical CPUs visible, torch threads {torch.get_num_threads()}; {cuda}; '
            f'Python {platform.python_version()}')


def expand_records(records, n: int):
    """``records`` repeated to ``n`` rows; copy k of a row gets battery_id ``<id>#<k>`` (all unique)."""
    import dataclasses

    out = []
    copy = 0
    while len(out) < n:
        out.extend(dataclasses.replace(r, battery_id=f'{r.battery_id}#{copy}') for r in records[:n - len(out)])
        copy += 1
    return out


class _quiet_logger:
    """Silence one logger (read_electrodes_csv may report rows on every read)."""

    def __init__(self, name):
        import logging

        self.logger = logging.getLogger(name)

    def __enter__(self):
        self.level = self.logger.level
        self.logger.setLevel(100)

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--n', type=positive_int, default=10_000, help='records per batch (default 10000)')
    parser.add_argument('--repeats', type=positive_int, default=3, help='timed repeats of each variant (default 3)')
    parser.add_argument('--data', type=existing_file, default=str(DEFAULT_CSV),
                        help='CSV of records (default: the shared MP CSV)')
    parser.add_argument('--model', type=existing_dir, default=None,
                        help='model directory from `voltnet train` (default: train one)')
    parser.add_argument('--members', type=positive_int, default=5,
                        help='ensemble members when training here (default 5)')
    parser.add_argument('--keep', action='store_true', help='keep the temporary AIIDA_PATH (printed) at the end')
    args = parser.parse_args(argv)

    # A private AiiDA configuration folder, set before anything imports aiida.
    aiida_path = tempfile.mkdtemp(prefix='voltnet-bench-aiida-')
    os.environ['AIIDA_PATH'] = aiida_path
    try:
        return run(args, aiida_path)
    finally:
        if 'aiida' in sys.modules:  # else no profile was opened (e.g. --data could not be read): nothing to close,
            # and importing aiida here would only create its configuration folder, with a warning
            try:
                from aiida.manage import get_manager

                get_manager().reset_profile()  # closes the storage before its folder is deleted
            except Exception:  # noqa: BLE001 - best effort; the folder is removed below either way
                pass
        if args.keep:
            print(f'kept AIIDA_PATH={aiida_path}')
        else:
            shutil.rmtree(aiida_path, ignore_errors=True)


def run(args, aiida_path: str) -> int:
    import warnings

    import numpy as np

    from aiida_voltnet.ml.models import VoltageModel, train_voltage_model
    from aiida_voltnet.ml.records import file_sha256, read_electrodes_csv, write_electrodes_csv

    base = read_data(args.data)
    # The records as a user has them: written to a CSV file and read back (parsed and validated).
    csv_copy = Path(aiida_path) / 'records.csv'
    write_electrodes_csv(expand_records(base, args.n), csv_copy)

    def read_csv():
        with warnings.catch_warnings(), _quiet_logger('aiida_voltnet.ml.records'):
            return read_electrodes_csv(csv_copy)

    records = read_csv()
    n = len(records)
    print(f'{n} records: the {len(base)} rows of {Path(args.data).name} repeated {n / len(base):.2f}x with unique '
          f'battery_ids; formulas repeat (nothing caches by formula or record, so repetition does not help)')

    started = time.perf_counter()
    if args.model:
        core = read_data(args.model, '--model', VoltageModel.load)
        print(f'model loaded from {args.model} in {time.perf_counter() - started:.1f} s')
    else:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            core = train_voltage_model(base, model='voltnet', members=args.members)
        print(f'model trained here (voltnet, {args.members} members, {len(base)} rows) in '
              f'{time.perf_counter() - started:.1f} s')

    # -- the AiiDA side: an embedded profile in the private AIIDA_PATH --------------------------------------------
    from aiida_voltnet.cli.aiida_commands import ensure_embedded_profile

    ensure_embedded_profile('voltnet-bench', echo=lambda message: print(message.replace(aiida_path, '$AIIDA_PATH')))
    from aiida_voltnet.calculations.functions import predict_voltages
    from aiida_voltnet.data.dataset import ElectrodeDataset
    from aiida_voltnet.data.model import VoltageModelData

    model_node = VoltageModelData(core).store()
    print(f'VoltageModelData<{model_node.pk}> version {model_node.model_version[:12]}, '
          f'{model_node.base.attributes.get("n_members")} members')
    source_sha256 = file_sha256(args.data)

    def core_predict():
        mean, _ = core.predict(records)
        return mean

    def calcfunction_end_to_end():
        dataset = ElectrodeDataset(records, source='csv', source_sha256=source_sha256)
        return predict_voltages(model_node, dataset)

    prepared = []

    def prepare_stored():
        prepared.append(ElectrodeDataset(records, source='csv', source_sha256=source_sha256).store().pk)

    def calcfunction_stored_input():
        from aiida.orm import load_node

        return predict_voltages(model_node, load_node(prepared.pop()))


    def timed(function):
        start = time.perf_counter()
        result = function()
        return time.perf_counter() - start, result

    # Warm-up: element tables, sklearn's compiled trees, the model node's hash-checked load (cached by uuid).
    warm_core, reference = timed(core_predict)
    warm_calc, array = timed(calcfunction_end_to_end)
    if not np.allclose(array.get_array('mean'), reference):
        print('ERROR: the calcfunction and the core disagree', file=sys.stderr)
        return 1
    print(f'warm-up (untimed in the table): core {warm_core:.2f} s, calcfunction {warm_calc:.2f} s '
          f'(first call also loads and hash-checks the model)')

    times = {'a': [], 'featurize': [], 'b': [], 'c': [], 'dataset': [], 'csv': []}
    for repeat in range(args.repeats):
        seconds, _ = timed(core_predict)
        times['a'].append(seconds)
        seconds, _ = timed(lambda: core.featurizer.transform(records))
        times['featurize'].append(seconds)
        seconds, _ = timed(lambda: ElectrodeDataset(records, source='csv', source_sha256=source_sha256))
        times['dataset'].append(seconds)
        seconds, array = timed(calcfunction_end_to_end)
        times['b'].append(seconds)
        if array.base.attributes.get('n_predictions') != n:
            print('ERROR: wrong number of predictions', file=sys.stderr)
            return 1
        prepare_stored()
        seconds, array = timed(calcfunction_stored_input)
        times['c'].append(seconds)
        if not np.array_equal(array.get_array('mean'), reference):
            print('ERROR: the stored-input calcfunction and the core disagree', file=sys.stderr)
            return 1
        seconds, read_back = timed(read_csv)
        times['csv'].append(seconds)
        if len(read_back) != n:
            print('ERROR: the CSV copy did not read back', file=sys.stderr)
            return 1
        print(f'repeat {repeat + 1}: a {times["a"][-1]:.2f} s, b {times["b"][-1]:.2f} s, c {times["c"][-1]:.2f} s, '
              f'featurize alone {times["featurize"][-1]:.2f} s, ElectrodeDataset() alone {times["dataset"][-1]:.2f} s, '
              f'read_electrodes_csv {times["csv"][-1]:.2f} s')

    med = {key: statistics.median(values) for key, values in times.items()}
    rows = [
        ('(a) core: featurize + infer', 'a'),
        ('    of which featurize alone', 'featurize'),
        ('(b) calcfunction end to end', 'b'),
        ('(c) calcfunction, stored dataset loaded', 'c'),
        ('    building ElectrodeDataset (unstored)', 'dataset'),
        ('(d) read_electrodes_csv (not in a-c)', 'csv'),
    ]
    print()
    print(f'commit {git_commit()}')
    print(f'device {device_description()}')
    print(f'storage core.sqlite_dos (SQLite + disk-objectstore), no broker; {n} predictions per call, '
          f'median of {args.repeats} interleaved repeats (min-max)')
    print()
    print(f'{"variant":<42} {"seconds":>8} {"min-max":>13} {"pred/s":>9}')
    for label, key in rows:
        values = times[key]
        rate = f'{n / med[key]:9.0f}' if key not in ('dataset', 'featurize', 'csv') else f'{"":>9}'
        print(f'{label:<42} {med[key]:8.2f} {min(values):6.2f}-{max(values):<6.2f} {rate}')
    print()
    overhead_b = (med['b'] - med['a']) / med['a']
    overhead_c = (med['c'] - med['a']) / med['a']
    print(f'provenance overhead (b - a) / a = {overhead_b:.2f}x   (c - a) / a = {overhead_c:.2f}x')
    rate_b = n / med['b']
    print(f'goal: >= 5000 predictions/s end to end: {"met" if rate_b >= 5000 else "NOT met"} ({rate_b:.0f}/s); '
          f'overhead <= 1x: {"met" if overhead_b <= 1 else "NOT met"} ({overhead_b:.2f}x)')
    return 0


if __name__ == '__main__':
    common.run(main)
