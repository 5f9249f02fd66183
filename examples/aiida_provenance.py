"""Query the provenance graph: the latest voltnet model, what it predicted, and where one prediction came from.

Works on the profile that ``voltnet quickstart`` creates (``voltnet-quickstart``, SQLite, no services) or any
profile given with ``--profile``; run ``voltnet quickstart`` first if it has no model yet. With
``--predict-test-set`` it first predicts the model's held-out test records in one batch (``voltnet.predict_voltages``,
one ``ArrayData``), so that batch rows show up next to the structure-pair predictions of the quickstart.

    python examples/aiida_provenance.py [--profile voltnet-quickstart] [--predict-test-set] [--rows 10]
"""
from __future__ import annotations

import argparse
import json
import sys


def _count(text: str) -> int:
    """A number of rows: an integer >= 0 (a negative one printed 'the first -1' and dropped the last row)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r} is not an integer') from None
    if value < 0:
        raise argparse.ArgumentTypeError(f'{value} is negative: give the number of rows to print (0 or more)')
    return value


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--profile', default='voltnet-quickstart', help='AiiDA profile (default: voltnet-quickstart)')
    parser.add_argument('--predict-test-set', action='store_true',
                        help="first predict the model's held-out test dataset as one batch (stores new nodes)")
    parser.add_argument('--rows', type=_count, default=10, help='prediction rows to print (default 10)')
    args = parser.parse_args(argv)

    from aiida import load_profile, orm
    from aiida.common.exceptions import ConfigurationError

    try:
        load_profile(args.profile, allow_switch=True)
    except ConfigurationError as exception:  # no AiiDA configuration yet, or no such profile
        print(f'cannot load profile {args.profile!r} ({type(exception).__name__}: {exception}); run `voltnet '
              'quickstart` first, or give an existing profile with --profile', file=sys.stderr)
        return 1
    from aiida.manage import get_manager

    try:  # the storage opens lazily: a deleted SQLite file or an unreachable database raised at the first query
        get_manager().get_profile_storage()
    except Exception as exception:  # noqa: BLE001 - each storage backend raises its own kinds
        print(f'cannot open the storage of profile {args.profile!r} ({type(exception).__name__}: {exception}); '
              f'check it with `verdi -p {args.profile} status`', file=sys.stderr)
        return 1

    from aiida_voltnet.data.model import VoltageModelData
    from aiida_voltnet.provenance import list_predictions, prediction_provenance

    # The latest voltnet voltage model: attributes are queryable (model_name, model_version, target, training_ions,
    # metrics, ...); a model of another target (max_delta_volume) predicts no voltages.
    query = orm.QueryBuilder()
    query.append(VoltageModelData, filters={'attributes.model_name': 'voltnet', 'attributes.target': 'average_voltage'},
                 project=['*'], tag='model')
    query.order_by({'model': {'ctime': 'desc'}})
    query.limit(1)
    found = query.all(flat=True)
    if not found:
        print(f'profile {args.profile!r} holds no voltnet model; run `voltnet quickstart` first', file=sys.stderr)
        return 1
    model = found[0]
    print(f'latest voltnet model: VoltageModelData<{model.pk}> version {model.model_version[:12]}, '
          f'{model.base.attributes.get("n_members")} members, trained on ions {", ".join(model.training_ions)}')

    if args.predict_test_set:
        from aiida_voltnet.calculations.functions import predict_voltages
        from aiida_voltnet.provenance import training_workflow

        training = model.creator  # train_model or a job; None for a model stored by hand (or imported without it)
        # the held-out records of the TrainWorkChain that asked for it (past the restart wrapper of a job); a model
        # trained otherwise has none
        caller = training_workflow(training) if training is not None else None
        if caller is None or 'test_dataset' not in caller.outputs:
            made = f'made by {training.process_label}<{training.pk}>, which no TrainWorkChain called' \
                if training is not None else 'made by no process in this profile (stored by hand, or imported alone)'
            print(f'VoltageModelData<{model.pk}> was {made}, so it has no held-out test dataset to predict; run '
                  'without --predict-test-set', file=sys.stderr)
            return 1
        test = caller.outputs.test_dataset
        if set(test.working_ions) - set(model.training_ions):  # as TrainWorkChain evaluated it: without those rows
            from aiida_voltnet.calculations.report import report_drop_unseen_ions

            test = report_drop_unseen_ions(test=test, train=caller.outputs.train_dataset)
            print(f'left out the held-out records of working ions the model never saw: {test.n_records} remain')
        array = predict_voltages(model, test)
        print(f'predicted ElectrodeDataset<{test.pk}> ({test.n_records} held-out records) -> ArrayData<{array.pk}>')

    rows = list_predictions(model)
    print(f'\n{len(rows)} prediction(s) by this model (list_predictions); the first {min(args.rows, len(rows))}:')
    print(f'{"battery_id":<30} {"ion":<4} {"voltage":>8} {"+/-":>6}  node')
    for row in rows[:args.rows]:
        print(f'{row["battery_id"]:<30} {row["working_ion"]:<4} {row["voltage"]:8.3f} {row["uncertainty"]:6.3f}  '
              f'{row["node"]}')
    if not rows:
        return 0

    # Same query through list_predictions' filters: Li electrodes predicted at 3.5 V or more.
    high = list_predictions(model, ion='Li', min_voltage=3.5)
    print(f'\n{len(high)} of them are Li electrodes at >= 3.5 V (list_predictions(model, ion="Li", min_voltage=3.5))')

    row = rows[0]
    answer = prediction_provenance(row['node_uuid'])
    if answer['inputs'].get('dataset'):  # a batch: keep the printout short
        ids = answer['inputs']['dataset']['battery_ids']
        answer['inputs']['dataset']['battery_ids'] = ids[:5] + [f'... ({len(ids)} in all)']
    print(f'\nprediction_provenance({row["node"]}):')
    print(json.dumps(answer, indent=2, default=str))
    return 0


if __name__ == '__main__':
    sys.exit(main())
