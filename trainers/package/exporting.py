"""A model package exported where the user asked: a local file, or a storage URL (written locally, then uploaded
with its ``.json`` sidecar). ``visionsweep export`` is this module behind its arguments.

The graph and its checks are :mod:`trainers.package.onnx`'s; this module only decides where the files go.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainers.data.urls import is_remote


@dataclass
class Written:
    """Where the export went (a path or storage URL) and what :func:`~trainers.package.onnx.export_onnx` said."""

    where: str
    result: Any  # trainers.package.onnx.Exported

    def line(self) -> str:
        r, where = self.result, self.where
        check = "" if r.max_abs_diff is None else f"; onnxruntime vs PyTorch: max |diff| {r.max_abs_diff:.2e}"
        return (f"wrote {where} and {where}.json ({r.metadata['task']}, {r.metadata['model_name']}, "
                f"input {r.metadata['input']['name']} {r.metadata['input']['shape']}{check})")


def export_package(package: str, output: str | None = None, **options: Any) -> Written:
    """Export ``package`` to ONNX at ``output`` (default ``PACKAGE/model.onnx``; for a package on storage, beside it
    on storage). ``options`` go to :func:`~trainers.package.onnx.export_onnx` (``batch_size``, ``normalization``,
    ``image_size``, ``check``, ``settings``)."""
    from trainers.data import storage
    from trainers.package.onnx import export_onnx

    target = output or (f"{package.rstrip('/')}/model.onnx" if is_remote(package) else None)
    with tempfile.TemporaryDirectory(prefix="visionsweep-onnx-") as tmp:
        local = str(Path(tmp) / "model.onnx") if target and is_remote(target) else target
        r = export_onnx(package, local, **options)
        where = str(r.path)
        if target and is_remote(target):
            for suffix in ("", ".json"):
                storage.write_bytes(target + suffix, Path(str(r.path) + suffix).read_bytes())
            where = target
    return Written(where, r)
