"""Errors a user can cause. Each message names the file, row or field at fault."""

from __future__ import annotations


class FsatError(Exception):
    """Base class for user-facing errors: the message says what is wrong and where."""


class DataError(FsatError):
    """Bad dataset input: a malformed CSV, an unknown label, a missing or corrupt audio file."""

    def __init__(self, message: str, *, file: object | None = None, row: int | None = None,
                 value: object | None = None) -> None:
        self.file = None if file is None else str(file)
        self.row = row
        self.value = value
        where = []
        if self.file is not None:
            where.append(self.file)
        if row is not None:
            where.append(f"row {row}")
        prefix = ": ".join(where)
        text = f"{prefix}: {message}" if prefix else message
        if value is not None:
            text += f" (value: {value!r})"
        super().__init__(text)


class ConfigError(FsatError):
    """A job specification or preset with a bad field; `field` is its dotted path."""

    def __init__(self, message: str, *, field: str | None = None, file: object | None = None) -> None:
        self.reason = message
        self.field = field
        self.file = None if file is None else str(file)
        parts = [p for p in (self.file, field) if p]
        super().__init__(f"{': '.join(parts)}: {message}" if parts else message)


class CheckpointError(FsatError):
    """A model checkpoint that is missing or does not fit the architecture."""


class QueueFull(FsatError):
    """The job queue holds as many queued jobs as it is allowed to."""
