"""Protocols: named sets of default inputs in YAML files beside this module, in the style of
aiida-quantumespresso's ``ProtocolMixin`` (which is not a dependency of this package)."""
from __future__ import annotations

import copy
import pathlib
from typing import Any

import yaml

__all__ = ('ProtocolMixin', 'recursive_merge', 'check_overrides', 'merge_job_options')


def _copy(value):
    """A deep copy of plain values; AiiDA nodes are kept as they are (``deepcopy`` of a node makes a new, unstored
    clone, and an override such as ``{'model': model}`` must pass that very node)."""
    from aiida.orm import Node

    if isinstance(value, Node):
        return value
    if isinstance(value, dict):
        return {key: _copy(item) for key, item in value.items()}
    return copy.deepcopy(value)


def recursive_merge(left: dict, right: dict) -> dict:
    """A copy of ``left`` updated recursively with ``right`` (values of ``right`` win; nested dicts are merged)."""
    from aiida import orm

    merged = _copy(left)
    for key, value in right.items():
        if isinstance(value, orm.Dict) and isinstance(merged.get(key), dict):
            # merged like the plain dict it holds, stored or not (it replaced the protocol's whole dict, and a stored
            # one still did, so that the launch refused settings the protocol would have filled in)
            value = value.get_dict()
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = recursive_merge(merged[key], value)
        else:
            merged[key] = _copy(value)
    return merged


def merge_job_options(protocol_options: dict, options: dict | None) -> dict:
    """A job's ``metadata.options``: ``protocol_options`` updated recursively by ``options``, whose ``resources``, if
    given, replace the protocol's whole. Merged, ``{'num_machines': 1, 'tot_num_mpiprocs': 4}`` kept the protocol's
    ``num_mpiprocs_per_machine: 1``, which contradicts it, and an SGE ``{'parallel_env': 'smp', 'tot_num_mpiprocs':
    8}`` kept its ``num_machines``, which SGE refuses: the job excepted after the work chain had started."""
    merged = recursive_merge(protocol_options or {}, options or {})
    if (options or {}).get('resources'):
        merged['resources'] = _copy(dict(options['resources']))
    return merged


def check_overrides(overrides: dict, namespace, path: str = '') -> None:
    """Refuse override keys that are not ports of ``namespace`` (a typo must not be silently ignored).

    Values of ports that take a ``Dict`` (e.g. ``settings``) are free-form and not descended into.
    """
    from plumpy.ports import PortNamespace

    where = f'namespace {path[:-1]!r}' if path else 'the work chain'  # the top namespace is named 'inputs'
    if not isinstance(overrides, dict):
        raise ValueError(f'overrides of {where} must be a dict of its inputs, got {overrides!r}')
    for key, value in overrides.items():
        if key not in namespace and not namespace.dynamic:
            raise ValueError(f'override {path}{key!r} is not an input of {where}; '
                             f'known: {", ".join(sorted(namespace))}')
        port = namespace.get(key)
        if isinstance(port, PortNamespace):  # a namespace takes a dict of its own inputs
            check_overrides(value, port, f'{path}{key}.')


class ProtocolMixin:
    """Loads ``protocols/<_protocol_file>``: ``default_inputs``, ``default_protocol`` and ``protocols``."""

    _protocol_file: str = ''

    @classmethod
    def get_protocol_filepath(cls) -> pathlib.Path:
        return pathlib.Path(__file__).parent / cls._protocol_file

    @classmethod
    def _load_protocol_file(cls) -> dict[str, Any]:
        with cls.get_protocol_filepath().open() as handle:
            return yaml.safe_load(handle)

    @classmethod
    def get_default_protocol(cls) -> str:
        return cls._load_protocol_file()['default_protocol']

    @classmethod
    def get_available_protocols(cls) -> dict[str, dict]:
        """``{name: {'description': ...}}`` of every protocol."""
        return {name: {'description': value.get('description', '')}
                for name, value in cls._load_protocol_file()['protocols'].items()}

    @classmethod
    def get_protocol_inputs(cls, protocol: str | None = None, overrides: dict | None = None) -> dict[str, Any]:
        """The inputs of ``protocol`` (default inputs updated by the protocol, then by ``overrides``)."""
        data = cls._load_protocol_file()
        protocol = protocol or data['default_protocol']
        if protocol not in data['protocols']:
            raise ValueError(f'unknown protocol {protocol!r}; choose one of {", ".join(data["protocols"])}')
        changes = {k: v for k, v in data['protocols'][protocol].items() if k != 'description'}
        inputs = recursive_merge(data['default_inputs'], changes)
        if overrides:
            check_overrides(overrides, cls.spec().inputs)
            inputs = recursive_merge(inputs, overrides)
        return inputs
