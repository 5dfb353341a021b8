"""Secret values that cannot leak through repr, str, format or logging."""

from __future__ import annotations

import logging
from typing import Final

MASK: Final = "***"


class Secret:
    """A secret string. Only `.reveal()` gives the value; everything else prints a mask."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK})"

    def __str__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("Secret values are not picklable")


class RedactingFilter(logging.Filter):
    """Last line of defence: replaces any registered secret value in a formatted log record.

    Code never logs secrets on purpose; this catches library debug logs (httpx, urllib3) that
    might echo a request body or header.
    """

    def __init__(self) -> None:
        super().__init__()
        self._values: set[str] = set()

    def register(self, value: str) -> None:
        # Very short values would redact ordinary words; real secrets are long.
        if len(value) >= 6:
            self._values.add(value)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._values:
            return True
        message = record.getMessage()
        redacted = message
        for value in self._values:
            if value in redacted:
                redacted = redacted.replace(value, MASK)
        if redacted != message:
            record.msg = redacted
            record.args = None
        return True


REDACTOR: Final = RedactingFilter()
