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
    result: Any  # trainers.package.onnx.Exported, or trainers.package.int8.Int8Exported

    def line(self) -> str:
        r, where = self.result, self.where
        q = r.metadata.get("quantization")
        if q:
            left = ", ".join(f"{k} x{v}" for k, v in sorted(q.get("operators_in_fp32", {}).items())) or "none"
            check = (f"; INT8, calibrated on {q['calibration_count']} images; top-1 agreement with the package "
                     f"{q['top1_agreement_with_package']:.1%} on {q['check_count']} images; operators left in fp32: "
                     f"{left}")
        else:
            check = "" if r.max_abs_diff is None else f"; onnxruntime vs PyTorch: max |diff| {r.max_abs_diff:.2e}"
        return (f"wrote {where} and {where}.json ({r.metadata['task']}, {r.metadata['model_name']}, "
                f"input {r.metadata['input']['name']} {r.metadata['input']['shape']}{check})")


def export_package(package: str, output: str | None = None, *, int8: bool = False, **options: Any) -> Written:
    """Export ``package`` to ONNX at ``output`` (default ``PACKAGE/model.onnx``, or ``PACKAGE/model.int8.onnx`` with
    ``int8``; for a package on storage, beside it on storage). ``options`` go to
    :func:`~trainers.package.onnx.export_onnx` (``batch_size``, ``normalization``, ``image_size``, ``check``,
    ``settings``), or with ``int8`` to :func:`~trainers.package.int8.export_int8` (those but ``check``, and
    ``calibration_images``, ``keep_below_tolerance`` ...), which writes the fp32 model it quantises beside it."""
    from trainers.data import storage

    name = "model.int8.onnx" if int8 else "model.onnx"
    target = output or (f"{package.rstrip('/')}/{name}" if is_remote(package) else None)
    with tempfile.TemporaryDirectory(prefix="visionsweep-onnx-") as tmp:
        local = str(Path(tmp) / name) if target and is_remote(target) else target
        if int8:
            from trainers.package.int8 import export_int8

            options.pop("check", None)  # an INT8 export is always checked against its package
            r = export_int8(package, local, **options)
            files = [Path(r.path), Path(r.fp32.path)]
        else:
            from trainers.package.onnx import export_onnx

            r = export_onnx(package, local, **options)
            files = [Path(r.path)]
        where = str(r.path)
        if target and is_remote(target):
            base = target.rsplit("/", 1)[0]
            for f in files:
                dst = target if f == Path(r.path) else f"{base}/{f.name}"
                for suffix in ("", ".json"):
                    storage.write_bytes(dst + suffix, Path(str(f) + suffix).read_bytes())
            where = target
    return Written(where, r)
