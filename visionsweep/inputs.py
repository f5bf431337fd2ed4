"""``Input``: a job's training or validation data, as the service SDK's ``azure.ai.ml.Input`` gives it."""

from __future__ import annotations

from typing import Any

from visionsweep.constants import AssetTypes


class Input:
    """A data input of a job.

    Args:
        type: ``AssetTypes.MLTABLE`` (default; an MLTable folder or file), ``AssetTypes.URI_FILE`` (a JSONL file)
            or ``AssetTypes.URI_FOLDER``.
        path: a local path (relative to the working folder of the notebook or script), a storage URL
            (``az://``, ``s3://``, ``abfss://``, ``https://``) or a data asset (``azureml:name:version``, resolved
            through ``visionsweep.data_assets`` of the job).
        mode: the service's input mode (``InputOutputModes``); accepted and kept in the job file. visionsweep reads
            images from their URLs whatever the mode (see ``InputOutputModes``).
    """

    def __init__(self, *, type: str = AssetTypes.MLTABLE, path: str, mode: str | None = None, **kwargs: Any):
        if kwargs:
            raise TypeError(f"Input: unknown argument(s) {', '.join(sorted(kwargs))}; expected type, path, mode")
        self.type, self.path, self.mode = type, path, mode

    def _to_yaml(self) -> dict[str, Any]:
        out = {"path": str(self.path), "type": self.type}
        if self.mode is not None:
            out["mode"] = self.mode
        return out

    @classmethod
    def _from_yaml(cls, d: dict[str, Any]) -> Input:
        return cls(**d)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Input) and self._to_yaml() == other._to_yaml()

    def __repr__(self) -> str:
        return f"Input({', '.join(f'{k}={v!r}' for k, v in self._to_yaml().items())})"
