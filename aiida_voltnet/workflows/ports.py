"""The input namespace of structure pairs that ``voltnet.predict`` and ``voltnet.screen`` take."""
from __future__ import annotations

from collections.abc import Mapping

from aiida import orm
from aiida.engine.processes.ports import PortNamespace

__all__ = ('StructurePairsNamespace', 'pair_name_problem')


def pair_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a structure pair (it becomes a link label), or None."""
    from aiida.common.links import validate_link_label

    try:
        validate_link_label(name)  # aiida-core's rule, which lets '__' through
        if '__' in name:
            raise ValueError('a double underscore separates namespaces')
    except (TypeError, ValueError) as exception:
        return (f'{name!r} cannot name a pair: use letters, digits and single underscores inside (it becomes the '
                f'link label of its inputs and outputs: {exception})')
    if len(name) > MAX_PAIR_NAME:  # PostgreSQL's link-label column holds 255; outputs add 'ion_content_outside__'
        return (f'{name[:24]!r}... cannot name a pair: {len(name)} characters, at most {MAX_PAIR_NAME} (it becomes '
                'part of link labels, which the database holds to 255 characters with their namespace)')
    return None


#: Longest name of a structure pair: its longest link label, ``ion_content_outside__<name>``, must fit aiida-core's
#: 255-character link-label column (PostgreSQL enforces it; SQLite does not).
MAX_PAIR_NAME = 200


class StructurePairsNamespace(PortNamespace):
    """``{name: {charged: StructureData, discharged: StructureData, working_ion: Str}}``, where ``working_ion`` may
    also be a plain ``str`` (``'Li'``), stored as a ``Str`` as ``voltnet.verify``'s ``working_ion`` port stores it.

    aiida-core serializes a value only through a port that declares a serializer, and a pair's ports are dynamic,
    so a plain ``'Li'`` was refused as an invalid type; this namespace serializes it (``orm.to_aiida_type``).
    """

    def __init__(self, name: str, help: str, required: bool = True):  # noqa: A002 - aiida-core's keyword
        super().__init__(name, help=help, required=required, dynamic=True,
                         valid_type=(orm.StructureData, orm.Str))

    def validate(self, port_values=None, breadcrumbs=()):
        """Refuse a pair name that cannot be a link label before anything is stored: ``a__b`` came back as nested
        outputs (``voltages.a.b``, ``__`` being the namespace separator of link labels) and ``a-b`` as aiida-core's
        bare 'invalid link label' error."""
        from plumpy.ports import PortValidationError, breadcrumbs_to_port

        for name in port_values or {}:
            problem = pair_name_problem(name)
            if problem:
                return PortValidationError(problem, breadcrumbs_to_port((*breadcrumbs, self.name)))
        return super().validate(port_values, breadcrumbs)

    def serialize(self, mapping, breadcrumbs=()):
        mapping = super().serialize(mapping, breadcrumbs)
        if not mapping:
            return mapping
        return {name: {**pair, 'working_ion': orm.to_aiida_type(pair['working_ion'])}
                if isinstance(pair, Mapping) and isinstance(pair.get('working_ion'), str) else pair
                for name, pair in mapping.items()}
