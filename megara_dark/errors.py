"""Exceptions of megara_dark: each names the file (when there is one) and the problem."""

from __future__ import annotations

from pathlib import Path


class MegaraDarkError(Exception):
    """Base class of megara_dark's errors.

    ``path`` is the file the error is about (or None); the message already
    names it.
    """

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        self.problem = message
        super().__init__(f"{path}: {message}" if path is not None else message)

    def __reduce__(self):  # pickled whole (e.g. back from a Dask worker)
        return type(self), (self.problem, self.path)


class ValidationError(MegaraDarkError, ValueError):
    """An input is not what the recipe needs (wrong kind, shape, headers...).

    ``problems`` lists every problem found, one line each (the message joins them).
    """

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        count = len(self.problems)
        head = "invalid input" if count == 1 else f"{count} problems with the inputs"
        super().__init__(head + ":\n  " + "\n  ".join(self.problems))

    def __reduce__(self):
        return type(self), (self.problems,)


class InputFileError(MegaraDarkError, OSError):
    """An input file cannot be opened or read (missing, permissions, not a file...)."""


class OutputError(MegaraDarkError, OSError):
    """A product cannot be written (folder not writable, disk full, exists...)."""
