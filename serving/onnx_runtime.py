"""A deployment's ``runtime: onnx | onnx-int8``: the package's ONNX (or INT8 ONNX) graph run by onnxruntime behind
the ``Predictor`` interface, so that the server, its batching, probes, auth and traffic split stay the same.

Why a runtime of its own: onnxruntime runs a classifier's graph with less per-call overhead than eager PyTorch on
CPUs, and the INT8 graph (``trainers.package.int8``) only runs there. What stays PyTorch's: decoding and the task's
``input_transform`` (resize, center crop, normalisation), and ``Task.probabilities`` on the graph's logits, so the
response JSON is built by the same code as the PyTorch runtime's. Explanations keep using the package's PyTorch model
(gradients), which the replica loads anyway to read the package and to export a missing graph.

Which graph: ``PACKAGE/model.onnx`` (``onnx``) or ``PACKAGE/model.int8.onnx`` (``onnx-int8``) with its ``.json``
sidecar (``trainers.package.onnx``), where its input's crop is the one the deployment's settings ask for. A missing
(or differently cropped) fp32 graph is exported at replica start into a replica-local temporary folder; a missing
INT8 graph is an error naming ``visionsweep export PACKAGE --int8`` (quantisation needs calibration images and a
check that only the export command does). Only classification graphs are served: a detector's ONNX graph takes a
fixed input size without the trainer's tiling and score handling, so its answers would not be the PyTorch
deployment's; such a deployment is refused with a message saying so.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from serving.predictor import Predictor, decode_image
from trainers.errors import VisionsweepError

RUNTIMES = ("pytorch", "onnx", "onnx-int8")
GRAPH_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}


def make_predictor(package: str, runtime: str = "pytorch", settings: dict[str, Any] | None = None,
                   registry_uri: str | None = None, threads: int = 1) -> Predictor:
    """The predictor of a deployment's ``runtime`` (``DeploymentSpec.runtime``)."""
    if runtime == "pytorch":
        return Predictor(package, settings=settings, registry_uri=registry_uri)
    if runtime not in GRAPH_FILES:
        raise VisionsweepError(f"runtime: expected one of {', '.join(RUNTIMES)}, but got {runtime!r}")
    return OnnxPredictor(package, runtime, settings=settings, registry_uri=registry_uri, threads=threads)


def graph_stamp(model: str, runtime: str) -> str | None:
    """The size and modification time of a local package's graph for ``runtime`` (None where there is none, or
    the package is remote), taken by ``deployment create|update``: part of the deployment's Serve version, so that
    ``deployment update`` after ``visionsweep export`` starts replicas that read the new graph instead of keeping
    the old ones."""
    from trainers.data.urls import is_url
    from trainers.package.folder import package_root
    from trainers.package.references import is_registry_reference

    if runtime not in GRAPH_FILES or is_url(model) or is_registry_reference(model):
        return None
    f = package_root(Path(model.removeprefix("file://"))) / GRAPH_FILES[runtime]
    try:
        st = f.stat()
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


class OnnxPredictor(Predictor):
    """A ``Predictor`` whose predictions come from an onnxruntime session of the package's ONNX graph."""

    def __init__(self, package: str, runtime: str = "onnx", device: str | None = None,
                 settings: dict[str, Any] | None = None, registry_uri: str | None = None, threads: int = 1):
        super().__init__(package, device, settings, registry_uri)
        self.runtime = runtime
        if not self.classification:
            raise VisionsweepError(
                f"{package}: runtime {runtime} serves image classification packages only; this package is "
                f"{self.pkg.task}, whose ONNX graph takes a fixed input size without the trainer's tiling and "
                "score handling: use runtime: pytorch for it")
        try:
            import onnxruntime as ort
        except ImportError:
            raise VisionsweepError(f"runtime {runtime} needs onnxruntime: pip install 'visionsweep[onnx]'") from None
        self._tmp: str | None = None  # a replica-local copy or export of the graph
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, int(threads))
        opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            path, self.meta = self._graph(package, runtime, registry_uri)
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        finally:
            # the session holds the graph in memory: a replica-local copy or export goes now, not at the replica's
            # end (Serve ends replicas without running the process's exit handlers)
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
        self.graph_path = path  # where it was read from
        self.input_name = self.session.get_inputs()[0].name
        self.in_graph = bool(self.meta["input"].get("normalization_in_graph"))
        mean, std = self.meta["input"]["mean"], self.meta["input"]["std"]
        self._mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    # --- the graph ----------------------------------------------------------------------------------------------
    def _graph(self, package: str, runtime: str, registry_uri: str | None) -> tuple[Path, dict[str, Any]]:
        """(graph file, its sidecar) that matches this deployment's crop: the package's own, else (fp32 only) a
        fresh export."""
        name = GRAPH_FILES[runtime]
        crop = int(self.pkg.settings["validation_crop_size"])
        found = self._package_graph(package, name, registry_uri)
        if found is not None:
            path, meta = found
            shape = meta.get("input", {}).get("shape", [])
            if list(shape[-2:]) == [crop, crop]:
                return path, meta
            if runtime == "onnx-int8":
                raise VisionsweepError(
                    f"{package}: {name} takes {shape[-2]}x{shape[-1]} images, but this deployment's "
                    f"validation_crop_size is {crop}: export it again with these inference settings "
                    f"(`visionsweep export {package} --int8`) or drop the override")
        elif runtime == "onnx-int8":
            raise VisionsweepError(
                f"{package}: runtime onnx-int8 needs {name} (and {name}.json) in the package; write them with "
                f"`visionsweep export {package} --int8`, or deploy with runtime: onnx")
        return self._export(package)

    def _package_graph(self, package: str, name: str, registry_uri: str | None) -> tuple[Path, dict] | None:
        """The package's ``name`` and sidecar (local folders as they are; remote packages and registry references
        copied into the replica's temporary folder), or None where the package has none."""
        from trainers.data.urls import is_remote
        from trainers.package.folder import package_root
        from trainers.package.references import fetch_registered, is_registry_reference

        if is_registry_reference(package):
            folder = package_root(fetch_registered(package, self._scratch() + "/registered", registry_uri))
        elif is_remote(package):
            folder = self._fetch_remote(package, name)
            if folder is None:
                return None
        else:
            folder = package_root(Path(str(package).removeprefix("file://")))
        path, sidecar = folder / name, folder / (name + ".json")
        if not (path.is_file() and sidecar.is_file()):
            return None
        try:
            return path, json.loads(sidecar.read_text())
        except json.JSONDecodeError as e:
            raise VisionsweepError(f"{sidecar}: invalid JSON ({e})") from None

    def _fetch_remote(self, uri: str, name: str) -> Path | None:
        from trainers.data import storage
        from trainers.errors import ImageNotFound
        from trainers.package.folder import remote_package_root

        root = remote_package_root(uri)
        if root is None:
            return None
        dst = Path(self._scratch()) / "remote"
        dst.mkdir(exist_ok=True)
        try:
            for f in (name, name + ".json"):
                (dst / f).write_bytes(storage.read_bytes(f"{root}/{f}"))
        except ImageNotFound:
            return None
        return dst

    def _export(self, package: str) -> tuple[Path, dict[str, Any]]:
        from trainers.package.onnx import export_onnx

        out = Path(self._scratch()) / "model.onnx"
        exported = export_onnx(package, out, settings=self.pkg.settings, check=False)
        return exported.path, exported.metadata

    def _scratch(self) -> str:
        """The replica's temporary folder (fetched or exported graphs), removed once the session has read them."""
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="visionsweep-onnx-")
        return self._tmp

    # --- predictions --------------------------------------------------------------------------------------------
    def predict_images(self, images: Sequence[bytes | Image.Image]) -> list[dict[str, Any]]:
        if not images:
            return []
        pil = [im if isinstance(im, Image.Image) else decode_image(im, f"image {i}") for i, im in enumerate(images)]
        x = torch.stack([self.transform(im) for im in pil])  # normalised, as the PyTorch runtime's input
        if self.in_graph:  # the graph normalises: it takes RGB in [0, 1]
            x = x * self._std + self._mean
        logits = self.session.run(None, {self.input_name: np.ascontiguousarray(x.numpy(), dtype=np.float32)})[0]
        probs = self.task.probabilities(torch.from_numpy(logits)).float().tolist()
        return [{"probs": p, "labels": list(self.labels)} for p in probs]
