"""User-facing errors.

Every error a user can cause (a bad job file, a bad dataset line, a missing image) is a
:class:`VisionsweepError`: the CLI prints its message and exits with status 2, never a
traceback. Messages name the file / field / line and say what was expected.
"""


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
