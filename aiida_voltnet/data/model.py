"""``VoltageModelData``: a trained, self-contained voltage model (``config.json`` + ``arrays.safetensors``).

No pickle: the weights and every fitted featurizer array are a safetensors file, the rest a JSON config. The
sha256 of the weights and the content hash of the model (its version) are attributes, checked again on load.
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import tempfile
from typing import Any

from aiida.orm import Data

from aiida_voltnet.ml.models import ModelIntegrityError, VoltageModel
from aiida_voltnet.ml.records import file_sha256

from ._empty import RefusesEmpty

__all__ = ('VoltageModelData', 'ModelIntegrityError')

FILENAMES = ('config.json', 'arrays.safetensors')


def json_safe(value: Any) -> Any:
    """A copy storable as AiiDA attributes: NaN/inf become None, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, 'item') and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (TypeError, ValueError):
            return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


#: Attributes every stored model has had since the first release: one that is missing was deleted.
ALWAYS_STORED_ATTRIBUTES = ('architecture', 'model_name', 'featurizer_name', 'target', 'training_ions',
                            'model_version', 'arrays_sha256')


def _attributes_of(config: dict) -> dict:
    """The queryable attributes that describe a saved model, all read from its ``config.json``."""
    metadata = config.get('metadata', {})
    featurizer = config.get('featurizer', {})
    return {
        'architecture': config['architecture'],
        'model_name': config['model_name'],
        'featurizer_name': featurizer.get('name'),
        'featurizer_version': featurizer.get('version'),
        'featurizer_leaks_target': bool(featurizer.get('leaks_target', False)),
        'n_parameters': int(config['n_parameters']),
        'n_members': len(config.get('members', [])),
        'seed': metadata.get('seed'),
        'target': metadata.get('target', 'average_voltage'),
        'training_ions': list(metadata.get('training_ions') or []),
        'n_training_rows': metadata.get('n_training_rows'),
        'versions': json_safe(metadata.get('versions', {})),
        # the hyper-parameters set for this training over the spec's ({} when none): a query can select on them
        'model_params': json_safe(metadata.get('model_params') or {}),
        'model_version': config['model_version'],
        'arrays_sha256': config['arrays_sha256'],
    }


class VoltageModelData(RefusesEmpty, Data):
    """A trained :class:`aiida_voltnet.ml.models.VoltageModel`.

    Attributes: ``architecture``, ``model_name``, ``featurizer_name``, ``featurizer_version``, ``n_parameters``,
    ``n_members``, ``metrics`` (dict given at creation, e.g. the training-set fit), ``seed``, ``training_ions``,
    ``target``, ``model_params`` (the hyper-parameters set over the model spec's, ``{}`` when none),
    ``model_version`` (content hash of config + weights) and ``arrays_sha256``. All but ``metrics`` are read from
    ``config.json`` and checked against it again by :meth:`load_model`.
    """

    # VoltageModelData() without a model cannot be stored: every reader of it would fail
    _REQUIRED_ATTRIBUTE = 'arrays_sha256'
    _EMPTY_MESSAGE = ('a VoltageModelData without a model cannot be stored: give the trained model, '
                      'VoltageModelData(model)')
    _READ_BACK_ERROR = ModelIntegrityError

    def __init__(self, model: VoltageModel | None = None, *, metrics: dict | None = None, **kwargs):
        if metrics is not None and not isinstance(metrics, dict):  # a list was stored, and .metrics then raised
            raise TypeError(f'metrics must be a dict, got {type(metrics).__name__}')
        super().__init__(**kwargs)
        if model is not None:
            self._set_model(model, metrics or {})

    def _set_model(self, model: VoltageModel, metrics: dict) -> None:
        if not isinstance(model, VoltageModel):
            raise TypeError(f'expected an aiida_voltnet.ml.models.VoltageModel, got {type(model).__name__}')
        with tempfile.TemporaryDirectory() as directory:
            model.save(directory)
            config = json.loads((pathlib.Path(directory) / 'config.json').read_text())
            for name in FILENAMES:
                self.base.repository.put_object_from_file(str(pathlib.Path(directory) / name), name)
        attributes = _attributes_of(config)
        attributes['metrics'] = json_safe(metrics)
        for key, value in attributes.items():
            self.base.attributes.set(key, value)

    # -- queryable properties ---------------------------------------------------------------------------------------
    @property
    def model_version(self) -> str | None:
        return self.base.attributes.get('model_version', None)

    @property
    def arrays_sha256(self) -> str | None:  # None for a node that lost it (an edited archive): load_model names it
        return self.base.attributes.get('arrays_sha256', None)

    @property
    def architecture(self) -> str:
        return self.base.attributes.get('architecture')

    @property
    def model_name(self) -> str:
        return self.base.attributes.get('model_name')

    @property
    def training_ions(self) -> list[str]:
        return list(self.base.attributes.get('training_ions', []))

    @property
    def metrics(self) -> dict:
        metrics = self.base.attributes.get('metrics', {})
        if not isinstance(metrics, dict):
            raise ModelIntegrityError(f'VoltageModelData<{self.pk}>: attribute metrics is a '
                                      f'{type(metrics).__name__}, not the dict recorded at creation')
        return dict(metrics)

    def config(self) -> dict:
        return json.loads(self.base.repository.get_object_content('config.json'))

    # -- the model --------------------------------------------------------------------------------------------------
    def load_model(self) -> VoltageModel:
        """Rebuild the core model from the repository files, checking them against the recorded hashes.

        :raises ModelIntegrityError: if the weights or the config differ from what was recorded at creation.
        """
        label = f'VoltageModelData<{self.pk if self.is_stored else "unstored"}>'
        with tempfile.TemporaryDirectory() as directory:
            directory = pathlib.Path(directory)
            names = self.base.repository.list_object_names()
            for name in FILENAMES:
                if name not in names:
                    raise ModelIntegrityError(f'{label}: the repository has no {name}')
                try:
                    content = self.base.repository.get_object_content(name, mode='rb')
                except FileNotFoundError:  # listed, but its object is gone from the object store
                    raise ModelIntegrityError(f'{label}: the repository object of {name} is missing (a damaged '
                                              'storage or object store); refusing to load it') from None
                (directory / name).write_bytes(content)
            # read with a default: a node from an archive may lack them (deleted), which is an alteration too
            recorded_sha256 = self.base.attributes.get('arrays_sha256', None)
            recorded_version = self.base.attributes.get('model_version', None)
            for key, value in (('arrays_sha256', recorded_sha256), ('model_version', recorded_version)):
                if not isinstance(value, str):
                    raise ModelIntegrityError(f'{label}: attribute {key} is {"missing" if value is None else repr(value)}'
                                              ', not the hash recorded at creation; refusing to load it')
            actual = file_sha256(directory / 'arrays.safetensors')
            if actual != recorded_sha256:
                raise ModelIntegrityError(
                    f'{label}: weights file arrays.safetensors was altered (sha256 {actual[:12]}..., the node '
                    f'recorded {recorded_sha256[:12]}...); refusing to load it')
            try:
                config = json.loads((directory / 'config.json').read_text())
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exception:
                raise ModelIntegrityError(f'{label}: config.json is no JSON ({exception}); refusing to load it') \
                    from None
            if not isinstance(config, dict):
                raise ModelIntegrityError(f'{label}: config.json is no JSON object; refusing to load it')
            if config.get('model_version') != recorded_version:
                raise ModelIntegrityError(f'{label}: config.json does not belong to model version '
                                          f'{recorded_version[:12]}...')
            # The attributes are what queries select on: they must say what the files say (a clone whose
            # attributes were edited before storing would otherwise be found, and trusted, as another model).
            stored = self.base.attributes.all
            # a missing attribute counts as altered where every stored model has it (a model without `target`
            # was taken for a voltage model, one without `model_name` broke `voltnet provenance`); the others
            # came later, and older models lack them
            try:
                described = _attributes_of(config)
            except (KeyError, TypeError, AttributeError, ValueError, OverflowError) as exception:
                raise ModelIntegrityError(f'{label}: config.json lacks or mangles what describes the model '
                                          f'({type(exception).__name__}: {exception}); refusing to load it') from None
            altered = sorted(key for key, value in described.items()
                             if (key in stored or key in ALWAYS_STORED_ATTRIBUTES) and stored.get(key) != value)
            if 'metrics' in stored and not isinstance(stored['metrics'], dict):
                altered.append('metrics')
            if altered:
                raise ModelIntegrityError(f'{label}: attribute(s) {", ".join(altered)} differ from the model\'s '
                                          'config.json; refusing to load it')
            try:
                return VoltageModel.load(directory)
            except ModelIntegrityError as exception:  # the files' names, not those of a folder deleted by now
                message = str(exception).replace(f'{directory}{os.sep}', '')
                raise ModelIntegrityError(f'{label}: {message}') from exception

    def _read_back(self) -> None:
        """Not stored: a model that does not load, its files, hashes and attributes checked as :meth:`load_model`
        checks them (a node whose weights or attributes were changed before storing was stored, and found by
        queries as a model)."""
        self.load_model()
