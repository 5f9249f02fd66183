"""What the package's data nodes share: none is stored without its content, or with content that does not read
back."""
from __future__ import annotations


class RefusesEmpty:
    """Mixin of a ``Data`` node class: refuse to store a node whose ``_REQUIRED_ATTRIBUTE`` is unset (a node made
    without its content, on which every reader would fail), raising ``ValidationError(_EMPTY_MESSAGE)``, or whose
    content does not read back: :meth:`_read_back` raising ``_READ_BACK_ERROR`` is a ``ValidationError`` with its
    message (once stored as a process input, every later reader, ``voltnet provenance`` included, would fail on it,
    or a query would find it as what it is not)."""

    _REQUIRED_ATTRIBUTE: str
    _EMPTY_MESSAGE: str
    _READ_BACK_ERROR: type[Exception]

    def _read_back(self) -> None:
        """Read the node's content as its readers do, raising ``_READ_BACK_ERROR`` where they would."""
        raise NotImplementedError

    def _validate(self) -> bool:
        from aiida.common.exceptions import ValidationError

        super()._validate()
        if self.base.attributes.get(self._REQUIRED_ATTRIBUTE, None) is None:
            raise ValidationError(self._EMPTY_MESSAGE)
        try:
            self._read_back()
        except self._READ_BACK_ERROR as exception:
            raise ValidationError(str(exception)) from None
        return True
