"""``ReportWorkChain``: the analyses of ``voltnet report`` on one dataset, one ``report_analysis`` each.

``voltnet report`` (provenance mode) runs it once for every table row but the main leak-free voltnet rows (which
go fold by fold through ``train_model``/``predict_voltages``/``evaluate_model``), so a single work chain node
holds the report's Table S2 cells, the leak comparison, both Table S3 runs, Fig. S5 and the learning curve: its
outputs ``metrics.<label>`` are the numbers printed, ``predictions.<label>`` the test predictions behind them.
"""
from __future__ import annotations

from aiida import orm
from aiida.engine import WorkChain, while_

from ..calculations.report import report_analysis
from ..data.dataset import ElectrodeDataset
from .train import StepBoundaries, step_boundary

__all__ = ('ReportWorkChain',)


def validate_analyses(value, _ctx=None):
    """``{label: {'analysis': name, 'section': text, 'parameters': {'settings': ..., 'arguments': ...}}}``."""
    from ..report import ANALYSES, check_analysis

    if not value.get_dict():
        return 'analyses is empty'
    for label, entry in value.get_dict().items():
        if not label.isidentifier() or '__' in label:
            return f'analysis label {label!r} is not usable as a link label (letters, digits, single underscores)'
        if not isinstance(entry, dict) or set(entry) - {'analysis', 'section', 'parameters'}:
            return f'analysis {label!r}: expected the keys analysis, section, parameters'
        if entry.get('analysis') not in ANALYSES:
            return f'analysis {label!r}: {entry.get("analysis")!r} is not one of {", ".join(ANALYSES)}'
        problem = check_analysis(entry['analysis'], entry.get('parameters', {}))
        if problem:  # refused at launch, before any report_analysis node is stored
            return f'analysis {label!r}: {problem}'
    return None


class ReportWorkChain(StepBoundaries, WorkChain):
    """Run the analyses of ``voltnet report`` on one dataset (one ``voltnet.report_analysis`` per entry)."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input('dataset', valid_type=ElectrodeDataset,
                   help='The records every analysis runs on (the report makes it from the CSV file).')
        spec.input('analyses', valid_type=orm.Dict, validator=validate_analyses,
                   help='label -> {analysis: evaluate|caps|caps_paper|learning_curve, section: the report section, '
                        'parameters: {settings: {...}, arguments: {...}}}; each label names its outputs.')
        spec.outline(cls.setup, while_(cls.has_next)(cls.run_next))
        spec.output_namespace('metrics', valid_type=orm.Dict, dynamic=True,
                              help='Per label: the numbers the report prints (summaries, per-run metrics, ...).')
        spec.output_namespace('predictions', valid_type=orm.ArrayData, dynamic=True, required=False,
                              help='Per label, where the analysis keeps them: the test predictions behind metrics.')
        spec.exit_code(320, 'ERROR_ANALYSIS_FAILED', message='report_analysis {label} failed: {message}')

    def setup(self):
        self.ctx.pending = list(self.inputs.analyses.get_dict())

    def has_next(self):
        return bool(self.ctx.pending)

    def run_next(self):
        """One analysis (they are independent; a calcfunction runs in this process), then a step boundary: a kill
        or pause sent meanwhile is handled before the next one (it waited for all of them, as one step)."""
        label = self.ctx.pending.pop(0)
        entry = self.inputs.analyses.get_dict()[label]
        self.report(f'{label}: {entry["analysis"]} ({entry.get("section", "")})')
        try:
            outputs, node = report_analysis.run_get_node(self.inputs.dataset, orm.Str(entry['analysis']),
                                                         orm.Dict(entry['parameters']),
                                                         metadata={'call_link_label': label})
        except Exception as exception:  # noqa: BLE001 - the calcfunction node records the traceback
            return self.exit_codes.ERROR_ANALYSIS_FAILED.format(label=label, message=str(exception))
        self.out(f'metrics.{label}', outputs['metrics'])
        if 'predictions' in outputs:
            self.out(f'predictions.{label}', outputs['predictions'])
        return step_boundary(node, label)
