"""Calcfunctions of ``voltnet report``: every number of the report comes out of one of these processes.

* ``report_analysis``: one computation of the report (an evaluation protocol for one model and featurizer, the
  training caps per voltage interval of either protocol, or the learning curve) on the records of a dataset node,
  with every setting in a ``Dict`` (``ReportWorkChain``, ``voltnet.report``, calls one per report row). Its ``metrics`` Dict holds the numbers the report prints; its ``predictions``
  ArrayData the test predictions behind them (an index into the dataset's records, target, mean, spread, seed,
  fold), so a table cell leads to its process, that process to its dataset and the dataset to the CSV file.
* ``report_subsample_dataset``, ``report_kfold_dataset``, ``report_drop_unseen_ions``: the dataset steps of the
  main leak-free rows, which go through ``train_model``/``predict_voltages``/``evaluate_model`` fold by fold.
"""
from __future__ import annotations

from aiida import orm
from aiida.engine import calcfunction

from ..data.dataset import ElectrodeDataset
from .functions import _validated_by, dataset_records
from .sources import record_sources

__all__ = ['report_analysis', 'report_subsample_dataset', 'report_kfold_dataset', 'report_drop_unseen_ions']


@record_sources
@calcfunction
def report_analysis(dataset: ElectrodeDataset, analysis: orm.Str, parameters: orm.Dict) -> dict:
    """One analysis of ``voltnet report`` (``aiida_voltnet.report.ANALYSES``) on the records of ``dataset``.

    ``parameters`` holds ``settings`` (the report's seeds, folds, epoch budgets, ensemble size, threads, device)
    and ``arguments`` (model, featurizer, protocol, target, ...). Returns ``metrics`` (Dict: summaries, per-run
    training-row counts) and, where the analysis keeps them, ``predictions`` (ArrayData).
    """
    from ..report import predictions_to_arrays, run_analysis

    records = dataset_records(dataset)
    result = run_analysis(records, analysis.value, parameters.get_dict())
    summary, arrays = predictions_to_arrays(result, records)
    outputs = {'metrics': orm.Dict(summary)}
    if arrays:
        predictions = orm.ArrayData()
        for name, array in arrays.items():
            predictions.set_array(name, array)
        outputs['predictions'] = predictions
    return outputs


def _validate_subsample(inputs):
    rows = inputs['rows'].value
    if rows < 1:
        return f'rows must be a positive integer, got {rows}'
    return None


def _validate_kfold(inputs):
    folds, fold = inputs['folds'].value, inputs['fold'].value
    n_records = inputs['dataset'].n_records
    if not 2 <= folds <= n_records:
        return f'folds must be between 2 and the {n_records} records of the dataset, got {folds}'
    if not 0 <= fold < folds:
        return f'fold must be in 0..{folds - 1}, got {fold}'
    return None


@_validated_by(_validate_subsample)
@record_sources
@calcfunction
def report_subsample_dataset(dataset: ElectrodeDataset, rows: orm.Int, seed: orm.Int) -> ElectrodeDataset:
    """The same random subsample of records as ``voltnet report --rows`` (the SI Table S1 rows always kept)."""
    from ..report import subsample

    return ElectrodeDataset(subsample(dataset_records(dataset), rows.value, seed.value), derived_from=dataset)


@_validated_by(_validate_kfold)
@record_sources
@calcfunction
def report_kfold_dataset(dataset: ElectrodeDataset, folds: orm.Int, fold: orm.Int, seed: orm.Int) -> dict:
    """Fold ``fold`` of ``kfold_splits(grouped=True)``: exactly the split that ``evaluate`` uses."""
    from ..ml.splits import kfold_splits

    records = dataset_records(dataset)
    train, test = list(kfold_splits(records, k=folds.value, grouped=True, seed=seed.value))[fold.value]
    return {'train': ElectrodeDataset([records[i] for i in train], derived_from=dataset),
            'test': ElectrodeDataset([records[i] for i in test], derived_from=dataset)}


def _validate_drop_unseen(inputs):
    known = set(inputs['train'].working_ions)
    if not known & set(inputs['test'].working_ions):
        return (f'no test record has a working ion of the training records ({", ".join(sorted(known))}): '
                'nothing would be left to predict')
    return None


@_validated_by(_validate_drop_unseen)
@record_sources
@calcfunction
def report_drop_unseen_ions(test: ElectrodeDataset, train: ElectrodeDataset) -> ElectrodeDataset:
    """The test records whose working ion occurs in ``train`` (``predict_voltages`` refuses unseen ions)."""
    known = set(train.working_ions)
    return ElectrodeDataset([r for r in dataset_records(test) if r.working_ion in known], derived_from=test)
