"""User-facing errors.

Every error a user can cause (a bad job file, a bad dataset line, a missing image) is a
:class:`VisionsweepError`: the CLI prints its message and exits with status 2, never a
traceback. Messages name the file / field / line and say what was expected, and a name that is not known
but close to one that is gets "did you mean" (:func:`did_you_mean`, the one place near misses are found).
"""

from __future__ import annotations

import difflib
from typing import Iterable


class VisionsweepError(Exception):
    """An error caused by user input; its message is meant to be printed as is."""


class SpecError(VisionsweepError):
    """The job YAML is invalid."""


class DataError(VisionsweepError):
    """The dataset (MLTable, JSONL lines, labels or images) is invalid."""


class NotSupportedYet(VisionsweepError):
    """The job is valid but asks for something this version does not run yet."""

    def __init__(self, key: str, detail: str = ""):
        self.key = key
        msg = f"not supported yet: {key}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


class TrainingError(VisionsweepError):
    """Training cannot go on (a non-finite loss, an invalid setting for the chosen model)."""


class ImageNotFound(DataError):
    """One image does not exist (a bad line, not a storage-wide problem): the pre-sweep check lists these."""


def close_names(word: str, choices: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """The known names nearest to a misspelt one, best first (case is ignored): what "did you mean" offers."""
    by_lower: dict[str, str] = {}
    for c in choices:
        by_lower.setdefault(str(c).lower(), str(c))
    if not isinstance(word, str) or word.lower() in by_lower and by_lower[word.lower()] == word:
        return []  # a known name is not a near miss
    return [by_lower[m] for m in difflib.get_close_matches(word.lower(), list(by_lower), n=n, cutoff=cutoff)]


def did_you_mean(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str:
    """``"; did you mean 'x'?"`` for the nearest known name to ``word`` among ``choices``, else ``""``: appended
    to the error that refuses ``word``."""
    close = close_names(word, choices, n=1, cutoff=cutoff)
    return f"; did you mean {close[0]!r}?" if close else ""
