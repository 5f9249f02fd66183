"""What the package's data nodes share: none is stored without its content."""
from __future__ import annotations


class RefusesEmpty:
    """Mixin of a ``Data`` node class: refuse to store a node whose ``_REQUIRED_ATTRIBUTE`` is unset (a node made
    without its content, on which every reader would fail), raising ``ValidationError(_EMPTY_MESSAGE)``."""

    _REQUIRED_ATTRIBUTE: str
    _EMPTY_MESSAGE: str

    def _validate(self) -> bool:
        super()._validate()
        if self.base.attributes.get(self._REQUIRED_ATTRIBUTE, None) is None:
            from aiida.common.exceptions import ValidationError

            raise ValidationError(self._EMPTY_MESSAGE)
        return True
