"""The one error type of the data layer."""

from __future__ import annotations

from ..errors import UnimatchError


class DataError(UnimatchError, ValueError):
    """Bad input data: the message names the offending file (and line) or configuration key."""
