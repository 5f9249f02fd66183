"""Calculation functions of aiida-voltnet: each converts nodes to core objects, calls ``aiida_voltnet.ml``, and
wraps the result back into nodes.

Bad input must not leave anything behind. Every function therefore has an input validator (attached to its
process spec by :func:`_validated_by`) that does the checks that can fail (parse the CSV, load and hash-check the
model, build the record of a structure pair, compare working ions) *before* the engine creates any node; a
failing call raises ``ValueError`` naming the problem and stores neither a process node nor its inputs. Parsed
CSVs and loaded models are cached for the body, keyed by content hash or stored-node UUID, so that the checks
are not paid twice.
"""
import collections
import contextlib
import hashlib
import io
import math
import warnings

import numpy as np
from aiida import orm
from aiida.engine import calcfunction

from aiida_voltnet.calculations.sources import record_sources
from aiida_voltnet.data.dataset import ElectrodeDataset
from aiida_voltnet.data.model import VoltageModelData, json_safe
from aiida_voltnet.ml.featurizers import InputWarning, TargetLeakWarning, get_featurizer
from aiida_voltnet.ml.metrics import regression_metrics
from aiida_voltnet.ml.models import CHECKED_SETTINGS, CalibrationWarning, check_training_options, train_voltage_model
from aiida_voltnet.ml.mp_loader import (KEY_SOURCES, api_key_problem, check_fetch_arguments, configured_api_key,
                                        fetch_mp_electrodes)
from aiida_voltnet.ml.records import decode_csv, read_electrodes_csv
from aiida_voltnet.ml.splits import SPLIT_KINDS, check_test_fraction, make_split
from aiida_voltnet.ml.structures import record_from_structures
from aiida_voltnet.ml.training import resolve_device

__all__ = (
    'assemble_dataset_from_csv', 'assemble_dataset_from_mp', 'assemble_dataset_from_structures', 'split_dataset',
    'featurize', 'train_model', 'evaluate_model', 'predict_voltages', 'predict_structure_pair', 'dft_voltage',
    'TRAIN_SETTINGS_KEYS', 'MP_QUERY_KEYS',
)

#: Keys accepted in the ``settings`` Dict of :func:`train_model` (passed to ``train_voltage_model``).
TRAIN_SETTINGS_KEYS = ('members', 'train_overrides', 'model_params', 'device', 'featurizer_options', 'target')
#: Keys accepted in the ``query`` Dict of :func:`assemble_dataset_from_mp` (the API key never goes in a node).
MP_QUERY_KEYS = ('working_ion', 'elements', 'battery_ids', 'max_entries')


# -- caches and loaders shared by validators and bodies ------------------------------------------------------------
class _Cache:
    """A tiny LRU cache; entries are keyed by content hashes or stored (immutable) node UUIDs only."""

    def __init__(self, size: int):
        self.size = size
        self.items = collections.OrderedDict()

    def get(self, key, make):
        if key is None:
            return make()
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        value = self.items[key] = make()
        while len(self.items) > self.size:
            self.items.popitem(last=False)
        return value


def _profile_key() -> str | None:
    """The loaded profile's uuid: a node's uuid is kept by ``verdi archive import``, so the same uuid can name two
    nodes of two profiles that one interpreter switches between (``load_profile(..., allow_switch=True)``); a
    tampered copy in one profile was served the other's checked model from the cache (found by review)."""
    from aiida.manage import get_manager

    profile = get_manager().get_profile()
    return getattr(profile, 'uuid', None) or getattr(profile, 'name', None)


_CSV_CACHE = _Cache(2)
_MODEL_CACHE = _Cache(4)
_RECORDS_CACHE = _Cache(4)
_PAIR_CACHE = _Cache(64)


def csv_records(csv: orm.SinglefileData):
    """``(records, sha256)`` of the CSV file held by ``csv``. :raises ElectrodeDataError: for a bad row."""
    content = csv.base.repository.get_object_content(csv.filename, mode='rb')
    sha256 = hashlib.sha256(content).hexdigest()

    def parse():
        return read_electrodes_csv(io.StringIO(decode_csv(content, csv.filename), newline=''), source=csv.filename)

    return _CSV_CACHE.get(sha256, parse), sha256


def load_model(model: VoltageModelData):
    """The core model of ``model`` (hash-checked; cached for stored nodes, which cannot change)."""
    key = f'{_profile_key()}:{model.uuid}:{model.arrays_sha256}' if model.is_stored else None
    return _MODEL_CACHE.get(key, model.load_model)


def dataset_records(dataset: ElectrodeDataset):
    # Keyed by content hash too, so that an unstored dataset checked by the validator is not parsed again by the
    # body (records() re-verifies the hash, so a repository file changed behind the attribute still fails).
    key = (dataset.uuid, dataset.base.attributes.get('records_sha256', None))
    return _RECORDS_CACHE.get((_profile_key(), *key) if key[1] else None, dataset.records)


def _structure_key(node):
    return node.uuid if node.is_stored else None


def pair_record(charged: orm.StructureData, discharged: orm.StructureData, working_ion: str, battery_id=None,
                report: bool = False):
    """The electrode record of a (charged, discharged) pair of ``StructureData``; ``report``: warn its
    ``InputWarning``s (partial occupancies that look rounded, two hosts that are not one framework; silent
    otherwise, as in the validators).

    :raises ValueError: for a structure that is not periodic in all three directions (a slab, a wire or a
        molecule is not a bulk electrode, and the model knows only bulk ones).
    """
    for name, structure in (('charged', charged), ('discharged', discharged)):
        if not all(structure.pbc):
            raise ValueError(f'the {name} structure{f" of {battery_id}" if battery_id else ""} is periodic along '
                             f'{sum(structure.pbc)} of 3 directions (pbc {tuple(structure.pbc)}): a bulk electrode '
                             'crystal is periodic along all three')
    keys = (_structure_key(charged), _structure_key(discharged))
    key = None if None in keys else (_profile_key(), *keys, working_ion, battery_id)

    def make():
        with warnings.catch_warnings(record=True) as caught:  # kept with the record: the validators run first
            warnings.simplefilter('always', InputWarning)
            record = record_from_structures(charged.get_pymatgen_structure(), discharged.get_pymatgen_structure(),
                                            working_ion, battery_id=battery_id)
        for warning in caught:
            if not issubclass(warning.category, InputWarning):
                warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
        return record, tuple((w.category, str(w.message)) for w in caught if issubclass(w.category, InputWarning))

    record, said = _PAIR_CACHE.get(key, make)
    if report:  # occupancies such as 0.33 for 1/3, warned to whoever asks (a process body reports them)
        for category, message in said:
            warnings.warn(message, category, stacklevel=2)
    return record


def _value(node):
    return node.value if isinstance(node, orm.BaseType) else node


def lacks_ports(ctx, names) -> bool:
    """Whether the namespace ``ctx`` a validator is called for lacks one of the ports ``names``: a work chain that
    exposes these inputs with ``exclude`` (it supplies those itself, as outputs of its own steps) gets a copy of the
    validator, which must then leave the check to the launch of the process that owns the ports."""
    return ctx is not None and any(name not in ctx for name in names)


def _validated_by(validator):
    """Attach ``validator(inputs) -> error message | None`` to the process spec of a process function.

    plumpy validates inputs before aiida-core creates the process node, so a failing validator stores nothing.
    Exceptions from the checks become the message (their text names row, battery and field). In a namespace that
    exposes the function's inputs with some left out (:func:`lacks_ports`), the check waits for the function's
    own launch.
    """
    ports = []

    def validate(inputs, ctx=None):
        if lacks_ports(ctx, ports):
            return None
        try:
            return validator(inputs)
        except Exception as exception:  # noqa: BLE001 - the message is what the user needs
            return f'{type(exception).__name__}: {exception}'

    def attach(function):
        namespace = function.process_class.spec().inputs
        ports.extend(name for name in namespace if name != 'metadata')
        namespace.validator = validate
        return function

    return attach


def _check_model_can_predict(model, records):
    """Why ``model`` cannot predict ``records``: a working ion it never saw (:meth:`VoltageModel.check_records`, which
    counts them), or a field its featurizer needs that a record lacks (the paper featurizer's capacity of a structure
    pair, say); None if it can."""
    core = load_model(model)
    label = f'model {model.model_name} (version {model.model_version[:12]})'
    try:
        core.check_records(records)
    except ValueError as exception:
        return f'{label}: {exception}'
    try:
        core.featurizer.check_records(records)
    except ValueError as exception:
        return f'{label} cannot featurize: {exception}'
    return None


def check_code_plugin(code, plugin: str, name: str, hint: str, check_computer: bool = True) -> str | None:
    """Why ``code`` (the input ``name``) cannot run a ``plugin`` job: another default plugin (such a code ran its
    jobs and failed, or failed when the job was built; ``hint`` says which code to give), or (``check_computer``) a
    computer that is not configured for the default user. None if it can."""
    default = code.default_calc_job_plugin if code is not None else None
    if code is not None and default != plugin:
        return f'{name} {code.full_label} has the default plugin {default!r}, not {plugin}: {hint}'
    computer = getattr(code, 'computer', None) if check_computer else None
    if computer is not None:  # its jobs excepted at upload, after the work chain had stored its first steps
        user = orm.User.collection.get_default()
        if not computer.is_user_configured(user):
            return (f'{name} {code.full_label}: its computer {computer.label!r} is not configured for user '
                    f'{user.email} (a computer imported from an archive is not): `verdi computer configure '
                    f'{computer.transport_type} {computer.label}`')
    return None


def check_job_options(options: dict, process_class) -> str | None:
    """Why ``options`` cannot be the ``metadata.options`` of a ``process_class`` job (an unknown key such as
    ``max_walclock_seconds``, a value of the wrong type), or None: checked at launch, where the work chain excepted
    only when it built the job, after storing what it had done so far."""
    namespace = process_class.spec().inputs['metadata']['options']
    unknown = sorted(set(options or {}) - set(namespace))
    if unknown:
        return (f'unknown job option(s) {", ".join(map(repr, unknown))} of {process_class.__name__}; known: '
                f'{", ".join(sorted(namespace))}')
    for key, value in (options or {}).items():
        error = namespace[key].validate(value)
        if error is not None:
            return f'job option {key!r}: {error.message}'
    return walltime_problem(options)


def walltime_problem(options: dict | None) -> str | None:
    """Why the ``max_wallclock_seconds`` of job ``options`` is no time limit (0 or negative: aiida-core's schedulers
    refuse it only when they write the submit script, after a work chain had stored its steps), or None."""
    value = (options or {}).get('max_wallclock_seconds')
    if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return f'job option \'max_wallclock_seconds\' must be a positive number of seconds, got {value!r}'
    return None


def check_job_resources(options: dict, code) -> str | None:
    """Why the ``resources`` of job ``options`` do not fit the scheduler of ``code``'s computer (e.g. 5 MPI
    processes on 1 machine x 1 per machine), or None; aiida-core checks it when the job is launched, after a work
    chain had stored its earlier steps."""
    resources = (options or {}).get('resources')
    computer = getattr(code, 'computer', None)
    if not resources or computer is None:
        return None
    resources = dict(resources)  # preprocess_resources fills in defaults in place
    scheduler = computer.get_scheduler()
    try:
        scheduler.preprocess_resources(resources, computer.get_default_mpiprocs_per_machine())
        scheduler.validate_resources(**resources)
    except (ValueError, TypeError) as exception:
        return f'resources {options["resources"]} do not fit the {scheduler} scheduler of {computer.label}: {exception}'
    return None


def check_voltage_model(model) -> str | None:
    """Why ``model`` cannot make voltage predictions: one trained for another target (``max_delta_volume``) gives
    numbers that are no volts, which the prediction functions and work chains would store and report as voltages;
    None if it predicts the average voltage. (``evaluate_model`` takes any target.)"""
    target = model.base.attributes.get('target', 'average_voltage')
    if target != 'average_voltage':
        return (f'model {model.model_name} (version {model.model_version[:12]}) was trained to predict {target}, not '
                'the average voltage: its predictions are no voltages (evaluate_model scores it)')
    return None


# -- assembling datasets -------------------------------------------------------------------------------------------
def _validate_csv(inputs):
    csv_records(inputs['csv'])


@_validated_by(_validate_csv)
@record_sources
@calcfunction
def assemble_dataset_from_csv(csv: orm.SinglefileData):
    """Read insertion-electrode records from a CSV file in the seed format.

    :param csv: the CSV file (seed format: battery_id, formula_charge, formula_discharge, working_ion, ...).
    :returns: an ``ElectrodeDataset`` whose ``source_sha256`` is the sha256 of the file.
    """
    records, sha256 = csv_records(csv)
    return ElectrodeDataset(records, source='csv', source_sha256=sha256)


def _mp_arguments(query: dict) -> dict:
    unknown = sorted(set(query) - set(MP_QUERY_KEYS))
    if unknown:
        raise ValueError(f'unknown MP query key(s) {", ".join(unknown)}; allowed: {", ".join(MP_QUERY_KEYS)}')
    return dict(query)


def _validate_mp(inputs):
    arguments = _mp_arguments(inputs['query'].get_dict())
    try:  # everything the loader would refuse, before the calcfunction is stored (it excepted, with its query)
        check_fetch_arguments(**arguments)
    except ValueError as exception:
        return f'query: {exception}'
    key = configured_api_key()
    if not key:
        return f'no Materials Project API key: {KEY_SOURCES}; it is never stored in a node'
    return api_key_problem(key, given=False)


@_validated_by(_validate_mp)
@record_sources
@calcfunction
def assemble_dataset_from_mp(query: orm.Dict):
    """Fetch insertion electrodes live from the Materials Project (needs ``MP_API_KEY`` in the environment).

    :param query: the query: any of ``working_ion``, ``elements``, ``battery_ids``, ``max_entries``.
    :returns: an ``ElectrodeDataset`` with ``mp_database_version`` and the material ids in ``mp_provenance.json``.

    Never a cache source: the same query gives what the live database holds on the day (its hash is only the
    query), so with caching enabled a re-run must fetch again, not clone an old dataset.
    """
    from aiida.engine import Process

    Process.current().node.base.caching.is_valid_cache = False
    records, provenance = fetch_mp_electrodes(**_mp_arguments(query.get_dict()))
    if not records:  # a dataset needs records; say which query found none (database version on the day)
        raise ValueError(f'the query {query.get_dict()} matched no insertion electrode of the Materials Project '
                         f'(database version {provenance.get("database_version")})')
    return ElectrodeDataset(records, source='materials_project', mp_provenance=provenance)


def _pairs(inputs) -> dict:
    """``{name: (charged, discharged, working_ion)}`` from the nested ``pairs`` namespace."""
    pairs = {}
    for name, pair in inputs.items():
        if name == 'metadata':
            continue
        if not isinstance(pair, dict) or set(pair) != {'charged', 'discharged', 'working_ion'}:
            raise ValueError(f'pair {name!r} must be a namespace with exactly charged, discharged (StructureData) '
                             'and working_ion (Str)')
        charged, discharged, ion = pair['charged'], pair['discharged'], pair['working_ion']
        if not isinstance(charged, orm.StructureData) or not isinstance(discharged, orm.StructureData):
            raise ValueError(f'pair {name!r}: charged and discharged must be StructureData')
        pairs[name] = (charged, discharged, _value(ion))
    if not pairs:
        raise ValueError('give at least one structure pair')
    return pairs


def _validate_structures(inputs):
    for name, (charged, discharged, ion) in _pairs(inputs).items():
        pair_record(charged, discharged, ion, battery_id=name)


@_validated_by(_validate_structures)
@record_sources
@calcfunction
def assemble_dataset_from_structures(**pairs):
    """Build electrode records from pairs of structures, e.g. relaxed charged and discharged DFT cells.

    :param pairs: one namespace per electrode, ``{name: {'charged': StructureData, 'discharged': StructureData,
        'working_ion': Str}}``; ``name`` becomes the record's battery_id.
    """
    with _warnings_reported(InputWarning):
        records = [pair_record(charged, discharged, ion, battery_id=name, report=True)
                   for name, (charged, discharged, ion) in _pairs(pairs).items()]
    return ElectrodeDataset(records, source='structures')


# -- splitting and featurizing -------------------------------------------------------------------------------------
def check_split_options(kind, test_fraction) -> None:
    """The split kinds and fractions ``split_dataset`` takes (``TrainWorkChain`` checks its inputs with it too)."""
    if kind == 'ion':
        raise ValueError('the leave-one-ion-out split is not exposed here; use grouped or random')
    check_test_fraction(test_fraction)
    if kind not in SPLIT_KINDS:
        raise ValueError(f'unknown split kind {kind!r}; choose grouped or random')


def _split(inputs):
    records = dataset_records(inputs['dataset'])
    kind, fraction = _value(inputs['kind']), _value(inputs['test_fraction'])
    check_split_options(kind, fraction)
    train, test = make_split(records, kind=kind, seed=_value(inputs['seed']), test_fraction=fraction)
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f'the split of {len(records)} records left an empty train or test set')
    return records, train, test


def _validate_split(inputs):
    _split(inputs)


def check_split_leaves_enough_to_train(records, kind, seed, test_fraction, model, members=None,
                                       model_params=None) -> None:
    """Refuse a split (the one ``split_dataset`` makes with these options) whose training part is too small for
    ``model``: found before anything is stored, by ``TrainWorkChain``'s validator and ``voltnet quickstart``.

    :raises ValueError: naming the model's minimum, the training rows and what the split held out.
    """
    check_split_options(kind, test_fraction)
    train, _ = make_split(records, kind=kind, seed=seed, test_fraction=test_fraction)
    try:
        check_training_options(model=model, members=members, n_rows=len(train), model_params=model_params)
    except ValueError as exception:
        raise ValueError(f'{exception} (the {kind} split of the {len(records)} records holds '
                         f'{len(records) - len(train)} out for the test)') from None


@_validated_by(_validate_split)
@record_sources
@calcfunction
def split_dataset(dataset: ElectrodeDataset, kind: orm.Str = 'grouped', seed: orm.Int = 0,
                  test_fraction: orm.Float = 0.1):
    """Split a dataset into training and held-out test records.

    :param dataset: the records to split.
    :param kind: ``grouped`` (by host framework; no framework straddles the split) or ``random`` (the paper's).
    :param seed: seed of the split.
    :param test_fraction: fraction of records (of frameworks, for grouped) held out.
    """
    records, train, test = _split({'dataset': dataset, 'kind': kind, 'seed': seed, 'test_fraction': test_fraction})
    return {'train': ElectrodeDataset([records[i] for i in train], derived_from=dataset),
            'test': ElectrodeDataset([records[i] for i in test], derived_from=dataset)}


def _validate_featurize(inputs):
    get_featurizer(_value(inputs['featurizer']), _quiet=True).check_records(dataset_records(inputs['dataset']))


@_validated_by(_validate_featurize)
@record_sources
@calcfunction
def featurize(dataset: ElectrodeDataset, featurizer: orm.Str = 'leakfree'):
    """The raw (unfitted) feature matrix of a dataset, for the provenance of features.

    The fitted transforms (PCA, scaling) are part of a trained model; this records the per-record vectors they
    start from.

    :param dataset: the records.
    :param featurizer: ``leakfree`` (default) or ``paper`` (leaks the target through capacity and energy).
    :returns: ``ArrayData`` with ``features`` (n x d) and ``battery_ids``.
    """
    core = get_featurizer(featurizer.value, _quiet=True)
    records = dataset_records(dataset)
    features = np.asarray(core.raw(records), dtype=np.float64)
    array = orm.ArrayData()
    array.set_array('features', features)
    array.set_array('battery_ids', np.array([r.battery_id for r in records], dtype=str))
    array.base.attributes.set('featurizer_name', core.name)
    array.base.attributes.set('featurizer_version', core.version)
    return array


# -- training and evaluation ---------------------------------------------------------------------------------------
def _train_arguments(featurizer, model, settings, seed=0, records=None) -> dict:
    """The keyword arguments of ``train_voltage_model``; every one checked (and, given ``records``, that the
    featurizer has the fields it needs in each). :raises ValueError: naming the problem."""
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(TRAIN_SETTINGS_KEYS))
    if unknown:
        raise ValueError(f'unknown training setting(s) {", ".join(unknown)}; allowed: {", ".join(TRAIN_SETTINGS_KEYS)}')
    check_training_options(seed=seed, model=model, n_rows=None if records is None else len(records),
                           **{k: settings[k] for k in CHECKED_SETTINGS if k in settings})
    core_featurizer = get_featurizer(featurizer, _quiet=True, **settings.get('featurizer_options', {}))
    if records is not None:
        core_featurizer.check_records(records)
    return {'featurizer': featurizer, 'model': model, **settings}


def check_training_targets(dataset: ElectrodeDataset | list, settings: dict, purpose: str = 'train on') -> str | None:
    """Why ``dataset`` (a node or its records) cannot be used to ``purpose`` with ``settings`` (records without
    the target value), or None."""
    target = settings.get('target', 'average_voltage')
    records = dataset if isinstance(dataset, list) else dataset_records(dataset)
    # a record read from a CSV is named by its line too, as the reader names a malformed row
    missing = [f'line {r.line} (battery_id {r.battery_id!r})' if r.line is not None else r.battery_id
               for r in records if getattr(r, target) is None]
    if missing:
        return f'{len(missing)} record(s) have no {target} to {purpose}, e.g. {", ".join(missing[:3])}'
    return None


def _validate_train(inputs):
    """``train_model``'s checks; also of a namespace exposing its ports without defaults (a screen's ``retrain``)."""
    settings = inputs['settings'].get_dict() if 'settings' in inputs else {}
    _train_arguments(_value(inputs.get('featurizer', 'leakfree')), _value(inputs.get('model', 'voltnet')), settings,
                     _value(inputs.get('seed', 0)), dataset_records(inputs['dataset']))
    resolve_device(settings.get('device', 'auto'))  # train_model trains here: CUDA must be present if asked for
    return check_training_targets(inputs['dataset'], settings)


@_validated_by(_validate_train)
@record_sources
@calcfunction
def train_model(dataset: ElectrodeDataset, featurizer: orm.Str = 'leakfree', model: orm.Str = 'voltnet',
                seed: orm.Int = 0, settings: orm.Dict = lambda: orm.Dict()):
    """Fit a featurizer and a model on all records of ``dataset``; uses the worker's GPU when there is one.

    :param dataset: the training records.
    :param featurizer: ``leakfree`` (default) or ``paper``.
    :param model: a model spec name: ``voltnet`` (default), ``mha_resnet``, ``mlp``, ``lstm``, ``svr``, ``krr``.
    :param seed: training seed.
    :param settings: optional ``members``, ``train_overrides`` (epochs, lr, ... of torch models),
        ``model_params`` (hyper-parameters of tree and kernel models: max_iter, learning_rate, ...), ``device``,
        ``featurizer_options``, ``target``.
    :returns: a ``VoltageModelData`` whose ``metrics`` attribute holds the fit on the training records.
    """
    arguments = _train_arguments(featurizer.value, model.value, settings.get_dict())
    arguments.setdefault('device', 'auto')
    records = dataset_records(dataset)
    with _warnings_reported(TargetLeakWarning, CalibrationWarning, InputWarning) as said:
        core = train_voltage_model(records, seed=seed.value, **arguments)
        mean, _ = core.predict(records)
    target = arguments.get('target', 'average_voltage')
    # The device each member trained on, as the core reports it (torch members; tree and kernel models say none).
    devices = sorted({h['device'] for h in core.metadata.get('train_history', []) if h.get('device')})
    metrics = {'train': regression_metrics([getattr(r, target) for r in records], mean),
               'device': devices[0] if len(devices) == 1 else (devices or 'cpu'),
               # on the model node too, not only in this process's report: a training taken from the cache has no
               # report of its own, and an archive does not say which process it was cloned from
               'warnings': said}
    return VoltageModelData(core, metrics=metrics)


def _validate_model_dataset(inputs):
    records = dataset_records(inputs['dataset'])
    return _check_model_can_predict(inputs['model'], records)


def _validate_evaluate(inputs):
    message = _validate_model_dataset(inputs)
    if message:
        return message
    target = inputs['model'].base.attributes.get('target', 'average_voltage')
    missing = [r.battery_id for r in dataset_records(inputs['dataset']) if getattr(r, target) is None]
    if missing:
        return f'{len(missing)} record(s) have no {target} to compare with, e.g. {", ".join(missing[:3])}'
    return None


@_validated_by(_validate_evaluate)
@record_sources
@calcfunction
def evaluate_model(model: VoltageModelData, dataset: ElectrodeDataset):
    """Regression metrics (MAE, RMSE, R², overall and per working ion) of ``model`` on held-out ``dataset``.

    :param model: the trained model.
    :param dataset: records with known target values (never seen in training).
    """
    core = load_model(model)
    records = dataset_records(dataset)
    target = model.base.attributes.get('target', 'average_voltage')
    mean, std = core.predict(records)
    metrics = regression_metrics([getattr(r, target) for r in records], mean, ions=[r.working_ion for r in records])
    metrics['mean_std'] = float(np.mean(std))
    metrics['model_version'] = model.model_version
    return orm.Dict(json_safe(metrics))


# -- prediction ----------------------------------------------------------------------------------------------------
def _validate_predict(inputs):
    return check_voltage_model(inputs['model']) or _validate_model_dataset(inputs)


@_validated_by(_validate_predict)
@record_sources
@calcfunction
def predict_voltages(model: VoltageModelData, dataset: ElectrodeDataset):
    """Predict the average voltage of every record of ``dataset``: one process and one ``ArrayData`` per batch.

    :param model: the trained model.
    :param dataset: the electrodes to predict (targets, if present, are ignored).
    :returns: ``ArrayData`` with ``mean`` and ``std`` (V), ``index`` (row of each prediction in the dataset),
        ``battery_ids``, ``working_ions``, ``unseen_elements`` (True where the record's host has an element no
        training host had) and ``ion_content_outside`` (True where its ion content lies outside the training
        electrodes' range for its working ion; all False for a model that did not record the ranges) and
        ``end_members_reversed`` (True where the record lists the ion-rich member as charged, which no
        Materials Project electrode does: predicted unlike the usual order) and ``features_outside`` (True where
        features lie far beyond the training rows' range: ``VoltageModel.features_outside``; all False for a model
        that did not record it), each marking an extrapolation; attributes ``model_version``, ``n_predictions``,
        ``n_unseen_elements``, ``n_ion_content_outside``, ``n_end_members_reversed`` and ``n_features_outside``.
    """
    core = load_model(model)
    records = dataset_records(dataset)
    mean, std = _predict(core, records)
    unseen = np.array([bool(elements) for elements in core.unseen_host_elements(records)], dtype=bool)
    array = orm.ArrayData()
    array.set_array('unseen_elements', unseen)
    array.base.attributes.set('n_unseen_elements', int(unseen.sum()))
    outside = np.array([bool(phrase) for phrase in core.ion_content_outside(records)], dtype=bool)
    array.set_array('ion_content_outside', outside)
    array.base.attributes.set('n_ion_content_outside', int(outside.sum()))
    swapped = np.array([r.end_members_reversed for r in records], dtype=bool)
    array.set_array('end_members_reversed', swapped)
    array.base.attributes.set('n_end_members_reversed', int(swapped.sum()))
    beyond = np.array([bool(phrase) for phrase in core.features_outside(records)], dtype=bool)
    array.set_array('features_outside', beyond)
    array.base.attributes.set('n_features_outside', int(beyond.sum()))
    array.set_array('mean', np.asarray(mean, dtype=np.float64))
    array.set_array('std', np.asarray(std, dtype=np.float64))
    array.set_array('index', np.arange(len(records), dtype=np.int64))
    array.set_array('battery_ids', np.array([r.battery_id for r in records], dtype=str))
    array.set_array('working_ions', np.array([r.working_ion for r in records], dtype=str))
    array.base.attributes.set('model_version', model.model_version)
    array.base.attributes.set('n_predictions', len(records))
    return array


@contextlib.contextmanager
def _warnings_reported(*categories):
    """Warnings of ``categories`` raised inside the block (each message once, in order) go to the report of the
    running process (``verdi process report PK``), where they stay with its node in the provenance graph and a user
    of a work chain sees them, prefixed with the category's name; outside a process they are warned as usual. Other
    warnings that pass the filters are shown as Python shows them. Yields a list that holds, once the block has
    ended, each reported warning as ``'Category: message'``."""
    from aiida.engine import Process

    caught, said = [], []
    try:
        with warnings.catch_warnings(record=True) as caught:
            for category in categories:
                warnings.simplefilter('always', category)
            yield said
    finally:  # also when the block raises: the warnings that came before the error are part of the story
        said.extend(_report_caught(Process.current(), caught, categories))


def _report_caught(process, caught, categories) -> list[str]:
    seen, said = set(), []
    for warning in caught:
        if not issubclass(warning.category, categories):
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
        elif (key := (warning.category, str(warning.message))) not in seen:
            seen.add(key)
            said.append(f'{warning.category.__name__}: {warning.message}')
            if process is not None:
                _report_warning(process, said[-1])
            else:
                warnings.warn(warning.message, warning.category, stacklevel=4)
    return said


def _report_warning(process, message):
    """``process.report(message)`` at the WARNING level: a report line headed ``[PK|train_model|warning]``, stored
    also where a profile keeps only warnings (``verdi config set logging.db_loglevel WARNING``)."""
    import logging

    process.logger.log(logging.WARNING, f'[{process.node.pk}|{type(process).__name__}|warning]: {message}')


def _predict(core, records):
    """``core.predict(records)``, with an ``InputWarning`` (a host such as ``Ni0.33Mn0.33Co0.34O2``, read as
    written) also written to the report of the running process (:func:`_warnings_reported`)."""
    with _warnings_reported(InputWarning):
        return core.predict(records)


def _validate_pair(inputs):
    message = check_voltage_model(inputs['model'])
    if message:
        return message
    ion = _value(inputs['working_ion'])
    record = pair_record(inputs['charged'], inputs['discharged'], ion)
    return _check_model_can_predict(inputs['model'], [record])


@_validated_by(_validate_pair)
@record_sources
@calcfunction
def predict_structure_pair(model: VoltageModelData, charged: orm.StructureData, discharged: orm.StructureData,
                           working_ion: orm.Str):
    """Predict the average voltage of one electrode given as charged and discharged structures.

    :param model: the trained model.
    :param charged: the ion-poor end member.
    :param discharged: the ion-rich end member (same host framework, more working ion).
    :param working_ion: the working ion, e.g. ``Li``.
    :returns: ``voltage`` and ``uncertainty`` (ensemble standard deviation), both ``Float`` in V, and
        ``unseen_elements``, a ``List`` of the host's elements that no training host had, and
        ``ion_content_outside``, a ``List`` with a phrase where the ion content lies outside the training
        electrodes' range for that working ion, and ``features_outside``, a ``List`` with a phrase where features
        lie far beyond the training rows' range (``VoltageModel.features_outside``; also in the process's report)
        (each empty when not; a non-empty one marks the prediction as an extrapolation), and ``input_warnings``,
        a ``List`` of the input's warnings as ``'Category: message'`` (two hosts that are not one framework,
        occupancies that look rounded; also in the process's report, which a cache clone does not copy).
    """
    with _warnings_reported(InputWarning) as said:
        record = pair_record(charged, discharged, working_ion.value, report=True)
        core = load_model(model)
        mean, std = core.predict([record])
    beyond = core.features_outside([record])[0]
    if beyond:  # in the process's report (verdi process report), beside its node
        from aiida.engine import Process

        Process.current().report(f'extrapolation: {beyond}')
    return {'voltage': orm.Float(float(mean[0])), 'uncertainty': orm.Float(float(std[0])),
            'unseen_elements': orm.List(core.unseen_host_elements([record])[0]),
            'ion_content_outside': orm.List([phrase for phrase in core.ion_content_outside([record]) if phrase]),
            'features_outside': orm.List([beyond] if beyond else []),  # review: in the report only, lost by a
            'input_warnings': orm.List(list(said))}  # cache clone and missing from voltnet predictions


# -- DFT ---------------------------------------------------------------------------------------------------------------
def _validate_dft(inputs):
    delta, charge = _value(inputs['delta_ions']), _value(inputs['ion_charge'])
    for key in ('e_charged', 'e_discharged', 'e_ion_metal', 'delta_ions'):  # AiiDA refused nan/inf only after
        if not math.isfinite(_value(inputs[key])):  # storing the other Floats (a raw ValidationError)
            return f'{key} must be a finite number, got {_value(inputs[key])}'
    if not delta > 0:
        return f'delta_ions must be positive (ions inserted per formula unit), got {delta}'
    if not charge > 0:
        return f'ion_charge must be a positive integer, got {charge}'
    return None


@_validated_by(_validate_dft)
@record_sources
@calcfunction
def dft_voltage(e_charged: orm.Float, e_discharged: orm.Float, e_ion_metal: orm.Float, delta_ions: orm.Float,
                ion_charge: orm.Int = 1):
    """Average insertion voltage from DFT total energies: V = -[E(dis) - E(ch) - Δx·E(ion)] / (Δx·z).

    :param e_charged: total energy of the charged (ion-poor) cell, eV.
    :param e_discharged: total energy of the discharged cell with the same host, eV.
    :param e_ion_metal: energy per atom of the working-ion metal, eV.
    :param delta_ions: working ions inserted between the two cells (Δx).
    :param ion_charge: charge z of the working ion (1 for Li, 2 for Mg, ...).
    """
    delta = delta_ions.value
    voltage = -(e_discharged.value - e_charged.value - delta * e_ion_metal.value) / (delta * ion_charge.value)
    return orm.Float(voltage)
